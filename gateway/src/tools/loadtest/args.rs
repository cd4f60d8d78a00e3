//! `scopegate loadtest`'s arguments.

use std::path::PathBuf;

use super::mix::DEFAULT_MIX;

/// `scopegate loadtest`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// Valid keys in the population (a reused --store is topped up to this many).
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Keep-alive connections of the load client.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Percent of requests per category: valid, revoked, expired,
    /// out_of_scope, malformed, unknown (missing ones are 0; sum 100).
    #[arg(long, default_value = DEFAULT_MIX)]
    pub mix: String,
    /// Valid keys revoked per second while the load runs, through the same
    /// KeyStore::revoke_key the admin API calls.
    #[arg(long, default_value_t = 20.0)]
    pub revocations_per_sec: f64,
    /// SQLite store to create, or reuse, and keep (the population's secrets
    /// go to PATH.loadtest beside it; the pepper comes from SCOPEGATE_PEPPER).
    /// Default: a temporary store, removed afterwards.
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Use this config's routes, key headers and limits; its upstream groups
    /// are replaced by the auditing upstream and its listeners by free
    /// loopback ports.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the summary as one JSON object (and no progress).
    #[arg(long)]
    pub json: bool,
    /// Write the valid keys, one per line (`SECRET DOMAIN rw|r`: a domain the
    /// key covers and its level there), e.g. for benches/wrk/*.lua.
    #[arg(long, value_name = "FILE")]
    pub export_secrets: Option<PathBuf>,
    /// Create or load the population (and export it), then exit without load.
    #[arg(long, requires = "store")]
    pub populate_only: bool,
    /// Gateway worker threads (default: the config's, else one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Open-loop load at this many requests per second in total, spread
    /// evenly over the connections; latency is measured from each request's
    /// scheduled time, so a stall counts against every request it delays.
    /// Default: closed loop, each connection as fast as it can.
    #[arg(long, value_name = "REQ_PER_SEC")]
    pub rate: Option<f64>,
    /// BENCHMARKS ONLY: run the gateway with no key check at all (plain
    /// Pingora), to measure what enforcement adds at the same load. Needs
    /// `--mix valid=100 --revocations-per-sec 0`; the audit is meaningless.
    #[arg(long, hide = true)]
    pub bench_passthrough: bool,
    /// Load-client worker threads.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Stop early after this many requests (bounds the memory of the audit).
    #[arg(long, default_value_t = 5_000_000)]
    pub max_requests: u64,
    /// Run N `scopegate serve` processes on the one store (SQLite file or
    /// postgres:// URL) instead of one gateway in this process: the load is
    /// spread over them, revocations go through a random instance's admin
    /// API, and the report adds how long each took to reach every instance.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub fleet: usize,
    /// Seed of the request generator (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}
