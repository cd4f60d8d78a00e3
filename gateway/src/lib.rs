//! scopegate's gateway: the Pingora proxy that enforces API keys in front of
//! the sending and domain APIs, its admin API and metrics, and the command
//! line. The decisions come from `scopegate-keystore`; the settings from
//! `scopegate-config`; this crate is the glue.
//!
//! # Layout
//! - [`server`]: [`server::run`] builds the Pingora server (proxy, admin,
//!   background health checks) from a config, a key store and a shutdown
//!   signal, so tests can start and stop it in-process.
//! - [`proxy`]: the `ProxyHttp` phases; [`decide`]: the decision for one
//!   request; [`forward`]: peers, the upstream request rewrite, and the
//!   large-body forwarding path.
//! - [`canon`]: the canonical path; [`keys`]: finding the key in a request;
//!   [`sender`]: From domains in send bodies; [`routing`]: routes and
//!   upstream groups per config version.
//! - [`respond`]: every status and JSON error body the gateway writes.
//! - [`admin`]: the admin API, `/metrics`, `/healthz`, `/readyz`;
//!   [`metrics`]: the Prometheus registry; [`accesslog`]: non-blocking
//!   request logs.
//! - [`cli`]: `scopegate serve | demo | check | admin | …`; [`mock`]: the
//!   bundled mock of the sending and domain APIs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod ops;
pub mod request;
pub mod server;
pub mod tools;

// The paths tests/ and benches/ were written against.
pub use ops::{accesslog, metrics};
pub use request::{canon, decide, forward, keys, proxy, respond, routing, sender};
pub use tools::{demo, loadtest, mock, offline};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use scopegate_config::{AdminToken, Overrides};
use scopegate_keystore::KeyStore;

pub use pingora;

/// What every part of a running gateway shares.
pub struct State {
    /// The access data: the snapshot readers check against, and the writer.
    pub keystore: Arc<KeyStore>,
    /// Routes, key sources, limits and upstreams; replaced whole on reload.
    pub routing: ArcSwap<routing::Routing>,
    /// The Prometheus registry and the gateway's metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The access log queue.
    pub access_log: accesslog::AccessLog,
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
