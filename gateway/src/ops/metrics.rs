//! Prometheus metrics. Labels are drawn only from bounded sets — route
//! patterns from the config, decision and reason names, upstream group
//! names, admin call kinds — never keys, digests, users or domains, so
//! cardinality stays fixed whatever the traffic.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use scopegate_keystore::{KeyStore, Refusal};

/// What happened to a request, as the `decision` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded to the upstream.
    Admitted,
    /// 401 missing key.
    MissingKey,
    /// 401 invalid key (the reason is counted separately).
    InvalidKey,
    /// 404: unknown route, or a domain the key cannot see.
    NotFound,
    /// 403.
    Forbidden,
    /// 422: a From domain the key cannot write, or an invalid From.
    SenderRefused,
    /// 400.
    BadRequest,
    /// 413.
    TooLarge,
    /// 408.
    BodyTimeout,
    /// 502/504 after admission.
    UpstreamError,
    /// 503: refused unchecked because the snapshot could not be confirmed
    /// current (fleet fail-closed).
    StoreUnavailable,
    /// 429: a key over its rate limit, or an address blocked for failed
    /// key attempts (the reason says which).
    RateLimited,
}

impl Outcome {
    /// Every outcome, for pre-registering label values.
    pub const ALL: [Outcome; 12] = [
        Outcome::Admitted,
        Outcome::MissingKey,
        Outcome::InvalidKey,
        Outcome::NotFound,
        Outcome::Forbidden,
        Outcome::SenderRefused,
        Outcome::BadRequest,
        Outcome::TooLarge,
        Outcome::BodyTimeout,
        Outcome::UpstreamError,
        Outcome::StoreUnavailable,
        Outcome::RateLimited,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::MissingKey => "missing_key",
            Outcome::InvalidKey => "invalid_key",
            Outcome::NotFound => "not_found",
            Outcome::Forbidden => "forbidden",
            Outcome::SenderRefused => "sender_refused",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::UpstreamError => "upstream_error",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::RateLimited => "rate_limited",
        }
    }
}

/// Counters of one route, one per outcome, registered up front.
#[derive(Clone)]
pub struct RouteMetrics {
    by_outcome: Arc<[IntCounter; Outcome::ALL.len()]>,
}

impl RouteMetrics {
    /// Counts one request.
    pub fn count(&self, outcome: Outcome) {
        self.by_outcome[outcome as usize].inc();
    }
}

/// All of the gateway's metrics.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    requests: IntCounterVec,
    /// Invalid keys by reason, one counter per [`Refusal`] (only the key
    /// refusals are ever counted), resolved once so a refusal does no label lookup.
    invalid_keys: [IntCounter; Refusal::ALL.len()],
    /// Time for the whole key check: format, digest, lookup, scope.
    pub key_check: Histogram,
    /// Upstream response time by group (header received).
    pub upstream: HistogramVec,
    /// Upstream failures by group and kind (connect, timeout, other).
    pub upstream_errors: IntCounterVec,
    /// Requests being handled.
    pub in_flight: IntGauge,
    /// HTTP/1.1 requests the fast path handled (the rest went through Pingora's proxy).
    pub fast_path: IntCounter,
    snapshot_version: IntGauge,
    snapshot_age: prometheus::Gauge,
    keys: IntGauge,
    keys_without_locator: IntGauge,
    users: IntGauge,
    orgs: IntGauge,
    /// Admin mutations by kind and result.
    pub admin_mutations: IntCounterVec,
    /// Admin changes the store failed to commit, by kind of failure.
    store_errors: IntCounterVec,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Config reloads by result.
    pub reloads: IntCounterVec,
    store_staleness: prometheus::Gauge,
    store_changes_applied: IntCounter,
    store_reloads: IntCounter,
    store_reconnects: IntCounter,
    store_file_switches: IntCounter,
    /// Requests refused 429 because their key was over its rate limit.
    pub rate_limited: IntCounter,
    /// Requests refused 429 because their address was blocked.
    pub brute_force_refused: IntCounter,
    /// Times an address was blocked for failed key attempts.
    pub brute_force_blocks: IntCounter,
    /// Admitted requests a key's shadow scope would have refused, by reason,
    /// resolved once like `invalid_keys`.
    would_refuse: [IntCounter; Refusal::ALL.len()],
    /// Usage batches written to the store, by result.
    pub usage_flushes: IntCounterVec,
    /// The connection layer's metrics (TLS, limits, framing refusals).
    pub edge: crate::ops::edge::EdgeMetrics,
}

/// The `kind` labels of `scopegate_store_errors_total`, all exported from
/// the start (at zero) so an alert can watch each.
pub const STORE_ERROR_KINDS: [&str; 9] = [
    "full",
    "read_only",
    "io",
    "deleted",
    "unavailable",
    "indeterminate",
    "busy",
    "upgraded",
    "error",
];

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "scopegate_requests_total",
                "Requests by route pattern and decision.",
            ),
            &["route", "decision"],
        )
        .expect("valid metric");
        let invalid_keys = IntCounterVec::new(
            Opts::new(
                "scopegate_invalid_keys_total",
                "Requests refused with 401 invalid_api_key, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let key_check = Histogram::with_opts(
            HistogramOpts::new(
                "scopegate_key_check_seconds",
                "Time to check a key: format, keyed digest, snapshot lookup and scope.",
            )
            .buckets(vec![
                1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 1e-3,
            ]),
        )
        .expect("valid metric");
        let upstream = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_upstream_seconds",
                "Time from sending the request upstream to receiving the response header, by upstream group.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["upstream"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "scopegate_upstream_errors_total",
                "Admitted requests that failed upstream, by group and kind (connect, timeout, other).",
            ),
            &["upstream", "kind"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "scopegate_in_flight_requests",
            "Proxy requests being handled now.",
        )
        .expect("valid metric");
        let fast_path = IntCounter::new(
            "scopegate_fast_path_requests_total",
            "HTTP/1.1 requests without a body handled by the gateway's own proxy loop instead of Pingora's.",
        )
        .expect("valid metric");
        let snapshot_version = IntGauge::new(
            "scopegate_snapshot_version",
            "Version of the access snapshot this instance enforces.",
        )
        .expect("valid metric");
        let snapshot_age = prometheus::Gauge::new(
            "scopegate_snapshot_age_seconds",
            "Seconds since the change that produced the enforced snapshot.",
        )
        .expect("valid metric");
        let keys = IntGauge::new("scopegate_keys", "Keys not revoked.").expect("valid metric");
        let keys_without_locator = IntGauge::new(
            "scopegate_keys_without_locator",
            "Keys stored before schema version 2: found by digest, with a second table probe; reissue them.",
        )
        .expect("valid metric");
        let users = IntGauge::new("scopegate_users", "Users.").expect("valid metric");
        let orgs = IntGauge::new("scopegate_orgs", "Organisations.").expect("valid metric");
        let admin_mutations = IntCounterVec::new(
            Opts::new(
                "scopegate_admin_mutations_total",
                "Admin API changes by kind and result (ok or the error code class).",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "scopegate_store_errors_total",
                "Admin changes the store failed to commit (nothing changed), by kind: full, read_only, io, deleted (faults of a SQLite file), unavailable, indeterminate, busy, upgraded (a newer scopegate migrated the store), error.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for kind in STORE_ERROR_KINDS {
            store_errors.with_label_values(&[kind]);
        }
        let access_log_dropped = IntCounter::new(
            "scopegate_access_log_dropped_total",
            "Access log lines dropped because the log writer fell behind.",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "scopegate_config_reloads_total",
                "Configuration reloads by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let store_staleness = prometheus::Gauge::new(
            "scopegate_store_staleness_seconds",
            "Seconds since this instance last confirmed against its store that it holds every committed change; past fleet.max_staleness_ms the proxy answers 503.",
        )
        .expect("valid metric");
        let store_changes_applied = IntCounter::new(
            "scopegate_store_changes_applied_total",
            "Change log entries committed by other instances and applied here.",
        )
        .expect("valid metric");
        let store_reloads = IntCounter::new(
            "scopegate_store_reloads_total",
            "Whole-snapshot reloads because the change log no longer held what this instance missed.",
        )
        .expect("valid metric");
        let store_reconnects = IntCounter::new(
            "scopegate_store_reconnects_total",
            "Times the follower's wake-up connection to the store was reopened after a loss.",
        )
        .expect("valid metric");
        let store_file_switches = IntCounter::new(
            "scopegate_store_file_switches_total",
            "Times the SQLite store file was removed or replaced under this process and it switched to the file now at the path: the data it held written back there, or another file whose change log continues this one's (each also logged).",
        )
        .expect("valid metric");
        let rate_limited = IntCounter::new(
            "scopegate_rate_limited_total",
            "Requests refused 429 rate_limited because their key was over its rate limit (never forwarded).",
        )
        .expect("valid metric");
        let brute_force_refused = IntCounter::new(
            "scopegate_brute_force_refused_total",
            "Requests refused 429 before any key check because their address is blocked for failed key attempts.",
        )
        .expect("valid metric");
        let brute_force_blocks = IntCounter::new(
            "scopegate_brute_force_blocks_total",
            "Times a client address was blocked for too many failed key attempts.",
        )
        .expect("valid metric");
        let would_refuse = IntCounterVec::new(
            Opts::new(
                "scopegate_shadow_would_refuse_total",
                "Admitted requests that the key's shadow scope would have refused, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let usage_flushes = IntCounterVec::new(
            Opts::new(
                "scopegate_usage_flushes_total",
                "Batches of key usage written to the store, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        for c in [
            Box::new(rate_limited.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(brute_force_refused.clone()),
            Box::new(brute_force_blocks.clone()),
            Box::new(would_refuse.clone()),
            Box::new(usage_flushes.clone()),
            Box::new(store_staleness.clone()),
            Box::new(store_changes_applied.clone()),
            Box::new(store_reloads.clone()),
            Box::new(store_reconnects.clone()),
            Box::new(store_file_switches.clone()),
            Box::new(requests.clone()),
            Box::new(invalid_keys.clone()),
            Box::new(key_check.clone()),
            Box::new(upstream.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(in_flight.clone()),
            Box::new(fast_path.clone()),
            Box::new(snapshot_version.clone()),
            Box::new(snapshot_age.clone()),
            Box::new(keys.clone()),
            Box::new(keys_without_locator.clone()),
            Box::new(users.clone()),
            Box::new(orgs.clone()),
            Box::new(admin_mutations.clone()),
            Box::new(store_errors.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(reloads.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Every key refusal's series exists from the start; the other
        // reasons' counters are never registered nor incremented.
        let invalid_keys = Refusal::ALL.map(|r| {
            if r.is_authentication() && r != Refusal::MissingKey {
                invalid_keys.with_label_values(&[r.as_str()])
            } else {
                IntCounter::new("unregistered", "not exported").expect("valid metric")
            }
        });
        for result in ["ok", "rejected"] {
            reloads.with_label_values(&[result]);
        }
        for result in ["ok", "error"] {
            usage_flushes.with_label_values(&[result]);
        }
        let would_refuse = Refusal::ALL.map(|r| {
            if r.is_authentication() {
                IntCounter::new("unregistered", "not exported").expect("valid metric")
            } else {
                would_refuse.with_label_values(&[r.as_str()])
            }
        });
        for kind in [
            "put_org",
            "put_user",
            "deactivate_user",
            "delete_user",
            "create_key",
            "revoke_key",
            "rotate_key",
            "update_key",
            "set_org_rate_limit",
            "put_server",
            "delete_server",
        ] {
            for result in ["ok", "rejected", "error"] {
                admin_mutations.with_label_values(&[kind, result]);
            }
        }
        let edge = crate::ops::edge::EdgeMetrics::register(&registry);
        Metrics {
            edge,
            registry,
            requests,
            invalid_keys,
            key_check,
            upstream,
            upstream_errors,
            in_flight,
            fast_path,
            snapshot_version,
            snapshot_age,
            keys,
            keys_without_locator,
            users,
            orgs,
            admin_mutations,
            store_errors,
            access_log_dropped,
            reloads,
            store_staleness,
            store_changes_applied,
            store_reloads,
            store_reconnects,
            store_file_switches,
            rate_limited,
            brute_force_refused,
            brute_force_blocks,
            would_refuse,
            usage_flushes,
        }
    }

    /// Counts an admitted request its key's shadow scope would have refused.
    pub fn would_refuse(&self, reason: Refusal) {
        self.would_refuse[reason as usize].inc();
    }

    /// Counts a failed exchange with a backend of `group`; `kind` is one of
    /// the kinds [`Self::register_upstream`] registers.
    pub fn upstream_error(&self, group: &str, kind: &str) {
        self.upstream_errors.with_label_values(&[group, kind]).inc();
    }

    /// Registers an upstream group's series at zero, so dashboards and
    /// alerts see them before the first request or failure.
    pub fn register_upstream(&self, group: &str) {
        self.upstream.with_label_values(&[group]);
        for kind in ["connect", "timeout", "other"] {
            self.upstream_errors.with_label_values(&[group, kind]);
        }
    }

    /// The pre-registered counters of one route.
    pub fn route(&self, pattern: &str) -> RouteMetrics {
        let counters =
            Outcome::ALL.map(|o| self.requests.with_label_values(&[pattern, o.as_str()]));
        RouteMetrics {
            by_outcome: Arc::new(counters),
        }
    }

    /// Counts an admin change the store failed to commit; `kind` is the
    /// keystore's label for the failure (see [`STORE_ERROR_KINDS`]).
    pub fn store_error(&self, kind: &str) {
        self.store_errors.with_label_values(&[kind]).inc();
    }

    /// Counts a 401 invalid_api_key by its reason.
    pub fn invalid_key(&self, reason: Refusal) {
        // Refusal::ALL lists the variants in declaration order (tested in the
        // keystore), so the discriminant is the index.
        self.invalid_keys[reason as usize].inc();
    }

    /// Renders the text exposition, refreshing the snapshot gauges first.
    pub fn render(&self, keystore: &KeyStore) -> Vec<u8> {
        let snap = keystore.snapshot();
        self.snapshot_version.set(snap.version as i64);
        let now_ms = scopegate_keystore::time::now_ms();
        if snap.changed_at_ms > 0 {
            self.snapshot_age
                .set((now_ms - snap.changed_at_ms).max(0) as f64 / 1000.0);
        }
        self.keys.set(snap.live_keys as i64);
        self.keys_without_locator
            .set(snap.keys.placed_by_digest() as i64);
        self.users.set(snap.user_ids.len() as i64);
        self.orgs.set(snap.org_ids.len() as i64);
        drop(snap);
        self.store_staleness.set(keystore.staleness().as_secs_f64());
        let (applied, reloads, reconnects, switches) = keystore.follow_counters();
        for (counter, total) in [
            (&self.store_changes_applied, applied),
            (&self.store_reloads, reloads),
            (&self.store_reconnects, reconnects),
            (&self.store_file_switches, switches),
        ] {
            // The key store counts; the exported counter catches up.
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
