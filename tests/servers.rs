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
