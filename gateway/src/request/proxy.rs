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

use crate::ops::accesslog::Entry;
use crate::ops::metrics::Outcome;
use crate::request::body::{is_chunked, read_body};
use crate::request::ctx::Ctx;
use crate::request::decide::{check_senders, decide_head, Head, Verdict};
use crate::request::forward::{forward_buffered, REPLAY_LIMIT};
use crate::request::head::{log_path, log_path_of};
use crate::request::respond::{write_reply_as, Reply};
use crate::request::routing::Routing;
use crate::request::state::State;

/// The refusal of an instance that cannot confirm its snapshot is current.
pub const STALE: (Reply, Outcome, Option<&str>) = (
    Reply::StoreUnavailable,
    Outcome::StoreUnavailable,
    Some("stale_snapshot"),
);

/// What every request ends with, on Pingora's path and on the fast path:
/// the in-flight gauge, the route's count of its outcome, and the access
/// log line (the path canonical with keys masked, never the query).
pub(crate) fn record(
    state: &State,
    ctx: &mut Ctx,
    method: &http::Method,
    path: &str,
    status: u16,
    bytes_in: usize,
    bytes_out: usize,
) {
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
        path: log_path_of(path),
        status,
        decision: outcome.as_str(),
        reason: ctx.reason,
        key_id: ctx.key_id.take().map(scopegate_keystore::secret::format_id),
        org: ctx.org.take().map(|o| o.to_string()),
        upstream: ctx.group.as_ref().map(|g| g.name.clone()),
        bytes_in,
        bytes_out,
        latency_us: ctx.start.elapsed().as_micros() as u64,
        would_refuse: ctx.would_refuse,
    });
}

/// The proxy service.
pub struct Proxy {
    /// Shared gateway state.
    pub state: Arc<State>,
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
        let format = ctx.response_format();
        ctx.status = reply.render(format).0;
        write_reply_as(session, &reply, format).await?;
        Ok(true)
    }

    /// Decides one request: [`decide_head`], then for a send the body read
    /// ([`read_body`]) and checked against the snapshot current after it
    /// arrived ([`check_senders`]); a checked body past Pingora's replay buffer
    /// is forwarded here. See [`crate::request::decide`] for the order.
    async fn decide(
        &self,
        routing: &Routing,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Verdict> {
        let state = &*self.state;
        let (key, spec, limit) = match decide_head(
            &state.keystore,
            &state.guard,
            &state.metrics,
            routing,
            session.req_header(),
            ctx,
        ) {
            Head::Refuse(r, o, why) => return Ok(Verdict::Refuse(r, o, why)),
            // A chunked body is read whole (within the route's limit) before
            // anything is forwarded: a malformed chunk is refused with 400,
            // never half-sent to the upstream.
            Head::Forward if is_chunked(session) => {
                let limit = match ctx.body_limit {
                    0 => routing.config.limits.max_body_bytes,
                    n => n,
                };
                let timeout = routing.config.limits.body_read_timeout;
                let body = match read_body(session, ctx, limit, timeout).await? {
                    Ok(b) => b,
                    Err(v) => return Ok(v),
                };
                if body.len() <= REPLAY_LIMIT {
                    return Ok(Verdict::Forward);
                }
                forward_buffered(state, session, ctx, body).await?;
                return Ok(Verdict::Answered);
            }
            Head::Forward => return Ok(Verdict::Forward),
            Head::NeedBody { key, spec, limit } => (key, spec, limit),
        };
        let timeout = routing.config.limits.body_read_timeout;
        let body = match read_body(session, ctx, limit, timeout).await? {
            Ok(b) => b,
            Err(v) => return Ok(v),
        };
        // The senders are checked against the snapshot current now; a slow
        // body may have outlasted its freshness.
        if state.stale(routing.config.fleet.max_staleness) {
            let (reply, outcome, why) = STALE;
            return Ok(Verdict::Refuse(reply, outcome, why));
        }
        if let Err(v) = check_senders(&state.keystore, &state.metrics, ctx, &key, &body, &spec) {
            return Ok(v);
        }
        if body.len() <= REPLAY_LIMIT {
            return Ok(Verdict::Forward);
        }
        forward_buffered(state, session, ctx, body).await?;
        Ok(Verdict::Answered)
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
        ctx.client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        self.state.metrics.in_flight.inc();
        ctx.counted = true;
        let routing = self.state.routing.load_full();
        ctx.routing = Some(Arc::clone(&routing));
        if let Some(group) = &self.state.passthrough {
            ctx.group = routing.groups.get(group).cloned();
            ctx.outcome = Some(Outcome::Admitted);
            return Ok(false);
        }
        // Fail closed before anything else: a snapshot this instance cannot
        // confirm may be missing a revocation.
        if self.state.stale(routing.config.fleet.max_staleness) {
            let (reply, outcome, why) = STALE;
            return self.refuse(session, ctx, reply, outcome, why).await;
        }
        match self.decide(&routing, session, ctx).await? {
            Verdict::Forward => Ok(false),
            Verdict::Answered => Ok(true),
            Verdict::Refuse(reply, outcome, reason) => {
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
            self.state.metrics.upstream_error(&group.name, kind);
        }
        let reply = if ctx.outcome == Some(Outcome::TooLarge) {
            Some(Reply::TooLarge)
        } else {
            failure.map(|(r, _)| r)
        };
        let code = match reply {
            Some(r) if session.response_written().is_none() => {
                let format = ctx.response_format();
                ctx.status = r.render(format).0;
                let _ = write_reply_as(session, &r, format).await;
                ctx.status
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
        let status = session
            .response_written()
            .map(|h| h.status.as_u16())
            .unwrap_or(ctx.status);
        let req = session.req_header();
        let bytes_in = ctx.bytes_in.max(session.body_bytes_read());
        record(
            &self.state,
            ctx,
            &req.method,
            req.uri.path(),
            status,
            bytes_in,
            session.body_bytes_sent(),
        );
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
