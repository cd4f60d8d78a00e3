//! `scopegate demo`: a newcomer's first run.
//!
//! Starts two mock upstreams as child processes of this binary
//! (`scopegate mock-upstream`), a gateway in-process on free loopback ports
//! with a temporary store and a random pepper and admin token, creates the
//! guide's sample organisation through the admin API, and then sends a
//! scenario through the proxy: one line per request with the gateway's
//! answer, and under it the line the upstream printed when (and only when)
//! the request reached it. It ends with a summary that compares what was
//! admitted with what the upstreams saw, and exits 0 when every answer was
//! the expected one.
//!
//! Nothing here depends on the test crate: the HTTP client is a small raw
//! std one. No secret is printed, except the demo keys shown on purpose
//! with `--keep-running`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use scopegate_config::{AdminToken, Config, ResponseFormat, Secrets};
use scopegate_keystore::{KeyStore, Pepper};
use serde_json::Value;

use crate::server::{self, Launch, Stop};

/// Arguments of `scopegate demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// After the walkthrough, leave the gateway and the mock upstreams
    /// running and print the ports, the admin token and demo keys for curl
    /// experiments, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

/// Writes one line to stdout; a closed pipe is not an error worth a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// How long to wait for anything that should be quick (processes starting,
/// an upstream line for a forwarded request, one HTTP answer).
const PATIENCE: Duration = Duration::from_secs(10);

/// What the demo's helper threads report to the main thread.
enum Event {
    /// A line a mock upstream printed.
    Line(&'static str, String),
    /// A mock upstream's stdout closed: it exited.
    Closed(&'static str),
    /// SIGINT or SIGTERM while `--keep-running` waits.
    Interrupt,
}

/// What must not outlive the demo: the mock processes and the temp dir.
/// Shared with the signal thread, which cleans up on Ctrl-C.
#[derive(Default)]
struct Leftovers {
    children: Vec<Child>,
    dir: Option<PathBuf>,
}

impl Leftovers {
    fn clean(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cleans the leftovers on every way out of [`run`]: return, error, panic.
struct Cleanup(Arc<Mutex<Leftovers>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        lock(&self.0).clean();
    }
}

/// Terminal styling, only when stdout is a terminal.
#[derive(Clone, Copy)]
struct Style {
    on: bool,
}

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }
    fn dim(self, s: &str) -> String {
        self.paint("2", s)
    }
    fn status(self, status: u16, s: &str) -> String {
        let code = match status {
            200..=299 => "32",
            400..=499 => "33",
            _ => "31",
        };
        self.paint(code, s)
    }
}

/// Runs the demo; the exit code is 0 when every answer was the expected
/// one, 1 otherwise.
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let style = Style {
        on: std::io::stdout().is_terminal(),
    };
    let bin = std::env::current_exe().context("finding this binary")?;
    let leftovers = Arc::new(Mutex::new(Leftovers::default()));
    let _cleanup = Cleanup(Arc::clone(&leftovers));
    let (tx, rx) = mpsc::channel();
    let waiting = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&leftovers), tx.clone(), Arc::clone(&waiting));

    say!(
        "{}",
        style.bold("scopegate demo: the gateway in front of two real upstream processes")
    );
    say!(
        "{}",
        style.bold("1. Mock upstreams (child processes: scopegate mock-upstream)")
    );
    let sending = start_mock(&bin, "sending", &tx, &rx, &leftovers)?;
    say!("   sending API mock listening on {sending}");
    let domains = start_mock(&bin, "domains", &tx, &rx, &leftovers)?;
    say!("   domain API mock listening on {domains}");

    say!("{}", style.bold("2. Gateway (in this process)"));
    let dir = temp_dir()?;
    lock(&leftovers).dir = Some(dir.clone());
    let token = format!("demo-{}", &random_hex()[..32]);
    let pepper = random_hex().into_bytes();
    let upstreams = (sending, domains);
    let (mut gateway, _keystore) =
        start_gateway(&dir, upstreams, &token, &pepper, ResponseFormat::Json)?;
    say!(
        "   proxy {}, admin API {}; store {} (temporary)",
        gateway.proxy,
        gateway.admin,
        dir.join("scopegate.db").display()
    );
    say!("   pepper and admin token: random, generated for this run only");

    let mut demo = Demo {
        style,
        proxy: gateway.proxy,
        admin: gateway.admin,
        token,
        rx,
        admitted: 0,
        refused: 0,
        seen: BTreeMap::new(),
        surprises: Vec::new(),
        postmark_proxy: None,
    };
    let keys = demo.setup()?;
    // A second instance on the same store, answering in Postmark's format
    // (`response_format = "postmark"`), for Postmark's own client libraries.
    let (mut postmark, _) = start_gateway(
        &dir,
        upstreams,
        &demo.token,
        &pepper,
        ResponseFormat::Postmark,
    )?;
    demo.postmark_proxy = Some(postmark.proxy);
    demo.scenario(&keys)?;
    demo.summary();

    if args.keep_running {
        demo.keep_running(&keys, &waiting)?;
    }
    let all_as_expected = demo.surprises.is_empty();
    drop(demo);
    postmark.shutdown(Stop::Fast)?;
    gateway.shutdown(Stop::Fast)?;
    lock(&leftovers).clean();
    say!("Stopped: gateway, both mock upstreams; temporary store removed.");
    Ok(if all_as_expected { 0 } else { 1 })
}

/// On SIGINT/SIGTERM: while `--keep-running` waits, tell the main thread;
/// otherwise clean up and exit at once (the main thread may be mid-request).
fn watch_signals(leftovers: Arc<Mutex<Leftovers>>, tx: Sender<Event>, waiting: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if waiting.load(Ordering::SeqCst) {
                    let _ = tx.send(Event::Interrupt);
                } else {
                    lock(&leftovers).clean();
                    eprintln!("scopegate demo: interrupted");
                    std::process::exit(130);
                }
            }
        });
    });
}

/// A loopback port nobody listens on right now (the mock and Pingora bind
/// their listeners themselves, so they get a concrete port).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(server::free_loopback_port()?)
}

/// 64 hex characters from the OS random generator (through the key
/// generator, hashed so no `sg_` secret is ever used as such).
fn random_hex() -> String {
    blake3::hash(scopegate_keystore::secret::generate().as_bytes())
        .to_hex()
        .to_string()
}

fn temp_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "scopegate-demo-{}-{}",
        std::process::id(),
        &random_hex()[..8]
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Starts `scopegate mock-upstream` and waits for its `listening on` line;
/// its later lines arrive as [`Event::Line`]. Retries on another port if
/// the chosen one was taken in the meantime.
fn start_mock(
    bin: &Path,
    name: &'static str,
    tx: &Sender<Event>,
    rx: &Receiver<Event>,
    leftovers: &Mutex<Leftovers>,
) -> anyhow::Result<SocketAddr> {
    let ready = format!("[mock {name}] listening on ");
    for _attempt in 0..3 {
        let port = free_port()?.to_string();
        let mut child = Command::new(bin)
            .args(["mock-upstream", "--listen", &port, "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} mock-upstream", bin.display()))?;
        let out = child.stdout.take().expect("stdout is piped");
        lock(leftovers).children.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(Event::Line(name, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::Closed(name));
        });
        let deadline = Instant::now() + PATIENCE;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::Line(n, l)) if n == name => {
                    if let Some(addr) = l.strip_prefix(&ready) {
                        return addr
                            .trim()
                            .parse()
                            .with_context(|| format!("mock {name} printed {l:?}"));
                    }
                }
                Ok(Event::Closed(n)) if n == name => break, // try another port
                Ok(_) => {}
                Err(_) => bail!("mock upstream {name} did not start within {PATIENCE:?}"),
            }
        }
    }
    bail!("mock upstream {name} exited before listening (3 attempts)")
}

/// Starts a gateway in-process on the store in `dir`, answering its own
/// refusals in `format`, and waits until `/healthz` answers.
fn start_gateway(
    dir: &Path,
    (sending, domains): (SocketAddr, SocketAddr),
    token: &str,
    pepper: &[u8],
    format: ResponseFormat,
) -> anyhow::Result<(server::Running, Arc<KeyStore>)> {
    let mut config = Config {
        response_format: format,
        listen: free_port()?,
        admin_listen: free_port()?,
        store: dir.join("scopegate.db"),
        threads: 2,
        grace_period: Duration::from_millis(500),
        ..Config::default()
    };
    config.log.access_log = scopegate_config::AccessLog::Off;
    for (name, addr) in [("sending", sending), ("domains", domains)] {
        config
            .upstreams
            .get_mut(name)
            .ok_or_else(|| anyhow!("the default config has no upstream group {name}"))?
            .backends = vec![addr.to_string()];
    }
    config.validate()?;
    let keystore = Arc::new(
        KeyStore::open_sqlite(&config.store, Pepper::new(pepper))
            .map_err(|e| anyhow!("opening the demo store: {e}"))?,
    );
    let launch = Launch {
        config: config.clone(),
        config_path: None,
        overrides: Default::default(),
        secrets: Secrets {
            pepper: pepper.to_vec(),
            admin_tokens: vec![AdminToken {
                name: "demo".into(),
                token: token.into(),
            }],
        },
        keystore: Arc::clone(&keystore),
        passthrough: None,
    };
    let gw = server::Running::start(launch)?;
    // Ready when the admin API answers, as a newcomer would check it.
    let deadline = Instant::now() + PATIENCE;
    while !http(gw.admin, "GET", "/healthz", &[], None).is_ok_and(|r| r.status == 200) {
        if Instant::now() > deadline {
            bail!("the gateway did not answer /healthz within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((gw, keystore))
}

/// A response as received.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// `error.code` of a JSON error body, or "".
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection, the target sent byte for byte
/// (no normalisation, so `%2F` and `..` reach the gateway as written).
fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
    body: Option<&str>,
) -> anyhow::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, PATIENCE)?;
    s.set_read_timeout(Some(PATIENCE))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes())?;

    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let Some((k, v)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 {
    } else if let Some(len) = get("content-length") {
        body.resize(len.parse()?, 0);
        r.read_exact(&mut body)?;
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16)?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// One request of the scenario.
struct Req<'a> {
    who: &'a str,
    key: Option<&'a str>,
    method: &'a str,
    target: &'a str,
    expect: u16,
    why: &'a str,
    headers: Vec<(&'a str, String)>,
    body: Option<String>,
}

fn req<'a>(
    who: &'a str,
    key: Option<&'a str>,
    method: &'a str,
    target: &'a str,
    expect: u16,
    why: &'a str,
) -> Req<'a> {
    Req {
        who,
        key,
        method,
        target,
        expect,
        why,
        headers: Vec::new(),
        body: None,
    }
}

impl Req<'_> {
    fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.push((k, v.to_string()));
        self
    }
    fn body(mut self, b: Value) -> Self {
        self.body = Some(b.to_string());
        self
    }
}

/// The secrets the demo created (kept in memory, never printed unless
/// `--keep-running` shows them on purpose) and the public ids.
struct Keys {
    owner: String,
    dev: String,
    dev_read: String,
    client_a: String,
    client_a_id: String,
}

/// The running walkthrough: where to send, and what was seen.
struct Demo {
    style: Style,
    proxy: SocketAddr,
    admin: SocketAddr,
    token: String,
    rx: Receiver<Event>,
    admitted: usize,
    refused: usize,
    /// Upstream lines relayed, per upstream.
    seen: BTreeMap<&'static str, usize>,
    /// Answers that were not the expected ones.
    surprises: Vec<String>,
    /// The second instance, answering in Postmark's format.
    postmark_proxy: Option<SocketAddr>,
}

const INDENT: &str = "      ";

impl Demo {
    /// One admin call, printed compactly with its status (and the error
    /// code or the created key's id and scope; never the secret).
    fn admin(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let auth = [("Authorization", format!("Bearer {}", self.token))];
        let r = http(self.admin, method, path, &auth, body)
            .with_context(|| format!("admin call {method} {path}"))?;
        let v = r.json();
        let note = if !r.code().is_empty() {
            r.code()
        } else if let (Some(id), Some(_)) = (v["id"].as_str(), v.get("key")) {
            format!("{id} {}", describe_scope(&v))
        } else {
            String::new()
        };
        let shown = body.map(|b| format!(" {b}")).unwrap_or_default();
        let status = self
            .style
            .status(r.status, &format!("-> {} {note}", r.status));
        say!("   {method} {path}{shown}  {}", status.trim_end());
        self.check(r.status, expect, &format!("{method} {path}"));
        Ok(v)
    }

    fn check(&mut self, got: u16, expect: u16, what: &str) {
        if got != expect {
            say!("{INDENT}!! expected {expect}");
            self.surprises
                .push(format!("{what}: {got} instead of {expect}"));
        }
    }

    /// The guide's sample organisation, through the admin API.
    fn setup(&mut self) -> anyhow::Result<Keys> {
        say!(
            "{}",
            self.style
                .bold("3. The guide's sample organisation, created through the admin API")
        );
        self.admin(
            "PUT",
            "/v1/orgs/acme",
            Some(r#"{"domains":["example.com","staging.example.com","client-a.com"]}"#),
            201,
        )?;
        self.admin(
            "PUT",
            "/v1/orgs/acme/users/owner@acme.test",
            Some(r#"{"role":"owner"}"#),
            201,
        )?;
        self.admin(
            "PUT",
            "/v1/orgs/acme/users/dev@example.com",
            Some(DEV_USER),
            201,
        )?;
        self.admin(
            "PUT",
            "/v1/orgs/acme/users/client-a@example.com",
            Some(r#"{"role":"member","access":{"client-a.com":"read_write"}}"#),
            201,
        )?;
        let mut key = |body: &str| -> anyhow::Result<(String, String)> {
            let v = self.admin("POST", "/v1/orgs/acme/keys", Some(body), 201)?;
            match (v["key"].as_str(), v["id"].as_str()) {
                (Some(k), Some(id)) => Ok((k.to_string(), id.to_string())),
                _ => bail!("key creation answered without a key"),
            }
        };
        let owner = key(r#"{"user":"owner@acme.test","org_wide":true}"#)?.0;
        let dev = key(r#"{"user":"dev@example.com"}"#)?.0;
        let dev_read =
            key(r#"{"user":"dev@example.com","domains":["staging.example.com"],"access":"read"}"#)?
                .0;
        let (client_a, client_a_id) = key(r#"{"user":"client-a@example.com"}"#)?;
        self.admin(
            "POST",
            "/v1/orgs/acme/keys",
            Some(r#"{"user":"dev@example.com","domains":["example.com"]}"#),
            422,
        )?;
        say!("{INDENT}refused: dev only reads example.com, so no key of dev's may write it");
        Ok(Keys {
            owner,
            dev,
            dev_read,
            client_a,
            client_a_id,
        })
    }

    /// Sends one request through the proxy, prints the answer, and relays
    /// the upstream lines it caused.
    fn send(&mut self, r: Req<'_>) -> anyhow::Result<(Resp, Vec<String>)> {
        let mut headers = r.headers.clone();
        if let Some(k) = r.key {
            headers.insert(0, ("Authorization", format!("Bearer {k}")));
        }
        let resp = http(self.proxy, r.method, r.target, &headers, r.body.as_deref())
            .with_context(|| format!("{} {}", r.method, r.target))?;
        // The mock answers with its name in the body; the gateway's own
        // answers are `{"error": …}`.
        let admitted = resp.json().get("upstream").is_some();
        let outcome = if admitted {
            self.admitted += 1;
            "forwarded".to_string()
        } else {
            self.refused += 1;
            resp.code()
        };
        say!(
            "   {:<9}{} {}  {}  {}",
            r.who,
            r.method,
            r.target,
            self.style
                .status(resp.status, &format!("-> {} {outcome}", resp.status)),
            self.style.dim(&format!("({})", r.why))
        );
        self.check(
            resp.status,
            r.expect,
            &format!("{} {} {}", r.who, r.method, r.target),
        );
        let wait = if admitted { PATIENCE } else { Duration::ZERO };
        let lines = self.relay(wait)?;
        Ok((resp, lines))
    }

    /// Prints upstream lines: waits up to `wait` for the first, then takes
    /// whatever else already arrived.
    fn relay(&mut self, wait: Duration) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        let mut next = self.rx.recv_timeout(wait);
        loop {
            match next {
                Ok(Event::Line(name, line)) => {
                    let prefix = format!("[mock {name}] ");
                    let rest = line.strip_prefix(&prefix).unwrap_or(&line);
                    let rest = rest.replacen(" 0 bytes ", " ", 1);
                    say!(
                        "{INDENT}{}",
                        self.style.dim(&format!("upstream {name} saw: {rest}"))
                    );
                    *self.seen.entry(name).or_default() += 1;
                    lines.push(rest);
                }
                Ok(Event::Closed(name)) => bail!("the {name} mock upstream exited"),
                Ok(Event::Interrupt) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("lost the mock upstreams' output"),
            }
            match self.rx.try_recv() {
                Ok(e) => next = Ok(e),
                Err(_) => return Ok(lines),
            }
        }
    }

    /// The scenario: admitted and refused requests, then offboarding.
    fn scenario(&mut self, k: &Keys) -> anyhow::Result<()> {
        use serde_json::json;
        say!(
            "{}",
            self.style
                .bold("4. Requests through the proxy (who, request, answer, why)")
        );
        let (owner, dev, dev_ro, ca) = (
            Some(k.owner.as_str()),
            Some(k.dev.as_str()),
            Some(k.dev_read.as_str()),
            Some(k.client_a.as_str()),
        );
        let stage = "/domains/staging.example.com";
        self.send(req(
            "owner",
            owner,
            "GET",
            "/domains",
            200,
            "org-wide key: scope *",
        ))?;
        self.send(req("dev", dev, "GET", stage, 200, "dev writes staging"))?;
        let (hidden, _) = self.send(req(
            "dev",
            dev,
            "GET",
            "/domains/example.com",
            404,
            "dev's key covers staging only",
        ))?;
        let (nowhere, _) = self.send(req(
            "dev",
            dev,
            "GET",
            "/domains/nonexistent.example",
            404,
            "exists nowhere",
        ))?;
        let strip = |r: &Resp| {
            let h: Vec<_> = r
                .headers
                .iter()
                .filter(|(k, _)| k != "date")
                .cloned()
                .collect();
            (h, r.body.clone())
        };
        if strip(&hidden) == strip(&nowhere) {
            say!("{INDENT}identical: the gateway does not reveal that example.com exists");
        } else {
            say!("{INDENT}!! the two 404s differ");
            self.surprises.push("the two 404s differ".into());
        }
        let email = |from: &str| {
            json!({"From": from, "To": "someone@elsewhere.test",
                   "Subject": "Hello", "TextBody": "Hi!"})
        };
        self.send(
            req(
                "dev",
                dev,
                "POST",
                "/email",
                201,
                "From Dev <dev@staging.example.com>",
            )
            .body(email("Dev <dev@staging.example.com>")),
        )?;
        let (json_422, _) = self.send(
            req(
                "dev",
                dev,
                "POST",
                "/email",
                422,
                "From ceo@example.com: never sent upstream",
            )
            .body(email("ceo@example.com")),
        )?;
        self.postmark_format(&json_422, dev, &email("ceo@example.com"))?;
        self.send(req(
            "dev(ro)",
            dev_ro,
            "POST",
            "/domains/staging.example.com/verify",
            403,
            "read-only key",
        ))?;
        self.send(req(
            "dev",
            dev,
            "GET",
            "/account",
            403,
            "needs an org-wide key",
        ))?;
        self.send(req(
            "client-a",
            ca,
            "GET",
            "/domains/client-a.com",
            200,
            "agency client, own domain",
        ))?;
        self.send(req(
            "client-a",
            ca,
            "GET",
            stage,
            404,
            "not client-a's domain",
        ))?;
        self.send(req("nobody", None, "GET", stage, 401, "no key"))?;
        self.send(
            req("garbage", None, "GET", stage, 401, "a made-up key")
                .header("Authorization", "Bearer not-a-key-123"),
        )?;
        self.send(req(
            "dev",
            dev,
            "GET",
            "/domains/staging.example.com/..%2F..%2Faccount",
            400,
            "path attack",
        ))?;
        let (_, lines) = self.send(
            req(
                "dev",
                dev,
                "GET",
                stage,
                200,
                "forged X-Scopegate-Org: other, Scope: *",
            )
            .header("X-Scopegate-Org", "other")
            .header("X-Scopegate-Scope", "*"),
        )?;
        let honest = lines.iter().any(|l| {
            l.contains("org=acme ")
                && l.contains("user=dev@example.com ")
                && l.ends_with("scope=staging.example.com=read_write")
        });
        if honest {
            say!("{INDENT}the forged headers were stripped: the upstream saw the gateway's identity only");
        } else {
            say!("{INDENT}!! the upstream did not see the gateway's identity");
            self.surprises
                .push("identity headers not as expected".into());
        }

        say!(
            "{}",
            self.style
                .bold("5. Offboarding: dev@example.com leaves, client-a's key is revoked")
        );
        self.admin(
            "POST",
            "/v1/orgs/acme/users/dev@example.com/deactivate",
            None,
            200,
        )?;
        self.send(req(
            "dev",
            dev,
            "GET",
            stage,
            401,
            "worked a moment ago: stops at once",
        ))?;
        self.send(req(
            "dev(ro)",
            dev_ro,
            "GET",
            stage,
            401,
            "every key dev created stops",
        ))?;
        self.admin("DELETE", &format!("/v1/keys/{}", k.client_a_id), None, 200)?;
        self.send(req(
            "client-a",
            ca,
            "GET",
            "/domains/client-a.com",
            401,
            "revoked: refused on the next request",
        ))?;
        Ok(())
    }

    /// The same refusal from the instance with `response_format =
    /// "postmark"`: Postmark's envelope, which its client libraries type.
    fn postmark_format(
        &mut self,
        json: &Resp,
        key: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<()> {
        let Some(proxy) = self.postmark_proxy else {
            return Ok(());
        };
        let token = [(
            "X-Postmark-Server-Token",
            key.unwrap_or_default().to_string(),
        )];
        let pm = http(proxy, "POST", "/email", &token, Some(&body.to_string()))?;
        self.refused += 1;
        say!(
            "{INDENT}the body as JSON:     {}",
            String::from_utf8_lossy(&json.body)
        );
        say!(
            "{INDENT}with response_format = \"postmark\" (a second instance, {proxy}): {} {}",
            pm.status,
            String::from_utf8_lossy(&pm.body)
        );
        let code = pm.json()["ErrorCode"].as_u64();
        self.check(pm.status, 422, "the postmark-format send");
        if code != Some(400) {
            self.surprises
                .push(format!("postmark ErrorCode {code:?} instead of 400"));
        }
        self.relay(Duration::ZERO)?;
        Ok(())
    }

    /// Admitted vs seen, and what to try next.
    fn summary(&mut self) {
        // A line that arrives late is still counted (and shown).
        let _ = self.relay(Duration::from_millis(200));
        let seen: usize = self.seen.values().sum();
        let per: Vec<String> = self.seen.iter().map(|(n, c)| format!("{n} {c}")).collect();
        say!("{}", self.style.bold("Summary"));
        say!(
            "   {} requests through the proxy: {} admitted and forwarded, {} refused by the gateway itself",
            self.admitted + self.refused,
            self.admitted,
            self.refused
        );
        if seen == self.admitted {
            say!(
                "   the upstreams saw exactly the admitted requests: {seen} of {} ({}); refused ones never left the gateway",
                self.admitted,
                per.join(", ")
            );
        } else {
            say!(
                "   !! the upstreams saw {seen} requests ({}), but {} were admitted",
                per.join(", "),
                self.admitted
            );
            self.surprises
                .push(format!("upstreams saw {seen}, admitted {}", self.admitted));
        }
        if self.surprises.is_empty() {
            say!("   every answer was the one the access model prescribes");
        } else {
            say!("   !! unexpected: {}", self.surprises.join("; "));
        }
        say!("{}", self.style.bold("Next"));
        say!("   scopegate demo --keep-running   # this setup stays up; prints demo keys for curl");
        say!("   scopegate mock-upstream --listen 127.0.0.1:9001 --name sending &   # and 9002 for domains");
        say!("   export SCOPEGATE_PEPPER=$(openssl rand -hex 32) SCOPEGATE_ADMIN_TOKEN=$(openssl rand -hex 16)");
        say!("   scopegate serve --store ./scopegate.db --upstream sending=127.0.0.1:9001 --upstream domains=127.0.0.1:9002 &");
        say!("   A=\"Authorization: Bearer $SCOPEGATE_ADMIN_TOKEN\"");
        say!("   curl -X PUT -H \"$A\" 127.0.0.1:8081/v1/orgs/acme -d '{{\"domains\":[\"example.com\"]}}'");
        say!("   curl -X PUT -H \"$A\" 127.0.0.1:8081/v1/orgs/acme/users/owner@acme.test -d '{{\"role\":\"owner\"}}'");
        say!("   curl -X POST -H \"$A\" 127.0.0.1:8081/v1/orgs/acme/keys -d '{{\"user\":\"owner@acme.test\",\"org_wide\":true}}'   # KEY=its \"key\"");
        say!("   curl -H \"Authorization: Bearer $KEY\" 127.0.0.1:8080/domains/example.com");
    }

    /// `--keep-running`: dev is reactivated with a fresh key (the old ones
    /// stay revoked), the demo keys are shown, and upstream lines are relayed
    /// until Ctrl-C.
    fn keep_running(&mut self, k: &Keys, waiting: &AtomicBool) -> anyhow::Result<()> {
        say!(
            "{}",
            self.style
                .bold("Keeping everything running (Ctrl-C to stop)")
        );
        self.admin(
            "PUT",
            "/v1/orgs/acme/users/dev@example.com",
            Some(&DEV_USER.replace("}}", r#"},"status":"active"}"#)),
            200,
        )?;
        let v = self.admin(
            "POST",
            "/v1/orgs/acme/keys",
            Some(r#"{"user":"dev@example.com","name":"dev-again"}"#),
            201,
        )?;
        let dev = v["key"].as_str().unwrap_or_default().to_string();
        say!("   dev@example.com is active again with a new key; its old keys stay revoked");
        say!("   DEMO KEYS, valid only for this run and its temporary store:");
        say!(
            "   export PROXY=http://{} ADMIN=http://{} ADMIN_TOKEN={}",
            self.proxy,
            self.admin,
            self.token
        );
        if let Some(pm) = self.postmark_proxy {
            say!("   export POSTMARK_PROXY={pm}   # the same keys, answers in Postmark's format");
            say!("   # Node: new (require(\"postmark\").AccountClient)(process.env.OWNER_KEY, {{useHttps: false, requestHost: process.env.POSTMARK_PROXY}}).getDomains()");
        }
        say!(
            "   export OWNER_KEY={}   # owner@acme.test, org-wide",
            k.owner
        );
        say!("   export DEV_KEY={dev}   # dev@example.com, staging.example.com");
        say!("   curl -H \"Authorization: Bearer $OWNER_KEY\" $PROXY/domains");
        say!("   curl -H \"Authorization: Bearer $DEV_KEY\" $PROXY/domains/staging.example.com");
        say!("   curl -H \"Authorization: Bearer $DEV_KEY\" $PROXY/domains/example.com   # 404");
        say!("   curl -H \"Authorization: Bearer $ADMIN_TOKEN\" $ADMIN/v1/orgs/acme/keys");
        say!("   upstream lines follow as requests arrive:");
        waiting.store(true, Ordering::SeqCst);
        loop {
            match self.rx.recv() {
                Ok(Event::Line(_, line)) => {
                    say!("   {}", self.style.dim(&line))
                }
                Ok(Event::Closed(name)) => say!("   the {name} mock upstream exited"),
                Ok(Event::Interrupt) | Err(_) => break,
            }
        }
        Ok(())
    }
}

/// dev@example.com as the guide describes them.
const DEV_USER: &str =
    r#"{"role":"member","access":{"staging.example.com":"read_write","example.com":"read"}}"#;

/// `org-wide` or `d=level,…` from a key's metadata.
fn describe_scope(v: &Value) -> String {
    if v["org_wide"].as_bool() == Some(true) {
        return "org-wide".into();
    }
    v["domains"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(d, a)| format!("{d}={}", a.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}
