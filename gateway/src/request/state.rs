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
    /// Rate-limit buckets and brute-force strikes of this instance; kept
    /// across config reloads.
    pub guard: crate::request::guard::Guard,
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
    /// The thread that keeps `keystore` up to date with changes other
    /// instances commit (and so confirms its freshness); stopped with the
    /// state. `None` only where nothing else writes (offline tools).
    pub follower: Option<scopegate_keystore::Follower>,
    /// The TLS certificate the proxy presents, when `[tls]` is on; replaced
    /// on reload while connections stay open.
    pub tls: Option<Arc<crate::request::tls::CertStore>>,
}

impl State {
    /// Whether this instance must fail closed: it has not confirmed its
    /// snapshot against the store for longer than `max_staleness`. One atomic
    /// load and a clock read. Without a follower nothing confirms freshness,
    /// and nothing else can change the store either: never stale.
    #[inline]
    pub fn stale(&self, max_staleness: std::time::Duration) -> bool {
        self.follower.is_some() && self.keystore.staleness() > max_staleness
    }
}
