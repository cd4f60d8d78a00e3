//! DESIGN "Fleet mode", on the embedded store: several processes on one
//! SQLite file follow one gap-free change log, so none of them silently
//! diverges. (The same engine follows PostgreSQL; `tests/pg_store.rs` and
//! `tests/fleet.rs` run it against a real server.)
//!
//! Each `KeyStore` here has its own connection to the file, exactly as a
//! separate process would.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scopegate_keystore::{
    Access, Audit, Change, DomainInput, DomainRef, ErrorKind, Follower, KeyStore, NewKey, Pepper,
    Role, SqliteStore, Store, StoreError, Target, UserInput,
};

const ACTOR: &str = "follow-test";
const NOW: i64 = 1_800_000_000;

fn pepper() -> Pepper {
    Pepper::new(b"follow-test-pepper-0123456789")
}

fn open(path: &Path) -> KeyStore {
    KeyStore::open_sqlite(path, pepper()).expect("open store")
}

/// Two instances on one new file (the directory must outlive them).
fn pair() -> (tempfile::TempDir, KeyStore, KeyStore) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let (a, b) = (open(&db), open(&db));
    (dir, a, b)
}

fn admits(ks: &KeyStore, secret: &str, domain: &str) -> bool {
    ks.check(
        Some(secret),
        Target::Domain(DomainRef::Name(domain), Access::Read),
        NOW,
    )
    .outcome
    .is_ok()
}

fn org(ks: &KeyStore, name: &str) {
    ks.put_org(
        ACTOR,
        name,
        &[DomainInput {
            name: format!("{name}.example"),
            id: None,
        }],
    )
    .unwrap();
    ks.put_user(
        ACTOR,
        name,
        &format!("owner@{name}.example"),
        UserInput {
            role: Role::Owner,
            access: Default::default(),
            status: None,
        },
    )
    .unwrap();
}

fn key(ks: &KeyStore, name: &str) -> (String, String) {
    let k = ks
        .create_key(
            ACTOR,
            name,
            NewKey {
                user: format!("owner@{name}.example"),
                org_wide: true,
                ..NewKey::default()
            },
            NOW,
        )
        .unwrap()
        .value;
    (k.meta.id.clone(), k.secret)
}

#[test]
fn a_second_instance_applies_what_the_first_commits() {
    let (_dir, a, b) = pair();
    org(&a, "acme");
    let (id, secret) = key(&a, "acme");
    assert!(
        !admits(&b, &secret, "acme.example"),
        "b has not read the log yet"
    );
    let f = b.follow().unwrap();
    assert_eq!((f.applied, f.reloaded), (3, false));
    assert_eq!(f.version, a.status().version);
    assert!(admits(&b, &secret, "acme.example"));
    a.revoke_key(ACTOR, &id, NOW).unwrap();
    assert!(
        !admits(&a, &secret, "acme.example"),
        "the writer refuses at once"
    );
    b.follow().unwrap();
    assert!(!admits(&b, &secret, "acme.example"));
    assert_eq!(a.status(), b.status());
}

#[test]
fn a_write_is_planned_against_changes_made_elsewhere() {
    let (_dir, a, b) = pair();
    // b never followed: its write must still see the organisation a made,
    // and its version must come after a's.
    org(&a, "acme");
    let (_, secret) = key(&b, "acme");
    assert!(admits(&b, &secret, "acme.example"));
    // The last owner rule holds across instances: a made the owner, b may
    // not demote them.
    let e = b
        .put_user(
            ACTOR,
            "acme",
            "owner@acme.example",
            UserInput {
                role: Role::Member,
                access: Default::default(),
                status: None,
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    a.follow().unwrap();
    assert_eq!(a.status(), b.status());
    assert!(admits(&a, &secret, "acme.example"));
}

#[test]
fn a_commit_planned_on_an_old_version_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    org(&open(&db), "acme");
    let mut raw = SqliteStore::open(&db).unwrap();
    let (head, _) = raw.version().unwrap();
    let change = Change::PutOrg {
        org: "other".into(),
        uid: 99,
        domains: vec![],
    };
    let audit = Audit {
        actor: ACTOR,
        at_ms: 0,
    };
    match raw.commit(&change, &audit, head - 1) {
        Err(StoreError::Behind { expected, actual }) => {
            assert_eq!((expected, actual), (head - 1, head))
        }
        other => panic!("expected Behind, got {other:?}"),
    }
    assert_eq!(raw.version().unwrap().0, head);
    assert_eq!(raw.commit(&change, &audit, head).unwrap(), head + 1);
    let (entries, now) = raw.changes_since(0, 100).unwrap();
    assert_eq!(now, head + 1);
    let versions: Vec<u64> = entries.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=head + 1).collect::<Vec<_>>());
    assert!(entries.iter().all(|e| e.change.is_some()));
}

#[test]
fn concurrent_writers_on_one_file_leave_a_gap_free_log_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    org(&open(&db), "acme");
    let writers = 4;
    let each = 25;
    let secrets: Vec<Vec<(String, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                let db = &db;
                s.spawn(move || {
                    let ks = open(db);
                    (0..each).map(|_| key(&ks, "acme")).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut raw = SqliteStore::open(&db).unwrap();
    let (entries, head) = raw.changes_since(0, 10_000).unwrap();
    assert_eq!(head, 2 + (writers * each) as u64);
    let versions: Vec<u64> = entries.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=head).collect::<Vec<_>>(),
        "gap-free, in order"
    );
    let a = open(&db);
    let b = open(&db);
    for (id, secret) in secrets.iter().flatten() {
        assert!(admits(&a, secret, "acme.example"), "{id} lost");
        assert!(admits(&b, secret, "acme.example"));
    }
}

#[test]
fn an_instance_behind_a_pruned_log_reloads_the_whole_snapshot() {
    let (_dir, a, b) = pair();
    org(&a, "acme");
    let (id, secret) = key(&a, "acme");
    let (_, kept) = key(&a, "acme");
    a.revoke_key(ACTOR, &id, NOW).unwrap();
    let v = a.status().version;
    assert_eq!(a.prune_log(v).unwrap(), v);
    let old = b.snapshot_arc();
    let f = b.follow().unwrap();
    assert!(f.reloaded, "{f:?}");
    assert_eq!(f.version, v);
    assert!(!admits(&b, &secret, "acme.example"));
    assert!(admits(&b, &kept, "acme.example"));
    assert_eq!(a.status(), b.status());
    // Readers holding the old snapshot kept it whole while b reloaded.
    assert_eq!(old.version, 0);
    assert_eq!(b.follow_counters().1, 1);
}

#[test]
fn a_follower_thread_propagates_a_revocation_within_one_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let a = open(&db);
    let b = Arc::new(open(&db));
    org(&a, "acme");
    let (id, secret) = key(&a, "acme");
    let poll = Duration::from_millis(1000);
    let _follower = Follower::spawn(Arc::clone(&b), poll, |_| {}).unwrap();
    let deadline = Instant::now() + poll * 5;
    while !admits(&b, &secret, "acme.example") {
        assert!(Instant::now() < deadline, "the new key never reached b");
        std::thread::sleep(Duration::from_millis(2));
    }
    a.revoke_key(ACTOR, &id, NOW).unwrap();
    let revoked = Instant::now();
    while admits(&b, &secret, "acme.example") {
        assert!(Instant::now() < deadline, "the revocation never reached b");
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = revoked.elapsed();
    eprintln!("revocation reached the other instance in {took:?}");
    assert!(
        took < poll,
        "took {took:?}, more than one poll interval ({poll:?})"
    );
    // The follower keeps confirming freshness.
    assert!(b.staleness() < poll * 2, "{:?}", b.staleness());
}

#[test]
fn staleness_grows_until_the_log_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let ks = open(&dir.path().join("keys.db"));
    std::thread::sleep(Duration::from_millis(50));
    let before = ks.staleness();
    assert!(before >= Duration::from_millis(50));
    ks.follow().unwrap();
    assert!(ks.staleness() < before);
}

#[test]
fn an_instance_neither_applies_nor_makes_changes_past_a_schema_it_does_not_know() {
    let (dir, a, b) = pair();
    let db = dir.path().join("keys.db");
    org(&a, "acme");
    let (_, first) = key(&a, "acme");
    b.follow().unwrap();
    assert!(admits(&b, &first, "acme.example"));
    // A newer scopegate migrates the file one step past this one and
    // commits (played here by a change this version would misread as well
    // as one it reads).
    let (_, second) = key(&a, "acme");
    let raw = rusqlite::Connection::open(&db).unwrap();
    let known: i64 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    raw.pragma_update(None, "user_version", known + 1).unwrap();

    let at = b.status().version;
    let e = b.follow().unwrap_err();
    assert_eq!(
        (e.kind, e.code, e.store),
        (ErrorKind::Unavailable, "store_upgraded", Some("upgraded")),
        "{e}"
    );
    assert!(e.message.contains("upgrade this instance"), "{e}");
    assert_eq!(b.status().version, at, "applied a change it may misread");
    assert!(!admits(&b, &second, "acme.example"));
    assert!(
        admits(&b, &first, "acme.example"),
        "what it had still holds"
    );

    let head = a.status().version;
    let e = a
        .create_key(
            ACTOR,
            "acme",
            NewKey {
                user: "owner@acme.example".into(),
                org_wide: true,
                ..NewKey::default()
            },
            NOW,
        )
        .unwrap_err();
    assert!(e.message.contains("upgrade this instance"), "{e}");
    assert_eq!(
        a.status().version,
        head,
        "wrote to a schema it does not know"
    );
    // Nor does it open the file again.
    assert!(KeyStore::open_sqlite(&db, pepper()).is_err());
}
