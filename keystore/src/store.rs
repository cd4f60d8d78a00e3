//! Durable storage behind a trait: the embedded SQLite file, or one
//! PostgreSQL database shared by a fleet of instances.
//!
//! The contract: [`Store::commit`] returns only once the change is durable,
//! and returns the new version; if it fails, nothing changed. The version is
//! the position in the store's ordered change log, so every instance that
//! follows the same log agrees on what version N means.
//!
//! The change log is gap-free and commit-ordered: a commit takes the next
//! version while holding the store's write lock (SQLite's `BEGIN IMMEDIATE`,
//! PostgreSQL's counter row `FOR UPDATE`), and only if the log is still at
//! the version the change was planned against ([`StoreError::Behind`]
//! otherwise). So a follower that applies `version > last` in order can
//! never skip a change that committed late, and can tell when one is
//! missing. Each entry carries the change itself ([`LogEntry::change`]), so
//! followers apply it without re-reading the tables; an entry whose payload
//! was pruned (or too large to keep) tells the follower to reload.

use crate::model::{Access, Domain, KeyRecord, RateLimit, Server, Usage, UserRecord};
use std::collections::BTreeMap;

/// A storage failure. The message never contains a secret or a digest.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(String),
    /// The stored data is not what this version of scopegate understands.
    #[error("store is unusable: {0}")]
    Incompatible(String),
    /// A newer scopegate migrated the store past what this one knows while
    /// it was running: it must neither apply nor make changes (it would
    /// misread what the newer version writes) until it is upgraded.
    #[error("the store was migrated to schema version {found} by a newer scopegate; this one knows {known} and could misread what that version writes, so it neither applies nor makes changes (the proxy fails closed after fleet.max_staleness_ms): upgrade this instance")]
    NewerSchema {
        /// The store's schema version.
        found: usize,
        /// The newest this scopegate knows.
        known: usize,
    },
    /// The store was created with another pepper: every digest would miss.
    #[error("the pepper does not match the one this store was created with (fingerprint mismatch); refusing to open it, because every key would be refused")]
    WrongPepper,
    /// The database cannot be reached (down, restarting, network): nothing
    /// changed, and trying again later may work.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store file cannot take writes right now (SQLite: disk full,
    /// read-only, I/O error, file removed): nothing changed. The reason says
    /// what the operator must do; most recover by themselves once the cause
    /// is gone.
    #[error("the store is unavailable: {reason}")]
    Faulted {
        /// What is wrong, for metrics.
        fault: Fault,
        /// For the operator: the file, the cause, the way back.
        reason: String,
    },
    /// The connection was lost while the database was committing: the change
    /// may or may not be in the log. Whichever it is, the next read of the
    /// log applies it (or not) exactly once.
    #[error("the connection to the store was lost while it was committing ({0})")]
    Indeterminate(String),
    /// Another instance committed first: the log is past the version the
    /// change was planned against. Nothing changed; catch up and plan again.
    #[error("the change log moved on (at version {actual}, change planned against {expected})")]
    Behind {
        /// The version the change was planned against.
        expected: u64,
        /// The version the log is at.
        actual: u64,
    },
}

/// Why a store file cannot take writes (the `kind` label of
/// `scopegate_store_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The filesystem is full (or the process's file size limit is reached).
    Full,
    /// The file or its filesystem is read-only.
    ReadOnly,
    /// Reading or writing the file failed.
    Io,
    /// The file was removed or replaced while this process had it open.
    Deleted,
}

impl Fault {
    /// `full`, `read_only`, `io` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Full => "full",
            Fault::ReadOnly => "read_only",
            Fault::Io => "io",
            Fault::Deleted => "deleted",
        }
    }
}

/// One entry of the change log, as a follower reads it.
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// Its version: the previous entry's plus one.
    pub version: u64,
    /// When it was committed (Unix ms).
    pub at_ms: i64,
    /// The change, or `None` when its payload is no longer kept (pruned, too
    /// large, or written by a scopegate that kept none): the follower must
    /// reload the whole snapshot.
    pub change: Option<Change>,
}

/// A wake-up source for followers: a dedicated connection that hears about
/// commits as they happen (PostgreSQL LISTEN), or a cheap probe (SQLite's
/// `PRAGMA data_version`). It only says *when* to look; the log says what
/// changed.
pub trait Watcher: Send {
    /// Waits at most `timeout` for a sign that another writer may have
    /// committed. `Ok(true)` when woken early by one; `Ok(false)` at the
    /// timeout. An error means the wake-up source is lost: drop it and open
    /// a new one with [`Store::watcher`] (then catch up, since wake-ups sent
    /// meanwhile are gone).
    fn wait(&mut self, timeout: std::time::Duration) -> Result<bool, StoreError>;
}

/// One durable change. Each commit is one step of the change log.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// Create an organisation or replace its domain list.
    PutOrg {
        /// Organisation id.
        org: String,
        /// Its uid (kept from creation when the organisation exists).
        uid: u64,
        /// The complete new domain list.
        domains: Vec<Domain>,
    },
    /// Create or replace a user (role, status, access).
    PutUser {
        /// The complete new record.
        user: UserRecord,
    },
    /// Deactivate a user and revoke every key they created.
    DeactivateUser {
        /// The user record with status deactivated.
        user: UserRecord,
        /// Unix seconds, recorded as the keys' revocation time.
        at: i64,
        /// The keys this revokes, so the snapshot can mark them.
        revoke: Vec<crate::Hashed>,
    },
    /// Delete a user and revoke every key they created.
    DeleteUser {
        /// Organisation id.
        org: String,
        /// User id.
        user: String,
        /// Unix seconds, recorded as the keys' revocation time.
        at: i64,
        /// The keys this revokes, so the snapshot can mark them.
        revoke: Vec<crate::Hashed>,
    },
    /// Add keys (one created, or many imported at once).
    CreateKeys {
        /// The new keys.
        keys: Vec<KeyRecord>,
    },
    /// Revoke one key.
    RevokeKey {
        /// Public key id.
        id: String,
        /// Where it is and its digest, so the snapshot can mark it.
        key: crate::Hashed,
        /// Unix seconds.
        at: i64,
    },
    /// Rotate a key: its successor (same scope, creator, name, limits) is
    /// added, and the old key expires when its grace ends.
    RotateKey {
        /// Public id of the old key.
        id: String,
        /// Where the old key is and its digest.
        key: crate::Hashed,
        /// Unix seconds of the rotation.
        at: i64,
        /// The old key's new expiry: the end of the grace (or its earlier
        /// expiry, kept).
        expires_at: i64,
        /// The successor (boxed: a record is large, and most changes are small).
        new: Box<KeyRecord>,
    },
    /// Replace a key's rate limit and shadow scope.
    UpdateKey {
        /// Public id.
        id: String,
        /// Where it is and its digest.
        key: crate::Hashed,
        /// The key's own rate limit (`None`: the organisation's default).
        rate_limit: Option<RateLimit>,
        /// The shadow scope (`None`: none).
        shadow: Option<BTreeMap<String, Access>>,
    },
    /// Set or clear an organisation's default rate limit for its keys.
    SetOrgRateLimit {
        /// Organisation id.
        org: String,
        /// The default (`None`: keys without their own limit are unlimited).
        rate_limit: Option<RateLimit>,
    },
    /// Add a server to an organisation, or change its numeric id.
    PutServer {
        /// Organisation id.
        org: String,
        /// The server (canonical name) and its id.
        server: Server,
    },
    /// Remove a server from an organisation, and every member's access to
    /// it. Keys bound to it stay, and grant nothing on it; a server of the
    /// same name added later starts with no member access.
    DeleteServer {
        /// Organisation id.
        org: String,
        /// The server's canonical name.
        server: String,
    },
}

impl Change {
    /// Short name for audit logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::PutOrg { .. } => "put_org",
            Change::PutUser { .. } => "put_user",
            Change::DeactivateUser { .. } => "deactivate_user",
            Change::DeleteUser { .. } => "delete_user",
            Change::CreateKeys { .. } => "create_keys",
            Change::RevokeKey { .. } => "revoke_key",
            Change::RotateKey { .. } => "rotate_key",
            Change::UpdateKey { .. } => "update_key",
            Change::SetOrgRateLimit { .. } => "set_org_rate_limit",
            Change::PutServer { .. } => "put_server",
            Change::DeleteServer { .. } => "delete_server",
        }
    }

    /// What the change is about, for the audit trail: ids only, never secrets.
    pub fn subject(&self) -> String {
        match self {
            Change::PutOrg { org, .. } => org.clone(),
            Change::PutUser { user: u } | Change::DeactivateUser { user: u, .. } => {
                format!("{}/{}", u.org, u.id)
            }
            Change::DeleteUser { org, user, .. } => format!("{org}/{user}"),
            Change::CreateKeys { keys } => match keys.as_slice() {
                [one] => format!("{}/{}", one.org, one.id),
                many => format!("{} keys", many.len()),
            },
            Change::RevokeKey { id, .. } | Change::UpdateKey { id, .. } => id.clone(),
            Change::RotateKey { id, new, .. } => format!("{id} -> {}", new.id),
            Change::SetOrgRateLimit { org, .. } => org.clone(),
            Change::PutServer { org, server } => format!("{org}/{}", server.name),
            Change::DeleteServer { org, server } => format!("{org}/{server}"),
        }
    }
}

/// Who made a change, for the audit trail.
#[derive(Clone, Debug)]
pub struct Audit<'a> {
    /// The admin token's name (never the token).
    pub actor: &'a str,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// Payloads larger than this are not kept in the log (a bulk import of a
/// million keys would be hundreds of megabytes): followers reload instead.
pub const MAX_PAYLOAD_BYTES: usize = 4 << 20;

impl Change {
    /// The payload a log entry keeps: JSON, or `None` when too large.
    pub fn payload(&self) -> Option<String> {
        let json = serde_json::to_string(self).expect("a change serialises");
        (json.len() <= MAX_PAYLOAD_BYTES).then_some(json)
    }

    /// Reads a payload back. A payload this scopegate cannot read is treated
    /// like a pruned one (the follower reloads), never guessed at.
    pub fn from_payload(json: &str) -> Option<Change> {
        serde_json::from_str(json).ok()
    }
}

/// Durable storage of the access model. Implementations need not be `Sync`:
/// the key store serialises writers.
pub trait Store: Send {
    /// `sqlite` or `postgres`, for `/v1/status` and metrics.
    fn kind(&self) -> &'static str;
    /// Checks (or, on a new store, records) the pepper fingerprint.
    fn check_pepper(&mut self, fingerprint: &str) -> Result<(), StoreError>;
    /// Starts a read that sees one consistent state until [`Store::end_read`]
    /// (a whole-snapshot load runs inside one).
    fn begin_read(&mut self) -> Result<(), StoreError>;
    /// Ends the read started by [`Store::begin_read`].
    fn end_read(&mut self) -> Result<(), StoreError>;
    /// The current version and the time of the change that made it (Unix ms).
    fn version(&mut self) -> Result<(u64, i64), StoreError>;
    /// (id, uid, domains) of every organisation.
    fn load_orgs(&mut self) -> Result<Vec<(String, u64, Vec<Domain>)>, StoreError>;
    /// (organisation, server) of every server.
    fn load_servers(&mut self) -> Result<Vec<(String, Server)>, StoreError>;
    /// Every user.
    fn load_users(&mut self) -> Result<Vec<UserRecord>, StoreError>;
    /// Every key, streamed, so loading a million keys holds one record at a time.
    fn for_each_key(&mut self, f: &mut dyn FnMut(KeyRecord)) -> Result<(), StoreError>;
    /// Commits one change durably, as log version `expected + 1`, and returns
    /// that version. If the log is no longer at `expected` (another instance
    /// committed first), nothing changes and the answer is
    /// [`StoreError::Behind`].
    fn commit(
        &mut self,
        change: &Change,
        audit: &Audit<'_>,
        expected: u64,
    ) -> Result<u64, StoreError>;
    /// Log entries after version `after`, oldest first, at most `limit`, and
    /// the version the log is at. Entries come without gaps; a follower that
    /// sees one anyway reloads.
    fn changes_since(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, u64), StoreError>;
    /// A new wake-up source for a follower (its own connection).
    fn watcher(&self) -> Result<Box<dyn Watcher>, StoreError>;
    /// Queues this instance behind other instances' writers until
    /// [`Store::end_write`], so a write that catches up and plans is not
    /// overtaken again and again (PostgreSQL: a session advisory lock). Only
    /// fairness rides on it: correctness is the commit's version check.
    fn begin_write(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Ends what [`Store::begin_write`] started.
    fn end_write(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Refuses ([`StoreError::NewerSchema`]) a store whose schema a newer
    /// scopegate has migrated past what this one knows since it was opened:
    /// its changes may carry what this version would drop (a key's server
    /// binding, say), so this instance must neither apply them nor write.
    fn check_schema(&mut self) -> Result<(), StoreError>;
    /// What happened to the store that the operator must hear of though no
    /// request failed, oldest first; each is returned once. Each is a switch
    /// to the file now at the store's path (a removed SQLite file written
    /// back, or another file whose log continues this one's).
    fn take_notices(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Drops the payloads of entries at or below `version` (the audit columns
    /// stay). Followers behind that point reload the whole snapshot.
    fn prune_payloads(&mut self, version: u64) -> Result<u64, StoreError>;
    /// One key by public id.
    fn get_key(&mut self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Keys of an organisation, optionally of one user, oldest first.
    fn list_keys(&mut self, org: &str, user: Option<&str>) -> Result<Vec<KeyRecord>, StoreError>;
    /// Users of an organisation.
    fn list_users(&mut self, org: &str) -> Result<Vec<UserRecord>, StoreError>;
    /// Every organisation's default rate limit (organisations without one
    /// are left out).
    fn org_rate_limits(&mut self) -> Result<Vec<(String, RateLimit)>, StoreError>;
    /// Adds a batch of usage counted in memory: each key's requests and
    /// grace uses grow by the delta, its last use becomes the later of the
    /// stored one and the delta's. Not a change-log entry (see
    /// [`UsageDelta`]); one transaction, so a batch is written whole or not at all.
    fn add_usage(&mut self, batch: &[UsageDelta]) -> Result<(), StoreError>;
    /// Stored usage of an organisation's keys, or of one key (`id`).
    fn usage(&mut self, org: &str, id: Option<&str>) -> Result<Vec<(String, Usage)>, StoreError>;
    /// Turns the error of a failed write into the one to report: for a store
    /// file's fault, the file, the cause and the way back (SQLite looks at
    /// the filesystem to tell a read-only one from other I/O errors, and
    /// checks the file was not removed). Called after the write ended.
    fn diagnose(&mut self, e: StoreError) -> StoreError {
        e
    }
}

/// Usage of one key counted in memory since the last batch.
///
/// Usage is written beside the change log, not through it: it is not
/// access data (no decision depends on it), every instance counts its own
/// requests and adds them up in the store (so the rows are sums, which no
/// log order could make more right), and a log entry per batch would wake
/// every follower of a fleet every few seconds for nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDelta {
    /// Public key id.
    pub id: String,
    /// The key's organisation (so usage can be listed by organisation).
    pub org: String,
    /// Unix seconds of the latest use in the batch.
    pub last_used_at: i64,
    /// Requests in the batch.
    pub requests: u64,
    /// Of those, made after the key was rotated.
    pub grace_uses: u64,
}
