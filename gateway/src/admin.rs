//! The operator's control surface: the admin API and the command line that
//! calls it.
//!
//! - [`api`]: the admin listener (organisations, users, keys, status,
//!   reload, plus `/metrics`, `/healthz` and `/readyz`).
//! - [`reload`]: the configuration reloaded in place (`POST /v1/reload`,
//!   SIGHUP), certificates included.
//! - [`bodies`]: the JSON bodies the API accepts.
//! - [`client`]: `scopegate admin …`, a small `std::net` HTTP client of that
//!   API; it shares no code with the server, only the wire format.
//!
//! May use: [`crate::request`] (the shared state, routing, canonical paths,
//! replies) and [`crate::ops`]. Never `tools`, `server` or `cli`.

pub mod api;
pub mod bodies;
pub mod client;
pub mod reload;
