//! `scopegate loadtest`: load-test key checks against a real gateway and
//! prove, request by request, that nothing got through that should not have.
//!
//! One run, all in this process and on 127.0.0.1:
//!
//! 1. a **population** in a store: organisation `loadtest` with eight domains,
//!    a few hundred users in the guide's roles, `--keys` valid keys spread over
//!    them, and dedicated keys that are revoked (directly, or because their
//!    creator was offboarded), expired, or out of scope for the domain they
//!    are used on; malformed keys (checksum-broken `sg_` strings) and unknown
//!    ones (well-formed, never issued) are made up at run time;
//! 2. the **gateway** itself ([`crate::server::run_with_state`] on a plain
//!    thread, stopped through its handle), with the routes, keys and limits of
//!    `--config` when given and its upstream groups pointed at
//! 3. an **auditing upstream**: a tiny HTTP/1.1 server that answers 200 and
//!    records, for every request it receives, the `X-Scopegate-Key-Id` the
//!    gateway added and the `X-Loadtest-Seq` the load client put on it;
//! 4. the **load**: `--connections` keep-alive connections from a hand-written
//!    client on its own tokio runtime, each request picking a category by
//!    `--mix` and a key at random, `GET /domains/{domain}` on a domain the
//!    valid keys cover and the out-of-scope keys do not;
//! 5. **revocations while the load runs**: `--revocations-per-sec` valid keys
//!    are revoked through [`KeyStore::revoke_key`](scopegate_keystore::KeyStore::revoke_key) on the gateway's own store,
//!    as the admin API does, and the instant each call returned is kept; a
//!    fifth of the valid requests use keys that are about to be, or were just,
//!    revoked, so the race is exercised on every run.
//!
//! With `--fleet N` the gateway is N `scopegate serve` processes on one
//! store ([`fleet`]): the load is spread over them, each revocation goes
//! through the admin API of a random instance, and probes time how long
//! until every other instance refuses the key. The revoking instance may
//! admit nothing after its answer; another instance may until it was seen
//! refusing (the propagation window), and not after.
//!
//! Afterwards every request the upstream received is checked against the
//! ground truth: it **leaked** if its key was never valid, or if the client
//! sent it after its key's revocation had returned. The other direction is
//! checked too: a valid request the gateway refused is a **false refusal**,
//! except for requests in flight while their key was being revoked, which may
//! go either way. The exit code is 1 when anything leaked.
//!
//! # Layout
//! One concept a file: [`population`], the auditing [`upstream`], the
//! [`driver`] (load and revocations), the [`fleet`] of processes, the
//! [`audit`], the [`report`]; with
//! [`mix`] (categories and the random picks), [`histogram`] (latency) and
//! [`args`] and [`command`] (the run that wires them).

pub mod args;
pub mod audit;
pub mod command;
pub mod driver;
pub mod fleet;
pub mod histogram;
pub mod mix;
pub mod population;
pub mod report;
pub mod upstream;

pub use args::LoadtestArgs;
pub use command::run;
pub use population::DOMAINS;
