//! HTTP/1.1 keep-alive and pipelining through the gateway: requests written
//! back to back on one connection — admitted ones for different upstreams
//! and domains, refused ones, a send with a body — are answered in order,
//! each by its own response (the mock upstream echoes the path and key id it
//! received), and refused ones never reach the upstream.

use scopegate_suite::gateway::TestGateway;
use scopegate_suite::http::{Conn, Request};
use scopegate_suite::sample;
use serde_json::json;

#[test]
fn pipelined_requests_are_answered_in_order_each_by_its_own_response() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    let send = json!({"From": "dev@staging.example.com", "To": "x@y.test", "TextBody": "hi"});
    // (request, expected status, the path the upstream echoes when admitted)
    let mut plan: Vec<(Request, u16, Option<String>)> = Vec::new();
    for round in 0..5 {
        plan.push((
            Request::new("GET", &format!("/domains/staging.example.com/r{round}"))
                .bearer(&keys.dev),
            200,
            Some(format!("/domains/staging.example.com/r{round}")),
        ));
        plan.push((
            Request::new("GET", "/domains/example.com").bearer(&keys.dev),
            404,
            None,
        ));
        plan.push((
            Request::new("POST", "/email").bearer(&keys.dev).json(&send),
            201,
            Some("/email".into()),
        ));
        plan.push((Request::new("GET", "/domains/client-a.com"), 401, None));
        plan.push((
            Request::new("GET", &format!("/domains/client-a.com/q{round}")).bearer(&keys.owner),
            200,
            Some(format!("/domains/client-a.com/q{round}")),
        ));
    }
    // Like a real client: write everything still unanswered back to back on
    // one connection (the gateway sees the next request's bytes while it is
    // still answering the one before), read answers in order until the
    // connection closes (Pingora serves one and closes a connection with
    // pipelined bytes behind it, as RFC 9112 9.3.2 allows), and send the rest
    // again on a new connection.
    let mut next = 0;
    let mut connections = 0;
    while next < plan.len() {
        connections += 1;
        assert!(connections <= plan.len(), "no progress at request {next}");
        let mut conn = Conn::open(gw.proxy);
        let mut all = Vec::new();
        for (req, _, _) in &plan[next..] {
            all.extend_from_slice(&req.to_bytes(true));
        }
        conn.write_raw(&all);
        while next < plan.len() {
            let Some(r) = conn.try_read_response() else {
                break;
            };
            let (req, status, echoed) = &plan[next];
            assert_eq!(
                r.status,
                *status,
                "response {next} ({} {}): {}",
                req.method,
                req.target,
                r.text()
            );
            match echoed {
                Some(path) => assert_eq!(
                    r.json()["path"],
                    path.as_str(),
                    "response {next} answers another request"
                ),
                None => assert!(
                    r.json()["error"]["code"].is_string(),
                    "response {next}: {}",
                    r.text()
                ),
            }
            next += 1;
            // Whatever was not answered was not forwarded either.
            let admitted = plan[..next].iter().filter(|p| p.2.is_some()).count();
            assert_eq!(
                gw.domains.count() + gw.sending.count(),
                admitted,
                "after response {next}"
            );
        }
    }
    eprintln!(
        "{} pipelined requests answered over {connections} connection(s)",
        plan.len()
    );
    let admitted = plan.iter().filter(|p| p.2.is_some()).count();
    assert_eq!(gw.domains.count() + gw.sending.count(), admitted);
}

#[test]
fn interleaved_connections_under_load_each_get_their_own_answers() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (gw, keys) = (&gw, &keys);
            s.spawn(move || {
                let mut conn = Conn::open(gw.proxy);
                for i in 0..100 {
                    let path = format!("/domains/staging.example.com/t{t}/i{i}");
                    let key = if i % 3 == 0 { &keys.owner } else { &keys.dev };
                    let r = conn.send(&Request::new("GET", &path).bearer(key), true);
                    assert_eq!(r.status, 200, "{path}: {}", r.text());
                    assert_eq!(r.json()["path"], path.as_str());
                    let want = if i % 3 == 0 {
                        &keys.ids["owner"]
                    } else {
                        &keys.ids["dev"]
                    };
                    assert_eq!(r.json()["key_id"], want.as_str(), "{path}");
                }
            });
        }
    });
}
