//! Finding the API key in a request: the configured headers (by default
//! `Authorization: Bearer`, `X-Api-Key`, `X-Postmark-Server-Token`, `X-Postmark-Account-Token`), and the
//! query string only when configured.
//!
//! Two *different* keys in one request are refused (400) rather than picking
//! one: the gateway and the upstream might otherwise pick differently.

use http::{HeaderMap, HeaderName};
use scopegate_config::KeySources;

/// The configured key sources with their header names parsed once per
/// configuration: a lookup by a parsed name skips parsing (and, for custom
/// names, copying) the name on every request.
#[derive(Debug, Clone)]
pub struct KeyHeaders {
    headers: Vec<(HeaderName, Option<String>)>,
    query_param: Option<String>,
}

impl KeyHeaders {
    /// Parses the configured names. The config's validation already insists
    /// on RFC 9110 tokens, which are valid header names.
    pub fn new(sources: &KeySources) -> Result<KeyHeaders, String> {
        let headers = sources
            .headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.name.as_bytes())
                    .map(|n| (n, h.scheme.clone()))
                    .map_err(|_| format!("{:?} is not a valid HTTP header name", h.name))
            })
            .collect::<Result<_, _>>()?;
        Ok(KeyHeaders {
            headers,
            query_param: sources.query_param.clone(),
        })
    }

    /// The header names a key may arrive in.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers.iter().map(|(n, _)| n)
    }
}

/// What the request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No key anywhere.
    Missing,
    /// One key (possibly repeated identically).
    One(&'a str),
    /// Two or more different keys.
    Conflicting,
}

/// Looks for the key in the configured headers and query parameter.
pub fn find<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    sources: &KeyHeaders,
) -> Presented<'a> {
    let mut found: Option<&'a str> = None;
    let mut conflict = false;
    let mut offer = |v: &'a str| match found {
        None => found = Some(v),
        Some(f) if f == v => {}
        Some(_) => conflict = true,
    };
    for (name, scheme) in &sources.headers {
        for value in headers.get_all(name) {
            // A value that is not text cannot be a key, but it was presented.
            let v = value.to_str().unwrap_or("\u{0}").trim();
            match scheme {
                Some(scheme) => {
                    let Some((s, token)) = v.split_once(' ') else {
                        // "Bearer" alone: a key header with no key in it.
                        if v.eq_ignore_ascii_case(scheme) {
                            offer("");
                        }
                        continue;
                    };
                    // Other schemes (Basic, …) are not API keys.
                    if s.eq_ignore_ascii_case(scheme) {
                        offer(token.trim());
                    }
                }
                None => offer(v),
            }
        }
    }
    if let (Some(param), Some(q)) = (&sources.query_param, query) {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == param {
                offer(v);
            }
        }
    }
    if conflict {
        Presented::Conflicting
    } else {
        found.map_or(Presented::Missing, Presented::One)
    }
}

/// The query string without the key parameter, so a key read from the query
/// never reaches the upstream.
pub fn strip_query_param(query: &str, param: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != param)
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use scopegate_config::Config;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn sources() -> KeyHeaders {
        KeyHeaders::new(&Config::default().keys).unwrap()
    }

    #[test]
    fn each_default_header_works() {
        let s = sources();
        for h in [
            headers(&[("authorization", "Bearer sg_abc")]),
            headers(&[("authorization", "bearer   sg_abc ")]),
            headers(&[("x-api-key", "sg_abc")]),
            headers(&[("x-postmark-server-token", "sg_abc")]),
            headers(&[("x-postmark-account-token", "sg_abc")]),
            // The same key in two headers is one key.
            headers(&[
                ("x-postmark-account-token", "sg_abc"),
                ("x-postmark-server-token", "sg_abc"),
            ]),
        ] {
            assert_eq!(find(&h, None, &s), Presented::One("sg_abc"));
        }
        let two = headers(&[
            ("x-postmark-server-token", "sg_abc"),
            ("x-postmark-account-token", "sg_xyz"),
        ]);
        assert_eq!(find(&two, None, &s), Presented::Conflicting);
    }

    #[test]
    fn missing_conflicting_and_repeated() {
        let s = sources();
        assert_eq!(find(&headers(&[]), None, &s), Presented::Missing);
        assert_eq!(
            find(
                &headers(&[("authorization", "Basic dXNlcjpwYXNz")]),
                None,
                &s
            ),
            Presented::Missing
        );
        assert_eq!(
            find(
                &headers(&[("authorization", "Bearer a"), ("x-api-key", "b")]),
                None,
                &s
            ),
            Presented::Conflicting
        );
        assert_eq!(
            find(
                &headers(&[("x-api-key", "a"), ("x-api-key", "b")]),
                None,
                &s
            ),
            Presented::Conflicting
        );
        assert_eq!(
            find(
                &headers(&[("authorization", "Bearer a"), ("x-api-key", "a")]),
                None,
                &s
            ),
            Presented::One("a")
        );
        assert_eq!(
            find(&headers(&[("authorization", "Bearer")]), None, &s),
            Presented::One("")
        );
    }

    #[test]
    fn query_only_when_configured() {
        let mut s = sources();
        assert_eq!(
            find(&headers(&[]), Some("api_key=a"), &s),
            Presented::Missing
        );
        s = KeyHeaders::new(&scopegate_config::KeySources {
            query_param: Some("api_key".into()),
            ..Config::default().keys
        })
        .unwrap();
        assert_eq!(
            find(&headers(&[]), Some("x=1&api_key=a"), &s),
            Presented::One("a")
        );
        assert_eq!(
            find(&headers(&[("x-api-key", "b")]), Some("api_key=a"), &s),
            Presented::Conflicting
        );
        assert_eq!(strip_query_param("x=1&api_key=a&y=2", "api_key"), "x=1&y=2");
    }
}
