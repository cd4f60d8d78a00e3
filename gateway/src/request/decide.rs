//! The decision for one request: canonical path, route, key, scope and, for
//! sends, every From domain in the body.
//!
//! Order matters and is fixed: an undecodable path is a 400 and an unknown
//! route a 404 before any key is looked at; a key is checked before any body
//! is read, so unauthenticated clients cannot make the gateway buffer
//! megabytes; a send body is checked against the snapshot current *after* it
//! arrived, so a revocation during a slow upload still applies.
//!
//! No I/O here: [`decide_head`] and [`check_senders`] are synchronous
//! functions of the key store's current snapshot, the routing, the request
//! head and the body, so tests, `scopegate check` and the benches call them
//! without a server. [`crate::request::proxy`] reads the body between the
//! two, and forwards bodies too large to replay.

use std::time::Instant;

use bytes::BytesMut;
use http::HeaderValue;
use pingora::http::RequestHeader;
use scopegate_config::{SenderSpec, Target as RouteTarget};
use scopegate_keystore::{Access, DomainRef, Hashed, KeyStore, Principal, Refusal, Target};

use crate::ops::metrics::{Metrics, Outcome};
use crate::request::canon;
use crate::request::ctx::Ctx;
use crate::request::guard::Guard;
use crate::request::head::content_length;
use crate::request::keys::{self, Presented};
use crate::request::respond::Reply;
use crate::request::routing::Routing;

/// What `request_filter` should do.
pub enum Verdict {
    /// Let Pingora forward the request as rewritten.
    Forward,
    /// The gateway already wrote the whole response (large-body forwarding).
    Answered,
    /// Answer with this refusal.
    Refuse(Reply, Outcome, Option<&'static str>),
}

fn refuse_key(metrics: &Metrics, r: Refusal) -> Verdict {
    if r == Refusal::MissingKey {
        return Verdict::Refuse(Reply::MissingKey, Outcome::MissingKey, Some(r.as_str()));
    }
    metrics.invalid_key(r);
    Verdict::Refuse(Reply::InvalidKey, Outcome::InvalidKey, Some(r.as_str()))
}

/// A scope refusal as the reply; `server` says the route targets a server,
/// whose read-only answer names it.
fn refuse_scope(r: Refusal, server: bool) -> Verdict {
    match r {
        Refusal::ReadOnly if server => {
            Verdict::Refuse(Reply::ServerReadOnly, Outcome::Forbidden, Some(r.as_str()))
        }
        Refusal::ReadOnly => Verdict::Refuse(Reply::ReadOnly, Outcome::Forbidden, Some(r.as_str())),
        Refusal::OrgWideRequired => {
            Verdict::Refuse(Reply::OrgWideRequired, Outcome::Forbidden, Some(r.as_str()))
        }
        Refusal::ServerKeyRequired => Verdict::Refuse(
            Reply::ServerKeyRequired,
            Outcome::Forbidden,
            Some(r.as_str()),
        ),
        Refusal::ServerNotVisible => Verdict::Refuse(
            Reply::ServerNotVisible,
            Outcome::Forbidden,
            Some(r.as_str()),
        ),
        _ => Verdict::Refuse(Reply::NotFound, Outcome::NotFound, Some(r.as_str())),
    }
}

/// Sets the identity header values the upstream receives for an admitted
/// key, in the order of [`crate::request::routing::Identity::names`]. The values are
/// written into one buffer and share it (one allocation, and cloning them
/// for the upstream request is a reference count); the role is static.
fn admit(ctx: &mut Ctx, p: &Principal<'_>, version: u64) {
    use std::fmt::Write as _;
    let (org, user) = (&*p.user.org, &*p.user.id);
    let mut buf = BytesMut::with_capacity(96 + org.len() + user.len());
    let value = |buf: &mut BytesMut| HeaderValue::from_maybe_shared(buf.split().freeze());
    let values = (|| {
        let _ = scopegate_keystore::secret::write_id(&mut buf, p.key.id);
        let key = value(&mut buf)?;
        buf.extend_from_slice(org.as_bytes());
        let org = value(&mut buf)?;
        buf.extend_from_slice(user.as_bytes());
        let user = value(&mut buf)?;
        let _ = p.write_scope_header(&mut buf);
        let scope = value(&mut buf)?;
        let _ = write!(buf, "{version}");
        let version = value(&mut buf)?;
        // The bound server (a server token), empty when none.
        let server = match p.server() {
            None => HeaderValue::from_static(""),
            Some(s) => {
                buf.extend_from_slice(s.as_bytes());
                value(&mut buf)?
            }
        };
        Ok([
            key,
            org,
            user,
            HeaderValue::from_static(p.role().as_str()),
            scope,
            version,
            server,
        ])
    })();
    ctx.identity = Some(values);
    ctx.key_id = Some(p.key.id);
    ctx.org = Some(p.user.org.clone());
    ctx.outcome = Some(Outcome::Admitted);
}

/// A `{domain}` path segment as a domain reference: digits are the
/// platform's numeric id, anything else a name in canonical form. `None`
/// when the segment cannot be a domain at all (answered like any unknown
/// domain: 404).
fn domain_ref(segment: &str) -> Option<Result<u64, std::borrow::Cow<'_, str>>> {
    if !segment.is_empty() && segment.len() <= 19 && segment.bytes().all(|b| b.is_ascii_digit()) {
        return segment.parse().ok().map(Ok);
    }
    scopegate_keystore::canonical_domain_cow(segment)
        .ok()
        .map(Err)
}

/// A `{server}` path segment as a numeric server id; `None` when it cannot
/// be one (answered like any unknown resource: 404).
fn server_id(segment: &str) -> Option<u64> {
    if segment.is_empty() || segment.len() > 19 || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.parse().ok()
}

/// The part of the decision made from the request header alone.
pub enum Head {
    /// Refuse with this.
    Refuse(Reply, Outcome, Option<&'static str>),
    /// Admitted: forward as rewritten.
    Forward,
    /// A send route: the key is live; the body decides.
    NeedBody {
        /// The key, hashed, to re-check against the snapshot current once the body is in.
        key: Hashed,
        /// Where the senders are.
        spec: SenderSpec,
        /// The route's body limit.
        limit: u64,
    },
}

impl From<Verdict> for Head {
    fn from(v: Verdict) -> Head {
        match v {
            Verdict::Refuse(r, o, why) => Head::Refuse(r, o, why),
            Verdict::Forward | Verdict::Answered => Head::Forward,
        }
    }
}

/// Decides what the request header alone can decide: path, route, key,
/// and the scope for every target but senders. Fills `ctx` (route, group,
/// identity headers, upstream URI).
pub fn decide_head(
    keystore: &KeyStore,
    guard: &Guard,
    metrics: &Metrics,
    routing: &Routing,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> Head {
    let config = &routing.config;
    let method = &req.method;
    let canon = match canon::canonicalize(req.uri.path()) {
        Ok(c) => c,
        Err(e) => {
            return Head::Refuse(
                Reply::BadRequest("bad_path", e.to_string()),
                Outcome::BadRequest,
                Some("bad_path"),
            )
        }
    };
    if let Some(why) = framing_problem(req) {
        return Head::Refuse(
            Reply::BadRequest("ambiguous_framing", why.into()),
            Outcome::BadRequest,
            Some("ambiguous_framing"),
        );
    }
    // An absolute-form target (`GET http://host/path`) is always rewritten
    // to the origin form that was checked.
    let unchanged = canon.unchanged && req.uri.scheme().is_none() && req.uri.authority().is_none();
    let segments: Vec<&str> = canon.segments.iter().map(|s| s.as_ref()).collect();
    let Some(m) = routing.find(method.as_str(), &segments) else {
        return Head::Refuse(Reply::NotFound, Outcome::NotFound, Some("no_route"));
    };
    ctx.route = Some(m.index);
    let route = &m.entry.route;
    // The `{domain}` segment, when its canonical form differs from the request's.
    let mut renamed: Option<(usize, String)> = None;

    // Public routes need no key; they still get identity headers stripped.
    if matches!(route.target, RouteTarget::Public) {
        ctx.group = Some(m.entry.group.clone());
        ctx.outcome = Some(Outcome::Admitted);
        ctx.upstream_uri = upstream_uri(&canon, unchanged, None, req.uri.query(), config);
        return Head::Forward;
    }

    let secret = match keys::find(&req.headers, req.uri.query(), &routing.key_headers) {
        Presented::Missing => return refuse_key(metrics, Refusal::MissingKey).into(),
        Presented::Conflicting => {
            return Head::Refuse(
                Reply::BadRequest(
                    "conflicting_api_keys",
                    "the request carries two different API keys".into(),
                ),
                Outcome::BadRequest,
                Some("conflicting_keys"),
            )
        }
        Presented::One(s) => s,
    };
    // A blocked address is refused before its key is hashed: guessing keys
    // costs the guesser, not the gateway.
    // The request's arrival time (no second clock read).
    let now_ms = ctx.ts_ms.max(0) as u64;
    let client = ctx.client;
    if let Some(l) = guard.blocked(client, now_ms) {
        metrics.brute_force_refused.inc();
        return Head::Refuse(
            Reply::TooManyAttempts(l.retry_after),
            Outcome::RateLimited,
            Some("brute_force"),
        );
    }
    let need = if method == http::Method::GET || method == http::Method::HEAD {
        Access::Read
    } else {
        Access::ReadWrite
    };
    let domain = match route.target {
        RouteTarget::Domain => m.captured.and_then(domain_ref),
        _ => None,
    };
    let server = matches!(route.target, RouteTarget::Server | RouteTarget::ServerId);
    // The key check proper, timed whatever its outcome.
    let started = Instant::now();
    let checked: std::result::Result<Hashed, Verdict> = (|| {
        let snap = keystore.snapshot();
        // Malformed and unknown keys are the guesses brute force is made of.
        let strike = |r: Refusal| {
            if matches!(r, Refusal::MalformedKey | Refusal::UnknownKey)
                && guard.failed(client, &config.brute_force, now_ms)
            {
                metrics.brute_force_blocks.inc();
            }
            refuse_key(metrics, r)
        };
        let key: Hashed = keystore.present(&snap, secret).map_err(strike)?;
        // The request's arrival time (no second clock read).
        let now = ctx.ts_ms.div_euclid(1000);
        let principal = snap.authenticate(&key, now).map_err(strike)?;
        let target = match &route.target {
            RouteTarget::Key => Some(Target::AnyKey),
            RouteTarget::Org => Some(Target::Organisation),
            RouteTarget::Domain => match (&domain, route.path.capture_index()) {
                (Some(Ok(id)), _) => Some(Target::Domain(DomainRef::Id(*id), need)),
                (Some(Err(name)), Some(_)) => {
                    Some(Target::Domain(DomainRef::Name(name.as_ref()), need))
                }
                _ => return Err(refuse_scope(Refusal::NotVisible, false)),
            },
            RouteTarget::Server => Some(Target::Server(need)),
            RouteTarget::ServerId => match m.captured.and_then(server_id) {
                Some(id) => Some(Target::ServerById(id, need)),
                None => return Err(refuse_scope(Refusal::NotVisible, true)),
            },
            // A send through a server token needs write on its server too;
            // refused here before any body is read, and checked again once
            // it has arrived.
            RouteTarget::Sender(_) if principal.server().is_some() => {
                principal
                    .authorize(Target::Server(Access::ReadWrite))
                    .map_err(|r| refuse_scope(r, true))?;
                None
            }
            // Decided once the body has arrived.
            RouteTarget::Sender(_) => None,
            RouteTarget::Public => unreachable!("public routes return above"),
        };
        if let Some(t) = target {
            principal
                .authorize(t)
                .map_err(|r| refuse_scope(r, server))?;
        }
        let side = snap.side(principal.key.id);
        let policy = side.and_then(|s| s.policy.as_deref());
        if let (Some(shadow), Some(t)) = (policy.and_then(|p| p.shadow.as_ref()), target) {
            if let Err(r) = principal.shadowed(shadow).authorize(t) {
                metrics.would_refuse(r);
                ctx.would_refuse = Some(r.as_str());
            }
        }
        // Keys without a limit (most) never reach the bucket map.
        if let Some(limit) = principal.rate_limit(policy) {
            if let Err(l) = guard.take(principal.key.id, limit, now_ms) {
                metrics.rate_limited.inc();
                ctx.key_id = Some(principal.key.id);
                return Err(Verdict::Refuse(
                    Reply::RateLimited(l.retry_after),
                    Outcome::RateLimited,
                    Some("rate_limited"),
                ));
            }
        }
        if let Some(side) = side {
            side.usage.record(now, policy.is_some_and(|p| p.rotated));
        }
        if target.is_some() {
            admit(ctx, &principal, snap.version);
        }
        Ok(key)
    })();
    metrics.key_check.observe(started.elapsed().as_secs_f64());
    let key = match checked {
        Ok(k) => k,
        Err(v) => return v.into(),
    };
    // The upstream gets the name in the form that was checked.
    if let (Some(Err(name)), Some(i)) = (&domain, route.path.capture_index()) {
        if **name != *segments[i] {
            renamed = Some((i, name.to_string()));
        }
    }
    ctx.group = Some(m.entry.group.clone());
    ctx.upstream_uri = upstream_uri(&canon, unchanged, renamed, req.uri.query(), config);
    match &route.target {
        RouteTarget::Sender(spec) => Head::NeedBody {
            key,
            spec: spec.clone(),
            limit: route.max_body_bytes,
        },
        _ => {
            // Streamed bodies: refuse a declared length over the limit now;
            // `request_body_filter` counts the bytes of the others.
            ctx.body_limit = route.max_body_bytes;
            if content_length(req).is_some_and(|n| n > route.max_body_bytes) {
                return Head::Refuse(Reply::TooLarge, Outcome::TooLarge, Some("content_length"));
            }
            Head::Forward
        }
    }
}

/// A request whose body framing two parsers could read differently is
/// refused (RFC 9112 §6.3: smuggling lives here): Transfer-Encoding together
/// with Content-Length, a transfer coding other than plain `chunked`, or
/// several Content-Length headers.
fn framing_problem(req: &RequestHeader) -> Option<&'static str> {
    let te = req.headers.get_all(http::header::TRANSFER_ENCODING);
    let te_count = te.iter().count();
    let cl = req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .count();
    if te_count > 0 && cl > 0 {
        return Some("Transfer-Encoding and Content-Length together");
    }
    if cl > 1 {
        return Some("more than one Content-Length");
    }
    if te_count > 1
        || te
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Some("a Transfer-Encoding other than chunked");
    }
    None
}

/// The path and query the upstream receives, when they differ from the
/// request's own: re-encoded from the checked segments, with the `{domain}`
/// segment in canonical form, the one trailing `/` the client sent, and any
/// key query parameter removed. `None` when the request's target is already
/// exactly that (the common case).
fn upstream_uri(
    canon: &canon::CanonPath<'_>,
    unchanged: bool,
    renamed: Option<(usize, String)>,
    query: Option<&str>,
    config: &scopegate_config::Config,
) -> Option<String> {
    let strip = match (
        &config.keys.query_param,
        config.keys.forward_key_header,
        query,
    ) {
        (Some(p), false, Some(_)) => Some(p),
        _ => None,
    };
    if unchanged && renamed.is_none() && strip.is_none() {
        return None;
    }
    let segments = canon.segments.iter().map(|s| s.as_ref());
    let mut uri = match &renamed {
        None => canon::encode_path(segments, canon.trailing_slash),
        Some((i, name)) => canon::encode_path(
            segments
                .enumerate()
                .map(|(j, s)| if j == *i { name.as_str() } else { s }),
            canon.trailing_slash,
        ),
    };
    if let Some(q) = query {
        let q = match strip {
            Some(p) => keys::strip_query_param(q, p),
            None => q.to_string(),
        };
        if !q.is_empty() {
            uri.push('?');
            uri.push_str(&q);
        }
    }
    Some(uri)
}

/// Every From domain must be writable by the key, per the snapshot current now.
pub fn check_senders(
    keystore: &KeyStore,
    metrics: &Metrics,
    ctx: &mut Ctx,
    key: &Hashed,
    body: &[u8],
    spec: &SenderSpec,
) -> std::result::Result<(), Verdict> {
    let domains = crate::request::sender::sender_domains(body, spec).map_err(|e| {
        let reply = if e.status() == 400 {
            Reply::BadRequest(e.code(), e.message())
        } else {
            Reply::InvalidSender(e.message())
        };
        let outcome = if e.status() == 400 {
            Outcome::BadRequest
        } else {
            Outcome::SenderRefused
        };
        Verdict::Refuse(reply, outcome, Some(e.code()))
    })?;
    let snap = keystore.snapshot();
    let principal = snap
        .authenticate(key, scopegate_keystore::time::now())
        .map_err(|r| refuse_key(metrics, r))?;
    // A server token needs write on its server, per the snapshot current now.
    if principal.server().is_some() {
        principal
            .authorize(Target::Server(Access::ReadWrite))
            .map_err(|r| refuse_scope(r, true))?;
    }
    let batch = !matches!(spec.messages, scopegate_config::Messages::Single);
    for (i, d) in domains.iter().enumerate() {
        if principal
            .authorize(Target::Domain(DomainRef::Name(d), Access::ReadWrite))
            .is_err()
        {
            let msg = if batch {
                format!("message {i}: this key cannot send from that domain; nothing was sent")
            } else {
                "this key cannot send from that domain".to_string()
            };
            return Err(Verdict::Refuse(
                Reply::SenderNotAllowed(msg),
                Outcome::SenderRefused,
                Some("sender_not_allowed"),
            ));
        }
    }
    admit(ctx, &principal, snap.version);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use scopegate_config::Config;
    use scopegate_keystore::{DomainInput, NewKey, Pepper, Role, UserInput};

    use super::*;

    /// A store with one member who may write `example.com`, and a key of
    /// theirs that may only read it.
    fn read_only_key() -> (KeyStore, String) {
        let ks = KeyStore::in_memory(Pepper::new(b"decide-test-pepper-0123456789ab"));
        let domains = [DomainInput {
            name: "example.com".into(),
            id: Some(7),
        }];
        ks.put_org("test", "acme", &domains).unwrap();
        let access = BTreeMap::from([("example.com".to_string(), Access::ReadWrite)]);
        let member = UserInput {
            role: Role::Member,
            access,
            status: None,
        };
        ks.put_user("test", "acme", "ann@acme.test", member)
            .unwrap();
        let key = NewKey {
            user: "ann@acme.test".into(),
            domains: Some(vec!["example.com".into()]),
            access: Some(Access::Read),
            ..NewKey::default()
        };
        let now = scopegate_keystore::time::now();
        let created = ks.create_key("test", "acme", key, now).unwrap();
        (ks, created.value.secret)
    }

    fn head(method: &str, path: &str, secret: &str) -> RequestHeader {
        let mut h = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        h.insert_header("Authorization", format!("Bearer {secret}"))
            .unwrap();
        h
    }

    /// DESIGN: a read-only key may read its domain but not change it, and
    /// may not send from it; decided with no server and no socket.
    #[test]
    fn a_read_only_key_may_read_but_not_write_or_send() {
        let (ks, secret) = read_only_key();
        let metrics = Metrics::new();
        let routing = Routing::build(Config::default(), &metrics).unwrap();
        let decide = |method, path| {
            let mut ctx = Ctx::new();
            let head = decide_head(
                &ks,
                &Guard::new(),
                &metrics,
                &routing,
                &head(method, path, &secret),
                &mut ctx,
            );
            (head, ctx)
        };

        assert!(matches!(
            decide("GET", "/domains/example.com").0,
            Head::Forward
        ));
        match decide("PUT", "/domains/example.com").0 {
            Head::Refuse(Reply::ReadOnly, Outcome::Forbidden, _) => {}
            _ => panic!("a read-only key changed its domain"),
        }
        let (Head::NeedBody { key, spec, .. }, mut ctx) = decide("POST", "/email") else {
            panic!("a send is decided by its body");
        };
        let body = br#"{"From":"ann@example.com","To":"b@example.org"}"#;
        match check_senders(&ks, &metrics, &mut ctx, &key, body, &spec) {
            Err(Verdict::Refuse(Reply::SenderNotAllowed(_), Outcome::SenderRefused, _)) => {}
            _ => panic!("a read-only key sent from its domain"),
        }
    }
}
