//! The part of the configuration a request is decided by — routes, key
//! sources, limits and upstream groups — built once per (re)load and swapped
//! whole, so a request in flight keeps the version it started with.

use std::collections::BTreeMap;
use std::sync::Arc;

use pingora::lb::selection::RoundRobin;
use pingora::lb::{health_check::TcpHealthCheck, LoadBalancer};
use scopegate_config::{Config, Route, UpstreamGroup};

use crate::ops::metrics::RouteMetrics;

/// One upstream group: its backends, round-robin selection and health.
pub struct Group {
    /// Group name from the config (`sending`, `domains`, …).
    pub name: String,
    /// Backends with their health; selection skips unhealthy ones.
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    /// Timeouts and pool settings for peers of this group.
    pub settings: UpstreamGroup,
    /// This group's upstream latency histogram (no label lookup per request).
    pub latency: prometheus::Histogram,
}

impl Group {
    /// Whether at least one backend is currently healthy.
    pub fn has_healthy_backend(&self) -> bool {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .any(|b| self.lb.backends().ready(b))
    }
}

/// A route with what the proxy needs at hand.
pub struct RouteEntry {
    /// The route as configured.
    pub route: Route,
    /// Its upstream group.
    pub group: Arc<Group>,
    /// Pre-registered counters, so the hot path does no label lookups.
    pub metrics: RouteMetrics,
}

/// How many identity headers the gateway adds.
pub const IDENTITY_HEADERS: usize = 7;

/// The identity headers the gateway adds, named once per configuration so
/// no request formats them.
pub struct Identity {
    /// `…Key-Id`, `…Org`, `…User`, `…Role`, `…Scope`, `…Version`, `…Server`
    /// with the configured prefix, in the configured case (for display).
    pub names: [bytes::Bytes; IDENTITY_HEADERS],
    /// The same names parsed, as the upstream request carries them (header
    /// names are case-insensitive; HTTP/1 writes these in lowercase).
    pub header_names: [http::HeaderName; IDENTITY_HEADERS],
    /// The prefix in lowercase, for stripping incoming headers.
    pub prefix_lower: String,
}

impl Identity {
    fn new(prefix: &str) -> Identity {
        let names = [
            "Key-Id", "Org", "User", "Role", "Scope", "Version", "Server",
        ]
        .map(|s| bytes::Bytes::from(format!("{prefix}{s}")));
        Identity {
            // The config validates the prefix as a header-name token.
            header_names: names.clone().map(|n| {
                http::HeaderName::from_bytes(&n).expect("the identity prefix is a valid token")
            }),
            names,
            prefix_lower: prefix.to_ascii_lowercase(),
        }
    }
}

/// Everything a request is decided by, for one configuration version.
pub struct Routing {
    /// The configuration this was built from.
    pub config: Arc<Config>,
    /// Routes in match order.
    pub routes: Vec<RouteEntry>,
    /// Upstream groups by name.
    pub groups: BTreeMap<String, Arc<Group>>,
    /// Counters for requests that matched no route.
    pub unmatched: RouteMetrics,
    /// Identity header names.
    pub identity: Identity,
    /// Where keys are read from, with the header names parsed.
    pub key_headers: crate::request::keys::KeyHeaders,
}

/// A route that matched, with the captured `{domain}` or `{server}` segment.
pub struct Matched<'r, 'p> {
    /// Its index in [`Routing::routes`].
    pub index: usize,
    /// The route.
    pub entry: &'r RouteEntry,
    /// The `{domain}` or `{server}` segment, if the pattern has one.
    pub captured: Option<&'p str>,
}

impl Routing {
    /// Builds groups (resolving backend addresses) and routes.
    pub fn build(
        config: Config,
        metrics: &crate::ops::metrics::Metrics,
    ) -> Result<Routing, String> {
        let mut groups = BTreeMap::new();
        for (name, settings) in &config.upstreams {
            metrics.register_upstream(name);
            let lb = LoadBalancer::<RoundRobin>::try_from_iter(
                settings.backends.iter().map(String::as_str),
            )
            .map_err(|e| format!("upstreams.{name}: cannot resolve backends: {e}"))?;
            let mut lb = lb;
            if settings.health_check_interval.is_some() {
                let mut hc = TcpHealthCheck::new();
                hc.peer_template.options.connection_timeout = Some(settings.connect_timeout);
                lb.set_health_check(hc);
            }
            groups.insert(
                name.clone(),
                Arc::new(Group {
                    name: name.clone(),
                    lb: Arc::new(lb),
                    settings: settings.clone(),
                    latency: metrics.upstream.with_label_values(&[name.as_str()]),
                }),
            );
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let group = groups
                .get(&route.upstream)
                .ok_or_else(|| {
                    format!(
                        "route {} names unknown upstream {}",
                        route.path, route.upstream
                    )
                })?
                .clone();
            routes.push(RouteEntry {
                metrics: metrics.route(&route.path.raw),
                route: route.clone(),
                group,
            });
        }
        Ok(Routing {
            key_headers: crate::request::keys::KeyHeaders::new(&config.keys)
                .map_err(|e| format!("keys.headers: {e}"))?,
            unmatched: metrics.route("unmatched"),
            identity: Identity::new(&config.keys.identity_prefix),
            config: Arc::new(config),
            routes,
            groups,
        })
    }

    /// The first route whose method and path match.
    pub fn find<'r, 'p>(&'r self, method: &str, segments: &[&'p str]) -> Option<Matched<'r, 'p>> {
        self.routes.iter().enumerate().find_map(|(index, entry)| {
            if !entry.route.allows_method(method) {
                return None;
            }
            entry.route.path.matches(segments).map(|captured| Matched {
                index,
                entry,
                captured,
            })
        })
    }
}
