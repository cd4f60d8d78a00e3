//! Postmark's official Node.js client (`postmark` on npm) and the Python
//! client `postmarker` (PyPI), installed by this test from their registries
//! and pointed at a gateway with `response_format = "postmark"`: every call
//! a key may make succeeds and reaches the upstream exactly once; every call
//! it may not make is refused by the gateway, surfaces in the client as the
//! typed error with Postmark's `ErrorCode`, and never reaches the upstream.

use std::path::{Path, PathBuf};
use std::process::Command;

use scopegate_config::ResponseFormat;
use scopegate_suite::gateway::TestGateway;
use scopegate_suite::sample;
use serde_json::{json, Value};

/// The client this suite is checked against (the current major version).
const POSTMARK: &str = "postmark@5";
/// The Python client, by its current major version.
const POSTMARKER: &str = "postmarker>=1,<2";

/// Held while a client library is installed: this file's tests run on
/// parallel threads, and on a fresh target directory each would otherwise
/// install into the same folder at once (`python3 -m venv` then fails with
/// "File exists").
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `node_modules` with `postmark`, installed once per target directory.
fn postmark_modules() -> PathBuf {
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("npm-postmark");
    let modules = dir.join("node_modules");
    if !modules.join("postmark").join("package.json").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg(POSTMARK)
            .output()
            .expect("npm is installed (bash run.sh test installs nodejs and npm)");
        assert!(
            out.status.success(),
            "npm install postmark: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    modules
}

/// A virtual environment with `postmarker`, made once per target directory
/// (`python3 -m venv`; bash run.sh test installs python3-venv); its python.
fn postmarker_python() -> PathBuf {
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-postmarker");
    let python = dir.join("bin").join("python");
    let ready = dir.join("installed");
    if !ready.exists() {
        let out = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&dir)
            .output()
            .expect("python3 is installed (bash run.sh test installs python3 and python3-venv)");
        assert!(
            out.status.success(),
            "python3 -m venv: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                POSTMARKER,
            ])
            .output()
            .expect("the venv's python runs");
        assert!(
            out.status.success(),
            "pip install postmarker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&ready, POSTMARKER).unwrap();
    }
    python
}

/// Runs `calls` through `postmarker`; what it reported for each.
fn run_python(gw: &TestGateway, calls: &[Value]) -> Vec<Value> {
    let python = postmarker_python();
    let spec = tempfile::NamedTempFile::new().unwrap();
    let body = json!({"host": gw.proxy.to_string(), "calls": calls});
    std::fs::write(spec.path(), body.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/postmarker_calls.py");
    let out = Command::new(python)
        .arg(script)
        .arg(spec.path())
        .output()
        .expect("the venv's python runs");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON array")
}

/// Runs `calls` through the client; what it reported for each.
fn run(gw: &TestGateway, calls: &[Value]) -> Vec<Value> {
    let modules = postmark_modules();
    let spec = tempfile::NamedTempFile::new().unwrap();
    let body = json!({"host": gw.proxy.to_string(), "calls": calls});
    std::fs::write(spec.path(), body.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/postmark.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(spec.path())
        .env("POSTMARK_MODULES", &modules)
        .output()
        .expect("node is installed");
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON array")
}

fn call(client: &str, token: &str, method: &str, args: Value) -> Value {
    json!({"client": client, "token": token, "method": method, "args": args})
}

fn email(from: &str) -> Value {
    json!({"From": from, "To": "someone@recipient.test", "Subject": "hi", "TextBody": "hello"})
}

#[test]
fn the_official_node_client_gets_through_what_its_key_allows_and_typed_errors_for_the_rest() {
    let gw = TestGateway::start_with(|c| c.response_format = ResponseFormat::Postmark);
    let keys = sample::setup(&gw.keystore);
    let bogus = scopegate_keystore::secret::generate();
    // (call, upstream path it must reach, or the error the client must report)
    type Expect = Result<(&'static str, &'static str), (&'static str, u64, u64)>;
    let cases: Vec<(Value, Expect)> = vec![
        (
            call(
                "account",
                &keys.owner,
                "getDomains",
                json!([{"count": 10, "offset": 0}]),
            ),
            Ok(("GET", "/domains?count=10&offset=0")),
        ),
        (
            call(
                "account",
                &keys.owner,
                "createDomain",
                json!([{"Name": "new.example"}]),
            ),
            Ok(("POST", "/domains/")),
        ),
        (
            call("account", &keys.dev, "getDomain", json!([102])),
            Ok(("GET", "/domains/102")),
        ),
        (
            call("account", &keys.dev, "verifyDomainDKIM", json!([102])),
            Ok(("PUT", "/domains/102/verifyDKIM")),
        ),
        (
            call("account", &keys.dev, "deleteDomain", json!([102])),
            Ok(("DELETE", "/domains/102")),
        ),
        (
            call(
                "server",
                &keys.dev,
                "sendEmail",
                json!([email("Dev <dev@staging.example.com>")]),
            ),
            Ok(("POST", "/email")),
        ),
        (
            call(
                "server",
                &keys.dev,
                "sendEmailBatch",
                json!([[
                    email("a@staging.example.com"),
                    email("b@staging.example.com")
                ]]),
            ),
            Ok(("POST", "/email/batch")),
        ),
        // Refused by the gateway, typed by the client.
        (
            call("account", &bogus, "getDomains", json!([])),
            Err(("InvalidAPIKeyError", 10, 401)),
        ),
        (
            call("account", &keys.dev, "getDomain", json!([101])),
            Err(("PostmarkError", 0, 404)),
        ),
        (
            call("account", &keys.dev, "getDomain", json!([999])),
            Err(("PostmarkError", 0, 404)),
        ),
        (
            call(
                "account",
                &keys.dev,
                "createDomain",
                json!([{"Name": "x.example"}]),
            ),
            Err(("UnknownError", 10, 403)),
        ),
        (
            call("account", &keys.dev_read, "verifyDomainDKIM", json!([102])),
            Err(("UnknownError", 0, 403)),
        ),
        (
            call(
                "server",
                &keys.dev,
                "sendEmail",
                json!([email("boss@example.com")]),
            ),
            Err(("ApiInputError", 400, 422)),
        ),
        (
            call(
                "server",
                &keys.dev,
                "sendEmail",
                json!([email("nobody@nowhere.test")]),
            ),
            Err(("ApiInputError", 400, 422)),
        ),
        (
            call(
                "server",
                &keys.dev,
                "sendEmail",
                json!([{"To": "x@y.test", "TextBody": "no from"}]),
            ),
            Err(("InvalidEmailRequestError", 300, 422)),
        ),
        (
            call(
                "server",
                &keys.dev,
                "sendEmailBatch",
                json!([[email("a@staging.example.com"), email("b@example.com")]]),
            ),
            Err(("ApiInputError", 400, 422)),
        ),
    ];
    let calls: Vec<Value> = cases.iter().map(|(c, _)| c.clone()).collect();
    let results = run(&gw, &calls);
    assert_eq!(results.len(), cases.len());
    let mut reached = Vec::new();
    for ((c, expect), got) in cases.iter().zip(&results) {
        match expect {
            Ok(upstream) => {
                assert_eq!(got["ok"], true, "{c} -> {got}");
                reached.push(*upstream);
            }
            Err((name, code, status)) => {
                assert_eq!(got["ok"], false, "{c} -> {got}");
                assert_eq!(got["error"], *name, "{c} -> {got}");
                assert_eq!(got["code"], *code, "{c} -> {got}");
                assert_eq!(got["status"], *status, "{c} -> {got}");
            }
        }
    }
    // Exactly the allowed calls reached the upstreams, once each, in order.
    let mut seen: Vec<(String, String)> = gw
        .domains
        .requests()
        .into_iter()
        .chain(gw.sending.requests())
        .map(|r| (r.method, r.target))
        .collect();
    let mut want: Vec<(String, String)> = reached
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    seen.sort();
    want.sort();
    assert_eq!(seen, want);
}

/// What a call must do: reach the upstream as `(method, path)` (the query
/// aside), or fail in the client as `(error type, ErrorCode, status)`.
type Expect = Result<(&'static str, &'static str), (&'static str, u64, u64)>;

/// Every call did what `cases` says, and exactly the allowed calls reached
/// the upstreams, once each.
#[track_caller]
fn check(gw: &TestGateway, cases: &[(Value, Expect)], results: &[Value]) {
    assert_eq!(results.len(), cases.len());
    let mut want = Vec::new();
    for ((c, expect), got) in cases.iter().zip(results) {
        match expect {
            Ok((method, path)) => {
                assert_eq!(got["ok"], true, "{c} -> {got}");
                want.push((method.to_string(), path.to_string()));
            }
            Err((name, code, status)) => {
                assert_eq!(got["ok"], false, "{c} -> {got}");
                assert_eq!(got["error"], *name, "{c} -> {got}");
                assert_eq!(got["code"], *code, "{c} -> {got}");
                assert_eq!(got["status"], *status, "{c} -> {got}");
            }
        }
    }
    let mut seen: Vec<(String, String)> = gw
        .domains
        .requests()
        .into_iter()
        .chain(gw.sending.requests())
        .map(|r| {
            let path = r.target.split('?').next().unwrap_or_default().to_string();
            (r.method, path)
        })
        .collect();
    seen.sort();
    want.sort();
    assert_eq!(seen, want);
}

fn py(client: &str, token: &str, method: &str, args: Value, kwargs: Value) -> Value {
    json!({"client": client, "token": token, "method": method, "args": args, "kwargs": kwargs})
}

#[test]
fn the_python_client_gets_through_what_its_key_allows_and_client_errors_with_codes_for_the_rest() {
    let gw = TestGateway::start_with(|c| c.response_format = ResponseFormat::Postmark);
    let keys = sample::setup(&gw.keystore);
    let bogus = scopegate_keystore::secret::generate();
    let none = json!({});
    let send = |from: &str| json!({"From": from, "To": "someone@recipient.test", "Subject": "hi", "TextBody": "hello"});
    const E: &str = "ClientError";
    let cases: Vec<(Value, Expect)> = vec![
        (
            py(
                "account",
                &keys.owner,
                "domains.get",
                json!([101]),
                none.clone(),
            ),
            Ok(("GET", "/domains/101")),
        ),
        (
            py(
                "account",
                &keys.owner,
                "domains.create",
                json!([]),
                json!({"Name": "new.example"}),
            ),
            Ok(("POST", "/domains")),
        ),
        (
            py(
                "account",
                &keys.dev,
                "domains.verifydkim",
                json!([102]),
                none.clone(),
            ),
            Ok(("PUT", "/domains/102/verifyDkim")),
        ),
        (
            py(
                "account",
                &keys.dev,
                "senders.create",
                json!([]),
                json!({"FromEmail": "dev@staging.example.com", "Name": "Dev"}),
            ),
            Ok(("POST", "/senders/")),
        ),
        (
            py(
                "account",
                &keys.admin,
                "senders.get",
                json!([17]),
                none.clone(),
            ),
            Ok(("GET", "/senders/17")),
        ),
        (
            py(
                "server",
                &keys.dev,
                "emails.send",
                json!([]),
                send("Dev <dev@staging.example.com>"),
            ),
            Ok(("POST", "/email")),
        ),
        // Refused by the gateway: ClientError with Postmark's code.
        (
            py("account", &bogus, "domains.get", json!([101]), none.clone()),
            Err((E, 10, 401)),
        ),
        (
            py(
                "account",
                &keys.dev,
                "domains.get",
                json!([101]),
                none.clone(),
            ),
            Err((E, 0, 404)),
        ),
        (
            py(
                "account",
                &keys.dev,
                "domains.create",
                json!([]),
                json!({"Name": "x.example"}),
            ),
            Err((E, 10, 403)),
        ),
        (
            py(
                "account",
                &keys.dev_read,
                "domains.verifydkim",
                json!([102]),
                none.clone(),
            ),
            Err((E, 0, 403)),
        ),
        (
            py(
                "account",
                &keys.dev,
                "senders.create",
                json!([]),
                json!({"FromEmail": "ceo@example.com", "Name": "Not dev"}),
            ),
            Err((E, 400, 422)),
        ),
        (
            py(
                "account",
                &keys.dev,
                "senders.get",
                json!([17]),
                none.clone(),
            ),
            Err((E, 10, 403)),
        ),
        (
            py(
                "server",
                &keys.dev,
                "emails.send",
                json!([]),
                send("boss@example.com"),
            ),
            Err((E, 400, 422)),
        ),
        // An account token on the server API.
        (
            py("server", &keys.owner, "server.get", json!([]), none.clone()),
            Err((E, 10, 403)),
        ),
    ];
    let calls: Vec<Value> = cases.iter().map(|(c, _)| c.clone()).collect();
    let results = run_python(&gw, &calls);
    check(&gw, &cases, &results);
}

/// Server tokens beside the sample organisation: servers `prod` (id 11)
/// and `staging` (12); sa@example.com is Server Admin on prod. Returns
/// (sa's key bound to prod, sa's read-only key bound to prod).
fn server_tokens(gw: &TestGateway) -> (String, String) {
    use scopegate_keystore::{Access, NewKey, Role, UserInput};
    let ks = &gw.keystore;
    ks.put_server("t", "acme", "prod", 11).unwrap();
    ks.put_server("t", "acme", "staging", 12).unwrap();
    let input = UserInput {
        role: Role::Member,
        access: [("staging.example.com".to_string(), Access::ReadWrite)].into(),
        status: None,
    };
    let servers = [("prod".to_string(), Access::ReadWrite)].into();
    ks.put_user_with_servers("t", "acme", "sa@example.com", input, Some(servers))
        .unwrap();
    let key = |access| {
        let k = NewKey {
            user: "sa@example.com".into(),
            server: Some("prod".into()),
            server_access: Some(access),
            ..NewKey::default()
        };
        let now = scopegate_keystore::time::now();
        ks.create_key("t", "acme", k, now).unwrap().value.secret
    };
    (key(Access::ReadWrite), key(Access::Read))
}

#[test]
fn the_node_clients_server_and_account_calls_follow_server_tokens() {
    let gw = TestGateway::start_with(|c| c.response_format = ResponseFormat::Postmark);
    let keys = sample::setup(&gw.keystore);
    let (sa, sa_read) = server_tokens(&gw);
    let page = json!([{"count": 10, "offset": 0}]);
    let template = json!([{"Name": "t", "Subject": "s", "TextBody": "b"}]);
    let mut cases: Vec<(Value, Expect)> = vec![
        // A Server Admin's server token: the server API, and sends from
        // domains the key writes.
        (
            call("server", &sa, "getServer", json!([])),
            Ok(("GET", "/server")),
        ),
        (
            call("server", &sa, "editServer", json!([{"Name": "prod"}])),
            Ok(("PUT", "/server")),
        ),
        (
            call("server", &sa, "getDeliveryStatistics", json!([])),
            Ok(("GET", "/deliveryStats")),
        ),
        (
            call("server", &sa, "getBounces", page.clone()),
            Ok(("GET", "/bounces")),
        ),
        (
            call("server", &sa, "getOutboundMessages", page.clone()),
            Ok(("GET", "/messages/outbound")),
        ),
        (
            call("server", &sa, "getTemplates", page.clone()),
            Ok(("GET", "/templates")),
        ),
        (
            call("server", &sa, "createTemplate", template.clone()),
            Ok(("POST", "/templates/")),
        ),
        (
            call("server", &sa, "getOutboundOverview", json!([{}])),
            Ok(("GET", "/stats/outbound")),
        ),
        (
            call("server", &sa, "getWebhooks", json!([{}])),
            Ok(("GET", "/webhooks")),
        ),
        (
            call("server", &sa, "getMessageStreams", json!([{}])),
            Ok(("GET", "/message-streams")),
        ),
        (
            call("server", &sa, "getSuppressions", json!(["outbound", {}])),
            Ok(("GET", "/message-streams/outbound/suppressions/dump")),
        ),
        (
            call("server", &sa, "getInboundRuleTriggers", page.clone()),
            Ok(("GET", "/triggers/inboundRules")),
        ),
        (
            call(
                "server",
                &sa,
                "sendEmail",
                json!([email("sa@staging.example.com")]),
            ),
            Ok(("POST", "/email")),
        ),
        // Its account-level calls: its own server by id, sender signatures
        // on its domains.
        (
            call("account", &sa, "getServer", json!([11])),
            Ok(("GET", "/servers/11")),
        ),
        (
            call("account", &sa, "getSenderSignatures", page.clone()),
            Ok(("GET", "/senders")),
        ),
        (
            call(
                "account",
                &sa,
                "createSenderSignature",
                json!([{"FromEmail": "sa@staging.example.com", "Name": "SA"}]),
            ),
            Ok(("POST", "/senders/")),
        ),
        // A read-only server token reads.
        (
            call("server", &sa_read, "getServer", json!([])),
            Ok(("GET", "/server")),
        ),
        (
            call("server", &sa_read, "getTemplates", page.clone()),
            Ok(("GET", "/templates")),
        ),
        // The Account Owner's account token on the account API.
        (
            call("account", &keys.owner, "getServers", page.clone()),
            Ok(("GET", "/servers")),
        ),
        (
            call("account", &keys.owner, "getServer", json!([12])),
            Ok(("GET", "/servers/12")),
        ),
        (
            call(
                "account",
                &keys.owner,
                "createServer",
                json!([{"Name": "new"}]),
            ),
            Ok(("POST", "/servers")),
        ),
        (
            call(
                "account",
                &keys.owner,
                "editServer",
                json!([12, {"Name": "stage"}]),
            ),
            Ok(("PUT", "/servers/12")),
        ),
        (
            call("account", &keys.owner, "deleteServer", json!([12])),
            Ok(("DELETE", "/servers/12")),
        ),
        (
            call("account", &keys.owner, "getSenderSignature", json!([3])),
            Ok(("GET", "/senders/3")),
        ),
        (
            call(
                "account",
                &keys.owner,
                "pushTemplates",
                json!([{"SourceServerID": 11, "DestinationServerID": 12, "PerformChanges": false}]),
            ),
            Ok(("PUT", "/templates/push")),
        ),
        (
            call(
                "account",
                &keys.owner,
                "requestDataRemoval",
                json!([{"RequestedBy": "a@b.test", "RequestedFor": "c@d.test", "NotifyWhenCompleted": false}]),
            ),
            Ok(("POST", "/data-removals")),
        ),
    ];
    // Refused by the gateway, typed by the client, never upstream.
    let wrong_kind = Err(("UnknownError", 10, 403));
    let read_only = Err(("UnknownError", 0, 403));
    cases.extend([
        (
            call("server", &sa_read, "editServer", json!([{"Name": "x"}])),
            read_only,
        ),
        (
            call("server", &sa_read, "createTemplate", template.clone()),
            read_only,
        ),
        (
            call(
                "server",
                &sa_read,
                "sendEmail",
                json!([email("sa@staging.example.com")]),
            ),
            read_only,
        ),
        (
            call(
                "server",
                &sa,
                "sendEmail",
                json!([email("ceo@example.com")]),
            ),
            Err(("ApiInputError", 400, 422)),
        ),
        // Account tokens (bound to no server) on the server API.
        (
            call("server", &keys.owner, "getServer", json!([])),
            wrong_kind,
        ),
        (
            call("server", &keys.dev, "getBounces", page.clone()),
            wrong_kind,
        ),
        // A server token on the account API, beyond its own server.
        (call("account", &sa, "getServer", json!([12])), wrong_kind),
        (call("account", &sa, "getServers", page.clone()), wrong_kind),
        (
            call("account", &sa, "editServer", json!([11, {"Name": "x"}])),
            wrong_kind,
        ),
        (
            call("account", &sa, "getSenderSignature", json!([3])),
            wrong_kind,
        ),
        (
            call(
                "account",
                &sa,
                "pushTemplates",
                json!([{"SourceServerID": 11, "DestinationServerID": 12, "PerformChanges": false}]),
            ),
            wrong_kind,
        ),
        (
            call(
                "account",
                &scopegate_keystore::secret::generate(),
                "getServers",
                json!([]),
            ),
            Err(("InvalidAPIKeyError", 10, 401)),
        ),
    ]);
    let calls: Vec<Value> = cases.iter().map(|(c, _)| c.clone()).collect();
    let results = run(&gw, &calls);
    check(&gw, &cases, &results);
}

#[test]
fn the_python_clients_server_calls_follow_server_tokens() {
    let gw = TestGateway::start_with(|c| c.response_format = ResponseFormat::Postmark);
    let keys = sample::setup(&gw.keystore);
    let (sa, sa_read) = server_tokens(&gw);
    let none = json!({});
    let no = json!([]);
    const E: &str = "ClientError";
    let cases: Vec<(Value, Expect)> = vec![
        (
            py("server", &sa, "server.get", no.clone(), none.clone()),
            Ok(("GET", "/server")),
        ),
        (
            py(
                "server",
                &sa,
                "server.edit",
                no.clone(),
                json!({"Name": "prod"}),
            ),
            Ok(("PUT", "/server")),
        ),
        (
            py(
                "server",
                &sa,
                "bounces.deliverystats",
                no.clone(),
                none.clone(),
            ),
            Ok(("GET", "/deliverystats")),
        ),
        (
            py("server", &sa, "bounces.get", json!([42]), none.clone()),
            Ok(("GET", "/bounces/42")),
        ),
        (
            py("server", &sa, "stats.overview", no.clone(), none.clone()),
            Ok(("GET", "/stats/outbound")),
        ),
        (
            py("server", &sa, "templates.get", json!([5]), none.clone()),
            Ok(("GET", "/templates/5")),
        ),
        (
            py(
                "server",
                &sa,
                "templates.create",
                no.clone(),
                json!({"Name": "t", "Subject": "s", "TextBody": "b"}),
            ),
            Ok(("POST", "/templates")),
        ),
        (
            py(
                "server",
                &sa,
                "emails.send",
                no.clone(),
                json!({"From": "sa@staging.example.com", "To": "r@x.test", "Subject": "s", "TextBody": "t"}),
            ),
            Ok(("POST", "/email")),
        ),
        (
            py(
                "account",
                &sa,
                "senders.create",
                no.clone(),
                json!({"FromEmail": "sa@staging.example.com", "Name": "SA"}),
            ),
            Ok(("POST", "/senders/")),
        ),
        (
            py("server", &sa_read, "server.get", no.clone(), none.clone()),
            Ok(("GET", "/server")),
        ),
        // Refused: a read-only token writing, an account token on the
        // server API, a server token on the account API beyond its server.
        (
            py(
                "server",
                &sa_read,
                "server.edit",
                no.clone(),
                json!({"Name": "x"}),
            ),
            Err((E, 0, 403)),
        ),
        (
            py(
                "server",
                &sa_read,
                "emails.send",
                no.clone(),
                json!({"From": "sa@staging.example.com", "To": "r@x.test", "Subject": "s", "TextBody": "t"}),
            ),
            Err((E, 0, 403)),
        ),
        (
            py(
                "server",
                &keys.owner,
                "server.get",
                no.clone(),
                none.clone(),
            ),
            Err((E, 10, 403)),
        ),
        (
            py(
                "server",
                &keys.dev,
                "stats.overview",
                no.clone(),
                none.clone(),
            ),
            Err((E, 10, 403)),
        ),
        (
            py("account", &sa, "senders.get", json!([3]), none.clone()),
            Err((E, 10, 403)),
        ),
        (
            py(
                "account",
                &sa,
                "domains.create",
                no.clone(),
                json!({"Name": "n.example"}),
            ),
            Err((E, 10, 403)),
        ),
    ];
    let calls: Vec<Value> = cases.iter().map(|(c, _)| c.clone()).collect();
    let results = run_python(&gw, &calls);
    check(&gw, &cases, &results);
}
