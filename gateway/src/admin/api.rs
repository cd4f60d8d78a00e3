//! The admin API on its own listener: organisations, users, keys, status,
//! reload; plus `/metrics`, `/healthz` and `/readyz` for operators.
//!
//! Every `/v1` call needs `Authorization: Bearer <token>`, compared in
//! constant time; with no token configured `/v1` is refused, never open. A
//! 2xx from a change means it is committed to the store *and* enforced by
//! this instance: the very next proxied request sees it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use scopegate_keystore::time::now;
use scopegate_keystore::{DomainInput, KeyPatch, NewKey, RateLimit, UserInput};
use serde_json::{json, Value};

use crate::admin::answer::{audit, audit_with, blocking, parse_body, response, text, Answer};
use crate::admin::bodies::{DomainSpec, KeyBody, OrgBody, PatchBody, RotateBody, UserBody};
use crate::request::state::State;

/// The admin service.
pub struct AdminApp {
    /// Shared gateway state.
    pub state: Arc<State>,
}

/// The admin calls that take a JSON body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyCall {
    /// `PUT /v1/orgs/{org}`.
    PutOrg,
    /// `PUT /v1/orgs/{org}/users/{user}`.
    PutUser,
    /// `POST /v1/orgs/{org}/keys`.
    CreateKey,
    /// `POST /v1/keys/{id}/rotate`.
    RotateKey,
    /// `PATCH /v1/keys/{id}`.
    PatchKey,
    /// `PUT /v1/orgs/{org}/rate_limit`.
    OrgRateLimit,
    /// `PUT /v1/orgs/{org}/servers/{server}`.
    PutServer,
}

/// Parses `body` as `call` does, without acting on it: `Err` carries the
/// answer's status and JSON body. For the fuzz targets and their corpus
/// test, which check that every body is either accepted or answered 400
/// `invalid_json` with a JSON error.
pub fn parse_call_body(call: BodyCall, body: &[u8]) -> Result<(), (u16, Value)> {
    let refused = |a: Answer| (a.status.as_u16(), a.body.unwrap_or(Value::Null));
    match call {
        BodyCall::PutOrg => parse_body::<OrgBody>(body).map(drop),
        BodyCall::PutUser => parse_body::<UserBody>(body).map(drop),
        BodyCall::CreateKey => parse_body::<KeyBody>(body).map(drop),
        BodyCall::RotateKey => parse_body::<RotateBody>(body).map(drop),
        BodyCall::PatchKey => parse_body::<PatchBody>(body).map(drop),
        BodyCall::OrgRateLimit => parse_body::<RateLimit>(body).map(drop),
        BodyCall::PutServer => parse_body::<crate::admin::bodies::ServerBody>(body).map(drop),
    }
    .map_err(refused)
}

/// Constant-time token check; returns the token's name (the audit actor).
fn authenticate<'a>(state: &'a State, header: Option<&[u8]>) -> Result<&'a str, Answer> {
    if state.admin_tokens.is_empty() {
        return Err(Answer::error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is disabled: no admin token is configured (set SCOPEGATE_ADMIN_TOKEN)",
        ));
    }
    let presented = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or("");
    // blake3::Hash equality is constant-time, and hashing first hides lengths.
    let presented = blake3::hash(presented.as_bytes());
    let mut actor = None;
    for t in &state.admin_tokens {
        if blake3::hash(t.token.as_bytes()) == presented {
            actor = Some(t.name.as_str());
        }
    }
    actor.ok_or_else(|| {
        Answer::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required (Authorization: Bearer <token>)",
        )
    })
}

impl AdminApp {
    pub(super) fn count(&self, kind: &str, result: &Result<Answer, Answer>) {
        let label = match result {
            Ok(_) => "ok",
            Err(a) if a.status.is_server_error() => "error",
            Err(_) => "rejected",
        };
        self.state
            .metrics
            .admin_mutations
            .with_label_values(&[kind, label])
            .inc();
        if let Err(a) = result {
            if let Some(store) = a.store.filter(|_| a.status.is_server_error()) {
                self.state.metrics.store_error(store);
                // The message names files and causes, never a secret.
                let message = a
                    .body
                    .as_ref()
                    .and_then(|b| b.pointer("/error/message"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                log::error!("admin change {kind} failed ({store}): {message}");
            }
        }
    }

    async fn v1(
        &self,
        method: &Method,
        segs: &[&str],
        query: Option<&str>,
        body: &[u8],
        actor: &str,
    ) -> Answer {
        let ks = &self.state.keystore;
        let owned: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
        let s: Vec<&str> = owned.iter().map(String::as_str).collect();
        let actor = actor.to_string();
        let result: Result<Answer, Answer> = match (method, s.as_slice()) {
            (&Method::GET, ["status"]) => {
                let st = ks.status();
                let snap = ks.snapshot();
                Ok(Answer::json(
                    StatusCode::OK,
                    json!({"version": st.version, "orgs": st.orgs, "users": st.users, "keys": st.keys,
                           "changed_at": if snap.changed_at_ms > 0 { Some(scopegate_keystore::time::rfc3339(snap.changed_at_ms / 1000)) } else { None },
                           "store": ks.store_kind(),
                           "staleness_ms": ks.staleness().as_millis() as u64}),
                ))
            }
            (&Method::POST, ["reload"]) => {
                let r = crate::admin::reload::reload(&self.state);
                return match r {
                    Ok(routes) => {
                        Answer::json(StatusCode::OK, json!({"reloaded": true, "routes": routes}))
                    }
                    Err(e) => Answer::error(StatusCode::UNPROCESSABLE_ENTITY, "reload_rejected", e),
                };
            }
            (&Method::PUT, ["orgs", org]) => {
                let r = match parse_body::<OrgBody>(body) {
                    Err(a) => Err(a),
                    Ok(b) => {
                        let domains: Vec<DomainInput> = b
                            .domains
                            .into_iter()
                            .map(|d| match d {
                                DomainSpec::Name(name) => DomainInput { name, id: None },
                                DomainSpec::Full(f) => DomainInput {
                                    name: f.name,
                                    id: f.id,
                                },
                            })
                            .collect();
                        let org = org.to_string();
                        let a2 = actor.clone();
                        blocking(ks, move |ks| {
                            ks.put_org(&a2, &org, &domains).map(|applied| {
                                audit(&a2, "put_org", &org, applied.version);
                                let status = if applied.value {
                                    StatusCode::CREATED
                                } else {
                                    StatusCode::OK
                                };
                                let domains = ks.org_domains(&org).unwrap_or_default();
                                let servers = ks.org_servers(&org).unwrap_or_default();
                                Answer::json(
                                    status,
                                    json!({"org": org, "domains": domains, "servers": servers}),
                                )
                                .versioned(applied.version)
                            })
                        })
                        .await
                        .map_err(Answer::from)
                    }
                };
                self.count("put_org", &r);
                r
            }
            (&Method::GET, ["orgs", org]) => {
                let org = org.to_string();
                ks.org_domains(&org)
                    .and_then(|domains| Ok((domains, ks.org_servers(&org)?)))
                    .map(|(domains, servers)| {
                        Answer::json(
                            StatusCode::OK,
                            json!({"org": org, "domains": domains, "servers": servers}),
                        )
                    })
                    .map_err(Answer::from)
            }
            (&Method::GET, ["orgs", org, "servers"]) => crate::admin::servers::list(ks, org),
            (&Method::PUT, ["orgs", org, "servers", server]) => {
                let r = crate::admin::servers::put(ks, org, server, body, &actor).await;
                self.count("put_server", &r);
                r
            }
            (&Method::DELETE, ["orgs", org, "servers", server]) => {
                let r = crate::admin::servers::delete(ks, org, server, &actor).await;
                self.count("delete_server", &r);
                r
            }
            (&Method::GET, ["orgs", org, "users"]) => {
                let org = org.to_string();
                blocking(ks, move |ks| ks.list_users(&org))
                    .await
                    .map(|users| {
                        let users: Vec<Value> = users
                            .iter()
                            .map(|u| json!({"user": u.id, "role": u.role, "status": u.status, "access": u.access, "servers": u.servers}))
                            .collect();
                        Answer::json(StatusCode::OK, json!({ "users": users }))
                    })
                    .map_err(Answer::from)
            }
            (&Method::PUT, ["orgs", org, "users", user]) => {
                let r = match parse_body::<UserBody>(body) {
                    Err(a) => Err(a),
                    Ok(b) => {
                        let (org, user) = (org.to_string(), user.to_string());
                        let a2 = actor.clone();
                        blocking(ks, move |ks| {
                            let input = UserInput { role: b.role, access: b.access.clone(), status: b.status };
                            ks.put_user_with_servers(&a2, &org, &user, input, b.servers.clone()).map(|applied| {
                                let status = if applied.value { StatusCode::CREATED } else { StatusCode::OK };
                                let snap = ks.snapshot();
                                let u = snap.user(&org, &user.to_lowercase());
                                let servers: BTreeMap<String, _> = u.iter().flat_map(|u| u.servers.iter()).map(|(s, a)| (s.to_string(), *a)).collect();
                                let detail = crate::admin::servers::levels_detail(&servers);
                                audit_with(&a2, "put_user", &format!("{org}/{user}"), applied.version, &detail);
                                let u = u.map(|u| {
                                    json!({"org": org, "user": &*u.id, "role": u.role, "status": u.status,
                                           "access": u.access.iter().map(|(d, a)| (d.to_string(), *a)).collect::<BTreeMap<_, _>>(),
                                           "servers": servers})
                                });
                                Answer::json(status, u.unwrap_or(Value::Null)).versioned(applied.version)
                            })
                        })
                        .await
                        .map_err(Answer::from)
                    }
                };
                self.count("put_user", &r);
                r
            }
            (&Method::POST, ["orgs", org, "users", user, "deactivate"]) => {
                let (org, user) = (org.to_string(), user.to_string());
                let a2 = actor.clone();
                let r = blocking(ks, move |ks| {
                    ks.deactivate_user(&a2, &org, &user).map(|applied| {
                        audit(&a2, "deactivate_user", &format!("{org}/{user}"), applied.version);
                        Answer::json(StatusCode::OK, json!({"org": org, "user": user.to_lowercase(), "status": "deactivated"}))
                            .versioned(applied.version)
                    })
                })
                .await
                .map_err(Answer::from);
                self.count("deactivate_user", &r);
                r
            }
            (&Method::DELETE, ["orgs", org, "users", user]) => {
                let (org, user) = (org.to_string(), user.to_string());
                let a2 = actor.clone();
                let r = blocking(ks, move |ks| {
                    ks.delete_user(&a2, &org, &user).map(|applied| {
                        audit(
                            &a2,
                            "delete_user",
                            &format!("{org}/{user}"),
                            applied.version,
                        );
                        Answer {
                            status: StatusCode::NO_CONTENT,
                            body: None,
                            version: Some(applied.version),
                            store: None,
                        }
                    })
                })
                .await
                .map_err(Answer::from);
                self.count("delete_user", &r);
                r
            }
            (&Method::POST, ["orgs", org, "keys"]) => {
                let r = match parse_body::<KeyBody>(body) {
                    Err(a) => Err(a),
                    Ok(b) => match b
                        .expires_at
                        .as_deref()
                        .map(scopegate_keystore::time::parse_rfc3339)
                        .transpose()
                    {
                        Err(e) => Err(Answer::error(
                            StatusCode::BAD_REQUEST,
                            "invalid_expires_at",
                            e,
                        )),
                        Ok(expires_at) => {
                            let org = org.to_string();
                            let imported = b.secret.is_some();
                            let new = NewKey {
                                user: b.user,
                                domains: b.domains,
                                org_wide: b.org_wide,
                                access: b.access,
                                expires_at,
                                name: b.name,
                                secret: b.secret,
                                rate_limit: b.rate_limit,
                                shadow: b.shadow,
                                server: b.server,
                                server_access: b.server_access,
                            };
                            let a2 = actor.clone();
                            blocking(ks, move |ks| {
                                ks.create_key(&a2, &org, new, now()).map(|applied| {
                                    let c = applied.value;
                                    audit_with(
                                        &a2,
                                        "create_key",
                                        &format!("{org}/{}", c.meta.id),
                                        applied.version,
                                        &crate::admin::servers::binding_detail(&c.meta),
                                    );
                                    let mut v =
                                        serde_json::to_value(&c.meta).expect("metadata serialises");
                                    if !imported {
                                        // The one and only time the secret leaves the gateway.
                                        v["key"] = json!(c.secret);
                                    }
                                    Answer::json(StatusCode::CREATED, v).versioned(applied.version)
                                })
                            })
                            .await
                            .map_err(Answer::from)
                        }
                    },
                };
                self.count("create_key", &r);
                r
            }
            (&Method::GET, ["orgs", org, "keys"]) => {
                let org = org.to_string();
                let param = |name: &str| {
                    query.and_then(|q| {
                        q.split('&')
                            .filter_map(|p| p.split_once('='))
                            .find(|(k, _)| *k == name)
                            .map(|(_, v)| percent_decode(v))
                    })
                };
                let user = param("user");
                match param("unused_since")
                    .as_deref()
                    .map(scopegate_keystore::time::parse_rfc3339)
                    .transpose()
                {
                    Err(e) => Err(Answer::error(
                        StatusCode::BAD_REQUEST,
                        "invalid_unused_since",
                        e,
                    )),
                    Ok(since) => blocking(ks, move |ks| {
                        ks.list_keys(&org, user.as_deref(), since, now())
                    })
                    .await
                    .map(|keys| Answer::json(StatusCode::OK, json!({ "keys": keys })))
                    .map_err(Answer::from),
                }
            }
            (&Method::POST, ["keys", id, "rotate"]) => {
                let r = match parse_body::<RotateBody>(body) {
                    Err(a) => Err(a),
                    Ok(b) => {
                        let id = id.to_string();
                        let a2 = actor.clone();
                        blocking(ks, move |ks| {
                            ks.rotate_key(&a2, &id, b.grace_seconds, now())
                                .map(|applied| {
                                    let (new, old) = applied.value;
                                    audit_with(
                                        &a2,
                                        "rotate_key",
                                        &format!("{id} -> {}", new.meta.id),
                                        applied.version,
                                        &crate::admin::servers::binding_detail(&new.meta),
                                    );
                                    let mut v = serde_json::to_value(&new.meta)
                                        .expect("metadata serialises");
                                    // The one and only time the new secret leaves the gateway.
                                    v["key"] = json!(new.secret);
                                    v["replaces"] =
                                        serde_json::to_value(&old).expect("metadata serialises");
                                    Answer::json(StatusCode::CREATED, v).versioned(applied.version)
                                })
                        })
                        .await
                        .map_err(Answer::from)
                    }
                };
                self.count("rotate_key", &r);
                r
            }
            (&Method::PATCH, ["keys", id]) => {
                let r = match parse_body::<PatchBody>(body) {
                    Err(a) => Err(a),
                    Ok(b) => {
                        let id = id.to_string();
                        let a2 = actor.clone();
                        let patch = KeyPatch {
                            rate_limit: b.rate_limit,
                            shadow: b.shadow,
                        };
                        blocking(ks, move |ks| {
                            ks.update_key(&a2, &id, patch, now()).map(|applied| {
                                audit(&a2, "update_key", &id, applied.version);
                                Answer::json(
                                    StatusCode::OK,
                                    serde_json::to_value(applied.value)
                                        .expect("metadata serialises"),
                                )
                                .versioned(applied.version)
                            })
                        })
                        .await
                        .map_err(Answer::from)
                    }
                };
                self.count("update_key", &r);
                r
            }
            (&Method::GET, ["orgs", org, "rate_limit"]) => ks
                .org_rate_limit(org)
                .map(|l| Answer::json(StatusCode::OK, json!({"org": org, "rate_limit": l})))
                .map_err(Answer::from),
            (&Method::PUT | &Method::DELETE, ["orgs", org, "rate_limit"]) => {
                let limit = if method == Method::DELETE {
                    Ok(None)
                } else {
                    parse_body::<RateLimit>(body).map(Some)
                };
                let r = match limit {
                    Err(a) => Err(a),
                    Ok(limit) => {
                        let org = org.to_string();
                        let a2 = actor.clone();
                        blocking(ks, move |ks| {
                            ks.set_org_rate_limit(&a2, &org, limit).map(|applied| {
                                audit(&a2, "set_org_rate_limit", &org, applied.version);
                                Answer::json(
                                    StatusCode::OK,
                                    json!({"org": org, "rate_limit": limit}),
                                )
                                .versioned(applied.version)
                            })
                        })
                        .await
                        .map_err(Answer::from)
                    }
                };
                self.count("set_org_rate_limit", &r);
                r
            }
            (&Method::GET, ["keys", id]) => {
                let id = id.to_string();
                blocking(ks, move |ks| ks.get_key(&id, now()))
                    .await
                    .map(|k| {
                        Answer::json(
                            StatusCode::OK,
                            serde_json::to_value(k).expect("metadata serialises"),
                        )
                    })
                    .map_err(Answer::from)
            }
            (&Method::DELETE, ["keys", id]) => {
                let id = id.to_string();
                let a2 = actor.clone();
                let r = blocking(ks, move |ks| {
                    ks.revoke_key(&a2, &id, now()).map(|applied| {
                        audit(&a2, "revoke_key", &id, applied.version);
                        Answer::json(
                            StatusCode::OK,
                            serde_json::to_value(applied.value).expect("metadata serialises"),
                        )
                        .versioned(applied.version)
                    })
                })
                .await
                .map_err(Answer::from);
                self.count("revoke_key", &r);
                r
            }
            _ => Err(Answer::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin call",
            )),
        };
        match result {
            Ok(a) | Err(a) => a,
        }
    }
}

fn percent_decode(s: &str) -> String {
    crate::request::canon::canonicalize(&format!("/{s}"))
        .ok()
        .and_then(|c| c.segments.into_iter().next().map(|s| s.into_owned()))
        .unwrap_or_else(|| s.to_string())
}

/// `/readyz`: listeners bound, store loaded, a healthy backend in every group.
fn readiness(state: &State) -> (bool, Vec<String>) {
    let mut problems = Vec::new();
    if !state.listening.load(Ordering::SeqCst) {
        problems.push("listeners are not bound yet".to_string());
    }
    let routing = state.routing.load();
    for (name, g) in &routing.groups {
        if !g.has_healthy_backend() {
            problems.push(format!("upstream group {name} has no healthy backend"));
        }
    }
    let max = routing.config.fleet.max_staleness;
    if state.stale(max) {
        problems.push(format!(
            "the access snapshot is not confirmed current: the store was last read {} ms ago (fleet.max_staleness_ms = {}); the proxy answers 503",
            state.keystore.staleness().as_millis(),
            max.as_millis()
        ));
    }
    (problems.is_empty(), problems)
}

async fn read_body(session: &mut ServerSession, limit: u64) -> Result<Vec<u8>, Answer> {
    let too_large = || {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("admin request bodies are limited to {limit} bytes"),
        )
    };
    if crate::request::head::content_length(session.req_header()).is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit as usize {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(Answer::error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "could not read the request body",
                ))
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().map(str::to_string);
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => {
                return text(
                    StatusCode::OK,
                    "application/json",
                    b"{\"status\":\"ok\"}\n".to_vec(),
                )
            }
            (&Method::GET, "/readyz") => {
                let (ready, problems) = readiness(&self.state);
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = json!({"ready": ready, "problems": problems});
                return text(
                    status,
                    "application/json",
                    serde_json::to_vec(&body).expect("json"),
                );
            }
            (&Method::GET, "/metrics") => {
                let body = self.state.metrics.render(&self.state.keystore);
                return text(StatusCode::OK, "text/plain; version=0.0.4", body);
            }
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/v1/") else {
            return response(Answer::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin call",
            ));
        };
        let auth = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let actor = match authenticate(&self.state, auth.as_deref()) {
            Ok(a) => a.to_string(),
            Err(a) => {
                session.set_keepalive(None);
                return response(a);
            }
        };
        let limit = self.state.routing.load().config.limits.max_admin_body_bytes;
        let body = match read_body(session, limit).await {
            Ok(b) => b,
            Err(a) => {
                session.set_keepalive(None);
                return response(a);
            }
        };
        let full = format!("/{rest}");
        // The admin API's own client and docs never add a trailing slash:
        // unlike the proxy's routes, it keeps refusing one.
        let canon = crate::request::canon::canonicalize(&full).and_then(|c| {
            if c.trailing_slash {
                Err(crate::request::canon::PathError::EmptySegment)
            } else {
                Ok(c)
            }
        });
        let segs = match canon {
            Ok(c) => c.segments,
            Err(e) => {
                return response(Answer::error(
                    StatusCode::BAD_REQUEST,
                    "bad_path",
                    e.to_string(),
                ))
            }
        };
        let segs: Vec<&str> = segs.iter().map(|s| s.as_ref()).collect();
        response(
            self.v1(&method, &segs, query.as_deref(), &body, &actor)
                .await,
        )
    }
}
