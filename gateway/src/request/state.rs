//! What every part of a running gateway shares: the proxy decides against
//! it, the admin API changes it, the server builds it.
//!
//! It lives with the request path because the proxy is its main reader;
//! everything above (admin, server, tools) reaches it here.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use scopegate_config::{AdminToken, Overrides};
use scopegate_keystore::KeyStore;

use crate::ops::accesslog::AccessLog;
use crate::ops::metrics::Metrics;
use crate::request::routing::Routing;

/// What every part of a running gateway shares.
pub struct State {
    /// The access data: the snapshot readers check against, and the writer.
    pub keystore: Arc<KeyStore>,
    /// Routes, key sources, limits and upstreams; replaced whole on reload.
    pub routing: ArcSwap<Routing>,
    /// The Prometheus registry and the gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// The access log queue.
    pub access_log: AccessLog,
    /// Upstream connections for the large-body forwarding path, pooled.
    pub connector: pingora::connectors::http::Connector,
    /// Admin API tokens; empty = `/v1` refused.
    pub admin_tokens: Vec<AdminToken>,
    /// Where the config came from, for reloads (`None` = flags only).
    pub config_path: Option<std::path::PathBuf>,
    /// The command-line overrides, re-applied on every reload.
    pub overrides: Overrides,
    /// Set once the listeners are bound; `/readyz` needs it.
    pub listening: AtomicBool,
    /// Benchmarks only: the upstream group everything is forwarded to
    /// unchecked (see `scopegate serve --bench-passthrough`).
    pub passthrough: Option<String>,
}
