//! The hot path and the write path of the keystore, measured with criterion.
//!
//! `bash run.sh bench -- keystore` (or `cargo bench -p scopegate-suite --bench keystore`).
//! - `check/<n>/<kind>`: the whole key check as the gateway does it: format
//!   check, keyed BLAKE3, snapshot load, lookup, creator and scope, for a
//!   key drawn at random from n keys (hit), a well-formed unknown key (miss:
//!   1024 of them, their slots cached; miss_fresh: n of them, each seen once
//!   per pass, as a flood of guesses would be) and a key with a broken
//!   checksum (malformed).
//! - `mutation_1m/*`: one change at a million keys: the snapshot part alone
//!   (copy-on-write of one shard) and the whole durable call (SQLite commit
//!   with fsync, then publish).
//! - `load_1m`: building the snapshot of a million keys from the store file.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use scopegate_keystore::{secret, Access, DomainRef, KeyStore, Pepper, Target, UserInput};
use scopegate_suite::population::{issued_in, populate, LaidOut, Population};

/// The allocator the gateway binary runs with, so the table is laid out
/// as it is in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PEPPER: &[u8] = b"bench-pepper-0123456789abcdef";

#[inline]
fn check(ks: &KeyStore, secret: &str, domain: &str, now: i64) -> bool {
    let snap = ks.snapshot();
    let Ok(key) = ks.present(&snap, secret) else {
        return false;
    };
    match snap.authenticate(&key, now) {
        Ok(p) => p
            .authorize(Target::Domain(DomainRef::Name(domain), Access::ReadWrite))
            .is_ok(),
        Err(_) => false,
    }
}

fn bench_checks(c: &mut Criterion, label: &str, ks: &KeyStore, pop: &Population) {
    let now = scopegate_keystore::time::now();
    // Keys in a random order of the population, laid out in one buffer.
    let laid = LaidOut::new(pop);
    let hits = laid.pairs();
    let misses: Vec<String> = (0..1024).map(|_| secret::generate()).collect();
    // As many never-issued keys as there are keys, in one buffer: each is
    // looked up once per pass, so its probe sequence is not in the cache (a
    // flood of guessed keys, unlike `miss`, whose 1024 keys' slots stay cached).
    let fresh: String = (0..pop.secrets.len().max(1024))
        .map(|_| secret::generate())
        .collect();
    let fresh: Vec<&str> = issued_in(&fresh).collect();
    let malformed: Vec<String> = misses
        .iter()
        .map(|s| {
            let mut b = s.clone().into_bytes();
            let last = b.len() - 1;
            b[last] = if b[last] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).unwrap()
        })
        .collect();
    let mut g = c.benchmark_group("check");
    g.bench_function(BenchmarkId::new(label, "hit"), |b| {
        let mut i = 0;
        b.iter(|| {
            let (secret, domain) = &hits[i];
            // Wrapping by comparison, not `%`: a 64-bit division per
            // iteration is the harness's cost, not the check's.
            i += 1;
            if i == hits.len() {
                i = 0;
            }
            assert!(check(ks, black_box(secret), domain, now));
        })
    });
    g.bench_function(BenchmarkId::new(label, "miss"), |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            assert!(!check(
                ks,
                black_box(&misses[i % misses.len()]),
                "example.com",
                now
            ));
        })
    });
    g.bench_function(BenchmarkId::new(label, "miss_fresh"), |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            if i == fresh.len() {
                i = 0;
            }
            assert!(!check(ks, black_box(fresh[i]), "example.com", now));
        })
    });
    g.bench_function(BenchmarkId::new(label, "malformed"), |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            assert!(!check(
                ks,
                black_box(&malformed[i % malformed.len()]),
                "example.com",
                now
            ));
        })
    });
    g.finish();
}

fn small(c: &mut Criterion) {
    for (label, n) in [("1k", 1_000), ("100k", 100_000)] {
        let ks = KeyStore::in_memory(Pepper::new(PEPPER));
        let pop = populate(&ks, n);
        bench_checks(c, label, &ks, &pop);
    }
}

fn million(c: &mut Criterion) {
    let path = std::env::temp_dir().join(format!("scopegate-bench-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let ks = KeyStore::open_sqlite(&path, Pepper::new(PEPPER)).unwrap();
    let pop = populate(&ks, 1_000_000);
    bench_checks(c, "1M", &ks, &pop);

    let mut g = c.benchmark_group("mutation_1m");
    g.sample_size(30).measurement_time(Duration::from_secs(10));
    g.bench_function("snapshot_only", |b| {
        // What publishing one revocation costs readers' memory and the
        // writer's time: copy the snapshot handle, copy one shard, swap an entry.
        let snap = ks.snapshot_arc();
        let key = ks.present(&snap, &pop.secrets[7]).unwrap();
        let entry = snap.keys.get(&key).unwrap().clone();
        b.iter(|| {
            let mut next = (*snap).clone();
            let mut e = entry.clone();
            e.revoked = true;
            next.keys.insert(key, e);
            black_box(next)
        })
    });
    let now = scopegate_keystore::time::now();
    g.bench_function("revoke_key_durable", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            ks.revoke_key("bench", &pop.ids[i], now).unwrap()
        })
    });
    g.bench_function("put_user_durable", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            let level = if flip {
                Access::Read
            } else {
                Access::ReadWrite
            };
            let access = [("example.com".to_string(), level)].into_iter().collect();
            ks.put_user(
                "bench",
                "bench",
                "user8@example.com",
                UserInput {
                    role: scopegate_keystore::Role::Member,
                    access,
                    status: None,
                },
            )
            .unwrap()
        })
    });
    g.finish();
    drop(ks);

    let mut g = c.benchmark_group("load");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.bench_function("1m_from_sqlite", |b| {
        b.iter(|| KeyStore::open_sqlite(&path, Pepper::new(PEPPER)).unwrap())
    });
    g.finish();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

criterion_group!(benches, small, million);
criterion_main!(benches);
