//! The access model of the guides: organisations own domains, users hold a role
//! and (for members) per-domain access, keys carry a scope no wider than their
//! creator.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a user can do at the organisation level.
///
/// Owners and admins have read/write on every domain of their organisation,
/// including domains added later; members only on the domains assigned to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Full organisation access; at least one active owner must remain.
    Owner,
    /// Full organisation access for trusted operators.
    Admin,
    /// Scoped access: only the domains in the member's access map.
    Member,
}

impl Role {
    /// The lowercase name used in the API, the store and identity headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Owners and admins see and write every domain of the organisation.
    pub fn is_org_admin(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            other => Err(format!(
                "unknown role {other:?} (expected owner, admin or member)"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a user may act at all. Deactivating a user stops every key they made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The user and their keys work.
    Active,
    /// The user is offboarded: none of their keys work, ever again.
    Deactivated,
}

impl Status {
    /// The lowercase name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Deactivated => "deactivated",
        }
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Status::Active),
            "deactivated" => Ok(Status::Deactivated),
            other => Err(format!(
                "unknown status {other:?} (expected active or deactivated)"
            )),
        }
    }
}

/// A level of access to one domain. `Read < ReadWrite`, so `min` gives the
/// effective level of a key and its creator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// See the domain (GET and HEAD).
    Read,
    /// Set up and operate the domain, and send as it.
    ReadWrite,
}

impl Access {
    /// The name used in the API and in the `X-Scopegate-Scope` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::ReadWrite => "read_write",
        }
    }
}

impl FromStr for Access {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Access::Read),
            "read_write" => Ok(Access::ReadWrite),
            other => Err(format!(
                "unknown access level {other:?} (expected read or read_write)"
            )),
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A domain of an organisation: its canonical name and an optional numeric id
/// (the platform's own id, so `/domains/12345` can address it too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Canonical name: lowercase ASCII (punycode), no trailing dot.
    pub name: String,
    /// The platform's numeric id for the domain, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// A server of an organisation (Postmark's unit of sending: its own
/// messages, templates, webhooks and tokens): a name and the platform's
/// numeric id, unique within the organisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Canonical name (see [`canonical_server`]).
    pub name: String,
    /// The platform's numeric id, so `/servers/12345` can address it.
    pub id: u64,
}

/// What a server-bound key (a server token) grants on its server, before
/// its creator's current level caps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyServer {
    /// The server's canonical name.
    pub name: String,
    /// The level the key grants on it.
    pub access: Access,
}

/// Canonical form of a server name: lowercased, then 1-64 characters of
/// `[a-z0-9._-]`. `None` for anything else.
pub fn canonical_server(input: &str) -> Option<String> {
    let name = input.to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    ok.then_some(name)
}

/// A user as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The organisation the user belongs to.
    pub org: String,
    /// The user's id (an email address).
    pub id: String,
    /// Owner, admin or member.
    pub role: Role,
    /// Active or deactivated.
    pub status: Status,
    /// Per-domain access; only meaningful for members.
    pub access: BTreeMap<String, Access>,
    /// Per-server access (`read`: Server Viewer, `read_write`: Server
    /// Admin); only meaningful for members, empty by default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<String, Access>,
    /// Unique per incarnation of the user (the version that created it): a
    /// user deleted and created again gets a new uid, and keys belong to a uid,
    /// so old keys never come back.
    pub uid: u64,
}

/// A key's declared scope, as chosen at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    /// Every domain of the organisation and organisation-level endpoints
    /// (owners and admins only).
    OrgWide,
    /// The listed domains at the given levels.
    Domains(BTreeMap<String, Access>),
}

/// Everything the store keeps about a key. Never holds the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id, e.g. `key_6f1c2a9e4b7d3c10`.
    pub id: String,
    /// Keyed BLAKE3 digest of the secret.
    pub digest: crate::Digest,
    /// Where the key sits in the key table (see [`crate::Locator`]); for a
    /// key stored without one, [`crate::Locator::of_digest`].
    pub locator: crate::Locator,
    /// Owning organisation.
    pub org: String,
    /// Creating user.
    pub user: String,
    /// The creating user's uid.
    pub user_uid: u64,
    /// Declared scope.
    pub scope: KeyScope,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    /// Human label.
    pub name: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; set once, never cleared.
    pub revoked_at: Option<i64>,
    /// Rate limit, shadow scope and rotation: what a key's lifecycle adds
    /// to it (absent in log entries and rows written before it existed).
    #[serde(default)]
    pub lifecycle: KeyLifecycle,
    /// The server the key is bound to (a server token), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<KeyServer>,
}

/// A token bucket's settings: `per_second` tokens added each second, at
/// most `burst` held; a request takes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second (at least 1).
    pub per_second: u32,
    /// Requests that may arrive at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// What a key carries beyond its scope: limits, a shadow scope and where it
/// stands in a rotation. Kept together because all of it is optional and
/// most keys have none of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLifecycle {
    /// The key's own rate limit; `None` falls back to its organisation's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// A narrower scope being tried: requests it would refuse are admitted
    /// and counted `would_refuse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<BTreeMap<String, Access>>,
    /// Unix seconds when the key was rotated (its grace then ends at `expires_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<i64>,
    /// The id of the key that replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
}

impl KeyLifecycle {
    /// Whether there is nothing to store.
    pub fn is_empty(&self) -> bool {
        *self == KeyLifecycle::default()
    }
}

/// A key's lifecycle as a store keeps it: JSON, or `NULL` for none.
pub fn lifecycle_json(l: &KeyLifecycle) -> Option<String> {
    (!l.is_empty()).then(|| serde_json::to_string(l).expect("a key lifecycle serialises"))
}

/// Reads back what [`lifecycle_json`] wrote.
pub fn parse_lifecycle(text: Option<&str>) -> Result<KeyLifecycle, String> {
    text.map_or(Ok(KeyLifecycle::default()), |t| {
        serde_json::from_str(t).map_err(|e| format!("bad key lifecycle in store: {e}"))
    })
}

/// How a key has been used, as the store keeps it (written in batches, see
/// `KeyStore::flush_usage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Unix seconds of the last admitted request; 0 = never.
    pub last_used_at: i64,
    /// Admitted requests counted since usage tracking began.
    pub requests: u64,
    /// Of those, the ones made after the key was rotated (during its grace).
    pub grace_uses: u64,
}

impl KeyRecord {
    /// Where the key sits in the table and its digest.
    pub fn hashed(&self) -> crate::Hashed {
        crate::Hashed {
            locator: self.locator,
            digest: self.digest,
        }
    }
}

/// Key metadata as the admin API shows it: no secret, no digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyMeta {
    /// Public id.
    pub id: String,
    /// Owning organisation.
    pub org: String,
    /// Creating user.
    pub user: String,
    /// Whether the key was created organisation-wide.
    pub org_wide: bool,
    /// Declared per-domain scope (empty for org-wide keys).
    pub domains: BTreeMap<String, Access>,
    /// The server the key is bound to (a server token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The level the key grants on its server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_access: Option<Access>,
    /// Human label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, if the key expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// RFC 3339, if revoked (directly, or because its creator was deactivated or deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// `active`, `revoked` or `expired` at the time of the call.
    pub state: &'static str,
    /// The key's own rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The shadow scope being tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<BTreeMap<String, Access>>,
    /// RFC 3339, if the key was rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<String>,
    /// The key that replaced this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// RFC 3339 of the last admitted request (to the second), if any.
    pub last_used_at: Option<String>,
    /// Admitted requests since usage tracking began.
    pub requests: u64,
    /// For a rotated key: requests made with it since the rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_uses: Option<u64>,
}

impl KeyMeta {
    /// The metadata with a usage record filled in.
    pub fn with_usage(mut self, u: Usage) -> KeyMeta {
        self.last_used_at = (u.last_used_at > 0).then(|| crate::time::rfc3339(u.last_used_at));
        self.requests = u.requests;
        if self.rotated_at.is_some() {
            self.grace_uses = Some(u.grace_uses);
        }
        self
    }
}

impl KeyRecord {
    /// The admin view of this record at time `now`.
    pub fn meta(&self, now: i64) -> KeyMeta {
        let (org_wide, domains) = match &self.scope {
            KeyScope::OrgWide => (true, BTreeMap::new()),
            KeyScope::Domains(d) => (false, d.clone()),
        };
        let state = if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        };
        KeyMeta {
            id: self.id.clone(),
            org: self.org.clone(),
            user: self.user.clone(),
            org_wide,
            domains,
            server: self.server.as_ref().map(|s| s.name.clone()),
            server_access: self.server.as_ref().map(|s| s.access),
            name: self.name.clone(),
            created_at: crate::time::rfc3339(self.created_at),
            expires_at: self.expires_at.map(crate::time::rfc3339),
            revoked_at: self.revoked_at.map(crate::time::rfc3339),
            state,
            rate_limit: self.lifecycle.rate_limit,
            shadow: self.lifecycle.shadow.clone(),
            rotated_at: self.lifecycle.rotated_at.map(crate::time::rfc3339),
            replaced_by: self.lifecycle.replaced_by.clone(),
            last_used_at: None,
            requests: 0,
            grace_uses: self.lifecycle.rotated_at.map(|_| 0),
        }
    }
}

/// Why a domain name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid domain name {input:?}: {reason}")]
pub struct InvalidDomain {
    /// What was given (trimmed to 100 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Canonical form of a domain name: lowercase, one trailing dot dropped, IDNs
/// as punycode (UTS 46), each label 1..=63 of `[a-z0-9-]` not starting or ending
/// with `-`, at most 253 bytes, at least two labels.
///
/// Paths, `From` addresses and admin input all go through this, so the same
/// domain always compares equal however it was written.
pub fn canonical_domain(input: &str) -> Result<String, InvalidDomain> {
    canonical_domain_cow(input).map(std::borrow::Cow::into_owned)
}

/// [`canonical_domain`], borrowing the input when it is already canonical
/// (the common case on the request path: no allocation).
pub fn canonical_domain_cow(input: &str) -> Result<std::borrow::Cow<'_, str>, InvalidDomain> {
    use std::borrow::Cow;
    let fail = |reason| InvalidDomain {
        input: input.chars().take(100).collect(),
        reason,
    };
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(fail("empty"));
    }
    let ascii: Cow<'_, str> = if trimmed.is_ascii() {
        if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(trimmed.to_ascii_lowercase())
        } else {
            Cow::Borrowed(trimmed)
        }
    } else {
        Cow::Owned(
            idna::domain_to_ascii_strict(trimmed)
                .map_err(|_| fail("not a valid internationalised name"))?,
        )
    };
    if ascii.len() > 253 {
        return Err(fail("longer than 253 bytes"));
    }
    let mut labels = 0;
    for label in ascii.split('.') {
        labels += 1;
        if label.is_empty() {
            return Err(fail("empty label"));
        }
        if label.len() > 63 {
            return Err(fail("label longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(fail("only letters, digits and '-' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(fail("a label may not start or end with '-'"));
        }
    }
    if labels < 2 {
        return Err(fail("needs at least two labels"));
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_domain_forms() {
        assert_eq!(canonical_domain("Example.COM").unwrap(), "example.com");
        assert_eq!(canonical_domain("example.com.").unwrap(), "example.com");
        assert_eq!(
            canonical_domain("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            canonical_domain("BÜCHER.example.").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(canonical_domain("a-b.c0.io").unwrap(), "a-b.c0.io");
    }

    #[test]
    fn canonical_domain_refusals() {
        for bad in [
            "",
            ".",
            "example..com",
            "example.com..",
            "-a.com",
            "a-.com",
            "localhost",
            "a_b.com",
            "a b.com",
            "a/b.com",
            "a%2e.com",
            &format!("{}.com", "a".repeat(64)),
            &format!("{}com", "a.".repeat(130)),
        ] {
            assert!(canonical_domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn canonical_server_forms() {
        assert_eq!(
            canonical_server("Prod-EU.1_a").as_deref(),
            Some("prod-eu.1_a")
        );
        assert_eq!(
            canonical_server(&"a".repeat(64)).as_deref(),
            Some(&*"a".repeat(64))
        );
        for bad in ["", "a b", "a/b", "ä", "a%20", &"a".repeat(65), "a\n"] {
            assert_eq!(canonical_server(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn access_orders_read_below_read_write() {
        assert!(Access::Read < Access::ReadWrite);
        assert_eq!(Access::ReadWrite.min(Access::Read), Access::Read);
    }
}
