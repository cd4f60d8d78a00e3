//! The operator's control surface: the admin API and the command line that
//! calls it.
//!
//! - [`api`]: the admin listener (organisations, users, keys, status,
//!   reload, plus `/metrics`, `/healthz` and `/readyz`).
//! - [`answer`]: what every call uses: its answer and the HTTP response it
//!   becomes, the body parser, the key store call off the workers, the audit line.
//! - [`reload`]: the configuration reloaded in place (`POST /v1/reload`,
//!   SIGHUP), certificates included.
//! - [`servers`]: the calls on an organisation's servers, and how server
//!   access shows in audit lines.
//! - [`bodies`]: the JSON bodies the API accepts.
//! - [`client`]: `scopegate admin …`, a small `std::net` HTTP client of that
//!   API; it shares no code with the server, only the wire format.
//!
//! May use: [`crate::request`] (the shared state, routing, canonical paths,
//! replies) and [`crate::ops`]. Never `tools`, `server` or `cli`.

pub mod answer;
pub mod api;
pub mod bodies;
pub mod client;
pub mod reload;
pub mod servers;
