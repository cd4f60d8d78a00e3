//! scopegate's configuration: the TOML schema, its defaults, validation, and
//! the command-line overrides merge. No network code lives here.
//!
//! Every setting has a default, so `scopegate serve` runs on flags alone:
//! [`Config::default()`] is exactly what an empty file gives. A file is parsed,
//! then converted into the typed [`Config`], then checked; every problem found
//! is reported at once, each with the dotted key it concerns and the file
//! name ([`ConfigError`]). Flags are merged by [`Config::apply_overrides`], and
//! secret values are read only by [`Config::resolve_secrets`], so a `Config`
//! never holds a secret. `examples/scopegate.toml` is the annotated reference
//! of every key.
//!
//! ```
//! use scopegate_config::{Config, Overrides};
//!
//! let mut config = Config::from_toml_str("listen = \"0.0.0.0:8080\"", "gw.toml")?;
//! config.apply_overrides(Overrides {
//!     upstreams: vec![("sending".into(), "10.0.0.5:443".into())],
//!     ..Overrides::default()
//! })?;
//! assert_eq!(config.upstreams["sending"].backends, ["10.0.0.5:443"]);
//! # Ok::<(), scopegate_config::ConfigError>(())
//! ```
//!
//! # Layout
//! - `model`: the canonical [`Config`] and its parts, with their defaults.
//! - `route`: the route table: [`Route`], [`Target`], [`PathPattern`] and the
//!   default routes.
//! - `file`: the TOML schema (all keys optional, unknown keys refused) and its
//!   conversion into [`Config`].
//! - `validate`: checks on a typed [`Config`] that collect every problem.
//! - `overrides`: [`Overrides`], the command-line flags, and their merge.
//! - `secrets`: [`Env`], [`Secrets`] and reading the pepper and admin tokens.
//! - `error`: [`ConfigError`] and [`Problem`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod edge;
mod error;
mod file;
mod model;
mod overrides;
mod route;
mod secrets;
mod validate;

use std::path::Path;

pub use edge::{Connections, Tls};
pub use error::{ConfigError, Problem};
pub use model::{
    AccessLog, BruteForce, Config, Fleet, KeyHeader, KeySources, Limits, LogFormat, LogSettings,
    ResponseFormat, SecretSources, UpstreamGroup, Usage,
};
pub use overrides::Overrides;
pub use route::{Messages, PathPattern, Route, Segment, SenderSpec, Target};
pub use secrets::{AdminToken, Env, ProcessEnv, Secrets, MIN_SECRET_BYTES};

impl Config {
    /// Parses and validates a file's text; `origin` (the file name) prefixes
    /// every message. An empty text gives [`Config::default()`].
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        file::parse(text, origin)
    }

    /// Reads the file at `path`, then [`Config::from_toml_str`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            problems: vec![Problem::new(
                "",
                format!("cannot read the config file: {e}"),
            )],
        })?;
        Config::from_toml_str(&text, &origin)
    }

    /// Checks a config built or changed in code (files and flags are checked
    /// on the way in). Errors carry the origin `config`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.check(&validate::RouteContext::default(), &mut problems);
        ConfigError::check("config", problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_names_the_file_it_could_not_read() {
        let err = Config::load(Path::new("/nonexistent/scopegate.toml")).unwrap_err();
        assert_eq!(err.origin, "/nonexistent/scopegate.toml");
        assert!(err
            .to_string()
            .starts_with("/nonexistent/scopegate.toml: cannot read the config file:"));
    }

    #[test]
    fn load_reads_the_example_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scopegate.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.routes, Config::default_routes());
    }

    #[test]
    fn validate_reports_problems_in_a_config_built_in_code() {
        let mut config = Config::default();
        config.routes[0].upstream = "nowhere".into();
        config.routes[1].max_body_bytes = 0;
        let err = config.validate().unwrap_err();
        assert_eq!(err.origin, "config");
        assert!(err.has_key("routes[0].upstream"));
        assert!(err.has_key("routes[1].max_body_bytes"));
    }
}
