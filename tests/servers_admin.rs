//! Servers through the admin API and `scopegate admin`, black-box, against a
//! real `scopegate serve` process: `PUT`/`DELETE /v1/orgs/{org}/servers/{server}`,
//! `GET /v1/orgs/{org}/servers`, users' `"servers"`, keys' `"server"` and
//! `"server_access"` — in the answers, the GETs, the audit log, the CLI, and
//! enforced by the proxy on the next request. Errors name what is wrong:
//! 404 for an unknown organisation or server, 409 for a taken id, 422 for a
//! rule. (The rules themselves: `keystore/tests/servers.rs`.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use scopegate_gateway::mock::MockUpstream;
use scopegate_suite::gateway::{free_port, ADMIN_TOKEN, PEPPER};
use scopegate_suite::http::{Request, Response};
use scopegate_suite::scopegate_bin;
use serde_json::{json, Value};

const DEV: &str = "dev@acme.test";
const OWNER: &str = "owner@acme.test";

/// A `scopegate serve` process whose log (audit lines included) goes to a file.
struct Serve {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    _mocks: (MockUpstream, MockUpstream),
}

impl Serve {
    fn start(dir: &Path) -> Serve {
        let sending = MockUpstream::spawn("sending").unwrap();
        let domains = MockUpstream::spawn("domains").unwrap();
        let (proxy, admin) = (free_port(), free_port());
        let config = dir.join("gw.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{proxy}\"\nadmin_listen = \"{admin}\"\nstore = \"{}\"\nthreads = 1\n\
                 grace_period_ms = 1000\n\n[log]\naccess_log = \"off\"\n\n\
                 [upstreams.sending]\nbackends = [\"{}\"]\n\n[upstreams.domains]\nbackends = [\"{}\"]\n",
                dir.join("keys.db").display(),
                sending.addr(),
                domains.addr()
            ),
        )
        .unwrap();
        let mut s = Serve {
            child: Command::new("true").spawn().unwrap(),
            proxy,
            admin,
            config,
            log: dir.join("serve.log"),
            _mocks: (sending, domains),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Command::new(scopegate_bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("SCOPEGATE_PEPPER", std::str::from_utf8(PEPPER).unwrap())
            .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn,scopegate::audit=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(std::net::TcpStream::connect(self.admin).is_ok()
            && Request::new("GET", "/readyz").send(self.admin).status == 200)
        {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "serve exited early"
            );
            assert!(Instant::now() < deadline, "serve did not become ready");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.spawn();
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let mut r = Request::new(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.bearer(ADMIN_TOKEN).send(self.admin)
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
        r.json()
    }

    fn proxy(&self, method: &str, path: &str, key: &str) -> u16 {
        Request::new(method, path)
            .bearer(key)
            .send(self.proxy)
            .status
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(scopegate_bin())
            .arg("admin")
            .args(args)
            .env("SCOPEGATE_ADMIN_URL", format!("http://{}", self.admin))
            .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_error(r: &Response, status: u16, code: &str, mentions: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.error_code(), code, "{}", r.text());
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains(mentions), "{message:?} names {mentions:?}");
}

/// `acme` with one domain, an owner and a member.
fn seed(s: &Serve) {
    s.ok(
        "PUT",
        "/v1/orgs/acme",
        Some(json!({"domains": ["acme.example"]})),
    );
    s.ok(
        "PUT",
        &format!("/v1/orgs/acme/users/{OWNER}"),
        Some(json!({"role": "owner"})),
    );
    s.ok(
        "PUT",
        &format!("/v1/orgs/acme/users/{DEV}"),
        Some(json!({"role": "member", "access": {"acme.example": "read_write"}})),
    );
}

#[test]
fn servers_are_put_listed_shown_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(dir.path());
    seed(&s);
    let r = s.call("PUT", "/v1/orgs/acme/servers/Prod", Some(json!({"id": 11})));
    assert_eq!(r.status, 201, "{}", r.text());
    let v1: u64 = r.header("x-scopegate-version").unwrap().parse().unwrap();
    assert_eq!(
        r.json(),
        json!({"org": "acme", "server": "prod", "id": 11, "version": v1})
    );
    // The same again: 200, nothing published.
    let r = s.call("PUT", "/v1/orgs/acme/servers/prod", Some(json!({"id": 11})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], v1);
    // A new id: 200, a new version.
    let r = s.call("PUT", "/v1/orgs/acme/servers/prod", Some(json!({"id": 21})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["version"].as_u64().unwrap() > v1);
    s.ok(
        "PUT",
        "/v1/orgs/acme/servers/staging",
        Some(json!({"id": 12})),
    );
    let servers = json!([{"name": "prod", "id": 21}, {"name": "staging", "id": 12}]);
    assert_eq!(
        s.ok("GET", "/v1/orgs/acme/servers", None),
        json!({"org": "acme", "servers": servers})
    );
    assert_eq!(s.ok("GET", "/v1/orgs/acme", None)["servers"], servers);
    // Replacing the domains keeps the servers.
    let org = s.ok(
        "PUT",
        "/v1/orgs/acme",
        Some(json!({"domains": ["acme.example", "b.example"]})),
    );
    assert_eq!(org["servers"], servers);

    // Errors: which organisation, server or field is wrong.
    assert_error(
        &s.call("PUT", "/v1/orgs/acme/servers/eu", Some(json!({"id": 12}))),
        409,
        "server_id_taken",
        "staging",
    );
    assert_error(
        &s.call(
            "PUT",
            "/v1/orgs/acme/servers/no%20space",
            Some(json!({"id": 3})),
        ),
        422,
        "invalid_server_name",
        "no space",
    );
    assert_error(
        &s.call("PUT", "/v1/orgs/nope/servers/prod", Some(json!({"id": 3}))),
        404,
        "org_not_found",
        "nope",
    );
    assert_error(
        &s.call("GET", "/v1/orgs/nope/servers", None),
        404,
        "org_not_found",
        "nope",
    );
    assert_error(
        &s.call("PUT", "/v1/orgs/acme/servers/eu", Some(json!({}))),
        400,
        "invalid_json",
        "id",
    );
    assert_error(
        &s.call(
            "PUT",
            "/v1/orgs/acme/servers/eu",
            Some(json!({"id": 3, "name": "x"})),
        ),
        400,
        "invalid_json",
        "name",
    );
    assert_error(
        &s.call("DELETE", "/v1/orgs/acme/servers/eu", None),
        404,
        "server_not_found",
        "eu",
    );
    let deleted = s.ok("DELETE", "/v1/orgs/acme/servers/staging", None);
    assert_eq!(deleted["bound_keys"], 0);
    assert_eq!(deleted["deleted"], true);
    assert_eq!(
        s.ok("GET", "/v1/orgs/acme/servers", None)["servers"],
        json!([{"name": "prod", "id": 21}])
    );
    // Counted like every admin change.
    let metrics = Request::new("GET", "/metrics").send(s.admin).text();
    assert!(
        metrics.contains(r#"scopegate_admin_mutations_total{kind="put_server",result="ok"} 4"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("put_server"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn users_and_keys_carry_servers_and_changes_are_enforced_on_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(dir.path());
    seed(&s);
    s.ok("PUT", "/v1/orgs/acme/servers/prod", Some(json!({"id": 11})));
    s.ok(
        "PUT",
        "/v1/orgs/acme/servers/staging",
        Some(json!({"id": 12})),
    );
    let dev = format!("/v1/orgs/acme/users/{DEV}");
    let member = |servers: Value| json!({"role": "member", "access": {"acme.example": "read_write"}, "servers": servers});
    let u = s.ok(
        "PUT",
        &dev,
        Some(member(json!({"Prod": "read_write", "staging": "read"}))),
    );
    assert_eq!(
        u["servers"],
        json!({"prod": "read_write", "staging": "read"})
    );
    // Per-server access: members only, servers of the organisation only.
    assert_error(
        &s.call("PUT", &dev, Some(member(json!({"eu": "read"})))),
        422,
        "server_not_in_org",
        "eu",
    );
    assert_error(
        &s.call(
            "PUT",
            &format!("/v1/orgs/acme/users/{OWNER}"),
            Some(json!({"role": "owner", "servers": {"prod": "read"}})),
        ),
        422,
        "servers_for_admin",
        "server",
    );
    assert_error(
        &s.call("PUT", &dev, Some(member(json!({"prod": "write"})))),
        400,
        "invalid_json",
        "write",
    );
    let users = s.ok("GET", "/v1/orgs/acme/users", None);
    let listed = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == DEV)
        .unwrap()
        .clone();
    assert_eq!(
        listed["servers"],
        json!({"prod": "read_write", "staging": "read"})
    );
    // A user update without "servers" keeps them.
    let u = s.ok(
        "PUT",
        &dev,
        Some(json!({"role": "member", "access": {"acme.example": "read_write"}})),
    );
    assert_eq!(u["servers"]["prod"], "read_write");

    // Keys: bound to a server the creator can write, at a level.
    let key = |body: Value| s.call("POST", "/v1/orgs/acme/keys", Some(body));
    let r = key(json!({"user": DEV, "server": "prod"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_eq!(created["server"], "prod");
    assert_eq!(created["server_access"], "read_write");
    let secret = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let shown = s.ok("GET", &format!("/v1/keys/{id}"), None);
    assert_eq!(
        (&shown["server"], &shown["server_access"]),
        (&json!("prod"), &json!("read_write"))
    );
    let r = key(json!({"user": DEV, "server": "prod", "server_access": "read"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let reader = r.json()["key"].as_str().unwrap().to_string();
    assert_error(
        &key(json!({"user": DEV, "server": "staging", "server_access": "read"})),
        422,
        "server_not_writable",
        "staging",
    );
    assert_error(
        &key(json!({"user": DEV, "server": "eu"})),
        422,
        "server_not_in_org",
        "eu",
    );
    assert_error(
        &key(json!({"user": DEV, "server_access": "read"})),
        422,
        "server_access_without_server",
        "server",
    );
    let unbound = key(json!({"user": DEV})).json();
    assert!(unbound.get("server").is_none(), "{unbound}");
    let listed = s.ok("GET", "/v1/orgs/acme/keys", None);
    let mut bound: Vec<String> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| format!("{}/{}", k["server"], k["server_access"]))
        .collect();
    bound.sort();
    assert_eq!(
        bound,
        [r#""prod"/"read""#, r#""prod"/"read_write""#, "null/null"]
    );

    // The proxy decides by each change on the very next request.
    assert_eq!(s.proxy("GET", "/server", &secret), 200);
    assert_eq!(s.proxy("PUT", "/server", &secret), 200);
    assert_eq!(
        s.proxy("PUT", "/server", &reader),
        403,
        "a read-only binding"
    );
    s.ok("PUT", &dev, Some(member(json!({"prod": "read"}))));
    assert_eq!(
        s.proxy("PUT", "/server", &secret),
        403,
        "creator made Viewer"
    );
    assert_eq!(s.proxy("GET", "/server", &secret), 200);
    s.ok("PUT", &dev, Some(member(json!({"staging": "read"}))));
    assert_eq!(
        s.proxy("GET", "/server", &secret),
        403,
        "creator unassigned"
    );
    s.ok(
        "PUT",
        &dev,
        Some(member(json!({"prod": "read_write", "staging": "read"}))),
    );
    assert_eq!(s.proxy("PUT", "/server", &secret), 200, "assigned again");

    // Deleting the server: the keys stay, and the answer counts them.
    let deleted = s.ok("DELETE", "/v1/orgs/acme/servers/prod", None);
    assert_eq!(deleted["bound_keys"], 2);
    assert_eq!(s.proxy("GET", "/server", &secret), 403, "server deleted");
    // Added again: the member's access went with the old one.
    s.ok("PUT", "/v1/orgs/acme/servers/prod", Some(json!({"id": 11})));
    let listed = s.ok("GET", "/v1/orgs/acme/users", None);
    let dev_now = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == DEV);
    assert_eq!(dev_now.unwrap()["servers"], json!({"staging": "read"}));
    assert_eq!(s.proxy("GET", "/server", &secret), 403, "not the member's");
    s.ok(
        "PUT",
        &dev,
        Some(member(json!({"prod": "read_write", "staging": "read"}))),
    );

    // Through the proxy, on the next request: a server token is never an
    // account token, whatever its domain scope; its domains work as declared.
    let account = key(json!({"user": OWNER, "org_wide": true})).json();
    let account = account["key"].as_str().unwrap().to_string();
    let r = key(json!({"user": OWNER, "org_wide": true, "server": "prod"}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["org_wide"], true);
    let server_token = r.json()["key"].as_str().unwrap().to_string();
    let status = s.proxy("POST", "/servers", &account);
    assert!(
        (200..300).contains(&status),
        "{status}: the account key reaches the upstream"
    );
    assert_eq!(s.proxy("POST", "/servers", &server_token), 403);
    assert_eq!(s.proxy("GET", "/domains/acme.example", &server_token), 200);

    // A restart loads all of it back.
    s.restart();
    assert_eq!(s.proxy("PUT", "/server", &secret), 200);
    assert_eq!(s.proxy("PUT", "/server", &reader), 403);
    assert_eq!(s.proxy("POST", "/servers", &server_token), 403);
    let status = s.proxy("POST", "/servers", &account);
    assert!(
        (200..300).contains(&status),
        "{status}: the account key reaches the upstream"
    );
    assert_eq!(
        s.ok("GET", &format!("/v1/keys/{id}"), None)["server"],
        "prod"
    );
    let users = s.ok("GET", "/v1/orgs/acme/users", None);
    let dev_now = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == DEV);
    assert_eq!(
        dev_now.unwrap()["servers"],
        json!({"prod": "read_write", "staging": "read"})
    );

    // The audit log says what each change set; never a secret.
    let log = s.log();
    for needle in [
        "change=put_server subject=acme/prod version=",
        " id=11",
        &format!("change=put_user subject=acme/{DEV} version="),
        "servers=prod:read_write,staging:read",
        &format!("change=create_key subject=acme/{id} version="),
        "server=prod server_access=read_write",
        "server=prod server_access=read",
        "change=delete_server subject=acme/prod version=",
        "bound_keys=2",
    ] {
        assert!(
            log.contains(needle),
            "{needle:?} not in the audit log:\n{log}"
        );
    }
    assert!(!log.contains(&secret) && !log.contains(&reader));
}

#[test]
fn the_cli_manages_servers_user_server_access_and_server_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(dir.path());
    seed(&s);
    let run = |args: &[&str]| {
        let out = s.cli(args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), text, err)
    };
    let (code, out, err) = run(&["server", "put", "acme", "prod", "--id", "11"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("created server prod (11) in acme"), "{out}");
    let (code, out, _) = run(&["server", "put", "acme", "staging", "--id", "12"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("created server staging"), "{out}");
    let (_, out, _) = run(&["server", "list", "acme"]);
    assert!(
        out.contains("SERVER") && out.contains("prod") && out.contains("11"),
        "{out}"
    );
    let (_, out, _) = run(&["org", "show", "acme"]);
    assert!(out.contains("staging") && out.contains("12"), "{out}");
    let (code, out, err) = run(&[
        "user",
        "put",
        "acme",
        DEV,
        "--role",
        "member",
        "--access",
        "acme.example=read_write",
        "--server",
        "prod=read_write",
        "--server",
        "staging=read",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("servers prod=read_write, staging=read"),
        "{out}"
    );
    let (_, out, _) = run(&["user", "list", "acme"]);
    assert!(
        out.contains("servers prod=read_write, staging=read"),
        "{out}"
    );
    let (code, out, err) = run(&[
        "key",
        "create",
        "acme",
        "--user",
        DEV,
        "--server",
        "prod",
        "--server-access",
        "read",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("server:  prod (read)"), "{out}");
    let secret = out.lines().last().unwrap().trim().to_string();
    assert!(secret.starts_with("sg_"), "{out}");
    assert_eq!(s.proxy("GET", "/server", &secret), 200);
    assert_eq!(s.proxy("PUT", "/server", &secret), 403);
    let (_, out, _) = run(&["key", "list", "acme"]);
    assert!(out.contains("server prod=read"), "{out}");
    let (_, json_out, _) = run(&["--json", "key", "list", "acme"]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["keys"][0]["server"], "prod");
    // Refusals exit 1 with the server's code and message.
    let (code, _, err) = run(&[
        "key", "create", "acme", "--user", DEV, "--server", "staging",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("server_not_writable") && err.contains("staging"),
        "{err}"
    );
    let (code, _, err) = run(&["server", "put", "acme", "eu", "--id", "11"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("server_id_taken"), "{err}");
    // --server-access needs --server: a usage error, nothing sent.
    let (code, _, _) = run(&[
        "key",
        "create",
        "acme",
        "--user",
        DEV,
        "--server-access",
        "read",
    ]);
    assert_eq!(code, Some(2));
    // --no-servers clears a member's server access.
    let (code, out, err) = run(&[
        "user",
        "put",
        "acme",
        DEV,
        "--role",
        "member",
        "--access",
        "acme.example=read_write",
        "--no-servers",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("servers"), "{out}");
    let (_, json_out, _) = run(&["--json", "user", "list", "acme"]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    let dev = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == DEV);
    assert_eq!(dev.unwrap()["servers"], json!({}));
    assert_eq!(s.proxy("GET", "/server", &secret), 403);
    let (code, out, _) = run(&["server", "delete", "acme", "prod"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("1 live key bound to it"), "{out}");
    let (code, _, err) = run(&["server", "delete", "acme", "prod"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("server_not_found"), "{err}");
}
