//! Sending routes: every From domain in the JSON body is checked before the
//! send reaches the upstream, and the upstream receives the body byte for
//! byte — through Pingora's replay buffer up to 64 KiB and the gateway's own
//! forwarding path above it. (The mock upstream answers a send with 201.)

use std::io::Write;
use std::time::Duration;

use scopegate_suite::gateway::TestGateway;
use scopegate_suite::http::{Conn, Request};
use scopegate_suite::sample;
use serde_json::json;

fn setup() -> (TestGateway, sample::Keys) {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    (gw, keys)
}

/// A single-message body of exactly `size` bytes.
fn message_of_size(from: &str, size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"From":{},"To":"x@y.org","Subject":"s","HtmlBody":""#,
        json!(from)
    );
    let tail = r#""}"#;
    assert!(size >= head.len() + tail.len());
    let mut b = head.into_bytes();
    b.extend(std::iter::repeat_n(b'a', size - b.len() - tail.len()));
    b.extend_from_slice(tail.as_bytes());
    assert_eq!(b.len(), size);
    serde_json::from_slice::<serde_json::Value>(&b).expect("valid JSON");
    b
}

fn hash(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

#[test]
fn single_sends_check_the_from_domain() {
    let (gw, keys) = setup();
    for route in ["/email", "/email/withTemplate"] {
        for from in [
            "dev@staging.example.com",
            "Dev <dev@staging.example.com>",
            "\"Last, First\" <dev@staging.example.com>",
            "  DEV@STAGING.EXAMPLE.COM.  ",
            "Dev Team < dev@Staging.Example.com >",
        ] {
            let r = gw.send(
                Request::new("POST", route)
                    .bearer(&keys.dev)
                    .json(&json!({"From": from, "To": "a@b.org"})),
            );
            assert_eq!(r.status, 201, "{route} {from}: {}", r.text());
        }
    }
    assert_eq!(gw.sending.count(), 10);
    let seen = &gw.sending.requests()[0];
    assert_eq!(
        seen.header("x-scopegate-scope"),
        Some("staging.example.com=read_write")
    );
    assert!(seen.header("authorization").is_none());
}

#[test]
fn out_of_scope_and_unknown_domains_get_the_same_422() {
    let (gw, keys) = setup();
    let mut bodies = Vec::new();
    for from in [
        "ceo@example.com",
        "x@client-a.com",
        "x@other.org",
        "x@does-not-exist.example",
    ] {
        let r = gw.send(
            Request::new("POST", "/email")
                .bearer(&keys.dev)
                .json(&json!({"From": from})),
        );
        assert_eq!(r.status, 422, "{from}");
        assert_eq!(r.error_code(), "sender_not_allowed");
        assert!(
            !r.text().contains(from.split('@').nth(1).unwrap()),
            "the answer names the domain"
        );
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    // A read-only key cannot send at all.
    let r = gw.send(
        Request::new("POST", "/email")
            .bearer(&keys.dev_read)
            .json(&json!({"From": "dev@staging.example.com"})),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.body, bodies[0]);
    assert_eq!(gw.sending.count(), 0);
}

#[test]
fn batches_need_every_from_writable_and_name_the_index() {
    let (gw, keys) = setup();
    let ok = json!([{"From": "a@staging.example.com"}, {"From": "B <b@staging.example.com>"}]);
    let r = gw.send(
        Request::new("POST", "/email/batch")
            .bearer(&keys.dev)
            .json(&ok),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let mixed = json!([{"From": "a@staging.example.com"}, {"From": "a@staging.example.com"}, {"From": "ceo@example.com"}]);
    let r = gw.send(
        Request::new("POST", "/email/batch")
            .bearer(&keys.dev)
            .json(&mixed),
    );
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("message 2:"),
        "{}",
        r.text()
    );
    let tmpl = json!({"Messages": [{"From": "a@staging.example.com", "TemplateId": 1}, {"From": "x@client-b.com", "TemplateId": 1}]});
    let r = gw.send(
        Request::new("POST", "/email/batchWithTemplates")
            .bearer(&keys.dev)
            .json(&tmpl),
    );
    assert_eq!(r.status, 422);
    assert!(r.text().contains("message 1"));
    let r = gw.send(Request::new("POST", "/email/batchWithTemplates").bearer(&keys.ops).json(&json!({"Messages": [{"From": "a@example.com"}, {"From": "b@staging.example.com"}]})));
    assert_eq!(r.status, 201);
    // Only the two allowed batches reached the upstream.
    assert_eq!(gw.sending.count(), 2);
}

#[test]
fn malformed_bodies_are_400_and_bad_senders_422() {
    let (gw, keys) = setup();
    for (body, status, code) in [
        (&b"{not json"[..], 400, "invalid_json"),
        (
            br#"{"From": "a@staging.example.com"} trailing"#,
            400,
            "invalid_json",
        ),
        (
            br#"{"From": "a@staging.example.com", "from": "ceo@example.com"}"#,
            400,
            "duplicate_field",
        ),
        (
            br#"[{"From": "a@staging.example.com"}]"#,
            400,
            "invalid_structure",
        ),
        (br#"{"To": "x@y.org"}"#, 422, "invalid_sender"),
        (br#"{"From": ""}"#, 422, "invalid_sender"),
        (br#"{"From": 42}"#, 422, "invalid_sender"),
        (
            br#"{"From": "a@staging.example.com, b@staging.example.com"}"#,
            422,
            "invalid_sender",
        ),
        (
            br#"{"From": "a@good.com <b@staging.example.com>"}"#,
            422,
            "invalid_sender",
        ),
        (b"", 400, "invalid_json"),
    ] {
        let r = gw.send(
            Request::new("POST", "/email")
                .bearer(&keys.dev)
                .header("Content-Type", "application/json")
                .body(body.to_vec()),
        );
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(body));
        assert_eq!(r.error_code(), code, "{}", String::from_utf8_lossy(body));
    }
    assert_eq!(gw.sending.count(), 0);
}

#[test]
fn bodies_reach_the_upstream_byte_for_byte_around_the_replay_limit() {
    let (gw, keys) = setup();
    let limit = 64 * 1024;
    for size in [
        1024,
        limit - 1,
        limit,
        limit + 1,
        200 * 1024,
        5 * 1024 * 1024,
    ] {
        gw.sending.clear();
        let body = message_of_size("Dev <dev@staging.example.com>", size);
        let r = gw.send(
            Request::new("POST", "/email")
                .bearer(&keys.dev)
                .header("Content-Type", "application/json")
                .body(body.clone()),
        );
        assert_eq!(r.status, 201, "size {size}: {}", r.text());
        let seen = gw.sending.requests();
        assert_eq!(seen.len(), 1, "size {size}");
        assert_eq!(seen[0].body_len, size, "size {size}");
        assert_eq!(seen[0].body_blake3, hash(&body), "size {size}");
        assert_eq!(
            seen[0].header("x-scopegate-key-id"),
            Some(keys.ids["dev"].as_str()),
            "size {size}"
        );
        assert!(seen[0].header("authorization").is_none(), "size {size}");
        assert_eq!(seen[0].target, "/email");
        assert_eq!(
            r.json()["received_bytes"],
            size,
            "the response comes back from the upstream"
        );
    }
}

#[test]
fn chunked_uploads_are_checked_and_forwarded_whole() {
    let (gw, keys) = setup();
    for size in [10 * 1024, 300 * 1024] {
        gw.sending.clear();
        let body = message_of_size("dev@staging.example.com", size);
        let r = gw.send(
            Request::new("POST", "/email")
                .bearer(&keys.dev)
                .body(body.clone())
                .chunked(4096),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let seen = gw.sending.requests();
        assert_eq!(seen[0].body_blake3, hash(&body));
    }
    let bad = message_of_size("ceo@example.com", 100 * 1024);
    let r = gw.send(
        Request::new("POST", "/email")
            .bearer(&keys.dev)
            .body(bad)
            .chunked(1000),
    );
    assert_eq!(r.status, 422);
    assert_eq!(gw.sending.count(), 1);
}

#[test]
fn over_limit_bodies_are_413_by_length_and_by_stream() {
    let (gw, keys) = {
        let gw = TestGateway::start_with(|c| {
            for r in &mut c.routes {
                if r.path.raw.starts_with("/email") {
                    r.max_body_bytes = 100 * 1024;
                }
            }
        });
        let keys = sample::setup(&gw.keystore);
        (gw, keys)
    };
    let big = message_of_size("dev@staging.example.com", 100 * 1024 + 1);
    let r = gw.send(
        Request::new("POST", "/email")
            .bearer(&keys.dev)
            .body(big.clone()),
    );
    assert_eq!(r.status, 413);
    let r = gw.send(
        Request::new("POST", "/email")
            .bearer(&keys.dev)
            .body(big)
            .chunked(8192),
    );
    assert_eq!(r.status, 413);
    // A declared length over the limit is refused before any byte of the
    // body is sent: only the header goes out.
    let mut c = Conn::open(gw.proxy);
    c.write_raw(
        format!(
            "POST /email HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            keys.dev,
            1024 * 1024 * 1024
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response(false).status, 413);
    let ok = message_of_size("dev@staging.example.com", 100 * 1024);
    assert_eq!(
        gw.send(Request::new("POST", "/email").bearer(&keys.dev).body(ok))
            .status,
        201
    );
    assert_eq!(gw.sending.count(), 1);
}

#[test]
fn a_trickled_body_is_cut_off_and_never_forwarded() {
    let gw = TestGateway::start_with(|c| c.limits.body_read_timeout = Duration::from_millis(300));
    let keys = sample::setup(&gw.keystore);
    let body = message_of_size("dev@staging.example.com", 2000);
    let mut c = Conn::open(gw.proxy);
    c.write_raw(
        format!(
            "POST /email HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            keys.dev,
            body.len()
        )
        .as_bytes(),
    );
    c.write_raw(&body[..100]);
    // The rest never comes; the gateway answers on its own deadline.
    let r = c.read_response(false);
    assert_eq!(r.status, 408);
    assert_eq!(gw.sending.count(), 0);
}

#[test]
fn expect_100_continue_works_and_a_refused_key_gets_no_continue() {
    let (gw, keys) = setup();
    let body = message_of_size("dev@staging.example.com", 300 * 1024);
    let mut c = Conn::open(gw.proxy);
    c.write_raw(
        format!(
            "POST /email HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            keys.dev,
            body.len()
        )
        .as_bytes(),
    );
    let interim = c.read_interim();
    assert_eq!(interim, 100);
    c.write_raw(&body);
    let r = c.read_response(false);
    assert_eq!(r.status, 201, "{}", r.text());
    let seen = gw.sending.requests();
    assert_eq!(seen[0].body_blake3, hash(&body));
    assert!(seen[0].header("expect").is_none());
    // A bad key is answered before any body is sent.
    let mut c = Conn::open(gw.proxy);
    c.write_raw(b"POST /email HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(c.read_interim(), 401);
    let _ = std::io::stdout().flush();
}

#[test]
fn a_key_revoked_while_its_body_uploads_is_refused() {
    let gw = TestGateway::start_with(|c| c.limits.body_read_timeout = Duration::from_secs(10));
    let keys = sample::setup(&gw.keystore);
    let body = message_of_size("dev@staging.example.com", 4000);
    let mut c = Conn::open(gw.proxy);
    c.write_raw(
        format!(
            "POST /email HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            keys.dev,
            body.len()
        )
        .as_bytes(),
    );
    c.write_raw(&body[..1000]);
    // The key was live when the header arrived; revoke it mid-upload.
    gw.keystore
        .revoke_key("t", &keys.ids["dev"], scopegate_keystore::time::now())
        .unwrap();
    c.write_raw(&body[1000..]);
    let r = c.read_response(false);
    assert_eq!(r.status, 401);
    assert_eq!(gw.sending.count(), 0);
}

#[test]
fn streamed_bodies_of_other_routes_are_limited_too() {
    let gw = TestGateway::start_with(|c| {
        for r in &mut c.routes {
            if r.path.raw == "/domains/{domain}/**" {
                r.max_body_bytes = 1000;
            }
        }
    });
    let keys = sample::setup(&gw.keystore);
    let ok = Request::new("PUT", "/domains/staging.example.com/settings")
        .bearer(&keys.dev)
        .body(vec![b'x'; 1000]);
    assert_eq!(gw.send(ok).status, 200);
    assert_eq!(gw.domains.requests()[0].body_len, 1000);
    let by_length = Request::new("PUT", "/domains/staging.example.com/settings")
        .bearer(&keys.dev)
        .body(vec![b'x'; 1001]);
    assert_eq!(gw.send(by_length).status, 413);
    assert_eq!(gw.domains.count(), 1, "refused by length before forwarding");
    let by_stream = Request::new("PUT", "/domains/staging.example.com/settings")
        .bearer(&keys.dev)
        .body(vec![b'x'; 5000])
        .chunked(500);
    let r = gw.send(by_stream);
    assert_eq!(r.status, 413, "{}", r.text());
    // The upstream never gets a complete over-limit body.
    assert!(gw.domains.requests().iter().all(|r| r.body_len <= 1000));
}
