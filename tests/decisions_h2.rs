//! The decision table of `tests/decisions.rs`, every `gw.send` over TLS
//! (a certificate made by the test) and HTTP/2: each decision, identity
//! header, body limit and From check must be the same as over HTTP/1.1.

#[path = "decisions.rs"]
mod decisions_h2;
