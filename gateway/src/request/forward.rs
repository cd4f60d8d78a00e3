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

use crate::ops::metrics::Outcome;
use crate::request::ctx::Ctx;
use crate::request::respond::{write_reply_as, Reply};
use crate::request::routing::{Group, Routing};
use crate::request::state::State;

/// Bodies up to this size are replayed upstream by Pingora's retry buffer;
/// larger ones take the gateway's own forwarding path (the buffer is
/// hard-limited to 64 KiB in Pingora 0.9 and silently drops the body beyond).
pub const REPLAY_LIMIT: usize = 64 * 1024;

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
///
/// The header is rebuilt from its parts without Pingora's header-case map:
/// every change is then one `HeaderMap` operation with a pre-parsed name,
/// where the case-keeping API parses, copies and hashes each name twice
/// (measured: the rewrite was half of enforcement's cost per request, see
/// `benches/request_path.rs`). Header names are case-insensitive; on the
/// wire to the upstream, standard ones are title-cased and others lowercase.
pub fn rewrite_request(req: &mut RequestHeader, ctx: &Ctx, routing: &Routing) -> Result<()> {
    let identity = match &ctx.identity {
        None => None,
        Some(Ok(values)) => Some(values),
        Some(Err(_)) => {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "an identity value is not a valid header value",
            ))
        }
    };
    let uri = match &ctx.upstream_uri {
        None => None,
        Some(uri) => Some(uri.parse::<http::Uri>().map_err(|_| {
            Error::explain(ErrorType::InternalError, "canonical path is not a URI")
        })?),
    };
    let end_stream = req.send_end_stream();
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, empty).into();
    if let Some(uri) = uri {
        parts.uri = uri;
    }
    let headers = &mut parts.headers;
    let prefix = routing.identity.prefix_lower.as_str();
    if headers.keys().any(|n| n.as_str().starts_with(prefix)) {
        let spoofed: Vec<http::HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with(prefix))
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(&name);
        }
    }
    if !routing.config.keys.forward_key_header {
        for name in routing.key_headers.names() {
            headers.remove(name);
        }
    }
    // The gateway answered any 100-continue itself.
    headers.remove(http::header::EXPECT);
    if let Some(values) = identity {
        headers.reserve(values.len());
        for (name, value) in routing.identity.header_names.iter().zip(values) {
            headers.insert(name.clone(), value.clone());
        }
    }
    *req = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
    Ok(())
}

/// The reply and metric kind for an upstream failure.
pub fn upstream_failure(e: &Error) -> (Reply, &'static str) {
    crate::request::upstream::Failure::of(e.etype()).kind()
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
    // An HTTP/2 client's request goes up as HTTP/1.1 (as Pingora's own path
    // does it): version 1.1, and its `:authority` as the Host header.
    let authority = req.uri.authority().map(|a| a.as_str().to_owned());
    req.set_version(http::Version::HTTP_11);
    rewrite_request(&mut req, ctx, &routing)?;
    if let (None, Some(a)) = (req.headers.get(http::header::HOST), authority) {
        req.insert_header(http::header::HOST, a)?;
    }
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
            state.metrics.upstream_error(&group.name, kind);
            log::warn!(
                "upstream {} failed for {}: {e}",
                group.name,
                crate::request::head::log_path(session.req_header())
            );
            ctx.outcome = Some(Outcome::UpstreamError);
            let format = ctx.response_format();
            ctx.status = reply.render(format).0;
            write_reply_as(session, &reply, format).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn routing() -> Routing {
        Routing::build(
            scopegate_config::Config::default(),
            &crate::ops::metrics::Metrics::new(),
        )
        .unwrap()
    }

    fn wire(req: &RequestHeader) -> String {
        let mut buf = bytes::BytesMut::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    fn downstream() -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/domains/Example.com./dns", None).unwrap();
        for (k, v) in [
            ("Host", "api.example"),
            ("Authorization", "Bearer sg_secret"),
            ("X-Api-Key", "sg_secret"),
            ("X-Scopegate-Org", "forged"),
            ("x-scopegate-injected", "1"),
            ("Expect", "100-continue"),
            ("X-Request-Id", "r-1"),
            ("Content-Length", "2"),
        ] {
            req.append_header(k, v).unwrap();
        }
        req
    }

    fn identity() -> [HeaderValue; crate::request::routing::IDENTITY_HEADERS] {
        [
            "key_00000000000000ff",
            "acme",
            "dev@acme.example",
            "member",
            "example.com=read_write",
            "42",
            "",
        ]
        .map(HeaderValue::from_static)
    }

    #[test]
    fn the_upstream_gets_the_checked_path_and_only_the_gateways_identity() {
        let routing = routing();
        let mut ctx = Ctx::new();
        ctx.identity = Some(Ok(identity()));
        ctx.upstream_uri = Some("/domains/example.com/dns".into());
        let mut req = downstream();
        rewrite_request(&mut req, &ctx, &routing).unwrap();
        assert_eq!(req.uri.path(), "/domains/example.com/dns");
        assert_eq!(req.method, http::Method::POST);
        let h = &req.headers;
        for gone in [
            "authorization",
            "x-api-key",
            "x-scopegate-injected",
            "expect",
        ] {
            assert!(h.get(gone).is_none(), "{gone} reached the upstream");
        }
        assert_eq!(h.get_all("x-scopegate-org").iter().count(), 1);
        for (name, value) in routing.identity.header_names.iter().zip(identity()) {
            assert_eq!(h.get(name), Some(&value), "{name}");
        }
        assert_eq!(h.get("x-request-id").unwrap(), "r-1");
        assert_eq!(h.get("host").unwrap(), "api.example");
        assert_eq!(h.get("content-length").unwrap(), "2");
        // What is written to the upstream: every header once, the key nowhere.
        let wire = wire(&req);
        assert!(!wire.contains("sg_secret"), "{wire}");
        assert!(!wire.contains("forged"), "{wire}");
        assert_eq!(wire.matches("x-scopegate-").count(), 7, "{wire}");
        assert!(wire.contains("Host: api.example\r\n"), "{wire}");
    }

    #[test]
    fn an_unchanged_path_keeps_its_query_and_a_bad_identity_fails_the_request() {
        let routing = routing();
        let mut ctx = Ctx::new();
        let mut req = RequestHeader::build("GET", b"/domains/example.com?page=2", None).unwrap();
        rewrite_request(&mut req, &ctx, &routing).unwrap();
        assert_eq!(req.uri.to_string(), "/domains/example.com?page=2");

        ctx.identity = Some(HeaderValue::from_bytes(b"bad\nvalue").map(|_| identity()));
        let mut req = downstream();
        assert!(rewrite_request(&mut req, &ctx, &routing).is_err());
    }

    #[test]
    fn the_key_header_is_forwarded_only_when_configured() {
        let mut config = scopegate_config::Config::default();
        config.keys.forward_key_header = true;
        let routing = Routing::build(config, &crate::ops::metrics::Metrics::new()).unwrap();
        let mut ctx = Ctx::new();
        ctx.identity = Some(Ok(identity()));
        let mut req = downstream();
        rewrite_request(&mut req, &ctx, &routing).unwrap();
        assert_eq!(
            req.headers.get("authorization").unwrap(),
            "Bearer sg_secret"
        );
        assert!(req.headers.get("x-scopegate-injected").is_none());
    }
}
