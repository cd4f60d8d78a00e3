//! The canonical configuration: typed, defaulted, what the gateway reads.
//!
//! File syntax lives in `file`; this module knows nothing about TOML. Key names
//! in doc comments are the file's, so the two can be read side by side.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::route::{default_routes_for, Route};

/// The whole gateway configuration after parsing and validation.
///
/// Exists as the one shape every source (file, defaults, flags) is converted
/// into, so the gateway never sees file syntax. `Config::default()` is what
/// `scopegate serve` runs with when no file is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `listen`: where the proxy accepts client traffic.
    pub listen: SocketAddr,
    /// `admin_listen`: the admin API, `/metrics`, `/healthz` and `/readyz`; kept
    /// apart from `listen` so it can stay on loopback.
    pub admin_listen: SocketAddr,
    /// `threads`: proxy worker threads; 0 means one per CPU, resolved at use
    /// time by [`Config::effective_threads`] so the file stays portable.
    pub threads: usize,
    /// `grace_period_ms`: how long SIGTERM lets in-flight requests drain.
    pub grace_period: Duration,
    /// `store`: the SQLite file holding organisations, users and keys, or a
    /// `postgres://` URL of the database a fleet of instances shares.
    pub store: PathBuf,
    /// `[fleet]`: how an instance follows the change log others write to.
    pub fleet: Fleet,
    /// `response_format`: the shape of the answers the gateway writes itself.
    pub response_format: ResponseFormat,
    /// `[usage]`: how often key usage counted in memory is written to the store.
    pub usage: Usage,
    /// `[brute_force]`: how failed key attempts per client address are limited.
    pub brute_force: BruteForce,
    /// `[secrets]`: where the pepper and admin tokens come from (never the values).
    pub secrets: SecretSources,
    /// `[keys]`: where API keys are read from on each request.
    pub keys: KeySources,
    /// `[limits]`: body sizes and deadlines that bound memory and slow clients.
    pub limits: Limits,
    /// `[tls]`: TLS termination and its certificate files.
    pub tls: crate::edge::Tls,
    /// `[connections]`: what one client connection may hold, and how long.
    pub connections: crate::edge::Connections,
    /// `[log]`: access log destination and format.
    pub log: LogSettings,
    /// `[upstreams.NAME]`: backend groups that routes point at, by name.
    pub upstreams: BTreeMap<String, UpstreamGroup>,
    /// `[[routes]]`: the ordered route table; first match wins, no match is 404.
    pub routes: Vec<Route>,
}

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            admin_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
            threads: 0,
            grace_period: Duration::from_millis(5000),
            store: PathBuf::from("scopegate.db"),
            fleet: Fleet::default(),
            response_format: ResponseFormat::default(),
            usage: Usage::default(),
            brute_force: BruteForce::default(),
            secrets: SecretSources::default(),
            keys: KeySources::default(),
            log: LogSettings::default(),
            tls: Default::default(),
            connections: Default::default(),
            upstreams: BTreeMap::from([
                (
                    "domains".to_owned(),
                    UpstreamGroup::new(vec!["127.0.0.1:9002".to_owned()]),
                ),
                (
                    "sending".to_owned(),
                    UpstreamGroup::new(vec!["127.0.0.1:9001".to_owned()]),
                ),
            ]),
            routes: default_routes_for(&limits),
            limits,
        }
    }
}

impl Config {
    /// The route table from the design's default-routes table, with body limits
    /// taken from the default `[limits]`. Exists so a deployment without
    /// `[[routes]]` gets the documented behaviour, and so the gateway's tests can
    /// start from it.
    pub fn default_routes() -> Vec<Route> {
        default_routes_for(&Limits::default())
    }

    /// Worker threads to start: `threads`, or the CPU count when it is 0.
    /// Resolved here rather than at load so one file suits machines of any size.
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Where the pepper and the admin tokens are found.
///
/// Exists so the file names sources, never secret values: config files get
/// committed and pasted into tickets. [`Config::resolve_secrets`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSources {
    /// `pepper_env`: environment variable holding the key-hashing pepper; empty
    /// means "do not look in the environment". It wins over `pepper_file` when
    /// both are set and the variable is non-empty.
    pub pepper_env: String,
    /// `pepper_file`: file holding the pepper (for mounted secrets).
    pub pepper_file: Option<PathBuf>,
    /// `admin_token_env`: environment variable holding one admin token, named
    /// `admin`; empty means "do not look in the environment".
    pub admin_token_env: String,
    /// `admin_token_file`: file of `name:token` lines, or one bare token
    /// (named `admin`); its tokens are added to the one from the environment.
    pub admin_token_file: Option<PathBuf>,
}

impl Default for SecretSources {
    fn default() -> Self {
        SecretSources {
            pepper_env: "SCOPEGATE_PEPPER".to_owned(),
            pepper_file: None,
            admin_token_env: "SCOPEGATE_ADMIN_TOKEN".to_owned(),
            admin_token_file: None,
        }
    }
}

/// Where the gateway looks for an API key on each request.
///
/// Exists because clients of the email platform already send keys in several
/// headers; the gateway accepts the same ones and refuses a request carrying two
/// different keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySources {
    /// `headers`: headers that may carry a key, checked in order.
    pub headers: Vec<KeyHeader>,
    /// `query_param`: query parameter that may carry a key; `None` (the file's
    /// `""`) keeps keys out of URLs, and so out of upstream access logs.
    pub query_param: Option<String>,
    /// `forward_key_header`: whether the key header reaches the upstream; off by
    /// default since the upstream trusts the identity headers instead.
    pub forward_key_header: bool,
    /// `identity_prefix`: incoming headers with this prefix are stripped (case
    /// insensitively) before the gateway adds its own, so clients cannot forge
    /// an identity.
    pub identity_prefix: String,
}

impl Default for KeySources {
    fn default() -> Self {
        KeySources {
            headers: vec![
                KeyHeader {
                    name: "Authorization".to_owned(),
                    scheme: Some("Bearer".to_owned()),
                },
                KeyHeader {
                    name: "X-Api-Key".to_owned(),
                    scheme: None,
                },
                KeyHeader {
                    name: "X-Postmark-Server-Token".to_owned(),
                    scheme: None,
                },
                KeyHeader {
                    name: "X-Postmark-Account-Token".to_owned(),
                    scheme: None,
                },
            ],
            query_param: None,
            forward_key_header: false,
            identity_prefix: "X-Scopegate-".to_owned(),
        }
    }
}

/// One header that may carry an API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHeader {
    /// Header name, matched case-insensitively.
    pub name: String,
    /// Auth scheme before the key (`Bearer` in `Authorization: Bearer KEY`),
    /// matched case-insensitively; `None` means the whole value is the key.
    pub scheme: Option<String>,
}

/// Body sizes and deadlines.
///
/// Exists because inspected bodies (sends) are buffered in memory to find their
/// `From` domains: without limits one client could exhaust the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `max_send_body_bytes`: single-message send routes (buffered and parsed).
    pub max_send_body_bytes: u64,
    /// `max_batch_body_bytes`: batch send routes (buffered and parsed).
    pub max_batch_body_bytes: u64,
    /// `max_body_bytes`: any other route with a body (streamed, not inspected).
    pub max_body_bytes: u64,
    /// `body_read_timeout_ms`: deadline for reading a whole inspected body, so
    /// a slow sender cannot hold a buffer open indefinitely.
    pub body_read_timeout: Duration,
    /// `max_admin_body_bytes`: admin API request bodies.
    pub max_admin_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_send_body_bytes: 10 * 1024 * 1024,
            max_batch_body_bytes: 50 * 1024 * 1024,
            max_body_bytes: 1024 * 1024,
            body_read_timeout: Duration::from_millis(15_000),
            max_admin_body_bytes: 1024 * 1024,
        }
    }
}

/// The shape of the refusals the gateway writes itself (the upstream's own
/// answers pass through untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseFormat {
    /// `"json"`: `{"error": {"code": "…", "message": "…"}}`.
    #[default]
    Json,
    /// `"postmark"`: Postmark's `{"ErrorCode": n, "Message": "…"}`, with
    /// Postmark's statuses where they differ, so its official clients report
    /// typed errors with the right code.
    Postmark,
}

/// How an instance follows the store's change log (every instance does:
/// processes sharing one SQLite file as much as a fleet on PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fleet {
    /// `poll_interval_ms`: how often the log is read even without a wake-up;
    /// bounds what a lost wake-up costs and how often freshness is confirmed.
    pub poll_interval: Duration,
    /// `max_staleness_ms`: past this long without confirming the snapshot
    /// against the store, the proxy answers 503 instead of trusting it.
    pub max_staleness: Duration,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            poll_interval: Duration::from_millis(500),
            max_staleness: Duration::from_millis(5000),
        }
    }
}

/// How key usage (last used, request counts) reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `flush_interval_ms`: how often the usage counted in memory is written
    /// in one batch; a crash loses at most this long of usage.
    pub flush_interval: Duration,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            flush_interval: Duration::from_millis(2000),
        }
    }
}

/// Failed key attempts (malformed or unknown keys) per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BruteForce {
    /// `attempts_per_minute`: failures an address may make in a minute;
    /// the next request is refused (429) and so is everything from that
    /// address for `block`. 0 turns the limit off (the default).
    pub attempts_per_minute: u32,
    /// `block_seconds`: how long a blocked address stays blocked.
    pub block: Duration,
}

impl Default for BruteForce {
    fn default() -> Self {
        BruteForce {
            attempts_per_minute: 0,
            block: Duration::from_secs(300),
        }
    }
}

impl Config {
    /// Whether `store` names a PostgreSQL database rather than a file.
    pub fn store_is_postgres(&self) -> bool {
        let s = self.store.to_string_lossy();
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    }

    /// `store` as it may be shown in logs and answers: a URL's password is
    /// replaced by `***`.
    pub fn store_display(&self) -> String {
        let s = self.store.to_string_lossy().into_owned();
        if !self.store_is_postgres() {
            return s;
        }
        let (scheme, rest) = s.split_once("://").unwrap_or(("", &s));
        let (auth, host) = match rest.rsplit_once('@') {
            Some(parts) => parts,
            None => return s,
        };
        match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => s,
        }
    }
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogSettings {
    /// `access_log`: where one line per request goes.
    pub access_log: AccessLog,
    /// `format`: how those lines are written.
    pub format: LogFormat,
}

/// Destination of the access log; exists so `off` and the standard streams are
/// not mistaken for file names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// The file's `"stdout"`: the default, for containers.
    #[default]
    Stdout,
    /// The file's `"stderr"`.
    Stderr,
    /// The file's `"off"`: no access log (metrics still count requests).
    Off,
    /// Any other value: a file path, appended to.
    File(PathBuf),
}

/// Format of access log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// The file's `"text"`: for people reading a terminal.
    #[default]
    Text,
    /// The file's `"json"`: one object per line, for log pipelines.
    Json,
}

/// A named group of interchangeable backends that routes send traffic to.
///
/// Exists so routes name a role (`sending`, `domains`) and the addresses can
/// change, from the file or `--upstream`, without touching the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamGroup {
    /// `backends`: one or more `HOST:PORT`; a host may be a DNS name, resolved
    /// by the gateway, never here.
    pub backends: Vec<String>,
    /// `connect_timeout_ms`: TCP (and TLS) connect deadline per attempt.
    pub connect_timeout: Duration,
    /// `read_timeout_ms`: longest wait for upstream bytes.
    pub read_timeout: Duration,
    /// `write_timeout_ms`: longest wait to write to the upstream.
    pub write_timeout: Duration,
    /// `idle_timeout_ms`: how long a pooled keep-alive connection may sit idle.
    pub idle_timeout: Duration,
    /// `health_check_interval_ms`: how often backends are probed; `None` (the
    /// file's 0) disables checks and treats every backend as healthy.
    pub health_check_interval: Option<Duration>,
    /// `keepalive_pool`: idle connections kept per group; 0 disables reuse.
    pub keepalive_pool: usize,
}

impl UpstreamGroup {
    /// A group with the given backends and default timeouts; exists for
    /// `--upstream NAME=HOST:PORT` naming a group the file does not have.
    pub fn new(backends: Vec<String>) -> Self {
        UpstreamGroup {
            backends,
            connect_timeout: Duration::from_millis(2000),
            read_timeout: Duration::from_millis(30_000),
            write_timeout: Duration::from_millis(30_000),
            idle_timeout: Duration::from_millis(60_000),
            health_check_interval: Some(Duration::from_millis(1000)),
            keepalive_pool: 128,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_is_shown_without_its_password() {
        let mut c = Config::default();
        assert!(!c.store_is_postgres());
        assert_eq!(c.store_display(), "scopegate.db");
        c.store = "postgres://sg:s3cr%40t@db.internal:5432/keys".into();
        assert!(c.store_is_postgres());
        assert_eq!(c.store_display(), "postgres://sg:***@db.internal:5432/keys");
        c.store = "postgresql://sg@db/keys".into();
        assert_eq!(c.store_display(), "postgresql://sg@db/keys");
    }

    #[test]
    fn effective_threads_resolves_zero_to_the_cpu_count() {
        let mut config = Config::default();
        assert!(config.effective_threads() >= 1);
        config.threads = 3;
        assert_eq!(config.effective_threads(), 3);
    }
}
