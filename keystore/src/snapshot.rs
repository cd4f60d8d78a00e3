//! One immutable version of everything enforcement needs, and the decision
//! itself.
//!
//! A [`Snapshot`] is what readers load from the `ArcSwap`: they never lock,
//! and the writer builds the next version by copying only the shards it
//! changes (see [`crate::shardmap`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::model::{Access, KeyRecord, KeyScope, Role, Status, UserRecord};
use crate::shardmap::{IdentityState, ShardMap};
use crate::Digest;

/// An organisation as enforcement sees it.
#[derive(Clone, Debug, Default)]
pub struct OrgEntry {
    /// Canonical domain names, each mapped to its optional numeric id.
    pub domains: HashMap<Arc<str>, Option<u64>>,
    /// Numeric id -> canonical name, for `/domains/12345`.
    pub domain_ids: HashMap<u64, Arc<str>>,
}

impl OrgEntry {
    /// The canonical name of a domain of this organisation.
    #[inline]
    pub fn resolve(&self, target: DomainRef<'_>) -> Option<&Arc<str>> {
        match target {
            DomainRef::Name(n) => self.domains.get_key_value(n).map(|(k, _)| k),
            DomainRef::Id(id) => self.domain_ids.get(&id),
        }
    }
}

/// A user as enforcement sees it.
#[derive(Clone, Debug)]
pub struct UserEntry {
    /// Owner, admin or member, now.
    pub role: Role,
    /// Active or deactivated, now.
    pub status: Status,
    /// Member access, now (ignored for owners and admins).
    pub access: BTreeMap<Arc<str>, Access>,
    /// See [`UserRecord::epoch`].
    pub epoch: u64,
}

impl UserEntry {
    /// The user's own level on a domain of their organisation, now.
    #[inline]
    pub fn level_on(&self, domain: &str) -> Option<Access> {
        if self.role.is_org_admin() {
            Some(Access::ReadWrite)
        } else {
            self.access.get(domain).copied()
        }
    }
}

/// Which user created a key: the key into [`Snapshot::users`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserKey {
    /// Organisation id.
    pub org: Arc<str>,
    /// User id.
    pub user: Arc<str>,
}

/// A key's declared domains and levels, shared between snapshot versions.
pub type DomainScope = Arc<[(Arc<str>, Access)]>;

/// A key as enforcement sees it: small, because there may be millions.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// Public id.
    pub id: Arc<str>,
    /// Creating user.
    pub creator: Arc<UserKey>,
    /// The creator's epoch when the key was made.
    pub user_epoch: u64,
    /// `None` for org-wide keys, else the declared domains and levels.
    pub domains: Option<DomainScope>,
    /// Unix seconds; `i64::MAX` when the key never expires.
    pub expires_at: i64,
    /// Revoked keys stay in the table so metrics can tell "revoked" from "unknown".
    pub revoked: bool,
}

impl KeyEntry {
    /// The declared level on a canonical domain name.
    #[inline]
    fn declared(&self, domain: &str) -> Option<Access> {
        match &self.domains {
            None => Some(Access::ReadWrite),
            Some(list) => list
                .iter()
                .find(|(d, _)| &**d == domain)
                .map(|(_, a)| *a),
        }
    }
}

/// A domain as a request names it: by canonical name or by numeric id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainRef<'a> {
    /// Canonical name (see [`crate::canonical_domain`]).
    Name(&'a str),
    /// The platform's numeric id.
    Id(u64),
}

/// What a request targets and the level it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// Any live key will do (e.g. `GET /domains`, where the upstream filters
    /// by the forwarded scope).
    AnyKey,
    /// An organisation-level endpoint: an org-wide key of a current owner or admin.
    Organisation,
    /// One domain at the given level.
    Domain(DomainRef<'a>, Access),
}

/// Why a request is refused. The gateway turns these into responses; the
/// name goes to metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No key was presented.
    MissingKey,
    /// Not a possible key (bad format or checksum): refused before hashing.
    MalformedKey,
    /// No key has this digest.
    UnknownKey,
    /// The key was revoked.
    RevokedKey,
    /// The key's expiry has passed.
    ExpiredKey,
    /// The creator was deactivated or deleted (their keys died with them).
    CreatorInactive,
    /// The domain does not exist in the key's organisation, or the key cannot
    /// see it: the same answer for both, so existence is not revealed.
    NotVisible,
    /// The key sees the domain but may only read it.
    ReadOnly,
    /// The endpoint is organisation-level and the key is not org-wide (or its
    /// creator is no longer an owner or admin).
    OrgWideRequired,
}

impl Refusal {
    /// Every refusal, for pre-registering metric label values.
    pub const ALL: [Refusal; 9] = [
        Refusal::MissingKey,
        Refusal::MalformedKey,
        Refusal::UnknownKey,
        Refusal::RevokedKey,
        Refusal::ExpiredKey,
        Refusal::CreatorInactive,
        Refusal::NotVisible,
        Refusal::ReadOnly,
        Refusal::OrgWideRequired,
    ];

    /// Stable snake_case name for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MissingKey => "missing_key",
            Refusal::MalformedKey => "malformed_key",
            Refusal::UnknownKey => "unknown_key",
            Refusal::RevokedKey => "revoked_key",
            Refusal::ExpiredKey => "expired_key",
            Refusal::CreatorInactive => "creator_inactive",
            Refusal::NotVisible => "not_visible",
            Refusal::ReadOnly => "read_only",
            Refusal::OrgWideRequired => "org_wide_required",
        }
    }

    /// Whether this refusal is about the key itself (401) rather than its scope.
    pub fn is_authentication(self) -> bool {
        matches!(
            self,
            Refusal::MissingKey
                | Refusal::MalformedKey
                | Refusal::UnknownKey
                | Refusal::RevokedKey
                | Refusal::ExpiredKey
                | Refusal::CreatorInactive
        )
    }
}

/// One version of the access data.
#[derive(Clone)]
pub struct Snapshot {
    /// Monotonic; the store's change-log position that produced this version.
    pub version: u64,
    /// Unix milliseconds of the change that produced this version.
    pub changed_at_ms: i64,
    /// Organisations by id.
    pub orgs: ShardMap<Arc<str>, Arc<OrgEntry>>,
    /// Users by (org, user).
    pub users: ShardMap<UserKey, Arc<UserEntry>>,
    /// Keys by digest, revoked ones included.
    pub keys: ShardMap<Digest, KeyEntry, IdentityState>,
    /// Keys not revoked (expired ones included).
    pub live_keys: usize,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("orgs", &self.orgs.len())
            .field("users", &self.users.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// A key that passed authentication, with its creator and organisation as of
/// this snapshot. Borrowed from the snapshot: no allocation.
#[derive(Clone, Copy, Debug)]
pub struct Principal<'s> {
    /// The key.
    pub key: &'s KeyEntry,
    /// Its creator, now.
    pub user: &'s UserEntry,
    /// Its organisation, now.
    pub org: &'s OrgEntry,
}

impl Snapshot {
    /// An empty snapshot at version 0.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            changed_at_ms: 0,
            orgs: ShardMap::new(),
            users: ShardMap::new(),
            keys: ShardMap::new(),
            live_keys: 0,
        }
    }

    /// Finds the key for a digest and checks that it, and its creator, are
    /// live at `now` (Unix seconds).
    #[inline]
    pub fn authenticate(&self, digest: &Digest, now: i64) -> Result<Principal<'_>, Refusal> {
        let key = self.keys.get(digest).ok_or(Refusal::UnknownKey)?;
        if key.revoked {
            return Err(Refusal::RevokedKey);
        }
        if key.expires_at <= now {
            return Err(Refusal::ExpiredKey);
        }
        let user = self
            .users
            .get(&*key.creator)
            .filter(|u| u.status == Status::Active && u.epoch == key.user_epoch)
            .ok_or(Refusal::CreatorInactive)?;
        let org = self
            .orgs
            .get(&key.creator.org)
            .ok_or(Refusal::CreatorInactive)?;
        Ok(Principal { key, user, org })
    }

    /// Number of organisations.
    pub fn org_count(&self) -> usize {
        self.orgs.len()
    }
}

impl<'s> Principal<'s> {
    /// Organisation-level endpoints need an org-wide key whose creator is
    /// still an owner or admin.
    #[inline]
    pub fn is_org_wide(&self) -> bool {
        self.key.domains.is_none() && self.user.role.is_org_admin()
    }

    /// Effective level on a canonical domain of the organisation:
    /// min(key scope, creator's level now). `None` = not visible.
    #[inline]
    pub fn level_on(&self, domain: &str) -> Option<Access> {
        let declared = self.key.declared(domain)?;
        let own = self.user.level_on(domain)?;
        Some(declared.min(own))
    }

    /// Decides a target. For domains, a domain outside the organisation and
    /// one the key cannot see give the same refusal.
    #[inline]
    pub fn authorize(&self, target: Target<'_>) -> Result<(), Refusal> {
        match target {
            Target::AnyKey => Ok(()),
            Target::Organisation => {
                if self.is_org_wide() {
                    Ok(())
                } else {
                    Err(Refusal::OrgWideRequired)
                }
            }
            Target::Domain(d, need) => {
                let name = self.org.resolve(d).ok_or(Refusal::NotVisible)?;
                match self.level_on(name) {
                    None => Err(Refusal::NotVisible),
                    Some(have) if have >= need => Ok(()),
                    Some(_) => Err(Refusal::ReadOnly),
                }
            }
        }
    }

    /// The canonical name of a domain the key can see, for forwarding `/domains/{id}`.
    pub fn resolve(&self, d: DomainRef<'_>) -> Option<&'s str> {
        self.org.resolve(d).map(|s| &**s)
    }

    /// The user's role, now.
    pub fn role(&self) -> Role {
        self.user.role
    }

    /// Effective scope for the `X-Scopegate-Scope` header: `*` for an org-wide
    /// key of an owner or admin, else `domain=level` pairs, sorted, comma-separated.
    pub fn scope_header(&self) -> String {
        if self.is_org_wide() {
            return "*".to_string();
        }
        let mut out = String::new();
        let mut push = |d: &str, a: Access| {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{d}={}", a.as_str());
        };
        match &self.key.domains {
            Some(list) => {
                let mut list: Vec<_> = list.iter().collect();
                list.sort();
                for (d, _) in list {
                    if self.org.domains.contains_key(d) {
                        if let Some(a) = self.level_on(d) {
                            push(d, a);
                        }
                    }
                }
            }
            // An org-wide key whose creator was demoted to member: what the member has.
            None => {
                for (d, a) in &self.user.access {
                    if self.org.domains.contains_key(d) {
                        push(d, *a);
                    }
                }
            }
        }
        out
    }
}

/// Interns strings while building snapshot entries, so a million keys of a few
/// thousand users share their org, user and domain names.
#[derive(Default)]
pub(crate) struct Interner {
    strings: HashMap<Arc<str>, ()>,
}

impl Interner {
    pub(crate) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some((k, _)) = self.strings.get_key_value(s) {
            return Arc::clone(k);
        }
        let k: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&k), ());
        k
    }
}

/// Builds the enforcement entry for a user record.
pub(crate) fn user_entry(u: &UserRecord, intern: &mut Interner) -> UserEntry {
    UserEntry {
        role: u.role,
        status: u.status,
        access: u.access.iter().map(|(d, a)| (intern.get(d), *a)).collect(),
        epoch: u.epoch,
    }
}

/// Builds the enforcement entry for a key record, reusing the creator's
/// shared `UserKey` when one is at hand.
pub(crate) fn key_entry(
    k: &KeyRecord,
    creator: Arc<UserKey>,
    intern: &mut Interner,
) -> KeyEntry {
    KeyEntry {
        id: Arc::from(k.id.as_str()),
        creator,
        user_epoch: k.user_epoch,
        domains: match &k.scope {
            KeyScope::OrgWide => None,
            KeyScope::Domains(d) => Some(d.iter().map(|(n, a)| (intern.get(n), *a)).collect()),
        },
        expires_at: k.expires_at.unwrap_or(i64::MAX),
        revoked: k.revoked_at.is_some(),
    }
}

/// Builds the enforcement entry for an organisation's domain list.
pub(crate) fn org_entry(domains: &[crate::Domain], intern: &mut Interner) -> OrgEntry {
    let mut org = OrgEntry::default();
    for d in domains {
        let name = intern.get(&d.name);
        if let Some(id) = d.id {
            org.domain_ids.insert(id, Arc::clone(&name));
        }
        org.domains.insert(name, d.id);
    }
    org
}
