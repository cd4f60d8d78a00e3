//! scopegate's access model and key checks: no HTTP, no Pingora.
//!
//! For a presented key and a target (a domain at a level, or the organisation),
//! [`KeyStore`] decides whether a request may pass, millions of times a second,
//! while platform teams revoke keys and change access underneath it.
//!
//! # Layout
//! - [`model`]: organisations, their domains and servers, users, roles,
//!   access levels, key records, and the canonical form of domain and server names.
//! - [`secret`]: the issued key format (prefix, randomness, checksum), the
//!   keyed BLAKE3 digest and the keyed SipHash locator — a key is stored only
//!   as these two keyed hashes.
//! - [`snapshot`]: one immutable version of the access data and the decision
//!   itself: effective level = min(key scope, creator's level now).
//! - [`digest_map`]: the key table — open addressing at the key's locator,
//!   one cache line per lookup, prefetched while the digest is computed, 1024
//!   copy-on-write shards so a one-key change at a million keys costs
//!   microseconds, not a table copy;
//!   [`shardmap`]: the same sharding over hashbrown for users and orgs.
//! - [`store`]: the durable store trait, its change vocabulary and the
//!   gap-free change log; [`sqlite`]: the embedded SQLite implementation;
//!   [`postgres`]: one PostgreSQL database shared by a fleet.
//! - [`engine`]: [`KeyStore`], the lock-free reader side and the single writer
//!   that catches up with the log, validates, commits durably, then publishes.
//! - [`follow`]: the thread that keeps an instance's snapshot up to date with
//!   what other instances commit, and so its freshness.
// One `unsafe` block in the crate, allowed where it stands: the prefetch hint
// in `digest_map`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod dense;
pub mod digest_map;
pub mod engine;
pub mod follow;
pub mod model;
pub mod postgres;
pub mod secret;
pub mod shardmap;
pub mod snapshot;
pub mod sqlite;
pub mod store;
pub mod time;

pub use digest_map::DigestMap;
pub use engine::Followed;
pub use engine::{
    Applied, Counts, CreatedKey, Decision, DomainInput, Error, ErrorKind, Identity, KeyPatch,
    KeyStore, NewKey, UserInput,
};
pub use follow::{FollowEvent, Follower};
pub use model::{
    canonical_domain, canonical_domain_cow, canonical_server, Access, Domain, KeyLifecycle,
    KeyMeta, KeyRecord, KeyScope, KeyServer, RateLimit, Role, Server, Status, Usage, UserRecord,
};
pub use secret::{Digest, Hashed, Locator, Pepper};
pub use shardmap::ShardMap;
pub use snapshot::{
    DomainRef, KeyDomains, KeySide, Policy, Principal, Refusal, ServerBinding, Snapshot, Target,
    UsageCell,
};
pub use sqlite::SqliteStore;
pub use store::{Audit, Change, Fault, LogEntry, Store, StoreError, UsageDelta, Watcher};
