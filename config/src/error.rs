//! Errors that name every bad setting at once.

use std::fmt;

/// Everything wrong with one configuration source.
///
/// Exists so an operator fixes a file in one pass: validation collects every
/// problem instead of stopping at the first, and each one carries the dotted key
/// it concerns. `Display` prints one line per problem, `origin: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.origin, .problems))]
pub struct ConfigError {
    /// Where the settings came from: the file name, `command line`,
    /// `environment`, or `config` for a value built in code.
    pub origin: String,
    /// Every problem found, in the order they were found; never empty.
    pub problems: Vec<Problem>,
}

/// One bad setting: which key, and what is wrong with it.
///
/// Exists so callers (and tests) can match on the key instead of parsing text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key such as `routes[3].upstream` (zero-based indices), a flag such
    /// as `--upstream`, or empty when the problem concerns the whole source.
    pub key: String,
    /// What is wrong and, where it helps, what was expected.
    pub message: String,
}

impl Problem {
    /// Builds a problem; exists so call sites stay one line.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl ConfigError {
    /// Wraps collected problems, or returns `Ok` when there are none; exists so
    /// every "collect, then decide" site ends the same way.
    pub(crate) fn check(origin: &str, problems: Vec<Problem>) -> Result<(), ConfigError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Whether some problem concerns exactly `key`; exists for callers that
    /// react to one setting (and for tests).
    pub fn has_key(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }
}

fn render(origin: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("{origin}: {p}")).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_per_problem_with_origin_and_key() {
        let err = ConfigError {
            origin: "gw.toml".into(),
            problems: vec![
                Problem::new("listen", "invalid socket address"),
                Problem::new("", "cannot read the file"),
            ],
        };
        assert_eq!(
            err.to_string(),
            "gw.toml: listen: invalid socket address\ngw.toml: cannot read the file"
        );
    }
}
