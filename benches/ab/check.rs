//! Interleaved A/B of the whole key check: the keystore of an older commit
//! (`old`) against the working tree's (`new`), both in one process, run in
//! alternating blocks so that both see the same host. Not built by the
//! workspace: `bash benches/ab/check.sh REV` builds it beside a copy of
//! REV's keystore. Prints each side's median ns per check and the median of
//! the per-round ratios new/old.
#[allow(dead_code)]
#[path = "population_new.rs"]
mod population_new;
#[allow(dead_code)]
#[path = "population_old.rs"]
mod population_old;

use std::hint::black_box;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PEPPER: &[u8] = b"bench-pepper-0123456789abcdef";

/// The check as `benches/keystore.rs` times it, for one keystore crate.
macro_rules! checker {
    ($ks:ident) => {{
        use $ks::{Access, DomainRef, Target};
        |ks: &$ks::KeyStore, secret: &str, domain: &str, now: i64| -> bool {
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
    }};
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Nanoseconds per check over `block` checks of keys `*j, *j + 1, ...`
/// (wrapping at `len` by comparison: a `%` would be the harness's cost).
fn block_ns(block: usize, len: usize, j: &mut usize, mut check: impl FnMut(usize) -> bool) -> f64 {
    let s = Instant::now();
    for _ in 0..block {
        assert!(check(*j));
        *j = if *j + 1 == len { 0 } else { *j + 1 };
    }
    s.elapsed().as_nanos() as f64 / block as f64
}

fn main() {
    let n = env("N", 1_000_000);
    let rounds = env("ROUNDS", 40);
    let block = env("BLOCK", 200_000);
    let now = scopegate_keystore::time::now();
    let ks_new = scopegate_keystore::KeyStore::in_memory(scopegate_keystore::Pepper::new(PEPPER));
    let pop_new = population_new::populate(&ks_new, n);
    let laid_new = population_new::LaidOut::new(&pop_new);
    let hits_new = laid_new.pairs();
    let ks_old =
        scopegate_keystore_old::KeyStore::in_memory(scopegate_keystore_old::Pepper::new(PEPPER));
    let pop_old = population_old::populate(&ks_old, n);
    let laid_old = population_old::LaidOut::new(&pop_old);
    let hits_old = laid_old.pairs();
    let check_new = checker!(scopegate_keystore);
    let check_old = checker!(scopegate_keystore_old);
    let (mut t_old, mut t_new, mut ratio) = (vec![], vec![], vec![]);
    let (mut jo, mut jn) = (0usize, 0usize);
    for _ in 0..rounds {
        let o = block_ns(block, hits_old.len(), &mut jo, |i| {
            let (k, d) = hits_old[i];
            check_old(&ks_old, black_box(k), d, now)
        });
        let w = block_ns(block, hits_new.len(), &mut jn, |i| {
            let (k, d) = hits_new[i];
            check_new(&ks_new, black_box(k), d, now)
        });
        t_old.push(o);
        t_new.push(w);
        ratio.push(w / o);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "{n} keys, {rounds} rounds of {block} checks each: old {:.1} ns, new {:.1} ns, new/old (median of per-round ratios) {:.3}",
        median(&mut t_old),
        median(&mut t_new),
        median(&mut ratio)
    );
}
