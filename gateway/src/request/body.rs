//! Reading a send body to inspect: bounded by size and time, with the
//! `100-continue` answered and Pingora's retry buffer on, so the very bytes
//! checked are the bytes forwarded.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::ops::metrics::Outcome;
use crate::request::ctx::Ctx;
use crate::request::decide::Verdict;
use crate::request::head::content_length;
use crate::request::respond::Reply;

/// Reads a body to inspect, bounded by size and time. `Ok(Err(verdict))`
/// is a refusal (413, 408).
pub async fn read_body(
    session: &mut Session,
    ctx: &mut Ctx,
    limit: u64,
    timeout: Duration,
) -> Result<std::result::Result<Bytes, Verdict>> {
    if content_length(session.req_header()).is_some_and(|n| n > limit) {
        return Ok(Err(Verdict::Refuse(
            Reply::TooLarge,
            Outcome::TooLarge,
            Some("content_length"),
        )));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await?;
    }
    session.enable_retry_buffering();
    let mut buf = BytesMut::with_capacity(
        content_length(session.req_header())
            .map(|n| n as usize)
            .unwrap_or(16 * 1024)
            .min(limit as usize),
    );
    let read = async {
        while let Some(chunk) = session.read_request_body().await? {
            if buf.len() + chunk.len() > limit as usize {
                return Ok::<_, Box<Error>>(false);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(true)
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => {
            ctx.bytes_in = buf.len();
            Ok(Err(Verdict::Refuse(
                Reply::BodyTimeout,
                Outcome::BodyTimeout,
                Some("body_timeout"),
            )))
        }
        // A malformed chunked body (bad chunk size, bad chunk end, bad
        // trailer) is the client's framing error: 400, and the connection
        // closes because its position in the stream is unknown.
        Ok(Err(e)) if is_framing_error(&e) => {
            ctx.bytes_in = buf.len();
            session.set_keepalive(None);
            Ok(Err(Verdict::Refuse(
                Reply::BadRequest("bad_framing", "malformed chunked request body".into()),
                Outcome::BadRequest,
                Some("bad_chunk"),
            )))
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(false)) => {
            ctx.bytes_in = buf.len();
            Ok(Err(Verdict::Refuse(
                Reply::TooLarge,
                Outcome::TooLarge,
                Some("body_stream"),
            )))
        }
        Ok(Ok(true)) => {
            ctx.bytes_in = buf.len();
            Ok(Ok(buf.freeze()))
        }
    }
}

/// Whether a body read failed on the body's own framing (Pingora's chunked
/// decoder errors), not on the connection.
fn is_framing_error(e: &Error) -> bool {
    matches!(
        e.etype().as_str(),
        "InvalidChunk" | "InvalidTrailerEnd" | "PrematureBodyEnd"
    ) || matches!(e.etype(), ErrorType::InvalidHTTPHeader)
}

/// Whether the request body is sent chunked (HTTP/1.1).
pub fn is_chunked(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::TRANSFER_ENCODING)
        .is_some()
}
