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

use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::protocols::Stream;
use pingora::time::fast_timeout::fast_timeout;
use pingora::upstreams::peer::Peer;
use scopegate_config::ResponseFormat;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ops::metrics::Outcome;
use crate::request::ctx::Ctx;
use crate::request::decide::{check_senders, decide_head, Head};
use crate::request::forward::{peer_for, rewrite_request};
use crate::request::head::log_path_of;
use crate::request::proxy::{record, STALE};
use crate::request::respond::{reply_wire, Reply};
use crate::request::state::State;
use crate::request::upstream::{
    connect, exchange, give_back, read_up, take, Failure, Framing, Timeouts,
};

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
pub fn eligible(buf: &bytes::Bytes, len: usize) -> Option<FastRequest> {
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
    if !path.starts_with('/') {
        return None;
    }
    let uri = http::Uri::from_maybe_shared(buf.slice_ref(path.as_bytes())).ok()?;
    let mut req = RequestHeader::build_no_case(method, b"/", Some(parsed.headers.len())).ok()?;
    req.set_uri(uri);
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
        let value = HeaderValue::from_maybe_shared(buf.slice_ref(value)).ok()?;
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
    let bytes_in = ctx.bytes_in;
    record(
        state,
        &mut ctx,
        &method,
        path.path(),
        done.status,
        bytes_in,
        done.bytes_out,
    );
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
        state.metrics.upstream_error(&group.name, f.kind().1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_bodiless_http11_requests_are_eligible() {
        let ok =
            |s: &str| eligible(&bytes::Bytes::copy_from_slice(s.as_bytes()), s.len()).is_some();
        assert!(ok("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(ok("DELETE /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
        let r = eligible(
            &bytes::Bytes::from_static(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n"),
            38,
        )
        .unwrap();
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
        assert!(eligible(&bytes::Bytes::from_static(two.as_bytes()), 19).is_none());
    }
}
