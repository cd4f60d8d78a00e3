//! The tools that ship in the `scopegate` binary beside the gateway.
//!
//! - [`demo`]: `scopegate demo`, a newcomer's first run against mock
//!   upstreams.
//! - [`loadtest`]: `scopegate loadtest`, load and a request-by-request audit
//!   that nothing got through that should not have.
//! - [`mock`]: `scopegate mock-upstream`, the mock of the sending and domain
//!   APIs (also used by the tests).
//! - [`offline`]: `scopegate check`, the decision for one request, offline.
//! - [`invariants`]: the properties the parsers keep whatever their input,
//!   checked by the fuzz targets (`fuzz/`) and by the corpus test.
//!
//! May use: [`crate::server`] (to run a gateway in-process),
//! [`crate::request`], [`crate::admin`] and [`crate::ops`]. Only
//! [`crate::cli`] uses them.

pub mod demo;
pub mod invariants;
pub mod loadtest;
pub mod mock;
pub mod offline;
