//! The `scopegate` binary as an operator meets it: refusing to start without
//! a pepper or with an exposed, tokenless admin API, reporting every config
//! mistake at once, reloading on SIGHUP, draining on SIGTERM, and `check`
//! deciding offline exactly as the proxy does.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use scopegate_gateway::mock::MockUpstream;
use scopegate_keystore::{KeyStore, Pepper};
use scopegate_suite::gateway::{free_port, ADMIN_TOKEN, PEPPER};
use scopegate_suite::http::Request;
use scopegate_suite::{sample, scopegate_bin};

fn bin() -> Command {
    let mut c = Command::new(scopegate_bin());
    c.env_remove("SCOPEGATE_PEPPER")
        .env_remove("SCOPEGATE_ADMIN_TOKEN")
        .env("RUST_LOG", "warn");
    c
}

fn run(c: &mut Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run scopegate")
}

fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Serve {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(config: &std::path::Path) -> Serve {
    serve_logging(config, "warn")
}

/// `serve` with this `RUST_LOG` filter; stderr is piped for the test to read.
fn serve_logging(config: &std::path::Path, rust_log: &str) -> Serve {
    let text = std::fs::read_to_string(config).unwrap();
    let addr = |key: &str| -> SocketAddr {
        let line = text.lines().find(|l| l.starts_with(key)).unwrap();
        line.split('"').nth(1).unwrap().parse().unwrap()
    };
    let child = bin()
        .args(["serve", "--config"])
        .arg(config)
        .env("SCOPEGATE_PEPPER", std::str::from_utf8(PEPPER).unwrap())
        .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let s = Serve {
        child,
        proxy: addr("listen ="),
        admin: addr("admin_listen ="),
    };
    poll("serve to be ready", || {
        std::net::TcpStream::connect(s.admin).is_ok()
            && Request::new("GET", "/readyz").send(s.admin).status == 200
    });
    s
}

fn config_file(
    dir: &std::path::Path,
    sending: SocketAddr,
    domains: SocketAddr,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("gw.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"{}\"\nadmin_listen = \"{}\"\nstore = \"{}\"\nthreads = 1\ngrace_period_ms = 1000\n\n[log]\naccess_log = \"off\"\n\n[upstreams.sending]\nbackends = [\"{sending}\"]\n\n[upstreams.domains]\nbackends = [\"{domains}\"]\n\n{extra}",
            free_port(),
            free_port(),
            dir.join("keys.db").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn serve_refuses_to_start_without_a_pepper() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin()
        .args(["serve", "--store"])
        .arg(dir.path().join("k.db")));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refuses to start without a pepper"), "{err}");
    assert!(err.contains("SCOPEGATE_PEPPER"), "{err}");
}

#[test]
fn serve_refuses_a_public_admin_listener_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin()
        .args(["serve", "--admin-listen", "0.0.0.0:0", "--store"])
        .arg(dir.path().join("k.db"))
        .env("SCOPEGATE_PEPPER", "a-pepper-of-enough-bytes"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin"), "{err}");
    assert!(err.contains("token"), "{err}");
}

#[test]
fn every_config_mistake_is_reported_at_once_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"nope\"\n[limits]\nmax_body_bytes = 0\n[[routes]]\npath = \"/email\"\nupstream = \"sendng\"\ntarget = \"sender\"\n",
    )
    .unwrap();
    let out = run(bin()
        .args(["serve", "--config"])
        .arg(&path)
        .env("SCOPEGATE_PEPPER", "a-pepper-of-enough-bytes"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "bad.toml",
        "listen:",
        "limits.max_body_bytes:",
        "routes[0].upstream:",
        "sendng",
    ] {
        assert!(err.contains(needle), "{needle} missing in {err}");
    }
}

/// A taken port is a startup error with the address in it, not a process
/// that keeps running without its listener (Pingora alone would panic on its
/// service thread and leave the rest up).
#[test]
fn serve_exits_with_a_clear_error_when_its_port_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = config_file(dir.path(), up, up, "");
    for flag in ["--listen", "--admin-listen"] {
        let mut child = bin()
            .args(["serve", "--config"])
            .arg(&config)
            .args([flag, &taken_addr.to_string()])
            .env("SCOPEGATE_PEPPER", std::str::from_utf8(PEPPER).unwrap())
            .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve {flag} {taken_addr} kept running with its port taken");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{flag}: {status:?}");
        assert!(err.contains(&taken_addr.to_string()), "{flag}: {err}");
        assert!(err.contains("cannot listen"), "{flag}: {err}");
    }
    drop(taken);
}

#[test]
fn check_decides_offline_like_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("keys.db");
    let keys = {
        let ks = KeyStore::open_sqlite(&store, Pepper::new(PEPPER)).unwrap();
        sample::setup(&ks)
    };
    let check = |method: &str, path: &str, key: &str, body: Option<&str>| {
        let mut c = bin();
        c.args(["check", "--method", method, "--path", path, "--store"])
            .arg(&store)
            .env("SCOPEGATE_PEPPER", std::str::from_utf8(PEPPER).unwrap())
            .env("SCOPEGATE_CHECK_KEY", key);
        if let Some(b) = body {
            let f = dir.path().join("body.json");
            std::fs::write(&f, b).unwrap();
            c.arg("--body").arg(f);
        }
        let out = run(&mut c);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check("GET", "/domains/STAGING.example.com", &keys.dev, None);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("ADMIT -> domains /domains/staging.example.com"),
        "{out}"
    );
    assert!(
        out.contains("X-Scopegate-Scope: staging.example.com=read_write"),
        "{out}"
    );
    assert!(!out.contains(&keys.dev));
    let (code, out) = check("GET", "/domains/example.com", &keys.client_a, None);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("REFUSE 404") && out.contains("not_visible"),
        "{out}"
    );
    let (code, out) = check(
        "POST",
        "/email",
        &keys.dev,
        Some(r#"{"From": "ceo@example.com"}"#),
    );
    assert_eq!(code, Some(1));
    assert!(out.contains("REFUSE 422"), "{out}");
    let (code, _) = check(
        "POST",
        "/email",
        &keys.dev,
        Some(r#"{"From": "Dev <dev@staging.example.com>"}"#),
    );
    assert_eq!(code, Some(0));
    let (code, out) = check("GET", "/domains/example.com", "garbage", None);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("REFUSE 401") && out.contains("unknown_key"),
        "{out}"
    );
}

#[test]
fn sighup_reloads_the_config_file_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let sending = MockUpstream::spawn("sending").unwrap();
    let domains = MockUpstream::spawn("domains").unwrap();
    let path = config_file(dir.path(), sending.addr(), domains.addr(), "");
    let keys = {
        let ks = KeyStore::open_sqlite(&dir.path().join("keys.db"), Pepper::new(PEPPER)).unwrap();
        sample::setup(&ks)
    };
    let mut gw = serve(&path);
    assert_eq!(
        Request::new("GET", "/account")
            .bearer(&keys.owner)
            .send(gw.proxy)
            .status,
        200
    );
    // Narrow the route table and reload by signal.
    let text = std::fs::read_to_string(&path).unwrap()
        + "[[routes]]\npath = \"/domains/{domain}/**\"\nupstream = \"domains\"\ntarget = \"domain\"\n";
    std::fs::write(&path, text).unwrap();
    let pid = gw.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    poll("the reload", || {
        Request::new("GET", "/metrics")
            .send(gw.admin)
            .text()
            .contains("scopegate_config_reloads_total{result=\"ok\"} 1")
    });
    assert_eq!(
        Request::new("GET", "/account")
            .bearer(&keys.owner)
            .send(gw.proxy)
            .status,
        404
    );
    assert_eq!(
        Request::new("GET", "/domains/staging.example.com")
            .bearer(&keys.dev)
            .send(gw.proxy)
            .status,
        200
    );
    // SIGTERM: a request in flight still completes, then the process exits 0.
    domains.set_behavior(scopegate_gateway::mock::Behavior::Delay(
        Duration::from_millis(300),
    ));
    let proxy = gw.proxy;
    let dev = keys.dev.clone();
    let in_flight = std::thread::spawn(move || {
        Request::new("GET", "/domains/staging.example.com")
            .bearer(&dev)
            .send(proxy)
            .status
    });
    // Two requests reached the domains upstream before this one.
    poll("the request to reach the upstream", || domains.count() >= 3);
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        in_flight.join().unwrap(),
        200,
        "the in-flight request was dropped"
    );
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut err = String::new();
    for line in BufReader::new(gw.child.stderr.take().unwrap()).lines() {
        err.push_str(&line.unwrap());
        err.push('\n');
    }
    assert!(
        !err.contains(&keys.dev) && !err.contains(&keys.owner),
        "a key reached the process log"
    );
}

#[test]
fn every_admin_change_is_audited_with_actor_change_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let sending = MockUpstream::spawn("sending").unwrap();
    let domains = MockUpstream::spawn("domains").unwrap();
    let path = config_file(dir.path(), sending.addr(), domains.addr(), "");
    let mut gw = serve_logging(&path, "warn,scopegate::audit=info");
    let admin = |r: Request| r.bearer(ADMIN_TOKEN).send(gw.admin);
    assert_eq!(
        admin(
            Request::new("PUT", "/v1/orgs/acme")
                .json(&serde_json::json!({"domains": ["example.com"]}))
        )
        .status,
        201
    );
    assert_eq!(
        admin(
            Request::new("PUT", "/v1/orgs/acme/users/owner@acme.test")
                .json(&serde_json::json!({"role": "owner"}))
        )
        .status,
        201
    );
    let created = admin(
        Request::new("POST", "/v1/orgs/acme/keys")
            .json(&serde_json::json!({"user": "owner@acme.test", "org_wide": true})),
    );
    assert_eq!(created.status, 201);
    let secret = created.json()["key"].as_str().unwrap().to_string();
    let id = created.json()["id"].as_str().unwrap().to_string();
    let revoked = admin(Request::new("DELETE", &format!("/v1/keys/{id}")));
    let version = revoked.json()["version"].as_u64().unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    gw.child.wait().unwrap();
    let mut err = String::new();
    for line in BufReader::new(gw.child.stderr.take().unwrap()).lines() {
        err.push_str(&line.unwrap());
        err.push('\n');
    }
    for needle in [
        "actor=admin change=put_org subject=acme".to_string(),
        "actor=admin change=put_user subject=acme/owner@acme.test".to_string(),
        format!("actor=admin change=create_key subject=acme/{id}"),
        format!("actor=admin change=revoke_key subject={id} version={version}"),
    ] {
        assert!(
            err.contains(&needle),
            "{needle} not in the audit log:\n{err}"
        );
    }
    assert!(!err.contains(&secret), "the secret reached the log");
    assert!(
        !err.contains(ADMIN_TOKEN),
        "the admin token reached the log"
    );
}
