//! Where the time of one key check goes at N keys (default 1M): presenting
//! the key (format, locator, prefetch, digest),
//! the table lookup, the creator and organisation, the scope. A profiling
//! aid beside the criterion bench, printing ns per call for each stage.
//! `N=1000000 cargo bench -p scopegate-suite --bench check_breakdown`
use scopegate_keystore::{Access, DomainRef, KeyStore, Pepper, Target};
use scopegate_suite::population::{populate, LaidOut};
use std::hint::black_box;
use std::time::Instant;

/// The allocator the gateway binary runs with, as in `benches/keystore.rs`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let ks = KeyStore::in_memory(Pepper::new(b"bench-pepper-0123456789abcdef"));
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let pop = populate(&ks, n);
    let now = scopegate_keystore::time::now();
    let laid = LaidOut::new(&pop);
    let hits = laid.pairs();
    let snap = ks.snapshot_arc();
    let digests: Vec<_> = hits
        .iter()
        .map(|(s, _)| ks.present(&snap, s).unwrap())
        .collect();
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let t = Instant::now();
    for i in 0..iters {
        black_box(ks.present(&snap, black_box(hits[i % n].0)).unwrap());
    }
    println!(
        "present (format, locator, prefetch, digest): {:.1} ns",
        t.elapsed().as_nanos() as f64 / iters as f64
    );
    let t = Instant::now();
    for i in 0..iters {
        black_box(snap.keys.get(black_box(&digests[i % n])));
    }
    println!(
        "keys.get: {:.1} ns",
        t.elapsed().as_nanos() as f64 / iters as f64
    );
    let t = Instant::now();
    for i in 0..iters {
        let _ = black_box(snap.authenticate(black_box(&digests[i % n]), now).is_ok());
    }
    println!(
        "authenticate: {:.1} ns",
        t.elapsed().as_nanos() as f64 / iters as f64
    );
    let t = Instant::now();
    for i in 0..iters {
        let p = snap.authenticate(&digests[i % n], now).unwrap();
        black_box(
            p.authorize(Target::Domain(
                DomainRef::Name(hits[i % n].1),
                Access::ReadWrite,
            ))
            .is_ok(),
        );
    }
    println!(
        "authenticate+authorize: {:.1} ns",
        t.elapsed().as_nanos() as f64 / iters as f64
    );
    let t = Instant::now();
    for i in 0..iters {
        let (s, d) = &hits[i % n];
        let g = ks.snapshot();
        let dg = ks.present(&g, s).unwrap();
        let p = g.authenticate(&dg, now).unwrap();
        black_box(
            p.authorize(Target::Domain(DomainRef::Name(d), Access::ReadWrite))
                .is_ok(),
        );
    }
    println!(
        "full: {:.1} ns",
        t.elapsed().as_nanos() as f64 / iters as f64
    );
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let rss_pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    println!("rss: {} MB", rss_pages * 4096 / 1_000_000);
}
