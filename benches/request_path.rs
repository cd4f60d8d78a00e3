//! What enforcement adds to one proxied request, outside the network:
//! everything the gateway does in `request_filter` and
//! `upstream_request_filter` for an admitted `GET /domains/{domain}`,
//! measured with criterion beside what a pass-through does in the same
//! phases (clone the request header for the upstream, as Pingora does).
//!
//! `cargo bench -p scopegate-suite --bench request_path`.
//! - `request_path/passthrough`: the upstream header clone alone.
//! - `request_path/enforcing`: the clone, plus the decision (canonical
//!   path, route, key from the headers, the key check against 100k keys,
//!   identity, usage counted) and the rewrite (identity headers in, key
//!   header out), for keys without a rate limit.
//! - `request_path/enforcing_rate_limited`: the same requests once each of
//!   their keys has a rate limit (high enough never to refuse): what the
//!   token bucket adds.
//!
//! The difference is enforcement's CPU per request with warm caches; the
//! proxy benchmark (`benches/proxy.sh`) measures it in a running gateway,
//! where caches are cold and it costs more.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use scopegate_config::Config;
use scopegate_gateway::decide::{decide_head, Head};
use scopegate_gateway::forward::rewrite_request;
use scopegate_gateway::metrics::Metrics;
use scopegate_gateway::pingora::http::RequestHeader;
use scopegate_gateway::proxy::Ctx;
use scopegate_gateway::routing::Routing;
use scopegate_keystore::{KeyPatch, KeyStore, Pepper, RateLimit, Target};
use scopegate_suite::population::{populate, LaidOut};

/// The allocator the gateway binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A request as wrk sends it, parsed with header case kept (as Pingora's
/// HTTP/1 parser does).
fn request(secret: &str, domain: &str) -> RequestHeader {
    let path = format!("/domains/{domain}");
    let mut h = RequestHeader::build("GET", path.as_bytes(), Some(4)).unwrap();
    h.insert_header("Host", "127.0.0.1:8080").unwrap();
    h.insert_header("Authorization", format!("Bearer {secret}"))
        .unwrap();
    h
}

fn bench(c: &mut Criterion) {
    let ks = KeyStore::in_memory(Pepper::new(b"bench-pepper-0123456789abcdef"));
    let pop = populate(&ks, 100_000);
    let laid = LaidOut::new(&pop);
    let requests: Vec<RequestHeader> = laid
        .pairs()
        .iter()
        .take(4096)
        .map(|(s, d)| request(s, d))
        .collect();
    let metrics = Metrics::new();
    let guard = scopegate_gateway::guard::Guard::new();
    let routing = Routing::build(Config::default(), &metrics).unwrap();

    let mut g = c.benchmark_group("request_path");
    g.bench_function("passthrough", |b| {
        let mut i = 0;
        b.iter(|| {
            let req = &requests[i & 4095];
            i += 1;
            let upstream = black_box(req).clone();
            black_box(upstream)
        })
    });
    let enforcing = |b: &mut criterion::Bencher| {
        let mut i = 0;
        b.iter(|| {
            let req = &requests[i & 4095];
            i += 1;
            let mut ctx = Ctx::new();
            let head = decide_head(&ks, &guard, &metrics, &routing, black_box(req), &mut ctx);
            assert!(matches!(head, Head::Forward));
            let mut upstream = req.clone();
            rewrite_request(&mut upstream, &ctx, &routing).unwrap();
            black_box(upstream)
        })
    };
    g.bench_function("enforcing", &enforcing);
    let now = scopegate_keystore::time::now();
    let limit = RateLimit {
        per_second: u32::MAX,
        burst: u32::MAX,
    };
    for (secret, _) in laid.pairs().iter().take(4096) {
        let id = ks
            .check(Some(secret), Target::AnyKey, now)
            .outcome
            .expect("a live key")
            .key_id;
        let patch = KeyPatch {
            rate_limit: Some(Some(limit)),
            shadow: None,
        };
        ks.update_key("bench", &id, patch, now).unwrap();
    }
    g.bench_function("enforcing_rate_limited", &enforcing);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
