//! Key lifecycle and limits, black-box: a gateway on real sockets, a real
//! SQLite file, clients on distinct loopback addresses.
//!
//! - rotation under load: both keys in use, no failure during the grace,
//!   every old-key request refused after it, grace uses counted exactly;
//! - last used: after traffic, in the store, and after a restart;
//! - rate limits: exact 429 counts, never forwarded, counted in metrics;
//! - brute force: one address blocked before hashing, another unaffected;
//! - shadow scopes: refusals the shadow would make admitted and counted.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scopegate_gateway::server::Stop;
use scopegate_keystore::time::{now_ms, parse_rfc3339};
use scopegate_keystore::Store;
use scopegate_suite::gateway::TestGateway;
use scopegate_suite::http::{Conn, Request, Response};
use scopegate_suite::sample;
use serde_json::json;

/// The value of an unlabelled (or fully labelled) series in `/metrics`.
fn metric(gw: &TestGateway, series: &str) -> u64 {
    let text = gw.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

fn get(gw: &TestGateway, key: &str) -> Response {
    gw.send(Request::new("GET", "/domains/staging.example.com").bearer(key))
}

/// Sends one request from the source address `from` (any 127.0.0.0/8
/// address works on Linux without setup).
fn send_from(from: &str, to: SocketAddr, req: &Request) -> Response {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: IpAddr = from.parse().unwrap();
    sock.bind(&SocketAddr::new(local, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    Conn::from_stream(TcpStream::from(sock)).send(req, false)
}

/// One request as a client saw it: when it was sent and answered (Unix
/// ms) and the status.
struct Seen {
    sent_ms: i64,
    done_ms: i64,
    status: u16,
}

/// Requests `key` back to back until `stop`, on one connection at a time.
fn hammer(gw: &TestGateway, key: String, stop: Arc<AtomicBool>) -> Vec<Seen> {
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent_ms = now_ms();
        let status = get(gw, &key).status;
        seen.push(Seen {
            sent_ms,
            done_ms: now_ms(),
            status,
        });
    }
    seen
}

#[test]
fn rotation_under_load_fails_nothing_in_the_grace_and_refuses_the_old_key_after() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    let old_id = keys.ids["dev"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let old: Vec<_> = (0..2)
            .map(|_| {
                let (key, stop) = (keys.dev.clone(), Arc::clone(&stop));
                s.spawn(|| hammer(&gw, key, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let rotated_ms = now_ms();
        let r = gw.admin(
            Request::new("POST", &format!("/v1/keys/{old_id}/rotate"))
                .json(&json!({"grace_seconds": 2})),
        );
        let answered_ms = now_ms();
        assert_eq!(r.status, 201, "{}", r.text());
        let r = r.json();
        let new_secret = r["key"].as_str().unwrap().to_string();
        let new_id = r["id"].as_str().unwrap().to_string();
        assert_ne!(new_id, old_id);
        assert_eq!(r["user"], "dev@example.com");
        assert_eq!(r["domains"], json!({"staging.example.com": "read_write"}));
        assert_eq!(r["replaces"]["id"], old_id.as_str());
        assert_eq!(r["replaces"]["replaced_by"], new_id.as_str());
        let expires_ms =
            parse_rfc3339(r["replaces"]["expires_at"].as_str().unwrap()).unwrap() * 1000;
        assert!(expires_ms > rotated_ms + 1000 && expires_ms <= answered_ms + 2000);
        let new: Vec<_> = (0..2)
            .map(|_| {
                let (key, stop) = (new_secret.clone(), Arc::clone(&stop));
                s.spawn(|| hammer(&gw, key, stop))
            })
            .collect();
        // Load on both keys through the end of the grace and past it.
        while now_ms() < expires_ms + 1000 {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        let old: Vec<Seen> = old.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let new: Vec<Seen> = new.into_iter().flat_map(|h| h.join().unwrap()).collect();

        // The new key never failed.
        assert!(new.len() > 10, "{} new-key requests", new.len());
        assert!(new.iter().all(|x| x.status == 200));
        // The old key: every request answered before the grace ended passed,
        // every request sent after it was refused; only requests in flight
        // at the second it ended go either way.
        let in_grace: Vec<&Seen> = old.iter().filter(|x| x.done_ms < expires_ms).collect();
        let after: Vec<&Seen> = old.iter().filter(|x| x.sent_ms >= expires_ms).collect();
        assert!(
            in_grace.len() > 10 && after.len() > 10,
            "{} / {}",
            in_grace.len(),
            after.len()
        );
        let failed = in_grace.iter().filter(|x| x.status != 200).count();
        assert_eq!(failed, 0, "old-key requests failed during the grace");
        assert!(
            after.iter().all(|x| x.status == 401),
            "old key admitted after the grace"
        );

        // Grace uses: the old key's admitted requests after the rotation,
        // exactly (those in flight while it was committed go either way).
        let sure = old
            .iter()
            .filter(|x| x.status == 200 && x.sent_ms > answered_ms)
            .count() as u64;
        let maybe = old
            .iter()
            .filter(|x| x.status == 200 && x.done_ms >= rotated_ms && x.sent_ms <= answered_ms)
            .count() as u64;
        let meta = gw
            .admin(Request::new("GET", &format!("/v1/keys/{old_id}")))
            .json();
        assert_eq!(meta["state"], "expired");
        assert_eq!(meta["replaced_by"], new_id.as_str());
        let grace = meta["grace_uses"].as_u64().unwrap();
        assert!(
            (sure..=sure + maybe).contains(&grace),
            "grace_uses {grace}, expected {sure}..={}",
            sure + maybe
        );
        let admitted_old = old.iter().filter(|x| x.status == 200).count() as u64;
        assert_eq!(meta["requests"].as_u64().unwrap(), admitted_old);
        let new_meta = gw
            .admin(Request::new("GET", &format!("/v1/keys/{new_id}")))
            .json();
        assert_eq!(new_meta["requests"].as_u64().unwrap(), new.len() as u64);
        assert!(new_meta.get("grace_uses").is_none());
    });
    // The CLI's answer carries the new secret too.
    let r = gw.admin(
        Request::new("POST", &format!("/v1/keys/{old_id}/rotate"))
            .json(&json!({"grace_seconds": 5})),
    );
    assert_eq!(r.status, 409, "an expired key is not rotated: {}", r.text());
    assert_eq!(r.error_code(), "key_not_live");
}

#[test]
fn last_used_is_shown_after_traffic_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("usage.db");
    let config = |c: &mut scopegate_config::Config| {
        c.store = store.clone();
        c.usage.flush_interval = Duration::from_millis(200);
    };
    let gw = TestGateway::start_with(config);
    let keys = sample::setup(&gw.keystore);
    let started = now_ms() / 1000;
    for _ in 0..7 {
        assert_eq!(get(&gw, &keys.dev).status, 200);
    }
    // A refused request is not a use.
    let r = gw.send(Request::new("GET", "/domains/example.com").bearer(&keys.dev));
    assert_eq!(r.status, 404);
    let ended = now_ms() / 1000;
    let id = keys.ids["dev"].as_str();
    let meta = gw
        .admin(Request::new("GET", &format!("/v1/keys/{id}")))
        .json();
    assert_eq!(meta["requests"], 7);
    let last = parse_rfc3339(meta["last_used_at"].as_str().unwrap()).unwrap();
    assert!(
        (started..=ended).contains(&last),
        "{last} not in {started}..={ended}"
    );

    // The list: `unused_since` keeps keys not used since then.
    let since = scopegate_keystore::time::rfc3339(started);
    let listed = gw
        .admin(Request::new(
            "GET",
            &format!("/v1/orgs/acme/keys?unused_since={since}"),
        ))
        .json();
    let unused: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(!unused.contains(&id), "a used key is listed unused");
    assert!(unused.contains(&keys.ids["ops"].as_str()));
    assert!(listed["keys"][0].get("requests").is_some());

    // Written by the background batches, without stopping anything.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut on_disk = scopegate_keystore::SqliteStore::open(&store).unwrap();
    loop {
        let rows = on_disk.usage("acme", Some(id)).unwrap();
        if rows.first().is_some_and(|(_, u)| u.requests == 7) {
            assert_eq!(rows[0].1.last_used_at, last);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached the store: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gw.stop(Stop::Fast);

    let gw = TestGateway::start_with(config);
    let again = gw
        .admin(Request::new("GET", &format!("/v1/keys/{id}")))
        .json();
    assert_eq!(again["requests"], 7);
    assert_eq!(again["last_used_at"], meta["last_used_at"]);
    // Counting goes on from there.
    assert_eq!(get(&gw, &keys.dev).status, 200);
    let after = gw
        .admin(Request::new("GET", &format!("/v1/keys/{id}")))
        .json();
    assert_eq!(after["requests"], 8);
}

#[test]
fn rate_limits_refuse_exactly_what_the_bucket_does_not_hold() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    let created = gw.admin(Request::new("POST", "/v1/orgs/acme/keys").json(&json!({
        "user": "ops@example.com",
        "rate_limit": {"per_second": 1, "burst": 5}
    })));
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    assert_eq!(created["rate_limit"], json!({"per_second": 1, "burst": 5}));
    let limited = created["key"].as_str().unwrap().to_string();
    gw.domains.clear();

    // 20 requests back to back: the burst passes, the rest are refused
    // until a token is back (one a second).
    let started = Instant::now();
    let statuses: Vec<Response> = (0..20).map(|_| get(&gw, &limited)).collect();
    let elapsed = started.elapsed();
    let ok = statuses.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Response> = statuses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + refused.len(), 20);
    let refills = elapsed.as_secs() as usize;
    assert!(
        (5..=5 + refills).contains(&ok),
        "{ok} admitted in {elapsed:?}"
    );
    if elapsed < Duration::from_secs(1) {
        assert_eq!(ok, 5, "exactly the burst within the first second");
    }
    assert_eq!(statuses[..5].iter().filter(|r| r.status == 200).count(), 5);
    for r in &refused {
        assert_eq!(r.error_code(), "rate_limited");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(
        gw.domains.count(),
        ok,
        "a refused request is never forwarded"
    );
    assert_eq!(
        metric(&gw, "scopegate_rate_limited_total"),
        refused.len() as u64
    );
    assert!(!gw.metrics().contains(&limited), "no key in metrics");

    // Unlimited keys are not affected.
    for _ in 0..30 {
        assert_eq!(get(&gw, &keys.dev).status, 200);
    }

    // The organisation's default applies to keys without their own limit.
    let r = gw.admin(
        Request::new("PUT", "/v1/orgs/acme/rate_limit").json(&json!({"per_second": 1, "burst": 3})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ok = (0..10)
        .filter(|_| get(&gw, &keys.ops).status == 200)
        .count();
    assert_eq!(ok, 3);
    // A key's own limit wins over the default: PATCH a generous one.
    let id = keys.ids["ops"].as_str();
    let r = gw.admin(
        Request::new("PATCH", &format!("/v1/keys/{id}"))
            .json(&json!({"rate_limit": {"per_second": 1000, "burst": 1000}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rate_limit"]["burst"], 1000);
    assert!((0..10).all(|_| get(&gw, &keys.ops).status == 200));
    let r = gw.admin(Request::new("DELETE", "/v1/orgs/acme/rate_limit"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!((0..10).all(|_| get(&gw, &keys.client_a).status != 429));
    let bad = gw.admin(
        Request::new("PATCH", &format!("/v1/keys/{id}"))
            .json(&json!({"rate_limit": {"per_second": 0, "burst": 1}})),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_code(), "invalid_rate_limit");
}

#[test]
fn a_steady_rate_over_the_limit_is_cut_to_the_limit() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    let id = keys.ids["ops"].as_str();
    let r = gw.admin(
        Request::new("PATCH", &format!("/v1/keys/{id}"))
            .json(&json!({"rate_limit": {"per_second": 4, "burst": 2}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // 16 requests a second for 3 seconds, paced; 4 tokens a second come back.
    let start = Instant::now();
    let mut ok = 0u32;
    let mut sent = 0u32;
    for i in 0..48u32 {
        let at = start + Duration::from_millis(u64::from(i) * 1000 / 16 + 7);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        sent += 1;
        if get(&gw, &keys.ops).status == 200 {
            ok += 1;
        }
    }
    let span = start.elapsed().as_secs_f64();
    // The burst, plus one token per 250 ms from the first request to the
    // last (a burst of 2 holds whatever part of a token is left over, so
    // nothing is lost to the cap); the request nearest the window's end may
    // land either side of its token.
    let expected = 2.0 + 4.0 * (span - 0.007);
    assert!(
        (f64::from(ok) - expected).abs() <= 1.0,
        "{ok} of {sent} admitted over {span:.2}s, expected about {expected:.1}"
    );
    assert_eq!(
        metric(&gw, "scopegate_rate_limited_total"),
        u64::from(sent - ok)
    );
}

#[test]
fn a_blocked_address_is_refused_while_another_keeps_working() {
    let gw = TestGateway::start_with(|c| {
        c.brute_force.attempts_per_minute = 5;
        c.brute_force.block = Duration::from_secs(60);
    });
    let keys = sample::setup(&gw.keystore);
    let good = Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev);
    let unknown =
        Request::new("GET", "/domains/staging.example.com").bearer("an-unknown-key-0123456789");
    let malformed = Request::new("GET", "/domains/staging.example.com").bearer("sg_bad");
    let attacker = "127.0.0.2";
    let client = "127.0.0.3";
    for i in 0..5 {
        let req = if i % 2 == 0 { &unknown } else { &malformed };
        assert_eq!(
            send_from(attacker, gw.proxy, req).status,
            401,
            "attempt {i}"
        );
    }
    // Blocked: even a good key is refused, before it is looked at.
    let r = send_from(attacker, gw.proxy, &good);
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "too_many_attempts");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(send_from(attacker, gw.proxy, &unknown).status, 429);
    // Another address is not affected, and its own failures count apart.
    assert_eq!(send_from(client, gw.proxy, &good).status, 200);
    assert_eq!(send_from(client, gw.proxy, &unknown).status, 401);
    assert_eq!(send_from(client, gw.proxy, &good).status, 200);
    assert_eq!(metric(&gw, "scopegate_brute_force_blocks_total"), 1);
    assert_eq!(metric(&gw, "scopegate_brute_force_refused_total"), 2);
    // Blocked requests never reached the key check: only the six real
    // attempts (five from the attacker, one from the client) were counted
    // as invalid keys.
    let invalid = metric(&gw, "scopegate_invalid_keys_total{reason=\"unknown_key\"}")
        + metric(
            &gw,
            "scopegate_invalid_keys_total{reason=\"malformed_key\"}",
        );
    assert_eq!(invalid, 6);
}

#[test]
fn shadow_refusals_are_admitted_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let log2 = log.clone();
    let gw = TestGateway::start_with(move |c| {
        c.log.access_log = scopegate_config::AccessLog::File(log2);
        c.log.format = scopegate_config::LogFormat::Json;
    });
    let keys = sample::setup(&gw.keystore);
    let id = keys.ids["dev"].as_str();
    // dev's key writes staging.example.com; its shadow would only read it.
    let r = gw.admin(
        Request::new("PATCH", &format!("/v1/keys/{id}"))
            .json(&json!({"shadow": {"staging.example.com": "read"}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["shadow"], json!({"staging.example.com": "read"}));
    let wider = gw.admin(
        Request::new("PATCH", &format!("/v1/keys/{id}"))
            .json(&json!({"shadow": {"example.com": "read"}})),
    );
    assert_eq!(wider.status, 422);
    assert_eq!(wider.error_code(), "shadow_wider");

    assert_eq!(get(&gw, &keys.dev).status, 200);
    for _ in 0..3 {
        let w = gw.send(
            Request::new("PUT", "/domains/staging.example.com/tracking")
                .bearer(&keys.dev)
                .json(&json!({})),
        );
        assert_eq!(w.status, 200, "admitted: the shadow only watches");
    }
    assert_eq!(
        metric(
            &gw,
            "scopegate_shadow_would_refuse_total{reason=\"read_only\"}"
        ),
        3
    );
    assert_eq!(gw.domains.count(), 4);
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 4 {
            break lines;
        }
        assert!(Instant::now() < deadline, "access log lines");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(lines[0].get("would_refuse").is_none());
    for l in &lines[1..4] {
        assert_eq!(l["decision"], "admitted");
        assert_eq!(l["would_refuse"], "read_only");
    }
    // Removing the shadow stops the counting.
    let r =
        gw.admin(Request::new("PATCH", &format!("/v1/keys/{id}")).json(&json!({"shadow": null})));
    assert_eq!(r.status, 200);
    assert!(r.json().get("shadow").is_none());
    gw.send(
        Request::new("PUT", "/domains/staging.example.com/tracking")
            .bearer(&keys.dev)
            .json(&json!({})),
    );
    assert_eq!(
        metric(
            &gw,
            "scopegate_shadow_would_refuse_total{reason=\"read_only\"}"
        ),
        3
    );
}
