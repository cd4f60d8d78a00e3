//! The upstream side of [`crate::request::fast`]: connections kept per
//! worker thread and backend (a stack, most recently used first, capped like
//! `keepalive_pool`, no task or lock per hand-off), the request written in
//! one write, and the response head read and rewritten as Pingora's session
//! would send it (`Date` and `Connection` its own, a close-delimited body
//! re-framed as chunked), with the body's framing followed to its end.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora::time::fast_timeout::fast_timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::request::respond::Reply;

/// The largest upstream response head read, as Pingora's HTTP/1.1 client
/// (beyond it: 502).
const MAX_RESPONSE_HEAD: usize = 1024 * 1024 - 1;

/// Why an exchange with the upstream failed, on either path: the metric
/// kind and the reply ([`Failure::kind`]). Pingora's errors are classified
/// by [`Failure::of`].
#[derive(Debug)]
pub(crate) enum Failure {
    /// Connect timed out, or the upstream did not answer in time.
    Timeout,
    /// Could not connect (refused, unreachable, no healthy backend).
    Connect,
    /// Anything else (closed, reset, malformed answer).
    Other,
}

impl Failure {
    /// The failure a Pingora error type stands for.
    pub(crate) fn of(e: &pingora::ErrorType) -> Failure {
        use pingora::ErrorType as E;
        match e {
            E::ConnectTimedout | E::ReadTimedout | E::WriteTimedout => Failure::Timeout,
            E::ConnectRefused | E::ConnectNoRoute | E::ConnectError => Failure::Connect,
            _ => Failure::Other,
        }
    }

    /// The reply and the `scopegate_upstream_errors_total` kind.
    pub(crate) fn kind(&self) -> (Reply, &'static str) {
        match self {
            Failure::Timeout => (Reply::GatewayTimeout, "timeout"),
            Failure::Connect => (Reply::BadGateway, "connect"),
            Failure::Other => (Reply::BadGateway, "other"),
        }
    }
}

/// The upstream timeouts of the peer.
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) read: Duration,
    pub(crate) write: Duration,
}

/// How the response body is delimited.
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked(Chunks),
    Close,
}

/// A response head read from the upstream, rewritten for the client.
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// The head for the client.
    pub(crate) head: BytesMut,
    /// Body bytes read with the head.
    pub(crate) rest: BytesMut,
    pub(crate) framing: Framing,
    /// The upstream connection may be pooled once the body is read.
    pub(crate) upstream_reusable: bool,
}

pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Failure> {
    match fast_timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(Failure::Connect),
        Ok(Err(_)) => Err(Failure::Connect),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// Reads more of the body; EOF before its end is a failure.
pub(crate) async fn read_up(
    up: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<(), Option<Failure>> {
    buf.reserve(16 * 1024);
    match fast_timeout(timeout, up.read_buf(buf)).await {
        Err(_) => Err(Some(Failure::Timeout)),
        Ok(Ok(0)) | Ok(Err(_)) => Err(Some(Failure::Other)),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Sends the request and reads the response head. On failure, also whether
/// no response byte had arrived (a reused connection may then be retried).
pub(crate) async fn exchange(
    up: &mut TcpStream,
    wire: &[u8],
    t: &Timeouts,
    head_only: bool,
    keep: bool,
) -> Result<Answer, (Failure, bool)> {
    match fast_timeout(t.write, up.write_all(wire)).await {
        Err(_) => return Err((Failure::Timeout, false)),
        Ok(Err(_)) => return Err((Failure::Other, true)),
        Ok(Ok(())) => {}
    }
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        buf.reserve(4096);
        let before = buf.len();
        match fast_timeout(t.read, up.read_buf(&mut buf)).await {
            // A timeout is not retried (nor is it on Pingora's path): the
            // upstream may be working on the request.
            Err(_) => return Err((Failure::Timeout, false)),
            Ok(Ok(0)) | Ok(Err(_)) => return Err((Failure::Other, before == 0)),
            Ok(Ok(_)) => {}
        }
        loop {
            match response_head(&buf, head_only, keep) {
                Parsed::Partial if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err((Failure::Other, false))
                }
                Parsed::Partial => break,
                Parsed::Bad => return Err((Failure::Other, false)),
                Parsed::Interim(n) => {
                    let _ = buf.split_to(n);
                    if buf.is_empty() {
                        break;
                    }
                }
                Parsed::Head(mut a, n) => {
                    let _ = buf.split_to(n);
                    a.rest = buf;
                    return Ok(a);
                }
            }
        }
    }
}

pub(crate) enum Parsed {
    Partial,
    Bad,
    /// A 1xx answer of this many bytes, skipped.
    Interim(usize),
    /// The final head, and its length.
    Head(Answer, usize),
}

/// Parses the upstream's response head and writes the client's: Pingora's
/// session sets `Date` and `Connection` (the upstream's are dropped), and a
/// close-delimited body is sent chunked.
pub(crate) fn response_head(buf: &[u8], head_only: bool, keep: bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Bad,
    };
    let (Some(code), Some(version)) = (r.code, r.version) else {
        return Parsed::Bad;
    };
    if (100..200).contains(&code) {
        return if code == 101 {
            Parsed::Bad
        } else {
            Parsed::Interim(n)
        };
    }
    let mut length: Option<u64> = None;
    let (mut chunked, mut upstream_close, mut upstream_keep) = (false, false, false);
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(v) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return Parsed::Bad;
            };
            if length.is_some_and(|l| l != v) {
                return Parsed::Bad;
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Parsed::Bad;
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                upstream_close |= t.eq_ignore_ascii_case(b"close");
                upstream_keep |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let no_body = head_only || code == 204 || code == 304;
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::None,
        (false, true, _) => Framing::Chunked(Chunks::default()),
        (false, false, Some(l)) => Framing::Length(l),
        (false, false, None) => Framing::Close,
    };
    let rechunk = matches!(framing, Framing::Close);
    let mut head = BytesMut::with_capacity(n + 128);
    head.extend_from_slice(if version == 0 && !rechunk {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    head.extend_from_slice(&itoa_3(code));
    head.extend_from_slice(b" ");
    head.extend_from_slice(r.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for h in r.headers.iter() {
        let drop = h.name.eq_ignore_ascii_case("connection")
            || h.name.eq_ignore_ascii_case("date")
            || (chunked && h.name.eq_ignore_ascii_case("content-length"));
        if drop {
            continue;
        }
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    if rechunk {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    head.extend_from_slice(b"Date: ");
    head.extend_from_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
    head.extend_from_slice(if keep {
        b"\r\nConnection: keep-alive\r\n\r\n".as_slice()
    } else {
        b"\r\nConnection: close\r\n\r\n".as_slice()
    });
    let upstream_reusable =
        !rechunk && !upstream_close && (version == 1 || upstream_keep) && code != 101;
    Parsed::Head(
        Answer {
            status: code,
            head,
            rest: BytesMut::new(),
            framing,
            upstream_reusable,
        },
        n,
    )
}

fn itoa_3(code: u16) -> [u8; 3] {
    [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

/// Where a chunked body is while it passes through.
#[derive(Default)]
pub(crate) struct Chunks {
    state: ChunkState,
    /// Payload bytes seen (what Pingora counts as body bytes sent).
    pub(crate) payload: u64,
}

#[derive(Default)]
enum ChunkState {
    /// In a chunk-size line: the size so far, its digits, past a `;` or
    /// whitespace (extension), CR seen.
    #[default]
    Size,
    SizeLine {
        size: u64,
        digits: u32,
        ext: bool,
        cr: bool,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section: the current line's length, CR seen.
    Trailer {
        len: usize,
        cr: bool,
    },
}

impl Chunks {
    /// Follows `buf`, writing its payload to `out` as chunks of its own
    /// (extensions and trailers are not passed on: Pingora's path re-frames
    /// a chunked body the same way); `Ok(Some(n))` when the body ends after
    /// `n` of the bytes, with the last chunk written.
    pub(crate) fn feed(&mut self, buf: &[u8], out: &mut BytesMut) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < buf.len() {
            match &mut self.state {
                ChunkState::Size => {
                    self.state = ChunkState::SizeLine {
                        size: 0,
                        digits: 0,
                        ext: false,
                        cr: false,
                    };
                }
                ChunkState::SizeLine {
                    size,
                    digits,
                    ext,
                    cr,
                } => {
                    let b = buf[i];
                    i += 1;
                    if *cr {
                        if b != b'\n' || *digits == 0 {
                            return Err(());
                        }
                        self.state = if *size == 0 {
                            ChunkState::Trailer { len: 0, cr: false }
                        } else {
                            ChunkState::Data(*size)
                        };
                    } else if b == b'\r' {
                        *cr = true;
                    } else if *ext {
                        if b == b'\n' {
                            return Err(());
                        }
                    } else if let Some(d) = (b as char).to_digit(16) {
                        if *digits >= 15 {
                            return Err(());
                        }
                        *size = *size * 16 + d as u64;
                        *digits += 1;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        *ext = true;
                    } else {
                        return Err(());
                    }
                }
                ChunkState::Data(left) => {
                    let take = (*left).min((buf.len() - i) as u64);
                    out.extend_from_slice(format!("{take:x}\r\n").as_bytes());
                    out.extend_from_slice(&buf[i..i + take as usize]);
                    out.extend_from_slice(b"\r\n");
                    i += take as usize;
                    self.payload += take;
                    *left -= take;
                    if *left == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if buf[i] != b'\r' {
                        return Err(());
                    }
                    i += 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if buf[i] != b'\n' {
                        return Err(());
                    }
                    i += 1;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer { len, cr } => {
                    let b = buf[i];
                    i += 1;
                    if *cr {
                        if b != b'\n' {
                            return Err(());
                        }
                        if *len == 0 {
                            out.extend_from_slice(b"0\r\n\r\n");
                            return Ok(Some(i));
                        }
                        *len = 0;
                        *cr = false;
                    } else if b == b'\r' {
                        *cr = true;
                    } else {
                        *len += 1;
                        if *len > 16 * 1024 {
                            return Err(());
                        }
                    }
                }
            }
        }
        Ok(None)
    }
}

thread_local! {
    /// Idle upstream connections of this thread, per backend address, most
    /// recently used last.
    static POOL: RefCell<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>> =
        RefCell::new(HashMap::new());
}

/// An idle connection to `addr` that is still open, if this thread has one.
pub(crate) fn take(addr: SocketAddr, idle_timeout: Duration) -> Option<TcpStream> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&addr)?;
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < idle_timeout && still_open(&conn) {
                return Some(conn);
            }
        }
        None
    })
}

/// Whether an idle connection is still open and silent: when the runtime
/// saw it readable, a non-blocking read must find nothing to read yet (a
/// close or stray bytes retire it).
fn still_open(conn: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match conn.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(conn.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// Keeps an idle connection for reuse, up to `cap` per backend and thread.
pub(crate) fn give_back(addr: SocketAddr, conn: TcpStream, cap: usize) {
    if cap == 0 {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.entry(addr).or_default();
        if idle.len() >= cap {
            idle.remove(0);
        }
        idle.push((conn, Instant::now()));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_end() {
        let body = b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut c = Chunks::default();
        let mut out = BytesMut::new();
        assert_eq!(c.feed(body, &mut out), Ok(Some(body.len() - 4)));
        assert_eq!(c.payload, 8);
        assert_eq!(&out[..], b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n");
        // Byte by byte gives the same end and payload.
        let mut c = Chunks::default();
        let mut out = BytesMut::new();
        let mut end = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = c.feed(std::slice::from_ref(b), &mut out).unwrap() {
                end = Some(i + n);
                break;
            }
        }
        assert_eq!(end, Some(body.len() - 4));
        assert_eq!(c.payload, 8);
        assert!(out.ends_with(b"1\r\nc\r\n0\r\n\r\n"));
        let mut out = BytesMut::new();
        assert!(Chunks::default().feed(b"zz\r\n", &mut out).is_err());
        assert!(Chunks::default().feed(b"2\r\nabX", &mut out).is_err());
    }

    #[test]
    fn the_client_head_drops_the_upstreams_connection_and_date_and_rechunks_close_delimited() {
        let up = b"HTTP/1.1 200 Fine\r\nDate: old\r\nConnection: close\r\nX-A: 1\r\n\r\nbody";
        let Parsed::Head(a, n) = response_head(up, false, true) else {
            panic!("not parsed");
        };
        assert_eq!(n, up.len() - 4);
        let head = String::from_utf8(a.head.to_vec()).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200 Fine\r\nX-A: 1\r\n"),
            "{head}"
        );
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        assert!(!head.contains("old") && !head.contains("close"), "{head}");
        assert!(matches!(a.framing, Framing::Close) && !a.upstream_reusable);
        let Parsed::Head(a, _) = response_head(b"HTTP/1.1 204 No Content\r\n\r\n", false, true)
        else {
            panic!("not parsed");
        };
        assert!(matches!(a.framing, Framing::None) && a.upstream_reusable);
        assert!(matches!(
            response_head(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
                false,
                true
            ),
            Parsed::Interim(25)
        ));
    }
}
