//! Every status code and JSON error body the gateway writes itself, in one
//! place, so identical situations get byte-identical answers.
//!
//! Bodies are `{"error":{"code":"…","message":"…"}}`. They never contain a
//! key, a digest, or anything that tells a caller whether a domain it cannot
//! see exists.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use scopegate_config::ResponseFormat;

/// A response the gateway answers on its own, without the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 401: no key was presented.
    MissingKey,
    /// 401: malformed, unknown, revoked or expired key, or creator deactivated:
    /// one answer for all of them.
    InvalidKey,
    /// 404: unknown route, or a domain that does not exist or that this key
    /// cannot see: one answer for all of them.
    NotFound,
    /// 403: the key sees the domain but may only read it.
    ReadOnly,
    /// 403: organisation-level endpoint and the key is not org-wide.
    OrgWideRequired,
    /// 403: a server-level endpoint and the key is bound to no server (an
    /// account token where a server token is needed).
    ServerKeyRequired,
    /// 403: the key is bound to a server it (or its creator) has no access
    /// to now: the server was deleted, or the creator unassigned from it.
    ServerNotVisible,
    /// 403: the key may only read its server.
    ServerReadOnly,
    /// 422: a message's From domain is not writable by this key (identical
    /// whether the domain exists or not); the text names only the message index.
    SenderNotAllowed(String),
    /// 422: a message's From is missing or not one mailbox.
    InvalidSender(String),
    /// 400: the request is malformed (two keys, undecodable path, bad JSON…).
    BadRequest(&'static str, String),
    /// 413: the body is over the route's limit.
    TooLarge,
    /// 408: the body did not arrive within the body read timeout.
    BodyTimeout,
    /// 502: no healthy backend, or the upstream failed or closed.
    BadGateway,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// 503: the gateway is not able to decide (e.g. reload in progress failed).
    Unavailable,
    /// 429: the key is over its rate limit; retry after this many seconds.
    RateLimited(u64),
    /// 429: this address made too many failed key attempts and is blocked
    /// for this many more seconds.
    TooManyAttempts(u64),
    /// 431: the request head is over `connections.max_header_bytes` or
    /// `connections.max_headers`.
    HeaderTooLarge,
    /// 503: `connections.max_connections` are open and no slot freed in time.
    OverCapacity,
    /// 503: this instance cannot confirm its access data is current (it has
    /// not reached its store for longer than `fleet.max_staleness_ms`), so it
    /// fails closed rather than trust a snapshot that may miss a revocation.
    StoreUnavailable,
}

impl Reply {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Reply::MissingKey | Reply::InvalidKey => 401,
            Reply::NotFound => 404,
            Reply::ReadOnly
            | Reply::OrgWideRequired
            | Reply::ServerKeyRequired
            | Reply::ServerNotVisible
            | Reply::ServerReadOnly => 403,
            Reply::SenderNotAllowed(_) | Reply::InvalidSender(_) => 422,
            Reply::BadRequest(..) => 400,
            Reply::TooLarge => 413,
            Reply::BodyTimeout => 408,
            Reply::BadGateway => 502,
            Reply::GatewayTimeout => 504,
            Reply::RateLimited(_) | Reply::TooManyAttempts(_) => 429,
            Reply::HeaderTooLarge => 431,
            Reply::Unavailable | Reply::StoreUnavailable | Reply::OverCapacity => 503,
        }
    }

    /// The machine-readable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            Reply::MissingKey => "missing_api_key",
            Reply::InvalidKey => "invalid_api_key",
            Reply::NotFound => "not_found",
            Reply::ReadOnly | Reply::ServerReadOnly => "read_only",
            Reply::OrgWideRequired => "org_wide_key_required",
            Reply::ServerKeyRequired => "server_key_required",
            Reply::ServerNotVisible => "server_not_visible",
            Reply::SenderNotAllowed(_) => "sender_not_allowed",
            Reply::InvalidSender(_) => "invalid_sender",
            Reply::BadRequest(code, _) => code,
            Reply::TooLarge => "payload_too_large",
            Reply::BodyTimeout => "body_timeout",
            Reply::BadGateway => "bad_gateway",
            Reply::GatewayTimeout => "gateway_timeout",
            Reply::Unavailable => "unavailable",
            Reply::StoreUnavailable => "store_unavailable",
            Reply::RateLimited(_) => "rate_limited",
            Reply::TooManyAttempts(_) => "too_many_attempts",
            Reply::HeaderTooLarge => "request_header_too_large",
            Reply::OverCapacity => "over_capacity",
        }
    }

    fn message(&self) -> &str {
        match self {
            Reply::MissingKey => "an API key is required",
            Reply::InvalidKey => "the API key is not valid",
            Reply::NotFound => "not found",
            Reply::ReadOnly => "this key has read-only access to this domain",
            Reply::OrgWideRequired => "this endpoint needs an organisation-wide key",
            Reply::ServerKeyRequired => {
                "this endpoint needs a key bound to a server (a server token)"
            }
            Reply::ServerNotVisible => "this key's server is not available to it",
            Reply::ServerReadOnly => "this key has read-only access to its server",
            Reply::SenderNotAllowed(m) | Reply::InvalidSender(m) | Reply::BadRequest(_, m) => m,
            Reply::TooLarge => "the request body is too large",
            Reply::BodyTimeout => "the request body did not arrive in time",
            Reply::BadGateway => "the upstream service is unavailable",
            Reply::GatewayTimeout => "the upstream service did not answer in time",
            Reply::Unavailable => "the gateway cannot decide right now",
            Reply::HeaderTooLarge => "the request header is too large or has too many fields",
            Reply::OverCapacity => "the gateway has too many open connections; try again shortly",
            Reply::StoreUnavailable => {
                "the gateway cannot confirm its access data is current; try again shortly"
            }
            Reply::RateLimited(_) => {
                "this key is over its rate limit; retry after Retry-After seconds"
            }
            Reply::TooManyAttempts(_) => {
                "too many failed key attempts from this address; retry after Retry-After seconds"
            }
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        error_body(self.code(), self.message())
    }

    /// The status and body in `format`. Every byte-identical rule holds in
    /// both: the body depends on the reply alone, never on why it was chosen.
    pub fn render(&self, format: ResponseFormat) -> (u16, Bytes) {
        match format {
            ResponseFormat::Json => (self.status(), self.body()),
            ResponseFormat::Postmark => {
                let (status, code, message) = self.postmark();
                (status, postmark_body(code, message))
            }
        }
    }

    /// Postmark's status, `ErrorCode` and message for this reply: 401/10 for
    /// a missing or invalid token, 422/400 for a From the key may not send
    /// as, 422/300 for a missing or unparseable From, 422/402 for invalid
    /// JSON, 429/429 for rate limits. A token of the wrong kind (an account
    /// token on a server endpoint, a server token on an account endpoint) or
    /// one whose server is gone is a 403 here with `ErrorCode` 10, the code
    /// Postmark gives such tokens. Refusals Postmark has no code for keep
    /// their status, with `ErrorCode` 0 (its clients then type the error by
    /// status: 403, 404, 503, …).
    fn postmark(&self) -> (u16, u32, &str) {
        match self {
            Reply::MissingKey => (
                401,
                10,
                "No Account or Server API tokens were supplied in the HTTP headers. Please add a header for either X-Postmark-Server-Token or X-Postmark-Account-Token.",
            ),
            Reply::InvalidKey => (401, 10, "The API token you provided is not valid."),
            Reply::SenderNotAllowed(m) => (422, 400, m),
            Reply::InvalidSender(m) => (422, 300, m),
            Reply::BadRequest("invalid_json", m) => (422, 402, m),
            Reply::OrgWideRequired => (
                403,
                10,
                "This endpoint needs an account token (an organisation-wide key).",
            ),
            Reply::ServerKeyRequired => (
                403,
                10,
                "This endpoint needs a server token (a key bound to a server).",
            ),
            Reply::ServerNotVisible => (
                403,
                10,
                "This server token's server is not available to it.",
            ),
            Reply::RateLimited(_) | Reply::TooManyAttempts(_) => {
                (429, 429, self.message())
            }
            other => (other.status(), 0, other.message()),
        }
    }

    /// Extra headers beyond Content-Type and Content-Length.
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Reply::MissingKey | Reply::InvalidKey => {
                &[("WWW-Authenticate", "Bearer realm=\"scopegate\"")]
            }
            Reply::StoreUnavailable | Reply::OverCapacity => &[("Retry-After", "1")],
            _ => &[],
        }
    }
}

/// `{"error":{"code":…,"message":…}}`, shared with the admin API.
pub fn error_json(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message}})
}

/// [`error_json`] as response bytes.
pub fn error_body(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(&error_json(code, message)).expect("JSON of strings serialises"))
}

/// A reply as HTTP/1.1 bytes with `Connection: close`, for the connection
/// layer, which answers before Pingora has a session (malformed heads, over
/// limits, over capacity) and then closes the connection.
pub fn closing_bytes(reply: &Reply, format: ResponseFormat) -> Vec<u8> {
    reply_wire(reply, format, false)
        .expect("a reply's own header names and values are valid")
        .to_vec()
}

/// `{"ErrorCode":n,"Message":"…"}`.
pub fn postmark_body(code: u32, message: &str) -> Bytes {
    let v = serde_json::json!({"ErrorCode": code, "Message": message});
    Bytes::from(serde_json::to_vec(&v).expect("JSON of a number and a string serialises"))
}

/// Writes a reply in the default format (before a route's configuration is
/// known); see [`write_reply_as`].
pub async fn write_reply(session: &mut Session, reply: &Reply) -> pingora::Result<()> {
    write_reply_as(session, reply, ResponseFormat::Json).await
}

/// The response header and body of a reply in `format`, as both request
/// paths write it (Pingora's session adds `Date` and `Connection`; the fast
/// path adds them the same way, see [`reply_wire`]).
pub fn reply_header(
    reply: &Reply,
    format: ResponseFormat,
) -> pingora::Result<(ResponseHeader, Bytes)> {
    let (status, body) = reply.render(format);
    let mut h = ResponseHeader::build(status, Some(4))?;
    h.insert_header("Content-Type", "application/json")?;
    h.insert_header("Content-Length", body.len().to_string())?;
    h.insert_header("Cache-Control", "no-store")?;
    for (k, v) in reply.extra_headers() {
        h.insert_header(*k, *v)?;
    }
    if let Reply::RateLimited(s) | Reply::TooManyAttempts(s) = reply {
        h.insert_header("Retry-After", s.to_string())?;
    }
    Ok((h, body))
}

/// A reply as the HTTP/1.1 bytes Pingora's session writes for
/// [`write_reply_as`] after a bodiless request: the same header with
/// `Date` and `Connection` (`keep-alive` or `close`) added, then the body.
pub fn reply_wire(
    reply: &Reply,
    format: ResponseFormat,
    keep_alive: bool,
) -> pingora::Result<bytes::BytesMut> {
    let (mut h, body) = reply_header(reply, format)?;
    let mut out = bytes::BytesMut::with_capacity(256 + body.len());
    pingora_head_wire(&mut h, keep_alive, &mut out)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Serialises a response head the way Pingora's HTTP/1.1 server session
/// does: `Date` and `Connection` set, status line, headers, blank line.
pub fn pingora_head_wire(
    h: &mut ResponseHeader,
    keep_alive: bool,
    out: &mut bytes::BytesMut,
) -> pingora::Result<()> {
    h.insert_header(
        http::header::DATE,
        pingora::protocols::http::date::get_cached_date(),
    )?;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    h.insert_header(http::header::CONNECTION, connection)?;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(h.status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    if let Some(reason) = h.get_reason_phrase() {
        out.extend_from_slice(reason.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    h.header_to_h1_wire(out);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Writes a reply the gateway decided on, in `format`, keeping the
/// connection alive when the request body is fully read.
pub async fn write_reply_as(
    session: &mut Session,
    reply: &Reply,
    format: ResponseFormat,
) -> pingora::Result<()> {
    let (h, body) = reply_header(reply, format)?;
    if !session.is_body_done() {
        // An unread body would be parsed as the next request: drain a small
        // one, close the connection after a large one.
        let small = crate::request::head::content_length(session.req_header())
            .is_some_and(|n| n <= 64 * 1024);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_one_fixed_body() {
        assert_eq!(
            Reply::NotFound.body(),
            Bytes::from_static(br#"{"error":{"code":"not_found","message":"not found"}}"#)
        );
    }

    #[test]
    fn every_status_is_what_the_design_says() {
        assert_eq!(Reply::MissingKey.status(), 401);
        assert_eq!(Reply::InvalidKey.status(), 401);
        assert_eq!(Reply::ReadOnly.status(), 403);
        assert_eq!(Reply::OrgWideRequired.status(), 403);
        assert_eq!(Reply::ServerKeyRequired.status(), 403);
        assert_eq!(Reply::ServerNotVisible.status(), 403);
        assert_eq!(Reply::ServerReadOnly.status(), 403);
        // Each 403 says which rule refused, in JSON.
        let codes = [
            Reply::ReadOnly.code(),
            Reply::OrgWideRequired.code(),
            Reply::ServerKeyRequired.code(),
            Reply::ServerNotVisible.code(),
        ];
        let distinct: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len());
        assert_eq!(Reply::ServerReadOnly.code(), "read_only");
        assert_eq!(Reply::SenderNotAllowed("m".into()).status(), 422);
        assert_eq!(Reply::BadRequest("x", "m".into()).status(), 400);
        assert_eq!(Reply::TooLarge.status(), 413);
        assert_eq!(Reply::BadGateway.status(), 502);
        assert_eq!(Reply::GatewayTimeout.status(), 504);
    }

    #[test]
    fn the_postmark_envelope_has_postmarks_codes_and_statuses() {
        let pm = |r: Reply| {
            let (status, body) = r.render(ResponseFormat::Postmark);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (
                status,
                v["ErrorCode"].as_u64().unwrap(),
                v["Message"].as_str().unwrap().to_string(),
            )
        };
        assert_eq!(pm(Reply::MissingKey).0, 401);
        assert_eq!(pm(Reply::MissingKey).1, 10);
        assert_eq!(pm(Reply::InvalidKey).1, 10);
        assert_eq!(
            pm(Reply::SenderNotAllowed("message 2".into())),
            (422, 400, "message 2".into())
        );
        assert_eq!(pm(Reply::InvalidSender("m".into())).1, 300);
        assert_eq!(
            pm(Reply::BadRequest("invalid_json", "m".into())),
            (422, 402, "m".into())
        );
        assert_eq!(
            pm(Reply::BadRequest("bad_path", "m".into())),
            (400, 0, "m".into())
        );
        assert_eq!(pm(Reply::NotFound), (404, 0, "not found".into()));
        assert_eq!(pm(Reply::RateLimited(3)).0, 429);
        assert_eq!(pm(Reply::RateLimited(3)).1, 429);
        assert_eq!(pm(Reply::TooManyAttempts(3)).1, 429);
        // Tokens of the wrong kind: Postmark's code 10, our 403.
        for r in [
            Reply::OrgWideRequired,
            Reply::ServerKeyRequired,
            Reply::ServerNotVisible,
        ] {
            assert_eq!(pm(r.clone()).0, 403, "{r:?}");
            assert_eq!(pm(r.clone()).1, 10, "{r:?}");
        }
        assert_eq!(pm(Reply::ReadOnly).1, 0);
        assert_eq!(pm(Reply::ServerReadOnly).1, 0);
        assert_eq!(pm(Reply::StoreUnavailable).0, 503);
        // One body for every 404, whatever the format.
        assert_eq!(
            Reply::NotFound.render(ResponseFormat::Postmark).1,
            Bytes::from_static(br#"{"ErrorCode":0,"Message":"not found"}"#)
        );
        assert_eq!(
            Reply::NotFound.render(ResponseFormat::Json).1,
            Reply::NotFound.body()
        );
    }

    #[test]
    fn messages_are_escaped_json() {
        let b = error_body("c", "a \"quoted\" \n line");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "a \"quoted\" \n line");
    }
}
