//! The per-request state the phases share: created when a request arrives,
//! filled in by the decision and forwarding, read by the access log.
//!
//! It sits below every phase that uses it ([`crate::request::decide`],
//! [`crate::request::forward`], [`crate::request::proxy`]) and uses none of
//! them.

use std::sync::Arc;
use std::time::Instant;

use scopegate_config::ResponseFormat;

use crate::ops::metrics::Outcome;
use crate::request::routing::{Group, Routing};

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
    pub identity: Option<
        std::result::Result<
            [http::HeaderValue; crate::request::routing::IDENTITY_HEADERS],
            http::header::InvalidHeaderValue,
        >,
    >,
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
    /// The client's address (brute-force limits are per address).
    pub client: Option<std::net::IpAddr>,
    /// Why the key's shadow scope would have refused this admitted request.
    pub would_refuse: Option<&'static str>,
}

impl Ctx {
    /// The format of the gateway's own answers for this request (the
    /// default until the routing version is known).
    pub fn response_format(&self) -> ResponseFormat {
        self.routing
            .as_ref()
            .map_or_else(ResponseFormat::default, |r| r.config.response_format)
    }
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
            client: None,
            would_refuse: None,
        }
    }
}
