//! Getting an admitted request to the upstream: the peer, the rewritten
//! header, and the gateway's own forwarding path for inspected bodies larger
//! than Pingora's 64 KiB replay buffer.

use std::time::Instant;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::proxy::Session;
use pingora::ErrorType;

use crate::metrics::Outcome;
use crate::proxy::{write_reply, Ctx};
use crate::respond::Reply;
use crate::routing::{Group, Routing};
use crate::State;

/// A peer for the next healthy backend of a group, round robin, with the
/// group's timeouts.
pub fn peer_for(group: &Group) -> Result<Box<HttpPeer>> {
    let backend = group.lb.select(b"", 256).ok_or_else(|| {
        Error::explain(
            ErrorType::ConnectNoRoute,
            format!("no healthy backend in upstream group {}", group.name),
        )
    })?;
    let SocketAddr::Inet(addr) = backend.addr else {
        return Err(Error::explain(
            ErrorType::ConnectNoRoute,
            "unix socket backends are not supported",
        ));
    };
    let mut peer = HttpPeer::new(addr, false, String::new());
    let s = &group.settings;
    peer.options.connection_timeout = Some(s.connect_timeout);
    peer.options.read_timeout = Some(s.read_timeout);
    peer.options.write_timeout = Some(s.write_timeout);
    peer.options.idle_timeout = Some(s.idle_timeout);
    Ok(Box::new(peer))
}

/// The request header as the upstream receives it: the canonical path that
/// was checked, every incoming header with the identity prefix removed and
/// the gateway's own added, the key header dropped unless configured.
pub fn rewrite_request(req: &mut RequestHeader, ctx: &Ctx, routing: &Routing) -> Result<()> {
    let config = &routing.config;
    if let Some(uri) = &ctx.upstream_uri {
        let uri: http::Uri = uri
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "canonical path is not a URI"))?;
        req.set_uri(uri);
    }
    let prefix = routing.identity.prefix_lower.as_str();
    if req.headers.keys().any(|n| n.as_str().starts_with(prefix)) {
        let spoofed: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|n| n.as_str().starts_with(prefix))
            .cloned()
            .collect();
        for name in spoofed {
            req.remove_header(&name);
        }
    }
    if !config.keys.forward_key_header {
        for h in &config.keys.headers {
            req.remove_header(h.name.as_str());
        }
    }
    // The gateway answered any 100-continue itself.
    req.remove_header(&http::header::EXPECT);
    for (name, value) in &ctx.identity {
        req.insert_header(name.clone(), value.as_str())?;
    }
    Ok(())
}

/// The reply and metric kind for an upstream failure.
pub fn upstream_failure(e: &Error) -> (Reply, &'static str) {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            (Reply::GatewayTimeout, "timeout")
        }
        ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => {
            (Reply::BadGateway, "connect")
        }
        _ => (Reply::BadGateway, "other"),
    }
}

/// Forwards an inspected body too large for Pingora's replay buffer over a
/// pooled upstream connection of its own, and streams the response back.
/// Never retried: the body may have reached the upstream.
pub async fn forward_buffered(
    state: &State,
    session: &mut Session,
    ctx: &mut Ctx,
    body: Bytes,
) -> Result<()> {
    let group = ctx
        .group
        .clone()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream group decided"))?;
    let routing = ctx
        .routing
        .clone()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no routing"))?;
    let mut req = session.req_header().clone();
    rewrite_request(&mut req, ctx, &routing)?;
    // The body is whole: send it with its length, whatever framing it came in.
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;

    let sent = Instant::now();
    ctx.upstream_sent = Some(sent);
    let attempt = async {
        let peer = peer_for(&group)?;
        let (mut up, _reused) = state.connector.get_http_session(&*peer).await?;
        up.write_request_header(Box::new(req)).await?;
        up.write_request_body(body, true).await?;
        up.finish_request_body().await?;
        up.read_response_header().await?;
        Ok::<_, Box<Error>>((peer, up))
    };
    let (peer, mut up) = match attempt.await {
        Ok(ok) => ok,
        Err(e) => {
            let (reply, kind) = upstream_failure(&e);
            state
                .metrics
                .upstream_errors
                .with_label_values(&[group.name.as_str(), kind])
                .inc();
            log::warn!(
                "upstream {} failed for {}: {e}",
                group.name,
                crate::proxy::log_path(session.req_header())
            );
            ctx.outcome = Some(Outcome::UpstreamError);
            ctx.status = reply.status();
            write_reply(session, &reply).await?;
            return Ok(());
        }
    };
    group.latency.observe(sent.elapsed().as_secs_f64());
    let resp = up
        .response_header()
        .cloned()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no response header"))?;
    ctx.status = resp.status.as_u16();
    session.write_response_header(Box::new(resp), false).await?;
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => session.write_response_body(Some(chunk), false).await?,
            Ok(None) => break,
            Err(e) => {
                // Headers are out: all that is left is to cut the response short.
                session.set_keepalive(None);
                return Err(e);
            }
        }
    }
    session.write_response_body(None, true).await?;
    if up.response_done() {
        state
            .connector
            .release_http_session(up, &*peer, Some(group.settings.idle_timeout))
            .await;
    }
    Ok(())
}
