//! Postmark's official Node.js client (`postmark` on npm, installed by this
//! test from the registry) pointed at a gateway with
//! `response_format = "postmark"`: every call a key may make succeeds and
//! reaches the upstream exactly once; every call it may not make is refused
//! by the gateway, surfaces in the client as the typed error with Postmark's
//! `ErrorCode`, and never reaches the upstream.

use std::path::{Path, PathBuf};
use std::process::Command;

use scopegate_config::ResponseFormat;
use scopegate_suite::gateway::TestGateway;
use scopegate_suite::sample;
use serde_json::{json, Value};

/// The client this suite is checked against (the current major version).
const POSTMARK: &str = "postmark@5";

/// `node_modules` with `postmark`, installed once per target directory.
fn postmark_modules() -> PathBuf {
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
