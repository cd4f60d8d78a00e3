//! The admin documentation is a script that runs: every `$ scopegate admin …`
//! line of docs/admin.md (and of README.md, if it has any) is run, in order,
//! with the real binary against a live gateway started for the test, and
//! must exit 0 — or the code given in a trailing `# exit N` comment.
//!
//! Conventions (documented in docs/admin.md):
//! - `KEY_ID` stands for the id of the most recently created key;
//! - a line ending in `\` continues on the next line;
//! - single and double quotes group words as in a shell; nothing else of a
//!   shell (variables, pipes, redirections) is allowed.
//!
//! Also here: the CLI's exit codes, `--json`, and that it never prints the
//! admin token.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use scopegate_gateway::mock::MockUpstream;
use scopegate_suite::gateway::{free_port, TestGateway, ADMIN_TOKEN};
use scopegate_suite::http::Request;
use scopegate_suite::{sample, scopegate_bin};
use serde_json::Value;

/// The placeholder for the most recently created key's id.
const KEY_ID: &str = "KEY_ID";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One example command from a document.
#[derive(Debug)]
struct Example {
    /// Where it is (file:line).
    at: String,
    /// The arguments after `scopegate`.
    args: Vec<String>,
    /// Expected exit code.
    exit: i32,
}

/// Splits a command line like a shell does for words and quotes; returns the
/// words and the trailing comment, if any.
fn split_words(line: &str) -> Result<(Vec<String>, Option<String>), String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => {
                let comment: String = chars.collect();
                return Ok((words, Some(comment.trim().to_string())));
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated '".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err("dangling \\".into()),
                        },
                        Some('$' | '`') => {
                            return Err("shell expansion is not supported in examples".into())
                        }
                        Some(c) => cur.push(c),
                        None => return Err("unterminated \"".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("dangling \\".into()),
                }
            }
            '$' | '`' | '|' | '>' | '<' | ';' | '&' | '(' | ')' => {
                return Err(format!(
                    "{c:?}: examples are single commands with literal values (no variables, pipes or redirections)"
                ))
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok((words, None))
}

/// Every `$ scopegate admin …` example of a document, in order.
fn examples(path: &Path) -> Vec<Example> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        let line = lines[i].trim_start();
        i += 1;
        let Some(cmd) = line.strip_prefix("$ ") else {
            continue;
        };
        let mut cmd = cmd.trim_end().to_string();
        while cmd.ends_with('\\') && i < lines.len() {
            cmd.pop();
            cmd.push(' ');
            cmd.push_str(lines[i].trim());
            i += 1;
        }
        if !(cmd.starts_with("scopegate admin ") || cmd == "scopegate admin") {
            continue;
        }
        let at = format!("{name}:{}", start + 1);
        let (mut words, comment) = split_words(&cmd).unwrap_or_else(|e| panic!("{at}: {e}: {cmd}"));
        let exit = match comment.as_deref() {
            None => 0,
            Some(c) => match c.strip_prefix("exit ") {
                Some(n) => n
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{at}: bad exit comment {c:?}")),
                None => 0,
            },
        };
        words.remove(0); // scopegate
        out.push(Example {
            at,
            args: words,
            exit,
        });
    }
    out
}

/// The id of a key in `key create` output: `id` of its JSON, or the first
/// `key_…` word of the summary.
fn created_key_id(stdout: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(stdout) {
        return v["id"].as_str().map(str::to_string);
    }
    stdout
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ':'))
        .find(|w| w.starts_with("key_") && w.len() > 4)
        .map(str::to_string)
}

/// A `scopegate serve` child on a config file (so `reload` works), killed on drop.
struct Serve {
    child: Child,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    _upstreams: Vec<MockUpstream>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start() -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("scopegate.toml");
        std::fs::write(&config, "threads = 2\n\n[log]\naccess_log = \"off\"\n").unwrap();
        let upstreams = vec![
            MockUpstream::spawn("sending").unwrap(),
            MockUpstream::spawn("domains").unwrap(),
        ];
        for attempt in 0.. {
            let (proxy, admin) = (free_port(), free_port());
            let mut cmd = Command::new(scopegate_bin());
            cmd.arg("serve")
                .arg("--config")
                .arg(&config)
                .args(["--listen", &proxy.to_string()])
                .args(["--admin-listen", &admin.to_string()])
                .arg("--store")
                .arg(dir.path().join("scopegate.db"));
            for u in &upstreams {
                cmd.arg("--upstream")
                    .arg(format!("{}={}", u.name(), u.addr()));
            }
            let mut child = cmd
                .env("SCOPEGATE_PEPPER", "docs-test-pepper-0123456789")
                .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start scopegate serve");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait().unwrap().is_some() {
                    assert!(attempt < 3, "scopegate serve keeps exiting");
                    break;
                }
                let ready = TcpStream::connect(admin).is_ok()
                    && Request::new("GET", "/readyz").send(admin).status == 200;
                if ready {
                    return Serve {
                        child,
                        admin,
                        _dir: dir,
                        _upstreams: upstreams,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "scopegate serve never became ready"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        unreachable!()
    }
}

/// Runs `scopegate <args>` against the admin API at `admin`.
fn cli(admin: SocketAddr, token: Option<&str>, args: &[String]) -> Output {
    let mut cmd = Command::new(scopegate_bin());
    cmd.args(args)
        .env("SCOPEGATE_ADMIN_URL", format!("http://{admin}"))
        .env_remove("SCOPEGATE_ADMIN_TOKEN")
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("SCOPEGATE_ADMIN_TOKEN", t);
    }
    cmd.output().expect("run scopegate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a document's examples in order against a fresh gateway.
fn run_examples(doc: &Path) -> Vec<Example> {
    let examples = examples(doc);
    if examples.is_empty() {
        return examples;
    }
    let gw = Serve::start();
    let mut last_key: Option<String> = None;
    for ex in &examples {
        let args: Vec<String> = ex
            .args
            .iter()
            .map(|a| {
                if a.contains(KEY_ID) {
                    let id = last_key.as_deref().unwrap_or_else(|| {
                        panic!("{}: {KEY_ID} used before any key was created", ex.at)
                    });
                    a.replace(KEY_ID, id)
                } else {
                    a.clone()
                }
            })
            .collect();
        let out = cli(gw.admin, Some(ADMIN_TOKEN), &args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let code = out.status.code().expect("exited, not killed");
        eprintln!(
            "{}: $ scopegate {}\n{stdout}{stderr}",
            ex.at,
            args.join(" ")
        );
        assert_eq!(
            code,
            ex.exit,
            "{}: `scopegate {}` exited {code}, the docs say {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            ex.at,
            args.join(" "),
            ex.exit
        );
        assert!(
            !stdout.contains(ADMIN_TOKEN) && !stderr.contains(ADMIN_TOKEN),
            "{}: the admin token was printed",
            ex.at
        );
        if code == 0 {
            assert!(!stdout.trim().is_empty(), "{}: no output", ex.at);
        } else {
            assert!(stderr.starts_with("error: "), "{}: {stderr}", ex.at);
        }
        if code == 0
            && args.get(1).map(String::as_str) == Some("key")
            && args.get(2).map(String::as_str) == Some("create")
        {
            last_key = Some(
                created_key_id(&stdout)
                    .unwrap_or_else(|| panic!("{}: no key id in the output:\n{stdout}", ex.at)),
            );
        }
    }
    examples
}

#[test]
fn every_admin_example_in_docs_admin_md_runs() {
    let examples = run_examples(&repo_root().join("docs/admin.md"));
    assert!(
        examples.len() >= 20,
        "docs/admin.md has only {} examples",
        examples.len()
    );
    // Every command is shown at least once.
    for cmd in [
        "status",
        "org put",
        "org show",
        "user put",
        "user list",
        "user deactivate",
        "user delete",
        "offboard",
        "key create",
        "key list",
        "key show",
        "key revoke",
        "reload",
    ] {
        let words: Vec<&str> = cmd.split(' ').collect();
        assert!(
            examples
                .iter()
                .any(|e| e.args.len() > words.len() && e.args[1..=words.len()] == words[..]),
            "docs/admin.md shows no `scopegate admin {cmd}` example"
        );
    }
    assert!(examples.iter().any(|e| e.exit == 1), "no refused example");
    assert!(examples
        .iter()
        .any(|e| e.args.iter().any(|a| a == "--json")));
}

#[test]
fn every_admin_example_in_the_readme_runs() {
    let examples = run_examples(&repo_root().join("README.md"));
    eprintln!("README.md: {} admin examples", examples.len());
}

#[test]
fn example_lines_are_split_like_a_shell_would() {
    let (w, c) = split_words(
        r#"scopegate admin key create acme --name "ci deploy" --user 'a@b.test'  # exit 1"#,
    )
    .unwrap();
    assert_eq!(
        w,
        [
            "scopegate",
            "admin",
            "key",
            "create",
            "acme",
            "--name",
            "ci deploy",
            "--user",
            "a@b.test"
        ]
    );
    assert_eq!(c.as_deref(), Some("exit 1"));
    assert!(split_words("scopegate admin org show $ORG").is_err());
    assert!(split_words("scopegate admin key list acme | jq").is_err());
    assert_eq!(
        created_key_id(
            "created key_0123456789abcdef for a@b.test in acme (enforced at version 3)\n"
        ),
        Some("key_0123456789abcdef".into())
    );
    assert_eq!(
        created_key_id(r#"{"id":"key_00000000000000ff","key":"sg_x"}"#),
        Some("key_00000000000000ff".into())
    );
}

// ---------------------------------------------------------------------------
// The CLI's contract: exit codes, errors, --json, the token.

fn args(s: &str) -> Vec<String> {
    split_words(s).unwrap().0
}

#[test]
fn the_cli_exit_codes_are_0_ok_1_refused_2_usage_connection_or_server() {
    let gw = TestGateway::start();
    sample::setup(&gw.keystore);
    let run = |token: Option<&str>, a: &str| cli(gw.admin, token, &args(a));
    let ok = run(Some(ADMIN_TOKEN), "admin status");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).starts_with("version "),
        "{}",
        text(&ok.stdout)
    );

    // Refused by the server: 1, with `error: <code>: <message>` on stderr.
    for (a, code) in [
        ("admin org show nope", "org_not_found"),
        ("admin key show key_0000000000000000", "key_not_found"),
        ("admin user deactivate acme owner@acme.test", "last_owner"),
        (
            "admin key create acme --user dev@example.com --org-wide",
            "org_wide_requires_admin",
        ),
        (
            "admin key create acme --user dev@example.com --expires-at tomorrow",
            "invalid_expires_at",
        ),
        ("admin org put acme --domain not_a_domain", "invalid_domain"),
        ("admin reload", "reload_rejected"),
    ] {
        let out = run(Some(ADMIN_TOKEN), a);
        assert_eq!(out.status.code(), Some(1), "{a}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).starts_with(&format!("error: {code}: ")),
            "{a}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{a}: {}", text(&out.stdout));
    }
    let out = run(Some("wrong-token-0123456789"), "admin status");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: unauthorized: "));

    // Usage errors: 2, before anything is sent.
    let before = gw.keystore.status().version;
    for a in [
        "admin",
        "admin frobnicate",
        "admin user put acme x@acme.test",
        "admin user put acme x@acme.test --role boss",
        "admin user put acme x@acme.test --role member --access example.com=write",
        "admin org put acme",
        "admin org put acme --domain example.com=abc",
        "admin key create acme",
        "admin key list",
    ] {
        let out = run(Some(ADMIN_TOKEN), a);
        assert_eq!(out.status.code(), Some(2), "{a}: {}", text(&out.stderr));
    }
    assert_eq!(gw.keystore.status().version, before);

    // No token: 2, with the variable named, nothing sent.
    let out = run(None, "admin org put acme --domain example.com");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("SCOPEGATE_ADMIN_TOKEN"),
        "{}",
        text(&out.stderr)
    );
    let out = run(Some("  "), "admin status");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(gw.keystore.status().version, before);

    // Nobody listening: 2.
    let nobody = free_port();
    let out = cli(nobody, Some(ADMIN_TOKEN), &args("admin status"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot reach the admin API"),
        "{}",
        text(&out.stderr)
    );
    // https is refused before connecting: 2.
    let mut a = args("admin status --admin-url");
    a.push(format!("https://{}", gw.admin));
    let out = cli(gw.admin, Some(ADMIN_TOKEN), &a);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("https"), "{}", text(&out.stderr));
    // --admin-url wins over the environment.
    let mut a = args("admin status --admin-url");
    a.push(format!("http://{}", gw.admin));
    let out = cli(nobody, Some(ADMIN_TOKEN), &a);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn the_cli_json_is_the_servers_json() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    let run = |a: &str| {
        let out = cli(gw.admin, Some(ADMIN_TOKEN), &args(a));
        assert_eq!(out.status.code(), Some(0), "{a}: {}", text(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{a}: not JSON ({e}): {}", text(&out.stdout)))
    };
    let direct = |p: &str| gw.admin(Request::new("GET", p)).json();
    // Staleness moves with the clock between the two calls; the rest may not.
    let without_staleness = |mut v: Value| {
        let s = v.as_object_mut().and_then(|o| o.remove("staleness_ms"));
        assert!(s.is_some_and(|s| s.is_u64()), "no staleness_ms: {v}");
        v
    };
    assert_eq!(
        without_staleness(run("admin status --json")),
        without_staleness(direct("/v1/status"))
    );
    assert_eq!(run("admin --json org show acme"), direct("/v1/orgs/acme"));
    assert_eq!(
        run("admin user list acme --json"),
        direct("/v1/orgs/acme/users")
    );
    assert_eq!(
        run("admin key list acme --json"),
        direct("/v1/orgs/acme/keys")
    );
    assert_eq!(
        run("admin key list acme --user dev@example.com --json"),
        direct("/v1/orgs/acme/keys?user=dev@example.com")
    );
    let id = &keys.ids["dev"];
    assert_eq!(
        run(&format!("admin key show {id} --json")),
        direct(&format!("/v1/keys/{id}"))
    );
    let created = run("admin key create acme --user ops@example.com --domain example.com --read-only --name 'two words' --json");
    let secret = created["key"].as_str().unwrap();
    assert_eq!(
        created["domains"],
        serde_json::json!({"example.com": "read"})
    );
    assert_eq!(created["name"], "two words");
    let r = gw.send(Request::new("GET", "/domains/example.com").bearer(secret));
    assert_eq!(r.status, 200);
    let revoked = run(&format!(
        "admin key revoke {} --json",
        created["id"].as_str().unwrap()
    ));
    assert_eq!(revoked["state"], "revoked");
    assert!(revoked["version"].as_u64().is_some());
    let r = gw.send(Request::new("GET", "/domains/example.com").bearer(secret));
    assert_eq!(r.status, 401);
    let deleted = run("admin user delete acme client-a@example.com --json");
    assert_eq!(deleted["deleted"], true);
    assert!(deleted["version"].as_u64().is_some());
    let off = run("admin offboard acme dev@example.com --json");
    assert_eq!(off["status"], "deactivated");
    let mut revoked: Vec<&str> = off["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    revoked.sort();
    let mut want = vec![keys.ids["dev"].as_str(), keys.ids["dev_read"].as_str()];
    want.sort();
    assert_eq!(revoked, want);
}

#[test]
fn offboarding_lists_what_was_revoked_and_stops_every_key() {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    let run = |a: &str| cli(gw.admin, Some(ADMIN_TOKEN), &args(a));
    // One of dev's keys was already revoked.
    let out = run(&format!("admin key revoke {}", keys.ids["dev_read"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with(&format!("revoked {}", keys.ids["dev_read"])));
    assert!(text(&out.stdout).contains("(enforced at version "));
    let out = run("admin offboard acme Dev@Example.com");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.starts_with("offboarded dev@example.com from acme (enforced at version "),
        "{s}"
    );
    assert!(s.contains("revoked now:                 1"), "{s}");
    assert!(s.contains("already revoked or expired:  1"), "{s}");
    assert!(s.contains("still active:                0"), "{s}");
    assert!(
        s.contains(&keys.ids["dev"]) && s.contains(&keys.ids["dev_read"]),
        "{s}"
    );
    for k in [&keys.dev, &keys.dev_read] {
        let r = gw.send(Request::new("GET", "/domains/staging.example.com").bearer(k));
        assert_eq!(r.status, 401);
    }
    // Again: nothing more to revoke, says so, still 0.
    let out = run("admin offboard acme dev@example.com");
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(s.contains("(was already deactivated)"), "{s}");
    assert!(s.contains("revoked now:                 0"), "{s}");
    // The last owner cannot be offboarded: refused, nothing changes.
    let before = gw.keystore.status().version;
    let out = run("admin offboard acme owner@acme.test");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: last_owner: "));
    assert_eq!(gw.keystore.status().version, before);
    let out = run("admin offboard acme nobody@acme.test");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: user_not_found: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_cli_shows_a_secret_once_and_never_the_admin_token() {
    let gw = TestGateway::start();
    sample::setup(&gw.keystore);
    let run = |a: &str| cli(gw.admin, Some(ADMIN_TOKEN), &args(a));
    let out = run("admin key create acme --user dev@example.com --name ci");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    let label = lines
        .iter()
        .position(|l| l.starts_with("API key (shown only this once"))
        .unwrap_or_else(|| panic!("no labelled secret:\n{s}"));
    let secret = lines[label + 1];
    assert_eq!(s.matches(secret).count(), 1);
    let r = gw.send(Request::new("GET", "/domains/staging.example.com").bearer(secret));
    assert_eq!(r.status, 200);
    let id = created_key_id(&s).unwrap();
    let mut everything = String::new();
    for a in [
        "admin key list acme".to_string(),
        format!("admin key show {id}"),
        "admin key list acme --json".to_string(),
        "admin status".to_string(),
        "admin user list acme".to_string(),
        format!("admin key revoke {id}"),
        "admin org show nope".to_string(),
    ] {
        let out = run(&a);
        everything.push_str(&text(&out.stdout));
        everything.push_str(&text(&out.stderr));
    }
    assert!(everything.contains(&id));
    assert!(!everything.contains(secret), "the secret was shown again");
    assert!(
        !everything.contains(ADMIN_TOKEN),
        "the admin token was printed"
    );
    assert!(!s.contains(ADMIN_TOKEN));
    // Not in the help either (it is not a flag), nor in usage errors.
    let out = run("admin --help");
    assert!(!text(&out.stdout).contains(ADMIN_TOKEN));
    assert!(!text(&out.stdout).contains("--token"));
    let out = run("admin key create");
    assert!(!text(&out.stderr).contains(ADMIN_TOKEN));
}

#[test]
fn the_cli_tables_line_up() {
    let gw = TestGateway::start();
    sample::setup(&gw.keystore);
    let out = cli(gw.admin, Some(ADMIN_TOKEN), &args("admin user list acme"));
    let s = text(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 8, "{s}");
    assert!(lines[0].starts_with("USER"));
    // Every column starts at the same offset on every line.
    for col in ["ROLE", "STATUS", "ACCESS"] {
        let at = lines[0].find(col).unwrap();
        for l in &lines[1..] {
            assert_eq!(&l[at - 2..at], "  ", "{col} misaligned:\n{s}");
            assert_ne!(&l[at..at + 1], " ", "{col} misaligned:\n{s}");
        }
    }
}
