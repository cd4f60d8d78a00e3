//! DESIGN "Write path and durability": validate -> commit (durable) ->
//! publish -> answer, and "a restart loads the store: an acknowledged
//! revocation never comes back".
//!
//! - a writer process is SIGKILLed mid-stream; everything it acknowledged is
//!   there after reopening;
//! - a store cannot be opened with another pepper;
//! - a failed commit leaves the published snapshot untouched;
//! - a restart with 10k keys reproduces status and every decision.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scopegate_keystore::{
    Access, Audit, Change, Decision, Domain, DomainInput, DomainRef, ErrorKind, KeyRecord,
    KeyStore, NewKey, Pepper, Refusal, Role, SqliteStore, Status, Store, StoreError, Target,
    UserInput, UserRecord,
};

const ACTOR: &str = "durability-test";
const NOW: i64 = 1_800_000_000;
const PEPPER: &[u8] = b"durability-test-pepper-0123456789";

fn pepper() -> Pepper {
    Pepper::new(PEPPER)
}

fn domains(names: &[&str]) -> Vec<DomainInput> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| DomainInput {
            name: n.to_string(),
            id: Some(100 + i as u64),
        })
        .collect()
}

fn user(role: Role, access: &[(&str, Access)]) -> UserInput {
    UserInput {
        role,
        access: access.iter().map(|(d, a)| (d.to_string(), *a)).collect(),
        status: None,
    }
}

fn new_key(user: &str) -> NewKey {
    NewKey {
        user: user.to_string(),
        ..NewKey::default()
    }
}

fn open(path: &Path) -> KeyStore {
    match KeyStore::open_sqlite(path, pepper()) {
        Ok(ks) => ks,
        Err(e) => panic!("opening {}: {e}", path.display()),
    }
}

// ---------------------------------------------------------------------------
// (a) SIGKILL in the middle of a stream of writes
// ---------------------------------------------------------------------------

const WRITER_ENV: &str = "SCOPEGATE_DURABILITY_WRITER_DB";
const WRITER_TAG_ENV: &str = "SCOPEGATE_DURABILITY_WRITER_TAG";
const WRITER_TEST: &str = "crash_writer_child";
const CRASH_ORG: &str = "crash-org";
const CRASH_DOMAINS: [&str; 3] = ["one.example", "two.example", "three.example"];

/// One acknowledged change, as the writer printed it after the call returned.
#[derive(Debug, Clone)]
enum Ack {
    Key {
        id: String,
        secret: String,
        user: String,
        version: u64,
    },
    Revoke {
        id: String,
        version: u64,
    },
    Deactivate {
        user: String,
        version: u64,
    },
    Other {
        version: u64,
    },
}

impl Ack {
    fn version(&self) -> u64 {
        match self {
            Ack::Key { version, .. }
            | Ack::Revoke { version, .. }
            | Ack::Deactivate { version, .. }
            | Ack::Other { version } => *version,
        }
    }

    fn parse(line: &str) -> Option<Ack> {
        // With --nocapture the harness may print "test ... " before the
        // first line of the test's own output, on the same line.
        let rest = &line[line.find("ACK ")? + 4..];
        let f: Vec<&str> = rest.split(' ').collect();
        let v = |s: &str| s.parse::<u64>().expect("version");
        Some(match f.as_slice() {
            ["key", id, secret, user, version] => Ack::Key {
                id: id.to_string(),
                secret: secret.to_string(),
                user: user.to_string(),
                version: v(version),
            },
            ["revoke", id, version] => Ack::Revoke {
                id: id.to_string(),
                version: v(version),
            },
            ["deactivate", user, version] => Ack::Deactivate {
                user: user.to_string(),
                version: v(version),
            },
            ["other", version] => Ack::Other {
                version: v(version),
            },
            _ => panic!("unparseable acknowledgement {line:?}"),
        })
    }
}

fn ack(line: String) {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).unwrap();
    out.write_all(b"\n").unwrap();
    out.flush().unwrap();
}

/// The writer role. Without the environment variable this test does nothing;
/// the crash test runs this binary again with it set, and kills it.
#[test]
fn crash_writer_child() {
    let Ok(db) = std::env::var(WRITER_ENV) else {
        return;
    };
    let tag = std::env::var(WRITER_TAG_ENV).unwrap_or_default();
    let ks = open(Path::new(&db));
    let owner = "owner@crash.test";
    let v = ks
        .put_org(ACTOR, CRASH_ORG, &domains(&CRASH_DOMAINS))
        .unwrap()
        .version;
    ack(format!("ACK other {v}"));
    let v = ks
        .put_user(ACTOR, CRASH_ORG, owner, user(Role::Owner, &[]))
        .unwrap()
        .version;
    ack(format!("ACK other {v}"));
    let mut members: Vec<String> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for i in 0.. {
        // A fresh member every so often.
        if i % 12 == 0 {
            let m = format!("m{tag}-{i}@crash.test");
            let v = ks
                .put_user(
                    ACTOR,
                    CRASH_ORG,
                    &m,
                    user(
                        Role::Member,
                        &[
                            (CRASH_DOMAINS[0], Access::ReadWrite),
                            (CRASH_DOMAINS[1], Access::Read),
                        ],
                    ),
                )
                .unwrap()
                .version;
            ack(format!("ACK other {v}"));
            members.push(m);
        }
        let creator = if i % 5 == 0 {
            owner.to_string()
        } else {
            members.last().unwrap().clone()
        };
        let created = ks
            .create_key(
                ACTOR,
                CRASH_ORG,
                NewKey {
                    org_wide: creator == owner,
                    ..new_key(&creator)
                },
                NOW,
            )
            .unwrap();
        ack(format!(
            "ACK key {} {} {} {}",
            created.value.meta.id, created.value.secret, creator, created.version
        ));
        keys.push(created.value.meta.id.clone());
        if i % 3 == 2 {
            let id = keys[(i * 7) % keys.len()].clone();
            let v = ks.revoke_key(ACTOR, &id, NOW).unwrap().version;
            ack(format!("ACK revoke {id} {v}"));
        }
        if i % 12 == 11 {
            // Deactivate the member before the current one.
            if members.len() >= 2 {
                let m = members[members.len() - 2].clone();
                let v = ks.deactivate_user(ACTOR, CRASH_ORG, &m).unwrap().version;
                ack(format!("ACK deactivate {m} {v}"));
            }
        }
    }
}

/// Runs the writer against `db`, kills it after `kill_after` acknowledgements,
/// and returns every acknowledgement it completed.
fn run_and_kill(db: &Path, tag: &str, kill_after: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args(["--exact", WRITER_TEST, "--nocapture", "--test-threads=1"])
        .env(WRITER_ENV, db)
        .env(WRITER_TAG_ENV, tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut line = String::new();
    while acks.len() < kill_after {
        line.clear();
        let n = reader.read_line(&mut line).expect("read writer output");
        if n == 0 {
            let status = child.wait();
            panic!("writer exited early ({status:?}) after {} acks", acks.len());
        }
        if let Some(a) = Ack::parse(line.trim_end()) {
            acks.push(a);
        }
        assert!(Instant::now() < deadline, "writer too slow");
    }
    // SIGKILL on Unix: no destructors, no SQLite close.
    child.kill().expect("kill writer");
    let status = child.wait().expect("reap writer");
    assert!(!status.success(), "writer was killed: {status:?}");
    // Lines already written before the kill were acknowledged too; a line cut
    // short by the kill was not.
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.ends_with('\n') => {
                if let Some(a) = Ack::parse(line.trim_end()) {
                    acks.push(a);
                }
            }
            Ok(_) => break,
        }
    }
    acks
}

/// The user the check itself adds after each round.
const CHECKER: &str = "after@crash.test";

/// Asserts that the reopened store holds every acknowledged change in `acks`,
/// made by `rounds` writers killed one after the other: each may have
/// committed one change it had no time to acknowledge.
fn assert_acknowledged(db: &Path, acks: &[Ack], rounds: usize) {
    let ks = open(db);
    let last = acks.iter().map(Ack::version).max().unwrap_or(0);
    let status = ks.status();
    // The log's entries nobody acknowledged: at most one per killed writer.
    let acked: BTreeSet<u64> = acks.iter().map(Ack::version).collect();
    let mut raw = SqliteStore::open(db).unwrap();
    let (entries, _) = raw.changes_since(0, 1_000_000).unwrap();
    drop(raw);
    // (This check's own write at its end is not the writer's.)
    let ours = format!("{CRASH_ORG}/{CHECKER}");
    let unacked: Vec<(u64, &'static str, String)> = entries
        .iter()
        .filter(|e| !acked.contains(&e.version))
        .map(|e| {
            let c = e.change.as_ref().expect("every entry keeps its change");
            (e.version, c.kind(), c.subject())
        })
        .filter(|(_, _, subject)| *subject != ours)
        .collect();
    assert!(
        unacked.len() <= rounds,
        "{} changes committed without an acknowledgement by {rounds} killed writer(s): {unacked:?}",
        unacked.len()
    );
    assert!(
        status.version >= last,
        "version went back: {} < acknowledged {last}",
        status.version
    );
    let revoked: BTreeSet<&str> = acks
        .iter()
        .filter_map(|a| match a {
            Ack::Revoke { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let mut deactivated_at: BTreeMap<&str, u64> = BTreeMap::new();
    for a in acks {
        if let Ack::Deactivate { user, version } = a {
            deactivated_at.insert(user.as_str(), *version);
        }
    }
    let mut checked = 0;
    for a in acks {
        let Ack::Key {
            id,
            secret,
            user,
            version,
        } = a
        else {
            continue;
        };
        let d = ks.check(Some(secret), Target::AnyKey, NOW);
        let creator_gone = deactivated_at
            .get(user.as_str())
            .is_some_and(|v| v > version);
        if revoked.contains(id.as_str()) {
            assert_eq!(
                d.outcome,
                Err(Refusal::RevokedKey),
                "revoked key {id} came back"
            );
        } else if creator_gone {
            assert!(
                matches!(
                    d.outcome,
                    Err(Refusal::RevokedKey) | Err(Refusal::CreatorInactive)
                ),
                "key {id} of deactivated {user} came back: {:?}",
                d.outcome
            );
        } else {
            // No unacknowledged later change can touch this key: the writer
            // only revokes keys it reports, and the in-flight change may be
            // a revocation of an acknowledged key, so allow exactly that.
            match &d.outcome {
                Ok(identity) => {
                    assert_eq!(&identity.key_id, id);
                    let w = ks.check(
                        Some(secret),
                        Target::Domain(DomainRef::Name(CRASH_DOMAINS[0]), Access::ReadWrite),
                        NOW,
                    );
                    assert!(w.outcome.is_ok(), "{id}: {:?}", w.outcome);
                }
                Err(Refusal::RevokedKey) => {
                    // Only by a change in flight at a kill: its revocation,
                    // or its creator's deactivation.
                    let by = format!("{CRASH_ORG}/{user}");
                    assert!(
                        unacked.iter().any(|(_, kind, subject)| {
                            (*kind == "revoke_key" && subject == id)
                                || (*kind == "deactivate_user" && *subject == by)
                        }),
                        "acknowledged key {id} lost (unacknowledged changes: {unacked:?})"
                    );
                }
                Err(r) => panic!("acknowledged key {id} refused: {r:?}"),
            }
        }
        assert_eq!(ks.get_key(id, NOW).unwrap().id, *id);
        checked += 1;
    }
    // The writer acknowledges three other changes (organisation, owner,
    // first member) before its first key; a kill after one acknowledgement
    // may find those three written, and no key yet.
    assert!(checked > 0 || acks.len() <= 3, "no key among {acks:?}");
    // The store is consistent with itself.
    let listed = ks.list_keys(CRASH_ORG, None, None, NOW).unwrap();
    let live = listed.iter().filter(|m| m.revoked_at.is_none()).count();
    assert_eq!(status.keys, live);
    // And it keeps working.
    let applied = ks
        .put_user(ACTOR, CRASH_ORG, CHECKER, user(Role::Admin, &[]))
        .unwrap();
    assert_eq!(applied.version, status.version + 1);
}

#[test]
fn acknowledged_changes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    // Separate stores, killed after different numbers of acknowledgements.
    for (round, kill_after) in [1usize, 9, 33, 70].into_iter().enumerate() {
        let db = dir.path().join(format!("round-{round}.db"));
        let acks = run_and_kill(&db, &format!("r{round}"), kill_after);
        assert!(acks.len() >= kill_after);
        assert_acknowledged(&db, &acks, 1);
    }
    // One store killed three times in a row, reopened in between.
    let db = dir.path().join("repeated.db");
    let mut all = Vec::new();
    for (round, kill_after) in [20usize, 5, 41].into_iter().enumerate() {
        all.extend(run_and_kill(&db, &format!("x{round}"), kill_after));
        assert_acknowledged(&db, &all, round + 1);
    }
}

// ---------------------------------------------------------------------------
// (b) the wrong pepper
// ---------------------------------------------------------------------------

#[test]
fn reopening_with_another_pepper_fails() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let secret = {
        let ks = open(&db);
        ks.put_org(ACTOR, "o", &domains(&["a.example"])).unwrap();
        ks.put_user(ACTOR, "o", "owner@o.test", user(Role::Owner, &[]))
            .unwrap();
        ks.create_key(ACTOR, "o", new_key("owner@o.test"), NOW)
            .unwrap()
            .value
            .secret
    };
    for other in [
        &b"another-pepper-0123456789"[..],
        b"",
        b"durability-test-pepper-012345678",
    ] {
        match KeyStore::open_sqlite(&db, Pepper::new(other)) {
            Ok(_) => panic!("opened with the wrong pepper {other:?}"),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Store);
                assert_eq!(e.code, "store_error");
                assert_eq!(e.message, StoreError::WrongPepper.to_string());
                assert!(e.message.contains("pepper does not match"), "{e}");
            }
        }
    }
    // The failed attempts did not overwrite the recorded fingerprint.
    let ks = open(&db);
    assert!(ks
        .check(
            Some(&secret),
            Target::Domain(DomainRef::Name("a.example"), Access::ReadWrite),
            NOW
        )
        .outcome
        .is_ok());
    // The same through the Store trait directly.
    let mut raw = SqliteStore::open(&db).unwrap();
    assert!(matches!(
        raw.check_pepper(&Pepper::new(b"x").fingerprint()),
        Err(StoreError::WrongPepper)
    ));
    assert!(raw.check_pepper(&pepper().fingerprint()).is_ok());
}

// ---------------------------------------------------------------------------
// (c) a failing commit publishes nothing
// ---------------------------------------------------------------------------

/// Delegates to an in-memory SQLite store, but refuses commits on demand,
/// as a full disk or a lost database connection would.
struct FlakyStore {
    inner: SqliteStore,
    fail: Arc<AtomicBool>,
    commits: Arc<std::sync::atomic::AtomicUsize>,
    /// Panic in the next commits instead (a bug while a write is queued).
    panic: Arc<AtomicBool>,
}

impl Store for FlakyStore {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    fn begin_write(&mut self) -> Result<(), StoreError> {
        self.inner.begin_write()
    }
    fn end_write(&mut self) -> Result<(), StoreError> {
        self.inner.end_write()
    }
    fn begin_read(&mut self) -> Result<(), StoreError> {
        self.inner.begin_read()
    }
    fn end_read(&mut self) -> Result<(), StoreError> {
        self.inner.end_read()
    }
    fn changes_since(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<scopegate_keystore::LogEntry>, u64), StoreError> {
        self.inner.changes_since(after, limit)
    }
    fn watcher(&self) -> Result<Box<dyn scopegate_keystore::Watcher>, StoreError> {
        self.inner.watcher()
    }
    fn prune_payloads(&mut self, version: u64) -> Result<u64, StoreError> {
        self.inner.prune_payloads(version)
    }
    fn check_schema(&mut self) -> Result<(), StoreError> {
        self.inner.check_schema()
    }
    fn check_pepper(&mut self, fingerprint: &str) -> Result<(), StoreError> {
        self.inner.check_pepper(fingerprint)
    }
    fn version(&mut self) -> Result<(u64, i64), StoreError> {
        self.inner.version()
    }
    fn load_orgs(&mut self) -> Result<Vec<(String, u64, Vec<Domain>)>, StoreError> {
        self.inner.load_orgs()
    }
    fn load_servers(&mut self) -> Result<Vec<(String, scopegate_keystore::Server)>, StoreError> {
        self.inner.load_servers()
    }
    fn load_users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        self.inner.load_users()
    }
    fn for_each_key(&mut self, f: &mut dyn FnMut(KeyRecord)) -> Result<(), StoreError> {
        self.inner.for_each_key(f)
    }
    fn commit(
        &mut self,
        change: &Change,
        audit: &Audit<'_>,
        expected: u64,
    ) -> Result<u64, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Database("injected failure: disk full".into()));
        }
        if self.panic.load(Ordering::SeqCst) {
            panic!("injected panic while a write holds the store");
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(change, audit, expected)
    }
    fn get_key(&mut self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get_key(id)
    }
    fn list_keys(&mut self, org: &str, user: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list_keys(org, user)
    }
    fn list_users(&mut self, org: &str) -> Result<Vec<UserRecord>, StoreError> {
        self.inner.list_users(org)
    }
    fn org_rate_limits(
        &mut self,
    ) -> Result<Vec<(String, scopegate_keystore::RateLimit)>, StoreError> {
        self.inner.org_rate_limits()
    }
    fn add_usage(&mut self, batch: &[scopegate_keystore::UsageDelta]) -> Result<(), StoreError> {
        self.inner.add_usage(batch)
    }
    fn usage(
        &mut self,
        org: &str,
        id: Option<&str>,
    ) -> Result<Vec<(String, scopegate_keystore::Usage)>, StoreError> {
        self.inner.usage(org, id)
    }
}

/// A change to try while the store is failing.
type Attempt<'a> = Box<dyn Fn() -> Result<(), scopegate_keystore::Error> + 'a>;

fn decision_matrix(ks: &KeyStore, secrets: &[String], names: &[&str]) -> Vec<Decision> {
    let mut targets = vec![Target::AnyKey, Target::Organisation];
    for n in names {
        for need in [Access::Read, Access::ReadWrite] {
            targets.push(Target::Domain(DomainRef::Name(n), need));
        }
    }
    for id in [100, 101, 102, 103] {
        targets.push(Target::Domain(DomainRef::Id(id), Access::ReadWrite));
    }
    secrets
        .iter()
        .flat_map(|s| targets.iter().map(move |t| ks.check(Some(s), *t, NOW)))
        .collect()
}

#[test]
fn a_failed_commit_leaves_the_snapshot_unchanged() {
    let fail = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = FlakyStore {
        inner: SqliteStore::in_memory().unwrap(),
        fail: Arc::clone(&fail),
        commits: Arc::clone(&commits),
        panic: Arc::default(),
    };
    let ks = KeyStore::open(Box::new(store), pepper()).expect("open");
    let names = ["a.example", "b.example", "c.example"];
    ks.put_org(ACTOR, "o", &domains(&names)).unwrap();
    ks.put_user(ACTOR, "o", "owner@o.test", user(Role::Owner, &[]))
        .unwrap();
    ks.put_user(ACTOR, "o", "admin@o.test", user(Role::Admin, &[]))
        .unwrap();
    ks.put_user(
        ACTOR,
        "o",
        "m@o.test",
        user(
            Role::Member,
            &[
                ("a.example", Access::ReadWrite),
                ("b.example", Access::Read),
            ],
        ),
    )
    .unwrap();
    let mut created = Vec::new();
    for k in [
        NewKey {
            org_wide: true,
            ..new_key("admin@o.test")
        },
        new_key("m@o.test"),
        new_key("owner@o.test"),
        NewKey {
            secret: Some("imported-token-1".into()),
            ..new_key("m@o.test")
        },
    ] {
        created.push(ks.create_key(ACTOR, "o", k, NOW).unwrap().value);
    }
    let secrets: Vec<String> = created.iter().map(|c| c.secret.clone()).collect();
    let before_status = ks.status();
    let before = decision_matrix(&ks, &secrets, &names);
    let before_keys = ks.list_keys("o", None, None, NOW).unwrap();
    let committed = commits.load(Ordering::SeqCst);

    fail.store(true, Ordering::SeqCst);
    let attempts: Vec<(&str, Attempt<'_>)> = vec![
        (
            "revoke",
            Box::new(|| ks.revoke_key(ACTOR, &created[1].meta.id, NOW).map(|_| ())),
        ),
        (
            "put_user demote admin",
            Box::new(|| {
                ks.put_user(ACTOR, "o", "admin@o.test", user(Role::Member, &[]))
                    .map(|_| ())
            }),
        ),
        (
            "put_user change access",
            Box::new(|| {
                ks.put_user(ACTOR, "o", "m@o.test", user(Role::Member, &[]))
                    .map(|_| ())
            }),
        ),
        (
            "put_user deactivate",
            Box::new(|| {
                ks.put_user(
                    ACTOR,
                    "o",
                    "m@o.test",
                    UserInput {
                        status: Some(Status::Deactivated),
                        ..user(Role::Member, &[])
                    },
                )
                .map(|_| ())
            }),
        ),
        (
            "put_user new",
            Box::new(|| {
                ks.put_user(ACTOR, "o", "new@o.test", user(Role::Admin, &[]))
                    .map(|_| ())
            }),
        ),
        (
            "put_org",
            Box::new(|| ks.put_org(ACTOR, "o", &domains(&["a.example"])).map(|_| ())),
        ),
        (
            "put_org new",
            Box::new(|| ks.put_org(ACTOR, "p", &domains(&["a.example"])).map(|_| ())),
        ),
        (
            "deactivate",
            Box::new(|| ks.deactivate_user(ACTOR, "o", "m@o.test").map(|_| ())),
        ),
        (
            "delete",
            Box::new(|| ks.delete_user(ACTOR, "o", "admin@o.test").map(|_| ())),
        ),
        (
            "create",
            Box::new(|| {
                ks.create_key(
                    ACTOR,
                    "o",
                    NewKey {
                        secret: Some("never-committed".into()),
                        ..new_key("owner@o.test")
                    },
                    NOW,
                )
                .map(|_| ())
            }),
        ),
    ];
    for (what, attempt) in &attempts {
        let e = attempt().expect_err(what);
        assert_eq!(
            (e.kind, e.code),
            (ErrorKind::Store, "store_error"),
            "{what}: {e}"
        );
        assert!(e.message.contains("injected failure"), "{what}: {e}");
        assert_eq!(ks.status(), before_status, "{what} changed the status");
        assert_eq!(
            decision_matrix(&ks, &secrets, &names),
            before,
            "{what} changed a decision"
        );
        assert_eq!(
            ks.list_keys("o", None, None, NOW).unwrap(),
            before_keys,
            "{what}"
        );
        assert_eq!(
            ks.check(Some("never-committed"), Target::AnyKey, NOW)
                .outcome,
            Err(Refusal::UnknownKey)
        );
    }
    assert_eq!(commits.load(Ordering::SeqCst), committed);

    // Once the store recovers, the same change applies at the next version.
    fail.store(false, Ordering::SeqCst);
    let applied = ks.revoke_key(ACTOR, &created[1].meta.id, NOW).unwrap();
    assert_eq!(applied.version, before_status.version + 1);
    assert_eq!(
        ks.check(Some(&secrets[1]), Target::AnyKey, NOW).outcome,
        Err(Refusal::RevokedKey)
    );
    ks.deactivate_user(ACTOR, "o", "m@o.test").unwrap();
    assert_eq!(
        ks.check(Some(&secrets[3]), Target::AnyKey, NOW).outcome,
        Err(Refusal::RevokedKey)
    );
    assert_eq!(ks.status().version, before_status.version + 2);
}

// ---------------------------------------------------------------------------
// (d) restart with 10k keys
// ---------------------------------------------------------------------------

#[test]
fn restart_with_ten_thousand_keys_reproduces_every_decision() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let names: Vec<String> = (0..12).map(|i| format!("d{i}.example")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let ks = open(&db);
    let mut all_secrets: Vec<String> = Vec::new();
    let mut users_by_org: Vec<(String, Vec<String>)> = Vec::new();
    for o in 0..2 {
        let org = format!("org-{o}");
        ks.put_org(ACTOR, &org, &domains(&name_refs)).unwrap();
        let mut users = Vec::new();
        for u in 0..20 {
            let id = format!("u{u}@org{o}.test");
            let (role, access): (Role, Vec<(&str, Access)>) = match u {
                0 => (Role::Owner, vec![]),
                1 | 2 => (Role::Admin, vec![]),
                _ => (
                    Role::Member,
                    (0..names.len())
                        .filter(|d| (d + u) % 3 != 0)
                        .map(|d| {
                            let level = if (d + 2 * u) % 4 == 0 {
                                Access::Read
                            } else {
                                Access::ReadWrite
                            };
                            (name_refs[d], level)
                        })
                        .collect(),
                ),
            };
            ks.put_user(ACTOR, &org, &id, user(role, &access)).unwrap();
            users.push(id);
        }
        users_by_org.push((org, users));
    }
    // 10,000 keys in 10 batches of 1,000.
    for batch in 0..10 {
        let (org, users) = &users_by_org[batch % 2];
        let keys: Vec<NewKey> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                let u = &users[n % users.len()];
                let is_admin = n % users.len() < 3;
                let mut k = new_key(u);
                match n % 5 {
                    0 if is_admin => k.org_wide = true,
                    1 => k.access = Some(Access::Read),
                    2 => k.expires_at = Some(NOW + (n as i64 % 7) - 3 + 10),
                    3 if is_admin => k.domains = Some(vec![name_refs[n % names.len()].into()]),
                    4 if n % 10 == 4 => k.secret = Some(format!("imported-{n}")),
                    _ => {}
                }
                k
            })
            .collect();
        let created = ks.create_keys(ACTOR, org, keys, NOW).unwrap();
        all_secrets.extend(created.value.into_iter().map(|c| c.secret));
    }
    // Some revocations, a deactivation, a deletion, a demotion, a domain change.
    let ids: Vec<String> = ks
        .list_keys("org-0", None, None, NOW)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    for id in ids.iter().step_by(97) {
        ks.revoke_key(ACTOR, id, NOW).unwrap();
    }
    ks.deactivate_user(ACTOR, "org-0", "u5@org0.test").unwrap();
    ks.delete_user(ACTOR, "org-1", "u6@org1.test").unwrap();
    ks.put_user(
        ACTOR,
        "org-1",
        "u1@org1.test",
        user(Role::Member, &[("d3.example", Access::Read)]),
    )
    .unwrap();
    ks.put_org(ACTOR, "org-1", &domains(&name_refs[..10]))
        .unwrap();

    let status = ks.status();
    assert_eq!(all_secrets.len(), 10_000);
    assert_eq!(status.orgs, 2);
    assert_eq!(status.users, 39);
    assert!(status.keys < 10_000 && status.keys > 9_000, "{status:?}");
    let probe = ["d0.example", "d3.example", "d11.example"];
    let at = NOW + 10;
    let decide = |ks: &KeyStore| -> Vec<_> {
        let mut targets = vec![Target::AnyKey, Target::Organisation];
        for n in probe {
            targets.push(Target::Domain(DomainRef::Name(n), Access::Read));
            targets.push(Target::Domain(DomainRef::Name(n), Access::ReadWrite));
        }
        targets.push(Target::Domain(DomainRef::Id(101), Access::ReadWrite));
        all_secrets
            .iter()
            .flat_map(|s| targets.iter().map(move |t| ks.check(Some(s), *t, at)))
            .collect()
    };
    let before = decide(&ks);
    // Every refusal kind the data set should produce actually occurs.
    for r in [
        Refusal::RevokedKey,
        Refusal::ExpiredKey,
        Refusal::NotVisible,
        Refusal::ReadOnly,
        Refusal::OrgWideRequired,
    ] {
        assert!(before.iter().any(|d| d.outcome == Err(r)), "no {r:?}");
    }
    assert!(before.iter().any(|d| d.outcome.is_ok()));
    let before_meta = ks.list_keys("org-0", None, None, at).unwrap();
    drop(ks);

    let reopened = open(&db);
    assert_eq!(reopened.status(), status);
    assert_eq!(decide(&reopened), before);
    assert_eq!(
        reopened.list_keys("org-0", None, None, at).unwrap(),
        before_meta
    );
}

/// A store written before schema version 2 keeps its keys without a
/// locator: after the migration they are found by their digest, revoke as
/// before, live beside new keys, and all of it survives a reopen.
#[test]
fn keys_stored_before_locators_existed_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let read = Target::Domain(DomainRef::Name("a.example"), Access::Read);
    let (old_a, old_b) = {
        let ks = open(&db);
        ks.put_org(ACTOR, "o", &domains(&["a.example"])).unwrap();
        ks.put_user(ACTOR, "o", "owner@o.test", user(Role::Owner, &[]))
            .unwrap();
        let mut made = (0..2).map(|_| {
            ks.create_key(ACTOR, "o", new_key("owner@o.test"), NOW)
                .unwrap()
                .value
        });
        (made.next().unwrap(), made.next().unwrap())
    };
    // What schema version 1 wrote: no locator column at all.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "ALTER TABLE keys DROP COLUMN locator; ALTER TABLE changes DROP COLUMN payload;
             ALTER TABLE keys DROP COLUMN lifecycle; ALTER TABLE orgs DROP COLUMN rate_limit;
             DROP TABLE key_usage; DROP TABLE servers; ALTER TABLE users DROP COLUMN servers;
             ALTER TABLE keys DROP COLUMN server; ALTER TABLE keys DROP COLUMN server_access;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    // The wrong pepper is refused before the schema is touched: the older
    // scopegate this store belongs to could still open it.
    match KeyStore::open_sqlite(&db, Pepper::new(b"another-pepper-0123456789")) {
        Ok(_) => panic!("opened with the wrong pepper"),
        Err(e) => assert_eq!(e.message, StoreError::WrongPepper.to_string()),
    }
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1, "a refused open migrated the store");
    let new = {
        let ks = open(&db);
        assert_eq!(SqliteStore::open(&db).unwrap().schema_version().unwrap(), 5);
        assert!(ks.check(Some(&old_a.secret), read, NOW).outcome.is_ok());
        assert!(ks.check(Some(&old_b.secret), read, NOW).outcome.is_ok());
        let new = ks
            .create_key(ACTOR, "o", new_key("owner@o.test"), NOW)
            .unwrap()
            .value;
        assert!(ks.check(Some(&new.secret), read, NOW).outcome.is_ok());
        // The two old keys are the ones without a locator (what the
        // `scopegate_keys_without_locator` gauge reports).
        assert_eq!(ks.snapshot().keys.placed_by_digest(), 2);
        ks.revoke_key(ACTOR, &old_b.meta.id, NOW).unwrap();
        assert_eq!(
            ks.check(Some(&old_b.secret), read, NOW)
                .outcome
                .unwrap_err(),
            Refusal::RevokedKey
        );
        assert!(ks.check(Some(&old_a.secret), read, NOW).outcome.is_ok());
        // Importing an old key's secret again is still a conflict.
        let again = NewKey {
            secret: Some(old_a.secret.clone()),
            ..new_key("owner@o.test")
        };
        assert_eq!(
            ks.create_key(ACTOR, "o", again, NOW).unwrap_err().code,
            "key_exists"
        );
        new
    };
    let ks = open(&db);
    assert!(ks.check(Some(&old_a.secret), read, NOW).outcome.is_ok());
    assert!(ks.check(Some(&new.secret), read, NOW).outcome.is_ok());
    assert_eq!(
        ks.check(Some(&old_b.secret), read, NOW)
            .outcome
            .unwrap_err(),
        Refusal::RevokedKey
    );
    assert_eq!(
        ks.check(Some(&scopegate_keystore::secret::generate()), read, NOW)
            .outcome
            .unwrap_err(),
        Refusal::UnknownKey
    );
}

/// Processes started together on one new (or older) store file migrate it
/// at the same time: each migration step takes the write lock and reads the
/// version under it, so every opener succeeds and no step runs twice (it
/// failed with "table … already exists" when two opened a store of the
/// previous schema at once). Connections of separate threads lock the file
/// as separate processes do.
#[test]
fn stores_opened_at_once_migrate_the_file_once() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keys.db");
        let start = Arc::new(std::sync::Barrier::new(6));
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let (db, start) = (db.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    scopegate_keystore::SqliteStore::open(&db)
                        .and_then(|s| s.schema_version())
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        let versions: Vec<_> = openers.into_iter().map(|t| t.join().unwrap()).collect();
        let first = versions[0].clone().expect("the first opener");
        assert!(first > 0);
        for v in versions {
            assert_eq!(v, Ok(first), "every opener sees the migrated schema");
        }
    }
}

#[test]
fn a_panic_during_a_write_leaves_the_store_file_writable_by_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let panic = Arc::new(AtomicBool::new(false));
    let store = FlakyStore {
        inner: SqliteStore::open(&db).unwrap(),
        fail: Arc::default(),
        commits: Arc::default(),
        panic: Arc::clone(&panic),
    };
    let ks = KeyStore::open(Box::new(store), pepper()).expect("open");
    ks.put_org(ACTOR, "o", &domains(&["a.example"])).unwrap();
    panic.store(true, Ordering::SeqCst);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ks.put_user(ACTOR, "o", "owner@o.test", user(Role::Owner, &[]))
    }));
    assert!(caught.is_err(), "the injected panic did not happen");
    panic.store(false, Ordering::SeqCst);
    // Another process writes at once: the panicking write held the file's
    // write lock, and gave it back (it would wait out the busy timeout and
    // fail, until this process wrote again).
    let other = open(&db);
    other
        .put_user(ACTOR, "o", "owner@o.test", user(Role::Owner, &[]))
        .expect("the store file is still locked by the write that panicked");
    // Nothing of the panicking write was committed, and the instance goes on.
    assert_eq!(other.status().version, 2);
    let applied = ks
        .put_user(ACTOR, "o", "admin@o.test", user(Role::Admin, &[]))
        .unwrap();
    assert_eq!(applied.version, 3);
}
