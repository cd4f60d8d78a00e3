//! Starting a whole gateway in-process for a test: mock upstreams on port 0,
//! a fresh SQLite store in a temp dir, the proxy and admin listeners, and a
//! readiness check before the test goes on.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scopegate_config::{AdminToken, Config, Secrets};
use scopegate_gateway::mock::MockUpstream;
use scopegate_gateway::server::{self, Launch, Stop};
use scopegate_gateway::State;
use scopegate_keystore::{KeyStore, Pepper};

use crate::http::Request;

/// The pepper every test store uses.
pub const PEPPER: &[u8] = b"test-pepper-0123456789abcdef";
/// The admin token of every test gateway.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A port nobody listens on right now, never the same twice in one process
/// (see `server::free_loopback_port`: Pingora binds its listeners itself, so
/// the gateway cannot be handed a bound socket).
pub fn free_port() -> SocketAddr {
    server::free_loopback_port().expect("a free loopback port")
}

/// How [`TestGateway::send`] reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1 on plain TCP (`listen`).
    Plain,
    /// HTTP/2 over TLS on `tls.listen`, a new connection per request; plain
    /// HTTP stays on `listen` for the raw-bytes tests.
    H2,
}

/// A running gateway with its mock upstreams.
pub struct TestGateway {
    /// The TLS listener and the certificate it started with, when on.
    pub tls: Option<(SocketAddr, crate::tls::TestCert)>,
    /// How [`TestGateway::send`] sends.
    pub transport: Transport,
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The key store the gateway enforces (shared, so tests can set up
    /// orgs and keys directly).
    pub keystore: Arc<KeyStore>,
    /// Shared gateway state (metrics, routing).
    pub state: Arc<State>,
    /// Mock of the sending API.
    pub sending: MockUpstream,
    /// Mock of the domain API.
    pub domains: MockUpstream,
    /// The store file.
    pub store: PathBuf,
    /// The config the gateway runs with.
    pub config: Config,
    /// Its config file, when started with [`TestGateway::start_reloadable`].
    pub config_path: Option<PathBuf>,
    running: server::Running,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// A gateway with the default config.
    pub fn start() -> TestGateway {
        Self::start_with(|_| {})
    }

    /// A gateway whose config `tweak` may change (after ports and upstreams are set).
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let token = AdminToken {
            name: "test".into(),
            token: ADMIN_TOKEN.into(),
        };
        Self::start_with_tokens(vec![token], tweak)
    }

    /// Like [`TestGateway::start_with`], with these admin tokens (empty: the
    /// admin API refuses every `/v1` call).
    pub fn start_with_tokens(
        admin_tokens: Vec<AdminToken>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestGateway {
        Self::launch(admin_tokens, tweak, None, Transport::Plain)
    }

    /// A gateway with TLS on its own listener (a certificate made now) whose
    /// [`TestGateway::send`] goes over `transport`.
    pub fn start_over(transport: Transport, tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let token = AdminToken {
            name: "test".into(),
            token: ADMIN_TOKEN.into(),
        };
        Self::launch(vec![token], tweak, None, transport)
    }

    /// Like [`TestGateway::start_reloadable`], with TLS on its own listener.
    pub fn start_reloadable_tls(extra: &str) -> TestGateway {
        let token = AdminToken {
            name: "test".into(),
            token: ADMIN_TOKEN.into(),
        };
        Self::launch(vec![token], |_| {}, Some(extra), Transport::H2)
    }

    /// A gateway started from a config file (written from the test's ports
    /// and mocks, plus `extra` TOML), so that it can be reloaded: rewrite the
    /// file with [`TestGateway::write_config`], then `POST /v1/reload`.
    pub fn start_reloadable(extra: &str) -> TestGateway {
        let token = AdminToken {
            name: "test".into(),
            token: ADMIN_TOKEN.into(),
        };
        Self::launch(vec![token], |_| {}, Some(extra), Transport::Plain)
    }

    /// The config file of a reloadable gateway: its fixed settings plus `extra`.
    pub fn config_text(&self, extra: &str) -> String {
        base_toml(&self.config, self.sending.addr(), self.domains.addr()) + extra
    }

    /// Rewrites the config file of a reloadable gateway.
    pub fn write_config(&self, extra: &str) {
        let path = self
            .config_path
            .as_ref()
            .expect("started with start_reloadable");
        std::fs::write(path, self.config_text(extra)).expect("write config");
    }

    fn launch(
        admin_tokens: Vec<AdminToken>,
        tweak: impl FnOnce(&mut Config),
        file: Option<&str>,
        transport: Transport,
    ) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let sending = MockUpstream::spawn("sending").expect("mock sending");
        let domains = MockUpstream::spawn("domains").expect("mock domains");
        let mut config = Config {
            listen: free_port(),
            admin_listen: free_port(),
            store: dir.path().join("scopegate.db"),
            threads: 2,
            grace_period: Duration::from_millis(1000),
            ..Config::default()
        };
        config.log.access_log = scopegate_config::AccessLog::Off;
        config.upstreams.get_mut("sending").unwrap().backends = vec![sending.addr().to_string()];
        config.upstreams.get_mut("domains").unwrap().backends = vec![domains.addr().to_string()];
        for g in config.upstreams.values_mut() {
            g.health_check_interval = Some(Duration::from_millis(200));
        }
        let cert = (transport == Transport::H2).then(|| {
            let cert = crate::tls::make_cert(dir.path(), "gateway");
            config.tls.cert = Some(cert.cert.clone());
            config.tls.key = Some(cert.key.clone());
            config.tls.listen = Some(free_port());
            cert
        });
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let config_path = file.map(|extra| {
            let path = dir.path().join("scopegate.toml");
            let text = base_toml(&config, sending.addr(), domains.addr()) + extra;
            std::fs::write(&path, text).expect("write config");
            config = Config::load(&path).expect("test config file is valid");
            path
        });
        let keystore =
            Arc::new(KeyStore::open_sqlite(&config.store, Pepper::new(PEPPER)).expect("store"));
        let launch = Launch {
            config: config.clone(),
            config_path: config_path.clone(),
            overrides: Default::default(),
            secrets: Secrets {
                pepper: PEPPER.to_vec(),
                admin_tokens,
            },
            keystore: Arc::clone(&keystore),
            passthrough: None,
        };
        let running = server::Running::start(launch).expect("the gateway starts");
        let gw = TestGateway {
            tls: config.tls.listen.zip(cert),
            transport,
            proxy: config.listen,
            admin: config.admin_listen,
            keystore,
            state: Arc::clone(&running.state),
            sending,
            domains,
            store: config.store.clone(),
            config,
            config_path,
            running,
            _dir: dir,
        };
        gw.wait_ready();
        gw
    }

    /// Waits until both listeners answer (polling, no fixed sleep).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = TcpStream::connect(self.proxy).is_ok()
                && TcpStream::connect(self.admin).is_ok()
                && Request::new("GET", "/healthz").send(self.admin).status == 200;
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "gateway did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a request to the proxy, over this gateway's [`Transport`].
    pub fn send(&self, req: Request) -> crate::http::Response {
        match (&self.tls, self.transport) {
            (Some((addr, cert)), Transport::H2) => crate::tls::H2Client::connect(*addr, &cert.der)
                .send(&req)
                .unwrap_or_else(|e| panic!("HTTP/2 {} {}: {e}", req.method, req.target)),
            _ => req.send(self.proxy),
        }
    }

    /// Sends an admin request with the test token.
    pub fn admin(&self, req: Request) -> crate::http::Response {
        req.bearer(ADMIN_TOKEN).send(self.admin)
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        Request::new("GET", "/metrics").send(self.admin).text()
    }

    /// Stops the gateway and waits for it.
    pub fn stop(mut self, how: Stop) {
        self.running
            .shutdown(how)
            .expect("the gateway stops cleanly");
    }
}

/// The settings a reloadable test gateway cannot change without a restart,
/// plus its upstream groups, as TOML.
fn base_toml(c: &Config, sending: SocketAddr, domains: SocketAddr) -> String {
    let tls = match (c.tls.files(), c.tls.listen) {
        (Some((cert, key)), Some(listen)) => format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nlisten = \"{listen}\"\n\n",
            cert.display(),
            key.display()
        ),
        _ => String::new(),
    };
    format!(
        "listen = \"{}\"\nadmin_listen = \"{}\"\nstore = \"{}\"\nthreads = {}\ngrace_period_ms = {}\n\n{tls}\
         [log]\naccess_log = \"off\"\n\n\
         [upstreams.sending]\nbackends = [\"{sending}\"]\nhealth_check_interval_ms = 200\n\n\
         [upstreams.domains]\nbackends = [\"{domains}\"]\nhealth_check_interval_ms = 200\n\n",
        c.listen,
        c.admin_listen,
        c.store.display(),
        c.threads,
        c.grace_period.as_millis()
    )
}
