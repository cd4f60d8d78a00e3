//! An organisation's servers through the admin API (Postmark's second
//! resource kind): `GET /v1/orgs/{org}/servers`, `PUT` and `DELETE
//! /v1/orgs/{org}/servers/{server}`; and the `name=value` pairs audit lines
//! carry for server access and key bindings.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use scopegate_keystore::{Access, KeyMeta, KeyStore};
use serde_json::json;

use crate::admin::answer::{audit_with, blocking, parse_body, Answer};
use crate::admin::bodies::ServerBody;

/// `GET /v1/orgs/{org}/servers`: the servers, sorted by name.
pub(super) fn list(ks: &KeyStore, org: &str) -> Result<Answer, Answer> {
    ks.org_servers(org)
        .map(|servers| Answer::json(StatusCode::OK, json!({"org": org, "servers": servers})))
        .map_err(Answer::from)
}

/// `PUT /v1/orgs/{org}/servers/{server}` with `{"id": n}`: 201 created, 200
/// updated (or unchanged).
pub(super) async fn put(
    ks: &Arc<KeyStore>,
    org: &str,
    server: &str,
    body: &[u8],
    actor: &str,
) -> Result<Answer, Answer> {
    let b: ServerBody = parse_body(body)?;
    let (org, server, actor) = (org.to_string(), server.to_string(), actor.to_string());
    blocking(ks, move |ks| {
        ks.put_server(&actor, &org, &server, b.id).map(|applied| {
            let name = server.to_ascii_lowercase();
            audit_with(
                &actor,
                "put_server",
                &format!("{org}/{name}"),
                applied.version,
                &format!("id={}", b.id),
            );
            let status = if applied.value {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Answer::json(status, json!({"org": org, "server": name, "id": b.id}))
                .versioned(applied.version)
        })
    })
    .await
    .map_err(Answer::from)
}

/// `DELETE /v1/orgs/{org}/servers/{server}`: 200 with how many live keys
/// are bound to it (they stay, and grant nothing on it any more).
pub(super) async fn delete(
    ks: &Arc<KeyStore>,
    org: &str,
    server: &str,
    actor: &str,
) -> Result<Answer, Answer> {
    let (org, server, actor) = (org.to_string(), server.to_string(), actor.to_string());
    blocking(ks, move |ks| {
        ks.delete_server(&actor, &org, &server).map(|applied| {
            let name = server.to_ascii_lowercase();
            let bound = applied.value;
            audit_with(
                &actor,
                "delete_server",
                &format!("{org}/{name}"),
                applied.version,
                &format!("bound_keys={bound}"),
            );
            Answer::json(
                StatusCode::OK,
                json!({"org": org, "server": name, "deleted": true, "bound_keys": bound}),
            )
            .versioned(applied.version)
        })
    })
    .await
    .map_err(Answer::from)
}

/// A member's server access for an audit line: `servers=prod:read_write,…`
/// (empty for none).
pub(super) fn levels_detail(servers: &BTreeMap<String, Access>) -> String {
    if servers.is_empty() {
        return String::new();
    }
    let list: Vec<String> = servers.iter().map(|(s, a)| format!("{s}:{a}")).collect();
    format!("servers={}", list.join(","))
}

/// A key's server binding for an audit line: `server=prod
/// server_access=read` (empty for an unbound key).
pub(super) fn binding_detail(meta: &KeyMeta) -> String {
    match (&meta.server, meta.server_access) {
        (Some(s), Some(a)) => format!("server={s} server_access={a}"),
        _ => String::new(),
    }
}
