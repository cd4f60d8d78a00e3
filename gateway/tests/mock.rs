//! Tests of the mock upstream, driven by a raw HTTP/1.1 client over std TcpStream.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use scopegate_gateway::mock::{Behavior, MockUpstream};

/// One client connection: a buffered reader and a writer on the same socket.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A parsed response.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

fn connect(mock: &MockUpstream) -> Conn {
    let stream = TcpStream::connect(mock.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    Conn {
        reader: BufReader::new(stream.try_clone().unwrap()),
        writer: stream,
    }
}

impl Conn {
    /// Send a request with a Content-Length body.
    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: upstream\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        self.writer.write_all(head.as_bytes()).unwrap();
        self.writer.write_all(body).unwrap();
    }

    /// Read one response; `Ok(None)` on EOF before the status line.
    fn read(&mut self) -> io::Result<Option<Resp>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let status = line.split(' ').nth(1).expect("status").parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').expect("header line");
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = resp
            .header("content-length")
            .expect("mock always sets Content-Length")
            .parse()
            .unwrap();
        resp.body = vec![0; len];
        self.reader.read_exact(&mut resp.body)?;
        Ok(Some(resp))
    }

    fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        self.send(method, target, headers, body);
        self.read().expect("read").expect("a response")
    }
}

fn hex_blake3(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

#[test]
fn records_method_target_headers_and_body_hash() {
    let mock = MockUpstream::spawn("sending").unwrap();
    let body = br#"{"From":"dev@example.com","To":"x@y.z"}"#;
    let resp = connect(&mock).request(
        "POST",
        "/email?trace=1&x=%2F",
        &[
            ("X-Scopegate-Key-Id", "k_123"),
            ("X-Scopegate-Org", "acme"),
            ("X-Scopegate-Scope", "example.com=read_write"),
            ("X-Multi", "one"),
            ("X-Multi", "two"),
        ],
        body,
    );
    assert_eq!(resp.status, 201);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let j = resp.json();
    assert_eq!(j["upstream"], "sending");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/email");
    assert_eq!(j["received_bytes"], body.len());
    assert_eq!(j["key_id"], "k_123");
    assert_eq!(j["org"], "acme");
    assert_eq!(j["scope"], "example.com=read_write");

    assert_eq!(mock.count(), 1);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.upstream, "sending");
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/email?trace=1&x=%2F");
    assert_eq!(r.header("HOST"), Some("upstream"));
    assert_eq!(r.header("x-scopegate-key-id"), Some("k_123"));
    assert_eq!(r.header_all("x-multi"), vec!["one", "two"]);
    assert_eq!(r.header("x-absent"), None);
    let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "host");
    assert_eq!(names[1], "x-scopegate-key-id");
    assert_eq!(r.body_len, body.len());
    assert_eq!(r.body, body);
    assert_eq!(r.body_blake3, hex_blake3(body));
    assert!(!r.chunked);

    // A GET on another route answers 200 with nulls for missing identity headers.
    let resp = connect(&mock).request("GET", "/domains/example.com", &[], b"");
    assert_eq!(resp.status, 200);
    assert!(resp.json()["key_id"].is_null());
    mock.clear();
    assert_eq!(mock.count(), 0);
    assert!(mock.requests().is_empty());
}

#[test]
fn five_mib_body_arrives_whole() {
    let mock = MockUpstream::spawn("sending").unwrap();
    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    let resp = connect(&mock).request("POST", "/email/batch", &[], &body);
    assert_eq!(resp.status, 201);
    assert_eq!(resp.json()["received_bytes"], body.len());
    let r = &mock.requests()[0];
    assert_eq!(r.body_len, body.len());
    assert_eq!(r.body_blake3, hex_blake3(&body));
    assert!(r.body == body);
}

#[test]
fn chunked_body_is_recorded_dechunked() {
    let mock = MockUpstream::spawn("sending").unwrap();
    let mut conn = connect(&mock);
    let chunks: [&[u8]; 3] = [b"{\"From\":", b"\"a@example.com\"", b"}"];
    let mut raw =
        b"POST /email HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in chunks {
        raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        raw.extend_from_slice(c);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    conn.writer.write_all(&raw).unwrap();
    let resp = conn.read().unwrap().unwrap();
    assert_eq!(resp.status, 201);
    let expected = chunks.concat();
    let r = &mock.requests()[0];
    assert!(r.chunked);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, expected);
    assert_eq!(r.body_len, expected.len());
    assert_eq!(r.body_blake3, hex_blake3(&expected));
}

#[test]
fn two_requests_on_one_keep_alive_connection() {
    let mock = MockUpstream::spawn("domains").unwrap();
    let mut conn = connect(&mock);
    let a = conn.request("PUT", "/domains/a.com", &[], b"first");
    let b = conn.request("DELETE", "/domains/b.com", &[], b"");
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.json()["path"], "/domains/a.com");
    assert_eq!(b.json()["path"], "/domains/b.com");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].target.as_str()),
        ("PUT", "/domains/a.com")
    );
    assert_eq!(
        (reqs[1].method.as_str(), reqs[1].target.as_str()),
        ("DELETE", "/domains/b.com")
    );
    assert_eq!(reqs[0].body, b"first");
}

#[test]
fn status_behavior_answers_that_status() {
    let mock = MockUpstream::spawn("sending").unwrap();
    mock.set_behavior(Behavior::Status(503));
    let resp = connect(&mock).request("POST", "/email", &[], b"{}");
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["upstream"], "sending");
    assert_eq!(mock.count(), 1);
}

#[test]
fn close_without_response_drops_the_connection() {
    let mock = MockUpstream::spawn("sending").unwrap();
    mock.set_behavior(Behavior::CloseWithoutResponse);
    let mut conn = connect(&mock);
    conn.send("POST", "/email", &[], b"{\"From\":\"a@b.c\"}");
    match conn.read() {
        Ok(None) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(Some(r)) => panic!("expected no response, got {}", r.status),
        Err(e) => panic!("expected EOF or reset, got {e}"),
    }
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, b"{\"From\":\"a@b.c\"}");

    mock.set_behavior(Behavior::Normal);
    assert_eq!(connect(&mock).request("GET", "/x", &[], b"").status, 200);
}

#[test]
fn recording_off_keeps_only_the_count() {
    let mock = MockUpstream::spawn("sending").unwrap();
    mock.set_recording(false);
    let mut conn = connect(&mock);
    let r = conn.request("POST", "/email", &[], b"abc");
    assert_eq!(r.json()["received_bytes"], 3);
    conn.request("POST", "/email", &[], b"defg");
    assert_eq!(mock.count(), 2);
    assert!(mock.requests().is_empty());
    mock.set_recording(true);
    conn.request("POST", "/email", &[], b"h");
    assert_eq!(mock.count(), 3);
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn domain_listing_follows_the_scope_header() {
    let mock = MockUpstream::spawn("domains").unwrap();
    let mut conn = connect(&mock);
    let all = conn.request("GET", "/domains", &[("X-Scopegate-Scope", "*")], b"");
    assert_eq!(all.status, 200);
    assert_eq!(
        all.json(),
        serde_json::json!({"upstream": "domains", "domains": ["*"]})
    );
    let some = conn.request(
        "GET",
        "/domains?count=50",
        &[(
            "X-Scopegate-Scope",
            "example.com=read_write,staging.example.com=read",
        )],
        b"",
    );
    assert_eq!(
        some.json()["domains"],
        serde_json::json!(["example.com", "staging.example.com"])
    );
    let none = conn.request("GET", "/domains", &[], b"");
    assert_eq!(none.json()["domains"], serde_json::json!([]));
}

#[test]
fn delay_waits_then_answers() {
    let mock = MockUpstream::spawn("sending").unwrap();
    mock.set_behavior(Behavior::Delay(Duration::from_millis(300)));
    let start = Instant::now();
    let resp = connect(&mock).request("POST", "/email", &[], b"{}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status, 201);
}

#[test]
fn stop_frees_the_port() {
    let mock = MockUpstream::spawn("sending").unwrap();
    let addr = mock.addr();
    // An idle keep-alive connection must not hold stop() up.
    let mut idle = connect(&mock);
    assert_eq!(idle.request("GET", "/x", &[], b"").status, 200);
    mock.stop();
    assert!(matches!(idle.read(), Ok(None) | Err(_)));
    assert!(TcpStream::connect(addr).is_err(), "port still accepting");
}

#[test]
fn stop_does_not_wait_for_a_long_delay() {
    let mock = MockUpstream::spawn("sending").unwrap();
    let addr = mock.addr();
    mock.set_behavior(Behavior::Delay(Duration::from_secs(60)));
    let mut conn = connect(&mock);
    conn.send("POST", "/email", &[], b"{}");
    assert!(mock.wait_for_count(1, Duration::from_secs(10)));
    let start = Instant::now();
    drop(mock);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(conn.read(), Ok(None) | Err(_)));
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn fixed_behavior_answers_the_same_whatever_was_sent() {
    let mock = MockUpstream::spawn("bench").unwrap();
    mock.set_recording(false);
    mock.set_behavior(Behavior::Fixed);
    let mut c = connect(&mock);
    let mut bodies = Vec::new();
    for (method, headers) in [
        ("GET", vec![]),
        (
            "GET",
            vec![
                ("X-Scopegate-Key-Id", "key_00000000000000ff"),
                ("X-Scopegate-Scope", "example.com=read_write"),
            ],
        ),
    ] {
        c.send(method, "/domains/example.com", &headers, b"");
        let r = c.read().unwrap().expect("a response");
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bodies[0]).unwrap()["ok"],
        true
    );
    c.send("POST", "/email", &[], b"{}");
    assert_eq!(c.read().unwrap().expect("a response").status, 201);
    assert_eq!(mock.count(), 3);
    // While recording, it echoes what it recorded, like Normal.
    mock.set_recording(true);
    c.send(
        "GET",
        "/domains/example.com",
        &[("X-Scopegate-Org", "acme")],
        b"",
    );
    assert_eq!(c.read().unwrap().expect("a response").json()["org"], "acme");
}
