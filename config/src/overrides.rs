//! Command-line flags layered over the file: one merge function that
//! destructures every flag, so adding a flag without merging it fails to compile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::error::{ConfigError, Problem};
use crate::model::{Config, UpstreamGroup};
use crate::validate::{check_backend, check_group_name, RouteContext};

/// Origin named in errors about flags.
const ORIGIN: &str = "command line";

/// The `scopegate serve` flags that override the file; `None` or empty means
/// "keep the file's value".
///
/// Exists so the gateway's CLI hands over plain values and the merge rules
/// live next to the schema they change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen ADDR`.
    pub admin_listen: Option<SocketAddr>,
    /// `--store PATH`.
    pub store: Option<PathBuf>,
    /// `--upstream NAME=HOST:PORT`, repeatable, as `(NAME, HOST:PORT)`. All the
    /// flags for one NAME together replace that group's backends; a NAME the
    /// config lacks creates a group with default timeouts.
    pub upstreams: Vec<(String, String)>,
    /// `--threads N` (0 = one per CPU).
    pub threads: Option<usize>,
    /// `--tls-cert FILE`: the PEM certificate chain (`tls.cert`).
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key FILE`: the PEM private key (`tls.key`).
    pub tls_key: Option<PathBuf>,
}

impl Config {
    /// Applies command-line flags over this config (flags win), then checks the
    /// result. On error `self` is left unchanged, and the problems name the
    /// flag (`--upstream`) where they can.
    pub fn apply_overrides(&mut self, o: Overrides) -> Result<(), ConfigError> {
        let Overrides {
            listen,
            admin_listen,
            store,
            upstreams,
            threads,
            tls_cert,
            tls_key,
        } = o;
        let mut next = self.clone();
        let mut problems = Vec::new();
        if let Some(listen) = listen {
            next.listen = listen;
        }
        if let Some(admin_listen) = admin_listen {
            next.admin_listen = admin_listen;
        }
        if let Some(store) = store {
            next.store = store;
        }
        if let Some(threads) = threads {
            next.threads = threads;
        }
        if let Some(cert) = tls_cert {
            next.tls.cert = Some(cert);
        }
        if let Some(key) = tls_key {
            next.tls.key = Some(key);
        }
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, backend) in upstreams {
            let flag = format!("{name}={backend}");
            if let Err(message) = check_group_name(&name).and(check_backend(&backend)) {
                problems.push(Problem::new("--upstream", format!("{flag:?}: {message}")));
            }
            groups.entry(name).or_default().push(backend);
        }
        for (name, backends) in groups {
            match next.upstreams.get_mut(&name) {
                Some(group) => group.backends = backends,
                None => {
                    next.upstreams.insert(name, UpstreamGroup::new(backends));
                }
            }
        }
        // Flag problems first: re-checking would report the same bad backend
        // again under its file key, which the user never wrote.
        if problems.is_empty() {
            next.check(&RouteContext::default(), &mut problems);
        }
        ConfigError::check(ORIGIN, problems)?;
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, backend: &str) -> (String, String) {
        (name.to_owned(), backend.to_owned())
    }

    #[test]
    fn flags_replace_file_values() {
        let mut config = Config::default();
        config
            .apply_overrides(Overrides {
                listen: Some("0.0.0.0:80".parse().unwrap()),
                admin_listen: Some("127.0.0.1:9".parse().unwrap()),
                store: Some("/var/lib/scopegate.db".into()),
                upstreams: vec![
                    upstream("sending", "10.0.0.1:443"),
                    upstream("sending", "10.0.0.2:443"),
                ],
                threads: Some(4),
                tls_cert: Some("/etc/gw/chain.pem".into()),
                tls_key: Some("/etc/gw/key.pem".into()),
            })
            .unwrap();
        assert_eq!(config.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(config.admin_listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(config.store, PathBuf::from("/var/lib/scopegate.db"));
        assert_eq!(config.threads, 4);
        assert_eq!(
            config.tls.files(),
            Some((&"/etc/gw/chain.pem".into(), &"/etc/gw/key.pem".into()))
        );
        assert_eq!(
            config.upstreams["sending"].backends,
            ["10.0.0.1:443", "10.0.0.2:443"]
        );
        assert_eq!(
            config.upstreams["domains"],
            Config::default().upstreams["domains"]
        );
    }

    #[test]
    fn no_flags_change_nothing() {
        let mut config = Config::default();
        config.apply_overrides(Overrides::default()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn an_unknown_upstream_name_creates_a_group_with_default_timeouts() {
        let mut config = Config::default();
        config
            .apply_overrides(Overrides {
                upstreams: vec![upstream("tracking", "tracker.internal:8080")],
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(
            config.upstreams["tracking"],
            UpstreamGroup::new(vec!["tracker.internal:8080".into()])
        );
    }

    #[test]
    fn a_bad_flag_is_a_problem_and_leaves_the_config_unchanged() {
        let mut config = Config::default();
        let err = config
            .apply_overrides(Overrides {
                threads: Some(2),
                upstreams: vec![upstream("sending", "10.0.0.1"), upstream("a b", "h:1")],
                ..Overrides::default()
            })
            .unwrap_err();
        assert_eq!(err.origin, "command line");
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.to_string().starts_with(
            "command line: --upstream: \"sending=10.0.0.1\": \"10.0.0.1\" is not HOST:PORT"
        ));
        assert_eq!(config, Config::default());

        let err = config
            .apply_overrides(Overrides {
                admin_listen: Some(config.listen),
                ..Overrides::default()
            })
            .unwrap_err();
        assert!(err.has_key("admin_listen"), "{err}");
    }
}
