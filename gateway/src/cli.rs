//! The `scopegate` command line. `main` only calls [`main`]; every command
//! is a function here so it can be tested.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use scopegate_config::{Config, Overrides, ProcessEnv};
use scopegate_keystore::{KeyStore, Pepper};

use crate::server::{self, Launch};

/// scopegate: an API-key gateway in front of an email platform's sending and
/// domain APIs.
#[derive(Parser, Debug)]
#[command(name = "scopegate", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (proxy + admin API).
    Serve(ServeArgs),
    /// A newcomer's first run: gateway, mock upstreams and a sample
    /// organisation, then requests admitted and refused with the reason.
    Demo(crate::tools::demo::DemoArgs),
    /// The decision for one request, offline, from a store.
    Check(CheckArgs),
    /// The admin API from the shell.
    Admin(crate::admin::client::AdminArgs),
    /// Run the bundled mock of the sending/domain APIs (used by the demo).
    MockUpstream(MockArgs),
    /// Load-test key checks: a gateway, an auditing upstream, a key
    /// population and revocations during the load; fails if anything leaked.
    Loadtest(crate::tools::loadtest::LoadtestArgs),
}

/// Flags shared by `serve` and `check`: they override the config file.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML config file (see config/examples/scopegate.toml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Proxy listener, e.g. 0.0.0.0:8080.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin listener (default 127.0.0.1:8081).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// SQLite store file, or postgres://user@host:port/db for a fleet
    /// sharing one database (password in the URL or SCOPEGATE_STORE_PASSWORD).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Upstream backend, NAME=HOST:PORT; repeat for several backends of a group.
    #[arg(long = "upstream", value_name = "NAME=HOST:PORT")]
    pub upstreams: Vec<String>,
    /// Proxy worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// TLS certificate chain (PEM, leaf first): the proxy listener speaks
    /// TLS 1.2/1.3 and HTTP/2 (`tls.cert`).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert (`tls.key`).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads the file (or defaults) and applies the flags.
    pub fn load(&self) -> anyhow::Result<(Config, Overrides)> {
        let mut upstreams = Vec::new();
        for u in &self.upstreams {
            let (name, addr) = u
                .split_once('=')
                .with_context(|| format!("--upstream {u:?}: expected NAME=HOST:PORT"))?;
            upstreams.push((name.to_string(), addr.to_string()));
        }
        let overrides = Overrides {
            listen: self.listen,
            admin_listen: self.admin_listen,
            store: self.store.clone(),
            upstreams,
            threads: self.threads,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        };
        let mut config = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        config.apply_overrides(overrides.clone())?;
        Ok((config, overrides))
    }
}

/// `scopegate serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Config and flags.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// BENCHMARKS ONLY: forward every request to this upstream group with no
    /// key check at all, to measure plain Pingora beside enforcement.
    #[arg(long, hide = true, value_name = "GROUP")]
    pub bench_passthrough: Option<String>,
}

/// `scopegate check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Config and flags (store, routes, key headers).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request path, e.g. /domains/example.com.
    #[arg(long)]
    pub path: String,
    /// The key to check; read from SCOPEGATE_CHECK_KEY when absent (keeps it
    /// out of shell history and process lists).
    #[arg(long)]
    pub key: Option<String>,
    /// For send routes: the JSON body file.
    #[arg(long)]
    pub body: Option<PathBuf>,
}

/// `scopegate mock-upstream`.
#[derive(Args, Debug)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Name shown in its output (sending, domains).
    #[arg(long, default_value = "upstream")]
    pub name: String,
    /// Print nothing per request (for load runs).
    #[arg(long)]
    pub quiet: bool,
    /// Answer every request with the same small body instead of echoing it,
    /// printing nothing per request (for benchmarks: the same upstream work
    /// whatever the gateway in front adds).
    #[arg(long)]
    pub fixed_response: bool,
}

/// Sets up process logs: info for scopegate, warnings for Pingora, unless
/// `RUST_LOG` says otherwise.
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,pingora=warn,pingora_core=warn,pingora_proxy=warn"),
    )
    .try_init();
}

/// Opens the store named by the config with the pepper from the environment.
pub fn open_store(config: &Config) -> anyhow::Result<(Arc<KeyStore>, scopegate_config::Secrets)> {
    let secrets = config.resolve_secrets(&ProcessEnv)?;
    let location = config.store.to_string_lossy();
    let ks = KeyStore::open_location(&location, Pepper::new(&secrets.pepper))
        .with_context(|| format!("opening the store {}", config.store_display()))?;
    Ok((Arc::new(ks), secrets))
}

fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    init_logging();
    let (config, overrides) = args.config.load()?;
    let (keystore, secrets) = open_store(&config)?;
    let st = keystore.status();
    log::info!(
        "scopegate {} listening on {} (admin {}); store {} at version {}: {} orgs, {} users, {} keys",
        env!("CARGO_PKG_VERSION"),
        config.listen,
        config.admin_listen,
        config.store_display(),
        st.version,
        st.orgs,
        st.users,
        st.keys
    );
    if secrets.admin_tokens.is_empty() {
        log::warn!("no admin token configured: the /v1 admin API is disabled");
    }
    server::run(
        Launch {
            config,
            config_path: args.config.config.clone(),
            overrides,
            secrets,
            keystore,
            passthrough: args.bench_passthrough.clone(),
        },
        Box::new(server::UnixSignals),
    )?;
    Ok(0)
}

fn check(args: CheckArgs) -> anyhow::Result<i32> {
    let (config, _) = args.config.load()?;
    let key = match args.key.clone() {
        Some(k) => k,
        None => std::env::var("SCOPEGATE_CHECK_KEY")
            .context("give the key with --key or SCOPEGATE_CHECK_KEY")?,
    };
    let (keystore, _) = open_store(&config)?;
    let body = match &args.body {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => Vec::new(),
    };
    let d =
        crate::tools::offline::decide(&config, &keystore, &args.method, &args.path, &key, &body)?;
    println!("{d}");
    Ok(if d.admitted { 0 } else { 1 })
}

/// Parses the command line and runs the command; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve(a),
        Command::Demo(a) => crate::tools::demo::run(a),
        Command::Check(a) => check(a),
        Command::Admin(a) => crate::admin::client::run(a),
        Command::Loadtest(a) => crate::tools::loadtest::run(a),
        Command::MockUpstream(a) => {
            crate::tools::mock::run_standalone(&a.name, a.listen, a.quiet, a.fixed_response)
                .map(|()| 0)
                .map_err(Into::into)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scopegate: {e:#}");
            2
        }
    }
}
