//! The fast path: plain HTTP/1.1 requests without a body, proxied by the
//! gateway's own loop instead of Pingora's `ProxyHttp` machinery (pool
//! hand-offs through spawned tasks, channels per request, boxed futures,
//! header re-parses), which cost about twice nginx's CPU per request.
//!
//! [`crate::request::conn`] hands a request here when [`eligible`] says so:
//! HTTP/1.1, an origin-form target, no body (no Transfer-Encoding, no
//! Content-Length other than 0), no `Expect`, no `Upgrade` nor any other
//! hop-by-hop field but `Connection: close`/`keep-alive`, at most one plain
//! `Host`, and no byte after the head (pipelined requests take Pingora's
//! path, which keeps their order exact). Everything else takes Pingora's path
//! unchanged; `[connections] fast_path = false` sends every request there.
//!
//! The decision is the one [`crate::request::proxy::Proxy`] makes, through
//! the same functions ([`decide_head`], [`check_senders`] on an empty body);
//! refusals are the bytes Pingora's session writes ([`reply_wire`]). An
//! admitted request is rewritten ([`rewrite_request`]), written to an
//! upstream connection of this thread's pool in one write, and the answer is
//! copied back with its framing: none (HEAD, 204, 304), Content-Length,
//! chunked (passed through while its end is tracked), or close-delimited
//! (re-framed as chunked, as Pingora does). Upstream failures answer the same
//! 502/504 as `fail_to_proxy` and count the same `upstream_errors` kinds; a
//! reused connection that fails before any response byte is retried once on
//! a new connection, for idempotent methods only (Pingora's rule: a retried
//! send is a duplicate email).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::protocols::Stream;
use pingora::time::fast_timeout::fast_timeout;
use pingora::upstreams::peer::Peer;
use scopegate_config::ResponseFormat;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ops::accesslog::Entry;
use crate::ops::metrics::Outcome;
use crate::request::ctx::Ctx;
use crate::request::decide::{check_senders, decide_head, Head};
use crate::request::forward::{peer_for, rewrite_request};
use crate::request::head::log_path_of;
use crate::request::proxy::STALE;
use crate::request::respond::{reply_wire, Reply};
use crate::request::state::State;

/// A request the fast path takes.
pub struct FastRequest {
    /// The parsed head, as Pingora's session would have it.
    pub req: RequestHeader,
    /// The client sent `Connection: close`.
    pub close: bool,
}

/// Hop-by-hop fields Pingora strips or treats specially: a request carrying
/// one takes Pingora's path (`Connection` is handled below).
const PINGORA_ONLY: &[&str] = &[
    "transfer-encoding",
    "expect",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "http2-settings",
];

/// The request in `buf` (a complete head of `len` bytes, already checked by
/// [`crate::request::framing::scan_head`]) when the fast path may take it.
pub fn eligible(buf: &[u8], len: usize) -> Option<FastRequest> {
    if buf.len() != len {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == len => {}
        _ => return None,
    }
    if parsed.version != Some(1) {
        return None;
    }
    let (method, path) = (parsed.method?, parsed.path?);
    if !path.starts_with('/') || http::Uri::try_from(path).is_err() {
        return None;
    }
    let mut req =
        RequestHeader::build_no_case(method, path.as_bytes(), Some(parsed.headers.len())).ok()?;
    let (mut close, mut connections, mut hosts) = (false, 0, 0);
    for h in parsed.headers.iter() {
        let (name, value) = (h.name, h.value);
        if PINGORA_ONLY.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") && value.trim_ascii() != b"0" {
            return None;
        }
        if name.eq_ignore_ascii_case("connection") {
            // Hop-by-hop: never forwarded (Pingora strips it too).
            connections += 1;
            let v = value.trim_ascii();
            close = v.eq_ignore_ascii_case(b"close");
            if connections > 1 || !(close || v.eq_ignore_ascii_case(b"keep-alive")) {
                return None;
            }
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            let plain = |b: &u8| b.is_ascii_alphanumeric() || b".-_:[]".contains(b);
            if hosts > 1 || !value.iter().all(plain) {
                return None;
            }
        }
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(value).ok()?;
        req.append_header(name, value).ok()?;
    }
    Some(FastRequest { req, close })
}

/// Answers one eligible request on `stream`. `closing`: the client asked
/// to close or the server is shutting down. Returns whether the client
/// connection may carry another request.
pub async fn serve(
    state: &State,
    stream: &mut Stream,
    request: FastRequest,
    client: Option<std::net::IpAddr>,
    closing: bool,
) -> bool {
    let FastRequest { mut req, .. } = request;
    let keep = !closing;
    let mut ctx = Ctx::new();
    ctx.client = client;
    state.metrics.in_flight.inc();
    state.metrics.fast_path.inc();
    ctx.counted = true;
    let routing = state.routing.load_full();
    ctx.routing = Some(std::sync::Arc::clone(&routing));
    let refusal = if let Some(group) = &state.passthrough {
        ctx.group = routing.groups.get(group).cloned();
        ctx.outcome = Some(Outcome::Admitted);
        None
    } else if state.stale(routing.config.fleet.max_staleness) {
        Some(STALE)
    } else {
        match decide_head(
            &state.keystore,
            &state.guard,
            &state.metrics,
            &routing,
            &req,
            &mut ctx,
        ) {
            Head::Refuse(r, o, why) => Some((r, o, why)),
            Head::Forward => None,
            // No body: decided on an empty one, as Pingora's path would
            // after reading it.
            Head::NeedBody { key, spec, .. } => {
                if state.stale(routing.config.fleet.max_staleness) {
                    Some(STALE)
                } else {
                    match check_senders(&state.keystore, &state.metrics, &mut ctx, &key, b"", &spec)
                    {
                        Err(crate::request::decide::Verdict::Refuse(r, o, why)) => {
                            Some((r, o, why))
                        }
                        _ => None,
                    }
                }
            }
        }
    };
    // What the access log needs of the request as the client sent it.
    let method = req.method.clone();
    let path = req.uri.clone();
    let done = match refusal {
        Some((reply, outcome, reason)) => {
            ctx.outcome = Some(outcome);
            ctx.reason = reason;
            let format = ctx.response_format();
            let written = answer(stream, &reply, format, keep, &mut ctx).await;
            Done {
                keep: keep && written.is_some(),
                status: ctx.status,
                bytes_out: written.unwrap_or(0),
            }
        }
        None => forward(state, stream, &mut req, &mut ctx, keep).await,
    };
    log(state, &mut ctx, &method, &path, &done);
    done.keep
}

/// How a request ended, for the caller and the access log.
struct Done {
    /// The client connection may carry another request.
    keep: bool,
    /// The status sent (0 when none was).
    status: u16,
    /// Response body bytes sent.
    bytes_out: usize,
}

/// Writes one of the gateway's own replies; the body length when written.
async fn answer(
    stream: &mut Stream,
    reply: &Reply,
    format: ResponseFormat,
    keep: bool,
    ctx: &mut Ctx,
) -> Option<usize> {
    let (status, body) = reply.render(format);
    ctx.status = status;
    let bytes = reply_wire(reply, format, keep).ok()?;
    write_client(stream, &bytes).await.ok()?;
    Some(body.len())
}

async fn write_client(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// What Pingora's `proxy.rs` does in `logging`: the route's count, the
/// in-flight gauge, the access log line.
fn log(state: &State, ctx: &mut Ctx, method: &http::Method, uri: &http::Uri, done: &Done) {
    if ctx.counted {
        state.metrics.in_flight.dec();
    }
    let outcome = ctx.outcome.unwrap_or(Outcome::BadRequest);
    if let Some(routing) = &ctx.routing {
        match ctx.route.and_then(|i| routing.routes.get(i)) {
            Some(r) => r.metrics.count(outcome),
            None => routing.unmatched.count(outcome),
        }
    }
    if !state.access_log.enabled() {
        return;
    }
    state.access_log.log(Entry {
        ts_ms: ctx.ts_ms,
        method: method.as_str().to_string(),
        path: log_path_of(uri.path()),
        status: done.status,
        decision: outcome.as_str(),
        reason: ctx.reason,
        key_id: ctx.key_id.take().map(scopegate_keystore::secret::format_id),
        org: ctx.org.take().map(|o| o.to_string()),
        upstream: ctx.group.as_ref().map(|g| g.name.clone()),
        bytes_in: ctx.bytes_in,
        bytes_out: done.bytes_out,
        latency_us: ctx.start.elapsed().as_micros() as u64,
        would_refuse: ctx.would_refuse,
    });
}

/// Why an exchange with the upstream failed: the metric kind and reply
/// ([`crate::request::forward::upstream_failure`]'s mapping).
#[derive(Debug)]
enum Failure {
    /// Connect timed out, or the upstream did not answer in time.
    Timeout,
    /// Could not connect (refused, unreachable, no healthy backend).
    Connect,
    /// Anything else (closed, reset, malformed answer).
    Other,
}

impl Failure {
    fn kind(&self) -> (Reply, &'static str) {
        match self {
            Failure::Timeout => (Reply::GatewayTimeout, "timeout"),
            Failure::Connect => (Reply::BadGateway, "connect"),
            Failure::Other => (Reply::BadGateway, "other"),
        }
    }
}

/// Forwards an admitted request and copies the answer back.
async fn forward(
    state: &State,
    stream: &mut Stream,
    req: &mut RequestHeader,
    ctx: &mut Ctx,
    keep: bool,
) -> Done {
    let path_for_log = req.uri.clone();
    let prepared = (|| {
        let group = ctx.group.clone().ok_or(Failure::Other)?;
        let peer = peer_for(&group).map_err(|_| Failure::Connect)?;
        if state.passthrough.is_none() {
            let routing = ctx.routing.clone().ok_or(Failure::Other)?;
            rewrite_request(req, ctx, &routing).map_err(|_| Failure::Other)?;
        }
        let wire = pingora::protocols::http::v1::client::http_req_header_to_wire(req)
            .ok_or(Failure::Other)?;
        let pingora::protocols::l4::socket::SocketAddr::Inet(addr) = *peer.address() else {
            return Err(Failure::Connect);
        };
        Ok((group, peer, wire, addr))
    })();
    let (group, peer, wire, addr) = match prepared {
        Ok(p) => p,
        Err(f) => return fail(state, stream, ctx, f, keep, &path_for_log).await,
    };
    let o = &peer.options;
    let timeouts = Timeouts {
        connect: o.connection_timeout.unwrap_or(Duration::from_secs(10)),
        read: o.read_timeout.unwrap_or(Duration::from_secs(60)),
        write: o.write_timeout.unwrap_or(Duration::from_secs(60)),
    };
    let sent = Instant::now();
    ctx.upstream_sent = Some(sent);
    let head_only = req.method == http::Method::HEAD;
    let idempotent = req.method.is_idempotent();
    let settings = &group.settings;
    let mut pooled = take(addr, settings.idle_timeout);
    let mut retried = false;
    let (mut up, answer) = loop {
        let reused = pooled.is_some();
        let mut up = match pooled.take() {
            Some(c) => c,
            None => match connect(addr, timeouts.connect).await {
                Ok(c) => c,
                Err(f) => return fail(state, stream, ctx, f, keep, &path_for_log).await,
            },
        };
        match exchange(&mut up, &wire, &timeouts, head_only, keep).await {
            Ok(a) => break (up, a),
            Err((f, nothing)) if reused && nothing && idempotent && !retried => {
                let _ = f;
                retried = true;
            }
            Err((f, _)) => return fail(state, stream, ctx, f, keep, &path_for_log).await,
        }
    };
    group.latency.observe(sent.elapsed().as_secs_f64());
    ctx.status = answer.status;
    let mut out = answer.head;
    let mut rest = answer.rest;
    let mut bytes_out = 0usize;
    let mut reusable = answer.upstream_reusable;
    // Copy the body; `out` holds what goes to the client next.
    let result: Result<(), Option<Failure>> = async {
        match answer.framing {
            Framing::None => {
                reusable &= rest.is_empty();
                write_client(stream, &out).await.map_err(|_| None)?;
            }
            Framing::Length(mut left) => loop {
                let take = rest.len().min(left as usize);
                out.extend_from_slice(&rest[..take]);
                reusable &= rest.len() == take || left == 0;
                left -= take as u64;
                bytes_out += take;
                rest.clear();
                write_client(stream, &out).await.map_err(|_| None)?;
                out.clear();
                if left == 0 {
                    break;
                }
                read_up(&mut up, &mut rest, timeouts.read).await?;
            },
            Framing::Chunked(mut chunks) => loop {
                let before = chunks.payload;
                let end = chunks
                    .feed(&rest, &mut out)
                    .map_err(|_| Some(Failure::Other))?;
                bytes_out += (chunks.payload - before) as usize;
                reusable &= end.is_none_or(|n| n == rest.len());
                rest.clear();
                write_client(stream, &out).await.map_err(|_| None)?;
                out.clear();
                if end.is_some() {
                    break;
                }
                read_up(&mut up, &mut rest, timeouts.read).await?;
            },
            Framing::Close => loop {
                if !rest.is_empty() {
                    out.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
                    out.extend_from_slice(&rest);
                    out.extend_from_slice(b"\r\n");
                    bytes_out += rest.len();
                    rest.clear();
                }
                rest.reserve(16 * 1024);
                let n = match fast_timeout(timeouts.read, up.read_buf(&mut rest)).await {
                    Err(_) => return Err(Some(Failure::Timeout)),
                    Ok(Err(_)) => return Err(Some(Failure::Other)),
                    Ok(Ok(n)) => n,
                };
                if n == 0 {
                    out.extend_from_slice(b"0\r\n\r\n");
                    write_client(stream, &out).await.map_err(|_| None)?;
                    break;
                }
                write_client(stream, &out).await.map_err(|_| None)?;
                out.clear();
            },
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            if reusable {
                give_back(addr, up, settings.keepalive_pool);
            }
            Done {
                keep,
                status: answer.status,
                bytes_out,
            }
        }
        Err(failure) => {
            // The head is out: all that is left is to cut the response short.
            if ctx.outcome == Some(Outcome::Admitted) || ctx.outcome.is_none() {
                ctx.outcome = Some(Outcome::UpstreamError);
            }
            if let Some(f) = failure {
                count_failure(state, ctx, &f);
            }
            Done {
                keep: false,
                status: answer.status,
                bytes_out,
            }
        }
    }
}

/// Counts an upstream failure as `fail_to_proxy` does.
fn count_failure(state: &State, ctx: &Ctx, f: &Failure) {
    if let Some(group) = &ctx.group {
        state
            .metrics
            .upstream_errors
            .with_label_values(&[group.name.as_str(), f.kind().1])
            .inc();
    }
}

/// Answers an upstream failure before any of the response was sent, as
/// `fail_to_proxy` does (the client connection is not reused).
async fn fail(
    state: &State,
    stream: &mut Stream,
    ctx: &mut Ctx,
    f: Failure,
    keep: bool,
    uri: &http::Uri,
) -> Done {
    log::error!(
        "fast path: upstream {} failed ({f:?}) for {}",
        ctx.group.as_ref().map_or("-", |g| g.name.as_str()),
        log_path_of(uri.path())
    );
    if ctx.outcome == Some(Outcome::Admitted) || ctx.outcome.is_none() {
        ctx.outcome = Some(Outcome::UpstreamError);
    }
    count_failure(state, ctx, &f);
    let format = ctx.response_format();
    let written = answer(stream, &f.kind().0, format, keep, ctx).await;
    Done {
        keep: false,
        status: ctx.status,
        bytes_out: written.unwrap_or(0),
    }
}

/// The upstream timeouts of the peer.
struct Timeouts {
    connect: Duration,
    read: Duration,
    write: Duration,
}

/// How the response body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked(Chunks),
    Close,
}

/// A response head read from the upstream, rewritten for the client.
struct Answer {
    status: u16,
    /// The head for the client.
    head: BytesMut,
    /// Body bytes read with the head.
    rest: BytesMut,
    framing: Framing,
    /// The upstream connection may be pooled once the body is read.
    upstream_reusable: bool,
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Failure> {
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
async fn read_up(
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
async fn exchange(
    up: &mut TcpStream,
    wire: &[u8],
    t: &Timeouts,
    head_only: bool,
    keep: bool,
) -> Result<Answer, (Failure, bool)> {
    match fast_timeout(t.write, up.write_all(wire)).await {
        Err(_) => return Err((Failure::Timeout, true)),
        Ok(Err(_)) => return Err((Failure::Other, true)),
        Ok(Ok(())) => {}
    }
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        buf.reserve(4096);
        let before = buf.len();
        match fast_timeout(t.read, up.read_buf(&mut buf)).await {
            Err(_) => return Err((Failure::Timeout, before == 0)),
            Ok(Ok(0)) | Ok(Err(_)) => return Err((Failure::Other, before == 0)),
            Ok(Ok(_)) => {}
        }
        loop {
            match response_head(&buf, head_only, keep) {
                Parsed::Partial if buf.len() > 64 * 1024 => return Err((Failure::Other, false)),
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

enum Parsed {
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
fn response_head(buf: &[u8], head_only: bool, keep: bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 128];
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
struct Chunks {
    state: ChunkState,
    /// Payload bytes seen (what Pingora counts as body bytes sent).
    payload: u64,
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
    fn feed(&mut self, buf: &[u8], out: &mut BytesMut) -> Result<Option<usize>, ()> {
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
fn take(addr: SocketAddr, idle_timeout: Duration) -> Option<TcpStream> {
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
fn give_back(addr: SocketAddr, conn: TcpStream, cap: usize) {
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
    fn only_plain_bodiless_http11_requests_are_eligible() {
        let ok = |s: &str| eligible(s.as_bytes(), s.len()).is_some();
        assert!(ok("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(ok("DELETE /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
        let r = eligible(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n", 38).unwrap();
        assert!(r.close);
        assert!(r.req.headers.get("connection").is_none());
        for refused in [
            "GET /a HTTP/1.0\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET /a HTTP/1.1\r\nConnection: x-foo\r\n\r\n",
            "GET /a HTTP/1.1\r\nTE: trailers\r\n\r\n",
            "GET http://h/a HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: u@h\r\n\r\n",
        ] {
            assert!(!ok(refused), "{refused:?}");
        }
        // Pipelined bytes behind the head: Pingora's path.
        let two = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        assert!(eligible(two.as_bytes(), 19).is_none());
    }

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
