//! `scopegate check`: the decision the gateway would make for one request,
//! computed offline from a store and a config, with the same code the proxy
//! runs.

use std::fmt;

use pingora::http::RequestHeader;
use scopegate_config::Config;
use scopegate_keystore::KeyStore;

use crate::ops::metrics::Metrics;
use crate::request::ctx::Ctx;
use crate::request::decide::{check_senders, decide_head, Head, Verdict};
use crate::request::routing::Routing;

/// The outcome of an offline check.
pub struct Decision {
    /// Whether the request would be forwarded.
    pub admitted: bool,
    /// Status the gateway would answer with when refusing (0 when admitted).
    pub status: u16,
    /// `admitted`, `invalid_key`, …
    pub decision: &'static str,
    /// The refusal reason, if any.
    pub reason: Option<&'static str>,
    /// Upstream group and path the request would be forwarded to.
    pub upstream: Option<(String, String)>,
    /// Identity headers the upstream would receive.
    pub identity: Vec<(String, String)>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.admitted {
            write!(f, "ADMIT")?;
            if let Some((group, path)) = &self.upstream {
                write!(f, " -> {group} {path}")?;
            }
            for (k, v) in &self.identity {
                write!(f, "\n  {k}: {v}")?;
            }
            Ok(())
        } else {
            write!(
                f,
                "REFUSE {} {} (reason: {})",
                self.status,
                self.decision,
                self.reason.unwrap_or("-")
            )
        }
    }
}

/// Decides one request from its method, path, key and (for sends) body.
pub fn decide(
    config: &Config,
    keystore: &KeyStore,
    method: &str,
    path: &str,
    key: &str,
    body: &[u8],
) -> anyhow::Result<Decision> {
    let metrics = Metrics::new();
    let routing = Routing::build(config.clone(), &metrics).map_err(anyhow::Error::msg)?;
    let mut req =
        RequestHeader::build(method.to_ascii_uppercase().as_str(), path.as_bytes(), None)?;
    if let Some(h) = config.keys.headers.first() {
        let value = match &h.scheme {
            Some(s) => format!("{s} {key}"),
            None => key.to_string(),
        };
        req.insert_header(h.name.clone(), value)?;
    }
    let mut ctx = Ctx::new();
    let refused =
        |r: crate::request::respond::Reply, o: crate::ops::metrics::Outcome, why| Decision {
            admitted: false,
            status: r.status(),
            decision: o.as_str(),
            reason: why,
            upstream: None,
            identity: Vec::new(),
        };
    let guard = crate::request::guard::Guard::new();
    match decide_head(keystore, &guard, &metrics, &routing, &req, &mut ctx) {
        Head::Refuse(r, o, why) => return Ok(refused(r, o, why)),
        Head::Forward => {}
        Head::NeedBody { key, spec, limit } => {
            if body.len() as u64 > limit {
                let r = crate::request::respond::Reply::TooLarge;
                return Ok(refused(
                    r,
                    crate::ops::metrics::Outcome::TooLarge,
                    Some("content_length"),
                ));
            }
            if let Err(Verdict::Refuse(r, o, why)) =
                check_senders(keystore, &metrics, &mut ctx, &key, body, &spec)
            {
                return Ok(refused(r, o, why));
            }
        }
    }
    Ok(Decision {
        admitted: true,
        status: 0,
        decision: "admitted",
        reason: None,
        upstream: ctx.group.as_ref().map(|g| {
            (
                g.name.clone(),
                ctx.upstream_uri.clone().unwrap_or_else(|| path.to_string()),
            )
        }),
        identity: match &ctx.identity {
            Some(Ok(values)) => routing
                .identity
                .names
                .iter()
                .zip(values)
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            Some(Err(e)) => anyhow::bail!("an identity header value is invalid: {e}"),
            None => Vec::new(),
        },
    })
}
