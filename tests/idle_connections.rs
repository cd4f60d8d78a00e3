//! Many idle keep-alive connections held open against a real `scopegate
//! serve` process while other traffic keeps flowing, with the process's
//! memory reported. 2,000 connections by default (CI); set
//! `SCOPEGATE_IDLE_CONNECTIONS=10000` for the figure in the README (the
//! gateway runs as its own process so each side stays under the file
//! descriptor limit).

use std::net::SocketAddr;
use std::time::Instant;

use scopegate_gateway::mock::MockUpstream;
use scopegate_keystore::{KeyStore, Pepper};
use scopegate_suite::fleet::{FleetSpec, Instance};
use scopegate_suite::gateway::PEPPER;
use scopegate_suite::http::{Conn, Request};
use scopegate_suite::sample;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn gauge(admin: SocketAddr, name: &str) -> u64 {
    let m = Request::new("GET", "/metrics").send(admin).text();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn idle_keep_alive_connections_are_held_while_traffic_flows_in_bounded_memory() {
    let n: usize = std::env::var("SCOPEGATE_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let sending = MockUpstream::spawn("sending").unwrap();
    let domains = MockUpstream::spawn("domains").unwrap();
    let store = dir.path().join("keys.db");
    let keys = sample::setup(&KeyStore::open_sqlite(&store, Pepper::new(PEPPER)).unwrap());
    let serve = Instance::start(
        &FleetSpec {
            store: store.display().to_string(),
            sending: sending.addr(),
            domains: domains.addr(),
            poll_interval_ms: FleetSpec::DEFAULT_POLL_MS,
            max_staleness_ms: FleetSpec::DEFAULT_STALENESS_MS,
            threads: 2,
        },
        dir.path(),
        "gw",
    );
    let (proxy, admin, pid) = (serve.proxy, serve.admin, serve.pid());
    let req = Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev);
    assert_eq!(req.send(proxy).status, 200);
    let before = rss_kib(pid);

    // Open n connections, each answered once and then left idle.
    let started = Instant::now();
    let threads = 8;
    let held: Vec<Conn> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let req = &req;
                s.spawn(move || {
                    (0..n / threads + usize::from(t < n % threads))
                        .map(|_| {
                            let mut c = Conn::open(proxy);
                            assert_eq!(c.send(req, true).status, 200);
                            c
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(held.len(), n);
    let open = gauge(admin, "scopegate_client_connections");
    let during = rss_kib(pid);

    // Traffic keeps flowing on fresh connections while they are held.
    let t = Instant::now();
    for _ in 0..200 {
        assert_eq!(req.send(proxy).status, 200);
    }
    let traffic = t.elapsed();
    // And the idle ones still answer.
    let mut held = held;
    for c in held.iter_mut().step_by((n / 50).max(1)) {
        assert_eq!(c.send(&req, true).status, 200);
    }
    println!(
        "{n} idle keep-alive connections opened in {:.1?}; gateway RSS {} KiB before, {} KiB holding them \
         ({:.1} KiB per connection); {open} open by the gauge; 200 requests on new connections meanwhile in {:.1?}",
        started.elapsed(),
        before,
        during,
        (during.saturating_sub(before)) as f64 / n as f64,
        traffic
    );
    assert!(open >= n as u64, "the gauge shows {open} of {n}");
    // Bounded: well under 64 KiB a connection (no per-connection buffer
    // the size of a body is kept while idle).
    assert!(
        during.saturating_sub(before) < 64 * n as u64,
        "{} KiB for {n} idle connections",
        during - before
    );
    drop(held);
}
