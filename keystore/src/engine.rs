//! [`KeyStore`]: the current snapshot for readers, and the one writer that
//! validates, commits and publishes each change in that order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, Guard};

use crate::model::{
    canonical_domain, canonical_server, Access, Domain, KeyMeta, KeyRecord, KeyScope, KeyServer,
    Role, Server, Status, UserRecord,
};
use crate::secret::{self, Hashed, Pepper};
use crate::snapshot::{
    key_entry, org_entry, user_entry, Interner, KeyEntry, KeySide, OrgEntry, Policy, Refusal,
    Snapshot, Target, UsageCell, UserEntry, UserKey,
};
use crate::store::{Audit, Change, Store, StoreError};

/// What kind of mistake an [`Error`] is, so the admin API can pick a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input itself is wrong (bad name, bad domain): 400.
    Invalid,
    /// The organisation, user or key does not exist: 404.
    NotFound,
    /// The change would break an invariant of the current state (last owner, duplicate key): 409.
    Conflict,
    /// The change breaks one of the guide's creation rules: 422.
    Rule,
    /// The store failed; nothing changed: 500.
    Store,
    /// The store cannot be reached right now; nothing changed: 503.
    Unavailable,
}

/// A refused or failed change. The message says which rule was broken and
/// never contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Class of error.
    pub kind: ErrorKind,
    /// Stable machine-readable code, e.g. `last_owner`.
    pub code: &'static str,
    /// Human explanation.
    pub message: String,
    /// For an error of the store, which one, for metrics: `full`,
    /// `read_only`, `io`, `deleted` (faults of a SQLite file),
    /// `unavailable`, `indeterminate`, `busy`, `upgraded` or `error`.
    pub store: Option<&'static str>,
}

impl Error {
    fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Error {
        Error {
            kind,
            code,
            message: message.into(),
            store: None,
        }
    }
    fn invalid(code: &'static str, m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, code, m)
    }
    fn rule(code: &'static str, m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Rule, code, m)
    }
    fn not_found(code: &'static str, m: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, code, m)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        let store = match &e {
            StoreError::Faulted { fault, .. } => fault.as_str(),
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Indeterminate(_) => "indeterminate",
            StoreError::Behind { .. } => "busy",
            StoreError::NewerSchema { .. } => "upgraded",
            _ => "error",
        };
        let mut error = match e {
            StoreError::Faulted { .. } => {
                Error::new(ErrorKind::Unavailable, "store_unavailable", e.to_string())
            }
            StoreError::Unavailable(_) => Error::new(
                ErrorKind::Unavailable,
                "store_unavailable",
                format!("{e}; nothing was changed, try again once the database is back"),
            ),
            StoreError::Indeterminate(_) => Error::new(
                ErrorKind::Unavailable,
                "store_unavailable",
                format!(
                    "{e}: the change may or may not have been made; look it up before trying again"
                ),
            ),
            StoreError::Behind { .. } => Error::new(
                ErrorKind::Unavailable,
                "store_busy",
                format!(
                    "{e}; other instances kept committing first, nothing was changed, try again"
                ),
            ),
            StoreError::NewerSchema { .. } => {
                Error::new(ErrorKind::Unavailable, "store_upgraded", e.to_string())
            }
            _ => Error::new(ErrorKind::Store, "store_error", e.to_string()),
        };
        error.store = Some(store);
        error
    }
}

/// The result of a successful change: its value and the version that now
/// enforces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied<T> {
    /// What the change produced.
    pub value: T,
    /// The snapshot version published by the change (the current one if the
    /// call changed nothing).
    pub version: u64,
}

/// A domain as given to [`KeyStore::put_org`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInput {
    /// Any spelling; canonicalised.
    pub name: String,
    /// Optional numeric id.
    pub id: Option<u64>,
}

/// A user as given to [`KeyStore::put_user`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInput {
    /// New role.
    pub role: Role,
    /// Member access (must be empty for owners and admins).
    pub access: BTreeMap<String, Access>,
    /// `None` keeps the current status (active for a new user).
    pub status: Option<Status>,
}

/// A key to create (or import, when `secret` is given).
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    /// Creating user.
    pub user: String,
    /// Explicit domains; `None` = the default scope of the guide.
    pub domains: Option<Vec<String>>,
    /// Organisation-wide key (owners and admins only).
    pub org_wide: bool,
    /// Level on the chosen domains; `None` = read_write.
    pub access: Option<Access>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Label.
    pub name: Option<String>,
    /// An existing secret to import (any printable format); `None` = generate one.
    pub secret: Option<String>,
    /// The key's own rate limit; `None` = the organisation's default.
    pub rate_limit: Option<crate::RateLimit>,
    /// A narrower scope to try (domain -> level); see [`crate::KeyLifecycle::shadow`].
    pub shadow: Option<BTreeMap<String, Access>>,
    /// Bind the key to this server of the organisation (a server token);
    /// its creator must have read_write on it now.
    pub server: Option<String>,
    /// The level the key grants on its server; `None` = read_write.
    pub server_access: Option<Access>,
}

/// What `PATCH /v1/keys/{id}` changes; a field left `None` stays as it is.
#[derive(Clone, Debug, Default)]
pub struct KeyPatch {
    /// `Some(None)` removes the key's own limit.
    pub rate_limit: Option<Option<crate::RateLimit>>,
    /// `Some(None)` removes the shadow scope.
    pub shadow: Option<Option<BTreeMap<String, Access>>>,
}

/// A created key: the only time its secret is ever available.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedKey {
    /// The secret, shown once.
    pub secret: String,
    /// Metadata as the admin API shows it.
    pub meta: KeyMeta,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("secret", &"<redacted>")
            .field("meta", &self.meta)
            .finish()
    }
}

/// Counts for `/v1/status` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Snapshot version.
    pub version: u64,
    /// Organisations.
    pub orgs: usize,
    /// Users.
    pub users: usize,
    /// Keys not revoked.
    pub keys: usize,
}

/// The identity of an admitted request, owned (for the CLI and tests; the
/// gateway uses the borrowed [`crate::Principal`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Public key id.
    pub key_id: String,
    /// Organisation.
    pub org: String,
    /// Creating user.
    pub user: String,
    /// Creator's role now.
    pub role: Role,
    /// Effective scope header value.
    pub scope: String,
}

/// A decision with the snapshot version that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The version that decided.
    pub version: u64,
    /// Admitted with an identity, or refused with the reason.
    pub outcome: Result<Identity, Refusal>,
}

/// The access data: a lock-free snapshot for readers, a serialised writer
/// that commits to the store before publishing.
pub struct KeyStore {
    /// Derives digests; never stored.
    pepper: Pepper,
    /// What readers load; replaced whole by the writer.
    current: ArcSwap<Snapshot>,
    /// The store and the interner, behind the single-writer lock.
    writer: Mutex<Writer>,
    /// Freshness and follower counters, readable without the writer lock.
    pub(crate) fresh: Freshness,
    /// The store's kind, readable without the writer lock (which a follower
    /// may hold while its store does not answer).
    kind: &'static str,
}

/// When this instance last confirmed, against the store, that it holds every
/// committed change; and what following the log has cost. Read by the proxy
/// on every request (one atomic load) and by metrics.
pub(crate) struct Freshness {
    /// The clock the confirmations are measured on (monotonic).
    epoch: std::time::Instant,
    /// Microseconds after `epoch` at which the last confirming read *started*
    /// (a read that started earlier proves nothing about commits after it).
    confirmed_us: AtomicU64,
    /// Log entries applied from other writers.
    pub(crate) applied: AtomicU64,
    /// Whole-snapshot reloads (log pruned past what this instance held).
    pub(crate) reloads: AtomicU64,
    /// Wake-up connections reopened after a loss.
    pub(crate) reconnects: AtomicU64,
    /// Times the store switched to the file now at its path (a removed
    /// SQLite file written back, or another file that continues its log).
    pub(crate) switches: AtomicU64,
}

impl Freshness {
    fn new() -> Freshness {
        Freshness {
            epoch: std::time::Instant::now(),
            confirmed_us: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            switches: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Records a confirmation by a read that started at `started_us`.
    fn confirm(&self, started_us: u64) {
        self.confirmed_us.fetch_max(started_us, Ordering::Release);
    }
}

/// What [`KeyStore::follow`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Followed {
    /// Log entries applied.
    pub applied: u64,
    /// Whether the whole snapshot was reloaded instead.
    pub reloaded: bool,
    /// The version now enforced.
    pub version: u64,
}

/// How many log entries one catch-up read asks for.
const CATCH_UP_BATCH: usize = 10_000;
/// How often a write is planned again after other instances committed first.
const WRITE_ATTEMPTS: usize = 8;

/// What only the writer touches.
struct Writer {
    /// Durable storage.
    store: Box<dyn Store>,
    /// Domain and name interner shared by every snapshot version, so names
    /// compare by pointer on the hot path.
    intern: Interner,
}

fn lock(m: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    // A panic in another writer cannot leave the store half-written (SQLite
    // rolls back), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn valid_org_id(org: &str) -> Result<(), Error> {
    let ok = !org.is_empty()
        && org.len() <= 128
        && org
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_org_id",
            format!("organisation id {org:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// Canonical user id: an email address, lowercased.
fn canonical_user_id(user: &str) -> Result<String, Error> {
    let ok = !user.is_empty()
        && user.len() <= 254
        && user.contains('@')
        && !user.starts_with('@')
        && !user.ends_with('@')
        && user.chars().all(|c| {
            !c.is_whitespace()
                && !c.is_control()
                && !matches!(c, '/' | '\\' | ',' | '"' | '<' | '>')
        });
    if ok {
        Ok(user.to_lowercase())
    } else {
        Err(Error::invalid(
            "invalid_user_id",
            format!("user id {user:?} must be an email address"),
        ))
    }
}

fn canonical(domain: &str) -> Result<String, Error> {
    canonical_domain(domain).map_err(|e| Error::invalid("invalid_domain", e.to_string()))
}

/// Canonical server name, or the 422 that says what a name may be.
fn server_name(name: &str) -> Result<String, Error> {
    canonical_server(name).ok_or_else(|| {
        Error::rule(
            "invalid_server_name",
            format!(
                "server name {:?} must be 1-64 characters of letters, digits, '.', '_' or '-'",
                name.chars().take(100).collect::<String>()
            ),
        )
    })
}

impl KeyStore {
    /// Opens a store, checks the pepper against it and builds the first snapshot.
    pub fn open(mut store: Box<dyn Store>, pepper: Pepper) -> Result<KeyStore, Error> {
        store.check_pepper(&pepper.fingerprint())?;
        let mut intern = Interner::default();
        let fresh = Freshness::new();
        let started = fresh.now_us();
        let snapshot = load(store.as_mut(), &mut intern, None)?;
        fresh.confirm(started);
        Ok(KeyStore {
            kind: store.kind(),
            pepper,
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(Writer { store, intern }),
            fresh,
        })
    }

    /// Opens the store `location` names: a `postgres://` (or
    /// `postgresql://`) URL for a fleet's shared database, anything else a
    /// SQLite file path.
    pub fn open_location(location: &str, pepper: Pepper) -> Result<KeyStore, Error> {
        if crate::postgres::is_url(location) {
            let store = crate::postgres::PostgresStore::connect(location, &pepper.fingerprint())?;
            KeyStore::open(Box::new(store), pepper)
        } else {
            KeyStore::open_sqlite(std::path::Path::new(location), pepper)
        }
    }

    /// `sqlite` or `postgres`.
    pub fn store_kind(&self) -> &'static str {
        self.kind
    }

    /// Time since this instance last confirmed, against the store, that it
    /// holds every committed change. One atomic load and a clock read.
    #[inline]
    pub fn staleness(&self) -> std::time::Duration {
        let confirmed = self.fresh.confirmed_us.load(Ordering::Acquire);
        std::time::Duration::from_micros(self.fresh.now_us().saturating_sub(confirmed))
    }

    /// (log entries applied from other writers, whole reloads, wake-up
    /// reconnects, switches to the file now at the store's path) since start.
    pub fn follow_counters(&self) -> (u64, u64, u64, u64) {
        (
            self.fresh.applied.load(Ordering::Relaxed),
            self.fresh.reloads.load(Ordering::Relaxed),
            self.fresh.reconnects.load(Ordering::Relaxed),
            self.fresh.switches.load(Ordering::Relaxed),
        )
    }

    /// Brings the snapshot up to the store's change log: applies every entry
    /// after the current version in order and publishes once, or reloads the
    /// whole snapshot when an entry's payload is gone or a version is
    /// missing (readers keep the old snapshot until the new one is swapped
    /// in). On success the instance is confirmed fresh as of the moment the
    /// read started.
    pub fn follow(&self) -> Result<Followed, Error> {
        let mut guard = lock(&self.writer);
        self.catch_up(&mut guard)
    }

    /// What happened to the store that the operator must hear of though
    /// nothing failed (see [`Store::take_notices`]); each is returned once.
    pub fn store_notices(&self) -> Vec<String> {
        let notices = lock(&self.writer).store.take_notices();
        self.fresh
            .switches
            .fetch_add(notices.len() as u64, Ordering::Relaxed);
        notices
    }

    /// Opens a new wake-up source on the store for a follower.
    pub fn watcher(&self) -> Result<Box<dyn crate::store::Watcher>, Error> {
        Ok(lock(&self.writer).store.watcher()?)
    }

    /// Drops the change payloads at or below `version` from the store's log
    /// (the audit columns stay); instances behind that point reload.
    pub fn prune_log(&self, version: u64) -> Result<u64, Error> {
        Ok(lock(&self.writer).store.prune_payloads(version)?)
    }

    fn catch_up(&self, guard: &mut Writer) -> Result<Followed, Error> {
        let Writer { store, intern } = guard;
        let started = self.fresh.now_us();
        let cur = self.current.load_full();
        let mut next: Option<Snapshot> = None;
        let mut applied = 0;
        loop {
            let at = next.as_ref().map_or(cur.version, |s| s.version);
            let (entries, head) = store.changes_since(at, CATCH_UP_BATCH)?;
            if head > at {
                // Changes to apply (or reload): written by a version this
                // one can read correctly?
                store.check_schema()?;
            }
            if head < cur.version {
                return Err(StoreError::Incompatible(format!(
                    "the store's change log is at version {head}, behind the {} this instance holds: was the database restored from an older backup? refusing to follow it",
                    cur.version
                ))
                .into());
            }
            let mut expect = at + 1;
            // A head past `at` with no entry after it is a gap too.
            let mut complete = !(entries.is_empty() && head > at);
            for e in &entries {
                let Some(change) = e.change.as_ref().filter(|_| e.version == expect) else {
                    complete = false;
                    break;
                };
                let snap = next.get_or_insert_with(|| (*cur).clone());
                apply(snap, change, intern);
                snap.version = e.version;
                snap.changed_at_ms = e.at_ms;
                expect += 1;
                applied += 1;
            }
            if !complete {
                let fresh = load(store.as_mut(), intern, Some(&cur))?;
                let version = fresh.version;
                self.current.store(Arc::new(fresh));
                self.fresh.reloads.fetch_add(1, Ordering::Relaxed);
                self.fresh.confirm(started);
                return Ok(Followed {
                    applied: 0,
                    reloaded: true,
                    version,
                });
            }
            if expect > head || entries.is_empty() {
                break;
            }
        }
        let version = match next {
            Some(snap) => {
                let v = snap.version;
                self.current.store(Arc::new(snap));
                self.fresh.applied.fetch_add(applied, Ordering::Relaxed);
                v
            }
            None => cur.version,
        };
        self.fresh.confirm(started);
        Ok(Followed {
            applied,
            reloaded: false,
            version,
        })
    }

    /// Opens (or creates) the SQLite store at `path`.
    pub fn open_sqlite(path: &std::path::Path, pepper: Pepper) -> Result<KeyStore, Error> {
        let store = crate::SqliteStore::open_with_pepper(path, &pepper.fingerprint())?;
        KeyStore::open(Box::new(store), pepper)
    }

    /// A store in memory only, for tests and dry runs.
    pub fn in_memory(pepper: Pepper) -> KeyStore {
        KeyStore::open(
            Box::new(crate::SqliteStore::in_memory().expect("in-memory SQLite opens")),
            pepper,
        )
        .expect("an empty store loads")
    }

    /// The current snapshot. Lock-free; hold it only for one decision.
    #[inline]
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned pointer, for long-lived readers.
    pub fn snapshot_arc(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Computes a presented secret's locator, starts fetching its slot in
    /// `snap`'s key table, checks the secret's format and checksum, and
    /// computes its digest while the slot is on its way (see
    /// [`crate::digest_map`]). A malformed secret is refused before the
    /// digest and before any lookup; only the prefetch hint (which decides
    /// nothing) comes first, because starting the memory fetch before the
    /// checksum saves a tenth of a 1M-key check.
    #[inline]
    pub fn present(&self, snap: &Snapshot, secret: &str) -> Result<Hashed, Refusal> {
        if secret.len() > secret::MAX_SECRET_LEN {
            return Err(Refusal::MalformedKey);
        }
        let locator = self.pepper.locator(secret);
        snap.keys.prefetch(locator);
        secret::classify(secret).map_err(|_| Refusal::MalformedKey)?;
        Ok(Hashed {
            locator,
            digest: self.pepper.digest(secret),
        })
    }

    /// The whole decision for one request, with an owned identity.
    pub fn check(&self, secret: Option<&str>, target: Target<'_>, now: i64) -> Decision {
        let snap = self.snapshot();
        let outcome = (|| {
            let key = self.present(&snap, secret.ok_or(Refusal::MissingKey)?)?;
            let p = snap.authenticate(&key, now)?;
            p.authorize(target)?;
            Ok(Identity {
                key_id: p.key.id_string(),
                org: p.user.org.to_string(),
                user: p.user.id.to_string(),
                role: p.role(),
                scope: p.scope_header(),
            })
        })();
        Decision {
            version: snap.version,
            outcome,
        }
    }

    /// Counts for status pages and metrics.
    pub fn status(&self) -> Counts {
        let s = self.snapshot();
        Counts {
            version: s.version,
            orgs: s.org_ids.len(),
            users: s.user_ids.len(),
            keys: s.live_keys,
        }
    }

    /// Validates a change against the current snapshot (under the writer
    /// lock), commits it, then publishes the next snapshot.
    ///
    /// In a fleet the snapshot may trail the store: the writer first catches
    /// up with the log, plans against that, and commits only if nobody
    /// committed in between ([`StoreError::Behind`] otherwise: catch up and
    /// plan again). So every change is validated against the state it
    /// follows in the log, whichever instance made the one before it.
    fn write<T>(
        &self,
        actor: &str,
        mut plan: impl FnMut(&Snapshot, &mut dyn Store) -> Result<Option<(Change, T)>, Error>,
        unchanged: impl FnOnce() -> T,
    ) -> Result<Applied<T>, Error> {
        let mut guard = lock(&self.writer);
        guard.store.begin_write()?;
        // A panic while queued (a bug in a plan, say) must not leave the
        // store's write lock held: other processes would wait on it until
        // this one's next write.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.write_queued(&mut guard, actor, &mut plan, unchanged)
        }));
        // A failed unlock leaves the lock to the session's end; nothing to undo.
        let _ = guard.store.end_write();
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// [`KeyStore::write`] once queued behind other instances' writers.
    fn write_queued<T>(
        &self,
        guard: &mut Writer,
        actor: &str,
        plan: &mut impl FnMut(&Snapshot, &mut dyn Store) -> Result<Option<(Change, T)>, Error>,
        unchanged: impl FnOnce() -> T,
    ) -> Result<Applied<T>, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.catch_up(guard)?;
            guard.store.check_schema()?;
            let Writer { store, intern } = &mut *guard;
            let started = self.fresh.now_us();
            let cur = self.current.load_full();
            let Some((change, value)) = plan(&cur, store.as_mut())? else {
                return Ok(Applied {
                    value: unchanged(),
                    version: cur.version,
                });
            };
            let at_ms = crate::time::now_ms();
            let version = match store.commit(&change, &Audit { actor, at_ms }, cur.version) {
                Ok(v) => v,
                Err(StoreError::Behind { .. }) if attempt < WRITE_ATTEMPTS => {
                    // A writer that does not queue (another SQLite process)
                    // got in first: step back a random moment so the two do
                    // not collide again in lockstep.
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos());
                    let jitter = u64::from(nanos) % (500 * attempt as u64);
                    std::thread::sleep(std::time::Duration::from_micros(jitter));
                    continue;
                }
                Err(e) => return Err(store.diagnose(e).into()),
            };
            let mut next = (*cur).clone();
            apply(&mut next, &change, intern);
            next.version = version;
            next.changed_at_ms = at_ms;
            self.current.store(Arc::new(next));
            // The commit saw the log at `cur.version`: nothing was missing.
            self.fresh.confirm(started);
            return Ok(Applied { value, version });
        }
    }

    /// Creates an organisation or replaces its domain list. `value` is true
    /// when the organisation was created.
    pub fn put_org(
        &self,
        actor: &str,
        org: &str,
        domains: &[DomainInput],
    ) -> Result<Applied<bool>, Error> {
        valid_org_id(org)?;
        let mut list: Vec<Domain> = Vec::with_capacity(domains.len());
        for d in domains {
            let name = canonical(&d.name)?;
            if list.iter().any(|x| x.name == name) {
                return Err(Error::invalid(
                    "duplicate_domain",
                    format!("domain {name} is listed twice"),
                ));
            }
            if d.id.is_some() && list.iter().any(|x| x.id == d.id) {
                return Err(Error::invalid(
                    "duplicate_domain_id",
                    format!(
                        "numeric domain id {} is used twice",
                        d.id.unwrap_or_default()
                    ),
                ));
            }
            list.push(Domain { name, id: d.id });
        }
        list.sort_by(|a, b| a.name.cmp(&b.name));
        self.write(
            actor,
            |snap, _| {
                let existing = snap.org(org).map(|o| o.uid);
                Ok(Some((
                    Change::PutOrg {
                        org: org.to_string(),
                        uid: existing.unwrap_or(snap.version + 1),
                        domains: list.clone(),
                    },
                    existing.is_none(),
                )))
            },
            || false,
        )
    }

    /// Creates or updates a user. `value` is true when the user was created.
    /// A member's server access stays as it is (none for a new user); an
    /// owner's or admin's is cleared, since they have every server.
    pub fn put_user(
        &self,
        actor: &str,
        org: &str,
        user: &str,
        input: UserInput,
    ) -> Result<Applied<bool>, Error> {
        self.put_user_with_servers(actor, org, user, input, None)
    }

    /// [`KeyStore::put_user`], also replacing a member's server access
    /// (server name -> `read`, Server Viewer, or `read_write`, Server Admin)
    /// when `servers` is given. Every server must be one of the
    /// organisation's, and only members take per-server access (422 otherwise).
    pub fn put_user_with_servers(
        &self,
        actor: &str,
        org: &str,
        user: &str,
        input: UserInput,
        servers: Option<BTreeMap<String, Access>>,
    ) -> Result<Applied<bool>, Error> {
        let user = canonical_user_id(user)?;
        let servers = servers
            .map(|m| {
                m.iter()
                    .map(|(s, a)| Ok((server_name(s)?, *a)))
                    .collect::<Result<BTreeMap<_, _>, Error>>()
            })
            .transpose()?;
        if input.role.is_org_admin() && servers.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(Error::rule(
                "servers_for_admin",
                format!(
                    "{} users have read_write on every server of the organisation; per-server access applies to members only",
                    input.role
                ),
            ));
        }
        let mut access = BTreeMap::new();
        for (d, a) in &input.access {
            access.insert(canonical(d)?, *a);
        }
        if input.role.is_org_admin() && !access.is_empty() {
            return Err(Error::rule(
                "access_for_admin",
                format!(
                    "{} users have read_write on every domain of the organisation; per-domain access applies to members only",
                    input.role
                ),
            ));
        }
        self.write(
            actor,
            |snap, store| {
                let org_entry = snap.org(org).ok_or_else(|| org_missing(org))?;
                for d in access.keys() {
                    if !org_entry.domains.contains_key(d.as_str()) {
                        return Err(Error::rule(
                            "domain_not_in_org",
                            format!("domain {d} is not a domain of organisation {org}"),
                        ));
                    }
                }
                for s in servers.iter().flat_map(BTreeMap::keys) {
                    if !org_entry.servers.contains_key(s.as_str()) {
                        return Err(Error::rule(
                            "server_not_in_org",
                            format!("server {s} is not a server of organisation {org}"),
                        ));
                    }
                }
                let existing = snap.user(org, &user);
                let servers = match (&servers, input.role.is_org_admin()) {
                    (_, true) => BTreeMap::new(),
                    (Some(m), false) => m.clone(),
                    (None, false) => existing.map(|u| server_map(u)).unwrap_or_default(),
                };
                let status = input
                    .status
                    .or(existing.map(|u| u.status))
                    .unwrap_or(Status::Active);
                if let Some(u) = existing {
                    let stays_owner = input.role == Role::Owner && status == Status::Active;
                    if u.role == Role::Owner && u.status == Status::Active && !stays_owner {
                        last_owner_check(snap, org, &user)?;
                    }
                }
                let record = UserRecord {
                    org: org.to_string(),
                    id: user.clone(),
                    role: input.role,
                    status,
                    access: access.clone(),
                    servers,
                    uid: existing.map_or(snap.version + 1, |u| u.uid),
                };
                let change = if existing.is_some_and(|u| u.status == Status::Active)
                    && status == Status::Deactivated
                {
                    Change::DeactivateUser {
                        user: record,
                        at: crate::time::now(),
                        revoke: live_keys(store, org, &user)?,
                    }
                } else {
                    Change::PutUser { user: record }
                };
                Ok(Some((change, existing.is_none())))
            },
            || false,
        )
    }

    /// Deactivates a user: every key they created stops on the next request
    /// and stays revoked. Deactivating an inactive user changes nothing.
    pub fn deactivate_user(
        &self,
        actor: &str,
        org: &str,
        user: &str,
    ) -> Result<Applied<()>, Error> {
        let user = canonical_user_id(user)?;
        self.write(
            actor,
            |snap, store| {
                let u = existing_user(snap, org, &user)?;
                if u.status == Status::Deactivated {
                    return Ok(None);
                }
                if u.role == Role::Owner {
                    last_owner_check(snap, org, &user)?;
                }
                let record = UserRecord {
                    org: org.to_string(),
                    id: user.clone(),
                    role: u.role,
                    status: Status::Deactivated,
                    access: u.access.iter().map(|(d, a)| (d.to_string(), *a)).collect(),
                    servers: server_map(u),
                    uid: u.uid,
                };
                Ok(Some((
                    Change::DeactivateUser {
                        user: record,
                        at: crate::time::now(),
                        revoke: live_keys(store, org, &user)?,
                    },
                    (),
                )))
            },
            || (),
        )
    }

    /// Deletes a user and revokes every key they created.
    pub fn delete_user(&self, actor: &str, org: &str, user: &str) -> Result<Applied<()>, Error> {
        let user = canonical_user_id(user)?;
        self.write(
            actor,
            |snap, store| {
                let u = existing_user(snap, org, &user)?;
                if u.role == Role::Owner && u.status == Status::Active {
                    last_owner_check(snap, org, &user)?;
                }
                Ok(Some((
                    Change::DeleteUser {
                        org: org.to_string(),
                        user: user.clone(),
                        at: crate::time::now(),
                        revoke: live_keys(store, org, &user)?,
                    },
                    (),
                )))
            },
            || (),
        )
    }

    /// Creates one key by the guide's rules.
    pub fn create_key(
        &self,
        actor: &str,
        org: &str,
        key: NewKey,
        now: i64,
    ) -> Result<Applied<CreatedKey>, Error> {
        let mut applied = self.create_keys(actor, org, vec![key], now)?;
        Ok(Applied {
            value: applied.value.pop().expect("one key in, one key out"),
            version: applied.version,
        })
    }

    /// Creates (or imports) many keys in one commit: all or nothing.
    pub fn create_keys(
        &self,
        actor: &str,
        org: &str,
        keys: Vec<NewKey>,
        now: i64,
    ) -> Result<Applied<Vec<CreatedKey>>, Error> {
        if keys.is_empty() {
            if self.snapshot().org(org).is_none() {
                return Err(org_missing(org));
            }
            return Err(Error::invalid("no_keys", "no keys to create"));
        }
        self.write(
            actor,
            |snap, _| {
                snap.org(org).ok_or_else(|| org_missing(org))?;
                let mut records = Vec::with_capacity(keys.len());
                let mut created = Vec::with_capacity(keys.len());
                let mut seen = hashbrown::HashSet::new();
                for (i, k) in keys.iter().enumerate() {
                    let (record, secret) = plan_key(snap, &self.pepper, org, k.clone(), now)
                        .map_err(|e| with_index(e, i, records.capacity()))?;
                    if snap.keys.get(&record.hashed()).is_some() || !seen.insert(record.digest) {
                        return Err(with_index(
                            Error::new(
                                ErrorKind::Conflict,
                                "key_exists",
                                "a key with this secret already exists",
                            ),
                            i,
                            records.capacity(),
                        ));
                    }
                    created.push(CreatedKey {
                        secret,
                        meta: record.meta(now),
                    });
                    records.push(record);
                }
                Ok(Some((Change::CreateKeys { keys: records }, created)))
            },
            Vec::new,
        )
    }

    /// Revokes a key; revoking a revoked key changes nothing.
    pub fn revoke_key(&self, actor: &str, id: &str, now: i64) -> Result<Applied<KeyMeta>, Error> {
        let mut meta = None;
        let applied = self.write(
            actor,
            |_, store| {
                let mut rec = store.get_key(id)?.ok_or_else(|| key_missing(id))?;
                let change = rec.revoked_at.is_none().then(|| Change::RevokeKey {
                    id: id.to_string(),
                    key: rec.hashed(),
                    at: now,
                });
                rec.revoked_at.get_or_insert(now);
                meta = Some(rec.meta(now));
                Ok(change.map(|c| (c, ())))
            },
            || (),
        )?;
        Ok(Applied {
            value: meta.expect("the plan records the key's metadata before succeeding"),
            version: applied.version,
        })
    }

    /// Rotates a key: a new secret for the same scope, creator, name, rate
    /// limit and shadow, and the old key expires `grace_seconds` from `now`
    /// (or at its own expiry, if that comes first). Until then both work,
    /// and uses of the old one are counted as grace uses.
    pub fn rotate_key(
        &self,
        actor: &str,
        id: &str,
        grace_seconds: u32,
        now: i64,
    ) -> Result<Applied<(CreatedKey, KeyMeta)>, Error> {
        self.write(
            actor,
            |snap, store| {
                let old = store.get_key(id)?.ok_or_else(|| key_missing(id))?;
                if old.revoked_at.is_some() || old.expires_at.is_some_and(|e| e <= now) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        "key_not_live",
                        format!("key {id} is revoked or expired; create a new key instead"),
                    ));
                }
                let u = existing_user(snap, &old.org, &old.user)?;
                if u.status != Status::Active || u.uid != old.user_uid {
                    return Err(Error::rule(
                        "user_deactivated",
                        format!("{} is no longer active and cannot hold new keys", old.user),
                    ));
                }
                let end = now.saturating_add(i64::from(grace_seconds));
                let expires_at = old.expires_at.map_or(end, |e| e.min(end));
                let secret = secret::generate();
                let new = KeyRecord {
                    id: secret::generate_id(),
                    digest: self.pepper.digest(&secret),
                    locator: self.pepper.locator(&secret),
                    created_at: now,
                    revoked_at: None,
                    lifecycle: crate::KeyLifecycle {
                        rotated_at: None,
                        replaced_by: None,
                        ..old.lifecycle.clone()
                    },
                    ..old.clone()
                };
                let mut old_after = old.clone();
                old_after.expires_at = Some(expires_at);
                old_after.lifecycle.rotated_at = Some(now);
                old_after.lifecycle.replaced_by = Some(new.id.clone());
                let created = CreatedKey {
                    secret,
                    meta: new.meta(now),
                };
                Ok(Some((
                    Change::RotateKey {
                        id: id.to_string(),
                        key: old.hashed(),
                        at: now,
                        expires_at,
                        new: Box::new(new),
                    },
                    (created, old_after.meta(now)),
                )))
            },
            || unreachable!("a rotation always changes something"),
        )
    }

    /// Changes a key's rate limit or shadow scope.
    pub fn update_key(
        &self,
        actor: &str,
        id: &str,
        patch: KeyPatch,
        now: i64,
    ) -> Result<Applied<KeyMeta>, Error> {
        if let Some(Some(limit)) = patch.rate_limit {
            valid_rate_limit(limit)?;
        }
        let mut meta = None;
        let applied = self.write(
            actor,
            |snap, store| {
                let mut rec = store.get_key(id)?.ok_or_else(|| key_missing(id))?;
                if let Some(limit) = patch.rate_limit {
                    rec.lifecycle.rate_limit = limit;
                }
                if let Some(shadow) = &patch.shadow {
                    rec.lifecycle.shadow = shadow
                        .as_ref()
                        .map(|sh| plan_shadow(snap, &rec.org, &rec.scope, sh))
                        .transpose()?;
                }
                meta = Some(rec.meta(now));
                Ok(Some((
                    Change::UpdateKey {
                        id: id.to_string(),
                        key: rec.hashed(),
                        rate_limit: rec.lifecycle.rate_limit,
                        shadow: rec.lifecycle.shadow.clone(),
                    },
                    (),
                )))
            },
            || (),
        )?;
        Ok(Applied {
            value: meta.expect("the plan records the key's metadata before succeeding"),
            version: applied.version,
        })
    }

    /// Sets (or with `None` clears) an organisation's default rate limit.
    pub fn set_org_rate_limit(
        &self,
        actor: &str,
        org: &str,
        rate_limit: Option<crate::RateLimit>,
    ) -> Result<Applied<()>, Error> {
        if let Some(limit) = rate_limit {
            valid_rate_limit(limit)?;
        }
        self.write(
            actor,
            |snap, _| {
                snap.org(org).ok_or_else(|| org_missing(org))?;
                Ok(Some((
                    Change::SetOrgRateLimit {
                        org: org.to_string(),
                        rate_limit,
                    },
                    (),
                )))
            },
            || (),
        )
    }

    /// An organisation's default rate limit.
    pub fn org_rate_limit(&self, org: &str) -> Result<Option<crate::RateLimit>, Error> {
        let snap = self.snapshot();
        Ok(snap.org(org).ok_or_else(|| org_missing(org))?.rate_limit)
    }

    /// Writes the usage counted in memory since the last call to the
    /// store, in one transaction, and returns how many keys it covered.
    /// What a crash loses is what was counted since the last call that
    /// succeeded. On failure the batch is put back, to be written next time.
    pub fn flush_usage(&self) -> Result<usize, Error> {
        let snap = self.snapshot_arc();
        let mut batch = Vec::new();
        let mut cells = Vec::new();
        for (id, side) in snap.sides.iter() {
            let (last, requests, grace) = side.usage.take();
            if requests == 0 {
                continue;
            }
            let org = snap
                .orgs
                .get(side.usage.org_slot)
                .and_then(Option::as_ref)
                .map_or_else(String::new, |o| o.name.to_string());
            batch.push(crate::UsageDelta {
                id: secret::format_id(*id),
                org,
                last_used_at: i64::from(last),
                requests,
                grace_uses: grace,
            });
            cells.push(Arc::clone(&side.usage));
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let written = {
            let mut w = lock(&self.writer);
            w.store.add_usage(&batch).map_err(|e| w.store.diagnose(e))
        };
        if let Err(e) = written {
            use std::sync::atomic::Ordering::Relaxed;
            for (cell, d) in cells.iter().zip(&batch) {
                cell.requests.fetch_add(d.requests, Relaxed);
                cell.grace_uses.fetch_add(d.grace_uses, Relaxed);
            }
            return Err(e.into());
        }
        Ok(batch.len())
    }

    /// Usage of a key: what the store has plus what this instance counted
    /// and has not written yet.
    fn usage_of(&self, rec: &KeyRecord, stored: Option<crate::Usage>) -> crate::Usage {
        let mut u = stored.unwrap_or_default();
        if let Some(side) = secret::parse_id(&rec.id).and_then(|n| self.snapshot().side(n).cloned())
        {
            let (last, requests, grace) = side.usage.pending();
            u.last_used_at = u.last_used_at.max(i64::from(last));
            u.requests += requests;
            u.grace_uses += grace;
        }
        u
    }

    /// Metadata of one key, with its usage.
    pub fn get_key(&self, id: &str, now: i64) -> Result<KeyMeta, Error> {
        let mut w = lock(&self.writer);
        let rec = w.store.get_key(id)?.ok_or_else(|| key_missing(id))?;
        let stored = w.store.usage(&rec.org, Some(id))?.pop().map(|(_, u)| u);
        drop(w);
        Ok(rec.meta(now).with_usage(self.usage_of(&rec, stored)))
    }

    /// Metadata of an organisation's keys, optionally one user's, with
    /// their usage; with `unused_since`, only keys not used since then
    /// (never used ones included).
    pub fn list_keys(
        &self,
        org: &str,
        user: Option<&str>,
        unused_since: Option<i64>,
        now: i64,
    ) -> Result<Vec<KeyMeta>, Error> {
        if self.snapshot().org(org).is_none() {
            return Err(org_missing(org));
        }
        let user = user.map(canonical_user_id).transpose()?;
        let mut w = lock(&self.writer);
        let keys = w.store.list_keys(org, user.as_deref())?;
        let mut stored: hashbrown::HashMap<String, crate::Usage> =
            w.store.usage(org, None)?.into_iter().collect();
        drop(w);
        Ok(keys
            .iter()
            .map(|k| (k, self.usage_of(k, stored.remove(&k.id))))
            .filter(|(_, u)| unused_since.is_none_or(|t| u.last_used_at < t))
            .map(|(k, u)| k.meta(now).with_usage(u))
            .collect())
    }

    /// Users of an organisation.
    pub fn list_users(&self, org: &str) -> Result<Vec<UserRecord>, Error> {
        if self.snapshot().org(org).is_none() {
            return Err(org_missing(org));
        }
        Ok(lock(&self.writer).store.list_users(org)?)
    }

    /// The domains of an organisation, sorted by name.
    pub fn org_domains(&self, org: &str) -> Result<Vec<Domain>, Error> {
        let snap = self.snapshot();
        let entry = snap.org(org).ok_or_else(|| org_missing(org))?;
        let mut list: Vec<Domain> = entry
            .domains
            .iter()
            .map(|(n, id)| Domain {
                name: n.to_string(),
                id: *id,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// The servers of an organisation, sorted by name.
    pub fn org_servers(&self, org: &str) -> Result<Vec<Server>, Error> {
        let snap = self.snapshot();
        let entry = snap.org(org).ok_or_else(|| org_missing(org))?;
        let mut list: Vec<Server> = entry
            .servers
            .iter()
            .map(|(n, id)| Server {
                name: n.to_string(),
                id: *id,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// Adds a server to an organisation or changes its numeric id. `value`
    /// is true when the server was created. The name is lowercased and must
    /// be 1-64 characters of `[a-z0-9._-]` (422); an id another server of
    /// the organisation has is a 409. Putting a server as it is changes nothing.
    pub fn put_server(
        &self,
        actor: &str,
        org: &str,
        server: &str,
        id: u64,
    ) -> Result<Applied<bool>, Error> {
        let name = server_name(server)?;
        self.write(
            actor,
            |snap, _| {
                let entry = snap.org(org).ok_or_else(|| org_missing(org))?;
                let existing = entry.server_id(&name);
                if existing == Some(id) {
                    return Ok(None);
                }
                if let Some(other) = entry.server_ids.get(&id) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        "server_id_taken",
                        format!("server {other} of organisation {org} already has id {id}"),
                    ));
                }
                Ok(Some((
                    Change::PutServer {
                        org: org.to_string(),
                        server: Server {
                            name: name.clone(),
                            id,
                        },
                    },
                    existing.is_none(),
                )))
            },
            || false,
        )
    }

    /// Removes a server from an organisation, and every member's access to
    /// it (a server of the same name added later starts with none). Keys
    /// bound to it stay (they grant nothing on it from the next request on;
    /// those of owners and admins would see a server of that name added
    /// again); `value` is how many live keys are bound to it.
    pub fn delete_server(
        &self,
        actor: &str,
        org: &str,
        server: &str,
    ) -> Result<Applied<usize>, Error> {
        let name = server_name(server)?;
        self.write(
            actor,
            |snap, store| {
                let entry = snap.org(org).ok_or_else(|| org_missing(org))?;
                if entry.server_id(&name).is_none() {
                    return Err(Error::not_found(
                        "server_not_found",
                        format!("no server {name:?} in organisation {org:?}"),
                    ));
                }
                let bound = store
                    .list_keys(org, None)?
                    .iter()
                    .filter(|k| k.revoked_at.is_none())
                    .filter(|k| k.server.as_ref().is_some_and(|s| s.name == name))
                    .count();
                Ok(Some((
                    Change::DeleteServer {
                        org: org.to_string(),
                        server: name.clone(),
                    },
                    bound,
                )))
            },
            || 0,
        )
    }
}

/// A user entry's server access as a record keeps it.
fn server_map(u: &UserEntry) -> BTreeMap<String, Access> {
    u.servers.iter().map(|(s, a)| (s.to_string(), *a)).collect()
}

/// A user's keys that are not revoked yet.
fn live_keys(store: &mut dyn Store, org: &str, user: &str) -> Result<Vec<Hashed>, Error> {
    Ok(store
        .list_keys(org, Some(user))?
        .into_iter()
        .filter(|k| k.revoked_at.is_none())
        .map(|k| k.hashed())
        .collect())
}

fn with_index(mut e: Error, i: usize, n: usize) -> Error {
    if n > 1 {
        e.message = format!("key {i}: {}", e.message);
    }
    e
}

fn user_key(org: &str, user: &str) -> UserKey {
    UserKey {
        org: Arc::from(org),
        user: Arc::from(user),
    }
}

fn org_missing(org: &str) -> Error {
    Error::not_found("org_not_found", format!("no organisation {org:?}"))
}

fn user_missing(org: &str, user: &str) -> Error {
    Error::not_found(
        "user_not_found",
        format!("no user {user:?} in organisation {org:?}"),
    )
}

fn key_missing(id: &str) -> Error {
    Error::not_found("key_not_found", format!("no key with id {id:?}"))
}

/// A user of an existing organisation, or the 404 that says which is missing.
fn existing_user<'s>(
    snap: &'s Snapshot,
    org: &str,
    user: &str,
) -> Result<&'s Arc<UserEntry>, Error> {
    snap.org(org).ok_or_else(|| org_missing(org))?;
    snap.user(org, user).ok_or_else(|| user_missing(org, user))
}

/// Refuses a change that would leave the organisation without an active owner.
fn last_owner_check(snap: &Snapshot, org: &str, leaving: &str) -> Result<(), Error> {
    let other_owner = snap.all_users().any(|u| {
        &*u.org == org && &*u.id != leaving && u.role == Role::Owner && u.status == Status::Active
    });
    if other_owner {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Conflict,
            "last_owner",
            format!(
                "{leaving} is the last active owner of {org}; at least one owner must remain (make another user owner first)"
            ),
        ))
    }
}

/// Applies the guide's key creation rules and builds the record.
fn plan_key(
    snap: &Snapshot,
    pepper: &Pepper,
    org: &str,
    k: NewKey,
    now: i64,
) -> Result<(KeyRecord, String), Error> {
    let org_entry = snap.org(org).ok_or_else(|| org_missing(org))?;
    let user = canonical_user_id(&k.user)?;
    let u = existing_user(snap, org, &user)?;
    if u.status != Status::Active {
        return Err(Error::rule(
            "user_deactivated",
            format!("{user} is deactivated and cannot create keys"),
        ));
    }
    if let Some(e) = k.expires_at {
        if e <= now {
            return Err(Error::rule(
                "expiry_in_past",
                "expires_at must be in the future",
            ));
        }
    }
    if let Some(n) = &k.name {
        if n.chars().count() > 200 || n.chars().any(char::is_control) {
            return Err(Error::invalid(
                "invalid_name",
                "name must be at most 200 printable characters",
            ));
        }
    }
    let server = plan_server(org_entry, u, &user, &k)?;
    let access = k.access.unwrap_or(Access::ReadWrite);
    let scope = if k.org_wide {
        if k.domains.is_some() {
            return Err(Error::rule(
                "org_wide_with_domains",
                "an org_wide key covers every domain; do not list domains",
            ));
        }
        if access != Access::ReadWrite {
            return Err(Error::rule(
                "org_wide_read_only",
                "org_wide keys are read_write; list domains to make a read-only key",
            ));
        }
        if !u.role.is_org_admin() {
            return Err(Error::rule(
                "org_wide_requires_admin",
                format!("only owners and admins may create org_wide keys; {user} is a member"),
            ));
        }
        KeyScope::OrgWide
    } else {
        let chosen: Vec<String> = match k.domains {
            None => {
                let mut writable: Vec<String> = org_entry
                    .domains
                    .keys()
                    .filter(|d| u.level_on(d) == Some(Access::ReadWrite))
                    .map(|d| d.to_string())
                    .collect();
                writable.sort();
                // A server token needs no domain: it still has its server.
                if writable.is_empty() && k.server.is_none() {
                    return Err(Error::rule(
                        "no_writable_domains",
                        format!("{user} has read_write access to no domain, so a key without explicit domains would cover nothing"),
                    ));
                }
                writable
            }
            Some(list) => {
                if list.is_empty() {
                    return Err(Error::rule(
                        "no_domains",
                        "domains is empty; omit it for the default scope",
                    ));
                }
                let mut out = Vec::with_capacity(list.len());
                for d in list {
                    let d = canonical(&d)?;
                    let Some((name, _)) = org_entry.domains.get_key_value(d.as_str()) else {
                        return Err(Error::rule(
                            "domain_not_in_org",
                            format!("domain {d} is not a domain of organisation {org}"),
                        ));
                    };
                    if u.level_on(name) != Some(Access::ReadWrite) {
                        return Err(Error::rule(
                            "domain_not_writable",
                            format!("{user} does not have read_write access to {d}; keys can only be scoped to domains their creator can write"),
                        ));
                    }
                    out.push(d);
                }
                out
            }
        };
        KeyScope::Domains(chosen.into_iter().map(|d| (d, access)).collect())
    };
    if let Some(limit) = k.rate_limit {
        valid_rate_limit(limit)?;
    }
    let shadow = k
        .shadow
        .as_ref()
        .map(|sh| plan_shadow(snap, org, &scope, sh))
        .transpose()?;
    let secret = match k.secret {
        Some(s) => {
            if secret::classify(&s).is_err() {
                return Err(Error::invalid(
                    "invalid_secret",
                    "an imported secret must be 1-256 printable ASCII characters (and an sg_ secret must carry a valid checksum)",
                ));
            }
            s
        }
        None => secret::generate(),
    };
    let record = KeyRecord {
        id: secret::generate_id(),
        digest: pepper.digest(&secret),
        locator: pepper.locator(&secret),
        org: org.to_string(),
        user,
        user_uid: u.uid,
        scope,
        expires_at: k.expires_at,
        name: k.name,
        created_at: now,
        revoked_at: None,
        lifecycle: crate::KeyLifecycle {
            rate_limit: k.rate_limit,
            shadow,
            rotated_at: None,
            replaced_by: None,
        },
        server,
    };
    Ok((record, secret))
}

/// A new key's server binding: a server of the organisation on which its
/// creator has read_write now, at the level asked for (read_write by default).
fn plan_server(
    org: &OrgEntry,
    creator: &UserEntry,
    user: &str,
    k: &NewKey,
) -> Result<Option<KeyServer>, Error> {
    let Some(given) = &k.server else {
        if k.server_access.is_some() {
            return Err(Error::rule(
                "server_access_without_server",
                "server_access applies to a server-bound key; name the server too",
            ));
        }
        return Ok(None);
    };
    let name = server_name(given)?;
    if org.server_id(&name).is_none() {
        return Err(Error::rule(
            "server_not_in_org",
            format!("server {name} is not a server of organisation {}", org.name),
        ));
    }
    if creator.server_level(&name) != Some(Access::ReadWrite) {
        return Err(Error::rule(
            "server_not_writable",
            format!("{user} does not have read_write access to server {name}; keys can only be bound to servers their creator can write"),
        ));
    }
    Ok(Some(KeyServer {
        name,
        access: k.server_access.unwrap_or(Access::ReadWrite),
    }))
}

/// A rate limit must let something through.
fn valid_rate_limit(limit: crate::RateLimit) -> Result<(), Error> {
    if limit.per_second == 0 || limit.burst == 0 {
        return Err(Error::invalid(
            "invalid_rate_limit",
            "rate_limit needs per_second and burst of at least 1",
        ));
    }
    Ok(())
}

/// Canonical shadow scope, checked to be no wider than `scope`: every
/// domain one the key covers, at a level no higher than the key's.
fn plan_shadow(
    snap: &Snapshot,
    org: &str,
    scope: &KeyScope,
    shadow: &BTreeMap<String, Access>,
) -> Result<BTreeMap<String, Access>, Error> {
    let org_entry = snap.org(org).ok_or_else(|| org_missing(org))?;
    let mut out = BTreeMap::new();
    for (d, a) in shadow {
        let d = canonical(d)?;
        let declared = match scope {
            KeyScope::OrgWide => org_entry
                .domains
                .contains_key(d.as_str())
                .then_some(Access::ReadWrite),
            KeyScope::Domains(m) => m.get(&d).copied(),
        };
        if declared.is_none_or(|own| *a > own) {
            return Err(Error::rule(
                "shadow_wider",
                format!("the shadow scope must be narrower than the key's: it gives {d} {a}, which the key does not have"),
            ));
        }
        out.insert(d, *a);
    }
    Ok(out)
}

/// Builds a snapshot from the whole store.
/// `prev`, the snapshot being replaced, lends its usage cells, so what was
/// counted and not yet written survives a reload.
fn load(
    store: &mut dyn Store,
    intern: &mut Interner,
    prev: Option<&Snapshot>,
) -> Result<Snapshot, Error> {
    // One read transaction: the version and the rows must agree even while
    // other instances commit.
    store.begin_read()?;
    let snap = load_in_read(store, intern, prev);
    let end = store.end_read();
    let snap = snap?;
    end?;
    Ok(snap)
}

fn load_in_read(
    store: &mut dyn Store,
    intern: &mut Interner,
    prev: Option<&Snapshot>,
) -> Result<Snapshot, Error> {
    let (version, changed_at_ms) = store.version()?;
    let mut snap = Snapshot::empty();
    snap.version = version;
    snap.changed_at_ms = changed_at_ms;
    let mut servers: hashbrown::HashMap<String, Vec<Server>> = hashbrown::HashMap::new();
    for (org, s) in store.load_servers()? {
        servers.entry(org).or_default().push(s);
    }
    let mut limits: hashbrown::HashMap<String, crate::RateLimit> =
        store.org_rate_limits()?.into_iter().collect();
    let mut org_ids = Vec::new();
    for (id, uid, domains) in store.load_orgs()? {
        let mut entry = org_entry(uid, &id, &domains, intern);
        if let Some(list) = servers.remove(id.as_str()) {
            entry.set_servers(&list, intern);
        }
        entry.rate_limit = limits.remove(id.as_str());
        let slot = snap.orgs.push(Some(Arc::new(entry)));
        org_ids.push((intern.get(&id), slot));
    }
    let org_slot: hashbrown::HashMap<Arc<str>, u32> = org_ids.iter().cloned().collect();
    let mut user_ids = Vec::new();
    let mut user_slots = Vec::new();
    for u in store.load_users()? {
        let Some(&os) = org_slot.get(u.org.as_str()) else {
            return Err(StoreError::Incompatible(format!(
                "user {} belongs to missing organisation {}",
                u.id, u.org
            ))
            .into());
        };
        let entry = user_entry(&u, os, intern);
        let key = UserKey {
            org: Arc::clone(&entry.org),
            user: Arc::clone(&entry.id),
        };
        let slot = snap.users.push(Some(Arc::new(entry)));
        user_ids.push((key, slot));
        user_slots.push((u.uid, slot));
    }
    let slot_of_uid: hashbrown::HashMap<u64, u32> = user_slots.iter().copied().collect();
    let mut live = 0;
    let mut bad_id = None;
    let mut sides = Vec::new();
    store.for_each_key(&mut |k| {
        if k.revoked_at.is_none() {
            live += 1;
        }
        // Keys of deleted users point at no slot: refused, as they must be.
        let slot = slot_of_uid.get(&k.user_uid).copied().unwrap_or(u32::MAX);
        match key_entry(&k, slot, holders(&snap, slot), intern) {
            Some(e) => {
                sides.push((e.id, side(&k, &e, prev, intern)));
                snap.keys.insert(k.hashed(), e);
            }
            None => bad_id = Some(k.id),
        }
    })?;
    snap.sides = crate::ShardMap::from_entries(sides);
    if let Some(id) = bad_id {
        return Err(
            StoreError::Incompatible(format!("key id {id:?} is not a scopegate key id")).into(),
        );
    }
    snap.keys.compact();
    snap.org_ids = crate::ShardMap::from_entries(org_ids);
    snap.user_ids = crate::ShardMap::from_entries(user_ids);
    snap.user_slots = crate::ShardMap::from_entries(user_slots);
    snap.live_keys = live;
    Ok(snap)
}

/// Applies a committed change to a snapshot copy. Copies only the shards and
/// chunks the change touches.
fn apply(snap: &mut Snapshot, change: &Change, intern: &mut Interner) {
    match change {
        Change::PutOrg { org, uid, domains } => {
            let mut entry = org_entry(*uid, org, domains, intern);
            let slot = snap.org_ids.get(org.as_str()).copied();
            if let Some(old) = slot.and_then(|s| snap.orgs.get(s)?.as_ref()) {
                entry.rate_limit = old.rate_limit;
                entry.servers = old.servers.clone();
                entry.server_ids = old.server_ids.clone();
            }
            let entry = Arc::new(entry);
            match slot {
                Some(slot) => snap.orgs.set(slot, Some(entry)),
                None => {
                    let name = Arc::clone(&entry.name);
                    let slot = snap.orgs.push(Some(entry));
                    snap.org_ids.insert(name, slot);
                }
            }
        }
        Change::PutUser { user: u } => put_user_entry(snap, u, intern),
        Change::DeactivateUser {
            user: u, revoke, ..
        } => {
            put_user_entry(snap, u, intern);
            revoke_all(snap, revoke);
        }
        Change::DeleteUser {
            org, user, revoke, ..
        } => {
            let key = user_key(org, user);
            if let Some(slot) = snap.user_ids.remove(&key) {
                if let Some(Some(u)) = snap.users.get(slot) {
                    let uid = u.uid;
                    snap.user_slots.remove(&uid);
                }
                snap.users.set(slot, None);
            }
            revoke_all(snap, revoke);
        }
        Change::CreateKeys { keys } => {
            for k in keys {
                add_key(snap, k, intern);
            }
        }
        Change::RevokeKey { key, .. } => revoke_all(snap, std::slice::from_ref(key)),
        Change::RotateKey {
            key,
            expires_at,
            new,
            ..
        } => {
            if let Some(e) = snap.keys.get(key) {
                let mut e = e.clone();
                e.expires_at = (*expires_at).clamp(0, i64::from(u32::MAX) - 1) as u32;
                let policy = snap.sides.get(&e.id).and_then(|s| s.policy.as_deref());
                let mut policy = policy.cloned().unwrap_or_default();
                policy.rotated = true;
                set_policy(snap, e.id, Some(Arc::new(policy)));
                snap.keys.insert(*key, e);
            }
            add_key(snap, new, intern);
        }
        Change::UpdateKey {
            key,
            rate_limit,
            shadow,
            ..
        } => {
            if let Some(e) = snap.keys.get(key) {
                let e = e.clone();
                let old = snap.sides.get(&e.id).and_then(|s| s.policy.as_ref());
                let rotated = old.is_some_and(|p| p.rotated);
                let server = old.and_then(|p| p.server.clone());
                let lifecycle = crate::KeyLifecycle {
                    rate_limit: *rate_limit,
                    shadow: shadow.clone(),
                    rotated_at: rotated.then_some(0),
                    replaced_by: None,
                };
                let policy = crate::snapshot::policy(&lifecycle, server, &e, intern);
                set_policy(snap, e.id, policy);
            }
        }
        Change::SetOrgRateLimit { org, rate_limit } => {
            change_org(snap, org, |o| o.rate_limit = *rate_limit);
        }
        Change::PutServer { org, server } => {
            change_org(snap, org, |o| o.put_server(server, intern));
        }
        Change::DeleteServer { org, server } => {
            change_org(snap, org, |o| o.remove_server(server));
            // Members lose their access to it, so a server of the same name
            // added later starts with none.
            let members: Vec<UserRecord> = snap
                .all_users()
                .filter(|u| &*u.org == org.as_str())
                .filter(|u| u.servers.iter().any(|(s, _)| &**s == server.as_str()))
                .map(|u| UserRecord {
                    org: u.org.to_string(),
                    id: u.id.to_string(),
                    role: u.role,
                    status: u.status,
                    access: u.access.iter().map(|(d, a)| (d.to_string(), *a)).collect(),
                    servers: server_map(u)
                        .into_iter()
                        .filter(|(s, _)| s != server)
                        .collect(),
                    uid: u.uid,
                })
                .collect();
            for u in &members {
                put_user_entry(snap, u, intern);
            }
        }
    }
}

/// Replaces an organisation's entry in a snapshot copy with a changed copy.
fn change_org(snap: &mut Snapshot, org: &str, f: impl FnOnce(&mut OrgEntry)) {
    if let Some(slot) = snap.org_ids.get(org).copied() {
        if let Some(Some(o)) = snap.orgs.get(slot) {
            let mut o = (**o).clone();
            f(&mut o);
            snap.orgs.set(slot, Some(Arc::new(o)));
        }
    }
}

/// Adds one created key to a snapshot copy.
fn add_key(snap: &mut Snapshot, k: &KeyRecord, intern: &mut Interner) {
    // Planned against an existing user; a key whose user is gone points at
    // no slot and is refused, as on a full load.
    let slot = snap
        .user_slots
        .get(&k.user_uid)
        .copied()
        .unwrap_or(u32::MAX);
    // Ids are generated (or checked on import) by scopegate.
    if let Some(entry) = key_entry(k, slot, holders(snap, slot), intern) {
        let side = side(k, &entry, None, intern);
        snap.sides.insert(entry.id, side);
        snap.keys.insert(k.hashed(), entry);
        snap.live_keys += 1;
    }
}

/// A key's usage cell (`prev`'s when it has one) and policy.
fn side(k: &KeyRecord, e: &KeyEntry, prev: Option<&Snapshot>, intern: &mut Interner) -> KeySide {
    let usage = prev
        .and_then(|p| p.sides.get(&e.id))
        .map(|s| Arc::clone(&s.usage))
        .unwrap_or_else(|| {
            Arc::new(UsageCell {
                org_slot: e.org_slot,
                ..UsageCell::default()
            })
        });
    let server = k
        .server
        .as_ref()
        .map(|s| crate::snapshot::binding(s, intern));
    KeySide {
        usage,
        policy: crate::snapshot::policy(&k.lifecycle, server, e, intern),
    }
}

/// Replaces a key's policy, keeping its usage cell.
fn set_policy(snap: &mut Snapshot, id: u64, policy: Option<Arc<Policy>>) {
    if let Some(side) = snap.sides.get(&id) {
        let side = KeySide {
            usage: Arc::clone(&side.usage),
            policy,
        };
        snap.sides.insert(id, side);
    }
}

/// The user in `slot` and their organisation, as the snapshot has them now.
fn holders(snap: &Snapshot, slot: u32) -> (Option<&UserEntry>, Option<&OrgEntry>) {
    let user = snap.users.get(slot).and_then(Option::as_deref);
    let org = user.and_then(|u| snap.orgs.get(u.org_slot)?.as_deref());
    (user, org)
}

fn put_user_entry(snap: &mut Snapshot, u: &UserRecord, intern: &mut Interner) {
    let org_slot = snap
        .org_ids
        .get(u.org.as_str())
        .copied()
        .expect("put_user is planned against an existing organisation");
    let entry = Arc::new(user_entry(u, org_slot, intern));
    let key = UserKey {
        org: Arc::clone(&entry.org),
        user: Arc::clone(&entry.id),
    };
    match snap.user_ids.get(&key).copied() {
        Some(slot) => snap.users.set(slot, Some(entry)),
        None => {
            let slot = snap.users.push(Some(entry));
            snap.user_ids.insert(key, slot);
            snap.user_slots.insert(u.uid, slot);
        }
    }
}

/// Marks keys revoked in a snapshot copy.
fn revoke_all(snap: &mut Snapshot, keys: &[Hashed]) {
    for k in keys {
        if let Some(e) = snap.keys.get(k).filter(|e| !e.revoked) {
            let mut e = e.clone();
            e.revoked = true;
            snap.keys.insert(*k, e);
            snap.live_keys -= 1;
        }
    }
}
