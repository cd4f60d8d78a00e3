//! What operators watch: the Prometheus registry and the access log.
//!
//! - [`metrics`]: every counter and histogram the gateway exports, and the
//!   outcome names requests are counted under.
//! - [`edge`]: the connection layer's metrics (connections open, refusals
//!   before a request is decided, certificate reloads).
//! - [`accesslog`]: the non-blocking access log (one line per request,
//!   written off the request path, keys masked).
//!
//! Readiness (`/readyz`) is answered by [`crate::admin::api`], and the
//! upstream health checks run from [`crate::server`]: both need the routing,
//! which lives above this folder.
//!
//! May use: the key store, the config and the standard library only; nothing
//! else in this crate (everything else uses it).

pub mod accesslog;
pub mod edge;
pub mod metrics;
