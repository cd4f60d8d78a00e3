//! The fast path for bodiless HTTP/1.1 requests (`[connections] fast_path`,
//! on by default) answers exactly what Pingora's path answers: the same
//! request through a gateway with it and one without gets the same status,
//! headers (but `Date`) and body, for every way an upstream may frame its
//! answer and for the gateway's own refusals and upstream failures. A reused
//! upstream connection that fails before answering is retried on a new one
//! for a GET, never for a POST.
//!
//! The upstream here is a raw TCP server written in the test, so the framing
//! (chunked, close-delimited, 204, 304, HEAD) and its connection handling are
//! exactly what the test says.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use scopegate_suite::gateway::{free_port, TestGateway};
use scopegate_suite::http::{Conn, Request, Response};
use scopegate_suite::sample;

/// One request as the raw upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    /// Which connection (in accept order, counting only ones that sent a request).
    conn: usize,
    /// Its position on that connection (0 = first).
    nth: usize,
    method: String,
    path: String,
}

/// What the raw upstream does with a request.
enum Act {
    /// Write these bytes; keep the connection.
    Reply(Vec<u8>),
    /// Write these bytes, then close.
    ReplyClose(Vec<u8>),
    /// Close without answering.
    Drop,
}

struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RawUpstream {
    /// Serves every connection on its own thread; `act` decides per request.
    fn spawn(act: fn(&Seen) -> Act) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let conns = Arc::new(Mutex::new(0usize));
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (seen, conns) = (Arc::clone(&s), Arc::clone(&conns));
                std::thread::spawn(move || serve(stream, act, &seen, &conns));
            }
        });
        RawUpstream { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    mut stream: TcpStream,
    act: fn(&Seen) -> Act,
    seen: &Mutex<Vec<Seen>>,
    conns: &Mutex<usize>,
) {
    let mut buf = Vec::new();
    let mut conn = None;
    let mut nth = 0;
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let conn = *conn.get_or_insert_with(|| {
            let mut c = conns.lock().unwrap();
            *c += 1;
            *c
        });
        let mut line = head.split(' ');
        let s = Seen {
            conn,
            nth,
            method: line.next().unwrap_or("").to_string(),
            path: line.next().unwrap_or("").to_string(),
        };
        nth += 1;
        seen.lock().unwrap().push(s.clone());
        match act(&s) {
            Act::Reply(b) => {
                if stream.write_all(&b).is_err() {
                    return;
                }
            }
            Act::ReplyClose(b) => {
                let _ = stream.write_all(&b);
                return;
            }
            Act::Drop => return,
        }
    }
}

/// The answers of the framing scenarios, by the path's last segment.
fn framing(s: &Seen) -> Act {
    let last = s.path.rsplit('/').next().unwrap_or("");
    let bytes = |t: &str| t.as_bytes().to_vec();
    match last {
        "length" => Act::Reply(bytes(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Up: a\r\nDate: Mon, 01 Jan 1990 00:00:00 GMT\r\nContent-Length: 5\r\n\r\nhello",
        )),
        "chunked" => Act::Reply(bytes(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: b\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n",
        )),
        "close" => Act::ReplyClose(bytes(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nX-Up: c\r\n\r\nclose-delimited body",
        )),
        "old" => Act::ReplyClose(bytes("HTTP/1.0 200 OK\r\nX-Up: d\r\n\r\nan HTTP/1.0 body")),
        "nocontent" => Act::Reply(bytes("HTTP/1.1 204 No Content\r\nX-Up: e\r\n\r\n")),
        "notmodified" => Act::Reply(bytes(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-Up: f\r\n\r\n",
        )),
        "reason" => Act::Reply(bytes(
            "HTTP/1.1 418 Short And Stout\r\nContent-Length: 2\r\n\r\nok",
        )),
        "early" => Act::Reply(bytes(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        )),
        // HEAD: the length of the body a GET would get, no body.
        _ if s.method == "HEAD" => Act::Reply(bytes(
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\nX-Up: g\r\n\r\n",
        )),
        _ => Act::Reply(bytes("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")),
    }
}

/// A gateway whose `domains` upstream is `backend`, fast path on or off, one
/// worker thread (so upstream connection reuse is deterministic).
fn gateway(backend: SocketAddr, fast: bool) -> TestGateway {
    TestGateway::start_with(|c| {
        c.threads = 1;
        c.connections.fast_path = fast;
        c.upstreams.get_mut("domains").unwrap().backends = vec![backend.to_string()];
    })
}

/// Status, headers (lowercased names, sorted, `Date` left out) and body.
fn shape(r: &Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<_> = r
        .headers
        .iter()
        .filter(|(k, _)| k != "date")
        .cloned()
        .collect();
    headers.sort();
    (r.status, headers, r.body.clone())
}

/// Sends `requests` on one keep-alive connection to each gateway and checks
/// that both answer each one identically; returns the answers.
/// (Each gateway has its own store, so its own keys: `requests` builds the
/// same requests from each one's.)
fn same_through_both(
    fast: &TestGateway,
    slow: &TestGateway,
    requests: impl Fn(&sample::Keys) -> Vec<Request>,
) -> Vec<Response> {
    let (ra_all, rb_all) = (
        requests(&sample::setup(&fast.keystore)),
        requests(&sample::setup(&slow.keystore)),
    );
    let mut a = Conn::open(fast.proxy);
    let mut b = Conn::open(slow.proxy);
    let mut out = Vec::new();
    for (req, req_b) in ra_all.iter().zip(&rb_all) {
        let head = req.method == "HEAD";
        a.write_raw(&req.to_bytes(true));
        let ra = a.read_response(head);
        b.write_raw(&req_b.to_bytes(true));
        let rb = b.read_response(head);
        assert_eq!(
            shape(&ra),
            shape(&rb),
            "{} {}: fast path (left) and Pingora's path (right) differ",
            req.method,
            req.target
        );
        assert!(ra.header("date").is_some(), "no Date: {ra:?}");
        out.push(ra);
    }
    out
}

#[test]
fn both_paths_answer_every_upstream_framing_and_refusal_identically() {
    let up = RawUpstream::spawn(framing);
    let fast = gateway(up.addr, true);
    let slow = gateway(up.addr, false);
    let get = |last: &str| Request::new("GET", &format!("/domains/client-a.com/{last}"));
    let requests = |keys: &sample::Keys| -> Vec<Request> {
        vec![
            get("length").bearer(&keys.owner),
            get("chunked").bearer(&keys.owner),
            get("close").bearer(&keys.owner),
            get("old").bearer(&keys.owner),
            get("nocontent").bearer(&keys.owner),
            get("notmodified").bearer(&keys.owner),
            get("reason").bearer(&keys.owner),
            get("early").bearer(&keys.owner),
            Request::new("HEAD", "/domains/client-a.com/x").bearer(&keys.owner),
            // Refusals: no key, a domain the key cannot see, a bad path, a send
            // without a body.
            get("length"),
            Request::new("GET", "/domains/client-a.com/length").bearer(&keys.dev),
            Request::new("GET", "/domains/%2e%2e/x").bearer(&keys.owner),
            Request::new("POST", "/email").bearer(&keys.dev),
            // Last: the client closes.
            get("length")
                .bearer(&keys.owner)
                .header("Connection", "close"),
        ]
    };
    let answers = same_through_both(&fast, &slow, requests);
    // Each request took the path its gateway was set to.
    let taken = |gw: &TestGateway| {
        let m = gw.metrics();
        m.lines()
            .find_map(|l| l.strip_prefix("scopegate_fast_path_requests_total "))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no fast path counter: {m}"))
    };
    assert_eq!(taken(&fast), "14");
    assert_eq!(taken(&slow), "0");
    let bodies: Vec<String> = answers.iter().map(|r| r.text()).collect();
    assert_eq!(bodies[0], "hello");
    assert_eq!(bodies[1], "hello, world");
    assert_eq!(bodies[2], "close-delimited body");
    assert_eq!(bodies[3], "an HTTP/1.0 body");
    assert_eq!(answers[4].status, 204);
    assert_eq!(answers[5].header("etag"), Some("\"v1\""));
    assert_eq!(answers[6].status, 418);
    assert_eq!(answers[7].status, 201);
    assert_eq!(answers[8].header("content-length"), Some("42"));
    assert_eq!(answers[9].status, 401);
    assert_eq!(answers[10].status, 404);
    assert_eq!(answers[13].header("connection"), Some("close"));
    // Every admitted request reached the upstream once per gateway, with
    // the checked path; the refused ones never did.
    let seen = up.seen();
    assert_eq!(seen.len(), 2 * 10, "{seen:?}");
    assert!(seen
        .iter()
        .all(|s| s.path.starts_with("/domains/client-a.com/")));
}

/// Each connection answers its first request and drops the second one
/// unanswered: a pooled connection the upstream gave up on.
fn one_per_connection(s: &Seen) -> Act {
    if s.nth == 0 {
        Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    } else {
        Act::Drop
    }
}

#[test]
fn a_reused_connection_that_fails_is_retried_for_a_get_but_never_for_a_post() {
    let up = RawUpstream::spawn(one_per_connection);
    let gw = gateway(up.addr, true);
    let keys = sample::setup(&gw.keystore);
    let get = || Request::new("GET", "/domains/client-a.com/r").bearer(&keys.owner);
    let mut conn = Conn::open(gw.proxy);
    // Fills the pool; the second GET goes out on the pooled connection,
    // which fails before any answer, and again on a new one.
    assert_eq!(conn.send(&get(), true).status, 200);
    assert_eq!(conn.send(&get(), true).status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!((seen[1].conn, seen[1].nth), (seen[0].conn, 1), "{seen:?}");
    assert_eq!(seen[2].nth, 0, "{seen:?}");
    // The new connection is pooled now; a POST on it fails the same way and
    // is not sent again: 502, and the upstream saw it once.
    let post = Request::new("POST", "/domains/client-a.com/verify").bearer(&keys.owner);
    let r = conn.send(&post, true);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "bad_gateway");
    let posts: Vec<Seen> = up
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].nth, 1, "the POST went out on a reused connection");
    // After an upstream failure the client connection is closed, as on
    // Pingora's path.
    assert!(conn.is_closed(std::time::Duration::from_secs(2)));
    let m = gw.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("scopegate_upstream_errors_total")
                && l.contains("domains")
                && l.ends_with(" 1")),
        "{m}"
    );
}

/// Answers as if keeping the connection, then closes it.
fn answer_and_close(_: &Seen) -> Act {
    Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
}

#[test]
fn an_upstream_that_closes_its_idle_connections_still_gets_every_get_answered() {
    let up = RawUpstream::spawn(answer_and_close);
    let gw = gateway(up.addr, true);
    let keys = sample::setup(&gw.keystore);
    let mut conn = Conn::open(gw.proxy);
    for i in 0..5 {
        let get = Request::new("GET", &format!("/domains/client-a.com/{i}")).bearer(&keys.owner);
        assert_eq!(conn.send(&get, true).status, 200, "request {i}");
    }
    // Each reached the upstream once (a closed connection reads nothing).
    assert_eq!(up.seen().len(), 5, "{:?}", up.seen());
}

#[test]
fn an_upstream_that_is_down_gets_the_same_502_on_both_paths() {
    let nobody = free_port();
    let fast = gateway(nobody, true);
    let slow = gateway(nobody, false);
    let requests = |keys: &sample::Keys| {
        vec![Request::new("GET", "/domains/client-a.com/x").bearer(&keys.owner)]
    };
    let a = &same_through_both(&fast, &slow, requests)[0];
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.error_code(), "bad_gateway");
}
