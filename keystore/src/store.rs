//! Durable storage behind a trait: the embedded SQLite file today, a
//! PostgreSQL change log for fleets later.
//!
//! The contract: [`Store::commit`] returns only once the change is durable,
//! and returns the new version; if it fails, nothing changed. The version is
//! the position in the store's ordered change log, so every instance that
//! follows the same log agrees on what version N means.

use crate::model::{Domain, KeyRecord, UserRecord};

/// A storage failure. The message never contains a secret or a digest.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(String),
    /// The stored data is not what this version of scopegate understands.
    #[error("store is unusable: {0}")]
    Incompatible(String),
    /// The store was created with another pepper: every digest would miss.
    #[error("the pepper does not match the one this store was created with (fingerprint mismatch); refusing to open it, because every key would be refused")]
    WrongPepper,
}

/// One durable change. Each commit is one step of the change log.
#[derive(Clone, Debug)]
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
    PutUser(UserRecord),
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
    CreateKeys(Vec<KeyRecord>),
    /// Revoke one key.
    RevokeKey {
        /// Public key id.
        id: String,
        /// Where it is and its digest, so the snapshot can mark it.
        key: crate::Hashed,
        /// Unix seconds.
        at: i64,
    },
}

impl Change {
    /// Short name for audit logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::PutOrg { .. } => "put_org",
            Change::PutUser(_) => "put_user",
            Change::DeactivateUser { .. } => "deactivate_user",
            Change::DeleteUser { .. } => "delete_user",
            Change::CreateKeys(_) => "create_keys",
            Change::RevokeKey { .. } => "revoke_key",
        }
    }

    /// What the change is about, for the audit trail: ids only, never secrets.
    pub fn subject(&self) -> String {
        match self {
            Change::PutOrg { org, .. } => org.clone(),
            Change::PutUser(u) | Change::DeactivateUser { user: u, .. } => {
                format!("{}/{}", u.org, u.id)
            }
            Change::DeleteUser { org, user, .. } => format!("{org}/{user}"),
            Change::CreateKeys(keys) => match keys.as_slice() {
                [one] => format!("{}/{}", one.org, one.id),
                many => format!("{} keys", many.len()),
            },
            Change::RevokeKey { id, .. } => id.clone(),
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

/// Durable storage of the access model. Implementations need not be `Sync`:
/// the key store serialises writers.
pub trait Store: Send {
    /// Checks (or, on a new store, records) the pepper fingerprint.
    fn check_pepper(&mut self, fingerprint: &str) -> Result<(), StoreError>;
    /// The current version and the time of the change that made it (Unix ms).
    fn version(&mut self) -> Result<(u64, i64), StoreError>;
    /// (id, uid, domains) of every organisation.
    fn load_orgs(&mut self) -> Result<Vec<(String, u64, Vec<Domain>)>, StoreError>;
    /// Every user.
    fn load_users(&mut self) -> Result<Vec<UserRecord>, StoreError>;
    /// Every key, streamed, so loading a million keys holds one record at a time.
    fn for_each_key(&mut self, f: &mut dyn FnMut(KeyRecord)) -> Result<(), StoreError>;
    /// Commits one change durably and returns the new version.
    fn commit(&mut self, change: &Change, audit: &Audit<'_>) -> Result<u64, StoreError>;
    /// One key by public id.
    fn get_key(&mut self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Keys of an organisation, optionally of one user, oldest first.
    fn list_keys(&mut self, org: &str, user: Option<&str>) -> Result<Vec<KeyRecord>, StoreError>;
    /// Users of an organisation.
    fn list_users(&mut self, org: &str) -> Result<Vec<UserRecord>, StoreError>;
}
