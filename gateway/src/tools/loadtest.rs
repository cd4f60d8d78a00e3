//! `scopegate loadtest`: load-test key checks against a real gateway and
//! prove, request by request, that nothing got through that should not have.
//!
//! One run, all in this process and on 127.0.0.1:
//!
//! 1. a **population** in a store: organisation `loadtest` with eight domains,
//!    a few hundred users in the guide's roles, `--keys` valid keys spread over
//!    them, and dedicated keys that are revoked (directly, or because their
//!    creator was offboarded), expired, or out of scope for the domain they
//!    are used on; malformed keys (checksum-broken `sg_` strings) and unknown
//!    ones (well-formed, never issued) are made up at run time;
//! 2. the **gateway** itself ([`crate::server::run_with_state`] on a plain
//!    thread, stopped through its handle), with the routes, keys and limits of
//!    `--config` when given and its upstream groups pointed at
//! 3. an **auditing upstream**: a tiny HTTP/1.1 server that answers 200 and
//!    records, for every request it receives, the `X-Scopegate-Key-Id` the
//!    gateway added and the `X-Loadtest-Seq` the load client put on it;
//! 4. the **load**: `--connections` keep-alive connections from a hand-written
//!    client on its own tokio runtime, each request picking a category by
//!    `--mix` and a key at random, `GET /domains/{domain}` on a domain the
//!    valid keys cover and the out-of-scope keys do not;
//! 5. **revocations while the load runs**: `--revocations-per-sec` valid keys
//!    are revoked through [`KeyStore::revoke_key`] on the gateway's own store,
//!    as the admin API does, and the instant each call returned is kept; a
//!    fifth of the valid requests use keys that are about to be, or were just,
//!    revoked, so the race is exercised on every run.
//!
//! Afterwards every request the upstream received is checked against the
//! ground truth: it **leaked** if its key was never valid, or if the client
//! sent it after its key's revocation had returned. The other direction is
//! checked too: a valid request the gateway refused is a **false refusal**,
//! except for requests in flight while their key was being revoked, which may
//! go either way. The exit code is 1 when anything leaked.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use scopegate_config::{AccessLog, Config, ProcessEnv, Secrets};
use scopegate_keystore::{secret, Access, DomainInput, KeyStore, NewKey, Pepper, Role, UserInput};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::server::{self, Launch, Stop};

/// The default `--mix`.
pub const DEFAULT_MIX: &str = "valid=70,revoked=10,expired=5,out_of_scope=10,malformed=5";

/// The organisation of every load-test population.
pub const ORG: &str = "loadtest";

/// Domains of the organisation (numeric ids 1000..).
pub const DOMAINS: [&str; 8] = [
    "example.com",
    "staging.example.com",
    "client-a.com",
    "client-b.com",
    "mail.client-b.com",
    "news.example.com",
    "eu.example.com",
    "us.example.com",
];

/// Users: one owner, two admins, the rest members.
pub const USERS: usize = 300;

/// Users offboarded (deactivated) before the run; their keys are part of
/// the `revoked` category.
const OFFBOARDED: usize = 2;

/// Keys created per commit.
const BATCH: usize = 50_000;

/// The header carrying the client's per-request sequence number.
pub const SEQ_HEADER: &str = "X-Loadtest-Seq";

/// Who the audit trail names for the load test's own changes.
const ACTOR: &str = "loadtest";

/// Bits of a sequence number that count requests within one connection.
const SEQ_BITS: u32 = 40;

/// A request without an answer after this long counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Seed of the request generator (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

// ---------------------------------------------------------------------------
// Categories and the mix

/// What a request's key is, and so what the gateway must do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// Live and in scope: admitted (until revoked during the run).
    Valid = 0,
    /// Revoked before the run, directly or by offboarding its creator: 401.
    Revoked = 1,
    /// Expired before the run: 401.
    Expired = 2,
    /// Live, used on a domain outside its scope: 404.
    OutOfScope = 3,
    /// A checksum-broken `sg_` string: 401 without hashing.
    Malformed = 4,
    /// Well-formed but never issued: 401 after the lookup.
    Unknown = 5,
}

/// Every category, in report order.
pub const CATEGORIES: [Category; 6] = [
    Category::Valid,
    Category::Revoked,
    Category::Expired,
    Category::OutOfScope,
    Category::Malformed,
    Category::Unknown,
];

impl Category {
    /// The name used in `--mix`, the report and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Category::Valid => "valid",
            Category::Revoked => "revoked",
            Category::Expired => "expired",
            Category::OutOfScope => "out_of_scope",
            Category::Malformed => "malformed",
            Category::Unknown => "unknown",
        }
    }

    /// The status the gateway must answer a request of this category with
    /// when it refuses it.
    pub fn refusal_status(self) -> u16 {
        match self {
            Category::OutOfScope => 404,
            _ => 401,
        }
    }

    fn from_name(s: &str) -> Option<Category> {
        CATEGORIES.iter().copied().find(|c| c.name() == s)
    }
}

/// Percent of requests per category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix(pub [u32; 6]);

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut m = [0u32; 6];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, pct) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected CATEGORY=PERCENT"))?;
            let c = Category::from_name(name.trim()).ok_or_else(|| {
                format!(
                    "unknown category {name:?}; known: {}",
                    CATEGORIES.map(Category::name).join(", ")
                )
            })?;
            m[c as usize] = pct
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the percent must be a whole number"))?;
        }
        let sum: u32 = m.iter().sum();
        if sum != 100 {
            return Err(format!("the mix adds up to {sum}%, not 100%"));
        }
        Ok(Mix(m))
    }
}

impl Mix {
    /// The category for a uniform number in 0..100.
    fn pick(&self, r: u32) -> Category {
        let mut acc = 0;
        for c in CATEGORIES {
            acc += self.0[c as usize];
            if r < acc {
                return c;
            }
        }
        Category::Valid
    }
}

// ---------------------------------------------------------------------------
// A small, fast, seedable random generator (SplitMix64)

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

fn random_seed() -> u64 {
    let h = blake3::hash(secret::generate().as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

// ---------------------------------------------------------------------------
// The population

/// One key of the population.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PopKey {
    /// The secret as presented.
    pub secret: String,
    /// Its public id as a number (0 for keys that were never issued).
    pub id: u64,
    /// Index into [`DOMAINS`]: the domain requests with this key target.
    pub domain: u8,
    /// Whether the key may write that domain (a read-only key may not send).
    pub rw: bool,
}

/// Keys by category.
#[derive(Default)]
pub struct Population {
    /// Indexed by `Category as usize`.
    pub pools: [Vec<PopKey>; 6],
    /// Users in the organisation.
    pub users: usize,
}

impl Population {
    fn pool(&self, c: Category) -> &Vec<PopKey> {
        &self.pools[c as usize]
    }
    fn pool_mut(&mut self, c: Category) -> &mut Vec<PopKey> {
        &mut self.pools[c as usize]
    }
}

/// How many dedicated keys each refusal category gets for `n` valid keys.
fn dedicated(n: usize) -> usize {
    (n / 20).clamp(20, 20_000)
}

fn user_id(i: usize) -> String {
    format!("user{i}@loadtest.example")
}

fn offboarded_id(i: usize) -> String {
    format!("offboarded{i}@loadtest.example")
}

fn member_access(u: usize) -> std::collections::BTreeMap<String, Access> {
    let mut access = std::collections::BTreeMap::new();
    access.insert(DOMAINS[u % 8].to_string(), Access::ReadWrite);
    access.insert(DOMAINS[(u + 1) % 8].to_string(), Access::ReadWrite);
    access.insert(DOMAINS[(u + 2) % 8].to_string(), Access::Read);
    access
}

/// A member user index (3..USERS) for the k-th key of some kind.
fn member_for(k: usize) -> usize {
    3 + (k * 7) % (USERS - 3)
}

/// The plan of the k-th valid key: the key to create, the domain requests
/// use, and whether the key writes it. Owners' and admins' keys are org-wide;
/// members' cover one or two of their writable domains, some read-only.
fn valid_plan(k: usize) -> (NewKey, u8, bool) {
    let u = k % USERS;
    if u < 3 {
        let key = NewKey {
            user: user_id(u),
            org_wide: true,
            ..NewKey::default()
        };
        return (key, (k % 8) as u8, true);
    }
    let (a, b) = (u % 8, (u + 1) % 8);
    match k % 3 {
        0 => {
            let d = [a, b][(k / 3) % 2];
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[a].into(), DOMAINS[b].into()]),
                ..NewKey::default()
            };
            (key, d as u8, true)
        }
        1 => {
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[a].into()]),
                ..NewKey::default()
            };
            (key, a as u8, true)
        }
        _ => {
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[b].into()]),
                access: Some(Access::Read),
                ..NewKey::default()
            };
            (key, b as u8, false)
        }
    }
}

fn say(quiet: bool, msg: std::fmt::Arguments<'_>) {
    if !quiet {
        eprintln!("{msg}");
    }
}

/// Creates keys in commits of [`BATCH`], returning them with their plans.
fn create_batched(
    ks: &KeyStore,
    plans: Vec<(NewKey, u8, bool)>,
    now: i64,
    quiet: bool,
    what: &str,
) -> anyhow::Result<Vec<PopKey>> {
    let total = plans.len();
    let mut out = Vec::with_capacity(total);
    let mut plans = plans.into_iter().peekable();
    let started = Instant::now();
    let mut last_report = Instant::now();
    while plans.peek().is_some() {
        let batch: Vec<(NewKey, u8, bool)> = plans.by_ref().take(BATCH).collect();
        let meta: Vec<(u8, bool)> = batch.iter().map(|(_, d, rw)| (*d, *rw)).collect();
        let keys: Vec<NewKey> = batch.into_iter().map(|(k, _, _)| k).collect();
        let created = ks
            .create_keys(ACTOR, ORG, keys, now)
            .with_context(|| format!("creating {what} keys"))?
            .value;
        for (c, (domain, rw)) in created.into_iter().zip(meta) {
            let id = secret::parse_id(&c.meta.id).context("an issued key id")?;
            out.push(PopKey {
                secret: c.secret,
                id,
                domain,
                rw,
            });
        }
        if total > BATCH && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            say(
                quiet,
                format_args!(
                    "  {what} keys: {} of {total} ({:.1} s)",
                    out.len(),
                    started.elapsed().as_secs_f64()
                ),
            );
        }
    }
    Ok(out)
}

/// Creates the organisation, users and keys in an empty store. Returns the
/// population and the instant (Unix seconds) from which the `expired` keys
/// are expired.
fn create_population(ks: &KeyStore, n: usize, quiet: bool) -> anyhow::Result<(Population, i64)> {
    let domains: Vec<DomainInput> = DOMAINS
        .iter()
        .enumerate()
        .map(|(i, d)| DomainInput {
            name: d.to_string(),
            id: Some(1000 + i as u64),
        })
        .collect();
    ks.put_org(ACTOR, ORG, &domains)
        .context("creating the organisation")?;
    for i in 0..USERS {
        let role = match i {
            0 => Role::Owner,
            1 | 2 => Role::Admin,
            _ => Role::Member,
        };
        let access = if role == Role::Member {
            member_access(i)
        } else {
            Default::default()
        };
        let input = UserInput {
            role,
            access,
            status: None,
        };
        ks.put_user(ACTOR, ORG, &user_id(i), input)
            .context("creating a user")?;
    }
    for i in 0..OFFBOARDED {
        let input = UserInput {
            role: Role::Member,
            access: member_access(i),
            status: None,
        };
        ks.put_user(ACTOR, ORG, &offboarded_id(i), input)
            .context("creating a user")?;
    }
    let extra = dedicated(n);
    let mut pop = Population {
        users: USERS + OFFBOARDED,
        ..Population::default()
    };

    // Expired keys first: they expire one second after creation, which has
    // passed by the time everything else is made.
    let now = scopegate_keystore::time::now();
    let expires_at = now + 1;
    let plans = (0..extra)
        .map(|k| {
            let u = member_for(k);
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[u % 8].into()]),
                expires_at: Some(expires_at),
                name: Some("loadtest expired".into()),
                ..NewKey::default()
            };
            (key, (u % 8) as u8, true)
        })
        .collect();
    *pop.pool_mut(Category::Expired) = create_batched(ks, plans, now, quiet, "expired")?;

    let plans = (0..n).map(valid_plan).collect();
    *pop.pool_mut(Category::Valid) = create_batched(ks, plans, now, quiet, "valid")?;

    // Out of scope: a key covering one writable domain, used on the domain
    // its creator only reads, or on one the creator has no access to.
    let plans = (0..extra)
        .map(|k| {
            let u = member_for(k + 1);
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[u % 8].into()]),
                name: Some("loadtest out of scope".into()),
                ..NewKey::default()
            };
            let other = if k % 2 == 0 { (u + 2) % 8 } else { (u + 4) % 8 };
            (key, other as u8, false)
        })
        .collect();
    *pop.pool_mut(Category::OutOfScope) = create_batched(ks, plans, now, quiet, "out-of-scope")?;

    // Revoked: some one by one (as `DELETE /v1/keys/{id}`), the rest by
    // offboarding their creators (as `POST …/deactivate`).
    let direct = extra.min(100);
    let plans = (0..extra)
        .map(|k| {
            let (user, u) = if k < direct {
                let u = member_for(k + 2);
                (user_id(u), u)
            } else {
                let i = k % OFFBOARDED;
                (offboarded_id(i), i)
            };
            let key = NewKey {
                user,
                domains: Some(vec![DOMAINS[u % 8].into()]),
                name: Some("loadtest revoked".into()),
                ..NewKey::default()
            };
            (key, (u % 8) as u8, true)
        })
        .collect();
    let revoked = create_batched(ks, plans, now, quiet, "revoked")?;
    for k in &revoked[..direct] {
        ks.revoke_key(ACTOR, &secret::format_id(k.id), now)
            .context("revoking a key")?;
    }
    for i in 0..OFFBOARDED {
        ks.deactivate_user(ACTOR, ORG, &offboarded_id(i))
            .context("offboarding a user")?;
    }
    *pop.pool_mut(Category::Revoked) = revoked;
    Ok((pop, expires_at))
}

/// Made-up keys: checksum-broken `sg_` strings from valid ones, and
/// well-formed secrets nobody issued.
fn made_up_keys(pop: &mut Population, n: usize, rng: &mut Rng) {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let valid = pop.pool(Category::Valid);
    let mut malformed = Vec::with_capacity(n);
    while malformed.len() < n && !valid.is_empty() {
        let base = &valid[rng.below(valid.len())];
        let mut bytes = base.secret.clone().into_bytes();
        if rng.below(4) == 0 {
            bytes.pop();
        } else if bytes.len() > secret::PREFIX.len() {
            let at = secret::PREFIX.len() + rng.below(bytes.len() - secret::PREFIX.len());
            let mut c = BASE62[rng.below(62)];
            while c == bytes[at] {
                c = BASE62[rng.below(62)];
            }
            bytes[at] = c;
        }
        let s = String::from_utf8(bytes).expect("ASCII");
        if secret::classify(&s).is_err() {
            malformed.push(PopKey {
                secret: s,
                id: 0,
                domain: base.domain,
                rw: base.rw,
            });
        }
    }
    let unknown = (0..n)
        .map(|i| PopKey {
            secret: secret::generate(),
            id: 0,
            domain: (i % 8) as u8,
            rw: true,
        })
        .collect();
    *pop.pool_mut(Category::Malformed) = malformed;
    *pop.pool_mut(Category::Unknown) = unknown;
}

/// The population file beside a kept store.
fn sidecar_path(store: &Path) -> PathBuf {
    let mut s = store.as_os_str().to_owned();
    s.push(".loadtest");
    PathBuf::from(s)
}

const SIDECAR_MAGIC: &str = "scopegate-loadtest-population v1";

/// Creates a file only the owner can read (it holds secrets).
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn write_sidecar(path: &Path, pop: &Population, fingerprint: &str) -> anyhow::Result<()> {
    let mut w = BufWriter::new(create_private(path)?);
    writeln!(w, "{SIDECAR_MAGIC} org={ORG} pepper={fingerprint}")?;
    for c in [
        Category::Valid,
        Category::Revoked,
        Category::Expired,
        Category::OutOfScope,
    ] {
        for k in pop.pool(c) {
            writeln!(
                w,
                "{} {} {:016x} {} {}",
                c.name(),
                k.secret,
                k.id,
                k.domain,
                if k.rw { "rw" } else { "r" }
            )?;
        }
    }
    w.flush()?;
    Ok(())
}

fn read_sidecar(path: &Path, fingerprint: &str) -> anyhow::Result<Population> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = BufReader::new(f).lines();
    let head = lines.next().transpose()?.unwrap_or_default();
    ensure!(
        head.starts_with(SIDECAR_MAGIC),
        "{} is not a load-test population file",
        path.display()
    );
    ensure!(
        head.ends_with(&format!("pepper={fingerprint}")),
        "{} was made with another pepper: set SCOPEGATE_PEPPER to the one used then",
        path.display()
    );
    let mut pop = Population {
        users: USERS + OFFBOARDED,
        ..Population::default()
    };
    for (i, line) in lines.enumerate() {
        let line = line?;
        let f: Vec<&str> = line.split(' ').collect();
        let bad = || format!("{} line {}: malformed", path.display(), i + 2);
        ensure!(f.len() == 5, bad());
        let c = Category::from_name(f[0]).with_context(bad)?;
        let key = PopKey {
            secret: f[1].to_string(),
            id: u64::from_str_radix(f[2], 16).ok().with_context(bad)?,
            domain: f[3].parse().ok().filter(|d| *d < 8).with_context(bad)?,
            rw: f[4] == "rw",
        };
        pop.pool_mut(c).push(key);
    }
    Ok(pop)
}

/// Loads a kept population and reclassifies it by what the store itself
/// says (a key revoked by an earlier run is `revoked` now).
fn load_population(ks: &KeyStore, path: &Path, fingerprint: &str) -> anyhow::Result<Population> {
    let mut pop = read_sidecar(path, fingerprint)?;
    let now = scopegate_keystore::time::now();
    let states: HashMap<u64, &'static str> = ks
        .list_keys(ORG, None, now)
        .context("listing the store's keys")?
        .into_iter()
        .filter_map(|m| Some((secret::parse_id(&m.id)?, m.state)))
        .collect();
    let valid = std::mem::take(pop.pool_mut(Category::Valid));
    for k in valid {
        match states.get(&k.id) {
            Some(&"active") => pop.pool_mut(Category::Valid).push(k),
            Some(&"revoked") => pop.pool_mut(Category::Revoked).push(k),
            Some(&"expired") => pop.pool_mut(Category::Expired).push(k),
            _ => bail!(
                "key {} of {} is not in the store: the files do not belong together",
                secret::format_id(k.id),
                path.display()
            ),
        }
    }
    for c in [Category::Revoked, Category::OutOfScope, Category::Expired] {
        for k in pop.pool(c) {
            ensure!(
                states.contains_key(&k.id),
                "key {} of {} is not in the store",
                secret::format_id(k.id),
                path.display()
            );
        }
    }
    Ok(pop)
}

/// Waits until every `expired` key of the store is expired (at most a few
/// seconds after their creation).
fn wait_expired(ks: &KeyStore, pop: &Population) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = scopegate_keystore::time::now();
        let mut all = true;
        for k in pop.pool(Category::Expired) {
            let meta = ks.get_key(&secret::format_id(k.id), now)?;
            if meta.state == "active" {
                all = false;
                break;
            }
        }
        if all {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the expired keys did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the valid keys for wrk: `SECRET DOMAIN rw|r` per line.
fn export_secrets(path: &Path, pop: &Population) -> anyhow::Result<()> {
    let mut w = BufWriter::new(create_private(path)?);
    for k in pop.pool(Category::Valid) {
        writeln!(
            w,
            "{} {} {}",
            k.secret,
            DOMAINS[k.domain as usize],
            if k.rw { "rw" } else { "r" }
        )?;
    }
    w.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Latency histogram: log buckets with 32 sub-buckets per power of two (~3%)

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) << SUB_BITS;

/// A lock-free latency histogram in nanoseconds.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) & (SUB - 1);
    (((msb - SUB_BITS + 1) as usize) << SUB_BITS) + sub as usize
}

/// The largest value of a bucket.
fn bucket_high(i: usize) -> u64 {
    let (block, sub) = (i >> SUB_BITS, (i as u64) & (SUB - 1));
    if block == 0 {
        return sub;
    }
    let shift = block as u32 - 1;
    ((SUB + sub + 1) << shift) - 1
}

impl Histogram {
    /// Counts one value.
    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The largest value so far.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

/// The q-quantile (0..=1) of bucket counts, as the bucket's upper bound.
pub fn quantile(counts: &[u64], q: f64, max: u64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return bucket_high(i).min(max);
        }
    }
    max
}

// ---------------------------------------------------------------------------
// The auditing upstream

/// What the upstream saw of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamRecord {
    /// The client's sequence number, if the header was there and numeric.
    pub seq: Option<u64>,
    /// The key id the gateway named, if the header was there and parsed.
    pub key_id: Option<u64>,
}

/// A minimal HTTP/1.1 server on its own thread that answers every request
/// with a small 200 and records [`UpstreamRecord`]s.
struct Recorder {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<UpstreamRecord>>>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

const UPSTREAM_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"upstream\":\"audit\"}\n";

impl Recorder {
    fn start(key_id_header: &str) -> anyhow::Result<Recorder> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _g = rt.enter();
            let s = tokio::net::TcpSocket::new_v4()?;
            s.set_reuseaddr(true)?;
            s.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            s.listen(1024)?
        };
        let addr = listener.local_addr()?;
        let records = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let (stop, stop_rx) = watch::channel(false);
        let r = Arc::clone(&records);
        let names = Arc::new((
            SEQ_HEADER.to_ascii_lowercase(),
            key_id_header.to_ascii_lowercase(),
        ));
        let thread = std::thread::Builder::new()
            .name("loadtest-upstream".into())
            .spawn(move || {
                rt.block_on(recorder_accept(listener, r, names, stop_rx));
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Recorder {
            addr,
            records,
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) -> Vec<UpstreamRecord> {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn recorder_accept(
    listener: TcpListener,
    records: Arc<Mutex<Vec<UpstreamRecord>>>,
    names: Arc<(String, String)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        if let Ok((stream, _)) = accepted {
            let _ = stream.set_nodelay(true);
            let records = Arc::clone(&records);
            let names = Arc::clone(&names);
            tokio::spawn(recorder_conn(stream, records, names, stop.clone()));
        }
    }
}

/// The end of the header block (index after `\r\n\r\n`), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

/// The header lines of a head (after the first line), as name/value pairs.
fn header_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|b| *b == b'\n').skip(1).filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|b| *b == b':')?;
        Some((line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()))
    })
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

async fn recorder_conn(
    mut stream: TcpStream,
    records: Arc<Mutex<Vec<UpstreamRecord>>>,
    names: Arc<(String, String)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 8192];
    let mut filled = 0;
    let mut scanned = 0;
    loop {
        // Serve every complete request in the buffer.
        while let Some(end) = head_end(&buf[..filled], scanned) {
            let mut rec = UpstreamRecord {
                seq: None,
                key_id: None,
            };
            let mut body = 0usize;
            let mut close = false;
            let mut chunked = false;
            for (n, v) in header_lines(&buf[..end]) {
                if n.eq_ignore_ascii_case(names.0.as_bytes()) {
                    rec.seq = parse_u64(v);
                } else if n.eq_ignore_ascii_case(names.1.as_bytes()) {
                    rec.key_id = std::str::from_utf8(v).ok().and_then(secret::parse_id);
                } else if n.eq_ignore_ascii_case(b"content-length") {
                    body = parse_u64(v).unwrap_or(0) as usize;
                } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                    chunked = true;
                } else if n.eq_ignore_ascii_case(b"connection") {
                    close = v.eq_ignore_ascii_case(b"close");
                }
            }
            if chunked {
                // Never sent by the gateway for the load test's GETs.
                let _ = stream
                    .write_all(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            }
            let total = end + body;
            if buf.len() < total {
                buf.resize(total, 0);
            }
            while filled < total {
                match stream.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => filled += n,
                }
            }
            records.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
            buf.copy_within(total..filled, 0);
            filled -= total;
            scanned = 0;
            if stream.write_all(UPSTREAM_ANSWER).await.is_err() || close {
                return;
            }
        }
        scanned = filled.saturating_sub(3);
        if filled == buf.len() {
            if buf.len() >= 1 << 20 {
                return;
            }
            buf.resize(buf.len() * 2, 0);
        }
        tokio::select! {
            r = stream.read(&mut buf[filled..]) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

// ---------------------------------------------------------------------------
// The audit: pure, so a test can feed it a made-up run

/// One request as the client sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRecord {
    /// Nanoseconds since the run started, taken just before the write.
    pub send_ns: u64,
    /// When the answer was complete (or the request failed).
    pub recv_ns: u64,
    /// Index of the key in its category's pool.
    pub key: u32,
    /// HTTP status; 0 for a transport error or timeout.
    pub status: u16,
    /// The key's category.
    pub cat: Category,
}

/// One revocation done during the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Index of the key in the valid pool.
    pub key: u32,
    /// Just before `revoke_key` was called.
    pub start_ns: u64,
    /// Just after it returned.
    pub end_ns: u64,
}

/// The sequence number of request `i` of connection `conn`.
pub fn seq_of(conn: usize, i: usize) -> u64 {
    ((conn as u64) << SEQ_BITS) | i as u64
}

/// Counts of one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CategoryCounts {
    /// Requests sent.
    pub requests: u64,
    /// Requests the upstream received.
    pub admitted: u64,
    /// Requests the gateway answered itself with a 4xx.
    pub refused: u64,
    /// Transport errors, timeouts and 5xx answers.
    pub errors: u64,
    /// Refusals with another status than the category's.
    pub unexpected_status: u64,
}

/// What the audit found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Per category, indexed by `Category as usize`.
    pub categories: [CategoryCounts; 6],
    /// Requests the upstream received that it must never have: the sum of
    /// the three kinds below.
    pub leaked: u64,
    /// … with a key that was invalid, expired, out of scope or malformed from the start.
    pub leaked_invalid: u64,
    /// … sent after its key's revocation had returned.
    pub leaked_after_revocation: u64,
    /// … that the client never sent (no or unknown sequence number).
    pub unattributed: u64,
    /// Received with another key id than the key the client used.
    pub misattributed: u64,
    /// The same request received more than once (a gateway retry).
    pub upstream_duplicates: u64,
    /// Requests the upstream received, in all.
    pub upstream_received: u64,
    /// Valid requests refused although their key was live throughout.
    pub false_refusals: u64,
    /// Valid requests sent after their key's revocation returned (all must be refused).
    pub sent_after_revocation: u64,
    /// Valid requests in flight while their key was being revoked: admitted …
    pub in_flight_admitted: u64,
    /// … or refused (both are correct).
    pub in_flight_refused: u64,
    /// Answered 200 by the gateway without reaching the upstream.
    pub answered_without_upstream: u64,
}

impl Audit {
    /// Requests sent, in all.
    pub fn requests(&self) -> u64 {
        self.categories.iter().map(|c| c.requests).sum()
    }
    /// Errors, in all.
    pub fn errors(&self) -> u64 {
        self.categories.iter().map(|c| c.errors).sum()
    }
    /// Whether the run proves what it must: nothing leaked, nothing misattributed.
    pub fn passed(&self) -> bool {
        self.leaked == 0 && self.misattributed == 0
    }
}

/// Checks every request against the ground truth. `conns[c][i]` is request
/// `i` of connection `c`; `key_id(cat, key)` is the id of a pool key (None for
/// made-up keys).
pub fn audit(
    conns: &[Vec<ClientRecord>],
    revocations: &[Revocation],
    upstream: &[UpstreamRecord],
    key_id: impl Fn(Category, u32) -> Option<u64>,
) -> Audit {
    let mut a = Audit::default();
    let revoked: HashMap<u32, Revocation> = revocations.iter().map(|r| (r.key, *r)).collect();
    let mut seen: Vec<Vec<bool>> = conns.iter().map(|c| vec![false; c.len()]).collect();
    let lookup = |seq: u64| -> Option<(usize, usize)> {
        let (c, i) = (
            (seq >> SEQ_BITS) as usize,
            (seq & ((1 << SEQ_BITS) - 1)) as usize,
        );
        (c < conns.len() && i < conns[c].len()).then_some((c, i))
    };

    // What the upstream received.
    for u in upstream {
        a.upstream_received += 1;
        let Some((c, i)) = u.seq.and_then(lookup) else {
            a.unattributed += 1;
            continue;
        };
        if seen[c][i] {
            a.upstream_duplicates += 1;
            continue;
        }
        seen[c][i] = true;
        let r = &conns[c][i];
        if r.cat != Category::Valid {
            a.leaked_invalid += 1;
        } else if revoked.get(&r.key).is_some_and(|v| r.send_ns >= v.end_ns) {
            a.leaked_after_revocation += 1;
        }
        if u.key_id.is_none() || u.key_id != key_id(r.cat, r.key) {
            a.misattributed += 1;
        }
    }
    a.leaked = a.leaked_invalid + a.leaked_after_revocation + a.unattributed;

    // What the client sent.
    for (c, conn) in conns.iter().enumerate() {
        for (i, r) in conn.iter().enumerate() {
            let counts = &mut a.categories[r.cat as usize];
            counts.requests += 1;
            let admitted = seen[c][i];
            let error = r.status == 0 || r.status >= 500;
            if admitted {
                counts.admitted += 1;
            } else if error {
                counts.errors += 1;
            } else if r.status == 200 {
                a.answered_without_upstream += 1;
                counts.errors += 1;
            } else {
                counts.refused += 1;
            }
            let refused = !admitted && !error && r.status != 200;
            let mut expected_refusal = r.cat != Category::Valid;
            if r.cat == Category::Valid {
                match revoked.get(&r.key) {
                    Some(v) if r.send_ns >= v.end_ns => {
                        a.sent_after_revocation += 1;
                        expected_refusal = true;
                    }
                    Some(v) if r.recv_ns >= v.start_ns => {
                        // In flight during the revocation: either is right.
                        if admitted {
                            a.in_flight_admitted += 1;
                        } else if refused {
                            a.in_flight_refused += 1;
                        }
                        continue;
                    }
                    _ => {
                        if refused {
                            a.false_refusals += 1;
                        }
                    }
                }
            }
            if expected_refusal && refused && r.status != r.cat.refusal_status() {
                counts.unexpected_status += 1;
            }
        }
    }
    a
}

// ---------------------------------------------------------------------------
// The load client

/// What every load task shares.
struct Load {
    proxy: SocketAddr,
    start: Instant,
    deadline: Instant,
    mix: Mix,
    pop: Arc<Population>,
    /// Per valid key: when its revocation returned (ns since start), or MAX.
    revoked_end: Vec<AtomicU64>,
    /// Valid keys in the order they get revoked.
    schedule: Vec<u32>,
    /// Revocations begun so far.
    revocations_started: AtomicUsize,
    hist: Histogram,
    sent: AtomicU64,
    max_requests: u64,
    leaked_so_far: AtomicU64,
    errors_so_far: AtomicU64,
    stop: AtomicBool,
    /// `Authorization: Bearer ` (the first configured key header).
    key_prefix: String,
    /// Open loop: seconds between two requests of one connection.
    interval: Option<f64>,
    /// Connections of the load client.
    connections: usize,
}

impl Load {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A category by the mix and a key of it; a fifth of the valid picks
    /// come from the keys around the revocation front.
    fn pick(&self, rng: &mut Rng) -> (Category, u32) {
        let mut cat = self.mix.pick(rng.below(100) as u32);
        if self.pop.pool(cat).is_empty() {
            cat = Category::Valid;
        }
        if cat == Category::Valid && !self.schedule.is_empty() && rng.below(5) == 0 {
            let front = self.revocations_started.load(Ordering::Relaxed);
            let lo = front.saturating_sub(16);
            let hi = (front + 16).min(self.schedule.len());
            if lo < hi {
                return (cat, self.schedule[lo + rng.below(hi - lo)]);
            }
        }
        (cat, rng.below(self.pop.pool(cat).len()) as u32)
    }
}

/// A keep-alive HTTP/1.1 connection that reads Content-Length answers.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

impl Client {
    async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: vec![0; 4096],
            filled: 0,
        })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        if self.filled == self.buf.len() {
            if self.buf.len() >= 1 << 20 {
                return Err(std::io::Error::other("answer too large"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.filled += n;
        Ok(())
    }

    /// Sends `req`, reads the answer; returns its status and whether the
    /// server closes the connection.
    async fn roundtrip(&mut self, req: &[u8]) -> std::io::Result<(u16, bool)> {
        self.stream.write_all(req).await?;
        let mut scanned = 0;
        let end = loop {
            if let Some(end) = head_end(&self.buf[..self.filled], scanned) {
                break end;
            }
            scanned = self.filled.saturating_sub(3);
            self.fill().await?;
        };
        let head = &self.buf[..end];
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let mut len = None;
        let mut close = false;
        for (n, v) in header_lines(head) {
            if n.eq_ignore_ascii_case(b"content-length") {
                len = parse_u64(v).map(|l| l as usize);
            } else if n.eq_ignore_ascii_case(b"connection") {
                close = v.eq_ignore_ascii_case(b"close");
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                return Err(std::io::Error::other("chunked answers are not supported"));
            }
        }
        let len = match (len, status) {
            (Some(l), _) => l,
            (None, 204 | 304) => 0,
            (None, _) => return Err(std::io::Error::other("answer without Content-Length")),
        };
        let total = end + len;
        while self.filled < total {
            self.fill().await?;
        }
        self.buf.copy_within(total..self.filled, 0);
        self.filled -= total;
        Ok((status, close))
    }
}

/// One connection's loop; returns its requests in order.
async fn drive(load: Arc<Load>, conn: usize, seed: u64) -> Vec<ClientRecord> {
    let mut rng = Rng(seed ^ (conn as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut out = Vec::with_capacity(4096);
    let mut client: Option<Client> = None;
    let mut req = Vec::with_capacity(512);
    loop {
        if load.stop.load(Ordering::Relaxed) || Instant::now() >= load.deadline {
            break;
        }
        if load.sent.fetch_add(1, Ordering::Relaxed) >= load.max_requests {
            load.stop.store(true, Ordering::Relaxed);
            break;
        }
        let (cat, key) = load.pick(&mut rng);
        let k = &load.pop.pool(cat)[key as usize];
        req.clear();
        let _ = write!(
            req,
            "GET /domains/{} HTTP/1.1\r\nHost: loadtest.invalid\r\n{}{}\r\n{SEQ_HEADER}: {}\r\n\r\n",
            DOMAINS[k.domain as usize],
            load.key_prefix,
            k.secret,
            seq_of(conn, out.len())
        );
        if client.is_none() {
            client = match Client::connect(load.proxy).await {
                Ok(c) => Some(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    None
                }
            };
        }
        // Open loop: wait for this request's slot, and measure from it.
        let scheduled_ns = match load.interval {
            Some(every) => {
                // Connections start staggered across one interval.
                let offset = every * conn as f64 / load.connections as f64;
                let due = load.start + Duration::from_secs_f64(offset + every * out.len() as f64);
                tokio::time::sleep_until(due.into()).await;
                Some(due.duration_since(load.start).as_nanos() as u64)
            }
            None => None,
        };
        let send_ns = load.now_ns();
        let result = match client.as_mut() {
            Some(c) => tokio::time::timeout(REQUEST_TIMEOUT, c.roundtrip(&req))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        let recv_ns = load.now_ns();
        let status = match result {
            Ok((status, close)) => {
                if close {
                    client = None;
                }
                status
            }
            Err(_) => {
                client = None;
                load.errors_so_far.fetch_add(1, Ordering::Relaxed);
                0
            }
        };
        load.hist
            .record(recv_ns - scheduled_ns.unwrap_or(send_ns).min(send_ns));
        if status == 200 {
            let after_revocation = cat == Category::Valid
                && send_ns >= load.revoked_end[key as usize].load(Ordering::Acquire);
            if cat != Category::Valid || after_revocation {
                load.leaked_so_far.fetch_add(1, Ordering::Relaxed);
            }
        }
        out.push(ClientRecord {
            send_ns,
            recv_ns,
            key,
            status,
            cat,
        });
    }
    out
}

/// Revokes `schedule` keys at `rate` per second until the deadline.
fn revoker(
    ks: Arc<KeyStore>,
    load: Arc<Load>,
    rate: f64,
) -> anyhow::Result<(Vec<Revocation>, Vec<u64>)> {
    let mut done = Vec::new();
    let mut took = Vec::new();
    let valid = load.pop.pool(Category::Valid);
    for (i, &key) in load.schedule.iter().enumerate() {
        let at = load.start + Duration::from_secs_f64(i as f64 / rate);
        if at >= load.deadline || load.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let id = secret::format_id(valid[key as usize].id);
        load.revocations_started.store(i + 1, Ordering::Relaxed);
        let start_ns = load.now_ns();
        ks.revoke_key(ACTOR, &id, scopegate_keystore::time::now())
            .with_context(|| format!("revoking {id}"))?;
        let end_ns = load.now_ns();
        load.revoked_end[key as usize].store(end_ns, Ordering::Release);
        took.push(end_ns - start_ns);
        done.push(Revocation {
            key,
            start_ns,
            end_ns,
        });
    }
    Ok((done, took))
}

/// Prints one progress line per second until the load stops.
fn progress(load: Arc<Load>, finished: Arc<AtomicBool>) {
    let mut last = 0u64;
    let mut tick = 1u64;
    while !finished.load(Ordering::Relaxed) {
        let at = load.start + Duration::from_secs(tick);
        while Instant::now() < at {
            if finished.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let counts = load.hist.counts();
        let total: u64 = counts.iter().sum();
        let max = load.hist.max();
        eprintln!(
            "[{tick:>3}s] {:>7} req/s  p50 {:>7}  p99 {:>7}  revoked {:>5}  errors {}  leaked {}",
            total - last,
            ms(quantile(&counts, 0.50, max)),
            ms(quantile(&counts, 0.99, max)),
            load.revocations_started.load(Ordering::Relaxed),
            load.errors_so_far.load(Ordering::Relaxed),
            load.leaked_so_far.load(Ordering::Relaxed),
        );
        last = total;
        tick += 1;
    }
}

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

// ---------------------------------------------------------------------------
// The in-process gateway

/// Starts the in-process gateway the load runs against.
fn start_gateway(
    config: &Config,
    ks: Arc<KeyStore>,
    pepper: Vec<u8>,
    passthrough: bool,
) -> anyhow::Result<server::Running> {
    server::Running::start(Launch {
        config: config.clone(),
        config_path: None,
        overrides: Default::default(),
        secrets: Secrets {
            pepper,
            admin_tokens: Vec::new(),
        },
        keystore: ks,
        passthrough: passthrough.then(|| "domains".to_string()),
    })
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(server::free_loopback_port()?)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("scopegate-loadtest-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// The command

fn validate(args: &LoadtestArgs) -> anyhow::Result<Mix> {
    if args.bench_passthrough {
        ensure!(
            args.revocations_per_sec == 0.0 && args.mix.replace(' ', "") == "valid=100",
            "--bench-passthrough checks nothing: use it with --mix valid=100 --revocations-per-sec 0"
        );
    }
    if let Some(r) = args.rate {
        ensure!(
            r.is_finite() && r > 0.0,
            "--rate must be a positive number of requests per second"
        );
    }
    let mix: Mix = args
        .mix
        .parse()
        .map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
    ensure!(
        (1..=10_000_000).contains(&args.keys),
        "--keys must be 1..=10000000"
    );
    ensure!(
        args.duration > 0.0 && args.duration <= 3600.0,
        "--duration must be more than 0 and at most 3600 seconds"
    );
    ensure!(
        (1..=4096).contains(&args.connections),
        "--connections must be 1..=4096"
    );
    ensure!(
        (0.0..=10_000.0).contains(&args.revocations_per_sec),
        "--revocations-per-sec must be 0..=10000"
    );
    ensure!(
        (1..=64).contains(&args.client_threads),
        "--client-threads must be 1..=64"
    );
    ensure!(
        args.connections < (1 << (64 - SEQ_BITS)) && args.max_requests < (1 << SEQ_BITS),
        "--max-requests is too large"
    );
    Ok(mix)
}

/// The pepper: random for a temporary store (it is thrown away); for a kept
/// store the configured one (SCOPEGATE_PEPPER or the config's pepper_file),
/// which `scopegate serve` on that store will need too.
fn pepper_for(config: &Config, kept: bool) -> anyhow::Result<Vec<u8>> {
    if !kept {
        return Ok(secret::generate().into_bytes());
    }
    // Only the pepper matters here; the admin listener is replaced anyway.
    let mut c = config.clone();
    c.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let secrets = c
        .resolve_secrets(&ProcessEnv)
        .context("a kept --store needs the pepper `scopegate serve` will use")?;
    Ok(secrets.pepper)
}

/// Runs `scopegate loadtest`; the exit code is 1 when a request leaked.
pub fn run(args: LoadtestArgs) -> anyhow::Result<i32> {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let mix = validate(&args)?;
    let quiet = args.json;
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let pepper = pepper_for(&config, args.store.is_some())?;
    let tmp = if args.store.is_some() {
        None
    } else {
        Some(TempDir::new()?)
    };
    let store = match (&args.store, &tmp) {
        (Some(s), _) => s.clone(),
        (None, Some(t)) => t.0.join("loadtest.db"),
        (None, None) => unreachable!("a temporary store without a temporary dir"),
    };
    let existed = store.exists();
    let ks = Arc::new(
        KeyStore::open_sqlite(&store, Pepper::new(&pepper))
            .with_context(|| format!("opening the store {}", store.display()))?,
    );
    let fingerprint = Pepper::new(&pepper).fingerprint();
    let sidecar = sidecar_path(&store);
    let mut seed = args.seed.unwrap_or_else(random_seed);

    // The population.
    let started = Instant::now();
    let mut pop = if existed && sidecar.exists() {
        say(
            quiet,
            format_args!("loading the population of {}", store.display()),
        );
        let mut pop = load_population(&ks, &sidecar, &fingerprint)?;
        let have = pop.pool(Category::Valid).len();
        if have < args.keys {
            say(
                quiet,
                format_args!("topping up: {} more valid keys", args.keys - have),
            );
            let base = pop.pools[..4].iter().map(Vec::len).sum::<usize>();
            let plans = (base..base + args.keys - have).map(valid_plan).collect();
            let more = create_batched(&ks, plans, scopegate_keystore::time::now(), quiet, "valid")?;
            pop.pool_mut(Category::Valid).extend(more);
            write_sidecar(&sidecar, &pop, &fingerprint)?;
        }
        pop
    } else {
        ensure!(
            ks.status().keys == 0 && ks.snapshot().org(ORG).is_none(),
            "{} already holds data but no load-test population ({} is missing): use a new path",
            store.display(),
            sidecar.display()
        );
        say(
            quiet,
            format_args!(
                "creating a population: {} valid keys + {} each revoked, expired, out of scope; {} users",
                args.keys,
                dedicated(args.keys),
                USERS + OFFBOARDED
            ),
        );
        let (pop, _) = create_population(&ks, args.keys, quiet)?;
        if args.store.is_some() {
            write_sidecar(&sidecar, &pop, &fingerprint)?;
        }
        pop
    };
    wait_expired(&ks, &pop)?;
    let made_up = pop.pools[1..4].iter().map(Vec::len).max().unwrap_or(20);
    made_up_keys(&mut pop, made_up, &mut Rng(seed));
    seed = seed.wrapping_add(1);
    let populate_secs = started.elapsed().as_secs_f64();
    say(
        quiet,
        format_args!(
            "population ready in {populate_secs:.1} s: {} valid, {} revoked, {} expired, {} out of scope keys{}",
            pop.pool(Category::Valid).len(),
            pop.pool(Category::Revoked).len(),
            pop.pool(Category::Expired).len(),
            pop.pool(Category::OutOfScope).len(),
            if args.store.is_some() {
                format!("; store {} (kept)", store.display())
            } else {
                String::new()
            }
        ),
    );
    if let Some(path) = &args.export_secrets {
        export_secrets(path, &pop)?;
        say(
            quiet,
            format_args!(
                "wrote {} valid keys to {} (SECRET DOMAIN rw|r per line)",
                pop.pool(Category::Valid).len(),
                path.display()
            ),
        );
    }
    let population_json = json!({
        "valid": pop.pool(Category::Valid).len(),
        "revoked": pop.pool(Category::Revoked).len(),
        "expired": pop.pool(Category::Expired).len(),
        "out_of_scope": pop.pool(Category::OutOfScope).len(),
        "users": pop.users,
        "domains": DOMAINS.len(),
        "seconds": round3(populate_secs),
    });
    if args.populate_only {
        if args.json {
            println!("{}", json!({ "population": population_json }));
        }
        return Ok(0);
    }
    ensure!(
        !pop.pool(Category::Valid).is_empty(),
        "the population has no valid key left"
    );

    // The gateway's config: the user's routes, keys and limits; our ports,
    // store and auditing upstream.
    let key_header = config
        .keys
        .headers
        .first()
        .context("the config reads keys from no header; the load client needs one")?
        .clone();
    let key_prefix = match &key_header.scheme {
        Some(s) => format!("{}: {s} ", key_header.name),
        None => format!("{}: ", key_header.name),
    };
    let prefix = config.keys.identity_prefix.clone();
    ensure!(
        !SEQ_HEADER
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase()),
        "identity_prefix {prefix:?} would strip {SEQ_HEADER}"
    );
    let mut recorder = Recorder::start(&format!("{prefix}Key-Id"))?;
    config.listen = free_port()?;
    config.admin_listen = free_port()?;
    config.store = store.clone();
    config.grace_period = Duration::from_secs(1);
    if let Some(t) = args.threads {
        config.threads = t;
    }
    if matches!(config.log.access_log, AccessLog::Stdout | AccessLog::Stderr) {
        config.log.access_log = AccessLog::Off;
    }
    for g in config.upstreams.values_mut() {
        g.backends = vec![recorder.addr.to_string()];
        g.keepalive_pool = g.keepalive_pool.max(args.connections * 2);
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("the load-test config is invalid: {e}"))?;

    // Pre-flight: the config must admit a valid key and refuse an
    // out-of-scope one on the path the load uses, or the run means nothing.
    for (cat, want) in [(Category::Valid, true), (Category::OutOfScope, false)] {
        let Some(k) = pop.pool(cat).first() else {
            continue;
        };
        let path = format!("/domains/{}", DOMAINS[k.domain as usize]);
        let d = crate::tools::offline::decide(&config, &ks, "GET", &path, &k.secret, b"")?;
        ensure!(
            d.admitted == want,
            "with this config GET {path} with a{} key is {d}: the load test needs the default /domains/{{domain}} route",
            if want { " valid" } else { "n out-of-scope" }
        );
    }

    let gateway_threads = config.effective_threads();
    let mut gateway = start_gateway(&config, Arc::clone(&ks), pepper, args.bench_passthrough)?;

    // The schedule of revocations: distinct random valid keys.
    let valid_n = pop.pool(Category::Valid).len();
    let planned = ((args.revocations_per_sec * args.duration).ceil() as usize).min(valid_n / 2);
    let mut rng = Rng(seed);
    let mut order: Vec<u32> = (0..valid_n as u32).collect();
    for i in 0..planned {
        let j = i + rng.below(valid_n - i);
        order.swap(i, j);
    }
    order.truncate(planned);
    seed = seed.wrapping_add(1);

    let pop = Arc::new(pop);
    let start = Instant::now();
    let load = Arc::new(Load {
        proxy: gateway.proxy,
        start,
        deadline: start + Duration::from_secs_f64(args.duration),
        mix,
        pop: Arc::clone(&pop),
        revoked_end: (0..valid_n).map(|_| AtomicU64::new(u64::MAX)).collect(),
        schedule: order,
        revocations_started: AtomicUsize::new(0),
        hist: Histogram::default(),
        sent: AtomicU64::new(0),
        max_requests: args.max_requests,
        leaked_so_far: AtomicU64::new(0),
        errors_so_far: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        key_prefix,
        interval: args.rate.map(|r| args.connections as f64 / r),
        connections: args.connections,
    });
    say(
        quiet,
        format_args!(
            "load: {} connections for {} s against the gateway on {} ({gateway_threads} worker threads), {} revocations/s",
            args.connections, args.duration, gateway.proxy, args.revocations_per_sec
        ),
    );

    let revoker_thread = (planned > 0).then(|| {
        let (ks, load, rate) = (Arc::clone(&ks), Arc::clone(&load), args.revocations_per_sec);
        std::thread::Builder::new()
            .name("loadtest-revoker".into())
            .spawn(move || revoker(ks, load, rate))
    });
    let revoker_thread = revoker_thread.transpose()?;
    let finished = Arc::new(AtomicBool::new(false));
    let progress_thread = (!quiet).then(|| {
        let (load, finished) = (Arc::clone(&load), Arc::clone(&finished));
        std::thread::spawn(move || progress(load, finished))
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("loadtest-client")
        .enable_all()
        .build()?;
    let conns: Vec<Vec<ClientRecord>> = rt.block_on(async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| tokio::spawn(drive(Arc::clone(&load), c, seed)))
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap_or_default());
        }
        out
    });
    let elapsed = start.elapsed().as_secs_f64();
    let capped = load.sent.load(Ordering::Relaxed) >= args.max_requests;
    load.stop.store(true, Ordering::Relaxed);
    rt.shutdown_timeout(Duration::from_secs(1));
    finished.store(true, Ordering::Relaxed);
    if let Some(t) = progress_thread {
        let _ = t.join();
    }
    let (revocations, took) = match revoker_thread {
        Some(t) => t
            .join()
            .map_err(|_| anyhow::anyhow!("the revoker panicked"))??,
        None => Default::default(),
    };
    // Nothing reaches the upstream once the gateway is gone.
    gateway.shutdown(Stop::Fast)?;
    let upstream = recorder.stop();

    let result = audit(&conns, &revocations, &upstream, |cat, key| {
        pop.pool(cat)
            .get(key as usize)
            .map(|k| k.id)
            .filter(|id| *id != 0)
    });
    let counts = load.hist.counts();
    let max = load.hist.max();
    let mut took_sorted = took.clone();
    took_sorted.sort_unstable();
    let took_q = |q: f64| -> u64 {
        if took_sorted.is_empty() {
            0
        } else {
            took_sorted[((q * took_sorted.len() as f64) as usize).min(took_sorted.len() - 1)]
        }
    };
    let report = Report {
        args: &args,
        mix,
        population: population_json,
        store: args.store.as_ref().map(|_| store.clone()),
        gateway_threads,
        elapsed,
        capped,
        audit: &result,
        latency: [0.5, 0.9, 0.99, 0.999].map(|q| quantile(&counts, q, max)),
        max,
        revocations: revocations.len(),
        planned,
        revoke_p50: took_q(0.5),
        revoke_max: took_sorted.last().copied().unwrap_or(0),
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(if result.passed() || args.bench_passthrough {
        0
    } else {
        1
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms_f(ns: u64) -> f64 {
    round3(ns as f64 / 1e6)
}

struct Report<'a> {
    args: &'a LoadtestArgs,
    mix: Mix,
    population: Value,
    store: Option<PathBuf>,
    gateway_threads: usize,
    elapsed: f64,
    capped: bool,
    audit: &'a Audit,
    latency: [u64; 4],
    max: u64,
    revocations: usize,
    planned: usize,
    revoke_p50: u64,
    revoke_max: u64,
}

impl Report<'_> {
    fn throughput(&self) -> f64 {
        self.audit.requests() as f64 / self.elapsed.max(1e-9)
    }

    fn json(&self) -> Value {
        let a = self.audit;
        let categories: serde_json::Map<String, Value> = CATEGORIES
            .iter()
            .map(|&c| {
                let k = a.categories[c as usize];
                (
                    c.name().to_string(),
                    json!({
                        "percent": self.mix.0[c as usize],
                        "requests": k.requests,
                        "admitted": k.admitted,
                        "refused": k.refused,
                        "errors": k.errors,
                        "unexpected_status": k.unexpected_status,
                    }),
                )
            })
            .collect();
        json!({
            "ok": a.passed(),
            "keys": self.population["valid"],
            "population": self.population,
            "store": self.store.as_ref().map(|p| p.display().to_string()),
            "duration_s": round3(self.elapsed),
            "stopped_at_max_requests": self.capped,
            "connections": self.args.connections,
            "open_loop_rate": self.args.rate,
            "gateway_threads": self.gateway_threads,
            "client_threads": self.args.client_threads,
            "requests": a.requests(),
            "throughput_rps": self.throughput().round(),
            "latency_ms": {
                "p50": ms_f(self.latency[0]),
                "p90": ms_f(self.latency[1]),
                "p99": ms_f(self.latency[2]),
                "p99_9": ms_f(self.latency[3]),
                "max": ms_f(self.max),
            },
            "categories": categories,
            "revocations": self.revocations,
            "revocations_planned": self.planned,
            "revoke_ms": { "p50": ms_f(self.revoke_p50), "max": ms_f(self.revoke_max) },
            "sent_after_revocation": a.sent_after_revocation,
            "in_flight_at_revocation": {
                "admitted": a.in_flight_admitted,
                "refused": a.in_flight_refused,
            },
            "upstream_received": a.upstream_received,
            "upstream_duplicates": a.upstream_duplicates,
            "leaked": a.leaked,
            "leaked_detail": {
                "invalid_from_start": a.leaked_invalid,
                "after_revocation": a.leaked_after_revocation,
                "unattributed": a.unattributed,
            },
            "misattributed": a.misattributed,
            "false_refusals": a.false_refusals,
            "answered_without_upstream": a.answered_without_upstream,
            "errors": a.errors(),
        })
    }

    fn text(&self) -> String {
        let a = self.audit;
        let mut s = String::new();
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "scopegate loadtest: {} connections, {:.1} s, gateway {} worker threads, client {} thread(s), {}, all on 127.0.0.1",
            self.args.connections,
            self.elapsed,
            self.gateway_threads,
            self.args.client_threads,
            match self.args.rate {
                Some(r) => format!("open loop at {r:.0} req/s (latency from each request's scheduled time)"),
                None => "closed loop".to_string(),
            }
        );
        let p = &self.population;
        let _ = writeln!(
            s,
            "population      {} valid keys; {} revoked, {} expired, {} out of scope; {} users, {} domains{}",
            p["valid"], p["revoked"], p["expired"], p["out_of_scope"], p["users"], p["domains"],
            self.store
                .as_ref()
                .map(|p| format!("; store {}", p.display()))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "requests        {} ({:.0} req/s){}",
            a.requests(),
            self.throughput(),
            if self.capped {
                "; stopped early at --max-requests"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "latency         p50 {}  p90 {}  p99 {}  p99.9 {}  max {}   (client side, send to full answer)",
            ms(self.latency[0]),
            ms(self.latency[1]),
            ms(self.latency[2]),
            ms(self.latency[3]),
            ms(self.max)
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<14} {:>4} {:>10} {:>10} {:>10} {:>8} {:>11}   expected",
            "category", "mix", "requests", "admitted", "refused", "errors", "odd status"
        );
        for c in CATEGORIES {
            let k = a.categories[c as usize];
            if k.requests == 0 && self.mix.0[c as usize] == 0 {
                continue;
            }
            let expected = match c {
                Category::Valid => "admitted (refused once revoked)".to_string(),
                _ => format!("refused {}", c.refusal_status()),
            };
            let _ = writeln!(
                s,
                "{:<14} {:>3}% {:>10} {:>10} {:>10} {:>8} {:>11}   {expected}",
                c.name(),
                self.mix.0[c as usize],
                k.requests,
                k.admitted,
                k.refused,
                k.errors,
                k.unexpected_status
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "revocations     {} of {} planned during the load (revoke_key: commit + publish, p50 {}, max {})",
            self.revocations,
            self.planned,
            ms(self.revoke_p50),
            ms(self.revoke_max)
        );
        let _ = writeln!(
            s,
            "                {} requests sent after their key's revocation returned (each must be refused); {} in flight during it ({} admitted, {} refused: either is right)",
            a.sent_after_revocation,
            a.in_flight_admitted + a.in_flight_refused,
            a.in_flight_admitted,
            a.in_flight_refused
        );
        let _ = writeln!(
            s,
            "upstream        received {} requests ({} duplicates from retries)",
            a.upstream_received, a.upstream_duplicates
        );
        let _ = writeln!(
            s,
            "LEAKED          {}   (must be 0: {} with keys invalid from the start, {} after revocation, {} unattributed)",
            a.leaked, a.leaked_invalid, a.leaked_after_revocation, a.unattributed
        );
        let _ = writeln!(
            s,
            "misattributed   {}   (must be 0: upstream saw another key id)",
            a.misattributed
        );
        let _ = writeln!(
            s,
            "false refusals  {}   (valid key, live throughout, refused)",
            a.false_refusals
        );
        let _ = writeln!(
            s,
            "errors          {}   (transport errors, timeouts, 5xx)",
            a.errors()
        );
        let _ = writeln!(
            s,
            "result          {}",
            if self.args.bench_passthrough {
                "NOT AUDITED: --bench-passthrough checked no key (the counts above mean nothing); latency only"
            } else if a.passed() {
                "PASS: every request the upstream received was entitled to it"
            } else {
                "FAIL: the upstream received requests it must never have seen"
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cat: Category, key: u32, send_ns: u64, recv_ns: u64, status: u16) -> ClientRecord {
        ClientRecord {
            send_ns,
            recv_ns,
            key,
            status,
            cat,
        }
    }

    fn up(conn: usize, i: usize, key_id: u64) -> UpstreamRecord {
        UpstreamRecord {
            seq: Some(seq_of(conn, i)),
            key_id: Some(key_id),
        }
    }

    /// Valid keys have id 100 + index; made-up keys none.
    fn ids(cat: Category, key: u32) -> Option<u64> {
        match cat {
            Category::Valid | Category::OutOfScope => Some(100 + key as u64),
            _ => None,
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let conns = vec![vec![
            rec(Category::Valid, 1, 10, 20, 200),
            rec(Category::Revoked, 0, 30, 40, 401),
            rec(Category::OutOfScope, 2, 50, 60, 404),
        ]];
        let a = audit(&conns, &[], &[up(0, 0, 101)], ids);
        assert!(a.passed());
        assert_eq!(a.leaked, 0);
        assert_eq!(a.false_refusals, 0);
        assert_eq!(a.categories[Category::Valid as usize].admitted, 1);
        assert_eq!(a.categories[Category::Revoked as usize].refused, 1);
        assert_eq!(a.requests(), 3);
    }

    #[test]
    fn admitted_after_revocation_returned_is_a_leak() {
        // Key 7 was revoked between 100 and 150; the request was sent at
        // 160, and the (broken) gateway let it through anyway.
        let conns = vec![vec![rec(Category::Valid, 7, 160, 170, 200)]];
        let revs = [Revocation {
            key: 7,
            start_ns: 100,
            end_ns: 150,
        }];
        let a = audit(&conns, &revs, &[up(0, 0, 107)], ids);
        assert_eq!(a.leaked, 1);
        assert_eq!(a.leaked_after_revocation, 1);
        assert_eq!(a.sent_after_revocation, 1);
        assert!(!a.passed());
    }

    #[test]
    fn in_flight_during_revocation_goes_either_way() {
        let revs = [Revocation {
            key: 7,
            start_ns: 100,
            end_ns: 150,
        }];
        let conns = vec![vec![
            rec(Category::Valid, 7, 90, 120, 200),
            rec(Category::Valid, 7, 95, 130, 401),
            rec(Category::Valid, 7, 60, 80, 401),
        ]];
        let a = audit(&conns, &revs, &[up(0, 0, 107)], ids);
        assert!(a.passed());
        assert_eq!(a.in_flight_admitted, 1);
        assert_eq!(a.in_flight_refused, 1);
        // Answered before the revocation began: it had to be admitted.
        assert_eq!(a.false_refusals, 1);
    }

    #[test]
    fn invalid_keys_reaching_the_upstream_leak() {
        let conns = vec![vec![
            rec(Category::Malformed, 0, 10, 20, 200),
            rec(Category::Expired, 0, 30, 40, 200),
        ]];
        let a = audit(&conns, &[], &[up(0, 0, 1), up(0, 1, 2)], ids);
        assert_eq!(a.leaked_invalid, 2);
        assert_eq!(a.leaked, 2);
    }

    #[test]
    fn unattributed_duplicates_and_misattribution() {
        let conns = vec![vec![rec(Category::Valid, 1, 10, 20, 200)]];
        let upstream = [
            up(0, 0, 999), // wrong key id
            up(0, 0, 999), // a retry
            UpstreamRecord {
                seq: None,
                key_id: Some(101),
            },
            up(5, 0, 101), // no such connection
        ];
        let a = audit(&conns, &[], &upstream, ids);
        assert_eq!(a.misattributed, 1);
        assert_eq!(a.upstream_duplicates, 1);
        assert_eq!(a.unattributed, 2);
        assert_eq!(a.leaked, 2);
        assert!(!a.passed());
    }

    #[test]
    fn unexpected_refusal_status_is_counted() {
        let conns = vec![vec![
            rec(Category::OutOfScope, 0, 10, 20, 401),
            rec(Category::Valid, 3, 10, 20, 0),
        ]];
        let a = audit(&conns, &[], &[], ids);
        assert_eq!(
            a.categories[Category::OutOfScope as usize].unexpected_status,
            1
        );
        assert_eq!(a.categories[Category::Valid as usize].errors, 1);
        assert_eq!(a.false_refusals, 0);
    }

    #[test]
    fn mix_parses_and_picks() {
        let m: Mix = DEFAULT_MIX.parse().unwrap();
        assert_eq!(m.0, [70, 10, 5, 10, 5, 0]);
        assert_eq!(m.pick(0), Category::Valid);
        assert_eq!(m.pick(69), Category::Valid);
        assert_eq!(m.pick(70), Category::Revoked);
        assert_eq!(m.pick(99), Category::Malformed);
        assert!("valid=50".parse::<Mix>().is_err());
        assert!("valid=50,bogus=50".parse::<Mix>().is_err());
        assert!("valid=90,unknown=10".parse::<Mix>().is_ok());
    }

    #[test]
    fn histogram_buckets_bound_their_values() {
        for v in [0u64, 1, 31, 32, 33, 1000, 123_456, 10_000_000, u64::MAX / 2] {
            let b = bucket_of(v);
            assert!(bucket_high(b) >= v, "{v}");
            assert!(b == 0 || bucket_high(b - 1) < v, "{v}");
        }
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let c = h.counts();
        let p50 = quantile(&c, 0.5, h.max());
        assert!((500_000..=520_000).contains(&p50), "{p50}");
        assert_eq!(quantile(&c, 1.0, h.max()), 1_000_000);
    }

    #[test]
    fn made_up_keys_are_malformed_or_unknown() {
        let mut pop = Population::default();
        pop.pool_mut(Category::Valid).push(PopKey {
            secret: secret::generate(),
            id: 1,
            domain: 0,
            rw: true,
        });
        made_up_keys(&mut pop, 50, &mut Rng(7));
        assert_eq!(pop.pool(Category::Malformed).len(), 50);
        for k in pop.pool(Category::Malformed) {
            assert!(secret::classify(&k.secret).is_err());
            assert!(k.secret.starts_with(secret::PREFIX));
        }
        for k in pop.pool(Category::Unknown) {
            assert!(secret::classify(&k.secret).is_ok());
        }
    }

    #[test]
    fn population_round_trips_through_its_file() {
        let ks = KeyStore::in_memory(Pepper::new(b"loadtest-test-pepper-0123"));
        let (pop, _) = create_population(&ks, 40, true).unwrap();
        assert_eq!(pop.pool(Category::Valid).len(), 40);
        assert_eq!(pop.pool(Category::Revoked).len(), 20);
        let dir = TempDir::new().unwrap();
        let path = dir.0.join("p.loadtest");
        write_sidecar(&path, &pop, "fp").unwrap();
        let back = read_sidecar(&path, "fp").unwrap();
        assert_eq!(back.pools[..4], pop.pools[..4]);
        assert!(read_sidecar(&path, "other").is_err());
        // The store agrees with the categories.
        let now = scopegate_keystore::time::now() + 5;
        let target = |d: u8| {
            scopegate_keystore::Target::Domain(
                scopegate_keystore::DomainRef::Name(DOMAINS[d as usize]),
                Access::Read,
            )
        };
        for k in pop.pool(Category::Valid) {
            assert!(ks
                .check(Some(&k.secret), target(k.domain), now)
                .outcome
                .is_ok());
        }
        for c in [Category::Revoked, Category::Expired, Category::OutOfScope] {
            for k in pop.pool(c) {
                assert!(ks
                    .check(Some(&k.secret), target(k.domain), now)
                    .outcome
                    .is_err());
            }
        }
    }
}
