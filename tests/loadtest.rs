//! `scopegate loadtest` as a user runs it: the real binary, a short bounded
//! run on 127.0.0.1, its JSON summary. No timing is asserted, only what the
//! audit found: nothing leaked, nothing valid refused, revocations happened
//! during the load, and every category of the mix was exercised.
//!
//! (That the audit itself catches a leak is shown by the unit tests in
//! `gateway/src/tools/loadtest/`, which feed it a run where a revoked key got
//! through.)

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scopegate_suite::scopegate_bin;
use serde_json::Value;

/// Generous: the runs below take a few seconds; this only stops a hang.
const KILL_AFTER: Duration = Duration::from_secs(180);

const PEPPER: &str = "loadtest-suite-pepper-0123456789";

/// Runs `scopegate ARGS`, killing it after [`KILL_AFTER`]; returns the exit
/// code, stdout and stderr.
fn run(args: &[&str], pepper: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(scopegate_bin());
    cmd.args(args)
        .env_remove("SCOPEGATE_PEPPER")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = pepper {
        cmd.env("SCOPEGATE_PEPPER", p);
    }
    let mut child = cmd.spawn().expect("start scopegate");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + KILL_AFTER;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("scopegate {args:?} did not finish within {KILL_AFTER:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code().unwrap_or(-1),
        out_t.join().unwrap(),
        err_t.join().unwrap(),
    )
}

fn summary(args: &[&str], pepper: Option<&str>) -> Value {
    let (code, out, err) = run(args, pepper);
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {out}\nstderr: {err}"));
    assert_eq!(code, 0, "exit code {code}: {v:#}\nstderr: {err}");
    v
}

fn n(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}

fn assert_clean(v: &Value) {
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(n(v, "/leaked"), 0, "{v:#}");
    assert_eq!(n(v, "/misattributed"), 0, "{v:#}");
    assert_eq!(n(v, "/false_refusals"), 0, "{v:#}");
    assert!(n(v, "/requests") > 0, "{v:#}");
    assert!(n(v, "/revocations") > 0, "{v:#}");
    // What the upstream received is exactly what was admitted.
    let admitted: u64 = v["categories"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["admitted"].as_u64().unwrap())
        .sum();
    assert_eq!(
        admitted,
        n(v, "/upstream_received") - n(v, "/upstream_duplicates")
    );
}

#[test]
fn a_short_load_run_leaks_nothing_and_exercises_every_category() {
    let v = summary(
        &[
            "loadtest",
            "--keys",
            "2000",
            "--duration",
            "3",
            "--connections",
            "8",
            "--revocations-per-sec",
            "50",
            "--json",
        ],
        None,
    );
    assert_clean(&v);
    assert_eq!(n(&v, "/keys"), 2000);
    let cats = v["categories"].as_object().unwrap();
    for (name, c) in cats {
        if c["percent"].as_u64().unwrap() == 0 {
            continue;
        }
        assert!(
            c["requests"].as_u64().unwrap() > 0,
            "{name} got no request: {v:#}"
        );
        if name == "valid" {
            assert!(c["admitted"].as_u64().unwrap() > 0, "{v:#}");
        } else {
            // Keys that were never valid are never admitted, and are refused
            // with their category's status.
            assert_eq!(c["admitted"], 0, "{name}: {v:#}");
            assert_eq!(c["unexpected_status"], 0, "{name}: {v:#}");
        }
    }
    for name in ["valid", "revoked", "expired", "out_of_scope", "malformed"] {
        assert!(cats.contains_key(name), "{name} missing: {v:#}");
    }
    // The run raced requests against revocations: some were sent after
    // their key's revocation returned, and all of those were refused
    // (otherwise `leaked` above would not be 0).
    assert!(n(&v, "/sent_after_revocation") > 0, "{v:#}");
}

#[test]
fn a_kept_population_is_exported_reused_and_reclassified() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("pop.db");
    let keys = dir.path().join("keys.txt");
    let store_s = store.to_str().unwrap();
    let keys_s = keys.to_str().unwrap();

    // Without a pepper a kept store would be unusable later: refused.
    let (code, _, err) = run(
        &[
            "loadtest",
            "--populate-only",
            "--keys",
            "300",
            "--store",
            store_s,
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("SCOPEGATE_PEPPER"), "{err}");

    let first = summary(
        &[
            "loadtest",
            "--populate-only",
            "--keys",
            "300",
            "--store",
            store_s,
            "--export-secrets",
            keys_s,
            "--json",
        ],
        Some(PEPPER),
    );
    assert_eq!(n(&first, "/population/valid"), 300);
    let exported = std::fs::read_to_string(&keys).unwrap();
    let lines: Vec<&str> = exported.lines().collect();
    assert_eq!(lines.len(), 300);
    for l in &lines {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 3, "{l}");
        assert!(f[0].starts_with("sg_"));
        assert!(f[2] == "rw" || f[2] == "r");
    }
    assert!(Path::new(&format!("{store_s}.loadtest")).exists());

    // A load run on the kept store revokes some of its valid keys …
    let run1 = summary(
        &[
            "loadtest",
            "--keys",
            "300",
            "--store",
            store_s,
            "--duration",
            "1",
            "--connections",
            "4",
            "--revocations-per-sec",
            "20",
            "--json",
        ],
        Some(PEPPER),
    );
    assert_clean(&run1);
    let revoked = n(&run1, "/revocations");

    // … which the next run, reading the store, counts as revoked, topping
    // the valid keys up again.
    let again = summary(
        &[
            "loadtest",
            "--populate-only",
            "--keys",
            "300",
            "--store",
            store_s,
            "--json",
        ],
        Some(PEPPER),
    );
    assert_eq!(n(&again, "/population/valid"), 300);
    assert_eq!(
        n(&again, "/population/revoked"),
        n(&first, "/population/revoked") + revoked
    );
}

/// `--fleet 3`: the figures a fleet run adds, and its audit clean.
fn assert_fleet(v: &Value) {
    assert_clean(v);
    assert_eq!(n(v, "/fleet/instances"), 3, "{v:#}");
    assert_eq!(n(v, "/fleet/instances_never_refusing"), 0, "{v:#}");
    let p = &v["fleet"]["propagation_ms"];
    let (p50, max) = (p["p50"].as_f64().unwrap(), p["max"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= max, "{v:#}");
    assert!(n(v, "/sent_after_revocation") > 0, "{v:#}");
}

/// A short `--fleet 3` run, on `store` when given (else a temporary SQLite file).
fn fleet_run(store: Option<&str>) -> Value {
    let mut args = vec![
        "loadtest",
        "--fleet",
        "3",
        "--keys",
        "1000",
        "--duration",
        "3",
    ];
    args.extend(["--connections", "6", "--revocations-per-sec", "30"]);
    args.extend(["--threads", "1", "--json"]);
    if let Some(s) = store {
        args.extend(["--store", s]);
    }
    summary(&args, store.map(|_| PEPPER))
}

#[test]
fn a_fleet_of_three_processes_on_one_sqlite_file_leaks_nothing() {
    assert_fleet(&fleet_run(None));
}

#[test]
fn a_fleet_of_three_processes_on_postgres_leaks_nothing() {
    let url = scopegate_suite::pg::fresh_database_url();
    let v = fleet_run(Some(&url));
    assert_fleet(&v);
    assert!(
        v["store"].as_str().unwrap().starts_with("postgres"),
        "{v:#}"
    );
}
