//! Checks on a typed [`Config`]: each adds a [`Problem`] and carries on, so a
//! single run reports everything wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::error::Problem;
use crate::model::{AccessLog, Config, KeySources, Limits, SecretSources, UpstreamGroup};
use crate::route::{Messages, Route, Target};

/// Largest body any route may accept: bounds memory for buffered sends and
/// catches a misplaced digit.
pub(crate) const MAX_BODY_BYTES: u64 = 1 << 30;
const MAX_THREADS: usize = 1024;
const TEN_MINUTES_MS: u64 = 600_000;
const ONE_HOUR_MS: u64 = 3_600_000;

/// What the checks need to know about where the routes came from.
#[derive(Default)]
pub(crate) struct RouteContext {
    /// The routes are the built-in defaults, not from the file: report missing
    /// upstream groups once, with a hint, instead of once per route.
    pub(crate) defaults: bool,
    /// Indices of routes whose path or target did not parse (already
    /// reported). They stand in with placeholders so their other fields are
    /// still checked; checks of path and target skip them.
    pub(crate) partial: BTreeSet<usize>,
}

struct Out(Vec<Problem>);

impl Out {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(key, message));
    }

    fn range(&mut self, key: &str, value: u64, min: u64, max: u64) {
        if value < min || value > max {
            self.push(key, format!("must be between {min} and {max}, got {value}"));
        }
    }

    fn millis(&mut self, key: &str, value: Duration, min: u64, max: u64) {
        let ms = u64::try_from(value.as_millis()).unwrap_or(u64::MAX);
        self.range(key, ms, min, max);
    }
}

impl Config {
    /// Runs every check, appending to `problems`.
    pub(crate) fn check(&self, routes: &RouteContext, problems: &mut Vec<Problem>) {
        let mut out = Out(std::mem::take(problems));
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            out.push(
                "admin_listen",
                format!(
                    "{} is also `listen`; the two listeners need different addresses",
                    self.admin_listen
                ),
            );
        }
        if self.threads > MAX_THREADS {
            out.push(
                "threads",
                format!(
                    "must be at most {MAX_THREADS} (0 = one per CPU), got {}",
                    self.threads
                ),
            );
        }
        out.millis("grace_period_ms", self.grace_period, 0, TEN_MINUTES_MS);
        if self.store.as_os_str().is_empty() {
            out.push(
                "store",
                "must name the SQLite file or a postgres://user@host:port/db URL",
            );
        }
        out.millis(
            "fleet.poll_interval_ms",
            self.fleet.poll_interval,
            10,
            60_000,
        );
        out.millis(
            "fleet.max_staleness_ms",
            self.fleet.max_staleness,
            100,
            TEN_MINUTES_MS,
        );
        if self.fleet.max_staleness <= self.fleet.poll_interval {
            out.push(
                "fleet.max_staleness_ms",
                format!(
                    "must be longer than fleet.poll_interval_ms ({} ms), or every instance fails closed between two polls",
                    self.fleet.poll_interval.as_millis()
                ),
            );
        }
        out.millis(
            "usage.flush_interval_ms",
            self.usage.flush_interval,
            100,
            TEN_MINUTES_MS,
        );
        if self.brute_force.block.is_zero() || self.brute_force.block.as_secs() > 86_400 {
            out.push(
                "brute_force.block_seconds",
                "must be between 1 and 86400 seconds".to_string(),
            );
        }
        check_secrets(&self.secrets, &mut out);
        check_keys(&self.keys, &self.routes, &mut out);
        check_limits(&self.limits, &mut out);
        crate::edge::check_tls(&self.tls, self.listen, self.admin_listen, &mut out.0);
        crate::edge::check_connections(&self.connections, &mut out.0);
        if self.log.access_log == AccessLog::File(Default::default()) {
            out.push(
                "log.access_log",
                "must be \"stdout\", \"stderr\", \"off\" or a file path",
            );
        }
        check_upstreams(&self.upstreams, &mut out);
        check_routes(self, routes, &mut out);
        *problems = out.0;
    }
}

fn check_secrets(s: &SecretSources, out: &mut Out) {
    for (key, name) in [
        ("secrets.pepper_env", &s.pepper_env),
        ("secrets.admin_token_env", &s.admin_token_env),
    ] {
        if name.contains(['=', '\0']) {
            out.push(
                key,
                format!("{name:?} is not a valid environment variable name"),
            );
        }
    }
    for (key, path) in [
        ("secrets.pepper_file", &s.pepper_file),
        ("secrets.admin_token_file", &s.admin_token_file),
    ] {
        if path.as_deref().is_some_and(|p| p.as_os_str().is_empty()) {
            out.push(key, "is empty; remove the key to not use a file");
        }
    }
}

fn check_keys(keys: &KeySources, routes: &[Route], out: &mut Out) {
    let prefix = &keys.identity_prefix;
    let prefix_ok = !prefix.is_empty() && is_token(prefix);
    if !prefix_ok {
        out.push(
            "keys.identity_prefix",
            format!("{prefix:?} must be a non-empty header-name prefix (letters, digits, '-' ...)"),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, header) in keys.headers.iter().enumerate() {
        let key = format!("keys.headers[{i}]");
        let name = &header.name;
        if !is_token(name) {
            out.push(
                format!("{key}.name"),
                format!("{name:?} is not a valid HTTP header name"),
            );
            continue;
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            out.push(format!("{key}.name"), format!("{name:?} is listed twice"));
        }
        if prefix_ok && starts_with_ignore_case(name, prefix) {
            out.push(
                format!("{key}.name"),
                format!("{name:?} starts with identity_prefix {prefix:?}, so the gateway would strip the key before reading it"),
            );
        }
        if let Some(scheme) = &header.scheme {
            if !is_token(scheme) {
                out.push(
                    format!("{key}.scheme"),
                    format!("{scheme:?} is not a valid auth scheme; omit `scheme` when the whole header value is the key"),
                );
            }
        }
    }
    if let Some(param) = &keys.query_param {
        let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        if param.is_empty() || !param.chars().all(unreserved) {
            out.push(
                "keys.query_param",
                format!("{param:?} must be a plain parameter name (letters, digits, '-', '.', '_', '~')"),
            );
        }
    }
    let needs_key = routes.iter().any(|r| r.target != Target::Public);
    if keys.headers.is_empty() && keys.query_param.is_none() && needs_key {
        out.push(
            "keys.headers",
            "no key source: list at least one header (or set keys.query_param); only an all-public route table needs none",
        );
    }
}

fn check_limits(limits: &Limits, out: &mut Out) {
    let Limits {
        max_send_body_bytes,
        max_batch_body_bytes,
        max_body_bytes,
        body_read_timeout,
        max_admin_body_bytes,
    } = limits;
    for (field, value, max) in [
        ("max_send_body_bytes", max_send_body_bytes, MAX_BODY_BYTES),
        ("max_batch_body_bytes", max_batch_body_bytes, MAX_BODY_BYTES),
        ("max_body_bytes", max_body_bytes, MAX_BODY_BYTES),
        ("max_admin_body_bytes", max_admin_body_bytes, 64 << 20),
    ] {
        out.range(&format!("limits.{field}"), *value, 1, max);
    }
    out.millis(
        "limits.body_read_timeout_ms",
        *body_read_timeout,
        1,
        TEN_MINUTES_MS,
    );
}

fn check_upstreams(upstreams: &BTreeMap<String, UpstreamGroup>, out: &mut Out) {
    if upstreams.is_empty() {
        out.push("upstreams", "at least one upstream group is required");
    }
    for (name, group) in upstreams {
        let key = format!("upstreams.{name}");
        if let Err(message) = check_group_name(name) {
            out.push(&key, message);
        }
        if group.backends.is_empty() {
            out.push(format!("{key}.backends"), "list at least one HOST:PORT");
        }
        let mut seen = BTreeSet::new();
        for (i, backend) in group.backends.iter().enumerate() {
            if let Err(message) = check_backend(backend) {
                out.push(format!("{key}.backends[{i}]"), message);
            } else if !seen.insert(backend) {
                out.push(
                    format!("{key}.backends[{i}]"),
                    format!("{backend:?} is listed twice"),
                );
            }
        }
        let UpstreamGroup {
            backends: _,
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            health_check_interval,
            keepalive_pool,
        } = group;
        for (field, value, max) in [
            ("connect_timeout_ms", connect_timeout, TEN_MINUTES_MS),
            ("read_timeout_ms", read_timeout, ONE_HOUR_MS),
            ("write_timeout_ms", write_timeout, ONE_HOUR_MS),
            ("idle_timeout_ms", idle_timeout, ONE_HOUR_MS),
        ] {
            out.millis(&format!("{key}.{field}"), *value, 1, max);
        }
        if let Some(interval) = health_check_interval {
            let field = format!("{key}.health_check_interval_ms");
            out.millis(&field, *interval, 1, ONE_HOUR_MS);
        }
        out.range(
            &format!("{key}.keepalive_pool"),
            *keepalive_pool as u64,
            0,
            65_536,
        );
    }
}

fn check_routes(config: &Config, ctx: &RouteContext, out: &mut Out) {
    if config.routes.is_empty() {
        out.push("routes", "no routes: every request would be answered 404");
    }
    let known = known_groups(&config.upstreams);
    let mut missing_for_defaults = BTreeSet::new();
    let mut seen: Vec<(BTreeSet<&str>, &Route, String)> = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        let key = &format!("routes[{i}]");
        check_methods(route, key, out);
        if !config.upstreams.contains_key(&route.upstream) {
            if ctx.defaults {
                missing_for_defaults.insert(route.upstream.as_str());
            } else if route.upstream.is_empty() {
                out.push(
                    format!("{key}.upstream"),
                    format!("missing: name an upstream group (known: {known})"),
                );
            } else {
                out.push(
                    format!("{key}.upstream"),
                    format!(
                        "no upstream group named {:?} (known: {known})",
                        route.upstream
                    ),
                );
            }
        }
        if ctx.partial.contains(&i) {
            continue;
        }
        check_target(route, key, out);
        // A limit equal to the [limits] default is reported there, once.
        if route.max_body_bytes != config.limits.body_limit_for(&route.target) {
            let field = format!("{key}.max_body_bytes");
            out.range(&field, route.max_body_bytes, 1, MAX_BODY_BYTES);
        }

        let methods: BTreeSet<&str> = route.methods.iter().map(String::as_str).collect();
        if let Some((_, _, earlier)) = seen
            .iter()
            .find(|(m, r, _)| *m == methods && r.path.segments == route.path.segments)
        {
            out.push(
                key.as_str(),
                format!("same methods and path as {earlier}, which comes first, so this route can never match"),
            );
        }
        seen.push((methods, route, key.clone()));
    }
    if !missing_for_defaults.is_empty() {
        let missing: Vec<String> = missing_for_defaults
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        out.push(
            "upstreams",
            format!(
                "the default routes send traffic to the groups \"domains\" and \"sending\", and {} is not defined (known: {known}); define it or write your own [[routes]]",
                missing.join(" and ")
            ),
        );
    }
}

fn check_target(route: &Route, key: &str, out: &mut Out) {
    // Each capture belongs to one target, and that target needs it.
    for (segment, has, target, what) in [
        (
            "{domain}",
            route.path.has_domain(),
            "domain",
            "the target domain",
        ),
        (
            "{server}",
            route.path.has_server(),
            "server_id",
            "the numeric server id",
        ),
    ] {
        let is_target = route.target.name() == target;
        if is_target && !has {
            out.push(
                format!("{key}.target"),
                format!(
                    "target \"{target}\" needs a {segment} segment ({what}) in the path, and {:?} has none",
                    route.path.raw
                ),
            );
        } else if has && !is_target {
            out.push(
                format!("{key}.path"),
                format!(
                    "{segment} is only meaningful with target = \"{target}\" (this route has target = {:?})",
                    route.target.name()
                ),
            );
        }
    }
    if let Target::Sender(spec) = &route.target {
        if let Err(message) = check_pointer(&spec.sender_pointer) {
            out.push(format!("{key}.sender_pointer"), message);
        } else if spec.sender_pointer.is_empty() {
            out.push(
                format!("{key}.sender_pointer"),
                "must point inside each message, e.g. \"/From\"",
            );
        }
        if let Messages::Pointer(pointer) = &spec.messages {
            if let Err(message) = check_pointer(pointer) {
                out.push(format!("{key}.messages_pointer"), message);
            }
        }
    }
}

fn check_methods(route: &Route, key: &str, out: &mut Out) {
    let mut seen = BTreeSet::new();
    for (i, method) in route.methods.iter().enumerate() {
        let key = format!("{key}.methods[{i}]");
        if method.is_empty() || !is_token(method) {
            out.push(key, format!("{method:?} is not an HTTP method"));
        } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
            out.push(
                key,
                format!(
                    "{method:?}: methods are case-sensitive; write {:?}",
                    method.to_ascii_uppercase()
                ),
            );
        } else if !seen.insert(method) {
            out.push(key, format!("{method:?} is listed twice"));
        }
    }
}

/// Lists group names for messages, e.g. `domains, sending`.
pub(crate) fn known_groups(upstreams: &BTreeMap<String, UpstreamGroup>) -> String {
    if upstreams.is_empty() {
        return "none".to_owned();
    }
    upstreams
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Group names appear in metric labels and in `--upstream NAME=HOST:PORT`, so
/// they are kept to a plain alphabet.
pub(crate) fn check_group_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || !name.chars().all(plain) {
        return Err(format!(
            "group name {name:?} may only use letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// Checks `HOST:PORT` without resolving DNS: IPv4, bracketed IPv6, or a host
/// name; port 1..=65535.
pub(crate) fn check_backend(backend: &str) -> Result<(), String> {
    let Some((host, port)) = backend.rsplit_once(':') else {
        return Err(format!("{backend:?} is not HOST:PORT"));
    };
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    if !port_ok {
        return Err(format!(
            "{backend:?}: port {port:?} is not a number between 1 and 65535"
        ));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| format!("{backend:?}: {v6:?} is not an IPv6 address"));
    }
    if host.contains(':') {
        return Err(format!(
            "{backend:?}: write IPv6 addresses in brackets, e.g. [::1]:9001"
        ));
    }
    if host.parse::<Ipv4Addr>().is_ok() || is_host_name(host) {
        return Ok(());
    }
    Err(format!(
        "{backend:?}: {host:?} is neither an IP address nor a host name"
    ))
}

fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)
}

/// RFC 6901: empty (the whole document) or `/`-separated tokens where `~` is
/// only ever followed by `0` or `1`.
fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "{pointer:?} is not a JSON pointer: it must be \"\" or start with \"/\""
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{pointer:?} is not a JSON pointer: '~' must be followed by 0 or 1"
            ));
        }
    }
    Ok(())
}

/// RFC 9110 token: header names, methods and auth schemes.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_host_port_without_dns() {
        for ok in [
            "127.0.0.1:9001",
            "[::1]:80",
            "mail-api.internal:443",
            "api_1:8080",
            "a.example.:1",
        ] {
            assert_eq!(check_backend(ok), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "host:0",
            "host:65536",
            "host:+80",
            ":80",
            "::1:80",
            "[::g]:80",
            "a b:80",
            "-a:80",
        ] {
            assert!(check_backend(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_pointers() {
        assert!(check_pointer("").is_ok());
        assert!(check_pointer("/Messages").is_ok());
        assert!(check_pointer("/a~1b/~0").is_ok());
        assert!(check_pointer("From").is_err());
        assert!(check_pointer("/a~2").is_err());
    }
}
