//! scopegate's gateway: the Pingora proxy that enforces API keys in front of
//! the sending and domain APIs, its admin API and metrics, and the command
//! line. The decisions come from `scopegate-keystore`; the settings from
//! `scopegate-config`; this crate is the glue.
//!
//! # Layout
//! Each folder is one part; dependencies run one way, down this list
//! (`gateway/tests/layout.rs` fails on a cycle or an upward use):
//! - [`cli`]: `scopegate serve | demo | check | admin | loadtest | …`.
//! - [`tools`]: what ships in the binary beside the gateway: the demo, the
//!   load test, the mock upstream, the offline check.
//! - [`server`]: [`server::run`] builds the Pingora server (proxy, admin,
//!   background health checks) from a config, a key store and a shutdown
//!   signal, so tests can start and stop it in-process.
//! - [`admin`]: the admin API and `scopegate admin`, its command-line client.
//! - [`request`]: everything one proxied request passes through: canonical
//!   path, routing, key, sender domains, the decision, forwarding, replies,
//!   and the Pingora phases that call them; plus the shared [`State`].
//! - [`ops`]: metrics and the access log.
//!
//! The flat paths (`scopegate_gateway::decide`, `::mock`, `::proxy::Ctx`, …)
//! are re-exports kept for the tests and benches written against them.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod ops;
pub mod request;
pub mod server;
pub mod tools;

pub use pingora;

pub use ops::{accesslog, metrics};
pub use request::state::State;
pub use request::{canon, decide, forward, guard, keys, respond, routing, sender};
pub use tools::{demo, loadtest, mock, offline};

/// The phases and their per-request state, at the path the benches use
/// (`Ctx` was first defined beside the phases).
pub mod proxy {
    pub use crate::request::ctx::Ctx;
    pub use crate::request::proxy::Proxy;
}
