//! The fleet store: one PostgreSQL database shared by every instance.
//!
//! - Schema: versioned migrations of its own (`scopegate_schema` records how
//!   many have run), applied under a session advisory lock, so instances
//!   starting at once migrate one after the other; a schema newer than this
//!   scopegate knows is refused, and so is a store recorded with another
//!   pepper (checked before migrating).
//! - Change log: `log_head` holds the head version in one row. A commit locks
//!   that row (`FOR UPDATE`) first, so writers serialise, versions commit in
//!   order without gaps, and a commit planned against an older head is
//!   refused with [`StoreError::Behind`]. The same transaction sends
//!   `NOTIFY scopegate_changes` (delivered only if it commits).
//! - Reads of a whole snapshot run in one `REPEATABLE READ READ ONLY`
//!   transaction; keys stream through a server-side cursor, 10,000 rows a
//!   fetch.
//! - Connections: the writer's connection is re-opened once when it was
//!   lost (the server restarted); failing that, calls answer
//!   [`StoreError::Unavailable`]. Each [`Watcher`] has a dedicated
//!   connection of its own that LISTENs; a lost one is reported, never
//!   silently replaced (notifications sent meanwhile are gone: the follower
//!   must catch up).
//!
//! The password (from the URL or `SCOPEGATE_STORE_PASSWORD`) never appears in
//! an error message.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::str::FromStr;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Row};

use crate::model::{
    Access, Domain, KeyRecord, KeyScope, RateLimit, Role, Server, Status, Usage, UserRecord,
};
use crate::store::{Audit, Change, LogEntry, Store, StoreError, UsageDelta, Watcher};
use crate::{Digest, Locator};

/// Whether a `--store` value names a PostgreSQL database.
pub fn is_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// The environment variable a password is taken from when the URL has none.
pub const PASSWORD_ENV: &str = "SCOPEGATE_STORE_PASSWORD";

/// The NOTIFY channel every commit signals on.
pub const CHANNEL: &str = "scopegate_changes";

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Session advisory lock key that serialises migrations ("scopegat" in ASCII).
const MIGRATION_LOCK: i64 = 0x7363_6f70_6567_6174;

/// The advisory lock writers of all instances queue on (see
/// `Store::begin_write`); PostgreSQL grants it in request order.
const WRITE_LOCK: i64 = 0x7363_6f70_6567_6177;

/// How long a writer waits behind other instances' writers before it gives
/// up with "unavailable" (nothing changed).
const WRITE_LOCK_WAIT: &str = "10s";

/// Rows per `FETCH` while streaming keys.
const FETCH_ROWS: usize = 10_000;

/// Keys per `INSERT … SELECT FROM unnest(…)` of a bulk creation.
const INSERT_CHUNK: usize = 10_000;

/// Schema migrations, applied in order, each in its own transaction;
/// `scopegate_schema.version` records how many have run. Never edit a
/// released migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the access model (as in the SQLite store) and the change log with
    // its one-row head.
    "CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL);
     CREATE TABLE orgs (id text PRIMARY KEY, uid bigint NOT NULL);
     CREATE TABLE domains (
         org text NOT NULL REFERENCES orgs(id),
         name text NOT NULL,
         numeric_id bigint,
         PRIMARY KEY (org, name));
     CREATE TABLE users (
         org text NOT NULL REFERENCES orgs(id),
         id text NOT NULL,
         role text NOT NULL,
         status text NOT NULL,
         access text NOT NULL,
         uid bigint NOT NULL,
         PRIMARY KEY (org, id));
     CREATE TABLE keys (
         id text PRIMARY KEY,
         digest bytea NOT NULL UNIQUE,
         org text NOT NULL REFERENCES orgs(id),
         \"user\" text NOT NULL,
         user_uid bigint NOT NULL,
         org_wide boolean NOT NULL,
         domains text NOT NULL,
         expires_at bigint,
         name text,
         created_at bigint NOT NULL,
         revoked_at bigint,
         locator bigint);
     CREATE INDEX keys_by_user ON keys (org, \"user\");
     CREATE TABLE changes (
         version bigint PRIMARY KEY,
         at_ms bigint NOT NULL,
         actor text NOT NULL,
         kind text NOT NULL,
         subject text NOT NULL,
         payload text);
     CREATE TABLE log_head (
         id int PRIMARY KEY CHECK (id = 1),
         version bigint NOT NULL,
         at_ms bigint NOT NULL);
     INSERT INTO log_head (id, version, at_ms) VALUES (1, 0, 0);",
    // 2: key lifecycle and limits (as SQLite's migration 4): a key's rate
    // limit, shadow scope and rotation, an organisation's default rate
    // limit, and usage, written in batches beside the change log.
    "ALTER TABLE keys ADD COLUMN lifecycle text;
     ALTER TABLE orgs ADD COLUMN rate_limit text;
     CREATE TABLE key_usage (
         id text PRIMARY KEY,
         org text NOT NULL,
         last_used_at bigint NOT NULL,
         requests bigint NOT NULL,
         grace_uses bigint NOT NULL);
     CREATE INDEX key_usage_by_org ON key_usage (org);",
    // 3: servers (as SQLite's migration 5): an organisation's servers,
    // members' per-server access (JSON, NULL for none) and a key's server
    // binding (NULL: not bound).
    "CREATE TABLE servers (
         org text NOT NULL REFERENCES orgs(id),
         name text NOT NULL,
         numeric_id bigint NOT NULL,
         PRIMARY KEY (org, name));
     CREATE UNIQUE INDEX servers_by_id ON servers (org, numeric_id);
     ALTER TABLE users ADD COLUMN servers text;
     ALTER TABLE keys ADD COLUMN server text;
     ALTER TABLE keys ADD COLUMN server_access text;",
];

const KEY_COLUMNS: &str = "id, digest, org, \"user\", user_uid, org_wide, domains, expires_at, name, created_at, revoked_at, locator, lifecycle, server, server_access";

const USER_COLUMNS: &str = "org, id, role, status, access, uid, servers";

/// Whether an error means the connection (or the server) is gone, rather
/// than that the database refused a statement.
fn is_connection_error(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        // 08: connection exception; 57P01-03: admin/crash shutdown, cannot
        // connect now (starting up or shutting down).
        return c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03");
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    // Errors without a database error or an I/O cause: the kind is only in
    // the message (connect, timeout, communication, closed).
    let text = e.to_string();
    text.starts_with("error connecting")
        || text.starts_with("timeout")
        || text.starts_with("error communicating")
        || text.starts_with("connection closed")
}

/// The full text of an error (the driver's top-level message is terse: "db
/// error"), with every cause.
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} ({})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(": ");
            s.push_str(d);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// Where the store is, for messages: `user@host:port/db`, never the password.
fn location(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(|p| p.to_string()).collect();
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        if ports.is_empty() {
            "5432".to_string()
        } else {
            ports.join(",")
        },
        config.get_dbname().unwrap_or("?")
    )
}

/// The connection settings of a store: the parsed URL plus the password and
/// timeouts; what every (re)connection and watcher uses.
#[derive(Clone)]
struct Target {
    config: postgres::Config,
    /// `user@host:port/db`, for messages.
    location: String,
    /// The password, only to scrub it from messages.
    password: Option<String>,
}

impl Target {
    fn parse(url: &str) -> Result<Target, StoreError> {
        let mut config = postgres::Config::from_str(url).map_err(|_| {
            // The driver's message may quote the URL; say what is expected instead.
            StoreError::Incompatible(
                "invalid PostgreSQL URL: expected postgres://user[:password]@host:port/database"
                    .into(),
            )
        })?;
        if config.get_password().is_none() {
            if let Ok(p) = std::env::var(PASSWORD_ENV) {
                if !p.is_empty() {
                    config.password(p);
                }
            }
        }
        if config.get_ssl_mode() == postgres::config::SslMode::Require {
            return Err(StoreError::Incompatible(
                "sslmode=require: this scopegate connects to PostgreSQL without TLS (use a local socket, a private network or a TLS proxy)".into(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("scopegate");
        }
        // Notice a dead peer on an idle connection (a watcher's) in tens of
        // seconds, not hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        Ok(Target {
            location: location(&config),
            config,
            password,
        })
    }

    /// A message with the password scrubbed out, whatever produced it.
    fn scrub(&self, text: String) -> String {
        match &self.password {
            Some(p) if text.contains(p.as_str()) => text.replace(p.as_str(), "<redacted>"),
            _ => text,
        }
    }

    fn error(&self, e: &postgres::Error) -> StoreError {
        let text = self.scrub(describe(e));
        if is_connection_error(e) {
            StoreError::Unavailable(format!("PostgreSQL at {}: {text}", self.location))
        } else {
            StoreError::Database(text)
        }
    }

    fn connect(&self) -> Result<Client, StoreError> {
        self.config.connect(NoTls).map_err(|e| {
            let text = self.scrub(describe(&e));
            if e.code().is_some() && !is_connection_error(&e) {
                // Authentication failed, database missing, …: trying again
                // will not help, but say where.
                StoreError::Database(format!(
                    "connecting to PostgreSQL at {}: {text}",
                    self.location
                ))
            } else {
                StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {}: {text}",
                    self.location
                ))
            }
        })
    }
}

/// The PostgreSQL-backed store.
pub struct PostgresStore {
    target: Target,
    client: Client,
    /// The connection failed at the last call: open a new one first.
    broken: bool,
    /// Inside [`Store::begin_read`].
    in_read: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.target.location)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, checks the pepper (before migrating, so a misconfigured
    /// pepper never upgrades a store it cannot read), migrates, and records
    /// the pepper on a new store. Several instances may call this at once.
    pub fn connect(url: &str, fingerprint: &str) -> Result<PostgresStore, StoreError> {
        let target = Target::parse(url)?;
        let client = target.connect()?;
        let mut store = PostgresStore {
            target,
            client,
            broken: false,
            in_read: false,
        };
        store.prepare(fingerprint)?;
        Ok(store)
    }

    /// The schema version this database is at (0: none yet).
    pub fn schema_version(&mut self) -> Result<usize, StoreError> {
        let target = self.target.clone();
        schema_version(&mut self.client).map_err(|e| target.error(&e))
    }

    /// Migrations this scopegate knows.
    pub fn known_schema_version() -> usize {
        MIGRATIONS.len()
    }

    fn prepare(&mut self, fingerprint: &str) -> Result<(), StoreError> {
        let target = self.target.clone();
        let e = |e: postgres::Error| target.error(&e);
        // A session lock: held across the migration transactions, released
        // by the unlock below, or by the server if this connection dies.
        self.client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .map_err(e)?;
        let result = self.prepare_locked(fingerprint);
        let unlock = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .map_err(e);
        result?;
        unlock?;
        Ok(())
    }

    fn prepare_locked(&mut self, fingerprint: &str) -> Result<(), StoreError> {
        let target = self.target.clone();
        let e = |e: postgres::Error| target.error(&e);
        self.client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS scopegate_schema (
                     id int PRIMARY KEY CHECK (id = 1),
                     version int NOT NULL);
                 INSERT INTO scopegate_schema (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;",
            )
            .map_err(e)?;
        let current = schema_version(&mut self.client).map_err(e)?;
        if current > MIGRATIONS.len() {
            return Err(StoreError::Incompatible(format!(
                "schema version {current} is newer than this scopegate understands ({}); upgrade scopegate",
                MIGRATIONS.len()
            )));
        }
        // Schema 1 created the table the fingerprint lives in.
        if current >= 1 {
            if let Some(stored) = stored_fingerprint(&mut self.client).map_err(e)? {
                if stored != fingerprint {
                    return Err(StoreError::WrongPepper);
                }
            }
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let mut tx = self.client.transaction().map_err(e)?;
            tx.batch_execute(sql).map_err(e)?;
            tx.execute(
                "UPDATE scopegate_schema SET version = $1 WHERE id = 1",
                &[&(i as i32 + 1)],
            )
            .map_err(e)?;
            tx.commit().map_err(e)?;
        }
        self.check_pepper(fingerprint)
    }

    /// The connection, opened again first if the last one was lost. Inside a
    /// read there is nothing to reopen: the read's snapshot is gone.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.broken || self.client.is_closed() {
            if self.in_read {
                return Err(StoreError::Unavailable(format!(
                    "PostgreSQL at {}: connection lost during a read",
                    self.target.location
                )));
            }
            self.client = self.target.connect()?;
            self.broken = false;
        }
        Ok(&mut self.client)
    }

    /// Maps an error, remembering a lost connection for the next call.
    fn fail(&mut self, e: postgres::Error) -> StoreError {
        if is_connection_error(&e) {
            self.broken = true;
        }
        self.target.error(&e)
    }

    /// Runs `op`; if the connection turns out to be lost (a server restart
    /// is only noticed when the connection is next used), opens a new one
    /// and runs `op` once more. Only for operations that are safe to repeat.
    fn run<T>(
        &mut self,
        mut op: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let first = op(self.client()?);
        match first {
            Ok(v) => Ok(v),
            Err(e) if is_connection_error(&e) && !self.in_read => {
                self.broken = true;
                let again = op(self.client()?);
                again.map_err(|e| self.fail(e))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Best effort: leaves no transaction open on the connection.
    fn rollback(&mut self) {
        if !self.broken && self.client.batch_execute("ROLLBACK").is_err() {
            self.broken = true;
        }
    }

    fn commit_in_tx(
        &mut self,
        change: &Change,
        audit: &Audit<'_>,
        version: u64,
    ) -> Result<(), postgres::Error> {
        let c = &mut self.client;
        match change {
            Change::PutOrg { org, uid, domains } => {
                c.execute(
                    "INSERT INTO orgs (id, uid) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                    &[org, &(*uid as i64)],
                )?;
                c.execute("DELETE FROM domains WHERE org = $1", &[org])?;
                if !domains.is_empty() {
                    let names: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
                    let ids: Vec<Option<i64>> =
                        domains.iter().map(|d| d.id.map(|i| i as i64)).collect();
                    c.execute(
                        "INSERT INTO domains (org, name, numeric_id)
                         SELECT $1, n, i FROM unnest($2::text[], $3::bigint[]) AS t(n, i)",
                        &[org, &names, &ids],
                    )?;
                }
            }
            Change::PutUser { user } => put_user(c, user)?,
            Change::DeactivateUser { user, at, .. } => {
                put_user(c, user)?;
                revoke_user_keys(c, &user.org, &user.id, *at)?;
            }
            Change::DeleteUser { org, user, at, .. } => {
                c.execute("DELETE FROM users WHERE org = $1 AND id = $2", &[org, user])?;
                revoke_user_keys(c, org, user, *at)?;
            }
            Change::CreateKeys { keys } => {
                for chunk in keys.chunks(INSERT_CHUNK) {
                    insert_keys(c, chunk)?;
                }
            }
            Change::RevokeKey { id, at, .. } => {
                c.execute(
                    "UPDATE keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    &[id, at],
                )?;
            }
            Change::RotateKey {
                id,
                at,
                expires_at,
                new,
                ..
            } => {
                insert_keys(c, std::slice::from_ref(new))?;
                let mut l = lifecycle_of(c, id)?;
                l.rotated_at = Some(*at);
                l.replaced_by = Some(new.id.clone());
                c.execute(
                    "UPDATE keys SET expires_at = $2, lifecycle = $3 WHERE id = $1",
                    &[id, expires_at, &crate::model::lifecycle_json(&l)],
                )?;
            }
            Change::UpdateKey {
                id,
                rate_limit,
                shadow,
                ..
            } => {
                let mut l = lifecycle_of(c, id)?;
                l.rate_limit = *rate_limit;
                l.shadow = shadow.clone();
                c.execute(
                    "UPDATE keys SET lifecycle = $2 WHERE id = $1",
                    &[id, &crate::model::lifecycle_json(&l)],
                )?;
            }
            Change::SetOrgRateLimit { org, rate_limit } => {
                c.execute(
                    "UPDATE orgs SET rate_limit = $2 WHERE id = $1",
                    &[
                        org,
                        &rate_limit.map(|r| serde_json::to_string(&r).expect("serialises")),
                    ],
                )?;
            }
            Change::PutServer { org, server } => {
                c.execute(
                    "INSERT INTO servers (org, name, numeric_id) VALUES ($1, $2, $3)
                     ON CONFLICT (org, name) DO UPDATE SET numeric_id = $3",
                    &[org, &server.name, &(server.id as i64)],
                )?;
            }
            Change::DeleteServer { org, server } => {
                c.execute(
                    "DELETE FROM servers WHERE org = $1 AND name = $2",
                    &[org, server],
                )?;
                // Members lose their access to it (a row that cannot be
                // read back is left as it is: loading it fails loudly).
                let members = c.query(
                    "SELECT id, servers FROM users WHERE org = $1 AND servers IS NOT NULL",
                    &[org],
                )?;
                for row in &members {
                    let id: String = row.try_get(0)?;
                    let text: String = row.try_get(1)?;
                    let Ok(mut servers) = parse_access(&text) else {
                        continue;
                    };
                    if servers.remove(server).is_some() {
                        c.execute(
                            "UPDATE users SET servers = $3 WHERE org = $1 AND id = $2",
                            &[org, &id, &crate::sqlite::servers_json(&servers)],
                        )?;
                    }
                }
            }
        }
        let v = version as i64;
        c.execute(
            "INSERT INTO changes (version, at_ms, actor, kind, subject, payload)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &v,
                &audit.at_ms,
                &audit.actor,
                &change.kind(),
                &change.subject(),
                &change.payload(),
            ],
        )?;
        c.execute(
            "UPDATE log_head SET version = $1, at_ms = $2 WHERE id = 1",
            &[&v, &audit.at_ms],
        )?;
        // Delivered to listeners when (and only if) this transaction commits.
        c.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &version.to_string()],
        )?;
        Ok(())
    }

    fn keys_in_read(&mut self, f: &mut dyn FnMut(KeyRecord)) -> Result<(), StoreError> {
        let c = self.client()?;
        let result = (|| {
            c.batch_execute(&format!(
                "DECLARE scopegate_keys NO SCROLL CURSOR FOR SELECT {KEY_COLUMNS} FROM keys"
            ))?;
            let fetch = c.prepare(&format!("FETCH {FETCH_ROWS} FROM scopegate_keys"))?;
            loop {
                let rows = c.query(&fetch, &[])?;
                for row in &rows {
                    match key_from_row(row) {
                        Ok(Ok(k)) => f(k),
                        Ok(Err(bad)) => return Ok(Err(bad)),
                        Err(e) => return Err(e),
                    }
                }
                if rows.len() < FETCH_ROWS {
                    break;
                }
            }
            c.batch_execute("CLOSE scopegate_keys")?;
            Ok(Ok(()))
        })();
        match result {
            Ok(inner) => inner,
            Err(e) => Err(self.fail(e)),
        }
    }
}

fn schema_version(c: &mut Client) -> Result<usize, postgres::Error> {
    let exists: bool = c
        .query_one("SELECT to_regclass('scopegate_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = c
        .query_opt("SELECT version FROM scopegate_schema WHERE id = 1", &[])?
        .map(|r| r.get(0));
    Ok(v.unwrap_or(0) as usize)
}

/// The head of the log and the entries after `after` (at most `limit`).
fn read_log(
    c: &mut impl postgres::GenericClient,
    after: u64,
    limit: usize,
) -> Result<(Vec<LogEntry>, u64), postgres::Error> {
    let head: i64 = c
        .query_one("SELECT version FROM log_head WHERE id = 1", &[])?
        .get(0);
    let mut entries = Vec::new();
    if head as u64 > after {
        let rows = c.query(
            "SELECT version, at_ms, payload FROM changes WHERE version > $1
             ORDER BY version LIMIT $2",
            &[&(after as i64), &(limit as i64)],
        )?;
        for r in &rows {
            let payload: Option<String> = r.try_get(2)?;
            entries.push(LogEntry {
                version: r.try_get::<_, i64>(0)? as u64,
                at_ms: r.try_get(1)?,
                change: payload.as_deref().and_then(Change::from_payload),
            });
        }
    }
    Ok((entries, head as u64))
}

fn stored_fingerprint(
    c: &mut impl postgres::GenericClient,
) -> Result<Option<String>, postgres::Error> {
    Ok(c.query_opt(
        "SELECT value FROM meta WHERE name = 'pepper_fingerprint'",
        &[],
    )?
    .map(|r| r.get(0)))
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

fn key_from_row(row: &Row) -> Result<Result<KeyRecord, StoreError>, postgres::Error> {
    let digest: Vec<u8> = row.try_get(1)?;
    let org_wide: bool = row.try_get(5)?;
    let domains: String = row.try_get(6)?;
    let locator: Option<i64> = row.try_get(11)?;
    let id: String = row.try_get(0)?;
    let org: String = row.try_get(2)?;
    let user: String = row.try_get(3)?;
    let user_uid: i64 = row.try_get(4)?;
    let expires_at: Option<i64> = row.try_get(7)?;
    let name: Option<String> = row.try_get(8)?;
    let created_at: i64 = row.try_get(9)?;
    let revoked_at: Option<i64> = row.try_get(10)?;
    let lifecycle: Option<String> = row.try_get(12)?;
    let server: Option<String> = row.try_get(13)?;
    let server_access: Option<String> = row.try_get(14)?;
    Ok((|| {
        let digest = Digest(
            digest
                .try_into()
                .map_err(|_| StoreError::Incompatible("digest is not 32 bytes".into()))?,
        );
        let scope = if org_wide {
            KeyScope::OrgWide
        } else {
            KeyScope::Domains(parse_access(&domains)?)
        };
        Ok(KeyRecord {
            id,
            digest,
            locator: locator.map_or_else(|| Locator::of_digest(&digest), |l| Locator(l as u64)),
            org,
            user,
            user_uid: user_uid as u64,
            scope,
            expires_at,
            name,
            created_at,
            revoked_at,
            lifecycle: crate::model::parse_lifecycle(lifecycle.as_deref())
                .map_err(StoreError::Incompatible)?,
            server: crate::sqlite::parse_binding(server, server_access.as_deref())?,
        })
    })())
}

fn user_from_row(row: &Row) -> Result<Result<UserRecord, StoreError>, postgres::Error> {
    let org: String = row.try_get(0)?;
    let id: String = row.try_get(1)?;
    let role: String = row.try_get(2)?;
    let status: String = row.try_get(3)?;
    let access: String = row.try_get(4)?;
    let uid: i64 = row.try_get(5)?;
    let servers: Option<String> = row.try_get(6)?;
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

/// Rows read by `read`, each converted by `conv`: a database error, or a
/// record the store cannot understand, or the records.
fn collect<T>(
    rows: Result<Vec<Row>, postgres::Error>,
    conv: fn(&Row) -> Result<Result<T, StoreError>, postgres::Error>,
) -> Result<Result<Vec<T>, StoreError>, postgres::Error> {
    let rows = rows?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        match conv(row)? {
            Ok(v) => out.push(v),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(out))
}

fn put_user(c: &mut Client, u: &UserRecord) -> Result<(), postgres::Error> {
    c.execute(
        "INSERT INTO users (org, id, role, status, access, uid, servers)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (org, id) DO UPDATE SET role = $3, status = $4, access = $5, uid = $6,
             servers = $7",
        &[
            &u.org,
            &u.id,
            &u.role.as_str(),
            &u.status.as_str(),
            &access_json(&u.access),
            &(u.uid as i64),
            &crate::sqlite::servers_json(&u.servers),
        ],
    )?;
    Ok(())
}

fn revoke_user_keys(c: &mut Client, org: &str, user: &str, at: i64) -> Result<(), postgres::Error> {
    c.execute(
        "UPDATE keys SET revoked_at = $3 WHERE org = $1 AND \"user\" = $2 AND revoked_at IS NULL",
        &[&org, &user, &at],
    )?;
    Ok(())
}

/// A key's lifecycle, read inside the committing transaction (which holds
/// the log head, so no other writer changes it meanwhile). A row that cannot
/// be read back counts as having none: the change then writes it afresh.
fn lifecycle_of(c: &mut Client, id: &str) -> Result<crate::KeyLifecycle, postgres::Error> {
    let row = c.query_opt("SELECT lifecycle FROM keys WHERE id = $1", &[&id])?;
    let text: Option<String> = row.and_then(|r| r.get(0));
    Ok(crate::model::parse_lifecycle(text.as_deref()).unwrap_or_default())
}

/// Inserts keys with one statement: each column travels as an array.
fn insert_keys(c: &mut Client, keys: &[KeyRecord]) -> Result<(), postgres::Error> {
    let mut id = Vec::with_capacity(keys.len());
    let mut digest = Vec::with_capacity(keys.len());
    let mut org = Vec::with_capacity(keys.len());
    let mut user = Vec::with_capacity(keys.len());
    let mut user_uid = Vec::with_capacity(keys.len());
    let mut org_wide = Vec::with_capacity(keys.len());
    let mut domains = Vec::with_capacity(keys.len());
    let mut expires_at = Vec::with_capacity(keys.len());
    let mut name = Vec::with_capacity(keys.len());
    let mut created_at = Vec::with_capacity(keys.len());
    let mut revoked_at = Vec::with_capacity(keys.len());
    let mut locator = Vec::with_capacity(keys.len());
    let mut lifecycle = Vec::with_capacity(keys.len());
    let mut server = Vec::with_capacity(keys.len());
    let mut server_access = Vec::with_capacity(keys.len());
    for k in keys {
        let (wide, d) = match &k.scope {
            KeyScope::OrgWide => (true, "{}".to_string()),
            KeyScope::Domains(d) => (false, access_json(d)),
        };
        id.push(k.id.as_str());
        digest.push(&k.digest.0[..]);
        org.push(k.org.as_str());
        user.push(k.user.as_str());
        user_uid.push(k.user_uid as i64);
        org_wide.push(wide);
        domains.push(d);
        expires_at.push(k.expires_at);
        name.push(k.name.as_deref());
        created_at.push(k.created_at);
        revoked_at.push(k.revoked_at);
        locator.push(k.locator.0 as i64);
        lifecycle.push(crate::model::lifecycle_json(&k.lifecycle));
        server.push(k.server.as_ref().map(|s| s.name.as_str()));
        server_access.push(k.server.as_ref().map(|s| s.access.as_str()));
    }
    c.execute(
        &format!(
            "INSERT INTO keys ({KEY_COLUMNS})
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::bigint[],
                 $6::boolean[], $7::text[], $8::bigint[], $9::text[], $10::bigint[], $11::bigint[],
                 $12::bigint[], $13::text[], $14::text[], $15::text[])"
        ),
        &[
            &id,
            &digest,
            &org,
            &user,
            &user_uid,
            &org_wide,
            &domains,
            &expires_at,
            &name,
            &created_at,
            &revoked_at,
            &locator,
            &lifecycle,
            &server,
            &server_access,
        ],
    )?;
    Ok(())
}

/// A follower's wake-up source: a dedicated connection that LISTENs on
/// [`CHANNEL`]. Never pooled, never reconnected behind the follower's back.
pub struct PgWatcher {
    client: Client,
    target: Target,
}

impl PgWatcher {
    fn open(target: &Target) -> Result<PgWatcher, StoreError> {
        let mut client = target.connect()?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| target.error(&e))?;
        Ok(PgWatcher {
            client,
            target: target.clone(),
        })
    }

    fn lost(&self, why: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "PostgreSQL at {}: the LISTEN connection was lost ({why})",
            self.target.location
        ))
    }
}

impl Watcher for PgWatcher {
    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        if self.client.is_closed() {
            return Err(self.lost("closed"));
        }
        let started = Instant::now();
        let first = self.client.notifications().timeout_iter(timeout).next();
        match first {
            Ok(Some(_)) => {
                // Drain what else is queued: one wake-up covers them all.
                let mut n = self.client.notifications();
                let mut pending = n.iter();
                loop {
                    match pending.next() {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(e) => return Err(self.target.error(&e)),
                    }
                }
                Ok(true)
            }
            Err(e) => {
                let e = self.target.error(&e);
                Err(match e {
                    StoreError::Database(m) => self.lost(&m),
                    other => other,
                })
            }
            Ok(None) => {
                // `None` also means the server hung up before the timeout.
                if self.client.is_closed() || started.elapsed() + Duration::from_millis(1) < timeout
                {
                    return Err(self.lost("the server closed it"));
                }
                // A quiet connection may be a dead one: ask (one round trip
                // per poll interval).
                match self.client.is_valid(CONNECT_TIMEOUT) {
                    Ok(()) => Ok(false),
                    Err(e) => Err(self.lost(&self.target.scrub(describe(&e)))),
                }
            }
        }
    }
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn check_pepper(&mut self, fingerprint: &str) -> Result<(), StoreError> {
        let stored = self.run(|c| {
            // Two instances creating the store at once: the first insert wins
            // and both compare against it.
            c.execute(
                "INSERT INTO meta (name, value) VALUES ('pepper_fingerprint', $1)
                 ON CONFLICT (name) DO NOTHING",
                &[&fingerprint],
            )?;
            stored_fingerprint(c)
        })?;
        match stored {
            Some(s) if s == fingerprint => Ok(()),
            _ => Err(StoreError::WrongPepper),
        }
    }

    fn begin_write(&mut self) -> Result<(), StoreError> {
        let sql = format!(
            "SET lock_timeout = '{WRITE_LOCK_WAIT}'; SELECT pg_advisory_lock({WRITE_LOCK}); SET lock_timeout = 0"
        );
        match self.run(|c| c.batch_execute(&sql)) {
            Ok(()) => Ok(()),
            Err(StoreError::Database(m)) => {
                let _ = self.client.batch_execute("SET lock_timeout = 0");
                Err(StoreError::Unavailable(format!(
                    "other instances kept the store's write lock for {WRITE_LOCK_WAIT} ({m})"
                )))
            }
            Err(e) => Err(e),
        }
    }

    fn check_schema(&mut self) -> Result<(), StoreError> {
        let found = schema_version(&mut self.client);
        let found = found.map_err(|e| self.fail(e))?;
        if found > MIGRATIONS.len() {
            return Err(StoreError::NewerSchema {
                found,
                known: MIGRATIONS.len(),
            });
        }
        Ok(())
    }

    fn end_write(&mut self) -> Result<(), StoreError> {
        if self.broken || self.client.is_closed() {
            // The session, and with it the lock, is gone already.
            return Ok(());
        }
        self.client
            .batch_execute(&format!("SELECT pg_advisory_unlock({WRITE_LOCK})"))
            .map_err(|e| self.fail(e))
    }

    fn begin_read(&mut self) -> Result<(), StoreError> {
        if self.in_read {
            return Err(StoreError::Database("a read is already open".into()));
        }
        self.run(|c| c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))?;
        self.in_read = true;
        Ok(())
    }

    fn end_read(&mut self) -> Result<(), StoreError> {
        if !self.in_read {
            return Ok(());
        }
        self.in_read = false;
        if self.broken {
            return Err(StoreError::Unavailable(format!(
                "PostgreSQL at {}: connection lost during a read",
                self.target.location
            )));
        }
        // COMMIT of a failed read rolls it back: either way none is left open.
        self.client
            .batch_execute("COMMIT")
            .map_err(|e| self.fail(e))
    }

    fn version(&mut self) -> Result<(u64, i64), StoreError> {
        self.run(|c| {
            let row = c.query_one("SELECT version, at_ms FROM log_head WHERE id = 1", &[])?;
            Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1)))
        })
    }

    fn load_orgs(&mut self) -> Result<Vec<(String, u64, Vec<Domain>)>, StoreError> {
        let (orgs, domains) = self.run(|c| {
            let orgs = c.query("SELECT id, uid FROM orgs ORDER BY id", &[])?;
            let domains = c.query(
                "SELECT org, name, numeric_id FROM domains ORDER BY org, name",
                &[],
            )?;
            Ok((orgs, domains))
        })?;
        let mut out: BTreeMap<String, (u64, Vec<Domain>)> = BTreeMap::new();
        let e = |e: postgres::Error| StoreError::Database(describe(&e));
        for r in &orgs {
            let id: String = r.try_get(0).map_err(e)?;
            let uid: i64 = r.try_get(1).map_err(e)?;
            out.insert(id, (uid as u64, Vec::new()));
        }
        for r in &domains {
            let org: String = r.try_get(0).map_err(e)?;
            let d = Domain {
                name: r.try_get(1).map_err(e)?,
                id: r.try_get::<_, Option<i64>>(2).map_err(e)?.map(|i| i as u64),
            };
            if let Some((_, list)) = out.get_mut(&org) {
                list.push(d);
            }
        }
        Ok(out.into_iter().map(|(id, (uid, d))| (id, uid, d)).collect())
    }

    fn load_servers(&mut self) -> Result<Vec<(String, Server)>, StoreError> {
        let rows = self.run(|c| {
            c.query(
                "SELECT org, name, numeric_id FROM servers ORDER BY org, name",
                &[],
            )
        })?;
        let e = |e: postgres::Error| StoreError::Database(describe(&e));
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let org: String = r.try_get(0).map_err(e)?;
            let name: String = r.try_get(1).map_err(e)?;
            let id: i64 = r.try_get(2).map_err(e)?;
            out.push((
                org,
                Server {
                    name,
                    id: id as u64,
                },
            ));
        }
        Ok(out)
    }

    fn load_users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        self.run(|c| {
            collect(
                c.query(&format!("SELECT {USER_COLUMNS} FROM users"), &[]),
                user_from_row,
            )
        })?
    }

    fn for_each_key(&mut self, f: &mut dyn FnMut(KeyRecord)) -> Result<(), StoreError> {
        if self.in_read {
            return self.keys_in_read(f);
        }
        self.begin_read()?;
        let result = self.keys_in_read(f);
        let end = self.end_read();
        result?;
        end
    }

    fn commit(
        &mut self,
        change: &Change,
        audit: &Audit<'_>,
        expected: u64,
    ) -> Result<u64, StoreError> {
        if self.in_read {
            return Err(StoreError::Database("commit inside a read".into()));
        }
        // Lock the head of the log first: writers queue here, and each sees
        // the head as the one before it committed it. Safe to repeat on a
        // new connection: nothing was written yet.
        let actual = self.run(|c| {
            c.batch_execute("BEGIN")?;
            let head = c.query_one("SELECT version FROM log_head WHERE id = 1 FOR UPDATE", &[]);
            if head.is_err() {
                let _ = c.batch_execute("ROLLBACK");
            }
            Ok(head?.get::<_, i64>(0) as u64)
        })?;
        if actual != expected {
            self.rollback();
            return Err(StoreError::Behind { expected, actual });
        }
        let version = expected + 1;
        if let Err(e) = self.commit_in_tx(change, audit, version) {
            let e = self.fail(e);
            self.rollback();
            return Err(e);
        }
        // A connection lost during COMMIT leaves the outcome unknown; the
        // next write catches up with the log first, so it is never applied
        // twice.
        if let Err(e) = self.client.batch_execute("COMMIT") {
            let lost = is_connection_error(&e);
            let e = self.fail(e);
            self.rollback();
            return Err(match e {
                StoreError::Unavailable(m) if lost => StoreError::Indeterminate(m),
                other => other,
            });
        }
        Ok(version)
    }

    fn changes_since(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, u64), StoreError> {
        let in_read = self.in_read;
        self.run(|c| {
            if in_read {
                return read_log(c, after, limit);
            }
            // One snapshot, so the head and the entries agree.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let log = read_log(&mut tx, after, limit)?;
            tx.commit()?;
            Ok(log)
        })
    }

    fn watcher(&self) -> Result<Box<dyn Watcher>, StoreError> {
        Ok(Box::new(PgWatcher::open(&self.target)?))
    }

    fn prune_payloads(&mut self, version: u64) -> Result<u64, StoreError> {
        self.run(|c| {
            c.execute(
                "UPDATE changes SET payload = NULL WHERE version <= $1 AND payload IS NOT NULL",
                &[&(version as i64)],
            )
        })
    }

    fn get_key(&mut self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let rows = self.run(|c| {
            collect(
                c.query(
                    &format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"),
                    &[&id],
                ),
                key_from_row,
            )
        })??;
        Ok(rows.into_iter().next())
    }

    fn list_keys(&mut self, org: &str, user: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        self.run(|c| {
            collect(
                c.query(
                    &format!(
                        "SELECT {KEY_COLUMNS} FROM keys
                         WHERE org = $1 AND ($2::text IS NULL OR \"user\" = $2)
                         ORDER BY created_at, id"
                    ),
                    &[&org, &user],
                ),
                key_from_row,
            )
        })?
    }

    fn list_users(&mut self, org: &str) -> Result<Vec<UserRecord>, StoreError> {
        self.run(|c| {
            collect(
                c.query(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE org = $1 ORDER BY id"),
                    &[&org],
                ),
                user_from_row,
            )
        })?
    }

    fn org_rate_limits(&mut self) -> Result<Vec<(String, RateLimit)>, StoreError> {
        let rows = self.run(|c| {
            c.query(
                "SELECT id, rate_limit FROM orgs WHERE rate_limit IS NOT NULL",
                &[],
            )
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let org: String = r.get(0);
            let json: String = r.get(1);
            let limit = serde_json::from_str(&json).map_err(|e| {
                StoreError::Incompatible(format!("bad rate limit of organisation {org}: {e}"))
            })?;
            out.push((org, limit));
        }
        Ok(out)
    }

    fn add_usage(&mut self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        let ids: Vec<&str> = batch.iter().map(|u| u.id.as_str()).collect();
        let orgs: Vec<&str> = batch.iter().map(|u| u.org.as_str()).collect();
        let last: Vec<i64> = batch.iter().map(|u| u.last_used_at).collect();
        let requests: Vec<i64> = batch.iter().map(|u| u.requests as i64).collect();
        let grace: Vec<i64> = batch.iter().map(|u| u.grace_uses as i64).collect();
        // One statement: the batch is written whole or not at all. A batch
        // repeated because the connection was lost as it committed may be
        // counted twice: usage is a statistic, not access data.
        self.run(|c| {
            c.execute(
                "INSERT INTO key_usage AS u (id, org, last_used_at, requests, grace_uses)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
                 ON CONFLICT (id) DO UPDATE SET
                     last_used_at = GREATEST(u.last_used_at, EXCLUDED.last_used_at),
                     requests = u.requests + EXCLUDED.requests,
                     grace_uses = u.grace_uses + EXCLUDED.grace_uses",
                &[&ids, &orgs, &last, &requests, &grace],
            )
        })?;
        Ok(())
    }

    fn usage(&mut self, org: &str, id: Option<&str>) -> Result<Vec<(String, Usage)>, StoreError> {
        let rows = self.run(|c| {
            c.query(
                "SELECT id, last_used_at, requests, grace_uses FROM key_usage
                 WHERE org = $1 AND ($2::text IS NULL OR id = $2)",
                &[&org, &id],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    Usage {
                        last_used_at: r.get(1),
                        requests: r.get::<_, i64>(2) as u64,
                        grace_uses: r.get::<_, i64>(3) as u64,
                    },
                )
            })
            .collect())
    }
}
