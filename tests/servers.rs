//! Postmark's account and server API through the gateway (issue 16): the
//! default routes for `/senders`, `/servers`, `/templates/push`,
//! `/data-removals` and the server-level routes, per key and role, asserted
//! on the mock upstreams' own record: a refused request never reaches them,
//! an admitted one reaches them exactly once, as checked.

use scopegate_config::ResponseFormat;
use scopegate_suite::gateway::TestGateway;
use scopegate_suite::http::{Request, Response};
use scopegate_suite::sample;
use serde_json::json;

/// What one request did: the gateway's answer, and what the upstreams
/// recorded for it (`(upstream, method, target)`, at most one).
struct Outcome {
    response: Response,
    reached: Vec<(String, String, String)>,
}

fn send(gw: &TestGateway, req: Request) -> Outcome {
    let before = (gw.sending.count(), gw.domains.count());
    let response = gw.send(req);
    let record = |m: &scopegate_gateway::mock::MockUpstream, skip: usize| {
        m.requests()
            .into_iter()
            .skip(skip)
            .map(|r| (r.upstream, r.method, r.target))
            .collect::<Vec<_>>()
    };
    let mut reached = record(&gw.sending, before.0);
    reached.extend(record(&gw.domains, before.1));
    Outcome { response, reached }
}

fn with_key(method: &str, path: &str, key: &str) -> Request {
    Request::new(method, path).header("X-Postmark-Server-Token", key)
}

/// Admitted: forwarded once, to `upstream`, with the path as sent.
#[track_caller]
fn admitted(o: &Outcome, upstream: &str, method: &str, target: &str) {
    assert!(
        (200..300).contains(&o.response.status),
        "{method} {target}: {} {}",
        o.response.status,
        o.response.text()
    );
    assert_eq!(
        o.reached,
        [(upstream.into(), method.into(), target.into())],
        "{method} {target}"
    );
}

/// Refused by the gateway with `status` and `code`; the upstreams saw nothing.
#[track_caller]
fn refused(o: &Outcome, status: u16, code: &str) {
    assert_eq!(
        (o.response.status, o.response.error_code().as_str()),
        (status, code),
        "{}",
        o.response.text()
    );
    assert!(
        o.reached.is_empty(),
        "reached the upstream: {:?}",
        o.reached
    );
}

#[test]
fn senders_list_with_any_key_create_by_from_email_domain_and_the_rest_is_org_wide() {
    let gw = TestGateway::start();
    let k = sample::setup(&gw.keystore);

    // Listing: any live key, with the scope header for the upstream to filter.
    let o = send(&gw, with_key("GET", "/senders?count=50&offset=0", &k.dev));
    admitted(&o, "domains", "GET", "/senders?count=50&offset=0");
    let seen = gw.domains.requests().pop().unwrap();
    assert_eq!(
        seen.header("x-scopegate-scope"),
        Some("staging.example.com=read_write")
    );
    refused(
        &send(&gw, Request::new("GET", "/senders")),
        401,
        "missing_api_key",
    );

    // Creating: by the domain of FromEmail, which the key must write.
    let create = |key: &str, from: serde_json::Value| {
        send(
            &gw,
            with_key("POST", "/senders/", key).json(&json!({"FromEmail": from, "Name": "Dev"})),
        )
    };
    admitted(
        &create(&k.dev, json!("dev@staging.example.com")),
        "domains",
        "POST",
        "/senders/",
    );
    admitted(
        &create(&k.owner, json!("Boss <boss@example.com>")),
        "domains",
        "POST",
        "/senders/",
    );
    // dev only reads example.com; other.org is another org's; nowhere.test
    // exists nowhere: one identical answer.
    let bodies: Vec<Vec<u8>> = ["ceo@example.com", "x@other.org", "x@nowhere.test"]
        .iter()
        .map(|from| {
            let o = create(&k.dev, json!(from));
            refused(&o, 422, "sender_not_allowed");
            o.response.body
        })
        .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    refused(
        &create(&k.dev_read, json!("dev@staging.example.com")),
        422,
        "sender_not_allowed",
    );
    refused(&create(&k.dev, json!(null)), 422, "invalid_sender");
    refused(
        &create(&k.dev, json!("a@b.com, c@staging.example.com")),
        422,
        "invalid_sender",
    );
    let o = send(
        &gw,
        with_key("POST", "/senders", &k.dev).json(&json!({"Name": "no address"})),
    );
    refused(&o, 422, "invalid_sender");

    // A signature's id says nothing about its domain: organisation-level.
    for (method, path) in [
        ("GET", "/senders/17"),
        ("PUT", "/senders/17"),
        ("DELETE", "/senders/17"),
        ("POST", "/senders/17/resend"),
        ("POST", "/senders/17/verifyspf"),
        ("POST", "/senders/17/requestnewdkim"),
    ] {
        refused(
            &send(&gw, with_key(method, path, &k.dev)),
            403,
            "org_wide_key_required",
        );
        refused(
            &send(&gw, with_key(method, path, &k.admin_client_a)),
            403,
            "org_wide_key_required",
        );
        admitted(
            &send(&gw, with_key(method, path, &k.admin)),
            "domains",
            method,
            path,
        );
    }
}

#[test]
fn servers_data_removals_and_template_pushes_are_organisation_level() {
    let gw = TestGateway::start();
    let k = sample::setup(&gw.keystore);
    for (method, path) in [
        ("GET", "/servers?count=10&offset=0"),
        ("POST", "/servers"),
        ("GET", "/servers/12"),
        ("PUT", "/servers/12"),
        ("DELETE", "/servers/12"),
        ("POST", "/data-removals"),
        ("GET", "/data-removals/5"),
        ("PUT", "/templates/push"),
        ("PUT", "/Templates/Push/"),
    ] {
        refused(
            &send(&gw, with_key(method, path, &k.dev)),
            403,
            "org_wide_key_required",
        );
        refused(
            &send(&gw, with_key(method, path, &k.ops)),
            403,
            "org_wide_key_required",
        );
        admitted(
            &send(&gw, with_key(method, path, &k.owner)),
            "domains",
            method,
            path,
        );
    }
    // A server id is a number; anything else cannot be one.
    refused(
        &send(&gw, with_key("GET", "/servers/abc", &k.owner)),
        404,
        "not_found",
    );
    // The more specific route wins only for pushes: other methods on
    // /templates/push are the server's template aliased "push".
    refused(
        &send(&gw, with_key("GET", "/templates/push", &k.owner)),
        403,
        "server_key_required",
    );
}

/// The server API, per path and method, as a server token's client sends it.
const SERVER_CALLS: &[(&str, &str)] = &[
    ("GET", "/server"),
    ("PUT", "/server"),
    ("GET", "/messages/outbound?count=10&offset=0"),
    ("GET", "/messages/outbound/abc/details"),
    ("PUT", "/messages/inbound/abc/retry"),
    ("GET", "/bounces?count=10&offset=0"),
    ("PUT", "/bounces/42/activate"),
    ("GET", "/deliverystats"),
    ("GET", "/templates?count=10&offset=0"),
    ("POST", "/templates"),
    ("PUT", "/templates/welcome"),
    ("DELETE", "/templates/push"),
    ("POST", "/templates/validate"),
    ("GET", "/stats/outbound"),
    ("GET", "/stats/outbound/opens/platforms"),
    ("GET", "/webhooks"),
    ("POST", "/webhooks"),
    ("DELETE", "/webhooks/3"),
    ("GET", "/message-streams"),
    ("PATCH", "/message-streams/outbound"),
    ("GET", "/message-streams/outbound/suppressions/dump"),
    ("POST", "/message-streams/outbound/suppressions/delete"),
    ("GET", "/triggers/inboundrules"),
    ("POST", "/triggers/inboundrules"),
    ("DELETE", "/triggers/inboundrules/4"),
];

#[test]
fn server_routes_refuse_keys_bound_to_no_server() {
    let gw = TestGateway::start();
    let k = sample::setup(&gw.keystore);
    // Org-wide account keys and domain-scoped keys alike: no server binding.
    for key in [&k.owner, &k.admin, &k.dev, &k.ops] {
        for (method, path) in SERVER_CALLS {
            refused(
                &send(&gw, with_key(method, path, key)),
                403,
                "server_key_required",
            );
        }
    }
    // A bad key is still a 401 first.
    refused(
        &send(&gw, Request::new("GET", "/server")),
        401,
        "missing_api_key",
    );
    let bogus = scopegate_keystore::secret::generate();
    refused(
        &send(&gw, with_key("GET", "/server", &bogus)),
        401,
        "invalid_api_key",
    );
    // Routes Postmark has and the defaults do not list stay unknown: 404.
    refused(
        &send(&gw, with_key("GET", "/triggers/tags", &k.owner)),
        404,
        "not_found",
    );
}

#[test]
fn postmark_format_gives_every_refusal_postmarks_envelope() {
    let gw = TestGateway::start_with(|c| c.response_format = ResponseFormat::Postmark);
    let k = sample::setup(&gw.keystore);
    let envelope = |o: &Outcome| {
        assert!(
            o.reached.is_empty(),
            "reached the upstream: {:?}",
            o.reached
        );
        let v = o.response.json();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["ErrorCode", "Message"], "{v}");
        (o.response.status, v["ErrorCode"].as_u64().unwrap())
    };
    // Tokens of the wrong kind: Postmark's code 10 (with our 403).
    let o = send(&gw, with_key("GET", "/server", &k.owner));
    assert_eq!(envelope(&o), (403, 10));
    assert!(o.response.text().contains("server token"));
    let o = send(&gw, with_key("GET", "/servers", &k.dev));
    assert_eq!(envelope(&o), (403, 10));
    assert!(o.response.text().contains("account token"));
    // The 404 is one body whatever exists.
    let a = send(&gw, with_key("GET", "/domains/example.com", &k.dev));
    let b = send(&gw, with_key("GET", "/domains/nowhere.test", &k.dev));
    let c = send(&gw, with_key("GET", "/no/such/route", &k.owner));
    assert_eq!(envelope(&a), (404, 0));
    assert_eq!(a.response.body, b.response.body);
    assert_eq!(a.response.body, c.response.body);
    // Senders on /senders: Postmark's 400 for a From the key may not use.
    let o = send(
        &gw,
        with_key("POST", "/senders", &k.dev).json(&json!({"FromEmail": "ceo@example.com"})),
    );
    assert_eq!(envelope(&o), (422, 400));
}

#[test]
fn rate_limited_keys_get_postmarks_429_envelope() {
    let gw = TestGateway::start_with(|c| c.response_format = ResponseFormat::Postmark);
    let k = sample::setup(&gw.keystore);
    let limit = gw.admin(
        Request::new("PATCH", &format!("/v1/keys/{}", k.ids["dev"]))
            .json(&json!({"rate_limit": {"per_second": 1, "burst": 1}})),
    );
    assert!(limit.status < 300, "{}", limit.text());
    // One token a second, a bucket of one: within a few requests one is over.
    let mut over = None;
    for _ in 0..5 {
        let o = send(&gw, with_key("GET", "/domains/102", &k.dev));
        if o.response.status == 429 {
            over = Some(o);
            break;
        }
        admitted(&o, "domains", "GET", "/domains/102");
    }
    let o = over.expect("a request over the limit");
    assert!(o.reached.is_empty());
    assert!(o.response.header("retry-after").is_some());
    let v = o.response.json();
    assert_eq!(v["ErrorCode"], 429, "{v}");
}

/// The sample organisation plus two servers and the seed's server roles.
struct Servers {
    /// owner@acme.test's key bound to `prod` (and org-wide on domains).
    owner_prod: String,
    /// admin@acme.test's key bound to `staging`, read-only on it.
    admin_staging_read: String,
    /// sa@example.com (Server Admin on prod, Viewer on staging; writes
    /// staging.example.com): a key bound to prod.
    sa_prod: String,
    /// sa@example.com: bound to prod, read-only on it.
    sa_prod_read: String,
    /// sv@example.com (Server Viewer on prod; writes client-a.com): a
    /// domain key, bound to no server.
    sv_domains: String,
}

fn servers(gw: &TestGateway) -> (sample::Keys, Servers) {
    use scopegate_keystore::{Access, NewKey, Role, UserInput};
    use std::collections::BTreeMap;
    let ks = &gw.keystore;
    let k = sample::setup(ks);
    ks.put_server("t", "acme", "prod", 11).unwrap();
    ks.put_server("t", "acme", "staging", 12).unwrap();
    ks.put_server("t", "other", "prod", 91).unwrap();
    let member = |access: &[(&str, Access)], servers: &[(&str, Access)]| {
        let map = |p: &[(&str, Access)]| -> BTreeMap<String, Access> {
            p.iter().map(|(n, a)| (n.to_string(), *a)).collect()
        };
        (
            UserInput {
                role: Role::Member,
                access: map(access),
                status: None,
            },
            Some(map(servers)),
        )
    };
    for (user, (input, srv)) in [
        (
            "sa@example.com",
            member(
                &[("staging.example.com", Access::ReadWrite)],
                &[("prod", Access::ReadWrite), ("staging", Access::Read)],
            ),
        ),
        (
            "sv@example.com",
            member(
                &[("client-a.com", Access::ReadWrite)],
                &[("prod", Access::Read)],
            ),
        ),
    ] {
        ks.put_user_with_servers("t", "acme", user, input, srv)
            .unwrap();
    }
    let now = scopegate_keystore::time::now();
    let key = |user: &str, org_wide: bool, server: Option<&str>, access: Option<Access>| {
        ks.create_key(
            "t",
            "acme",
            NewKey {
                user: user.into(),
                org_wide,
                server: server.map(str::to_string),
                server_access: access,
                ..NewKey::default()
            },
            now,
        )
        .map(|c| c.value.secret)
    };
    let s = Servers {
        owner_prod: key("owner@acme.test", true, Some("prod"), None).unwrap(),
        admin_staging_read: key("admin@acme.test", true, Some("staging"), Some(Access::Read))
            .unwrap(),
        sa_prod: key("sa@example.com", false, Some("prod"), None).unwrap(),
        sa_prod_read: key("sa@example.com", false, Some("prod"), Some(Access::Read)).unwrap(),
        sv_domains: key("sv@example.com", false, None, None).unwrap(),
    };
    // Creation: the creator must have read_write on the server now.
    let refused = |user: &str, server: &str| {
        let e = key(user, false, Some(server), Some(Access::Read)).unwrap_err();
        assert_eq!(
            e.kind,
            scopegate_keystore::ErrorKind::Rule,
            "{user} on {server}: {e}"
        );
    };
    refused("sa@example.com", "staging"); // Server Viewer there
    refused("sv@example.com", "prod"); // Server Viewer there
    refused("dev@example.com", "prod"); // not assigned at all
    refused("owner@acme.test", "nowhere");
    (k, s)
}

fn is_read(method: &str) -> bool {
    method == "GET" || method == "HEAD"
}

#[test]
fn server_routes_follow_the_key_and_its_creators_level_on_the_bound_server() {
    let gw = TestGateway::start();
    let (k, s) = servers(&gw);
    for (method, path) in SERVER_CALLS {
        let go = |key: &str| send(&gw, with_key(method, path, key));
        // Account Owner's and Server Admin's server tokens: everything.
        admitted(&go(&s.owner_prod), "sending", method, path);
        admitted(&go(&s.sa_prod), "sending", method, path);
        // Read-only server tokens: reads only.
        for key in [&s.admin_staging_read, &s.sa_prod_read] {
            let o = go(key);
            if is_read(method) {
                admitted(&o, "sending", method, path);
            } else {
                refused(&o, 403, "read_only");
            }
        }
        // Keys bound to no server: account tokens and domain keys.
        for key in [&k.owner, &s.sv_domains, &k.dev] {
            refused(&go(key), 403, "server_key_required");
        }
    }
    // The upstream learns which server the key acts for; unbound: empty.
    admitted(
        &send(
            &gw,
            with_key("GET", "/server", &s.sa_prod)
                .header("X-Scopegate-Server", "staging")
                .header("x-scopegate-SERVER", "other"),
        ),
        "sending",
        "GET",
        "/server",
    );
    let seen = gw.sending.requests().pop().unwrap();
    assert_eq!(seen.header_all("x-scopegate-server"), ["prod"]);
    assert_eq!(seen.header("x-scopegate-user"), Some("sa@example.com"));
    admitted(
        &send(
            &gw,
            with_key("GET", "/domains/102", &k.dev).header("X-Scopegate-Server", "prod"),
        ),
        "domains",
        "GET",
        "/domains/102",
    );
    let seen = gw.domains.requests().pop().unwrap();
    assert_eq!(seen.header_all("x-scopegate-server"), [""]);
}

#[test]
fn servers_by_id_are_org_wide_except_reading_a_keys_own_server() {
    let gw = TestGateway::start();
    let (k, s) = servers(&gw);
    // Org-wide account keys: any server, any method.
    for (method, path) in [
        ("GET", "/servers/11"),
        ("PUT", "/servers/12"),
        ("DELETE", "/servers/12"),
    ] {
        admitted(
            &send(&gw, with_key(method, path, &k.owner)),
            "domains",
            method,
            path,
        );
    }
    // A server token reads its own server by id, and nothing else there.
    for key in [&s.sa_prod, &s.sa_prod_read, &s.owner_prod] {
        admitted(
            &send(&gw, with_key("GET", "/servers/11", key)),
            "domains",
            "GET",
            "/servers/11",
        );
        for (method, path) in [
            ("GET", "/servers/12"),
            ("GET", "/servers/91"), // the other organisation's prod
            ("GET", "/servers/999"),
            ("PUT", "/servers/11"),
            ("DELETE", "/servers/11"),
            ("GET", "/servers"),
            ("POST", "/servers"),
        ] {
            refused(
                &send(&gw, with_key(method, path, key)),
                403,
                "org_wide_key_required",
            );
        }
    }
    // A server token is never an account token, whatever its domain scope:
    // owner_prod is org-wide on domains but not for organisation endpoints.
    admitted(
        &send(&gw, with_key("GET", "/domains/101", &s.owner_prod)),
        "domains",
        "GET",
        "/domains/101",
    );
    for (method, path) in [
        ("POST", "/domains"),
        ("GET", "/account"),
        ("GET", "/senders/3"),
        ("PUT", "/templates/push"),
    ] {
        refused(
            &send(&gw, with_key(method, path, &s.owner_prod)),
            403,
            "org_wide_key_required",
        );
    }
    // Domain keys and Server Viewers without a token: organisation-level.
    refused(
        &send(&gw, with_key("GET", "/servers/11", &s.sv_domains)),
        403,
        "org_wide_key_required",
    );
    refused(
        &send(&gw, with_key("GET", "/servers/11", &k.dev)),
        403,
        "org_wide_key_required",
    );
}

fn email(from: &str) -> serde_json::Value {
    json!({"From": from, "To": "r@recipient.test", "Subject": "s", "TextBody": "t"})
}

#[test]
fn sends_through_a_server_token_need_write_on_the_server_and_every_from_domain() {
    let gw = TestGateway::start();
    let (k, s) = servers(&gw);
    let post = |path: &str, key: &str, body: serde_json::Value| {
        send(&gw, with_key("POST", path, key).json(&body))
    };
    admitted(
        &post("/email", &s.sa_prod, email("sa@staging.example.com")),
        "sending",
        "POST",
        "/email",
    );
    admitted(
        &post("/email", &s.owner_prod, email("ceo@example.com")),
        "sending",
        "POST",
        "/email",
    );
    let batch = json!([
        email("a@staging.example.com"),
        email("b@staging.example.com")
    ]);
    admitted(
        &post("/email/batch", &s.sa_prod, batch.clone()),
        "sending",
        "POST",
        "/email/batch",
    );
    // Write on the server but not on the From domain.
    refused(
        &post("/email", &s.sa_prod, email("ceo@example.com")),
        422,
        "sender_not_allowed",
    );
    let mixed = json!([email("a@staging.example.com"), email("b@example.com")]);
    refused(
        &post("/email/batch", &s.sa_prod, mixed),
        422,
        "sender_not_allowed",
    );
    // Write on the From domain but read-only on the server.
    refused(
        &post("/email", &s.sa_prod_read, email("sa@staging.example.com")),
        403,
        "read_only",
    );
    refused(
        &post("/email/batch", &s.sa_prod_read, batch),
        403,
        "read_only",
    );
    refused(
        &post("/email", &s.admin_staging_read, email("ceo@example.com")),
        403,
        "read_only",
    );
    // Keys bound to no server send as before: by the From domains alone.
    admitted(
        &post("/email", &k.dev, email("dev@staging.example.com")),
        "sending",
        "POST",
        "/email",
    );
    admitted(
        &post("/email", &s.sv_domains, email("sv@client-a.com")),
        "sending",
        "POST",
        "/email",
    );
    let seen = gw.sending.requests();
    let servers: Vec<&str> = seen
        .iter()
        .map(|r| r.header("x-scopegate-server").unwrap())
        .collect();
    assert_eq!(servers, ["prod", "prod", "prod", "", ""]);
}

#[test]
fn demoting_or_unassigning_the_creator_or_deleting_the_server_changes_keys_on_the_next_request() {
    use scopegate_keystore::{Access, Role, UserInput};
    use std::collections::BTreeMap;
    let gw = TestGateway::start();
    let (k, s) = servers(&gw);
    let sa = |servers: &[(&str, Access)]| {
        let input = UserInput {
            role: Role::Member,
            access: BTreeMap::from([("staging.example.com".to_string(), Access::ReadWrite)]),
            status: None,
        };
        let map = servers.iter().map(|(n, a)| (n.to_string(), *a)).collect();
        gw.keystore
            .put_user_with_servers("t", "acme", "sa@example.com", input, Some(map))
            .unwrap();
    };
    let get = |key: &str| send(&gw, with_key("GET", "/messages/outbound", key));
    let put = |key: &str| send(&gw, with_key("PUT", "/server", key));
    let mail = |key: &str| {
        send(
            &gw,
            with_key("POST", "/email", key).json(&email("sa@staging.example.com")),
        )
    };
    admitted(&put(&s.sa_prod), "sending", "PUT", "/server");

    // Server Admin -> Server Viewer on prod: the key's writes stop at once.
    sa(&[("prod", Access::Read)]);
    admitted(&get(&s.sa_prod), "sending", "GET", "/messages/outbound");
    refused(&put(&s.sa_prod), 403, "read_only");
    refused(&mail(&s.sa_prod), 403, "read_only");
    // Promoted back: the key is what it was.
    sa(&[("prod", Access::ReadWrite)]);
    admitted(&put(&s.sa_prod), "sending", "PUT", "/server");
    admitted(&mail(&s.sa_prod), "sending", "POST", "/email");
    // Unassigned from prod: nothing on it, reads included.
    sa(&[("staging", Access::Read)]);
    for o in [get(&s.sa_prod), put(&s.sa_prod), mail(&s.sa_prod)] {
        refused(&o, 403, "server_not_visible");
    }
    refused(&get(&s.sa_prod_read), 403, "server_not_visible");
    // The server deleted: its tokens grant nothing on server routes.
    let deleted = gw.keystore.delete_server("t", "acme", "staging").unwrap();
    assert_eq!(deleted.value, 1, "one live key was bound to staging");
    refused(&get(&s.admin_staging_read), 403, "server_not_visible");
    // Others are untouched.
    admitted(&get(&s.owner_prod), "sending", "GET", "/messages/outbound");
    // The creator deactivated: every key of theirs is dead, bound or not.
    gw.keystore
        .deactivate_user("t", "acme", "owner@acme.test")
        .unwrap_err(); // the last owner stays
    gw.keystore
        .deactivate_user("t", "acme", "sa@example.com")
        .unwrap();
    refused(&get(&s.sa_prod), 401, "invalid_api_key");
    let _ = k;
}

#[test]
fn a_creator_unassigned_while_a_send_uploads_is_refused_after_the_body() {
    use scopegate_keystore::{Access, Role, UserInput};
    use scopegate_suite::http::Conn;
    let gw = TestGateway::start_with(|c| {
        c.limits.body_read_timeout = std::time::Duration::from_secs(10)
    });
    let (_, s) = servers(&gw);
    let body = email("sa@staging.example.com").to_string();
    let mut c = Conn::open(gw.proxy);
    c.write_raw(
        format!(
            "POST /email HTTP/1.1\r\nHost: t\r\nX-Postmark-Server-Token: {}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            s.sa_prod,
            body.len()
        )
        .as_bytes(),
    );
    // 100 Continue: the head, server included, was admitted.
    assert_eq!(c.read_interim(), 100);
    let input = UserInput {
        role: Role::Member,
        access: [("staging.example.com".to_string(), Access::ReadWrite)].into(),
        status: None,
    };
    gw.keystore
        .put_user_with_servers(
            "t",
            "acme",
            "sa@example.com",
            input,
            Some(Default::default()),
        )
        .unwrap();
    c.write_raw(body.as_bytes());
    let r = c.read_response(false);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "server_not_visible")
    );
    assert_eq!(gw.sending.count(), 0);
}
