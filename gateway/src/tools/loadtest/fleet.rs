//! `--fleet N`: the load spread over N `scopegate serve` processes sharing
//! one store. Revocations go through the admin API of a random instance;
//! after each, probes time how long until every other instance refuses the
//! key. A probe asks for a domain that exists nowhere (`/domains/…invalid`):
//! a live key gets the gateway's 404, a revoked one its 401, and neither
//! reaches the upstream, so probes never disturb the audit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use scopegate_config::Config;
use scopegate_keystore::secret;

/// What a probe asks for: a domain no organisation can have.
const PROBE_PATH: &str = "/domains/probe.scopegate-loadtest.invalid";
/// How long a probe waits for an instance to refuse a revoked key before
/// the run counts that instance as never having refused (every admission
/// after the revocation is then a leak).
pub(super) const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);

/// One `scopegate serve` child process.
struct Instance {
    proxy: SocketAddr,
    admin: SocketAddr,
    child: Child,
}

/// The instances of a fleet run; killed when dropped.
pub(super) struct Fleet {
    instances: Vec<Instance>,
    /// The admin token every instance accepts (random, this run only).
    token: String,
    /// `Authorization: Bearer ` or the config's first key header.
    key_prefix: String,
}

/// Where the instances come from.
pub(super) struct FleetSpec<'a> {
    pub(super) size: usize,
    pub(super) config_file: Option<&'a Path>,
    pub(super) config: &'a Config,
    pub(super) store: &'a str,
    pub(super) upstream: SocketAddr,
    pub(super) threads: Option<usize>,
    pub(super) pepper: &'a [u8],
    pub(super) key_prefix: String,
}

impl Fleet {
    /// Starts the instances and waits until each answers `/readyz` with 200.
    pub(super) fn start(spec: FleetSpec<'_>) -> anyhow::Result<Fleet> {
        let bin = std::env::current_exe().context("finding this binary")?;
        let token = secret::generate();
        let pepper = std::str::from_utf8(spec.pepper)
            .context("--fleet needs a pepper that is UTF-8 text")?;
        let secrets = &spec.config.secrets;
        ensure!(
            !secrets.pepper_env.is_empty() && !secrets.admin_token_env.is_empty(),
            "--fleet passes the pepper and an admin token to its instances through secrets.pepper_env and secrets.admin_token_env; set both"
        );
        let mut fleet = Fleet {
            instances: Vec::with_capacity(spec.size),
            token,
            key_prefix: spec.key_prefix,
        };
        for _ in 0..spec.size {
            let proxy = crate::server::free_loopback_port()?;
            let admin = crate::server::free_loopback_port()?;
            let mut cmd = Command::new(&bin);
            cmd.arg("serve");
            if let Some(f) = spec.config_file {
                cmd.arg("--config").arg(f);
            }
            cmd.args(["--listen", &proxy.to_string()])
                .args(["--admin-listen", &admin.to_string()])
                .args(["--store", spec.store]);
            if let Some(t) = spec.threads {
                cmd.args(["--threads", &t.to_string()]);
            }
            for group in spec.config.upstreams.keys() {
                cmd.args(["--upstream", &format!("{group}={}", spec.upstream)]);
            }
            let child = cmd
                .env(&secrets.pepper_env, pepper)
                .env(&secrets.admin_token_env, &fleet.token)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting scopegate serve")?;
            fleet.instances.push(Instance {
                proxy,
                admin,
                child,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for (n, i) in fleet.instances.iter_mut().enumerate() {
            loop {
                if let Some(status) = i.child.try_wait()? {
                    bail!("instance {n} exited before it was ready: {status}");
                }
                if matches!(http(i.admin, "GET", "/readyz", ""), Ok(200)) {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "instance {n} was not ready within 60 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(fleet)
    }

    /// The proxy listeners, instance by instance.
    pub(super) fn proxies(&self) -> Vec<SocketAddr> {
        self.instances.iter().map(|i| i.proxy).collect()
    }

    /// The number of instances.
    pub(super) fn len(&self) -> usize {
        self.instances.len()
    }

    /// Revokes key `id` through instance `via`'s admin API.
    pub(super) fn revoke(&self, via: usize, id: &str) -> anyhow::Result<()> {
        let auth = format!("Authorization: Bearer {}\r\n", self.token);
        let status = http(
            self.instances[via].admin,
            "DELETE",
            &format!("/v1/keys/{id}"),
            &auth,
        )
        .with_context(|| format!("revoking {id} through instance {via}"))?;
        ensure!(
            status == 200,
            "revoking {id} through instance {via}: HTTP {status}"
        );
        Ok(())
    }

    /// Whether `instance` refuses `secret` now (401) rather than still
    /// accepting it (the 404 of a domain that exists nowhere).
    pub(super) fn refuses(&self, instance: usize, secret: &str) -> anyhow::Result<bool> {
        let header = format!("{}{secret}\r\n", self.key_prefix);
        match http(self.instances[instance].proxy, "GET", PROBE_PATH, &header)? {
            401 => Ok(true),
            404 => Ok(false),
            other => bail!("a probe of instance {instance} got HTTP {other}"),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in &mut self.instances {
            let _ = i.child.kill();
            let _ = i.child.wait();
        }
    }
}

/// One request on its own connection; the answer's status.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: loadtest.invalid\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line in the answer")
}
