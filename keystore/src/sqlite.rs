//! The embedded store: one SQLite file in WAL mode with `synchronous = FULL`,
//! so a commit that returned survives a crash or power loss.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::model::{
    Access, Domain, KeyRecord, KeyScope, RateLimit, Role, Server, Status, Usage, UserRecord,
};
use crate::store::{Audit, Change, Fault, LogEntry, Store, StoreError, UsageDelta, Watcher};
use crate::{Digest, Locator};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many
/// have run. Never edit a released migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the access model and the change log.
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE orgs (id TEXT PRIMARY KEY, uid INTEGER NOT NULL);
     CREATE TABLE domains (
         org TEXT NOT NULL REFERENCES orgs(id),
         name TEXT NOT NULL,
         numeric_id INTEGER,
         PRIMARY KEY (org, name));
     CREATE TABLE users (
         org TEXT NOT NULL REFERENCES orgs(id),
         id TEXT NOT NULL,
         role TEXT NOT NULL,
         status TEXT NOT NULL,
         access TEXT NOT NULL,
         uid INTEGER NOT NULL,
         PRIMARY KEY (org, id));
     CREATE TABLE keys (
         id TEXT PRIMARY KEY,
         digest BLOB NOT NULL UNIQUE,
         org TEXT NOT NULL REFERENCES orgs(id),
         user TEXT NOT NULL,
         user_uid INTEGER NOT NULL,
         org_wide INTEGER NOT NULL,
         domains TEXT NOT NULL,
         expires_at INTEGER,
         name TEXT,
         created_at INTEGER NOT NULL,
         revoked_at INTEGER);
     CREATE INDEX keys_by_user ON keys (org, user);
     CREATE TABLE changes (
         version INTEGER PRIMARY KEY,
         at_ms INTEGER NOT NULL,
         actor TEXT NOT NULL,
         kind TEXT NOT NULL,
         subject TEXT NOT NULL);",
    // 2: where each key sits in the key table (a keyed hash of the secret, see
    // `Locator`). Keys stored before have none and are found by digest.
    "ALTER TABLE keys ADD COLUMN locator INTEGER;",
    // 3: each log entry keeps its change, so other processes on the same file
    // follow the log instead of diverging (NULL: pruned or too large; a
    // follower that meets one reloads).
    "ALTER TABLE changes ADD COLUMN payload TEXT;",
    // 4: key lifecycle and limits: a key's rate limit, shadow scope and
    // rotation (JSON, NULL for none), an organisation's default rate limit,
    // and usage, written in batches beside the change log.
    "ALTER TABLE keys ADD COLUMN lifecycle TEXT;
     ALTER TABLE orgs ADD COLUMN rate_limit TEXT;
     CREATE TABLE key_usage (
         id TEXT PRIMARY KEY,
         org TEXT NOT NULL,
         last_used_at INTEGER NOT NULL,
         requests INTEGER NOT NULL,
         grace_uses INTEGER NOT NULL);
     CREATE INDEX key_usage_by_org ON key_usage (org);",
    // 5: servers (Postmark's second resource kind): an organisation's
    // servers, members' per-server access (JSON, NULL for none) and a key's
    // server binding (NULL: not bound).
    "CREATE TABLE servers (
         org TEXT NOT NULL REFERENCES orgs(id),
         name TEXT NOT NULL,
         numeric_id INTEGER NOT NULL,
         PRIMARY KEY (org, name));
     CREATE UNIQUE INDEX servers_by_id ON servers (org, numeric_id);
     ALTER TABLE users ADD COLUMN servers TEXT;
     ALTER TABLE keys ADD COLUMN server TEXT;
     ALTER TABLE keys ADD COLUMN server_access TEXT;",
];

/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Connection,
    /// The file, so a follower can open its own connection; `None` in memory.
    path: Option<std::path::PathBuf>,
    /// (device, inode) of the file `conn` opened, to notice the path being
    /// removed or replaced under it before a write goes nowhere durable.
    ident: Option<(u64, u64)>,
    /// (device, inode) of the WAL beside it when it was opened: a file put
    /// at the path while this one is in use has this same WAL beside it,
    /// which SQLite would read as its own.
    wal_ident: Option<(u64, u64)>,
    /// The copy this process wrote back after the file was removed but
    /// could not switch to: its version, and its [`Stamp`] as written.
    restored: Option<(u64, Stamp)>,
    /// When writing a removed file back last failed, so the follower does
    /// not retry a large copy on every poll (writes always retry).
    failed_at: Option<std::time::Instant>,
    /// What happened to the file that the operator must hear of (a removed
    /// file written back, another file adopted), for the follower to log.
    notices: Vec<String>,
    /// This connection holds the file's write lock, taken by
    /// [`Store::begin_write`] so the catch-up, the plan and the commit of
    /// one admin write are not overtaken by another process's writer.
    writing: bool,
}

/// A SQLite error as a [`StoreError`]: the disk full, a read-only file or
/// filesystem, an I/O error or a file that cannot be opened are faults of
/// the store file (503, nothing changed, retry once the cause is gone);
/// anything else is a database error.
fn db(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    if e.sqlite_error_code() == Some(C::DatabaseBusy) {
        return StoreError::Unavailable(format!(
            "{e}: another process held the store file's write lock past the busy timeout"
        ));
    }
    let fault = match e.sqlite_error_code() {
        Some(C::DiskFull) => Fault::Full,
        Some(C::ReadOnly) => Fault::ReadOnly,
        Some(C::SystemIoFailure | C::CannotOpen) => Fault::Io,
        _ => return StoreError::Database(e.to_string()),
    };
    StoreError::Faulted {
        fault,
        reason: format!("SQLite: {e}"),
    }
}

/// (device, inode, modification time in s and ns, size) of a file.
type Stamp = (u64, u64, i64, i64, u64);

/// A change log entry's version, time, actor, kind and subject: what tells
/// two logs apart at one version.
type LogHead = (i64, i64, String, String, String);

/// How often the follower retries writing a removed file back after a
/// failure (every write retries at once).
const RECOVER_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The [`Stamp`] of the file at `path`; `None` if there is none.
fn stamp(path: &Path) -> std::io::Result<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.dev(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.size(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// (device, inode) of the file at `path`; `None` if there is none.
fn identify(path: &Path) -> std::io::Result<Option<(u64, u64)>> {
    Ok(stamp(path)?.map(|s| (s.0, s.1)))
}

/// `path` with `suffix` appended (`-wal`, `-shm`).
fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    p.into()
}

/// Moves aside a WAL that cannot belong to the store file: the file is in
/// rollback-journal mode (byte 18 of its header is 1, as a copy written by
/// [`SqliteStore::restore`] or a backup is) while a `-wal` lies beside it. A
/// store in use is always in WAL mode, so that WAL was left by a process
/// killed while it still had a removed file open; SQLite would replay its
/// pages, which are another file's, into this one. Kept as `-wal.removed`
/// and `-shm.removed`.
fn set_aside_foreign_wal(path: &Path) -> Result<(), StoreError> {
    if journal_mode_byte(path) != Some(1) {
        return Ok(());
    }
    for suffix in ["-wal", "-shm"] {
        let file = beside(path, suffix);
        if file.exists() {
            std::fs::rename(&file, beside(path, &format!("{suffix}.removed"))).or_else(|e| {
                // Another process moved it aside first.
                if e.kind() == std::io::ErrorKind::NotFound {
                    return Ok(());
                }
                Err(StoreError::Faulted {
                    fault: Fault::Io,
                    reason: format!(
                        "{} belongs to a removed store file and cannot be moved aside: {e}",
                        file.display()
                    ),
                })
            })?;
        }
    }
    Ok(())
}

/// Byte 18 of the SQLite file's header: 1 in rollback-journal mode (a
/// `VACUUM INTO` copy), 2 in WAL mode; `None` if it is not a SQLite file.
fn journal_mode_byte(path: &Path) -> Option<u8> {
    use std::io::Read;
    let mut header = [0u8; 100];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .ok()?;
    (&header[..16] == b"SQLite format 3\0").then_some(header[18])
}

/// What the filesystem of the store file says about a failed write, by
/// creating (and removing) an empty file beside it: read-only, full, or
/// nothing to add (`None`).
fn probe_dir(path: &Path) -> Option<Fault> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let probe = dir.join(format!(".scopegate-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => match e.kind() {
            std::io::ErrorKind::ReadOnlyFilesystem => Some(Fault::ReadOnly),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                Some(Fault::Full)
            }
            _ => None,
        },
    }
}

impl SqliteStore {
    /// [`Store::commit`] under the file's write lock, in a savepoint so a
    /// change that fails half-way leaves nothing behind.
    fn commit_locked(
        &mut self,
        change: &Change,
        audit: &Audit<'_>,
        expected: u64,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.savepoint().map_err(db)?;
        let actual: i64 = tx
            .query_row("SELECT COALESCE(MAX(version), 0) FROM changes", [], |r| {
                r.get(0)
            })
            .map_err(db)?;
        if actual as u64 != expected {
            return Err(StoreError::Behind {
                expected,
                actual: actual as u64,
            });
        }
        match change {
            Change::PutOrg { org, uid, domains } => {
                tx.execute(
                    "INSERT OR IGNORE INTO orgs (id, uid) VALUES (?1, ?2)",
                    params![org, *uid as i64],
                )
                .map_err(db)?;
                tx.execute("DELETE FROM domains WHERE org = ?1", [org])
                    .map_err(db)?;
                let mut stmt = tx
                    .prepare("INSERT INTO domains (org, name, numeric_id) VALUES (?1, ?2, ?3)")
                    .map_err(db)?;
                for d in domains {
                    stmt.execute(params![org, d.name, d.id.map(|i| i as i64)])
                        .map_err(db)?;
                }
            }
            Change::PutUser { user } => put_user(&tx, user).map_err(db)?,
            Change::DeactivateUser { user, at, .. } => {
                put_user(&tx, user).map_err(db)?;
                revoke_user_keys(&tx, &user.org, &user.id, *at).map_err(db)?;
            }
            Change::DeleteUser { org, user, at, .. } => {
                tx.execute(
                    "DELETE FROM users WHERE org = ?1 AND id = ?2",
                    params![org, user],
                )
                .map_err(db)?;
                revoke_user_keys(&tx, org, user, *at).map_err(db)?;
            }
            Change::CreateKeys { keys } => {
                for k in keys {
                    insert_key(&tx, k).map_err(db)?;
                }
            }
            Change::RotateKey {
                id,
                at,
                expires_at,
                new,
                ..
            } => {
                insert_key(&tx, new).map_err(db)?;
                let mut old = self_key(&tx, id)?;
                old.lifecycle.rotated_at = Some(*at);
                old.lifecycle.replaced_by = Some(new.id.clone());
                tx.execute(
                    "UPDATE keys SET expires_at = ?2, lifecycle = ?3 WHERE id = ?1",
                    params![id, expires_at, crate::model::lifecycle_json(&old.lifecycle)],
                )
                .map_err(db)?;
            }
            Change::UpdateKey {
                id,
                rate_limit,
                shadow,
                ..
            } => {
                let mut old = self_key(&tx, id)?;
                old.lifecycle.rate_limit = *rate_limit;
                old.lifecycle.shadow = shadow.clone();
                tx.execute(
                    "UPDATE keys SET lifecycle = ?2 WHERE id = ?1",
                    params![id, crate::model::lifecycle_json(&old.lifecycle)],
                )
                .map_err(db)?;
            }
            Change::SetOrgRateLimit { org, rate_limit } => {
                tx.execute(
                    "UPDATE orgs SET rate_limit = ?2 WHERE id = ?1",
                    params![
                        org,
                        rate_limit
                            .map(|r| serde_json::to_string(&r).expect("a rate limit serialises"))
                    ],
                )
                .map_err(db)?;
            }
            Change::RevokeKey { id, at, .. } => {
                tx.execute(
                    "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id, at],
                )
                .map_err(db)?;
            }
            Change::PutServer { org, server } => {
                tx.execute(
                    "INSERT INTO servers (org, name, numeric_id) VALUES (?1, ?2, ?3)
                     ON CONFLICT (org, name) DO UPDATE SET numeric_id = ?3",
                    params![org, server.name, server.id as i64],
                )
                .map_err(db)?;
            }
            Change::DeleteServer { org, server } => {
                tx.execute(
                    "DELETE FROM servers WHERE org = ?1 AND name = ?2",
                    params![org, server],
                )
                .map_err(db)?;
                let members: Vec<(String, String)> = {
                    let mut stmt = tx
                        .prepare(
                            "SELECT id, servers FROM users WHERE org = ?1 AND servers IS NOT NULL",
                        )
                        .map_err(db)?;
                    let rows = stmt
                        .query_map([org], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(db)?;
                    rows.collect::<Result<_, _>>().map_err(db)?
                };
                for (id, text) in members {
                    let mut servers = parse_access(&text)?;
                    if servers.remove(server).is_some() {
                        tx.execute(
                            "UPDATE users SET servers = ?3 WHERE org = ?1 AND id = ?2",
                            params![org, id, servers_json(&servers)],
                        )
                        .map_err(db)?;
                    }
                }
            }
        }
        let version = expected + 1;
        tx.execute(
            "INSERT INTO changes (version, at_ms, actor, kind, subject, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                version as i64,
                audit.at_ms,
                audit.actor,
                change.kind(),
                change.subject(),
                change.payload()
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(version)
    }

    /// Whether the path still names the file this connection opened (true
    /// in memory, or when it cannot be told).
    fn same_file(&self) -> bool {
        let (Some(path), Some(ident)) = (&self.path, self.ident) else {
            return true;
        };
        !matches!(identify(path), Ok(now) if now != Some(ident))
    }

    /// Ends the write transaction `begin_write` or `commit` opened, undoing
    /// whatever it did not commit.
    fn release_write(&mut self) {
        if std::mem::take(&mut self.writing) && !self.conn.is_autocommit() {
            // A failed rollback leaves nothing committed either.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Opens (creating if needed) the store file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let mut store = Self::init(Self::connect(path, true)?)?;
        store.set_path(path)?;
        Ok(store)
    }

    /// Like [`SqliteStore::open`], but refuses a store recorded with another
    /// pepper *before* migrating it, so a misconfigured pepper never upgrades
    /// the schema of a store it cannot read (which would also lock out the
    /// older scopegate it belongs to).
    pub fn open_with_pepper(path: &Path, fingerprint: &str) -> Result<SqliteStore, StoreError> {
        let mut store = Self::configure(Self::connect(path, true)?)?;
        // Schema 1 created the table the fingerprint lives in.
        if store.schema_version()? >= 1
            && store
                .stored_fingerprint()?
                .is_some_and(|s| s != fingerprint)
        {
            return Err(StoreError::WrongPepper);
        }
        store.migrate()?;
        store.set_path(path)?;
        Ok(store)
    }

    /// Opens a connection; without `create`, a missing file is an error
    /// (a follower must never create an empty store where one was removed).
    fn connect(path: &Path, create: bool) -> Result<Connection, StoreError> {
        use rusqlite::OpenFlags as F;
        let mut flags = F::SQLITE_OPEN_READ_WRITE | F::SQLITE_OPEN_URI | F::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= F::SQLITE_OPEN_CREATE;
            set_aside_foreign_wal(path)?;
        }
        Connection::open_with_flags(path, flags).map_err(|e| match db(e) {
            StoreError::Faulted { fault, reason } => StoreError::Faulted {
                fault,
                reason: format!("opening {}: {reason}", path.display()),
            },
            other => StoreError::Database(format!("opening {}: {other}", path.display())),
        })
    }

    /// Records the file this store has open (after the connection opened it).
    fn set_path(&mut self, path: &Path) -> Result<(), StoreError> {
        self.ident = identify(path).map_err(|e| StoreError::Faulted {
            fault: Fault::Io,
            reason: format!("cannot stat the store file {}: {e}", path.display()),
        })?;
        self.wal_ident = identify(&beside(path, "-wal")).ok().flatten();
        self.path = Some(path.to_path_buf());
        Ok(())
    }

    /// Makes sure a write goes to the file at the path: SQLite would keep
    /// writing to a removed (or replaced) file, and everything acknowledged
    /// after that would be gone at the next start. A removed file is
    /// written back and switched to ([`SqliteStore::recover`]); another file
    /// whose log continues this one's is adopted
    /// ([`SqliteStore::adopt`]); anything else refuses the write.
    fn writable(&mut self) -> Result<(), StoreError> {
        let (Some(path), Some(ident)) = (self.path.clone(), self.ident) else {
            return Ok(());
        };
        let p = path.display();
        let now = identify(&path).map_err(|e| StoreError::Faulted {
            fault: Fault::Io,
            reason: format!("cannot stat the store file {p}: {e}; nothing was changed"),
        })?;
        if now == Some(ident) {
            return Ok(());
        }
        // Nothing planned under the old file's lock is committed yet.
        self.release_write();
        let reason = match now {
            None => match self.recover(&path) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
            Some(_) => match self.adopt(&path) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
        };
        Err(StoreError::Faulted {
            fault: Fault::Deleted,
            reason,
        })
    }

    /// Whether reading the open file still shows every committed change.
    /// A removed file with nothing in its place is current (nobody can
    /// commit anywhere else), but it is written back and switched to here
    /// too, so the data is safe before the next write comes. Another file
    /// at the path is adopted if its log continues this one's; if not
    /// (a backup put in place), changes committed there never reach this
    /// process: a follower that gets this error stops confirming its
    /// snapshot, so the proxy fails closed after `fleet.max_staleness_ms`,
    /// as when a database is unreachable.
    fn current(&mut self) -> Result<(), StoreError> {
        let (Some(path), Some(ident)) = (self.path.clone(), self.ident) else {
            return Ok(());
        };
        let now = match identify(&path) {
            Ok(Some(now)) if now == ident => return Ok(()),
            Ok(now) => now,
            // Cannot tell: reads of the open file go on.
            Err(_) => return Ok(()),
        };
        if !self.conn.is_autocommit() {
            // Inside a write: its commit deals with it.
            return Ok(());
        }
        if now.is_none() {
            let due = self.failed_at.is_none_or(|t| t.elapsed() >= RECOVER_RETRY);
            if due && self.recover(&path).is_err() {
                self.failed_at = Some(std::time::Instant::now());
            }
            return Ok(());
        }
        self.adopt(&path).map_err(|reason| StoreError::Faulted {
            fault: Fault::Deleted,
            reason,
        })
    }

    /// The path is empty: writes the data the open (removed) file holds back
    /// to it and switches every later read and write to that copy. Errors
    /// are the message for the refused write.
    fn recover(&mut self, path: &Path) -> Result<(), String> {
        let p = path.display();
        if let Some((version, copy)) = self.restored {
            // Written back earlier, but switching to it failed.
            return match stamp(path) {
                Ok(Some(now)) if now == copy => self.switch(path, version).map_err(|e| {
                    format!(
                        "the store file {p} was removed while this process had it open; nothing was changed. The process wrote the data it holds (version {version}) back to {p} but cannot open it ({e}): restart the gateway to use it, nothing is lost. Writes are refused until then, since they would go to the removed file and be lost at exit"
                    )
                }),
                // Opened (and so changed) by another process since, or
                // removed again: take it from there.
                Ok(now) => {
                    self.restored = None;
                    if now.is_some() {
                        self.adopt(path)
                    } else {
                        self.recover(path)
                    }
                }
                Err(e) => Err(format!(
                    "the store file {p} was removed while this process had it open, and it cannot tell what is at the path now ({e}); nothing was changed"
                )),
            };
        }
        let (version, copy) = match self.restore(path) {
            Ok(r) => r,
            // Another process on the same removed file wrote it back first.
            Err(_) if matches!(stamp(path), Ok(Some(_))) => return self.adopt(path),
            Err(e) => return Err(format!(
                "the store file {p} was removed while this process had it open, and writing its data back failed ({e}); nothing was changed. Writes are refused, since they would go to the removed file and be lost at exit: put the file back or free space for the copy (it is retried on the next write, and by the follower every few seconds)"
            )),
        };
        self.restored = Some((version, copy));
        self.recover(path)?;
        self.notices.push(format!(
            "the store file {p} was removed while this process had it open: wrote the data it held (version {version}) back to {p} and switched to it; nothing was lost"
        ));
        Ok(())
    }

    /// Another file is at the path. If its change log holds this store's
    /// last entry unchanged (the copy another process on the same removed
    /// file wrote back, or a newer backup of this same store), it is this
    /// store's history continued: switch to it and follow it. Anything else
    /// (an older backup, another store) is refused.
    fn adopt(&mut self, path: &Path) -> Result<(), String> {
        let p = path.display();
        let refused = format!(
            "the store file {p} was replaced by another file while this process had it open, whose change log does not continue this one's (an older backup, or another store); nothing was changed. Changes committed there never reach this process, so writes are refused and its snapshot is no longer confirmed (the proxy fails closed after fleet.max_staleness_ms). The data this process holds is only in the removed file it still has open: move the file at {p} away and this process writes its data back there at once; restarting instead uses the file now at {p} and discards what only this process holds"
        );
        let head = |conn: &Connection, at: Option<i64>| -> rusqlite::Result<Option<LogHead>> {
            conn.query_row(
                "SELECT version, at_ms, actor, kind, subject FROM changes
                 WHERE version = COALESCE(?1, (SELECT MAX(version) FROM changes))",
                [at],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
        };
        let ours = head(&self.conn, None).map_err(|e| format!("{refused} ({e})"))?;
        // A file moved onto the path while this one is in use has this
        // one's WAL beside it: SQLite would read it as that file's own.
        // (A copy just written back is in rollback-journal mode: its
        // removed file's WAL is moved aside below instead.)
        if self.wal_ident.is_some()
            && journal_mode_byte(path) != Some(1)
            && identify(&beside(path, "-wal")).ok().flatten() == self.wal_ident
        {
            return Err(format!(
                "the store file {p} was replaced by another file while this process had it open, and the WAL beside it ({p}-wal) is this process's, which SQLite would read as the new file's; nothing was changed. Writes are refused and the snapshot is no longer confirmed (the proxy fails closed after fleet.max_staleness_ms). To use the new file: stop every process on the store, remove {p}-wal and {p}-shm, then start them"
            ));
        }
        // A copy just written back may still have the removed file's WAL
        // beside it, which SQLite would read as the copy's.
        set_aside_foreign_wal(path).map_err(|e| format!("{refused} ({e})"))?;
        let theirs = (|| {
            let conn =
                Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(db)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(db)?;
            head(&conn, Some(ours.as_ref().map_or(0, |h| h.0))).map_err(db)
        })()
        .map_err(|e| format!("{refused} ({e})"))?;
        if ours.is_none() || ours != theirs {
            return Err(refused);
        }
        let version = ours.map_or(0, |h| h.0 as u64);
        self.switch(path, version)
            .map_err(|e| format!("{refused} ({e})"))?;
        self.notices.push(format!(
            "the store file {p} was replaced by another file while this process had it open; its change log continues this one's (version {version}), so this process switched to it"
        ));
        Ok(())
    }

    /// Replaces this store's connection with one to the file now at `path`,
    /// which holds at least `version`. The removed file's WAL is moved
    /// aside first (the copy is in rollback-journal mode, which
    /// [`SqliteStore::connect`] takes as that sign). Closing a connection
    /// to the removed file later neither checkpoints nor deletes
    /// `<path>-wal` by name (now the new file's): SQLite skips both for a
    /// file that has moved (`SQLITE_FCNTL_HAS_MOVED`), which the restart
    /// test in `tests/store_faults.rs` relies on.
    fn switch(&mut self, path: &Path, version: u64) -> Result<(), String> {
        // Never create: had the file gone again meanwhile, an empty store
        // at the path would be what the next start opens.
        set_aside_foreign_wal(path).map_err(|e| e.to_string())?;
        let mut next = Self::configure(Self::connect(path, false).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        next.migrate().map_err(|e| e.to_string())?;
        next.set_path(path).map_err(|e| e.to_string())?;
        let (head, _) = Store::version(&mut next).map_err(|e| e.to_string())?;
        if head < version {
            return Err(format!(
                "it holds version {head}, behind the {version} this process had"
            ));
        }
        // Whatever the old connection had open is rolled back as it closes.
        self.release_write();
        std::mem::swap(&mut self.conn, &mut next.conn);
        self.ident = next.ident;
        self.wal_ident = next.wal_ident;
        self.restored = None;
        self.failed_at = None;
        // Closes the connection to the removed (or replaced) file.
        drop(next);
        Ok(())
    }

    /// Writes what the open connection still reads (the removed file and its
    /// WAL) to a new file at `path`: `VACUUM INTO` a temporary file beside
    /// it, synced, then linked to `path` only if nothing appeared there
    /// meanwhile. Returns its version and identity.
    fn restore(&mut self, path: &Path) -> Result<(u64, Stamp), String> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or("the path names no file")?;
        let tmp = dir.join(format!(
            ".{}.restore-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            let target = tmp.to_str().ok_or("the path is not UTF-8")?;
            self.conn
                .execute("VACUUM INTO ?1", [target])
                .map_err(|e| e.to_string())?;
            let copy =
                Connection::open_with_flags(&tmp, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| e.to_string())?;
            let version: i64 = copy
                .query_row("SELECT COALESCE(MAX(version), 0) FROM changes", [], |r| {
                    r.get(0)
                })
                .map_err(|e| e.to_string())?;
            drop(copy);
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())?;
            // A link, not a rename: it fails if a file appeared at the path.
            std::fs::hard_link(&tmp, path).map_err(|e| e.to_string())?;
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            let copy = stamp(path)
                .map_err(|e| e.to_string())?
                .ok_or("the copy vanished")?;
            Ok((version as u64, copy))
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }

    /// The pepper fingerprint recorded in the store, if any.
    fn stored_fingerprint(&self) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'pepper_fingerprint'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    /// A store that lives in memory only: for tests and `check` dry runs.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    fn init(conn: Connection) -> Result<SqliteStore, StoreError> {
        let mut store = Self::configure(conn)?;
        store.migrate()?;
        Ok(store)
    }

    fn configure(conn: Connection) -> Result<SqliteStore, StoreError> {
        // First: switching to WAL takes the file's lock, and other
        // processes may be opening it at the same moment.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        // Two connections switching a new file at once can each hold the
        // read lock the other must wait out: SQLite then answers "busy" to
        // one of them at once, without its busy handler. Retried for as long
        // as the busy timeout.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                result => break result.map_err(db)?,
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        Ok(SqliteStore {
            conn,
            path: None,
            ident: None,
            wal_ident: None,
            restored: None,
            failed_at: None,
            notices: Vec::new(),
            writing: false,
        })
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let newer = |current: usize| {
            StoreError::Incompatible(format!(
                "schema version {current} is newer than this scopegate understands ({}); upgrade scopegate",
                MIGRATIONS.len()
            ))
        };
        let current = self.schema_version()?;
        if current > MIGRATIONS.len() {
            return Err(newer(current));
        }
        if current == MIGRATIONS.len() {
            // Up to date: no write lock (the file may be read-only).
            return Ok(());
        }
        // Several processes may open one file at once (one per core, or a
        // fleet restarted together): each step takes the write lock first
        // and reads the version under it, so a step another process
        // applied meanwhile is not applied twice ("table already exists").
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db)?;
            let current: usize = tx
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(db)?;
            if current > MIGRATIONS.len() {
                return Err(newer(current));
            }
            let Some(sql) = MIGRATIONS.get(current) else {
                return Ok(());
            };
            tx.execute_batch(sql).map_err(db)?;
            tx.pragma_update(None, "user_version", current + 1)
                .map_err(db)?;
            tx.commit().map_err(db)?;
        }
    }

    /// The schema version this file is at.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db)
    }
}

fn access_json(access: &BTreeMap<String, Access>) -> String {
    serde_json::to_string(access).expect("a map of strings serialises")
}

fn parse_access(text: &str) -> Result<BTreeMap<String, Access>, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Incompatible(format!("bad access map in store: {e}")))
}

fn parse<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T, StoreError> {
    text.parse().map_err(StoreError::Incompatible)
}

const KEY_COLUMNS: &str =
    "id, digest, org, user, user_uid, org_wide, domains, expires_at, name, created_at, revoked_at, locator, lifecycle, server, server_access";

const USER_COLUMNS: &str = "org, id, role, status, access, uid, servers";

/// A member's server access as the store keeps it: JSON, or `NULL` for none.
pub(crate) fn servers_json(servers: &BTreeMap<String, Access>) -> Option<String> {
    (!servers.is_empty()).then(|| access_json(servers))
}

/// A key's server binding from its two columns.
pub(crate) fn parse_binding(
    server: Option<String>,
    access: Option<&str>,
) -> Result<Option<crate::KeyServer>, StoreError> {
    match (server, access) {
        (None, _) => Ok(None),
        (Some(name), Some(a)) => Ok(Some(crate::KeyServer {
            name,
            access: parse(a)?,
        })),
        (Some(name), None) => Err(StoreError::Incompatible(format!(
            "key bound to server {name} has no server access level"
        ))),
    }
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<Result<KeyRecord, StoreError>> {
    let digest: Vec<u8> = row.get(1)?;
    let org_wide: bool = row.get(5)?;
    let domains: String = row.get(6)?;
    let lifecycle: Option<String> = row.get(12)?;
    let server: Option<String> = row.get(13)?;
    let server_access: Option<String> = row.get(14)?;
    let rec = (|| {
        let digest: [u8; 32] = digest
            .try_into()
            .map_err(|_| StoreError::Incompatible("digest is not 32 bytes".into()))?;
        let scope = if org_wide {
            KeyScope::OrgWide
        } else {
            KeyScope::Domains(parse_access(&domains)?)
        };
        let lifecycle = crate::model::parse_lifecycle(lifecycle.as_deref())
            .map_err(StoreError::Incompatible)?;
        let server = parse_binding(server, server_access.as_deref())?;
        Ok::<_, StoreError>((Digest(digest), scope, lifecycle, server))
    })();
    Ok(match rec {
        Err(e) => Err(e),
        Ok((digest, scope, lifecycle, server)) => Ok(KeyRecord {
            id: row.get(0)?,
            digest,
            locator: row
                .get::<_, Option<i64>>(11)?
                .map_or_else(|| Locator::of_digest(&digest), |l| Locator(l as u64)),
            org: row.get(2)?,
            user: row.get(3)?,
            user_uid: row.get::<_, i64>(4)? as u64,
            scope,
            expires_at: row.get(7)?,
            name: row.get(8)?,
            created_at: row.get(9)?,
            revoked_at: row.get(10)?,
            lifecycle,
            server,
        }),
    })
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<Result<UserRecord, StoreError>> {
    let org: String = row.get(0)?;
    let id: String = row.get(1)?;
    let role: String = row.get(2)?;
    let status: String = row.get(3)?;
    let access: String = row.get(4)?;
    let uid: i64 = row.get(5)?;
    let servers: Option<String> = row.get(6)?;
    Ok((|| {
        Ok(UserRecord {
            org,
            id,
            role: parse::<Role>(&role)?,
            status: parse::<Status>(&status)?,
            access: parse_access(&access)?,
            servers: servers
                .as_deref()
                .map_or(Ok(BTreeMap::new()), parse_access)?,
            uid: uid as u64,
        })
    })())
}

fn put_user(tx: &Connection, u: &UserRecord) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO users (org, id, role, status, access, uid, servers)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (org, id) DO UPDATE SET role = ?3, status = ?4, access = ?5, uid = ?6,
             servers = ?7",
        params![
            u.org,
            u.id,
            u.role.as_str(),
            u.status.as_str(),
            access_json(&u.access),
            u.uid as i64,
            servers_json(&u.servers)
        ],
    )?;
    Ok(())
}

fn revoke_user_keys(tx: &Connection, org: &str, user: &str, at: i64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE keys SET revoked_at = ?3 WHERE org = ?1 AND user = ?2 AND revoked_at IS NULL",
        params![org, user, at],
    )?;
    Ok(())
}

/// Inserts one key (a prepared statement cached on the connection, so a
/// bulk import prepares it once).
fn insert_key(tx: &Connection, k: &KeyRecord) -> rusqlite::Result<()> {
    let (org_wide, domains) = match &k.scope {
        KeyScope::OrgWide => (true, "{}".to_string()),
        KeyScope::Domains(d) => (false, access_json(d)),
    };
    tx.prepare_cached(&format!(
        "INSERT INTO keys ({KEY_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    ))?
    .execute(params![
        k.id,
        &k.digest.0[..],
        k.org,
        k.user,
        k.user_uid as i64,
        org_wide,
        domains,
        k.expires_at,
        k.name,
        k.created_at,
        k.revoked_at,
        k.locator.0 as i64,
        crate::model::lifecycle_json(&k.lifecycle),
        k.server.as_ref().map(|s| s.name.as_str()),
        k.server.as_ref().map(|s| s.access.as_str())
    ])?;
    Ok(())
}

/// A key as a transaction sees it, for changes that rewrite part of one.
fn self_key(tx: &Connection, id: &str) -> Result<KeyRecord, StoreError> {
    tx.query_row(
        &format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"),
        [id],
        key_from_row,
    )
    .optional()
    .map_err(db)?
    .ok_or_else(|| StoreError::Database(format!("key {id} is not in the store")))?
}

/// Wakes a follower when another connection commits to the file:
/// `PRAGMA data_version` changes exactly then, and reading it costs a
/// shared-memory read in WAL mode, so it is probed every few milliseconds.
struct DataVersionWatcher {
    conn: Connection,
    last: i64,
    /// The file's path and (device, inode): once the path names another
    /// file (a removed one written back), this connection watches nothing.
    path: std::path::PathBuf,
    ident: Option<(u64, u64)>,
}

/// How often [`DataVersionWatcher`] probes: propagation between processes on
/// one file is bounded by this, not by the poll interval.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

impl DataVersionWatcher {
    fn open(path: &Path) -> Result<DataVersionWatcher, StoreError> {
        let conn = SqliteStore::connect(path, false)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        let last = Self::probe(&conn)?;
        Ok(DataVersionWatcher {
            conn,
            last,
            path: path.to_path_buf(),
            ident: identify(path).ok().flatten(),
        })
    }

    fn probe(conn: &Connection) -> Result<i64, StoreError> {
        conn.pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(db)
    }
}

impl Watcher for DataVersionWatcher {
    fn wait(&mut self, timeout: std::time::Duration) -> Result<bool, StoreError> {
        let until = std::time::Instant::now() + timeout;
        loop {
            if identify(&self.path).ok().flatten() != self.ident {
                return Err(StoreError::Faulted {
                    fault: Fault::Deleted,
                    reason: format!(
                        "the store file {} was removed or replaced",
                        self.path.display()
                    ),
                });
            }
            let now = Self::probe(&self.conn)?;
            if now != self.last {
                self.last = now;
                return Ok(true);
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            std::thread::sleep(left.min(PROBE_EVERY));
        }
    }
}

/// The watcher of a store nobody else can write to.
struct Sleeper;

impl Watcher for Sleeper {
    fn wait(&mut self, timeout: std::time::Duration) -> Result<bool, StoreError> {
        std::thread::sleep(timeout);
        Ok(false)
    }
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn check_pepper(&mut self, fingerprint: &str) -> Result<(), StoreError> {
        match self.stored_fingerprint()? {
            Some(s) if s == fingerprint => Ok(()),
            Some(_) => Err(StoreError::WrongPepper),
            None => {
                self.conn
                    .execute(
                        "INSERT INTO meta (name, value) VALUES ('pepper_fingerprint', ?1)",
                        [fingerprint],
                    )
                    .map_err(db)?;
                Ok(())
            }
        }
    }

    // Savepoints rather than BEGIN/COMMIT: outside a transaction one starts
    // a deferred read transaction; inside a write queued by
    // `begin_write` it nests.
    fn begin_read(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("SAVEPOINT snapshot_read")
            .map_err(db)
    }

    fn end_read(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("RELEASE snapshot_read").map_err(db)
    }

    fn begin_write(&mut self) -> Result<(), StoreError> {
        // Only fairness rides on this (the commit checks the version): when
        // the lock cannot be had, or the file is no longer the one opened
        // (the commit diagnoses that), go on without it.
        if self.writing || !self.conn.is_autocommit() || !self.same_file() {
            return Ok(());
        }
        // Waits for another process's writer up to the busy timeout.
        self.writing = self.conn.execute_batch("BEGIN IMMEDIATE").is_ok();
        Ok(())
    }

    fn end_write(&mut self) -> Result<(), StoreError> {
        self.release_write();
        Ok(())
    }

    fn check_schema(&mut self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        if found > MIGRATIONS.len() {
            return Err(StoreError::NewerSchema {
                found,
                known: MIGRATIONS.len(),
            });
        }
        Ok(())
    }

    fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    fn version(&mut self) -> Result<(u64, i64), StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0), COALESCE(MAX(at_ms), 0) FROM changes",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .map_err(db)
    }

    fn load_orgs(&mut self) -> Result<Vec<(String, u64, Vec<Domain>)>, StoreError> {
        let mut orgs: BTreeMap<String, (u64, Vec<Domain>)> = BTreeMap::new();
        let mut stmt = self.conn.prepare("SELECT id, uid FROM orgs").map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db)?;
        for row in rows {
            let (id, uid) = row.map_err(db)?;
            orgs.insert(id, (uid as u64, Vec::new()));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT org, name, numeric_id FROM domains ORDER BY org, name")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Domain {
                        name: r.get(1)?,
                        id: r.get::<_, Option<i64>>(2)?.map(|i| i as u64),
                    },
                ))
            })
            .map_err(db)?;
        for row in rows {
            let (org, d) = row.map_err(db)?;
            if let Some((_, list)) = orgs.get_mut(&org) {
                list.push(d);
            }
        }
        Ok(orgs
            .into_iter()
            .map(|(id, (uid, d))| (id, uid, d))
            .collect())
    }

    fn load_servers(&mut self) -> Result<Vec<(String, Server)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT org, name, numeric_id FROM servers ORDER BY org, name")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Server {
                        name: r.get(1)?,
                        id: r.get::<_, i64>(2)? as u64,
                    },
                ))
            })
            .map_err(db)?;
        rows.map(|r| r.map_err(db)).collect()
    }

    fn load_users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {USER_COLUMNS} FROM users"))
            .map_err(db)?;
        let rows = stmt.query_map([], user_from_row).map_err(db)?;
        rows.map(|r| r.map_err(db)?).collect()
    }

    fn for_each_key(&mut self, f: &mut dyn FnMut(KeyRecord)) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {KEY_COLUMNS} FROM keys"))
            .map_err(db)?;
        let rows = stmt.query_map([], key_from_row).map_err(db)?;
        for row in rows {
            f(row.map_err(db)??);
        }
        Ok(())
    }

    fn commit(
        &mut self,
        change: &Change,
        audit: &Audit<'_>,
        expected: u64,
    ) -> Result<u64, StoreError> {
        // (A moved file: `writable` gives the write lock back before it
        // writes the data back or switches.)
        self.writable()?;
        // IMMEDIATE takes the file's write lock before reading the head of
        // the log, so no other process can commit between the check and
        // ours (already held when `begin_write` queued this write).
        if !self.writing {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
            self.writing = true;
        }
        let result = self
            .commit_locked(change, audit, expected)
            .and_then(|v| self.conn.execute_batch("COMMIT").map_err(db).map(|()| v));
        self.release_write();
        result
    }

    fn changes_since(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, u64), StoreError> {
        self.current()?;
        // One read transaction (nested in a queued write), so the head and
        // the entries agree.
        let tx = self.conn.savepoint().map_err(db)?;
        let head: i64 = tx
            .query_row("SELECT COALESCE(MAX(version), 0) FROM changes", [], |r| {
                r.get(0)
            })
            .map_err(db)?;
        let mut entries = Vec::new();
        if head as u64 > after {
            let mut stmt = tx
                .prepare(
                    "SELECT version, at_ms, payload FROM changes WHERE version > ?1
                     ORDER BY version LIMIT ?2",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![after as i64, limit as i64], |r| {
                    Ok(LogEntry {
                        version: r.get::<_, i64>(0)? as u64,
                        at_ms: r.get(1)?,
                        change: r
                            .get::<_, Option<String>>(2)?
                            .as_deref()
                            .and_then(Change::from_payload),
                    })
                })
                .map_err(db)?;
            for row in rows {
                entries.push(row.map_err(db)?);
            }
        }
        Ok((entries, head as u64))
    }

    fn watcher(&self) -> Result<Box<dyn Watcher>, StoreError> {
        match &self.path {
            // Never a connection to another file at the path: it would share
            // the WAL of the removed one this process still has open.
            Some(path) if identify(path).ok().flatten() != self.ident => Err(StoreError::Faulted {
                fault: Fault::Deleted,
                reason: format!(
                    "the store file {} was removed or replaced while this process had it open",
                    path.display()
                ),
            }),
            Some(path) => Ok(Box::new(DataVersionWatcher::open(path)?)),
            // Nobody else can write to a store in memory.
            None => Ok(Box::new(Sleeper)),
        }
    }

    fn prune_payloads(&mut self, version: u64) -> Result<u64, StoreError> {
        self.writable()?;
        let n = self
            .conn
            .execute(
                "UPDATE changes SET payload = NULL WHERE version <= ?1 AND payload IS NOT NULL",
                [version as i64],
            )
            .map_err(db)?;
        Ok(n as u64)
    }

    fn get_key(&mut self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"),
                [id],
                key_from_row,
            )
            .optional()
            .map_err(db)?
            .transpose()
    }

    fn list_keys(&mut self, org: &str, user: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE org = ?1 AND (?2 IS NULL OR user = ?2)
                 ORDER BY created_at, id"
            ))
            .map_err(db)?;
        let rows = stmt
            .query_map(params![org, user], key_from_row)
            .map_err(db)?;
        rows.map(|r| r.map_err(db)?).collect()
    }

    fn list_users(&mut self, org: &str) -> Result<Vec<UserRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE org = ?1 ORDER BY id"
            ))
            .map_err(db)?;
        let rows = stmt.query_map([org], user_from_row).map_err(db)?;
        rows.map(|r| r.map_err(db)?).collect()
    }

    fn org_rate_limits(&mut self) -> Result<Vec<(String, RateLimit)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, rate_limit FROM orgs WHERE rate_limit IS NOT NULL")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (org, json) = row.map_err(db)?;
            let limit = serde_json::from_str(&json).map_err(|e| {
                StoreError::Incompatible(format!("bad rate limit of organisation {org}: {e}"))
            })?;
            out.push((org, limit));
        }
        Ok(out)
    }

    fn add_usage(&mut self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        self.writable()?;
        let tx = self.conn.transaction().map_err(db)?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO key_usage (id, org, last_used_at, requests, grace_uses)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (id) DO UPDATE SET
                         last_used_at = MAX(last_used_at, ?3),
                         requests = requests + ?4,
                         grace_uses = grace_uses + ?5",
                )
                .map_err(db)?;
            for u in batch {
                stmt.execute(params![
                    u.id,
                    u.org,
                    u.last_used_at,
                    u.requests as i64,
                    u.grace_uses as i64
                ])
                .map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    fn usage(&mut self, org: &str, id: Option<&str>) -> Result<Vec<(String, Usage)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, last_used_at, requests, grace_uses FROM key_usage
                 WHERE org = ?1 AND (?2 IS NULL OR id = ?2)",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![org, id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Usage {
                        last_used_at: r.get(1)?,
                        requests: r.get::<_, i64>(2)? as u64,
                        grace_uses: r.get::<_, i64>(3)? as u64,
                    },
                ))
            })
            .map_err(db)?;
        rows.map(|r| r.map_err(db)).collect()
    }

    fn diagnose(&mut self, e: StoreError) -> StoreError {
        let StoreError::Faulted { fault, reason } = e else {
            return e;
        };
        let Some(path) = self.path.clone() else {
            return StoreError::Faulted { fault, reason };
        };
        if fault == Fault::Deleted {
            // Told by `writable` itself (which wrote the data back if it
            // could): nothing to add, and no second copy to try.
            return StoreError::Faulted { fault, reason };
        }
        // A removed file is the news, whatever SQLite said.
        if let Err(removed) = self.writable() {
            return removed;
        }
        let fault = match fault {
            Fault::Io | Fault::ReadOnly => probe_dir(&path).unwrap_or(fault),
            other => other,
        };
        let p = path.display();
        let reason = match fault {
            Fault::Full => format!(
                "the filesystem holding the store file {p} is full ({reason}); nothing was changed: free space there and try again (no restart needed)"
            ),
            Fault::ReadOnly => format!(
                "the store file {p} cannot be written: it or its filesystem is read-only ({reason}); nothing was changed: make it writable and try again (no restart needed; a filesystem the kernel turned read-only after an error must be repaired first)"
            ),
            Fault::Io | Fault::Deleted => format!(
                "I/O error on the store file {p} ({reason}); nothing was changed: check the disk and the kernel log, then try again"
            ),
        };
        StoreError::Faulted { fault, reason }
    }
}
