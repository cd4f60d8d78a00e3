//! What the gateway reads from a request head besides the path and the
//! key: the declared body length, and the path as logs show it.

use pingora::http::RequestHeader;

use crate::ops::accesslog::mask_keys;
use crate::request::canon;

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

/// The path as logs show it: canonical when it decodes (the raw path, cut to
/// 256 characters, when it does not), no query string, keys masked. Built
/// only when a line is written, never on the request path.
pub fn log_path(req: &RequestHeader) -> String {
    log_path_of(req.uri.path())
}

/// [`log_path`] of a raw path.
pub fn log_path_of(raw: &str) -> String {
    match canon::canonicalize(raw) {
        Ok(c) => mask_keys(&canon::encode(c.segments.iter().map(|s| s.as_ref()))),
        Err(_) => mask_keys(&raw.chars().take(256).collect::<String>()),
    }
}
