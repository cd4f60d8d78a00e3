//! The fleet store: one PostgreSQL database shared by every instance.
//! (Being written: see `PostgresStore`.)

use crate::store::StoreError;

/// Whether a `--store` value names a PostgreSQL database.
pub fn is_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// The PostgreSQL-backed store.
pub struct PostgresStore;

impl PostgresStore {
    /// Connects, migrates and checks the pepper.
    pub fn connect(_url: &str, _fingerprint: &str) -> Result<crate::SqliteStore, StoreError> {
        Err(StoreError::Unavailable(
            "PostgreSQL support is not built yet".into(),
        ))
    }
}
