//! The per-request path: everything a proxied request passes through, in
//! the order it passes.
//!
//! 1. [`canon`]: the canonical path, decoded once; ambiguity is refused.
//! 2. [`routing`]: the route and upstream group for a method and path, per
//!    config version.
//! 3. [`keys`]: the API key a request presents (headers or query).
//! 4. [`sender`]: the From domains of a send body.
//! 5. [`decide`]: the decision, a synchronous function of the key store's
//!    snapshot, the routing, the request head and (for sends) the body; every
//!    DESIGN rule about who may do what is enforced from here.
//!    [`guard`]: per-key rate limits and per-address brute-force limits
//!    beside the decision.
//! 6. [`forward`]: the upstream peer, the rewritten request, and the
//!    gateway's own path for bodies past Pingora's replay buffer.
//! 7. [`respond`]: every status and JSON error body the gateway writes.
//! 8. [`proxy`]: the Pingora `ProxyHttp` phases, which call the above, and
//!    [`body`]: reading a send body to inspect, bounded by size and time.
//!
//! Before all of them, per connection: [`conn`], the connection layer
//! (connection slots, the HTTP/1.1 head read whole within its deadline and
//! checked by [`framing`], HTTP/2 settings), and [`tls`], the certificate
//! the listener presents, swapped on reload. [`fast`]: plain bodiless
//! HTTP/1.1 requests, decided by the same functions and proxied by the
//! gateway's own loop instead of Pingora's, over [`upstream`]'s per-thread
//! connections.
//!
//! Below the phases: [`ctx`], the per-request state they share; [`head`],
//! the request's Content-Length and logged path; [`state`], what every part
//! of a running gateway shares.
//!
//! May use: [`crate::ops`] (metrics, access log), the key store, the config
//! and Pingora. Never `admin`, `tools`, `server` or `cli`: they sit above.

pub mod body;
pub mod canon;
pub mod conn;
pub mod ctx;
pub mod decide;
pub mod fast;
pub mod forward;
pub mod framing;
pub mod guard;
pub mod head;
pub mod keys;
pub mod proxy;
pub mod respond;
pub mod routing;
pub mod sender;
pub mod state;
pub mod tls;
pub mod upstream;
