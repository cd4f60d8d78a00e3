//! The TOML file: its schema, and conversion into the canonical [`Config`].
//!
//! The schema mirrors the file one to one with every key optional, so serde
//! only rejects structure (unknown keys, wrong types). Everything that can be
//! wrong in a value is kept as a plain string or number here and reported by
//! the conversion or by the checks, so one run lists every problem.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{ConfigError, Problem};
use crate::model::{
    AccessLog, BruteForce, Config, Fleet, KeyHeader, KeySources, Limits, LogFormat, LogSettings,
    ResponseFormat, SecretSources, UpstreamGroup, Usage,
};
use crate::route::{default_routes_for, Messages, PathPattern, Route, SenderSpec, Target};
use crate::validate::RouteContext;

/// Parses, converts and checks one file's text.
pub(crate) fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        origin: origin.to_owned(),
        problems: vec![toml_problem(text, &e)],
    })?;
    let mut problems = Vec::new();
    let (config, routes) = raw.into_config(&mut problems);
    config.check(&routes, &mut problems);
    // Conversion and checks find problems in different passes; list them in
    // the order the file is usually read.
    problems.sort_by_key(|p| file_order(&p.key));
    ConfigError::check(origin, problems)?;
    Ok(config)
}

/// Sort key for a problem: top-level section in schema order, then route index.
fn file_order(key: &str) -> (usize, usize) {
    const SECTIONS: [&str; 17] = [
        "listen",
        "admin_listen",
        "threads",
        "grace_period_ms",
        "store",
        "response_format",
        "fleet",
        "usage",
        "brute_force",
        "secrets",
        "keys",
        "limits",
        "tls",
        "connections",
        "log",
        "upstreams",
        "routes",
    ];
    let head = key.split(['.', '[']).next().unwrap_or("");
    let section = SECTIONS.iter().position(|s| *s == head).unwrap_or(0);
    let index = key
        .strip_prefix("routes[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (section, index)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    threads: Option<usize>,
    grace_period_ms: Option<u64>,
    store: Option<String>,
    response_format: Option<String>,
    #[serde(default)]
    fleet: RawFleet,
    #[serde(default)]
    usage: RawUsage,
    #[serde(default)]
    brute_force: RawBruteForce,
    #[serde(default)]
    secrets: RawSecrets,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    tls: crate::edge::RawTls,
    #[serde(default)]
    connections: crate::edge::RawConnections,
    #[serde(default)]
    log: RawLog,
    upstreams: Option<BTreeMap<String, RawUpstream>>,
    routes: Option<Vec<RawRoute>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    poll_interval_ms: Option<u64>,
    max_staleness_ms: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    flush_interval_ms: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBruteForce {
    attempts_per_minute: Option<u32>,
    block_seconds: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    pepper_env: Option<String>,
    pepper_file: Option<String>,
    admin_token_env: Option<String>,
    admin_token_file: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    headers: Option<Vec<RawKeyHeader>>,
    query_param: Option<String>,
    forward_key_header: Option<bool>,
    identity_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyHeader {
    #[serde(default)]
    name: String,
    scheme: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_send_body_bytes: Option<u64>,
    max_batch_body_bytes: Option<u64>,
    max_body_bytes: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    max_admin_body_bytes: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access_log: Option<String>,
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default)]
    backends: Vec<String>,
    connect_timeout_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    health_check_interval_ms: Option<u64>,
    keepalive_pool: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    methods: Vec<String>,
    path: Option<String>,
    #[serde(default)]
    upstream: String,
    target: Option<String>,
    sender_pointer: Option<String>,
    messages_pointer: Option<String>,
    #[serde(default)]
    max_body_bytes: u64,
}

fn ms(value: Option<u64>, default: Duration) -> Duration {
    value.map_or(default, Duration::from_millis)
}

impl RawConfig {
    /// Fills in defaults and turns strings into types. A value that does not
    /// convert is reported and replaced by its default (or, in a route, by a
    /// placeholder the context marks), so the checks still run on everything
    /// else. The result is only returned to callers if no problem was found.
    fn into_config(self, problems: &mut Vec<Problem>) -> (Config, RouteContext) {
        let RawConfig {
            listen,
            admin_listen,
            threads,
            grace_period_ms,
            store,
            response_format,
            fleet,
            usage,
            brute_force,
            secrets,
            keys,
            limits,
            tls,
            connections,
            log,
            upstreams,
            routes,
        } = self;
        let d = Config::default();
        let mut addr = |key: &str, value: Option<String>, default| match value {
            None => default,
            Some(text) => text.parse().unwrap_or_else(|_| {
                problems.push(Problem::new(
                    key,
                    format!(
                        "{text:?} is not a socket address; expected IP:PORT such as 127.0.0.1:8080"
                    ),
                ));
                default
            }),
        };
        let listen = addr("listen", listen, d.listen);
        let admin_listen = addr("admin_listen", admin_listen, d.admin_listen);
        let response_format = match response_format.as_deref() {
            None | Some("json") => ResponseFormat::Json,
            Some("postmark") => ResponseFormat::Postmark,
            Some(other) => {
                problems.push(Problem::new(
                    "response_format",
                    format!("expected \"json\" or \"postmark\", got {other:?}"),
                ));
                d.response_format
            }
        };

        let limits = limits.into_limits(d.limits);
        let upstreams = match upstreams {
            None => d.upstreams,
            Some(groups) => groups
                .into_iter()
                .map(|(name, group)| (name, group.into_group()))
                .collect(),
        };
        let mut context = RouteContext::default();
        let routes = match routes {
            None => {
                context.defaults = true;
                default_routes_for(&limits)
            }
            Some(raw) => raw
                .into_iter()
                .enumerate()
                .map(|(i, route)| {
                    let (route, complete) = route.into_route(i, &limits, problems);
                    if !complete {
                        context.partial.insert(i);
                    }
                    route
                })
                .collect(),
        };
        let config = Config {
            listen,
            admin_listen,
            threads: threads.unwrap_or(d.threads),
            grace_period: ms(grace_period_ms, d.grace_period),
            store: store.map_or(d.store, PathBuf::from),
            fleet: Fleet {
                poll_interval: ms(fleet.poll_interval_ms, d.fleet.poll_interval),
                max_staleness: ms(fleet.max_staleness_ms, d.fleet.max_staleness),
            },
            response_format,
            usage: Usage {
                flush_interval: ms(usage.flush_interval_ms, d.usage.flush_interval),
            },
            brute_force: BruteForce {
                attempts_per_minute: brute_force
                    .attempts_per_minute
                    .unwrap_or(d.brute_force.attempts_per_minute),
                block: brute_force
                    .block_seconds
                    .map_or(d.brute_force.block, Duration::from_secs),
            },
            secrets: secrets.into_sources(d.secrets),
            keys: keys.into_sources(d.keys),
            limits,
            tls: tls.into_tls(problems),
            connections: connections.into_connections(),
            log: log.into_settings(d.log, problems),
            upstreams,
            routes,
        };
        (config, context)
    }
}

impl RawSecrets {
    fn into_sources(self, d: SecretSources) -> SecretSources {
        SecretSources {
            pepper_env: self.pepper_env.unwrap_or(d.pepper_env),
            pepper_file: self.pepper_file.map(PathBuf::from),
            admin_token_env: self.admin_token_env.unwrap_or(d.admin_token_env),
            admin_token_file: self.admin_token_file.map(PathBuf::from),
        }
    }
}

impl RawKeys {
    fn into_sources(self, d: KeySources) -> KeySources {
        let headers = self.headers.map(|headers| {
            headers
                .into_iter()
                .map(|h| KeyHeader {
                    name: h.name,
                    scheme: h.scheme,
                })
                .collect()
        });
        KeySources {
            headers: headers.unwrap_or(d.headers),
            query_param: self.query_param.filter(|p| !p.is_empty()),
            forward_key_header: self.forward_key_header.unwrap_or(d.forward_key_header),
            identity_prefix: self.identity_prefix.unwrap_or(d.identity_prefix),
        }
    }
}

impl RawLimits {
    fn into_limits(self, d: Limits) -> Limits {
        Limits {
            max_send_body_bytes: self.max_send_body_bytes.unwrap_or(d.max_send_body_bytes),
            max_batch_body_bytes: self.max_batch_body_bytes.unwrap_or(d.max_batch_body_bytes),
            max_body_bytes: self.max_body_bytes.unwrap_or(d.max_body_bytes),
            body_read_timeout: ms(self.body_read_timeout_ms, d.body_read_timeout),
            max_admin_body_bytes: self.max_admin_body_bytes.unwrap_or(d.max_admin_body_bytes),
        }
    }
}

impl RawLog {
    fn into_settings(self, d: LogSettings, problems: &mut Vec<Problem>) -> LogSettings {
        let access_log = match self.access_log.as_deref() {
            None => d.access_log,
            Some("stdout") => AccessLog::Stdout,
            Some("stderr") => AccessLog::Stderr,
            Some("off") => AccessLog::Off,
            Some(path) => AccessLog::File(PathBuf::from(path)),
        };
        let format = match self.format.as_deref() {
            None => d.format,
            Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                problems.push(Problem::new(
                    "log.format",
                    format!("expected \"text\" or \"json\", got {other:?}"),
                ));
                d.format
            }
        };
        LogSettings { access_log, format }
    }
}

impl RawUpstream {
    fn into_group(self) -> UpstreamGroup {
        let d = UpstreamGroup::new(Vec::new());
        UpstreamGroup {
            backends: self.backends,
            connect_timeout: ms(self.connect_timeout_ms, d.connect_timeout),
            read_timeout: ms(self.read_timeout_ms, d.read_timeout),
            write_timeout: ms(self.write_timeout_ms, d.write_timeout),
            idle_timeout: ms(self.idle_timeout_ms, d.idle_timeout),
            health_check_interval: match self.health_check_interval_ms {
                None => d.health_check_interval,
                Some(0) => None,
                Some(n) => Some(Duration::from_millis(n)),
            },
            keepalive_pool: self.keepalive_pool.unwrap_or(d.keepalive_pool),
        }
    }
}

impl RawRoute {
    /// The route, and whether its path and target parsed; if not, the problem
    /// is reported and placeholders stand in for them.
    fn into_route(
        self,
        index: usize,
        limits: &Limits,
        problems: &mut Vec<Problem>,
    ) -> (Route, bool) {
        let key = format!("routes[{index}]");
        let mut problem = |field: &str, message: String| {
            problems.push(Problem::new(format!("{key}.{field}"), message));
        };
        let path = match self.path.as_deref().map(PathPattern::parse) {
            None => {
                problem(
                    "path",
                    "missing: every route needs a path pattern such as \"/email\"".into(),
                );
                None
            }
            Some(Err(message)) => {
                problem("path", message);
                None
            }
            Some(Ok(path)) => Some(path),
        };
        // An unknown target is reported below; the sender fields may be right.
        let other_target = matches!(
            self.target.as_deref(),
            Some("key" | "org" | "domain" | "server" | "server_id" | "public")
        );
        if other_target {
            for (field, value) in [
                ("sender_pointer", &self.sender_pointer),
                ("messages_pointer", &self.messages_pointer),
            ] {
                if value.is_some() {
                    problem(field, "only meaningful with target = \"sender\"".into());
                }
            }
        }
        let target = match self.target.as_deref() {
            Some("key") => Some(Target::Key),
            Some("org") => Some(Target::Org),
            Some("domain") => Some(Target::Domain),
            Some("server") => Some(Target::Server),
            Some("server_id") => Some(Target::ServerId),
            Some("public") => Some(Target::Public),
            Some("sender") => Some(Target::Sender(SenderSpec {
                sender_pointer: self.sender_pointer.unwrap_or_else(|| "/From".to_owned()),
                messages: match self.messages_pointer {
                    None => Messages::Single,
                    Some(p) if p.is_empty() => Messages::RootArray,
                    Some(p) => Messages::Pointer(p),
                },
            })),
            other => {
                let expected =
                    "expected one of \"key\", \"org\", \"domain\", \"sender\", \"server\", \"server_id\", \"public\"";
                let message = match other {
                    None => format!("missing: {expected}"),
                    Some(t) => format!("{t:?}: {expected}"),
                };
                problem("target", message);
                None
            }
        };
        let complete = path.is_some() && target.is_some();
        let path = path.unwrap_or_else(|| PathPattern {
            segments: Vec::new(),
            raw: self.path.unwrap_or_default(),
        });
        let target = target.unwrap_or(Target::Public);
        let max_body_bytes = match self.max_body_bytes {
            0 => limits.body_limit_for(&target),
            n => n,
        };
        let route = Route {
            methods: self.methods,
            path,
            upstream: self.upstream,
            target,
            max_body_bytes,
        };
        (route, complete)
    }
}

/// Turns toml's first error into a problem with a line, a column and the
/// best dotted key we can recover from the text around it.
fn toml_problem(text: &str, err: &toml::de::Error) -> Problem {
    let message = err
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let Some(span) = err.span() else {
        return Problem::new("", message);
    };
    let mut offset = span.start.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let key = key_at(text, line);
    Problem::new(key, format!("line {line}, column {column}: {message}"))
}

/// Dotted key for line `line` (1-based): the table header in force, with
/// `[[routes]]` counted into `routes[N]`, plus the nearest `key =` at or above
/// the line. A best effort for messages, not a TOML parser.
fn key_at(text: &str, line: usize) -> String {
    let mut table = String::new();
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    let mut nearest_key = String::new();
    for l in text.lines().take(line) {
        let t = l.trim();
        let header_name = |n: &&str| {
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-. \"".contains(c))
        };
        if let Some(name) = t
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
            .filter(header_name)
        {
            let name = dotted(name);
            let count = array_counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{count}]");
            *count += 1;
            nearest_key.clear();
        } else if let Some(name) = t
            .strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .filter(header_name)
        {
            table = dotted(name);
            nearest_key.clear();
        } else if let Some((k, _)) = t.split_once('=') {
            let k = dotted(k);
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))
            {
                nearest_key = k.replace('"', "");
            }
        }
    }
    match (table.is_empty(), nearest_key.is_empty()) {
        (true, _) => nearest_key,
        (false, true) => table,
        (false, false) => format!("{table}.{nearest_key}"),
    }
}

fn dotted(s: &str) -> String {
    s.split('.').map(str::trim).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        Config::from_toml_str(text, "t.toml").unwrap_err().problems
    }

    #[test]
    fn the_response_format_is_json_or_postmark() {
        let c = Config::from_toml_str("response_format = \"postmark\"\n", "t.toml").unwrap();
        assert_eq!(c.response_format, ResponseFormat::Postmark);
        let p = problems("response_format = \"xml\"\n");
        assert_eq!(p[0].key, "response_format");
        assert!(p[0].message.contains("\"postmark\""), "{}", p[0].message);
    }

    #[test]
    fn fleet_settings_parse_and_staleness_must_outlast_a_poll() {
        let c = Config::from_toml_str(
            "store = \"postgres://sg@db:5432/keys\"\n[fleet]\npoll_interval_ms = 200\nmax_staleness_ms = 1500\n",
            "t.toml",
        )
        .unwrap();
        assert!(c.store_is_postgres());
        assert_eq!(c.fleet.poll_interval, Duration::from_millis(200));
        assert_eq!(c.fleet.max_staleness, Duration::from_millis(1500));
        let p = problems("[fleet]\npoll_interval_ms = 1000\nmax_staleness_ms = 1000\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "fleet.max_staleness_ms");
        assert!(p[0].message.contains("longer than fleet.poll_interval_ms"));
        let p = problems("[fleet]\npoll_interval_ms = 0\npoll_interval = 5\n");
        assert_eq!(p[0].key, "fleet.poll_interval");
    }

    #[test]
    fn the_empty_file_is_the_default_config() {
        assert_eq!(Config::from_toml_str("", "t.toml"), Ok(Config::default()));
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key_and_line() {
        let p = problems("listen = \"127.0.0.1:1\"\n\n[limits]\nmax_body_byte = 5\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "limits.max_body_byte");
        assert!(
            p[0].message
                .starts_with("line 4, column 1: unknown field `max_body_byte`"),
            "{}",
            p[0].message
        );

        let p =
            problems("[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/b\"\ntargte = \"org\"\n");
        assert_eq!(p[0].key, "routes[1].targte");
        assert!(p[0].message.contains("line 5"), "{}", p[0].message);

        let p = problems("[keys]\nheaders = [\n  { name = \"X-Key\", sheme = \"Bearer\" },\n]\n");
        assert_eq!(p[0].key, "keys.headers");
        assert!(
            p[0].message.contains("line 3") && p[0].message.contains("`sheme`"),
            "{}",
            p[0].message
        );

        let p = problems("[upstream.sending]\nbackends = []\n");
        assert!(
            p[0].message.contains("unknown field `upstream`"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn type_errors_and_syntax_errors_have_a_key_or_line() {
        let p = problems("threads = \"four\"\n");
        assert_eq!(p[0].key, "threads");
        assert!(p[0].message.contains("line 1"), "{}", p[0].message);

        let p = problems("[upstreams.sending]\nbackends = [\n  \"127.0.0.1:1\",\n  42,\n]\n");
        assert_eq!(p[0].key, "upstreams.sending.backends");

        let p = problems("listen = \n");
        assert!(p[0].message.starts_with("line 1"), "{}", p[0].message);
    }

    #[test]
    fn every_mistake_is_reported_with_its_key() {
        let text = r#"
listen = "localhost:80"
admin_listen = "127.0.0.1:99999"
threads = 5000
grace_period_ms = 700000

[keys]
headers = [{ name = "X-Scopegate-Key" }, { name = "Bad Header" }]
identity_prefix = "X-Scopegate-"

[limits]
max_send_body_bytes = 0

[log]
format = "xml"

[upstreams.sending]
backends = ["127.0.0.1"]

[upstreams.empty]
backends = []

[[routes]]
methods = ["post"]
path = "/email"
upstream = "sendng"
target = "sender"
messages_pointer = "Messages"

[[routes]]
path = "/domains"
upstream = "sending"
target = "domain"

[[routes]]
path = "/x/{domain}"
upstream = "sending"
target = "org"
sender_pointer = "/From"

[[routes]]
path = "/x//y"
upstream = "sending"
target = "org"

[[routes]]
path = "/domains"
upstream = "nowhere"
target = "nope"

[[routes]]
methods = ["GET"]
path = "/domains"
upstream = "sending"
target = "key"

[[routes]]
methods = ["GET"]
path = "/domains"
upstream = "sending"
target = "key"
"#;
        let err = Config::from_toml_str(text, "gw.toml").unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "listen",
            "admin_listen",
            "threads",
            "grace_period_ms",
            "keys.headers[0].name",
            "keys.headers[1].name",
            "limits.max_send_body_bytes",
            "log.format",
            "upstreams.sending.backends[0]",
            "upstreams.empty.backends",
            "routes[0].methods[0]",
            "routes[0].upstream",
            "routes[0].messages_pointer",
            "routes[1].target",
            "routes[2].path",
            "routes[2].sender_pointer",
            "routes[3].path",
            "routes[4].target",
            "routes[4].upstream",
            "routes[6]",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        assert_eq!(keys.len(), 20, "{err}");
        let text = err.to_string();
        assert!(text.contains(
            "gw.toml: routes[0].upstream: no upstream group named \"sendng\" (known: empty, sending)"
        ));
        assert!(
            text.contains("gw.toml: routes[6]: same methods and path as routes[5]"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 20);
    }

    #[test]
    fn file_upstreams_replace_the_defaults_and_default_routes_say_what_is_missing() {
        let p = problems("[upstreams.sending]\nbackends = [\"10.0.0.1:443\"]\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "upstreams");
        assert!(
            p[0].message.contains("\"domains\" is not defined"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn limits_flow_into_the_default_routes_and_are_reported_once() {
        let config = Config::from_toml_str("[limits]\nmax_send_body_bytes = 1000\n", "t.toml");
        assert_eq!(config.unwrap().routes[3].max_body_bytes, 1000);

        let p = problems("[limits]\nmax_send_body_bytes = 0\n");
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["limits.max_send_body_bytes"]);
    }

    #[test]
    fn an_empty_upstreams_table_is_an_error() {
        let p = problems("[upstreams]\n");
        assert_eq!(p[0].key, "upstreams");
        assert!(p[0].message.contains("at least one upstream group"));
    }

    #[test]
    fn routes_in_the_file_replace_the_defaults_and_resolve_body_limits() {
        let text = r#"
[limits]
max_batch_body_bytes = 1000

[[routes]]
methods = ["POST"]
path = "/email/batch"
upstream = "sending"
target = "sender"
messages_pointer = ""

[[routes]]
path = "/status"
upstream = "sending"
target = "public"
max_body_bytes = 10
"#;
        let config = Config::from_toml_str(text, "t.toml").unwrap();
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[0].max_body_bytes, 1000);
        assert_eq!(
            config.routes[0].target,
            Target::Sender(SenderSpec {
                sender_pointer: "/From".into(),
                messages: Messages::RootArray
            })
        );
        assert_eq!(config.routes[1].max_body_bytes, 10);
        assert!(config.routes[1].methods.is_empty());
    }

    #[test]
    fn server_targets_need_their_capture_and_captures_their_target() {
        let text = r#"
[[routes]]
methods = ["GET"]
path = "/servers/{server}"
upstream = "sending"
target = "server_id"

[[routes]]
path = "/server/**"
upstream = "sending"
target = "server"

[[routes]]
path = "/servers"
upstream = "sending"
target = "server_id"

[[routes]]
path = "/x/{server}"
upstream = "sending"
target = "org"

[[routes]]
path = "/y/{server}"
upstream = "sending"
target = "domain"

[[routes]]
path = "/z/{domain}"
upstream = "sending"
target = "server"
sender_pointer = "/From"
"#;
        let err = Config::from_toml_str(text, "t.toml").unwrap_err();
        let got: Vec<(&str, &str)> = err
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.message.as_str()))
            .collect();
        let keys: Vec<&str> = got.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "routes[2].target",
                "routes[3].path",
                "routes[4].target",
                "routes[4].path",
                "routes[5].sender_pointer",
                "routes[5].path",
            ],
            "{err}"
        );
        assert!(got[0].1.contains("needs a {server} segment"), "{err}");
        assert!(got[1]
            .1
            .contains("only meaningful with target = \"server_id\""));

        let ok = &text[..text.find("[[routes]]\npath = \"/servers\"").unwrap()];
        let config = Config::from_toml_str(ok, "t.toml").unwrap();
        assert_eq!(config.routes[0].target, Target::ServerId);
        assert_eq!(config.routes[1].target, Target::Server);
    }

    #[test]
    fn an_all_public_table_needs_no_key_source() {
        let public = "[keys]\nheaders = []\n[[routes]]\npath = \"/**\"\nupstream = \"sending\"\ntarget = \"public\"\n";
        assert!(Config::from_toml_str(public, "t.toml").is_ok());
        let p = problems("[keys]\nheaders = []\n");
        assert_eq!(p[0].key, "keys.headers");
    }

    #[test]
    fn the_annotated_example_documents_the_defaults() {
        let text = include_str!("../examples/scopegate.toml");
        let config = Config::from_toml_str(text, "scopegate.toml").unwrap();
        let d = Config::default();
        let expected = Config {
            secrets: SecretSources {
                pepper_file: Some("/run/secrets/scopegate-pepper".into()),
                admin_token_file: Some("/run/secrets/scopegate-admin-tokens".into()),
                ..d.secrets.clone()
            },
            ..d
        };
        assert_eq!(config, expected);
    }
}
