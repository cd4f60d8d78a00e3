//! A deliberately raw HTTP/1.1 client for black-box tests: it sends the
//! request target byte for byte (no URL normalisation, so `..` and `%2F`
//! reach the gateway as written) and reads one response.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response as received.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// First header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    /// `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// A request to build and send.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Request target exactly as sent.
    pub target: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body (Content-Length is added unless `chunked` or a header sets it).
    pub body: Vec<u8>,
    /// Send the body with Transfer-Encoding: chunked in chunks of this size.
    pub chunked: Option<usize>,
}

impl Request {
    /// A request with no headers or body.
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            ..Request::default()
        }
    }
    /// Adds a header.
    pub fn header(mut self, k: &str, v: &str) -> Request {
        self.headers.push((k.into(), v.into()));
        self
    }
    /// Adds `Authorization: Bearer <key>`.
    pub fn bearer(self, key: &str) -> Request {
        self.header("Authorization", &format!("Bearer {key}"))
    }
    /// Sets a JSON body.
    pub fn json(mut self, v: &serde_json::Value) -> Request {
        self.body = serde_json::to_vec(v).unwrap();
        self.header("Content-Type", "application/json")
    }
    /// Sets a raw body.
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Request {
        self.body = b.into();
        self
    }
    /// Sends the body chunked.
    pub fn chunked(mut self, size: usize) -> Request {
        self.chunked = Some(size);
        self
    }

    /// The request's bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out =
            format!("{} {} HTTP/1.1\r\nHost: test\r\n", self.method, self.target).into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        let has_len = self.headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
        });
        match self.chunked {
            Some(size) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in self.body.chunks(size.max(1)) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => {
                if !has_len
                    && (!self.body.is_empty() || self.method == "POST" || self.method == "PUT")
                {
                    out.extend_from_slice(
                        format!("Content-Length: {}\r\n", self.body.len()).as_bytes(),
                    );
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.body);
            }
        }
        out
    }

    /// Sends on a new connection and reads the response.
    pub fn send(&self, addr: SocketAddr) -> Response {
        let mut c = Conn::open(addr);
        c.send(self, false)
    }
}

/// A byte stream a [`Conn`] runs over: plain TCP, or TLS on TCP.
pub trait Transport: Read + Write + Send {
    /// The TCP socket underneath (for timeouts).
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport
    for tokio_rustls::rustls::StreamOwned<tokio_rustls::rustls::ClientConnection, TcpStream>
{
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// One client connection, for keep-alive tests.
pub struct Conn {
    reader: BufReader<Box<dyn Transport>>,
}

impl Conn {
    /// Connects (10 s read timeout).
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn::from_transport(Box::new(s))
    }

    /// A connection over an already open transport (TLS: see `tls::h1_conn`).
    pub fn from_transport(t: Box<dyn Transport>) -> Conn {
        Conn {
            reader: BufReader::new(t),
        }
    }

    /// A connection on a stream connected elsewhere (e.g. from a chosen
    /// source address).
    pub fn from_stream(s: TcpStream) -> Conn {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn::from_transport(Box::new(s))
    }

    /// Writes raw bytes, reporting failure (a closed connection) instead of
    /// panicking.
    pub fn try_write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)?;
        self.reader.get_mut().flush()
    }

    /// Writes raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
        self.reader.get_mut().flush().unwrap();
    }

    /// Sends a request and reads its response.
    pub fn send(&mut self, req: &Request, keep_alive: bool) -> Response {
        self.write_raw(&req.to_bytes(keep_alive));
        self.read_response(req.method == "HEAD")
    }

    /// Reads one response (skipping 100 Continue).
    pub fn read_response(&mut self, head: bool) -> Response {
        loop {
            let r = self.read_one(head);
            if r.status != 100 {
                return r;
            }
        }
    }

    /// Reads one response, or `None` when the server closed the connection
    /// before sending one.
    pub fn try_read_response(&mut self) -> Option<Response> {
        let peek = self.reader.fill_buf().ok()?;
        if peek.is_empty() {
            return None;
        }
        Some(self.read_response(false))
    }

    /// Reads one response header block and returns its status, without a
    /// body: for `100 Continue` (or an early final answer) after sending
    /// only the request header.
    pub fn read_interim(&mut self) -> u16 {
        let r = self.read_one(true);
        r.status
    }

    /// Whether the server closed the connection (reads EOF within `wait`).
    pub fn is_closed(&mut self, wait: Duration) -> bool {
        self.reader
            .get_ref()
            .tcp()
            .set_read_timeout(Some(wait))
            .unwrap();
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }

    fn read_one(&mut self, head: bool) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("header line");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header has a colon");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head || status == 100 || status == 204 || status == 304 {
        } else if let Some(len) = get("content-length") {
            body.resize(len.parse().unwrap(), 0);
            self.reader.read_exact(&mut body).unwrap();
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            self.reader.read_to_end(&mut body).unwrap();
        }
        Response {
            status,
            headers,
            body,
        }
    }
}
