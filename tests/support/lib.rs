//! Shared helpers for scopegate's black-box tests, benches and load tests:
//! an in-process gateway with mock upstreams, a raw HTTP client, the guide's
//! sample organisation, and synthetic key populations.

pub mod gateway;
pub mod http;
pub mod population;
pub mod sample;
