//! The operational surface: exact counters for known traffic, no key
//! material in any label, `/readyz` following upstream health, access logs,
//! and configuration reloads that drop nothing and refuse bad files.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scopegate_suite::gateway::TestGateway;
use scopegate_suite::http::{Conn, Request};
use scopegate_suite::sample;
use serde_json::json;

/// The value of one sample line of the exposition, e.g.
/// `scopegate_requests_total{decision="admitted",route="/email"}`.
fn sample_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series}"))
        .trim()
        .parse()
        .unwrap()
}

fn requests(m: &str, route: &str, decision: &str) -> f64 {
    sample_value(
        m,
        &format!("scopegate_requests_total{{decision=\"{decision}\",route=\"{route}\"}}"),
    )
}

fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn counters_match_known_traffic_exactly() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    let now = scopegate_keystore::time::now();
    gw.keystore
        .revoke_key("t", &keys.ids["client_b"], now)
        .unwrap();
    let dom = "/domains/{domain}/**";
    for _ in 0..3 {
        assert_eq!(
            gw.send(Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev))
                .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            gw.send(Request::new("GET", "/domains/staging.example.com"))
                .status,
            401
        );
    }
    assert_eq!(
        gw.send(Request::new("GET", "/domains/x.com").bearer("unknown-legacy-key"))
            .status,
        401
    );
    assert_eq!(
        gw.send(Request::new("GET", "/domains/client-b.com").bearer(&keys.client_b))
            .status,
        401
    );
    assert_eq!(
        gw.send(Request::new("GET", "/domains/example.com").bearer(&keys.client_a))
            .status,
        404
    );
    assert_eq!(
        gw.send(Request::new("GET", "/domains/nowhere.example").bearer(&keys.client_a))
            .status,
        404
    );
    assert_eq!(
        gw.send(Request::new("POST", "/domains/staging.example.com/verify").bearer(&keys.dev_read))
            .status,
        403
    );
    assert_eq!(
        gw.send(Request::new("GET", "/account").bearer(&keys.dev))
            .status,
        403
    );
    assert_eq!(
        gw.send(
            Request::new("POST", "/email")
                .bearer(&keys.dev)
                .json(&json!({"From": "ceo@example.com"}))
        )
        .status,
        422
    );
    assert_eq!(
        gw.send(
            Request::new("POST", "/email")
                .bearer(&keys.dev)
                .json(&json!({"From": "a@staging.example.com"}))
        )
        .status,
        201
    );
    assert_eq!(
        gw.send(Request::new("GET", "/nope").bearer(&keys.dev))
            .status,
        404
    );
    assert_eq!(
        gw.send(Request::new("GET", "/domains/a%2Fb").bearer(&keys.dev))
            .status,
        400
    );

    // Requests are counted in the logging phase, after the answer went out:
    // wait until none is in flight any more.
    let mut m = gw.metrics();
    poll("requests to be logged", || {
        m = gw.metrics();
        sample_value(&m, "scopegate_in_flight_requests") == 0.0
    });
    assert_eq!(requests(&m, dom, "admitted"), 3.0);
    assert_eq!(requests(&m, dom, "missing_key"), 2.0);
    assert_eq!(requests(&m, dom, "invalid_key"), 2.0);
    assert_eq!(requests(&m, dom, "not_found"), 2.0);
    assert_eq!(requests(&m, dom, "forbidden"), 1.0);
    assert_eq!(requests(&m, "/account/**", "forbidden"), 1.0);
    assert_eq!(requests(&m, "/email", "sender_refused"), 1.0);
    assert_eq!(requests(&m, "/email", "admitted"), 1.0);
    assert_eq!(requests(&m, "unmatched", "not_found"), 1.0);
    assert_eq!(requests(&m, "unmatched", "bad_request"), 1.0);
    assert_eq!(
        sample_value(&m, "scopegate_invalid_keys_total{reason=\"unknown_key\"}"),
        1.0
    );
    assert_eq!(
        sample_value(&m, "scopegate_invalid_keys_total{reason=\"revoked_key\"}"),
        1.0
    );
    // Every request that presented a key on a known route had it checked
    // (3 admitted, 2 invalid, 2 not found, 2 forbidden, 2 sends).
    assert_eq!(sample_value(&m, "scopegate_key_check_seconds_count"), 11.0);
    assert_eq!(
        sample_value(&m, "scopegate_keys"),
        (gw.keystore.status().keys) as f64
    );
    // Every key of this store was created with a locator.
    assert_eq!(sample_value(&m, "scopegate_keys_without_locator"), 0.0);
    assert_eq!(
        sample_value(&m, "scopegate_snapshot_version"),
        gw.keystore.status().version as f64
    );
    assert_eq!(
        sample_value(&m, "scopegate_upstream_seconds_count{upstream=\"domains\"}"),
        3.0
    );
    assert_eq!(
        sample_value(&m, "scopegate_upstream_seconds_count{upstream=\"sending\"}"),
        1.0
    );
    // Bucket boundaries fine enough for sub-microsecond checks.
    assert!(
        m.contains("scopegate_key_check_seconds_bucket{le=\"0.0000001\"}"),
        "{m}"
    );
}

#[test]
fn labels_never_carry_keys_users_or_domains() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    for (path, key) in [
        ("/domains/staging.example.com", keys.dev.as_str()),
        ("/domains/secret-client.example", keys.client_a.as_str()),
        ("/domains/x.com", "sg_not-a-real-key-but-looks-like-one"),
        ("/whatever/ceo@example.com", keys.owner.as_str()),
    ] {
        gw.send(Request::new("GET", path).bearer(key));
    }
    let m = gw.metrics();
    for secret in [&keys.dev, &keys.client_a, &keys.owner] {
        assert!(!m.contains(secret.as_str()));
    }
    for id in keys.ids.values() {
        assert!(!m.contains(id.as_str()), "key id {id} in metrics");
    }
    for word in [
        "example.com",
        "client-a",
        "dev@",
        "acme",
        "secret-client",
        "sg_",
    ] {
        assert!(!m.contains(word), "{word} in metrics");
    }
    // Label values come from bounded sets only.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        if let Some(labels) = line
            .split_once('{')
            .map(|(_, r)| r.split_once('}').unwrap().0)
        {
            for pair in labels.split(',') {
                let (k, _) = pair.split_once('=').unwrap();
                assert!(
                    ["route", "decision", "reason", "upstream", "kind", "result", "le"]
                        .contains(&k),
                    "unexpected label {k} in {line}"
                );
            }
        }
    }
}

#[test]
fn readyz_follows_upstream_health() {
    let gw = TestGateway::start();
    poll("ready", || {
        Request::new("GET", "/readyz").send(gw.admin).status == 200
    });
    assert_eq!(Request::new("GET", "/healthz").send(gw.admin).status, 200);
    let TestGateway { sending, .. } = &gw;
    let addr = sending.addr();
    // Stop the sending mock: the group has no healthy backend any more.
    let gw = {
        let mut gw = gw;
        let dead = std::mem::replace(
            &mut gw.sending,
            scopegate_gateway::mock::MockUpstream::spawn("spare").unwrap(),
        );
        dead.stop();
        gw
    };
    poll("not ready", || {
        let r = Request::new("GET", "/readyz").send(gw.admin);
        r.status == 503 && r.text().contains("sending")
    });
    assert_eq!(
        Request::new("GET", "/healthz").send(gw.admin).status,
        200,
        "the process is still up"
    );
    // Back on the same address: ready again.
    let back = scopegate_gateway::mock::MockUpstream::spawn_on("sending", addr).unwrap();
    poll("ready again", || {
        Request::new("GET", "/readyz").send(gw.admin).status == 200
    });
    drop(back);
}

#[test]
fn access_log_has_one_json_line_per_request_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let log2 = log.clone();
    let gw = TestGateway::start_with(move |c| {
        c.log.access_log = scopegate_config::AccessLog::File(log2);
        c.log.format = scopegate_config::LogFormat::Json;
    });
    let keys = sample::setup(&gw.keystore);
    gw.send(Request::new("GET", "/domains/staging.example.com?x=1").bearer(&keys.dev));
    gw.send(Request::new("GET", "/domains/example.com").bearer(&keys.client_a));
    gw.send(Request::new("GET", "/domains/x.com").bearer(&keys.dev[..keys.dev.len() - 1]));
    gw.send(Request::new("GET", &format!("/domains/{}", keys.owner)).bearer(&keys.owner));
    poll("four log lines", || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count() >= 4)
            .unwrap_or(false)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["decision"], "admitted");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["path"], "/domains/staging.example.com");
    assert_eq!(lines[0]["key_id"], keys.ids["dev"].as_str());
    assert_eq!(lines[0]["org"], "acme");
    assert_eq!(lines[0]["upstream"], "domains");
    assert_eq!(lines[0]["method"], "GET");
    assert!(lines[0]["latency_us"].as_u64().is_some());
    assert_eq!(lines[1]["decision"], "not_found");
    assert_eq!(lines[1]["reason"], "not_visible");
    assert_eq!(lines[2]["decision"], "invalid_key");
    assert_eq!(lines[2]["reason"], "malformed_key");
    for k in [&keys.dev, &keys.client_a, &keys.owner] {
        assert!(!text.contains(k.as_str()), "a key reached the access log");
        assert!(
            !text.contains(&k[..k.len() - 1]),
            "a key prefix reached the access log"
        );
    }
}

#[test]
fn reload_under_load_drops_nothing_and_a_bad_file_changes_nothing() {
    let gw = TestGateway::start_reloadable("");
    let keys = sample::setup(&gw.keystore);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, key, addr) = (stop.clone(), sent.clone(), keys.dev.clone(), gw.proxy);
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let mut bad = Vec::new();
                for _ in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = conn.send(
                        &Request::new("GET", "/domains/staging.example.com").bearer(&key),
                        true,
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                    if r.status != 200 {
                        bad.push(r.status);
                    }
                }
                bad
            })
        })
        .collect();
    for i in 0..10 {
        // Alternate the limits so each reload really builds new routing.
        gw.write_config(&format!("[limits]\nmax_body_bytes = {}\n", 1024 * 1024 + i));
        let r = gw.admin(Request::new("POST", "/v1/reload"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        assert_eq!(
            c.join().unwrap(),
            Vec::<u16>::new(),
            "requests failed during reloads"
        );
    }
    assert!(sent.load(Ordering::Relaxed) > 0);

    // A file with mistakes is refused with the reason; the old config stays.
    gw.write_config("[[routes]]\npath = \"/email\"\nupstream = \"nowhere\"\ntarget = \"sender\"\n");
    let r = gw.admin(Request::new("POST", "/v1/reload"));
    assert_eq!(r.status, 422);
    assert!(r.text().contains("nowhere"), "{}", r.text());
    gw.write_config("listen = \"127.0.0.1:1\"\n");
    let r = gw.admin(Request::new("POST", "/v1/reload"));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        gw.send(Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev))
            .status,
        200
    );
    // A valid new route table takes effect: only /domains routes remain.
    gw.write_config("[[routes]]\nmethods = [\"GET\"]\npath = \"/domains/{domain}/**\"\nupstream = \"domains\"\ntarget = \"domain\"\n");
    assert_eq!(gw.admin(Request::new("POST", "/v1/reload")).status, 200);
    assert_eq!(
        gw.send(Request::new("GET", "/account").bearer(&keys.owner))
            .status,
        404
    );
    assert_eq!(
        gw.send(Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev))
            .status,
        200
    );
    let m = gw.metrics();
    assert_eq!(
        sample_value(&m, "scopegate_config_reloads_total{result=\"ok\"}"),
        11.0
    );
    assert_eq!(
        sample_value(&m, "scopegate_config_reloads_total{result=\"rejected\"}"),
        2.0
    );
}

/// Every metric the sample dashboard and alert rules use exists, so the
/// files in docs/ cannot drift from the code.
#[test]
fn dashboard_and_alerts_use_only_real_metrics() {
    let gw = TestGateway::start();
    let m = gw.metrics();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for file in ["docs/dashboard.json", "docs/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text).expect("the dashboard is JSON");
        }
        let mut rest = text.as_str();
        while let Some(i) = rest.find("scopegate_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                m.contains(&format!("# TYPE {base} ")),
                "{file} uses {name}, which /metrics does not export"
            );
            checked += 1;
        }
    }
    assert!(checked > 20);
}
