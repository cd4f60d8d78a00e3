//! Real `scopegate serve` processes sharing one store, for fleet tests and
//! the fleet load test: each instance gets its own listeners, a config file
//! written from the test's mocks and store, and a readiness check (`/readyz`
//! answering 200) before the test goes on. Dropping an instance kills it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scopegate_gateway::mock::MockUpstream;

use crate::gateway::{free_port, ADMIN_TOKEN, PEPPER};
use crate::http::{Request, Response};

/// One `scopegate serve` process.
pub struct Instance {
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Its config file (kept so the same instance can be started again).
    pub config: PathBuf,
    /// Where its stderr (the log) goes: appended to this file, or inherited.
    pub log: Option<PathBuf>,
    child: Option<Child>,
}

/// What every instance of a test fleet shares.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// A SQLite path or a `postgres://` URL.
    pub store: String,
    /// The mock sending API.
    pub sending: SocketAddr,
    /// The mock domain API.
    pub domains: SocketAddr,
    /// `[fleet] poll_interval_ms`.
    pub poll_interval_ms: u64,
    /// `[fleet] max_staleness_ms`.
    pub max_staleness_ms: u64,
    /// Proxy worker threads of each instance.
    pub threads: usize,
}

impl FleetSpec {
    /// `[fleet] poll_interval_ms`'s default.
    pub const DEFAULT_POLL_MS: u64 = 500;
    /// `[fleet] max_staleness_ms`'s default.
    pub const DEFAULT_STALENESS_MS: u64 = 5000;

    /// A fleet of one-thread instances on `store` in front of `mocks`.
    pub fn new(
        store: impl Into<String>,
        mocks: &Mocks,
        poll_interval_ms: u64,
        max_staleness_ms: u64,
    ) -> FleetSpec {
        FleetSpec {
            store: store.into(),
            sending: mocks.sending.addr(),
            domains: mocks.domains.addr(),
            poll_interval_ms,
            max_staleness_ms,
            threads: 1,
        }
    }
}

/// The mock sending and domain APIs a test fleet forwards to (kept running
/// while the value lives).
pub struct Mocks {
    /// The mock sending API.
    pub sending: MockUpstream,
    /// The mock domain API.
    pub domains: MockUpstream,
}

impl Mocks {
    /// Starts both.
    pub fn spawn() -> Mocks {
        Mocks {
            sending: MockUpstream::spawn("sending").expect("mock"),
            domains: MockUpstream::spawn("domains").expect("mock"),
        }
    }
}

impl Instance {
    /// Writes a config into `dir` and starts an instance from it.
    pub fn start(spec: &FleetSpec, dir: &Path, name: &str) -> Instance {
        Self::start_logged(spec, dir, name, None)
    }

    /// [`Instance::start`], its log appended to `log` (inherited if `None`).
    pub fn start_logged(
        spec: &FleetSpec,
        dir: &Path,
        name: &str,
        log: Option<PathBuf>,
    ) -> Instance {
        let proxy = free_port();
        let admin = free_port();
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            "listen = \"{proxy}\"\nadmin_listen = \"{admin}\"\nstore = \"{store}\"\nthreads = {threads}\n\
             grace_period_ms = 1000\n\n\
             [fleet]\npoll_interval_ms = {poll}\nmax_staleness_ms = {stale}\n\n\
             [log]\naccess_log = \"off\"\n\n\
             [upstreams.sending]\nbackends = [\"{sending}\"]\nhealth_check_interval_ms = 200\n\n\
             [upstreams.domains]\nbackends = [\"{domains}\"]\nhealth_check_interval_ms = 200\n",
            store = spec.store,
            threads = spec.threads,
            poll = spec.poll_interval_ms,
            stale = spec.max_staleness_ms,
            sending = spec.sending,
            domains = spec.domains,
        );
        std::fs::write(&config, text).expect("write instance config");
        let mut i = Instance {
            proxy,
            admin,
            config,
            log,
            child: None,
        };
        i.spawn();
        i
    }

    /// Starts an instance from a config file the test wrote itself (its
    /// listeners `proxy` and `admin`), its log appended to `log`.
    pub fn start_config(
        config: PathBuf,
        proxy: SocketAddr,
        admin: SocketAddr,
        log: PathBuf,
    ) -> Instance {
        let mut i = Instance {
            proxy,
            admin,
            config,
            log: Some(log),
            child: None,
        };
        i.spawn();
        i
    }

    fn spawn(&mut self) {
        let child = Command::new(crate::scopegate_bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("SCOPEGATE_PEPPER", std::str::from_utf8(PEPPER).unwrap())
            .env("SCOPEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(match &self.log {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("open the instance's log"),
                ),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("start scopegate serve");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until `/readyz` answers 200 (polling, no fixed sleep).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("scopegate serve exited before it was ready: {status}");
            }
            // `/readyz` can answer 200 a moment before the proxy listener
            // is bound (Pingora binds it in its own service), so both.
            if std::net::TcpStream::connect(self.admin).is_ok()
                && Request::new("GET", "/readyz").send(self.admin).status == 200
                && std::net::TcpStream::connect(self.proxy).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "instance did not become ready");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id (for its memory in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same instance again (same ports, same config).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends a request to the proxy.
    pub fn send(&self, req: Request) -> Response {
        req.send(self.proxy)
    }

    /// Sends an admin request with the test token.
    pub fn admin(&self, req: Request) -> Response {
        req.bearer(ADMIN_TOKEN).send(self.admin)
    }

    /// `GET /v1/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        self.admin(Request::new("GET", "/v1/status")).json()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}
