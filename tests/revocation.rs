//! The promise platform teams rely on: once the admin API has answered a
//! revocation (or a deactivation), no request sent after that answer reaches
//! the upstream — not under load, not on kept-alive connections, and not
//! after the gateway is killed and started again.
//!
//! Every check here is made against the upstream's own record of what it
//! received, correlated with what the clients sent by a per-request tag.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use scopegate_gateway::mock::MockUpstream;
use scopegate_keystore::{Access, NewKey, Role, UserInput};
use scopegate_suite::gateway::{free_port, TestGateway, ADMIN_TOKEN};
use scopegate_suite::http::{Conn, Request, Response};
use scopegate_suite::{sample, scopegate_bin};

/// Header carrying `client-seq`, so upstream records can be matched to sends.
const TAG: &str = "X-Test-Seq";
/// Admitted requests each client makes before the change is sent.
const WARMUP: usize = 20;
/// Requests each client sends after the admin call returned.
const AFTER: usize = 40;
/// Bounds on each client, whatever happens.
const MAX_PER_CLIENT: usize = 20_000;
const CAP: Duration = Duration::from_secs(60);

/// One request as a client saw it.
#[derive(Debug, Clone)]
struct Sent {
    tag: String,
    sent_at: Instant,
    status: u16,
}

/// What a race produced.
struct Race {
    /// Every request, every client.
    sent: Vec<Sent>,
    /// When the admin call returned to its caller.
    returned: Instant,
    /// The version the change published.
    version: u64,
}

/// Runs `clients` (key, path) hammering the proxy on kept-alive connections,
/// fires `change` once every client has had `WARMUP` requests admitted, and
/// lets each client send `AFTER` more requests after `change` returned.
fn race(gw: &TestGateway, clients: &[(String, String)], change: impl FnOnce() -> Response) -> Race {
    let returned: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let admitted: Arc<Vec<AtomicUsize>> =
        Arc::new(clients.iter().map(|_| AtomicUsize::new(0)).collect());
    let start = Instant::now();
    let threads: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (key, path))| {
            let returned = Arc::clone(&returned);
            let admitted = Arc::clone(&admitted);
            let proxy = gw.proxy;
            std::thread::spawn(move || {
                let mut conn = Conn::open(proxy);
                let mut log = Vec::new();
                let mut after = 0;
                for seq in 0..MAX_PER_CLIENT {
                    if after >= AFTER || start.elapsed() > CAP {
                        break;
                    }
                    let tag = format!("{i}-{seq}");
                    let req = Request::new("GET", &path).bearer(&key).header(TAG, &tag);
                    let sent_at = Instant::now();
                    let r = conn.send(&req, true);
                    if r.status == 200 {
                        admitted[i].fetch_add(1, Ordering::SeqCst);
                    }
                    if returned.get().is_some_and(|t| sent_at > *t) {
                        after += 1;
                    }
                    if r.header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    {
                        conn = Conn::open(proxy);
                    }
                    log.push(Sent {
                        tag,
                        sent_at,
                        status: r.status,
                    });
                }
                log
            })
        })
        .collect();
    // Fire once every client is in full swing (polling, bounded).
    while admitted.iter().any(|a| a.load(Ordering::SeqCst) < WARMUP) {
        assert!(start.elapsed() < CAP, "clients never got going");
        std::thread::sleep(Duration::from_millis(1));
    }
    let called = Instant::now();
    let r = change();
    let at = Instant::now();
    returned.set(at).expect("set once");
    assert_eq!(r.status / 100, 2, "the change failed: {}", r.text());
    let version = r
        .header("x-scopegate-version")
        .expect("the change names its version")
        .parse()
        .unwrap();
    let mut sent = Vec::new();
    for t in threads {
        sent.extend(t.join().expect("client thread"));
    }
    let during = sent
        .iter()
        .filter(|s| s.sent_at > called && s.sent_at <= at)
        .count();
    eprintln!(
        "race: {} requests, {} admitted, {} sent while the admin call ran ({:?}), {} after it returned",
        sent.len(),
        sent.iter().filter(|s| s.status == 200).count(),
        during,
        at - called,
        sent.iter().filter(|s| s.sent_at > at).count()
    );
    Race {
        sent,
        returned: at,
        version,
    }
}

/// The upstream's record of tagged requests, by tag: (key id, version that
/// decided). Requests without a tag (a bystander's) are left out.
fn upstream_by_tag(gw: &TestGateway) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for r in gw.domains.requests() {
        let Some(tag) = r.header(TAG) else { continue };
        let key = r
            .header("x-scopegate-key-id")
            .expect("key id header")
            .to_string();
        let version = r
            .header("x-scopegate-version")
            .expect("version header")
            .parse()
            .unwrap();
        assert!(
            out.insert(tag.to_string(), (key, version)).is_none(),
            "{tag} forwarded twice"
        );
    }
    out
}

/// The checks of every race: nothing sent after the change returned was
/// admitted or forwarded; the upstream saw exactly the admitted requests, all
/// with one of `victims` and decided by a version before the change; and the
/// race really raced.
fn assert_stopped(gw: &TestGateway, race: &Race, victims: &BTreeSet<String>, clients: usize) {
    let upstream = upstream_by_tag(gw);
    let mut late = 0;
    for s in &race.sent {
        let forwarded = upstream.get(&s.tag);
        if s.sent_at > race.returned {
            late += 1;
            assert_eq!(
                s.status, 401,
                "request {} sent after the change got {}",
                s.tag, s.status
            );
            assert!(
                forwarded.is_none(),
                "request {} sent after the change reached the upstream",
                s.tag
            );
        }
        match s.status {
            200 => assert!(forwarded.is_some(), "{} admitted but not forwarded", s.tag),
            401 => assert!(forwarded.is_none(), "{} refused but forwarded", s.tag),
            other => panic!("request {} got {other}", s.tag),
        }
    }
    assert_eq!(
        upstream.len(),
        race.sent.iter().filter(|s| s.status == 200).count(),
        "the upstream saw requests nobody sent"
    );
    for (tag, (key, version)) in &upstream {
        assert!(
            victims.contains(key),
            "{tag}: forwarded with unexpected key {key}"
        );
        assert!(
            *version < race.version,
            "{tag}: admitted by version {version}, the change published {}",
            race.version
        );
    }
    let admitted = upstream.len();
    assert!(
        admitted >= clients * WARMUP,
        "only {admitted} admitted before the change"
    );
    assert!(
        late >= clients * AFTER,
        "only {late} requests sent after the change returned"
    );
}

/// Races per test: each one a fresh key or user, so the window in which the
/// admin call runs is crossed many times.
const ROUNDS: usize = 5;

#[test]
fn a_revocation_stops_a_key_under_load_from_the_moment_the_admin_call_returns() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    for round in 0..ROUNDS {
        let created = gw.admin(Request::new("POST", "/v1/orgs/acme/keys").json(
            &serde_json::json!({"user": "ops@example.com", "name": format!("round {round}")}),
        ));
        assert_eq!(created.status, 201, "{}", created.text());
        let created = created.json();
        let id = created["id"].as_str().unwrap().to_string();
        let secret = created["key"].as_str().unwrap().to_string();
        let clients: Vec<(String, String)> = (0..6)
            .map(|_| {
                (
                    secret.clone(),
                    "/domains/staging.example.com/dkim".to_string(),
                )
            })
            .collect();
        gw.domains.clear();
        let r = race(&gw, &clients, || {
            gw.admin(Request::new("DELETE", &format!("/v1/keys/{id}")))
        });
        assert_stopped(&gw, &r, &BTreeSet::from([id.clone()]), clients.len());
        let s = gw
            .admin(Request::new("GET", &format!("/v1/keys/{id}")))
            .json();
        assert_eq!(s["state"], "revoked");
    }
    // The user's older key was never touched.
    let r = gw.send(Request::new("GET", "/domains/example.com").bearer(&keys.ops));
    assert_eq!(r.status, 200);
}

#[test]
fn a_deactivation_stops_every_key_of_the_user_at_once_under_load() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    for round in 0..ROUNDS {
        deactivation_round(&gw, &keys, &format!("leaver{round}@acme.test"));
    }
}

/// A member with three keys of different scopes, all in use on six
/// connections, deactivated mid-stream while a bystander keeps working.
fn deactivation_round(gw: &TestGateway, keys: &sample::Keys, user: &str) {
    let ks = &gw.keystore;
    let access = [
        ("example.com", Access::ReadWrite),
        ("staging.example.com", Access::ReadWrite),
    ]
    .iter()
    .map(|(d, a)| (d.to_string(), *a))
    .collect();
    let input = UserInput {
        role: Role::Member,
        access,
        status: None,
    };
    ks.put_user("t", "acme", user, input).unwrap();
    let now = scopegate_keystore::time::now();
    let mut mine = Vec::new();
    for (domains, access) in [
        (None, None),
        (Some(vec!["staging.example.com".to_string()]), None),
        (
            Some(vec!["staging.example.com".to_string()]),
            Some(Access::Read),
        ),
    ] {
        let k = NewKey {
            user: user.into(),
            domains,
            access,
            ..NewKey::default()
        };
        let c = ks.create_key("t", "acme", k, now).unwrap().value;
        mine.push((c.meta.id, c.secret));
    }
    let clients: Vec<(String, String)> = (0..6)
        .map(|i| {
            (
                mine[i % 3].1.clone(),
                "/domains/staging.example.com".to_string(),
            )
        })
        .collect();
    gw.domains.clear();
    // Someone else keeps working on another connection throughout.
    let done = Arc::new(AtomicBool::new(false));
    let bystander = std::thread::spawn({
        let proxy = gw.proxy;
        let key = keys.ops.clone();
        let done = Arc::clone(&done);
        move || {
            let mut conn = Conn::open(proxy);
            let req = Request::new("GET", "/domains/example.com").bearer(&key);
            let mut statuses = Vec::new();
            while !done.load(Ordering::SeqCst) && statuses.len() < MAX_PER_CLIENT {
                statuses.push(conn.send(&req, true).status);
            }
            statuses
        }
    });
    let r = race(gw, &clients, || {
        gw.admin(Request::new(
            "POST",
            &format!("/v1/orgs/acme/users/{user}/deactivate"),
        ))
    });
    done.store(true, Ordering::SeqCst);
    let statuses = bystander.join().unwrap();
    let victims: BTreeSet<String> = mine.iter().map(|(id, _)| id.clone()).collect();
    assert_stopped(gw, &r, &victims, clients.len());
    // The bystander was never disturbed, and reached the upstream every time.
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let bystander_seen = gw
        .domains
        .requests()
        .iter()
        .filter(|r| r.header("x-scopegate-key-id") == Some(keys.ids["ops"].as_str()))
        .count();
    assert_eq!(bystander_seen, statuses.len());
    let listed = gw
        .admin(Request::new(
            "GET",
            &format!("/v1/orgs/acme/keys?user={user}"),
        ))
        .json();
    let listed = listed["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|k| k["state"] == "revoked"), "{listed:?}");
}

// ---------------------------------------------------------------------------
// Restart after SIGKILL

const PEPPER: &str = "restart-test-pepper-0123456789";

/// A `scopegate serve` child, killed and reaped on drop.
struct Serve {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    stderr: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Starts the real binary; `None` if it exited before it was ready
    /// (e.g. a port was taken in the meantime).
    fn start(
        dir: &Path,
        store: &Path,
        upstreams: &[&MockUpstream],
        proxy: SocketAddr,
        admin: SocketAddr,
    ) -> Option<Serve> {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let stderr = dir.join(format!("serve-{n}.log"));
        let mut cmd = Command::new(scopegate_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(proxy.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--store")
            .arg(store)
            .arg("--threads")
            .arg("2");
        for u in upstreams {
            cmd.arg("--upstream")
                .arg(format!("{}={}", u.name(), u.addr()));
        }
        let child = cmd
            .env("SCOPEGATE_PEPPER", PEPPER)
            .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start scopegate serve");
        let mut s = Serve {
            child,
            proxy,
            admin,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if s.child.try_wait().unwrap().is_some() {
                eprintln!("scopegate exited early:\n{}", s.log());
                return None;
            }
            let ready = TcpStream::connect(admin).is_ok()
                && TcpStream::connect(proxy).is_ok()
                && Request::new("GET", "/readyz").send(admin).status == 200;
            if ready {
                return Some(s);
            }
            assert!(
                Instant::now() < deadline,
                "scopegate never became ready:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn admin(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Response {
        let mut r = Request::new(method, path).bearer(ADMIN_TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send(self.admin)
    }

    fn get(&self, key: &str) -> u16 {
        Request::new("GET", "/domains/example.com")
            .bearer(key)
            .send(self.proxy)
            .status
    }

    /// SIGKILL: no shutdown path runs.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

#[test]
fn an_acknowledged_revocation_survives_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("scopegate.db");
    let sending = MockUpstream::spawn("sending").unwrap();
    let domains = MockUpstream::spawn("domains").unwrap();
    let ups = [&sending, &domains];
    let gw = (0..3)
        .find_map(|_| Serve::start(dir.path(), &store, &ups, free_port(), free_port()))
        .expect("scopegate serve starts");
    use serde_json::json;
    let ok = |r: Response, s: u16| {
        assert_eq!(r.status, s, "{}", r.text());
        r.json()
    };
    ok(
        gw.admin(
            "PUT",
            "/v1/orgs/acme",
            Some(json!({"domains": ["example.com"]})),
        ),
        201,
    );
    ok(
        gw.admin(
            "PUT",
            "/v1/orgs/acme/users/owner@acme.test",
            Some(json!({"role": "owner"})),
        ),
        201,
    );
    for u in ["dev@acme.test", "leaver@acme.test"] {
        ok(
            gw.admin(
                "PUT",
                &format!("/v1/orgs/acme/users/{u}"),
                Some(json!({"role": "member", "access": {"example.com": "read_write"}})),
            ),
            201,
        );
    }
    let create = |user: &str| {
        let v = ok(
            gw.admin("POST", "/v1/orgs/acme/keys", Some(json!({"user": user}))),
            201,
        );
        (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    };
    let (revoked_id, revoked) = create("dev@acme.test");
    let (_, kept) = create("dev@acme.test");
    let (_, leaver) = create("leaver@acme.test");
    let (_, owner) = create("owner@acme.test");
    for k in [&revoked, &kept, &leaver, &owner] {
        assert_eq!(gw.get(k), 200);
    }
    let r = gw.admin("DELETE", &format!("/v1/keys/{revoked_id}"), None);
    assert_eq!(r.status, 200);
    let revoked_at: u64 = r.header("x-scopegate-version").unwrap().parse().unwrap();
    let r = gw.admin(
        "POST",
        "/v1/orgs/acme/users/leaver@acme.test/deactivate",
        None,
    );
    assert_eq!(r.status, 200);
    let deactivated_at: u64 = r.header("x-scopegate-version").unwrap().parse().unwrap();
    assert_eq!(gw.get(&revoked), 401);
    assert_eq!(gw.get(&leaver), 401);
    let forwarded = domains.count();
    // Kill right after the acknowledgements: nothing gets a chance to flush.
    let (proxy, admin) = (gw.proxy, gw.admin);
    gw.kill();

    // Same store; the same ports if they are free again, else fresh ones.
    let gw = Serve::start(dir.path(), &store, &ups, proxy, admin)
        .or_else(|| {
            eprintln!("the old ports were not free again; restarting on fresh ones");
            (0..3).find_map(|_| Serve::start(dir.path(), &store, &ups, free_port(), free_port()))
        })
        .expect("scopegate serve restarts");
    assert_eq!(
        gw.get(&revoked),
        401,
        "a revoked key came back after a restart"
    );
    assert_eq!(
        gw.get(&leaver),
        401,
        "a deactivated user's key came back after a restart"
    );
    assert_eq!(gw.get(&kept), 200);
    assert_eq!(gw.get(&owner), 200);
    assert_eq!(domains.count(), forwarded + 2);
    let st = ok(gw.admin("GET", "/v1/status", None), 200);
    assert!(st["version"].as_u64().unwrap() >= revoked_at.max(deactivated_at));
    assert_eq!(st["keys"], 2);
    let k = ok(
        gw.admin("GET", &format!("/v1/keys/{revoked_id}"), None),
        200,
    );
    assert_eq!(k["state"], "revoked");
    let users = ok(gw.admin("GET", "/v1/orgs/acme/users", None), 200);
    let leaver_row = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "leaver@acme.test")
        .cloned()
        .unwrap();
    assert_eq!(leaver_row["status"], "deactivated");
}
