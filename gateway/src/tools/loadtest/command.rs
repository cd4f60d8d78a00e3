//! The command itself: its arguments, the in-process gateway, and the run
//! that wires population, upstream, load, audit and report together.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use scopegate_config::{AccessLog, Config, ProcessEnv, Secrets};
use scopegate_keystore::{secret, KeyStore, Pepper};
use serde_json::json;

use super::args::LoadtestArgs;
use super::audit::{audit, ClientRecord, SEQ_BITS};
use super::driver::{drive, progress, revoker, Load, Revoke};
use super::fleet::{Fleet, FleetSpec};
use super::histogram::{quantile, Histogram};
use super::mix::{random_seed, Category, Mix, Rng};
use super::population::{
    create_batched, create_population, dedicated, export_secrets, load_population, made_up_keys,
    say, sidecar_path, valid_plan, wait_expired, write_sidecar, TempDir, DOMAINS, OFFBOARDED, ORG,
    USERS,
};
use super::report::{round3, FleetFigures, Report};
use super::upstream::{Recorder, SEQ_HEADER};
use crate::server::{self, Launch, Stop};

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
    ensure!((1..=16).contains(&args.fleet), "--fleet must be 1..=16");
    ensure!(
        args.fleet == 1 || !args.bench_passthrough,
        "--bench-passthrough runs one gateway in this process; it cannot be combined with --fleet"
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
    let location = store.to_string_lossy().into_owned();
    // A database URL keeps no population sidecar: the run needs an empty one.
    let is_url = scopegate_keystore::postgres::is_url(&location);
    let existed = !is_url && store.exists();
    let shown = Config {
        store: store.clone(),
        ..Config::default()
    }
    .store_display();
    let ks = Arc::new(
        KeyStore::open_location(&location, Pepper::new(&pepper))
            .with_context(|| format!("opening the store {shown}"))?,
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
            "{shown} already holds data but no load-test population{}: use a new {}",
            if is_url {
                String::new()
            } else {
                format!(" ({} is missing)", sidecar.display())
            },
            if is_url { "database" } else { "path" }
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
        if args.store.is_some() && !is_url {
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
                format!("; store {shown} (kept)")
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
    let (mut gateway, fleet) = if args.fleet > 1 {
        say(
            quiet,
            format_args!(
                "starting a fleet of {} scopegate serve processes on {shown}",
                args.fleet
            ),
        );
        let fleet = Fleet::start(FleetSpec {
            size: args.fleet,
            config_file: args.config.as_deref(),
            config: &config,
            store: &location,
            upstream: recorder.addr,
            threads: Some(gateway_threads),
            pepper: &pepper,
            key_prefix: key_prefix.clone(),
        })?;
        (None, Some(Arc::new(fleet)))
    } else {
        let g = start_gateway(&config, Arc::clone(&ks), pepper, args.bench_passthrough)?;
        (Some(g), None)
    };
    let proxies = match (&gateway, &fleet) {
        (Some(g), _) => vec![g.proxy],
        (None, Some(f)) => f.proxies(),
        (None, None) => unreachable!("a gateway or a fleet was started"),
    };

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
        proxies: proxies.clone(),
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
            "load: {} connections for {} s against {} ({gateway_threads} worker threads each), {} revocations/s",
            args.connections,
            args.duration,
            if proxies.len() == 1 {
                format!("the gateway on {}", proxies[0])
            } else {
                format!("{} instances", proxies.len())
            },
            args.revocations_per_sec
        ),
    );

    let revoker_thread = (planned > 0).then(|| {
        let via = match &fleet {
            Some(f) => Revoke::Fleet(Arc::clone(f)),
            None => Revoke::Store(Arc::clone(&ks)),
        };
        let (load, rate) = (Arc::clone(&load), args.revocations_per_sec);
        std::thread::Builder::new()
            .name("loadtest-revoker".into())
            .spawn(move || revoker(via, load, rate, seed))
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
    if let Some(g) = gateway.as_mut() {
        g.shutdown(Stop::Fast)?;
    }
    drop(fleet);
    let upstream = recorder.stop();

    let result = audit(
        &conns,
        &revocations,
        &upstream,
        proxies.len(),
        |cat, key| {
            pop.pool(cat)
                .get(key as usize)
                .map(|k| k.id)
                .filter(|id| *id != 0)
        },
    );
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
        store: args.store.as_ref().map(|_| shown.clone()),
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
        fleet: (proxies.len() > 1).then(|| FleetFigures::of(proxies.len(), &revocations)),
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
