//! The admin API, black-box, over a real admin listener: every call, every
//! error status, authentication, body limits, and the promise that a 2xx
//! change is enforced by the very next proxied request.

use scopegate_suite::gateway::{TestGateway, ADMIN_TOKEN};
use scopegate_suite::http::{Request, Response};
use scopegate_suite::sample;
use serde_json::{json, Value};

fn setup() -> (TestGateway, sample::Keys) {
    let gw = TestGateway::start();
    let keys = sample::setup(&gw.keystore);
    (gw, keys)
}

fn call(gw: &TestGateway, method: &str, path: &str, body: Option<Value>) -> Response {
    let mut r = Request::new(method, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    gw.admin(r)
}

/// An admin call with a raw (possibly broken) JSON body.
fn raw(gw: &TestGateway, method: &str, path: &str, body: &str) -> Response {
    gw.admin(
        Request::new(method, path)
            .header("Content-Type", "application/json")
            .body(body.as_bytes().to_vec()),
    )
}

/// `/v1/status` without `staleness_ms`, which moves with the clock: what a
/// change would alter.
fn status(gw: &TestGateway) -> Value {
    let r = call(gw, "GET", "/v1/status", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut v = r.json();
    let staleness = v
        .as_object_mut()
        .and_then(|o| o.remove("staleness_ms"))
        .and_then(|s| s.as_u64());
    assert!(staleness.is_some(), "status without staleness_ms: {v}");
    v
}

fn version(gw: &TestGateway) -> u64 {
    status(gw)["version"].as_u64().expect("numeric version")
}

/// The version a mutation published, from its header.
fn header_version(r: &Response) -> u64 {
    r.header("x-scopegate-version")
        .unwrap_or_else(|| panic!("no X-Scopegate-Version on {} {}", r.status, r.text()))
        .parse()
        .expect("numeric X-Scopegate-Version")
}

fn assert_error(r: &Response, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.error_code(), code, "{what}: {}", r.text());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: no message"
    );
}

// ---------------------------------------------------------------------------
// Organisations and users

#[test]
fn orgs_are_created_with_201_and_updated_with_200() {
    let (gw, _) = setup();
    let before = version(&gw);
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/globex",
        Some(json!({"domains": ["Mail.Globex.TEST.", {"name": "globex.test", "id": 7}]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v1 = header_version(&r);
    assert!(v1 > before);
    assert_eq!(r.json()["version"], json!(v1));
    assert_eq!(r.json()["org"], "globex");
    assert_eq!(
        r.json()["domains"],
        json!([{"name": "globex.test", "id": 7}, {"name": "mail.globex.test"}])
    );
    assert_eq!(version(&gw), v1);
    assert_eq!(status(&gw)["orgs"], 3);

    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/globex",
        Some(json!({"domains": ["globex.test", "new.globex.test"]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(header_version(&r) > v1);
    let r = call(&gw, "GET", "/v1/orgs/globex", None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-scopegate-version").is_none(),
        "reads publish nothing"
    );
    assert_eq!(
        r.json(),
        json!({"org": "globex", "domains": [{"name": "globex.test"}, {"name": "new.globex.test"}], "servers": []})
    );
    assert_eq!(status(&gw)["orgs"], 3);
}

#[test]
fn users_are_created_with_201_updated_with_200_and_listed() {
    let (gw, _) = setup();
    let path = "/v1/orgs/acme/users/New.Person@Example.com";
    let r = call(
        &gw,
        "PUT",
        path,
        Some(
            json!({"role": "member", "access": {"Example.com": "read", "staging.example.com": "read_write"}}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v1 = header_version(&r);
    assert_eq!(
        r.json(),
        json!({"org": "acme", "user": "new.person@example.com", "role": "member", "status": "active",
               "access": {"example.com": "read", "staging.example.com": "read_write"}, "servers": {}, "version": v1})
    );
    let r = call(
        &gw,
        "PUT",
        path,
        Some(
            json!({"role": "member", "access": {"example.com": "read_write"}, "status": "active"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(header_version(&r) > v1);
    assert_eq!(r.json()["access"], json!({"example.com": "read_write"}));

    let r = call(&gw, "GET", "/v1/orgs/acme/users", None);
    assert_eq!(r.status, 200);
    let users = r.json()["users"].as_array().unwrap().clone();
    assert_eq!(users.len(), 8);
    let me = users
        .iter()
        .find(|u| u["user"] == "new.person@example.com")
        .expect("listed");
    assert_eq!(me["role"], "member");
    assert_eq!(me["status"], "active");
    assert_eq!(me["access"], json!({"example.com": "read_write"}));
}

#[test]
fn deactivate_answers_200_and_delete_204() {
    let (gw, keys) = setup();
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/users/OPS@example.com/deactivate",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = header_version(&r);
    assert_eq!(
        r.json(),
        json!({"org": "acme", "user": "ops@example.com", "status": "deactivated", "version": v})
    );
    // The user's keys are listed as revoked.
    let r = call(&gw, "GET", "/v1/orgs/acme/keys?user=ops@example.com", None);
    let ks = r.json()["keys"].as_array().unwrap().clone();
    assert_eq!(ks.len(), 1);
    assert_eq!(ks[0]["id"], json!(keys.ids["ops"]));
    assert_eq!(ks[0]["state"], "revoked");
    assert!(ks[0]["revoked_at"].is_string());
    // Again: nothing changes, still 200.
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/users/ops@example.com/deactivate",
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(header_version(&r), v);
    assert_eq!(version(&gw), v);

    let r = call(&gw, "DELETE", "/v1/orgs/acme/users/dev@example.com", None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let v2 = header_version(&r);
    assert!(v2 > v);
    assert_eq!(version(&gw), v2);
    let r = call(&gw, "GET", "/v1/orgs/acme/users", None);
    assert!(!r.text().contains("dev@example.com"));
    for id in [&keys.ids["dev"], &keys.ids["dev_read"]] {
        let r = call(&gw, "GET", &format!("/v1/keys/{id}"), None);
        assert_eq!(r.json()["state"], "revoked", "{id}");
    }
    let r = call(&gw, "DELETE", "/v1/orgs/acme/users/dev@example.com", None);
    assert_error(&r, 404, "user_not_found", "delete twice");
}

#[test]
fn a_recreated_or_reactivated_user_does_not_get_old_keys_back() {
    let (gw, keys) = setup();
    let ok = |key: &str| {
        gw.send(Request::new("GET", "/domains/staging.example.com").bearer(key))
            .status
    };
    assert_eq!(ok(&keys.ops), 200);
    assert_eq!(ok(&keys.dev), 200);
    // Deactivate, then reactivate: the keys stay dead.
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/users/ops@example.com/deactivate",
        None,
    );
    assert_eq!(r.status, 200);
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/acme/users/ops@example.com",
        Some(
            json!({"role": "member", "access": {"staging.example.com": "read_write"}, "status": "active"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "active");
    assert_eq!(ok(&keys.ops), 401);
    // Delete, then create again with the same id: the old keys stay dead.
    let r = call(&gw, "DELETE", "/v1/orgs/acme/users/dev@example.com", None);
    assert_eq!(r.status, 204);
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/acme/users/dev@example.com",
        Some(json!({"role": "member", "access": {"staging.example.com": "read_write"}})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(ok(&keys.dev), 401);
    assert_eq!(ok(&keys.dev_read), 401);
    // A new key of the recreated user works.
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/keys",
        Some(json!({"user": "dev@example.com"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(ok(r.json()["key"].as_str().unwrap()), 200);
}

// ---------------------------------------------------------------------------
// Keys

#[test]
fn a_key_secret_is_shown_exactly_once() {
    let (gw, _) = setup();
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/keys",
        Some(
            json!({"user": "ops@example.com", "domains": ["staging.example.com"], "access": "read",
                    "name": "ci read", "expires_at": "2999-01-01T00:00:00+01:00"}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = header_version(&r);
    let body = r.json();
    let secret = body["key"].as_str().expect("key present").to_string();
    let id = body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("key_"), "{id}");
    assert_eq!(r.text().matches(&secret).count(), 1, "secret appears once");
    assert_eq!(body["version"], json!(v));
    assert_eq!(body["org"], "acme");
    assert_eq!(body["user"], "ops@example.com");
    assert_eq!(body["org_wide"], false);
    assert_eq!(body["domains"], json!({"staging.example.com": "read"}));
    assert_eq!(body["name"], "ci read");
    assert_eq!(body["expires_at"], "2998-12-31T23:00:00Z");
    assert_eq!(body["state"], "active");
    assert!(body["created_at"].is_string());
    // It works, read-only.
    let r = gw.send(Request::new("GET", "/domains/staging.example.com").bearer(&secret));
    assert_eq!(r.status, 200);
    // Never again: not in lists, show, revoke, status or metrics.
    let mut seen = Vec::new();
    for (m, p) in [
        ("GET", "/v1/orgs/acme/keys".to_string()),
        ("GET", "/v1/orgs/acme/keys?user=ops@example.com".to_string()),
        ("GET", format!("/v1/keys/{id}")),
        ("GET", "/v1/status".to_string()),
        ("GET", "/v1/orgs/acme/users".to_string()),
        ("DELETE", format!("/v1/keys/{id}")),
        ("GET", format!("/v1/keys/{id}")),
    ] {
        let r = call(&gw, m, &p, None);
        assert_eq!(r.status, 200, "{m} {p}: {}", r.text());
        assert!(r.json().get("key").is_none(), "{m} {p}");
        seen.push(r.text());
    }
    assert!(seen[0].contains(&id) && seen[1].contains(&id) && seen[2].contains(&id));
    seen.push(gw.metrics());
    seen.push(Request::new("GET", "/readyz").send(gw.admin).text());
    for text in &seen {
        assert!(!text.contains(&secret), "the secret leaked: {text}");
        // Not even a recognisable part of it.
        assert!(!text.contains(&secret[secret.len() - 16..]));
    }
}

#[test]
fn key_defaults_follow_the_guide() {
    let (gw, _) = setup();
    // A member's key with no domains gets every domain they can write now.
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/keys",
        Some(json!({"user": "dev@example.com"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["domains"],
        json!({"staging.example.com": "read_write"})
    );
    assert!(r.json().get("expires_at").is_none());
    // An admin's org-wide key.
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/keys",
        Some(json!({"user": "admin@acme.test", "org_wide": true})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["org_wide"], true);
    assert_eq!(r.json()["domains"], json!({}));
    // Listing by user filters, case-insensitively.
    let r = call(
        &gw,
        "GET",
        "/v1/orgs/acme/keys?user=DEV%40Example.com",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ks = r.json()["keys"].as_array().unwrap().clone();
    assert_eq!(ks.len(), 3);
    assert!(ks.iter().all(|k| k["user"] == "dev@example.com"));
    let r = call(&gw, "GET", "/v1/orgs/acme/keys", None);
    assert_eq!(r.json()["keys"].as_array().unwrap().len(), 10);
}

#[test]
fn revoking_twice_is_200_and_changes_nothing() {
    let (gw, keys) = setup();
    let path = format!("/v1/keys/{}", keys.ids["client_a"]);
    let r = call(&gw, "DELETE", &path, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = header_version(&r);
    assert_eq!(r.json()["state"], "revoked");
    assert_eq!(r.json()["version"], json!(v));
    let revoked_at = r.json()["revoked_at"].clone();
    assert!(revoked_at.is_string());
    let r = call(&gw, "DELETE", &path, None);
    assert_eq!(r.status, 200);
    assert_eq!(header_version(&r), v);
    assert_eq!(r.json()["revoked_at"], revoked_at);
    assert_eq!(version(&gw), v);
    assert_eq!(status(&gw)["keys"], 8);
}

// ---------------------------------------------------------------------------
// Errors

#[test]
fn unknown_orgs_users_keys_and_calls_are_404() {
    let (gw, _) = setup();
    let before = version(&gw);
    let member = json!({"role": "member"});
    let cases: Vec<(&str, &str, Option<Value>, &str)> = vec![
        ("GET", "/v1/orgs/nope", None, "org_not_found"),
        ("GET", "/v1/orgs/nope/users", None, "org_not_found"),
        (
            "PUT",
            "/v1/orgs/nope/users/a@b.test",
            Some(member.clone()),
            "org_not_found",
        ),
        (
            "POST",
            "/v1/orgs/nope/users/a@b.test/deactivate",
            None,
            "org_not_found",
        ),
        (
            "POST",
            "/v1/orgs/acme/users/nobody@acme.test/deactivate",
            None,
            "user_not_found",
        ),
        (
            "DELETE",
            "/v1/orgs/acme/users/nobody@acme.test",
            None,
            "user_not_found",
        ),
        (
            "DELETE",
            "/v1/orgs/nope/users/a@b.test",
            None,
            "org_not_found",
        ),
        (
            "POST",
            "/v1/orgs/nope/keys",
            Some(json!({"user": "a@b.test"})),
            "org_not_found",
        ),
        (
            "POST",
            "/v1/orgs/acme/keys",
            Some(json!({"user": "nobody@acme.test"})),
            "user_not_found",
        ),
        (
            "POST",
            "/v1/orgs/other/keys",
            Some(json!({"user": "dev@example.com"})),
            "user_not_found",
        ),
        ("GET", "/v1/orgs/nope/keys", None, "org_not_found"),
        (
            "GET",
            "/v1/keys/key_0000000000000000",
            None,
            "key_not_found",
        ),
        (
            "DELETE",
            "/v1/keys/key_0000000000000000",
            None,
            "key_not_found",
        ),
        ("GET", "/v1/nothing", None, "not_found"),
        ("GET", "/v1/orgs", None, "not_found"),
        ("PATCH", "/v1/orgs/acme", Some(json!({})), "not_found"),
        ("POST", "/v1/status", None, "not_found"),
        (
            "GET",
            "/v1/orgs/acme/users/dev@example.com",
            None,
            "not_found",
        ),
        ("GET", "/v2/status", None, "not_found"),
        ("GET", "/", None, "not_found"),
    ];
    for (m, p, body, code) in cases {
        let r = call(&gw, m, p, body);
        assert_error(&r, 404, code, &format!("{m} {p}"));
        assert!(r.header("x-scopegate-version").is_none(), "{m} {p}");
    }
    assert_eq!(version(&gw), before);
}

#[test]
fn the_last_active_owner_cannot_be_removed_409() {
    let (gw, keys) = setup();
    let before = version(&gw);
    let owner = "/v1/orgs/acme/users/owner@acme.test";
    let cases = [
        ("POST", format!("{owner}/deactivate"), None),
        ("DELETE", owner.to_string(), None),
        ("PUT", owner.to_string(), Some(json!({"role": "admin"}))),
        (
            "PUT",
            owner.to_string(),
            Some(json!({"role": "member", "access": {"example.com": "read_write"}})),
        ),
        (
            "PUT",
            owner.to_string(),
            Some(json!({"role": "owner", "status": "deactivated"})),
        ),
    ];
    for (m, p, body) in &cases {
        let r = call(&gw, m, p, body.clone());
        assert_error(&r, 409, "last_owner", &format!("{m} {p} {body:?}"));
    }
    assert_eq!(version(&gw), before);
    let r = gw.send(Request::new("GET", "/account").bearer(&keys.owner));
    assert_eq!(r.status, 200);
    // With a second owner the first may go.
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/acme/users/admin@acme.test",
        Some(json!({"role": "owner"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&gw, "POST", &format!("{owner}/deactivate"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    // Now admin@ is the last one.
    let r = call(&gw, "DELETE", "/v1/orgs/acme/users/admin@acme.test", None);
    assert_error(&r, 409, "last_owner", "new last owner");
}

#[test]
fn every_creation_rule_is_422_and_changes_nothing() {
    let (gw, _) = setup();
    // A deactivated member, for the last case.
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/users/client-b@example.com/deactivate",
        None,
    );
    assert_eq!(r.status, 200);
    let before = status(&gw);
    let key = |b: Value| ("POST", "/v1/orgs/acme/keys", b);
    let cases = [
        (
            key(json!({"user": "dev@example.com", "org_wide": true})),
            "org_wide_requires_admin",
        ),
        (
            key(json!({"user": "dev@example.com", "domains": ["example.com"]})),
            "domain_not_writable",
        ),
        (
            key(json!({"user": "dev@example.com", "domains": ["client-a.com"]})),
            "domain_not_writable",
        ),
        (
            key(json!({"user": "support@example.com"})),
            "no_writable_domains",
        ),
        (
            key(json!({"user": "dev@example.com", "domains": ["other.org"]})),
            "domain_not_in_org",
        ),
        (
            key(json!({"user": "owner@acme.test", "domains": ["nowhere.test"]})),
            "domain_not_in_org",
        ),
        (
            key(json!({"user": "dev@example.com", "expires_at": "2001-01-01T00:00:00Z"})),
            "expiry_in_past",
        ),
        (
            key(json!({"user": "dev@example.com", "domains": []})),
            "no_domains",
        ),
        (
            key(json!({"user": "owner@acme.test", "org_wide": true, "domains": ["example.com"]})),
            "org_wide_with_domains",
        ),
        (
            key(json!({"user": "owner@acme.test", "org_wide": true, "access": "read"})),
            "org_wide_read_only",
        ),
        (
            key(json!({"user": "client-b@example.com"})),
            "user_deactivated",
        ),
        (
            (
                "PUT",
                "/v1/orgs/acme/users/admin@acme.test",
                json!({"role": "admin", "access": {"example.com": "read"}}),
            ),
            "access_for_admin",
        ),
        (
            (
                "PUT",
                "/v1/orgs/acme/users/new@acme.test",
                json!({"role": "owner", "access": {"example.com": "read_write"}}),
            ),
            "access_for_admin",
        ),
        (
            (
                "PUT",
                "/v1/orgs/acme/users/dev@example.com",
                json!({"role": "member", "access": {"other.org": "read"}}),
            ),
            "domain_not_in_org",
        ),
    ];
    for ((m, p, body), code) in cases {
        let r = call(&gw, m, p, Some(body.clone()));
        assert_error(&r, 422, code, &format!("{m} {p} {body}"));
        assert!(r.header("x-scopegate-version").is_none());
    }
    assert_eq!(status(&gw), before);
}

#[test]
fn malformed_requests_are_400_and_change_nothing() {
    let (gw, _) = setup();
    let before = status(&gw);
    let acme = call(&gw, "GET", "/v1/orgs/acme", None).json();
    let users = call(&gw, "GET", "/v1/orgs/acme/users", None).json();
    let org = "/v1/orgs/acme";
    let user = "/v1/orgs/acme/users/dev@example.com";
    let keys = "/v1/orgs/acme/keys";
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        // malformed JSON and missing bodies
        ("PUT", org, r#"{"domains": ["#, "invalid_json"),
        ("PUT", org, "", "invalid_json"),
        ("PUT", user, "role=member", "invalid_json"),
        ("POST", keys, "", "invalid_json"),
        ("POST", keys, "null", "invalid_json"),
        // unknown fields
        (
            "PUT",
            org,
            r#"{"domains": ["example.com"], "owner": "x"}"#,
            "invalid_json",
        ),
        (
            "PUT",
            org,
            r#"{"domains": [{"name": "example.com", "ids": 1}]}"#,
            "invalid_json",
        ),
        (
            "PUT",
            user,
            r#"{"role": "member", "team": "x"}"#,
            "invalid_json",
        ),
        (
            "POST",
            keys,
            r#"{"user": "dev@example.com", "scope": "all"}"#,
            "invalid_json",
        ),
        // wrong types
        ("PUT", org, r#"{"domains": "example.com"}"#, "invalid_json"),
        ("PUT", org, r#"{"domains": [101]}"#, "invalid_json"),
        (
            "PUT",
            org,
            r#"{"domains": [{"name": "example.com", "id": "101"}]}"#,
            "invalid_json",
        ),
        (
            "PUT",
            user,
            r#"{"role": "member", "access": ["example.com"]}"#,
            "invalid_json",
        ),
        ("PUT", user, r#"{"role": 1}"#, "invalid_json"),
        (
            "POST",
            keys,
            r#"{"user": "dev@example.com", "org_wide": "yes"}"#,
            "invalid_json",
        ),
        (
            "POST",
            keys,
            r#"{"user": "dev@example.com", "domains": "staging.example.com"}"#,
            "invalid_json",
        ),
        (
            "POST",
            keys,
            r#"{"user": ["dev@example.com"]}"#,
            "invalid_json",
        ),
        // missing required fields
        ("PUT", org, r#"{}"#, "invalid_json"),
        ("PUT", user, r#"{"access": {}}"#, "invalid_json"),
        (
            "POST",
            keys,
            r#"{"domains": ["example.com"]}"#,
            "invalid_json",
        ),
        // unknown role, access level, status
        ("PUT", user, r#"{"role": "superuser"}"#, "invalid_json"),
        ("PUT", user, r#"{"role": "Owner"}"#, "invalid_json"),
        (
            "PUT",
            user,
            r#"{"role": "member", "access": {"staging.example.com": "write"}}"#,
            "invalid_json",
        ),
        (
            "PUT",
            user,
            r#"{"role": "member", "status": "suspended"}"#,
            "invalid_json",
        ),
        (
            "POST",
            keys,
            r#"{"user": "dev@example.com", "access": "admin"}"#,
            "invalid_json",
        ),
        // invalid domain names
        (
            "PUT",
            org,
            r#"{"domains": ["not a domain"]}"#,
            "invalid_domain",
        ),
        (
            "PUT",
            org,
            r#"{"domains": ["localhost"]}"#,
            "invalid_domain",
        ),
        (
            "PUT",
            org,
            r#"{"domains": ["-bad-.example"]}"#,
            "invalid_domain",
        ),
        (
            "PUT",
            org,
            r#"{"domains": ["a..example"]}"#,
            "invalid_domain",
        ),
        ("PUT", org, r#"{"domains": [""]}"#, "invalid_domain"),
        (
            "PUT",
            org,
            r#"{"domains": ["example.com", "EXAMPLE.com."]}"#,
            "duplicate_domain",
        ),
        (
            "PUT",
            org,
            r#"{"domains": [{"name": "a.example", "id": 1}, {"name": "b.example", "id": 1}]}"#,
            "duplicate_domain_id",
        ),
        (
            "PUT",
            user,
            r#"{"role": "member", "access": {"exa mple.com": "read"}}"#,
            "invalid_domain",
        ),
        (
            "POST",
            keys,
            r#"{"user": "ops@example.com", "domains": ["bad_domain"]}"#,
            "invalid_domain",
        ),
        // invalid ids and names
        (
            "PUT",
            "/v1/orgs/bad%20org",
            r#"{"domains": []}"#,
            "invalid_org_id",
        ),
        (
            "PUT",
            "/v1/orgs/acme/users/not-an-email",
            r#"{"role": "member"}"#,
            "invalid_user_id",
        ),
        ("POST", keys, r#"{"user": "nobody"}"#, "invalid_user_id"),
        (
            "POST",
            keys,
            r#"{"user": "ops@example.com", "name": "tab\there"}"#,
            "invalid_name",
        ),
        // bad expiry
        (
            "POST",
            keys,
            r#"{"user": "ops@example.com", "expires_at": "tomorrow"}"#,
            "invalid_expires_at",
        ),
        (
            "POST",
            keys,
            r#"{"user": "ops@example.com", "expires_at": "2030-01-01"}"#,
            "invalid_expires_at",
        ),
        (
            "POST",
            keys,
            r#"{"user": "ops@example.com", "expires_at": 1900000000}"#,
            "invalid_json",
        ),
        // undecodable admin paths
        ("GET", "/v1/orgs/acme/../other", "", "bad_path"),
        ("GET", "/v1/orgs/%zz", "", "bad_path"),
        ("GET", "/v1/orgs/acme/", "", "bad_path"),
        ("GET", "/v1/orgs/a%2Fb", "", "bad_path"),
    ];
    for (m, p, body, code) in cases {
        let r = raw(&gw, m, p, body);
        assert_error(&r, 400, code, &format!("{m} {p} {body}"));
        assert!(r.header("x-scopegate-version").is_none());
    }
    let r = call(&gw, "GET", "/v1/orgs/acme/keys?user=not-an-email", None);
    assert_error(&r, 400, "invalid_user_id", "keys?user=");
    assert_eq!(status(&gw), before);
    assert_eq!(call(&gw, "GET", "/v1/orgs/acme", None).json(), acme);
    assert_eq!(call(&gw, "GET", "/v1/orgs/acme/users", None).json(), users);
}

#[test]
fn oversized_bodies_are_413_and_change_nothing() {
    let gw = TestGateway::start_with(|c| c.limits.max_admin_body_bytes = 64);
    let small = json!({"domains": ["a.example"]});
    let r = call(&gw, "PUT", "/v1/orgs/small", Some(small));
    assert_eq!(r.status, 201, "{}", r.text());
    let before = status(&gw);
    let big = json!({"domains": (0..20).map(|i| format!("d{i}.example")).collect::<Vec<_>>()});
    assert!(serde_json::to_vec(&big).unwrap().len() > 64);
    let r = call(&gw, "PUT", "/v1/orgs/big", Some(big.clone()));
    assert_error(&r, 413, "payload_too_large", "content-length");
    // The same without a Content-Length: counted while reading.
    let r = gw.admin(
        Request::new("PUT", "/v1/orgs/big")
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&big).unwrap())
            .chunked(16),
    );
    assert_error(&r, 413, "payload_too_large", "chunked");
    // Exactly at the limit is fine.
    let mut at_limit = br#"{"domains": ["b.example"]}"#.to_vec();
    at_limit.resize(64, b' ');
    let r = gw.admin(Request::new("PUT", "/v1/orgs/exact").body(at_limit));
    assert_eq!(r.status, 201, "{}", r.text());
    let after = status(&gw);
    assert_eq!(after["orgs"], json!(before["orgs"].as_u64().unwrap() + 1));
    assert_eq!(call(&gw, "GET", "/v1/orgs/big", None).status, 404);
}

// ---------------------------------------------------------------------------
// Authentication

#[test]
fn v1_needs_the_admin_token_and_operator_endpoints_do_not() {
    let (gw, _) = setup();
    let before = version(&gw);
    let presented = [
        None,
        Some("Bearer wrong-token-0123456789".to_string()),
        Some(format!("Bearer {}", ADMIN_TOKEN.to_uppercase())),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(ADMIN_TOKEN.to_string()),
        Some("Bearer ".to_string()),
    ];
    for auth in &presented {
        for (m, p, body) in [
            ("GET", "/v1/status", None),
            ("GET", "/v1/orgs/acme/keys", None),
            (
                "PUT",
                "/v1/orgs/evil",
                Some(json!({"domains": ["evil.example"]})),
            ),
            ("DELETE", "/v1/orgs/acme/users/dev@example.com", None),
            ("GET", "/v1/no/such/call", None),
        ] {
            let mut r = Request::new(m, p);
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send(gw.admin);
            assert_error(&r, 401, "unauthorized", &format!("{auth:?} {m} {p}"));
            assert!(!r.text().contains(ADMIN_TOKEN));
        }
    }
    assert_eq!(version(&gw), before);
    // Operator endpoints need no token (and ignore a wrong one).
    for p in ["/metrics", "/healthz", "/readyz"] {
        let r = Request::new("GET", p).send(gw.admin);
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        let r = Request::new("GET", p)
            .bearer("wrong-token-0123456789")
            .send(gw.admin);
        assert_eq!(r.status, 200, "{p}");
    }
    assert!(gw.metrics().contains("scopegate_"));
    // The admin token is not a proxy key either.
    let r = gw.send(Request::new("GET", "/domains/example.com").bearer(ADMIN_TOKEN));
    assert_eq!(r.status, 401);
}

#[test]
fn with_no_admin_token_v1_is_refused_with_403() {
    let gw = TestGateway::start_with_tokens(vec![], |_| {});
    for auth in [None, Some(ADMIN_TOKEN), Some("")] {
        for (m, p) in [
            ("GET", "/v1/status"),
            ("PUT", "/v1/orgs/acme"),
            ("POST", "/v1/orgs/acme/keys"),
        ] {
            let mut r = Request::new(m, p);
            if let Some(a) = auth {
                r = r.bearer(a);
            }
            let r = r.send(gw.admin);
            assert_error(&r, 403, "admin_disabled", &format!("{auth:?} {m} {p}"));
        }
    }
    assert_eq!(gw.keystore.status().orgs, 0);
    for p in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(Request::new("GET", p).send(gw.admin).status, 200, "{p}");
    }
}

#[test]
fn reload_without_a_config_file_is_refused_with_422() {
    let (gw, _) = setup();
    let r = call(&gw, "POST", "/v1/reload", None);
    assert_error(&r, 422, "reload_rejected", "reload");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--config"));
}

#[test]
fn status_reports_the_version_and_counts() {
    let (gw, _) = setup();
    let s = status(&gw);
    assert_eq!(s["orgs"], 2);
    assert_eq!(s["users"], 8);
    assert_eq!(s["keys"], 9);
    assert_eq!(s["version"], json!(gw.keystore.status().version));
    assert!(s["changed_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(s["store"], "sqlite");
    let empty = TestGateway::start();
    let s = status(&empty);
    assert_eq!(s["version"], 0);
    assert_eq!(s["changed_at"], Value::Null);
}

// ---------------------------------------------------------------------------
// Enforcement on the very next request

#[test]
fn mutations_publish_a_version_that_the_next_request_is_decided_by() {
    let (gw, keys) = setup();
    let mut last = version(&gw);
    let mut check = |r: &Response| {
        let v = header_version(r);
        assert!(v > last, "{v} after {last}");
        last = v;
        // The very next proxied request is decided by at least this version.
        gw.domains.clear();
        let ok = gw.send(Request::new("GET", "/domains/example.com").bearer(&keys.owner));
        assert_eq!(ok.status, 200);
        let seen: u64 = gw.domains.requests()[0]
            .header("x-scopegate-version")
            .unwrap()
            .parse()
            .unwrap();
        assert!(seen >= v, "decided by {seen}, change published {v}");
    };
    check(&call(
        &gw,
        "PUT",
        "/v1/orgs/acme",
        Some(
            json!({"domains": ["example.com", "staging.example.com", "client-a.com", "client-b.com", "mail.client-b.com", "new.example.com"]}),
        ),
    ));
    check(&call(
        &gw,
        "PUT",
        "/v1/orgs/acme/users/x@acme.test",
        Some(json!({"role": "member", "access": {"new.example.com": "read_write"}})),
    ));
    let created = call(
        &gw,
        "POST",
        "/v1/orgs/acme/keys",
        Some(json!({"user": "x@acme.test"})),
    );
    check(&created);
    check(&call(
        &gw,
        "DELETE",
        &format!("/v1/keys/{}", created.json()["id"].as_str().unwrap()),
        None,
    ));
    check(&call(
        &gw,
        "POST",
        "/v1/orgs/acme/users/x@acme.test/deactivate",
        None,
    ));
    check(&call(
        &gw,
        "DELETE",
        "/v1/orgs/acme/users/x@acme.test",
        None,
    ));
}

#[test]
fn a_revoked_key_is_refused_on_the_very_next_request() {
    let (gw, keys) = setup();
    let mut conn = scopegate_suite::http::Conn::open(gw.proxy);
    let req = Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev);
    assert_eq!(conn.send(&req, true).status, 200);
    let r = call(
        &gw,
        "DELETE",
        &format!("/v1/keys/{}", keys.ids["dev"]),
        None,
    );
    assert_eq!(r.status, 200);
    // The same keep-alive connection, right after the 200.
    let r = conn.send(&req, true);
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "invalid_api_key");
    assert_eq!(gw.domains.count(), 1);
    // The user's other key is untouched.
    let r = gw.send(Request::new("GET", "/domains/staging.example.com").bearer(&keys.dev_read));
    assert_eq!(r.status, 200);
}

#[test]
fn lowering_a_users_access_is_enforced_on_the_very_next_request() {
    let (gw, keys) = setup();
    let write = Request::new("POST", "/domains/example.com/verify").bearer(&keys.ops);
    let read = Request::new("GET", "/domains/example.com").bearer(&keys.ops);
    assert_eq!(gw.send(write.clone()).status, 201);
    // read_write -> read: writes 403, reads still pass.
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/acme/users/ops@example.com",
        Some(
            json!({"role": "member", "access": {"example.com": "read", "staging.example.com": "read_write"}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.send(write.clone());
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code(), "read_only");
    assert_eq!(gw.send(read.clone()).status, 200);
    // Access removed: the domain is invisible (404).
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/acme/users/ops@example.com",
        Some(json!({"role": "member", "access": {"staging.example.com": "read_write"}})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(gw.send(read.clone()).status, 404);
    assert_eq!(gw.send(write.clone()).status, 404);
    let r = gw.send(Request::new("GET", "/domains/staging.example.com").bearer(&keys.ops));
    assert_eq!(r.status, 200);
    // Raising it again gives back no more than the key's own scope.
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/acme/users/ops@example.com",
        Some(
            json!({"role": "member", "access": {"example.com": "read_write", "staging.example.com": "read_write"}}),
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(gw.send(write).status, 201);
    // An admin demoted to member loses organisation endpoints at once.
    let account = Request::new("GET", "/account").bearer(&keys.admin);
    assert_eq!(gw.send(account.clone()).status, 200);
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/acme/users/admin@acme.test",
        Some(json!({"role": "member", "access": {"example.com": "read"}})),
    );
    assert_eq!(r.status, 200);
    let r = gw.send(account);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = gw.send(Request::new("GET", "/domains/client-a.com").bearer(&keys.admin));
    assert_eq!(r.status, 404);
    let r = gw.send(Request::new("GET", "/domains/example.com").bearer(&keys.admin));
    assert_eq!(r.status, 200);
}

#[test]
fn deactivating_or_deleting_a_user_stops_all_their_keys_on_the_next_request() {
    let (gw, keys) = setup();
    let dev = |key: &str| {
        gw.send(Request::new("GET", "/domains/staging.example.com").bearer(key))
            .status
    };
    assert_eq!(dev(&keys.dev), 200);
    assert_eq!(dev(&keys.dev_read), 200);
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/users/dev@example.com/deactivate",
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(dev(&keys.dev), 401);
    assert_eq!(dev(&keys.dev_read), 401);
    assert_eq!(dev(&keys.ops), 200);
    let client = Request::new("GET", "/domains/client-a.com").bearer(&keys.client_a);
    assert_eq!(gw.send(client.clone()).status, 200);
    let r = call(
        &gw,
        "DELETE",
        "/v1/orgs/acme/users/client-a@example.com",
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(gw.send(client).status, 401);
    // Removing a domain from the organisation hides it from every key.
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/acme",
        Some(
            json!({"domains": ["example.com", "client-a.com", "client-b.com", "mail.client-b.com"]}),
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(dev(&keys.ops), 404);
    assert_eq!(dev(&keys.owner), 404);
}

#[test]
fn imported_secrets_work_are_never_echoed_and_duplicates_are_409() {
    let (gw, keys) = setup();
    let legacy = "legacy-token-0123456789";
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/keys",
        Some(json!({"user": "ops@example.com", "secret": legacy, "name": "imported"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        r.json().get("key").is_none(),
        "an imported secret is not echoed"
    );
    assert!(!r.text().contains(legacy));
    let r = gw.send(Request::new("GET", "/domains/example.com").header("X-Api-Key", legacy));
    assert_eq!(r.status, 200);
    let before = status(&gw);
    for secret in [legacy, keys.owner.as_str()] {
        let r = call(
            &gw,
            "POST",
            "/v1/orgs/acme/keys",
            Some(json!({"user": "ops@example.com", "secret": secret})),
        );
        assert_error(&r, 409, "key_exists", "duplicate secret");
        assert!(!r.text().contains(secret));
    }
    let r = call(
        &gw,
        "POST",
        "/v1/orgs/acme/keys",
        Some(json!({"user": "ops@example.com", "secret": "bad secret\u{7f}"})),
    );
    assert_error(&r, 400, "invalid_secret", "unprintable secret");
    assert_eq!(status(&gw), before);
}

#[test]
fn deactivating_through_put_user_revokes_the_keys_too() {
    let (gw, keys) = setup();
    let r = call(
        &gw,
        "PUT",
        "/v1/orgs/acme/users/client-b@example.com",
        Some(
            json!({"role": "member", "access": {"client-b.com": "read_write"}, "status": "deactivated"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.send(Request::new("GET", "/domains/client-b.com").bearer(&keys.client_b));
    assert_eq!(r.status, 401);
    let r = call(
        &gw,
        "GET",
        &format!("/v1/keys/{}", keys.ids["client_b"]),
        None,
    );
    assert_eq!(r.json()["state"], "revoked");
}

#[test]
fn a_204_carries_no_content_length() {
    let (gw, _) = setup();
    let r = call(&gw, "DELETE", "/v1/orgs/acme/users/dev@example.com", None);
    assert_eq!(r.status, 204);
    assert!(r.header("content-length").is_none(), "{:?}", r.headers);
}
