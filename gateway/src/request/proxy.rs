//! The Pingora `ProxyHttp` implementation: one short method per phase; the
//! decisions live in [`crate::request::decide`].
//!
//! Everything refused is refused in `request_filter`, before Pingora picks a
//! peer: the upstream never sees a request the gateway did not fully check.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::Peer;
use pingora::{ErrorSource, ErrorType};

use crate::ops::accesslog::{mask_keys, Entry};
use crate::ops::metrics::Outcome;
use crate::request::respond::Reply;
use crate::request::routing::{Group, Routing};
use crate::State;

/// Per-request state carried between phases.
pub struct Ctx {
    /// When the request arrived.
    pub start: Instant,
    /// Unix milliseconds at arrival, for the access log.
    pub ts_ms: i64,
    /// The routing version this request is decided and forwarded by.
    pub routing: Option<Arc<Routing>>,
    /// Index of the matched route.
    pub route: Option<usize>,
    /// The upstream group of an admitted request.
    pub group: Option<Arc<Group>>,
    /// The decision, once made.
    pub outcome: Option<Outcome>,
    /// Why it was refused, for logs and metrics (never a key).
    pub reason: Option<&'static str>,
    /// Status we answered ourselves, if any.
    pub status: u16,
    /// Public id of the key, once recognised (as a number: formatted only
    /// for a log line).
    pub key_id: Option<u64>,
    /// Organisation of the key.
    pub org: Option<std::sync::Arc<str>>,
    /// Identity header values to add upstream, in the order of the names in
    /// [`crate::request::routing::Identity`]; an `Err` when a value cannot be a header
    /// value (the request then fails rather than reach the upstream without it).
    pub identity:
        Option<std::result::Result<[http::HeaderValue; 6], http::header::InvalidHeaderValue>>,
    /// The path and query the upstream receives: the canonical form checked.
    pub upstream_uri: Option<String>,
    /// Request body bytes read while inspecting it.
    pub bytes_in: usize,
    /// When the request was sent upstream.
    pub upstream_sent: Option<Instant>,
    /// Whether `in_flight` was incremented for this request.
    pub counted: bool,
    /// Largest body a streamed (not inspected) request may send; 0 = no limit.
    pub body_limit: u64,
    /// Body bytes streamed upstream so far.
    pub body_seen: u64,
}

impl Ctx {
    /// A fresh context for a request arriving now.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Ctx {
        Ctx {
            start: Instant::now(),
            ts_ms: scopegate_keystore::time::now_ms(),
            routing: None,
            route: None,
            group: None,
            outcome: None,
            reason: None,
            status: 0,
            key_id: None,
            org: None,
            identity: None,
            upstream_uri: None,
            bytes_in: 0,
            upstream_sent: None,
            counted: false,
            body_limit: 0,
            body_seen: 0,
        }
    }
}

/// The proxy service.
pub struct Proxy {
    /// Shared gateway state.
    pub state: Arc<State>,
}

/// Writes a reply the gateway decided on, keeping the connection alive when
/// the request body is fully read.
pub async fn write_reply(session: &mut Session, reply: &Reply) -> Result<()> {
    let body = reply.body();
    let mut h = ResponseHeader::build(reply.status(), Some(4))?;
    h.insert_header("Content-Type", "application/json")?;
    h.insert_header("Content-Length", body.len().to_string())?;
    h.insert_header("Cache-Control", "no-store")?;
    for (k, v) in reply.extra_headers() {
        h.insert_header(*k, *v)?;
    }
    if !session.is_body_done() {
        // An unread body would be parsed as the next request: drain a small
        // one, close the connection after a large one.
        let small = content_length(session.req_header()).is_some_and(|n| n <= 64 * 1024);
        let drained = small
            && tokio::time::timeout(
                std::time::Duration::from_secs(1),
                session.drain_request_body(),
            )
            .await
            .is_ok_and(|r| r.is_ok());
        if !drained {
            session.set_keepalive(None);
        }
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// The request's Content-Length, if present and valid.
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Proxy {
    /// Answers with `reply` and records the decision.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reply: Reply,
        outcome: Outcome,
        reason: Option<&'static str>,
    ) -> Result<bool> {
        ctx.outcome = Some(outcome);
        ctx.reason = reason;
        ctx.status = reply.status();
        write_reply(session, &reply).await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    /// Decides the request: canonical path, route, key, scope, body. Returns
    /// `Ok(true)` when the gateway answered (refusal, or a large body it
    /// forwarded itself), `Ok(false)` to let Pingora forward it.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.ts_ms = scopegate_keystore::time::now_ms();
        self.state.metrics.in_flight.inc();
        ctx.counted = true;
        let routing = self.state.routing.load_full();
        ctx.routing = Some(Arc::clone(&routing));
        if let Some(group) = &self.state.passthrough {
            ctx.group = routing.groups.get(group).cloned();
            ctx.outcome = Some(Outcome::Admitted);
            return Ok(false);
        }
        match crate::request::decide::decide(&self.state, &routing, session, ctx).await? {
            crate::request::decide::Verdict::Forward => Ok(false),
            crate::request::decide::Verdict::Answered => Ok(true),
            crate::request::decide::Verdict::Refuse(reply, outcome, reason) => {
                self.refuse(session, ctx, reply, outcome, reason).await
            }
        }
    }

    /// Counts streamed body bytes and cuts a body off at the route's limit
    /// (one without a Content-Length, which was checked up front).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_seen += b.len() as u64;
            if ctx.body_limit > 0 && ctx.body_seen > ctx.body_limit {
                ctx.outcome = Some(Outcome::TooLarge);
                ctx.reason = Some("body_stream");
                return Err(Error::explain(
                    ErrorType::Custom("body over the route's limit"),
                    "request body over the route's limit",
                )
                .into_down());
            }
        }
        Ok(())
    }

    /// Picks a healthy backend of the route's group, round robin.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let group = ctx
            .group
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream group decided"))?;
        let peer = crate::request::forward::peer_for(&group)?;
        ctx.upstream_sent = Some(Instant::now());
        Ok(peer)
    }

    /// Rewrites the request for the upstream: the canonical path checked,
    /// identity headers replaced by the gateway's own, the key header dropped.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let routing = ctx
            .routing
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no routing"))?;
        if self.state.passthrough.is_some() {
            return Ok(());
        }
        crate::request::forward::rewrite_request(upstream_request, ctx, routing)
    }

    /// Records the upstream's response time.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(sent), Some(group)) = (ctx.upstream_sent, &ctx.group) {
            group.latency.observe(sent.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// A send is never retried once any byte may have reached the upstream:
    /// a retried send is a duplicate email.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {}", peer.address()));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Answers 502/504 with a JSON body when the upstream fails.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let failure = match e.esource() {
            ErrorSource::Downstream => None,
            _ => Some(crate::request::forward::upstream_failure(e)),
        };
        if ctx.outcome == Some(Outcome::Admitted) || ctx.outcome.is_none() {
            ctx.outcome = Some(Outcome::UpstreamError);
        }
        if let (Some(group), Some((_, kind))) = (&ctx.group, &failure) {
            self.state
                .metrics
                .upstream_errors
                .with_label_values(&[group.name.as_str(), kind])
                .inc();
        }
        let reply = if ctx.outcome == Some(Outcome::TooLarge) {
            Some(Reply::TooLarge)
        } else {
            failure.map(|(r, _)| r)
        };
        let code = match reply {
            Some(r) if session.response_written().is_none() => {
                ctx.status = r.status();
                let _ = write_reply(session, &r).await;
                r.status()
            }
            Some(r) => r.status(),
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Counts the request and queues its access log line.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.counted {
            self.state.metrics.in_flight.dec();
        }
        let outcome = ctx.outcome.unwrap_or(Outcome::BadRequest);
        if let Some(routing) = &ctx.routing {
            match ctx.route.and_then(|i| routing.routes.get(i)) {
                Some(r) => r.metrics.count(outcome),
                None => routing.unmatched.count(outcome),
            }
        }
        if !self.state.access_log.enabled() {
            return;
        }
        let status = session
            .response_written()
            .map(|h| h.status.as_u16())
            .unwrap_or(ctx.status);
        let req = session.req_header();
        let path = log_path(req);
        self.state.access_log.log(Entry {
            ts_ms: ctx.ts_ms,
            method: req.method.as_str().to_string(),
            path,
            status,
            decision: outcome.as_str(),
            reason: ctx.reason,
            key_id: ctx.key_id.take().map(scopegate_keystore::secret::format_id),
            org: ctx.org.take().map(|o| o.to_string()),
            upstream: ctx.group.as_ref().map(|g| g.name.clone()),
            bytes_in: ctx.bytes_in.max(session.body_bytes_read()),
            bytes_out: session.body_bytes_sent(),
            latency_us: ctx.start.elapsed().as_micros() as u64,
        });
    }

    /// Error logs name the method and canonical path only: never the query
    /// string, which may carry a key when query keys are configured.
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        format!(
            "{} {}",
            session.req_header().method,
            log_path(session.req_header())
        )
    }
}

/// The path as logs show it: canonical when it decodes (the raw path, cut to
/// 256 characters, when it does not), no query string, keys masked. Built
/// only when a line is written, never on the request path.
pub fn log_path(req: &RequestHeader) -> String {
    let raw = req.uri.path();
    match crate::request::canon::canonicalize(raw) {
        Ok(c) => mask_keys(&crate::request::canon::encode(c.segments.iter().map(|s| s.as_ref()))),
        Err(_) => mask_keys(&raw.chars().take(256).collect::<String>()),
    }
}
