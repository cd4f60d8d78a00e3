//! Building and running the Pingora server: the proxy service, the admin
//! service and the background health checks, with the shutdown signal and
//! the key store handed in by the caller, so tests run a whole gateway
//! in-process and stop it when they are done.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use scopegate_config::{Config, Overrides, Secrets};
use scopegate_keystore::KeyStore;
use tokio::sync::watch;

use crate::ops::accesslog::AccessLog;
use crate::ops::metrics::Metrics;
use crate::request::routing::Routing;
use crate::request::state::State;

/// Everything [`run`] needs.
pub struct Launch {
    /// The validated config (file + flags).
    pub config: Config,
    /// The file it came from, for reloads.
    pub config_path: Option<std::path::PathBuf>,
    /// The flags, re-applied on reload.
    pub overrides: Overrides,
    /// Pepper and admin tokens.
    pub secrets: Secrets,
    /// The opened key store.
    pub keystore: Arc<KeyStore>,
    /// Benchmarks only: forward everything to this upstream group with no
    /// check at all (plain Pingora), to measure what enforcement costs.
    pub passthrough: Option<String>,
}

/// How a caller asks a running gateway to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Stop accepting, let requests in flight finish within the grace period.
    Graceful,
    /// Stop now.
    Fast,
}

/// The sending half of an in-process shutdown signal.
#[derive(Clone)]
pub struct StopHandle {
    tx: Arc<watch::Sender<Option<Stop>>>,
}

impl StopHandle {
    /// Asks the gateway to stop.
    pub fn stop(&self, how: Stop) {
        let _ = self.tx.send(Some(how));
    }
}

/// A [`ShutdownSignalWatch`] driven by a [`StopHandle`] (tests, the demo).
pub struct ChannelSignal {
    rx: watch::Receiver<Option<Stop>>,
}

/// A connected pair for in-process runs.
pub fn stop_channel() -> (StopHandle, ChannelSignal) {
    let (tx, rx) = watch::channel(None);
    (StopHandle { tx: Arc::new(tx) }, ChannelSignal { rx })
}

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.rx.clone();
        let how = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(Stop::Fast),
            // The handle is gone: nobody can ask any more, so stop.
            Err(_) => Stop::Fast,
        };
        match how {
            Stop::Graceful => ShutdownSignal::GracefulTerminate,
            Stop::Fast => ShutdownSignal::FastShutdown,
        }
    }
}

/// Unix signals for `scopegate serve`: SIGTERM and SIGQUIT drain within the
/// grace period, SIGINT stops at once. (SIGHUP reloads; see the reload service.)
pub struct UnixSignals;

#[async_trait]
impl ShutdownSignalWatch for UnixSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = quit.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

/// Runs health checks of every upstream group of the current routing, each
/// at its own interval; follows reloads because it reads the routing anew
/// on every tick.
struct HealthChecks {
    state: Arc<State>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last: std::collections::HashMap<String, Instant> = Default::default();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let routing = self.state.routing.load_full();
            for (name, group) in &routing.groups {
                let Some(every) = group.settings.health_check_interval else {
                    continue;
                };
                let due = last.get(name).is_none_or(|t| t.elapsed() >= every);
                if due {
                    last.insert(name.clone(), Instant::now());
                    group.lb.backends().run_health_check(true).await;
                }
            }
        }
    }
}

/// Writes key usage counted in memory to the store every
/// `usage.flush_interval_ms` (and once more at shutdown), and sweeps the
/// rate-limit buckets and brute-force strikes that no longer matter.
struct Housekeeping {
    state: Arc<State>,
    /// The last usage batch failed: logged once when failures start and
    /// once when they end, not at every interval (a store fault lasting an
    /// hour is one warning, counted in `scopegate_usage_flushes_total`).
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Housekeeping {
    /// One usage batch, counted in metrics; a failure is logged and the
    /// batch is kept for the next try.
    fn flush(state: &State, failing: &std::sync::atomic::AtomicBool) {
        let result = state.keystore.flush_usage();
        let label = if result.is_ok() { "ok" } else { "error" };
        state
            .metrics
            .usage_flushes
            .with_label_values(&[label])
            .inc();
        match result {
            Err(e) if !failing.swap(true, Ordering::SeqCst) => log::warn!(
                "cannot write key usage to the store ({e}); kept in memory and retried with every batch (logged again when it succeeds)"
            ),
            Err(e) => log::debug!("key usage still not written ({e})"),
            Ok(_) if failing.swap(false, Ordering::SeqCst) => {
                log::info!("key usage written to the store again; nothing was lost")
            }
            Ok(_) => {}
        }
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_sweep = Instant::now();
        loop {
            let every = self.state.routing.load().config.usage.flush_interval;
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let state = Arc::clone(&self.state);
            let failing = Arc::clone(&self.failing);
            let sweep = last_sweep.elapsed() >= crate::request::guard::SWEEP_EVERY;
            if sweep {
                last_sweep = Instant::now();
            }
            let _ = tokio::task::spawn_blocking(move || {
                Self::flush(&state, &failing);
                if sweep {
                    let snap = state.keystore.snapshot();
                    state.guard.sweep(|id| {
                        let side = snap.side(id)?;
                        side.policy
                            .as_ref()?
                            .rate_limit
                            .or_else(|| snap.orgs.get(side.usage.org_slot)?.as_ref()?.rate_limit)
                    });
                }
            })
            .await;
        }
        let state = Arc::clone(&self.state);
        let failing = Arc::clone(&self.failing);
        let _ = tokio::task::spawn_blocking(move || Self::flush(&state, &failing)).await;
    }
}

/// Marks the gateway as listening once every proxy listener is bound.
/// Pingora binds its listeners on the service threads, after background
/// services may already run, so starting is not enough (`/readyz` answered
/// 200 while connections were still refused). A plain listener is probed
/// by connecting to it (the loopback address of its family when it listens
/// on all addresses; the probe closes without a byte: the edge counts it as
/// accepted and forgets it); a TLS listener, where such a probe would log a
/// failed handshake, by binding its address: startup checked it was free,
/// so "in use" now means Pingora holds it.
struct Started {
    state: Arc<State>,
    /// Each proxy listener, and whether it speaks TLS.
    listeners: Vec<(std::net::SocketAddr, bool)>,
}

impl Started {
    fn probe_address(addr: std::net::SocketAddr) -> std::net::SocketAddr {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let ip = match addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        std::net::SocketAddr::new(ip, addr.port())
    }
}

#[async_trait]
impl BackgroundService for Started {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Port 0 (the kernel picks one) cannot be probed: ready once started.
        for &(addr, tls) in self.listeners.iter().filter(|(a, _)| a.port() != 0) {
            let mut pause = Duration::from_millis(1);
            loop {
                let bound = if tls {
                    std::net::TcpListener::bind(addr).is_err()
                } else {
                    tokio::net::TcpStream::connect(Self::probe_address(addr))
                        .await
                        .is_ok()
                };
                if bound {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return,
                }
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
        self.state.listening.store(true, Ordering::SeqCst);
    }
}

/// Starts following the store's change log, logging what happens to it
/// (failures once when they start and once when they end).
fn start_follower(
    keystore: &Arc<KeyStore>,
    poll: Duration,
) -> anyhow::Result<scopegate_keystore::Follower> {
    use scopegate_keystore::FollowEvent;
    let follower = scopegate_keystore::Follower::spawn(Arc::clone(keystore), poll, |e| {
        match e {
        FollowEvent::Applied(f) if f.reloaded => {
            log::warn!(
                "the store's change log no longer held what this instance missed: reloaded the whole snapshot at version {}",
                f.version
            )
        }
        FollowEvent::Applied(f) => log::debug!(
            "applied {} change(s) from other instances; now at version {}",
            f.applied,
            f.version
        ),
        FollowEvent::Failing(e) => log::error!(
            "cannot read the store's change log ({e}); this instance fails closed once it is stale for fleet.max_staleness_ms"
        ),
        FollowEvent::Recovered(f) => {
            log::warn!("reading the store's change log again; now at version {}", f.version)
        }
        FollowEvent::WatcherLost(e) => log::warn!(
            "lost the store's change notifications ({e}); polling until they are back"
        ),
        FollowEvent::WatcherBack => log::info!("store change notifications restored"),
        FollowEvent::Notice(n) => log::warn!("{n}"),
    }
    })?;
    Ok(follower)
}

/// Builds the shared state (metrics, routing, access log) for a launch.
pub fn build_state(
    launch: &Launch,
) -> anyhow::Result<(Arc<State>, Option<std::thread::JoinHandle<()>>)> {
    let metrics = Arc::new(Metrics::new());
    let routing = Routing::build(launch.config.clone(), &metrics).map_err(anyhow::Error::msg)?;
    if let Some(g) = &launch.passthrough {
        anyhow::ensure!(
            routing.groups.contains_key(g),
            "--bench-passthrough {g}: no upstream group of that name"
        );
    }
    let (access_log, log_thread) =
        AccessLog::start(&launch.config.log, metrics.access_log_dropped.clone())?;
    let state = Arc::new(State {
        keystore: Arc::clone(&launch.keystore),
        routing: ArcSwap::from_pointee(routing),
        metrics,
        access_log,
        connector: pingora::connectors::http::Connector::new(None),
        admin_tokens: launch.secrets.admin_tokens.clone(),
        config_path: launch.config_path.clone(),
        overrides: launch.overrides.clone(),
        listening: Default::default(),
        guard: Default::default(),
        passthrough: launch.passthrough.clone(),
        follower: Some(start_follower(
            &launch.keystore,
            launch.config.fleet.poll_interval,
        )?),
        tls: match launch.config.tls.files() {
            Some((cert, key)) => Some(Arc::new(
                crate::request::tls::CertStore::load(cert, key).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        },
    });
    Ok((state, log_thread))
}

/// Runs the gateway until `shutdown` fires. Blocking, and must not be called
/// from inside a tokio runtime (Pingora builds its own).
pub fn run(launch: Launch, shutdown: Box<dyn ShutdownSignalWatch>) -> anyhow::Result<()> {
    let (state, log_thread) = build_state(&launch)?;
    run_with_state(&launch.config, Arc::clone(&state), shutdown)?;
    drop(state);
    if let Some(t) = log_thread {
        let _ = t.join();
    }
    Ok(())
}

/// Runs the gateway on already built state (lets callers keep a handle on
/// the metrics and routing).
pub fn run_with_state(
    config: &Config,
    state: Arc<State>,
    shutdown: Box<dyn ShutdownSignalWatch>,
) -> anyhow::Result<()> {
    // Pingora binds the listeners on its own service threads and, when an
    // address is taken, retries for a while and then panics on that thread
    // while the rest of the process keeps running. Binding here first turns
    // that into a clear error and a non-zero exit.
    for (what, addr) in [
        ("listen", Some(config.listen)),
        ("admin_listen", Some(config.admin_listen)),
        ("tls.listen", config.tls.listen),
    ]
    .into_iter()
    .filter_map(|(what, addr)| Some((what, addr?)))
    {
        std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("{what}: cannot listen on {addr}: {e}"))?;
    }
    let grace_secs = config.grace_period.as_millis().div_ceil(1000) as u64;
    let pool = config
        .upstreams
        .values()
        .map(|g| g.keepalive_pool)
        .max()
        .unwrap_or(128);
    let conf = ServerConf {
        threads: config.effective_threads(),
        grace_period_seconds: Some(grace_secs),
        graceful_shutdown_timeout_seconds: Some(grace_secs.max(1)),
        upstream_keepalive_pool_size: pool,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let proxy = pingora::proxy::http_proxy(
        &server.configuration,
        crate::request::proxy::Proxy {
            state: Arc::clone(&state),
        },
    );
    let edge = crate::request::conn::Edge::new(proxy, Arc::clone(&state), config.connections);
    let mut proxy = Service::new("scopegate-proxy".to_string(), edge);
    add_listeners(&mut proxy, config, &state)?;
    server.add_service(proxy);

    let mut admin = Service::new(
        "scopegate-admin".to_string(),
        crate::admin::api::AdminApp {
            state: Arc::clone(&state),
        },
    );
    admin.threads = Some(1);
    admin.add_tcp(&config.admin_listen.to_string());
    server.add_service(admin);

    server.add_service(background_service(
        "scopegate-health",
        HealthChecks {
            state: Arc::clone(&state),
        },
    ));
    server.add_service(background_service(
        "scopegate-reload",
        crate::admin::reload::ReloadOnHup {
            state: Arc::clone(&state),
        },
    ));
    server.add_service(background_service(
        "scopegate-housekeeping",
        Housekeeping {
            state: Arc::clone(&state),
            failing: Default::default(),
        },
    ));
    server.add_service(background_service(
        "scopegate-started",
        Started {
            state: Arc::clone(&state),
            listeners: match (&state.tls, config.tls.listen) {
                (None, _) => vec![(config.listen, false)],
                (Some(_), Some(tls)) => vec![(config.listen, false), (tls, true)],
                (Some(_), None) => vec![(config.listen, true)],
            },
        },
    ));
    server.run(RunArgs {
        shutdown_signal: shutdown,
    });
    state.listening.store(false, Ordering::SeqCst);
    // What was counted after the last batch (a graceful stop loses no usage).
    Housekeeping::flush(&state, &Default::default());
    Ok(())
}

/// The proxy's listeners: plain HTTP on `listen` unless TLS took it over,
/// TLS (1.2 and 1.3, ALPN `h2` then `http/1.1`) on `tls.listen` or `listen`,
/// presenting whatever certificate [`State::tls`] holds at each handshake.
fn add_listeners<A>(
    service: &mut Service<A>,
    config: &Config,
    state: &State,
) -> anyhow::Result<()> {
    use pingora::listeners::{L4BufferSettings, ListenerConfig};
    // Pingora reads each connection through a 64 KiB buffer by default, and
    // an idle keep-alive connection keeps it: 16 KiB (the default header
    // limit) keeps many idle connections cheap; bodies just take more reads.
    let buffer = L4BufferSettings::default().read(16 * 1024);
    let tcp = |addr: std::net::SocketAddr| ListenerConfig::tcp(addr.to_string()).l4_buffer(buffer);
    let Some(certs) = &state.tls else {
        service.add_listener(tcp(config.listen));
        return Ok(());
    };
    // Pingora's rustls settings offer exactly TLS 1.2 and 1.3.
    let mut tls = pingora::listeners::tls::TlsSettings::intermediate("", "")?;
    tls.set_cert_resolver(Arc::clone(certs) as _);
    tls.enable_h2();
    match config.tls.listen {
        Some(addr) => {
            service.add_listener(tcp(config.listen));
            service.add_listener(tcp(addr).tls(tls));
        }
        None => service.add_listener(tcp(config.listen).tls(tls)),
    }
    Ok(())
}

/// A gateway running on its own thread in this process: the demo, the load
/// test and the black-box tests all start one this way. Stops (fast) on drop.
pub struct Running {
    /// The proxy listener.
    pub proxy: std::net::SocketAddr,
    /// The admin listener.
    pub admin: std::net::SocketAddr,
    /// The TLS listener when it is apart from `proxy` (`tls.listen`).
    pub tls: Option<std::net::SocketAddr>,
    /// The gateway's shared state (key store, metrics, routing).
    pub state: Arc<State>,
    stop: StopHandle,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Builds the state, starts the server on a thread and returns once both
    /// listeners accept connections (polling; an error if the server thread
    /// ends first or nothing answers within 20 s).
    pub fn start(launch: Launch) -> anyhow::Result<Running> {
        let (state, _log_thread) = build_state(&launch)?;
        let (stop, signal) = stop_channel();
        let config = launch.config.clone();
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("scopegate-gateway".into())
            .spawn(move || run_with_state(&config, st, Box::new(signal)))?;
        let mut running = Running {
            proxy: launch.config.listen,
            admin: launch.config.admin_listen,
            tls: launch.config.tls.listen,
            state,
            stop,
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = running.state.listening.load(Ordering::SeqCst)
                && std::net::TcpStream::connect(running.proxy).is_ok()
                && std::net::TcpStream::connect(running.admin).is_ok();
            if up {
                return Ok(running);
            }
            if running.thread.as_ref().is_some_and(|t| t.is_finished()) {
                return Err(running
                    .shutdown(Stop::Fast)
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("the gateway stopped during start-up")));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway did not come up within 20 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the gateway and waits for its thread.
    pub fn shutdown(&mut self, how: Stop) -> anyhow::Result<()> {
        self.stop.stop(how);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Err(_)) => anyhow::bail!("the gateway thread panicked"),
            Some(Ok(r)) => r,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown(Stop::Fast);
    }
}

/// A loopback address with a port nobody listens on right now, for the
/// listeners of an in-process gateway (Pingora binds them itself, so it must
/// be told a concrete port).
///
/// Ports come from 20000-32767, below Linux's ephemeral range, so sockets
/// bound to port 0 elsewhere never take them; a process-wide counter starting
/// at a random offset means two gateways of one process (parallel tests)
/// never get the same one, even though each is released before Pingora binds
/// it. Each port is checked by binding it first.
pub fn free_loopback_port() -> std::io::Result<std::net::SocketAddr> {
    use std::sync::atomic::AtomicU32;
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let start = std::process::id().wrapping_mul(7919).wrapping_add(nanos) % SPAN;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free loopback port in 20000-32767",
    ))
}
