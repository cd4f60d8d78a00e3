//! At the edge: TLS termination and HTTP/2, certificate reload under load,
//! connection limits, and request smuggling shapes — each checked against
//! what the mock upstream itself received.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scopegate_suite::gateway::{TestGateway, Transport};
use scopegate_suite::http::{Conn, Request};
use scopegate_suite::sample;
use scopegate_suite::tls::{self, H2Client};
use tokio_rustls::rustls;

fn upstream_total(gw: &TestGateway) -> usize {
    gw.sending.count() + gw.domains.count()
}

fn tls_side(gw: &TestGateway) -> (std::net::SocketAddr, tls::TestCert) {
    gw.tls.clone().expect("a TLS gateway")
}

fn metric(gw: &TestGateway, series: &str) -> u64 {
    let m = gw.metrics();
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{m}"))
}

#[test]
fn tls_offers_1_2_and_1_3_h2_and_http_1_1_with_plain_http_beside_it() {
    let gw = TestGateway::start_over(Transport::H2, |_| {});
    let keys = sample::setup(&gw.keystore);
    let (addr, cert) = tls_side(&gw);
    let get = Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev);

    // HTTP/2 by ALPN.
    let mut h2 = H2Client::connect(addr, &cert.der);
    assert_eq!(
        h2.negotiated.version,
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(h2.negotiated.leaf, cert.der);
    let r = h2.send(&get).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Several requests on the one connection.
    for _ in 0..3 {
        assert_eq!(h2.send(&get).unwrap().status, 200);
    }

    // A header list past connections.max_header_bytes: 431 for that stream
    // (or the client's own refusal to send it); nothing reaches the upstream.
    let big = get.clone().header("X-Big", &"a".repeat(20_000));
    let before = gw.domains.count();
    match H2Client::connect(addr, &cert.der).send(&big) {
        Ok(r) => assert_eq!(r.status, 431, "{}", r.text()),
        Err(e) => println!("HTTP/2 client refused the big header list: {e}"),
    }
    assert_eq!(gw.domains.count(), before);

    // HTTP/1.1 by ALPN, keep-alive.
    let (mut c, n) = tls::h1_conn(addr, &cert.der);
    assert_eq!(n.alpn.as_deref(), Some(&b"http/1.1"[..]));
    for _ in 0..2 {
        assert_eq!(c.send(&get, true).status, 200);
    }

    // TLS 1.2 only, and no ALPN at all (HTTP/1.1).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut store = rustls::RootCertStore::empty();
    store.add(cert.der.clone().into()).unwrap();
    let v12 = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(store)
        .with_no_client_auth();
    let (s, n) = tls::tls_stream(addr, Arc::new(v12)).unwrap();
    assert_eq!(n.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(n.alpn, None);
    let mut c = Conn::from_transport(Box::new(s));
    assert_eq!(c.send(&get, false).status, 200);

    // A client that trusts another certificate fails the handshake.
    let other = tls::make_cert(tempfile::tempdir().unwrap().path(), "other");
    assert!(tls::tls_stream(addr, tls::client_config(&[&other.der], &[b"h2"])).is_err());

    // Plain HTTP/1.1 stays on `listen`; identity headers are the same.
    assert_eq!(gw.send(get.clone()).status, 200);
    assert_eq!(get.send(gw.proxy).status, 200);
    let seen = gw.domains.requests();
    assert!(seen.len() >= 8);
    let scopes: Vec<_> = seen
        .iter()
        .map(|r| r.header("x-scopegate-scope").map(str::to_owned))
        .collect();
    assert!(scopes.windows(2).all(|w| w[0] == w[1]), "{scopes:?}");
    assert!(seen.iter().all(|r| r.header("authorization").is_none()));
}

#[test]
fn large_sends_over_http2_reach_the_upstream_byte_for_byte() {
    let gw = TestGateway::start_over(Transport::H2, |_| {});
    let keys = sample::setup(&gw.keystore);
    for size in [1000, 200 * 1024] {
        gw.sending.clear();
        let mut body = serde_json::json!({"From": "dev@staging.example.com", "HtmlBody": ""});
        body["HtmlBody"] = serde_json::json!("x".repeat(size));
        let req = Request::new("POST", "/email").bearer(&keys.dev).json(&body);
        let r = gw.send(req.clone().chunked(16 * 1024));
        assert_eq!(r.status, 201, "{}", r.text());
        let seen = gw.sending.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body, req.body, "{size} bytes");
        assert_eq!(seen[0].header("host"), Some("localhost"));
    }
    // Over the limit, streamed in DATA frames without a length: 413.
    let big = "x".repeat(11 * 1024 * 1024);
    let body = serde_json::json!({"From": "dev@staging.example.com", "HtmlBody": big});
    gw.sending.clear();
    let r = gw.send(
        Request::new("POST", "/email")
            .bearer(&keys.dev)
            .json(&body)
            .chunked(64 * 1024),
    );
    assert_eq!(r.status, 413);
    assert_eq!(gw.sending.count(), 0);
}

#[test]
fn certificates_reload_under_load_without_a_failed_request() {
    let gw = TestGateway::start_reloadable_tls("");
    let keys = sample::setup(&gw.keystore);
    let (addr, first) = tls_side(&gw);
    let dir = tempfile::tempdir().unwrap();
    let second = tls::make_cert(dir.path(), "second");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    // Clients on long-lived connections and on a new connection per request,
    // trusting both certificates, over HTTP/2 and HTTP/1.1.
    let mut threads = Vec::new();
    for i in 0..4 {
        let (stop, done, key) = (Arc::clone(&stop), Arc::clone(&done), keys.dev.clone());
        let roots = [first.der.clone(), second.der.clone()];
        threads.push(std::thread::spawn(move || {
            let get = Request::new("GET", "/domains/staging.example.com").bearer(&key);
            let both: Vec<&[u8]> = roots.iter().map(|r| r.as_slice()).collect();
            let mut failures = Vec::new();
            let mut h2 = H2Client::connect(addr, &roots[0]);
            while !stop.load(Ordering::SeqCst) {
                let status = match i {
                    0 => h2.send(&get).map(|r| r.status),
                    1 => {
                        let (s, _) =
                            tls::tls_stream(addr, tls::client_config(&both, &[b"http/1.1"]))
                                .map_err(|e| e.to_string())?;
                        Ok(Conn::from_transport(Box::new(s)).send(&get, false).status)
                    }
                    _ => {
                        let (s, _) =
                            tls::tls_stream(addr, tls::client_config(&both, &[b"h2", b"http/1.1"]))
                                .map_err(|e| e.to_string())?;
                        drop(s);
                        Ok(200)
                    }
                };
                match status {
                    Ok(200) => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            if failures.is_empty() {
                Ok(())
            } else {
                Err(failures.join("; "))
            }
        }));
    }
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while done.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "load stalled at {}",
                done.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(50);
    // Renew in place (the files the config names), then reload.
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let r = gw.admin(Request::new("POST", "/v1/reload"));
    assert_eq!(r.status, 200, "{}", r.text());
    let before = done.load(Ordering::SeqCst);
    wait_for(before + 50);
    // New handshakes present the new certificate.
    let (_, n) = tls::tls_stream(addr, tls::client_config(&[&second.der], &[b"h2"])).unwrap();
    assert_eq!(n.leaf, second.der);
    assert!(tls::tls_stream(addr, tls::client_config(&[&first.der], &[b"h2"])).is_err());
    // A broken pair is refused and the certificate in use stays.
    std::fs::write(&first.key, "not a key").unwrap();
    let r = gw.admin(Request::new("POST", "/v1/reload"));
    assert_eq!(r.status, 422, "{}", r.text());
    let (_, n) = tls::tls_stream(addr, tls::client_config(&[&second.der], &[b"h2"])).unwrap();
    assert_eq!(n.leaf, second.der);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("failed requests during the reload: {e}"));
    }
    assert_eq!(
        metric(&gw, "scopegate_tls_cert_reloads_total{result=\"ok\"}"),
        1
    );
    assert_eq!(
        metric(&gw, "scopegate_tls_cert_reloads_total{result=\"rejected\"}"),
        1
    );
}

/// Sends raw bytes on a new connection; returns the status (0 when the
/// gateway closed without an answer) and whether it then closed.
fn raw(gw: &TestGateway, bytes: &[u8]) -> (u16, bool) {
    let mut c = Conn::open(gw.proxy);
    if c.try_write_raw(bytes).is_err() {
        return (0, true);
    }
    let status = c.try_read_response().map_or(0, |r| r.status);
    (status, c.is_closed(Duration::from_secs(5)))
}

#[test]
fn smuggling_shapes_are_refused_with_400_closed_and_never_forwarded() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    let auth = format!("Authorization: Bearer {}\r\n", keys.dev);
    let send = "{\"From\":\"dev@staging.example.com\"}";
    let p = "POST /domains/staging.example.com/verify HTTP/1.1\r\nHost: t\r\n";
    let e = "POST /email HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n";
    let shapes: Vec<(&str, String)> = vec![
        ("CL+TE", format!("{p}{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE+CL", format!("{e}{auth}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{send}\r\n0\r\n\r\n", send.len())),
        ("two CLs", format!("{p}{auth}Content-Length: 1\r\nContent-Length: 2\r\n\r\nxx")),
        ("two equal CLs", format!("{p}{auth}Content-Length: 2\r\nContent-Length: 2\r\n\r\nxx")),
        ("CL list", format!("{p}{auth}Content-Length: 2, 2\r\n\r\nxx")),
        ("chunked, identity", format!("{p}{auth}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n")),
        ("gzip, chunked", format!("{p}{auth}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")),
        ("identity", format!("{p}{auth}Transfer-Encoding: identity\r\n\r\n")),
        ("two TEs", format!("{p}{auth}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE on 1.0", format!("POST /domains/staging.example.com/verify HTTP/1.0\r\nHost: t\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("obs-fold", format!("GET /domains/staging.example.com HTTP/1.1\r\nHost: t\r\n{auth}X-A: 1\r\n x-b: 2\r\n\r\n")),
        ("obs-fold of the key", format!("GET /domains/staging.example.com HTTP/1.1\r\nHost: t\r\nAuthorization:\r\n Bearer {}\r\n\r\n", keys.dev)),
        ("bare LF", format!("GET /domains/staging.example.com HTTP/1.1\nHost: t\n{}\n", auth.replace("\r\n", "\n"))),
        ("one bare LF", format!("GET /domains/staging.example.com HTTP/1.1\r\nHost: t\n{auth}\r\n")),
        ("space before colon", format!("GET /domains/staging.example.com HTTP/1.1\r\nHost: t\r\n{auth}Content-Length : 0\r\n\r\n")),
        ("invalid chunk size (streamed route)", format!("{p}{auth}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")),
        ("chunk size overflow", format!("{p}{auth}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n")),
        ("negative chunk size", format!("{p}{auth}Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n")),
        ("invalid chunk size (send)", format!("{e}{auth}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{send}\r\n0x\r\n\r\n", send.len())),
        ("chunk longer than its size", format!("{e}{auth}Transfer-Encoding: chunked\r\n\r\n2\r\n{send}\r\n0\r\n\r\n")),
    ];
    let mut results = Vec::new();
    for (name, bytes) in &shapes {
        let (status, closed) = raw(&gw, bytes.as_bytes());
        results.push(format!("{name}: {status} closed={closed}"));
        assert_eq!(status, 400, "{name}: {bytes:?}");
        assert!(closed, "{name}: the connection stayed open");
    }
    println!("{}", results.join("\n"));
    assert_eq!(upstream_total(&gw), 0, "{:?}", gw.domains.requests());
    assert!(metric(&gw, "scopegate_edge_refusals_total{reason=\"bad_framing\"}") >= 15);
    // The same requests, well formed, are admitted (so the refusals above
    // are about framing, not about the request).
    let ok = format!("{p}{auth}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let mut c = Conn::open(gw.proxy);
    c.write_raw(ok.as_bytes());
    assert_eq!(c.read_response(false).status, 201);
    assert_eq!(gw.domains.requests()[0].body, b"hello");
}

#[test]
fn header_limits_answer_431_and_slow_or_idle_connections_are_closed() {
    let gw = TestGateway::start_with(|c| {
        c.connections.max_header_bytes = 4096;
        c.connections.max_headers = 20;
        c.connections.header_read_timeout = Duration::from_millis(600);
        c.connections.idle_timeout = Duration::from_millis(1500);
    });
    let keys = sample::setup(&gw.keystore);
    let get = |extra: &str| {
        format!("GET /domains/staging.example.com HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n{extra}\r\n", keys.dev)
    };
    let (s, closed) = raw(
        &gw,
        get(&format!("X-Big: {}\r\n", "a".repeat(5000))).as_bytes(),
    );
    assert_eq!((s, closed), (431, true));
    let many: String = (0..21).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(raw(&gw, get(&many).as_bytes()), (431, true));
    let fine: String = (0..15).map(|i| format!("X-{i}: v\r\n")).collect();
    let mut c = Conn::open(gw.proxy);
    c.write_raw(get(&fine).as_bytes());
    assert_eq!(c.read_response(false).status, 200);

    // Slowloris: a byte every 100 ms never finishes the head in time.
    let started = Instant::now();
    let mut c = Conn::open(gw.proxy);
    let head = get("");
    let mut cut = false;
    for b in head.as_bytes() {
        if c.try_write_raw(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(
        cut || c.is_closed(Duration::from_secs(2)),
        "slow head not cut off"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Connected and silent: closed after the header timeout too.
    let mut c = Conn::open(gw.proxy);
    let t = Instant::now();
    assert!(c.is_closed(Duration::from_secs(3)));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // Keep-alive: open between requests for the idle timeout, then closed.
    let mut c = Conn::open(gw.proxy);
    let req = Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev);
    assert_eq!(c.send(&req, true).status, 200);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        c.send(&req, true).status,
        200,
        "closed before the idle timeout"
    );
    let t = Instant::now();
    assert!(c.is_closed(Duration::from_secs(4)));
    let idle = t.elapsed();
    assert!(
        idle > Duration::from_millis(1200) && idle < Duration::from_millis(3000),
        "{idle:?}"
    );

    assert_eq!(
        metric(
            &gw,
            "scopegate_edge_refusals_total{reason=\"header_too_large\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &gw,
            "scopegate_edge_refusals_total{reason=\"too_many_headers\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &gw,
            "scopegate_edge_refusals_total{reason=\"header_timeout\"}"
        ),
        2
    );
    assert_eq!(upstream_total(&gw), 3);
}

#[test]
fn connections_past_the_limit_wait_then_get_503_and_the_gateway_carries_on() {
    let gw = TestGateway::start_with(|c| {
        c.connections.max_connections = 4;
        c.connections.header_read_timeout = Duration::from_millis(800);
        c.connections.idle_timeout = Duration::from_secs(30);
    });
    let keys = sample::setup(&gw.keystore);
    let req = Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev);
    let mut held: Vec<Conn> = (0..4)
        .map(|_| {
            let mut c = Conn::open(gw.proxy);
            assert_eq!(c.send(&req, true).status, 200);
            c
        })
        .collect();
    assert_eq!(metric(&gw, "scopegate_client_connections "), 4);
    // The fifth waits for a slot, then is refused.
    let t = Instant::now();
    let mut c = Conn::open(gw.proxy);
    let r = c.send(&req, true);
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "over_capacity");
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert!(c.is_closed(Duration::from_secs(2)));
    // One that waits while a slot frees gets in.
    let waiter = {
        let (addr, req) = (gw.proxy, req.clone());
        std::thread::spawn(move || Conn::open(addr).send(&req, false).status)
    };
    std::thread::sleep(Duration::from_millis(200));
    drop(held.pop());
    assert_eq!(waiter.join().unwrap(), 200);
    // Many more than the limit at once: refused or served, never a crash.
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let (addr, req) = (gw.proxy, req.clone());
            std::thread::spawn(move || Conn::open(addr).send(&req, false).status)
        })
        .collect();
    for t in burst {
        assert!(matches!(t.join().unwrap(), 503 | 200));
    }
    drop(held);
    assert_eq!(gw.send(req.clone()).status, 200);
    assert!(
        metric(
            &gw,
            "scopegate_edge_refusals_total{reason=\"connection_limit\"}"
        ) >= 1
    );
}

#[test]
fn an_http2_rapid_reset_flood_ends_that_connection_only() {
    let gw = TestGateway::start_over(Transport::H2, |c| {
        c.connections.h2_max_pending_resets = 20;
    });
    let keys = sample::setup(&gw.keystore);
    let (addr, cert) = tls_side(&gw);
    let mut flood = H2Client::connect(addr, &cert.der);
    let ended = flood.rapid_reset(5000, "/domains/staging.example.com");
    println!("flood ended with: {ended:?}");
    // Whatever the flood did, the gateway serves everyone else.
    let mut other = H2Client::connect(addr, &cert.der);
    let get = Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev);
    assert_eq!(other.send(&get).unwrap().status, 200);
    assert!(ended.is_some(), "the flooding connection was never closed");
}
