//! The PostgreSQL store against a real PostgreSQL (issue 14): a throwaway
//! cluster started by the suite (`support::pg`), or the server
//! `SCOPEGATE_TEST_DATABASE_URL` names. No mock anywhere.
//!
//! - migrations when six instances open a fresh database at once; a store of
//!   another pepper, a newer schema, and a password that must not leak;
//!   running instances that meet a schema a newer scopegate migrated to;
//! - the whole model round-trips (reopen: same decisions);
//! - a second instance follows the first; writes through both interleave
//!   into one gap-free log and both converge;
//! - four instances writing at once: every write lands, the log has no gap;
//! - a lagging instance reloads once the log it needs was pruned;
//! - an outage (`pg_ctl stop -m immediate`): writes fail cleanly and change
//!   nothing, the same instance works again after the restart;
//! - a watcher wakes on another instance's commit and reports a lost server;
//! - (ignored) loading a million keys, timed, with the peak RSS.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use scopegate_keystore::postgres::PostgresStore;
use scopegate_keystore::{
    Access, Decision, DomainInput, DomainRef, ErrorKind, KeyStore, NewKey, Pepper, Refusal, Role,
    Store, StoreError, Target, UserInput,
};
use scopegate_suite::pg::{fresh_database_url, PgCluster};

const ACTOR: &str = "pg-store-test";
const NOW: i64 = 1_800_000_000;
const PEPPER: &[u8] = b"pg-store-test-pepper-0123456789abcdef";
const NAMES: [&str; 3] = ["a.example", "b.example", "c.example"];

fn pepper() -> Pepper {
    Pepper::new(PEPPER)
}

fn open(url: &str) -> KeyStore {
    KeyStore::open_location(url, pepper()).unwrap_or_else(|e| panic!("opening {url}: {e}"))
}

fn domains() -> Vec<DomainInput> {
    NAMES
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

/// Every decision of every secret against every kind of target.
fn matrix(ks: &KeyStore, secrets: &[String]) -> Vec<Decision> {
    let mut targets = vec![Target::AnyKey, Target::Organisation];
    for n in &NAMES {
        for need in [Access::Read, Access::ReadWrite] {
            targets.push(Target::Domain(DomainRef::Name(n), need));
        }
    }
    for id in [100, 101, 102, 103] {
        targets.push(Target::Domain(DomainRef::Id(id), Access::ReadWrite));
    }
    let mut all: Vec<Decision> = secrets
        .iter()
        .flat_map(|s| targets.iter().map(move |t| ks.check(Some(s), *t, NOW)))
        .collect();
    // Later, when keys with an expiry have expired.
    all.extend(
        secrets
            .iter()
            .map(|s| ks.check(Some(s), Target::AnyKey, NOW + 3600)),
    );
    all
}

fn admitted(ks: &KeyStore, secret: &str) -> bool {
    ks.check(Some(secret), Target::AnyKey, NOW).outcome.is_ok()
}

/// An organisation `o` with an owner, an admin and two members: versions 1-5.
fn seed(ks: &KeyStore) {
    ks.put_org(ACTOR, "o", &domains()).unwrap();
    ks.put_user(ACTOR, "o", "owner@o.test", user(Role::Owner, &[]))
        .unwrap();
    ks.put_user(ACTOR, "o", "admin@o.test", user(Role::Admin, &[]))
        .unwrap();
    for m in ["m1@o.test", "m2@o.test"] {
        ks.put_user(
            ACTOR,
            "o",
            m,
            user(
                Role::Member,
                &[
                    ("a.example", Access::ReadWrite),
                    ("b.example", Access::Read),
                ],
            ),
        )
        .unwrap();
    }
}

fn create(ks: &KeyStore, key: NewKey) -> (String, String) {
    let c = ks.create_key(ACTOR, "o", key, NOW).unwrap().value;
    (c.secret, c.meta.id)
}

/// The whole log's versions, read straight from the store.
fn log_versions(url: &str) -> (Vec<u64>, u64) {
    let mut store = PostgresStore::connect(url, &pepper().fingerprint()).unwrap();
    let (entries, head) = store.changes_since(0, 100_000).unwrap();
    assert!(
        entries.iter().all(|e| e.change.is_some()),
        "every entry keeps its change"
    );
    (entries.iter().map(|e| e.version).collect(), head)
}

#[test]
fn six_instances_migrate_a_fresh_database_at_once() {
    let url = fresh_database_url();
    let barrier = Arc::new(Barrier::new(6));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                PostgresStore::connect(&url, &pepper().fingerprint())
                    .map(|mut s| s.schema_version().unwrap())
            })
        })
        .collect();
    for t in threads {
        let v = t.join().unwrap().expect("every instance opens");
        assert_eq!(v, PostgresStore::known_schema_version());
    }
    // The schema works: a key store opens on it and writes.
    let ks = open(&url);
    assert_eq!(ks.store_kind(), "postgres");
    seed(&ks);
    assert_eq!(ks.status().version, 5);
}

#[test]
fn another_pepper_a_newer_schema_and_a_bad_url_are_refused() {
    let url = fresh_database_url();
    let ks = open(&url);
    seed(&ks);
    drop(ks);
    // Another pepper: refused, before anything is touched.
    match PostgresStore::connect(
        &url,
        &Pepper::new(b"another pepper, 32 bytes long...").fingerprint(),
    ) {
        Err(StoreError::WrongPepper) => {}
        other => panic!("expected WrongPepper, got {other:?}"),
    }
    let e = KeyStore::open_location(&url, Pepper::new(b"another pepper, 32 bytes long..."))
        .err()
        .expect("another pepper is refused");
    assert_eq!(e.kind, ErrorKind::Store);
    assert!(e.to_string().contains("pepper"), "{e}");
    // The right pepper still opens it, with everything in place.
    assert_eq!(open(&url).status().users, 4);

    // A schema from a newer scopegate: refused, not guessed at.
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute("UPDATE scopegate_schema SET version = 99")
        .unwrap();
    match PostgresStore::connect(&url, &pepper().fingerprint()) {
        Err(StoreError::Incompatible(m)) => assert!(m.contains("newer"), "{m}"),
        other => panic!("expected Incompatible, got {other:?}"),
    }

    // Nothing listens on port 1: unavailable, and the password is not in
    // the message.
    let started = Instant::now();
    match PostgresStore::connect(
        "postgres://scopegate:s3cr3t-pa55word@127.0.0.1:1/db",
        &pepper().fingerprint(),
    ) {
        Err(e @ StoreError::Unavailable(_)) => {
            let text = e.to_string();
            assert!(!text.contains("s3cr3t-pa55word"), "{text}");
            assert!(text.contains("127.0.0.1:1/db"), "{text}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn running_instances_stop_at_a_schema_a_newer_scopegate_migrated_to() {
    let url = fresh_database_url();
    let (a, b) = (open(&url), open(&url));
    seed(&a);
    let (first, _) = create(&a, new_key("owner@o.test"));
    b.follow().unwrap();
    assert!(admitted(&b, &first));
    // A newer scopegate migrates the database past this one and commits.
    let (second, _) = create(&a, new_key("owner@o.test"));
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute("UPDATE scopegate_schema SET version = version + 1")
        .unwrap();
    let at = b.status().version;
    let e = b.follow().unwrap_err();
    assert!(e.message.contains("upgrade this instance"), "{e}");
    assert_eq!(b.status().version, at, "applied a change it may misread");
    assert!(!admitted(&b, &second));
    assert!(admitted(&b, &first));
    let head = a.status().version;
    let e = a
        .create_key(ACTOR, "o", new_key("owner@o.test"), NOW)
        .unwrap_err();
    assert!(e.message.contains("upgrade this instance"), "{e}");
    assert_eq!(a.status().version, head);
}

#[test]
fn the_whole_model_round_trips_through_postgres() {
    let url = fresh_database_url();
    let ks = open(&url);
    seed(&ks);
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for key in [
        NewKey {
            org_wide: true,
            ..new_key("admin@o.test")
        },
        NewKey {
            org_wide: true,
            ..new_key("owner@o.test")
        },
        new_key("m1@o.test"),
        NewKey {
            domains: Some(vec!["a.example".into()]),
            access: Some(Access::Read),
            name: Some("reader".into()),
            ..new_key("m1@o.test")
        },
        new_key("m2@o.test"),
        NewKey {
            expires_at: Some(NOW + 10),
            ..new_key("m1@o.test")
        },
        NewKey {
            secret: Some("imported-legacy-secret-0123456789".into()),
            ..new_key("m1@o.test")
        },
    ] {
        let (s, id) = create(&ks, key);
        secrets.push(s);
        ids.push(id);
    }
    ks.revoke_key(ACTOR, &ids[2], NOW).unwrap();
    ks.deactivate_user(ACTOR, "o", "m2@o.test").unwrap();
    // A domain list change: c.example goes, d.example comes.
    ks.put_org(
        ACTOR,
        "o",
        &[
            DomainInput {
                name: "a.example".into(),
                id: Some(100),
            },
            DomainInput {
                name: "b.example".into(),
                id: Some(101),
            },
            DomainInput {
                name: "d.example".into(),
                id: Some(103),
            },
        ],
    )
    .unwrap();
    secrets.push("sg_never_issued".into());

    let before = matrix(&ks, &secrets);
    assert!(before.iter().any(|d| d.outcome.is_ok()));
    assert_eq!(
        ks.check(Some(&secrets[2]), Target::AnyKey, NOW).outcome,
        Err(Refusal::RevokedKey)
    );
    assert!(!admitted(&ks, &secrets[4]), "deactivated user's key");
    assert!(admitted(&ks, &secrets[6]), "imported key");
    assert!(admitted(&ks, &secrets[5]));
    assert_eq!(
        ks.check(Some(&secrets[5]), Target::AnyKey, NOW + 3600)
            .outcome,
        Err(Refusal::ExpiredKey)
    );
    let status = ks.status();
    let keys = ks.list_keys("o", None, None, NOW).unwrap();
    let users = ks.list_users("o").unwrap();
    let meta = ks.get_key(&ids[3], NOW).unwrap();
    drop(ks);

    let again = open(&url);
    assert_eq!(matrix(&again, &secrets), before);
    assert_eq!(again.status(), status);
    assert_eq!(again.list_keys("o", None, None, NOW).unwrap(), keys);
    assert_eq!(
        again
            .list_keys("o", Some("m1@o.test"), None, NOW)
            .unwrap()
            .len(),
        4
    );
    assert_eq!(again.list_users("o").unwrap(), users);
    assert_eq!(again.get_key(&ids[3], NOW).unwrap(), meta);
    let (versions, head) = log_versions(&url);
    assert_eq!(versions, (1..=head).collect::<Vec<_>>());
    assert_eq!(head, status.version);
}

#[test]
fn a_second_instance_follows_the_first_and_both_write_one_log() {
    let url = fresh_database_url();
    let a = open(&url);
    let b = open(&url);
    seed(&a);
    let (s1, _) = create(&a, new_key("m1@o.test"));
    assert!(!admitted(&b, &s1), "b has not followed yet");
    let f = b.follow().unwrap();
    assert_eq!((f.applied, f.reloaded, f.version), (6, false, 6));
    assert!(admitted(&b, &s1), "b admits a key created through a");

    let (s2, id2) = create(&a, new_key("m1@o.test"));
    b.follow().unwrap();
    assert!(admitted(&b, &s2));
    a.revoke_key(ACTOR, &id2, NOW).unwrap();
    assert!(!admitted(&a, &s2), "the revoking instance refuses at once");
    assert!(admitted(&b, &s2), "until b follows");
    assert_eq!(b.follow().unwrap().applied, 1);
    assert_eq!(
        b.check(Some(&s2), Target::AnyKey, NOW).outcome,
        Err(Refusal::RevokedKey)
    );

    // Writes through both, alternately, without following in between: each
    // write catches up first.
    let mut secrets = vec![s1, s2];
    for i in 0..10 {
        let (writer, member) = if i % 2 == 0 {
            (&a, "m1@o.test")
        } else {
            (&b, "m2@o.test")
        };
        let (s, id) = create(writer, new_key(member));
        if i % 3 == 0 {
            writer.revoke_key(ACTOR, &id, NOW).unwrap();
        }
        secrets.push(s);
    }
    b.deactivate_user(ACTOR, "o", "m2@o.test").unwrap();
    a.follow().unwrap();
    b.follow().unwrap();
    let (versions, head) = log_versions(&url);
    assert_eq!(versions, (1..=head).collect::<Vec<_>>(), "no gaps");
    assert_eq!(a.status().version, head);
    assert_eq!(b.status().version, head);
    assert_eq!(matrix(&a, &secrets), matrix(&b, &secrets));
    assert_eq!(a.status(), b.status());
    // And a third instance, loaded from scratch, agrees.
    assert_eq!(matrix(&open(&url), &secrets), matrix(&a, &secrets));
}

#[test]
fn four_instances_writing_at_once_all_land_in_one_gap_free_log() {
    const THREADS: usize = 4;
    const WRITES: usize = 50;
    let url = fresh_database_url();
    let first = open(&url);
    seed(&first);
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let ks = open(&url);
                barrier.wait();
                let member = if t % 2 == 0 { "m1@o.test" } else { "m2@o.test" };
                // Writers of all instances queue on the store's write lock,
                // so none is overtaken while it catches up and plans: every
                // write lands on its first call.
                let mut secrets = Vec::with_capacity(WRITES);
                while secrets.len() < WRITES {
                    match ks.create_key(ACTOR, "o", new_key(member), NOW) {
                        Ok(a) => secrets.push(a.value.secret),
                        Err(e) => panic!("writer {t}, write {}: {e}", secrets.len()),
                    }
                }
                (ks, secrets)
            })
        })
        .collect();
    let mut instances = vec![first];
    let mut secrets = Vec::new();
    for t in threads {
        let (ks, s) = t.join().unwrap();
        instances.push(ks);
        secrets.extend(s);
    }
    assert_eq!(secrets.len(), THREADS * WRITES);
    let (versions, head) = log_versions(&url);
    assert_eq!(head, 5 + (THREADS * WRITES) as u64);
    assert_eq!(versions, (1..=head).collect::<Vec<_>>(), "no gaps");
    let want = {
        instances[0].follow().unwrap();
        matrix(&instances[0], &secrets)
    };
    assert!(want.iter().filter(|d| d.outcome.is_ok()).count() >= secrets.len());
    for ks in &instances {
        ks.follow().unwrap();
        assert_eq!(ks.status().version, head);
        assert!(secrets.iter().all(|s| admitted(ks, s)));
        assert_eq!(matrix(ks, &secrets), want);
    }
}

#[test]
fn a_lagging_instance_reloads_once_the_log_was_pruned() {
    let url = fresh_database_url();
    let a = open(&url);
    let b = open(&url);
    seed(&a);
    let mut secrets = Vec::new();
    for _ in 0..5 {
        secrets.push(create(&a, new_key("m1@o.test")));
    }
    a.revoke_key(ACTOR, &secrets[0].1, NOW).unwrap();
    a.deactivate_user(ACTOR, "o", "m2@o.test").unwrap();
    let head = a.status().version;
    assert!(a.prune_log(head).unwrap() >= head - 1);
    let f = b.follow().unwrap();
    assert!(f.reloaded, "{f:?}");
    assert_eq!(f.version, head);
    let secrets: Vec<String> = secrets.into_iter().map(|(s, _)| s).collect();
    assert_eq!(matrix(&b, &secrets), matrix(&a, &secrets));
    assert!(!admitted(&b, &secrets[0]));
    assert!(admitted(&b, &secrets[1]));
    // After the pruned part, the log carries changes again.
    let (s, _) = create(&a, new_key("m1@o.test"));
    let f = b.follow().unwrap();
    assert_eq!((f.applied, f.reloaded), (1, false));
    assert!(admitted(&b, &s));
}

#[test]
fn a_log_whose_entries_are_missing_behind_its_head_makes_a_follower_reload() {
    let url = fresh_database_url();
    let a = open(&url);
    let b = open(&url);
    seed(&a);
    b.follow().unwrap();
    let (kept, _) = create(&a, new_key("m1@o.test"));
    let (secret, id) = create(&a, new_key("m1@o.test"));
    a.revoke_key(ACTOR, &id, NOW).unwrap();
    let head = a.status().version;
    // The entries b has not read are gone, the head still says they exist:
    // b must not take its old snapshot for current.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let gone = db
        .execute(
            "DELETE FROM changes WHERE version > $1",
            &[&(b.status().version as i64)],
        )
        .unwrap();
    assert_eq!(gone, 3);
    let f = b.follow().unwrap();
    assert!(f.reloaded, "{f:?}");
    assert_eq!(f.version, head);
    assert!(admitted(&b, &kept));
    assert!(!admitted(&b, &secret));
}

#[test]
fn a_watcher_wakes_when_another_instance_commits() {
    let url = fresh_database_url();
    let a = open(&url);
    let b = open(&url);
    seed(&a);
    b.follow().unwrap();
    let mut w = b.watcher().unwrap();
    assert!(
        !w.wait(Duration::from_millis(50)).unwrap(),
        "quiet: a timeout"
    );
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let s = create(&a, new_key("m1@o.test")).0;
        (a, s)
    });
    let started = Instant::now();
    assert!(w.wait(Duration::from_secs(10)).unwrap(), "woken");
    let woke = started.elapsed();
    assert!(woke < Duration::from_secs(3), "woken after {woke:?}");
    let (a, s) = writer.join().unwrap();
    assert_eq!(b.follow().unwrap().applied, 1);
    assert!(admitted(&b, &s));
    // Several commits while nobody waits: a wake-up covers what has arrived
    // by then. PostgreSQL delivers each commit's notification asynchronously,
    // so one still on its way may wake the next wait — at most one per
    // remaining commit — and then the watcher goes quiet.
    for _ in 0..3 {
        create(&a, new_key("m1@o.test"));
    }
    assert!(w.wait(Duration::from_secs(5)).unwrap());
    let mut late = 0;
    while w.wait(Duration::from_millis(100)).unwrap() {
        late += 1;
        assert!(late <= 2, "more wake-ups than commits");
    }
}

#[test]
fn an_outage_fails_writes_cleanly_and_the_same_instances_recover() {
    let mut cluster = PgCluster::start();
    let url = cluster.create_database();
    let a = open(&url);
    let b = open(&url);
    seed(&a);
    let (s1, id1) = create(&a, new_key("m1@o.test"));
    b.follow().unwrap();
    let mut w = b.watcher().unwrap();
    let before = a.status();

    cluster.stop_immediate();
    // The watcher notices the server is gone.
    let started = Instant::now();
    assert!(
        w.wait(Duration::from_secs(10)).is_err(),
        "a lost LISTEN connection is an error"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Writes fail, cleanly, and change nothing.
    for attempt in 0..2 {
        let started = Instant::now();
        let e = a
            .create_key(ACTOR, "o", new_key("m1@o.test"), NOW)
            .expect_err("no write while the database is down");
        assert_eq!(e.kind, ErrorKind::Unavailable, "attempt {attempt}: {e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let e = a.revoke_key(ACTOR, &id1, NOW).expect_err("down");
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    }
    assert_eq!(b.follow().expect_err("down").kind, ErrorKind::Unavailable);
    assert_eq!(a.status(), before);
    assert!(admitted(&a, &s1), "known keys still decide locally");

    cluster.start_again();
    // The same instances, without reopening.
    let (s2, _) = create(&a, new_key("m1@o.test"));
    a.revoke_key(ACTOR, &id1, NOW).unwrap();
    assert_eq!(
        a.status().version,
        before.version + 2,
        "nothing from the outage"
    );
    let f = b.follow().unwrap();
    assert_eq!((f.applied, f.version), (2, before.version + 2));
    assert!(admitted(&b, &s2));
    assert!(!admitted(&b, &s1));
    // A new watcher works again.
    let mut w = b.watcher().unwrap();
    create(&a, new_key("m1@o.test"));
    assert!(w.wait(Duration::from_secs(5)).unwrap());
    let (versions, head) = log_versions(&url);
    assert_eq!(versions, (1..=head).collect::<Vec<_>>());
}

/// `VmHWM` and `VmRSS` of this process, in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
#[ignore = "a million keys: run with --ignored --nocapture to measure"]
fn load_a_million_keys_from_postgres() {
    use std::io::Write as _;
    const N: usize = 1_000_000;
    let url = fresh_database_url();
    let ks = open(&url);
    // Organisation `bench` and its users, as the benches make them.
    scopegate_suite::population::populate(&ks, 0);
    drop(ks);
    let pep = pepper();
    let mut store = PostgresStore::connect(&url, &pep.fingerprint()).unwrap();
    let uids: BTreeMap<String, u64> = store
        .list_users("bench")
        .unwrap()
        .into_iter()
        .map(|u| (u.id, u.uid))
        .collect();
    drop(store);
    let users: Vec<(String, u64, String)> = (2..scopegate_suite::population::USERS)
        .map(|u| {
            let id = format!("user{u}@example.com");
            let scope: BTreeMap<String, Access> = [(
                scopegate_suite::population::DOMAINS[u % 8].to_string(),
                Access::ReadWrite,
            )]
            .into();
            (
                id.clone(),
                uids[&id],
                serde_json::to_string(&scope).unwrap(),
            )
        })
        .collect();

    // COPY straight into the table: real secrets, their real digests.
    let started = Instant::now();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut sample = Vec::new();
    {
        let mut copy = client
            .copy_in(
                "COPY keys (id, digest, org, \"user\", user_uid, org_wide, domains, expires_at, name, created_at, revoked_at, locator) FROM STDIN",
            )
            .unwrap();
        let mut line = String::with_capacity(256);
        for i in 0..N {
            let secret = scopegate_keystore::secret::generate();
            let digest = pep.digest(&secret);
            let locator = pep.locator(&secret);
            let (user, uid, scope) = &users[i % users.len()];
            line.clear();
            line.push_str(&scopegate_keystore::secret::format_id(i as u64 + 1));
            line.push_str("\t\\\\x");
            for b in digest.0 {
                line.push_str(&format!("{b:02x}"));
            }
            line.push_str(&format!(
                "\tbench\t{user}\t{uid}\tf\t{scope}\t\\N\t\\N\t{NOW}\t\\N\t{}\n",
                locator.0 as i64
            ));
            copy.write_all(line.as_bytes()).unwrap();
            if i % 1000 == 0 {
                sample.push(secret);
            }
        }
        copy.finish().unwrap();
    }
    client.batch_execute("ANALYZE keys").unwrap();
    drop(client);
    eprintln!("inserted {N} keys with COPY in {:.1?}", started.elapsed());

    // Measure the load alone: reset the peak RSS first (Linux: clear_refs 5).
    let (hwm_before, _) = memory_mib();
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let (_, rss_before) = memory_mib();
    let started = Instant::now();
    let ks = open(&url);
    let took = started.elapsed();
    let (hwm, rss) = memory_mib();
    assert_eq!(ks.status().keys, N);
    for s in &sample {
        assert!(admitted(&ks, s), "a loaded key is admitted");
    }
    assert!(!admitted(&ks, &scopegate_keystore::secret::generate()));
    eprintln!(
        "loaded {N} keys from PostgreSQL in {took:.2?}; RSS {rss_before:.0} MiB before, {rss:.0} MiB after; \
         peak RSS during the load {hwm:.0} MiB (peak reset before the load: {reset}; peak before it {hwm_before:.0} MiB)"
    );
}
