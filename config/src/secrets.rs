//! Reading the pepper and admin tokens from the environment and files.
//!
//! The config names where secrets live; this module reads them, through the
//! [`Env`] trait so tests feed a map instead of touching the process.

use std::fmt;
use std::io;
use std::path::Path;

use crate::error::{ConfigError, Problem};
use crate::model::{Config, SecretSources};

/// Origin named in errors about secrets.
const ORIGIN: &str = "environment";

/// Shortest accepted pepper or admin token, in bytes: shorter ones are guessable.
pub const MIN_SECRET_BYTES: usize = 16;

/// Where secrets are read from; exists so tests can supply them without
/// setting process-wide environment variables or writing files.
pub trait Env {
    /// The value of an environment variable, `None` when unset or not UTF-8.
    fn var(&self, name: &str) -> Option<String>;
    /// The contents of a file.
    fn read_file(&self, path: &Path) -> io::Result<String>;
}

/// The real process environment and file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        // std may panic on such names; validation reports them instead.
        if name.is_empty() || name.contains(['=', '\0']) {
            return None;
        }
        std::env::var(name).ok()
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Secret values resolved at start-up.
///
/// Kept apart from [`Config`] so the config can be logged, compared and cloned
/// freely; `Debug` shows lengths and names, never values.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    /// Key for the keyed BLAKE3 digest of API keys; at least 16 bytes.
    pub pepper: Vec<u8>,
    /// Tokens accepted by the admin API; empty means the admin API refuses
    /// every `/v1` call.
    pub admin_tokens: Vec<AdminToken>,
}

/// One admin API token and the name that audit logs record for it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Who or what holds the token (`admin` for the environment's token).
    pub name: String,
    /// The bearer token itself.
    pub token: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field(
                "pepper",
                &format_args!("<redacted {} bytes>", self.pepper.len()),
            )
            .field("admin_tokens", &self.admin_tokens)
            .finish()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("token", &format_args!("<redacted>"))
            .finish()
    }
}

impl Config {
    /// Reads the pepper and admin tokens named by `[secrets]`.
    ///
    /// The pepper must be present: `serve` refuses to start without one. For
    /// both secrets a non-empty environment variable wins over the file (the
    /// file is then not read). No admin token is not an error, unless
    /// `admin_listen` is not a loopback address.
    pub fn resolve_secrets(&self, env: &dyn Env) -> Result<Secrets, ConfigError> {
        let mut problems = Vec::new();
        let pepper = resolve_pepper(&self.secrets, env, &mut problems);
        let admin_tokens = resolve_admin_tokens(&self.secrets, env, &mut problems);
        if admin_tokens.is_empty() && !self.admin_listen.ip().is_loopback() {
            problems.push(Problem::new(
                "admin_listen",
                format!(
                    "refusing to expose the admin API on a non-loopback address ({}) without an admin token; set {}",
                    self.admin_listen,
                    token_hint(&self.secrets)
                ),
            ));
        }
        ConfigError::check(ORIGIN, problems)?;
        Ok(Secrets {
            pepper: pepper.unwrap_or_default(),
            admin_tokens,
        })
    }
}

fn from_env(env: &dyn Env, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    env.var(name).filter(|v| !v.is_empty())
}

fn read(env: &dyn Env, path: &Path, key: &str, problems: &mut Vec<Problem>) -> Option<String> {
    env.read_file(path)
        .map_err(|e| {
            problems.push(Problem::new(
                key,
                format!("cannot read {}: {e}", path.display()),
            ))
        })
        .ok()
}

fn strip_one_newline(s: &str) -> &str {
    s.strip_suffix('\n')
        .map_or(s, |s| s.strip_suffix('\r').unwrap_or(s))
}

fn resolve_pepper(
    s: &SecretSources,
    env: &dyn Env,
    problems: &mut Vec<Problem>,
) -> Option<Vec<u8>> {
    let (key, value) = match (from_env(env, &s.pepper_env), &s.pepper_file) {
        (Some(value), _) => ("secrets.pepper_env", value),
        (None, Some(path)) => (
            "secrets.pepper_file",
            read(env, path, "secrets.pepper_file", problems)?,
        ),
        (None, None) => {
            let source = if s.pepper_env.is_empty() {
                "secrets.pepper_file".to_owned()
            } else {
                format!(
                    "the {} environment variable (or secrets.pepper_file)",
                    s.pepper_env
                )
            };
            problems.push(Problem::new(
                "secrets.pepper_env",
                format!(
                    "serve refuses to start without a pepper: set {source} to a random value of at least {MIN_SECRET_BYTES} bytes, e.g. the output of `openssl rand -hex 32`; keep it, since changing it invalidates every issued key"
                ),
            ));
            return None;
        }
    };
    let pepper = strip_one_newline(&value).as_bytes().to_vec();
    if pepper.len() < MIN_SECRET_BYTES {
        problems.push(Problem::new(
            key,
            format!(
                "the pepper is {} bytes; at least {MIN_SECRET_BYTES} are required",
                pepper.len()
            ),
        ));
        return None;
    }
    Some(pepper)
}

fn resolve_admin_tokens(
    s: &SecretSources,
    env: &dyn Env,
    problems: &mut Vec<Problem>,
) -> Vec<AdminToken> {
    let mut tokens = Vec::new();
    if let Some(token) = from_env(env, &s.admin_token_env) {
        tokens.push(("secrets.admin_token_env", admin("admin", token.trim())));
    }
    if let Some(path) = &s.admin_token_file {
        const KEY: &str = "secrets.admin_token_file";
        if let Some(text) = read(env, path, KEY, problems) {
            match parse_token_file(&text) {
                Ok(parsed) => tokens.extend(parsed.into_iter().map(|t| (KEY, t))),
                Err(message) => problems.push(Problem::new(KEY, message)),
            }
        }
    }
    let mut names = Vec::new();
    for (key, token) in &tokens {
        if token.token.len() < MIN_SECRET_BYTES {
            problems.push(Problem::new(
                *key,
                format!(
                    "admin token {:?} is {} bytes; at least {MIN_SECRET_BYTES} are required",
                    token.name,
                    token.token.len()
                ),
            ));
        }
        if names.contains(&&token.name) {
            problems.push(Problem::new(
                *key,
                format!("admin token name {:?} is used twice", token.name),
            ));
        }
        names.push(&token.name);
    }
    tokens.into_iter().map(|(_, t)| t).collect()
}

fn admin(name: &str, token: &str) -> AdminToken {
    AdminToken {
        name: name.to_owned(),
        token: token.to_owned(),
    }
}

/// `name:token` per line, or a single bare token named `admin`. Blank lines
/// and `#` comments are skipped. Errors never quote a token.
fn parse_token_file(text: &str) -> Result<Vec<AdminToken>, String> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if let [(_, only)] = lines.as_slice() {
        if !only.contains(':') {
            return Ok(vec![admin("admin", only)]);
        }
    }
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    };
    lines
        .into_iter()
        .map(|(number, line)| match line.split_once(':') {
            Some((name, token)) if name_ok(name.trim()) => Ok(admin(name.trim(), token.trim())),
            _ => Err(format!(
                "line {number}: expected `name:token` (names use letters, digits, '-', '_', '.', '@'), or a file holding one bare token"
            )),
        })
        .collect()
}

fn token_hint(s: &SecretSources) -> String {
    if s.admin_token_env.is_empty() {
        "secrets.admin_token_file".to_owned()
    } else {
        format!("{} or secrets.admin_token_file", s.admin_token_env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    const PEPPER: &str = "0123456789abcdef0123456789abcdef";

    #[derive(Default)]
    struct FakeEnv {
        vars: HashMap<String, String>,
        files: HashMap<PathBuf, String>,
    }

    impl FakeEnv {
        fn var(mut self, name: &str, value: &str) -> Self {
            self.vars.insert(name.into(), value.into());
            self
        }
        fn file(mut self, path: &str, text: &str) -> Self {
            self.files.insert(path.into(), text.into());
            self
        }
    }

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn read_file(&self, path: &Path) -> io::Result<String> {
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    fn with_files(pepper: bool, tokens: bool) -> Config {
        let mut config = Config::default();
        if pepper {
            config.secrets.pepper_file = Some("/run/pepper".into());
        }
        if tokens {
            config.secrets.admin_token_file = Some("/run/tokens".into());
        }
        config
    }

    #[test]
    fn a_missing_pepper_refuses_to_start_and_says_how_to_fix_it() {
        let err = Config::default()
            .resolve_secrets(&FakeEnv::default().var("SCOPEGATE_PEPPER", ""))
            .unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].key, "secrets.pepper_env");
        assert!(err.problems[0]
            .message
            .contains("refuses to start without a pepper"));
        assert!(err.problems[0].message.contains("SCOPEGATE_PEPPER"));
    }

    #[test]
    fn a_short_pepper_is_refused() {
        let err = Config::default()
            .resolve_secrets(&FakeEnv::default().var("SCOPEGATE_PEPPER", "short\n"))
            .unwrap_err();
        assert!(err.to_string().contains("the pepper is 5 bytes"), "{err}");
    }

    #[test]
    fn the_pepper_comes_from_the_env_first_then_the_file() {
        let env = FakeEnv::default().file("/run/pepper", &format!("{PEPPER}\n"));
        let secrets = with_files(true, false).resolve_secrets(&env).unwrap();
        assert_eq!(secrets.pepper, PEPPER.as_bytes());
        assert!(secrets.admin_tokens.is_empty());

        let env = env.var("SCOPEGATE_PEPPER", "from-the-environment!");
        let secrets = with_files(true, false).resolve_secrets(&env).unwrap();
        assert_eq!(secrets.pepper, b"from-the-environment!");

        let err = with_files(true, false)
            .resolve_secrets(&FakeEnv::default())
            .unwrap_err();
        assert!(err.has_key("secrets.pepper_file"), "{err}");
    }

    #[test]
    fn admin_tokens_come_from_the_env_and_a_named_token_file() {
        let env = FakeEnv::default()
            .var("SCOPEGATE_PEPPER", PEPPER)
            .var("SCOPEGATE_ADMIN_TOKEN", "env-token-0123456789\n")
            .file(
                "/run/tokens",
                "# deploy robots\nci: ci-token-0123456789\n\nalice@example.com:alice-token-0123456789\n",
            );
        let secrets = with_files(false, true).resolve_secrets(&env).unwrap();
        let names: Vec<(&str, &str)> = secrets
            .admin_tokens
            .iter()
            .map(|t| (t.name.as_str(), t.token.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("admin", "env-token-0123456789"),
                ("ci", "ci-token-0123456789"),
                ("alice@example.com", "alice-token-0123456789")
            ]
        );
    }

    #[test]
    fn a_token_file_with_one_bare_token_names_it_admin() {
        let env = FakeEnv::default()
            .var("SCOPEGATE_PEPPER", PEPPER)
            .file("/run/tokens", "bare-token-0123456789\n");
        let secrets = with_files(false, true).resolve_secrets(&env).unwrap();
        assert_eq!(secrets.admin_tokens[0].name, "admin");
        assert_eq!(secrets.admin_tokens[0].token, "bare-token-0123456789");
    }

    #[test]
    fn bad_tokens_are_reported_without_their_values() {
        let env = FakeEnv::default()
            .var("SCOPEGATE_PEPPER", PEPPER)
            .var("SCOPEGATE_ADMIN_TOKEN", "admin-token-0123456789")
            .file("/run/tokens", "ci:short\nadmin:another-token-0123456789\n");
        let err = with_files(false, true).resolve_secrets(&env).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.to_string().contains("\"ci\" is 5 bytes"));
        assert!(err.to_string().contains("\"admin\" is used twice"));
        assert!(!err.to_string().contains("short"));

        let env = env.file(
            "/run/tokens",
            "one-token-0123456789\nsecond-token-0123456789\n",
        );
        let err = with_files(false, true).resolve_secrets(&env).unwrap_err();
        assert!(
            err.to_string().contains("line 1: expected `name:token`"),
            "{err}"
        );
        assert!(!err.to_string().contains("one-token"));
    }

    #[test]
    fn a_non_loopback_admin_listener_needs_a_token() {
        let config = Config {
            admin_listen: "0.0.0.0:8081".parse().unwrap(),
            ..Config::default()
        };
        let env = FakeEnv::default().var("SCOPEGATE_PEPPER", PEPPER);
        let err = config.resolve_secrets(&env).unwrap_err();
        assert!(err.has_key("admin_listen"));
        assert!(err.to_string().contains("refusing to expose the admin API"));

        let env = env.var("SCOPEGATE_ADMIN_TOKEN", "admin-token-0123456789");
        assert!(config.resolve_secrets(&env).is_ok());
    }

    #[test]
    fn debug_output_redacts_every_secret() {
        let env = FakeEnv::default()
            .var("SCOPEGATE_PEPPER", PEPPER)
            .var("SCOPEGATE_ADMIN_TOKEN", "admin-token-0123456789");
        let secrets = Config::default().resolve_secrets(&env).unwrap();
        let debug = format!("{secrets:?} {:#?}", secrets);
        assert!(!debug.contains(PEPPER) && !debug.contains("admin-token-0123456789"));
        assert!(debug.contains("redacted") && debug.contains("\"admin\""));
    }
}
