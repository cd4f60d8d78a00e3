//! Resident memory of a loaded 1M-key snapshot: builds a 1M-key store once,
//! then (in a fresh process) opens it and reports the RSS it added.
//! `cargo bench -p scopegate-suite --bench memory` (builds the store when
//! missing, then measures in a child process).
use scopegate_keystore::{KeyStore, Pepper};
use scopegate_suite::population::populate;
fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let p: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    (p * 4096) as f64 / 1e6
}
fn main() {
    let path = std::path::PathBuf::from("/tmp/scopegate-mem-1m.db");
    let n = 1_000_000;
    if std::env::var("SCOPEGATE_MEMORY_MEASURE").is_err() {
        // Build the store here, measure in a fresh process whose heap has
        // never held the population.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        {
            let ks = KeyStore::open_sqlite(&path, Pepper::new(b"bench-pepper-0123456789abcdef"))
                .unwrap();
            populate(&ks, n);
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .env("SCOPEGATE_MEMORY_MEASURE", "1")
            .status()
            .unwrap();
        assert!(status.success());
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        return;
    }
    let before = rss_mb();
    let ks = KeyStore::open_sqlite(&path, Pepper::new(b"bench-pepper-0123456789abcdef")).unwrap();
    let after = rss_mb();
    println!(
        "memory: {} keys loaded; process RSS {before:.0} MB before open, {after:.0} MB after ({:.0} MB added)",
        ks.status().keys,
        after - before
    );
}
