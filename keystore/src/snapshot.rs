//! One immutable version of everything enforcement needs, and the decision
//! itself.
//!
//! A [`Snapshot`] is what readers load from the `ArcSwap`: they never lock,
//! and the writer builds the next version by copying only the shards it
//! changes (see [`crate::shardmap`]).

use std::sync::Arc;

use hashbrown::HashMap;

use crate::dense::DenseVec;
use crate::digest_map::DigestMap;
use crate::model::{
    Access, KeyLifecycle, KeyRecord, KeyScope, RateLimit, Role, Status, UserRecord,
};
use crate::secret::Hashed;
use crate::shardmap::{MixState, ShardMap};

/// An organisation as enforcement sees it.
#[derive(Clone, Debug, Default)]
pub struct OrgEntry {
    /// Unique, never reused: the version that created the organisation.
    pub uid: u64,
    /// The organisation id.
    pub name: Arc<str>,
    /// Canonical domain names (interned), each mapped to its optional numeric id.
    pub domains: HashMap<Arc<str>, Option<u64>>,
    /// Numeric id -> canonical name, for `/domains/12345`.
    pub domain_ids: HashMap<u64, Arc<str>>,
    /// The interned names of [`Self::domains`] by identity, sorted: what a
    /// check consults to confirm that a domain the key names is still the
    /// organisation's, without hashing the name. (Probing the name-keyed map
    /// cost ~100 ns of a 1M-key check: measured, see `snapshot::Principal::authorize`.)
    members: Box<[usize]>,
    /// The rate limit of the organisation's keys that have none of their own.
    pub rate_limit: Option<RateLimit>,
    /// Servers: canonical name (interned) -> numeric id.
    pub servers: HashMap<Arc<str>, u64>,
    /// Numeric id -> server name, for `/servers/12345`.
    pub server_ids: HashMap<u64, Arc<str>>,
}

impl OrgEntry {
    /// The canonical (interned) name of a domain of this organisation.
    #[inline]
    pub fn resolve(&self, target: DomainRef<'_>) -> Option<&Arc<str>> {
        match target {
            DomainRef::Name(n) => self.domains.get_key_value(n).map(|(k, _)| k),
            DomainRef::Id(id) => self.domain_ids.get(&id),
        }
    }

    /// Whether an interned name is one of this organisation's domains, by
    /// identity. A name from another interner is never a member: the check
    /// fails closed.
    #[inline]
    pub fn has(&self, name: &Arc<str>) -> bool {
        self.index_of(name).is_some()
    }

    /// Where an interned name sits among the members, by identity.
    #[inline]
    fn index_of(&self, name: &Arc<str>) -> Option<usize> {
        self.members.binary_search(&identity(name)).ok()
    }

    /// [`Self::has`], trying the position `hint` first (see [`Hint`]).
    #[inline]
    fn has_at(&self, name: &Arc<str>, hint: u8) -> bool {
        self.members.get(usize::from(hint)) == Some(&identity(name)) || self.has(name)
    }

    /// Where an interned name sits among the members, as a [`Hint`].
    fn position(&self, name: &Arc<str>) -> u8 {
        hint_of(self.index_of(name))
    }

    /// The numeric id of a server of this organisation, by name.
    #[inline]
    pub fn server_id(&self, name: &str) -> Option<u64> {
        self.servers.get(name).copied()
    }

    /// Replaces the server list (the domains, ids and rate limit stay).
    pub(crate) fn set_servers(&mut self, servers: &[crate::Server], intern: &mut Interner) {
        self.servers.clear();
        self.server_ids.clear();
        for s in servers {
            self.put_server(s, intern);
        }
    }

    /// Adds a server or changes its id.
    pub(crate) fn put_server(&mut self, s: &crate::Server, intern: &mut Interner) {
        let name = intern.get(&s.name);
        if let Some(old) = self.servers.insert(Arc::clone(&name), s.id) {
            self.server_ids.remove(&old);
        }
        self.server_ids.insert(s.id, name);
    }

    /// Removes a server.
    pub(crate) fn remove_server(&mut self, name: &str) {
        if let Some(id) = self.servers.remove(name) {
            self.server_ids.remove(&id);
        }
    }
}

/// Where a one-domain key's domain sat, when its entry was built, among its
/// organisation's members and in its creator's access: the check reads that
/// position first and confirms it by identity, instead of binary-searching
/// (interleaved A/B of the whole 1M-key check: new/old 0.952-0.986). A hint
/// made stale by a later change of the user or the organisation just misses
/// and the search runs; it never decides anything by itself.
#[derive(Clone, Copy, Debug)]
struct Hint {
    user: u8,
    org: u8,
}

impl Hint {
    const NONE: Hint = Hint {
        user: u8::MAX,
        org: u8::MAX,
    };
}

/// A position as a hint (`u8::MAX`, which no list that short reaches, for none).
fn hint_of(position: Option<usize>) -> u8 {
    position
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(u8::MAX)
}

/// An interned name's identity: the address of its one allocation.
#[inline]
fn identity(name: &Arc<str>) -> usize {
    Arc::as_ptr(name).cast::<u8>() as usize
}

/// Compares two interned names by identity. Every name in a snapshot
/// lineage comes from the writer's one [`Interner`], so equal names are the
/// same allocation and this is exact; a name built elsewhere never matches,
/// which refuses rather than grants. (The byte comparison this replaced,
/// taken when two different names had the same length, cost ~90 ns of a
/// 1M-key check in mispredicted `memcmp` calls.)
#[inline]
fn same_name(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b)
}

/// Whether two strings are equal, for domain names: those of 8 to 32 bytes
/// (nearly all) are compared as four overlapping 8-byte words, inline and
/// without a branch on the length, others with `==`. (The `memcmp` call
/// `==` makes, with its branches on the length, was ~4 % of a 1M-key check.)
#[inline]
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if !(8..=32).contains(&n) {
        return a == b;
    }
    // Windows at 0, s, n-8-s and n-8 with s = ceil((n-8)/3): consecutive
    // ones start at most 8 apart when n <= 32, so together they cover every
    // byte.
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let last = n - 8;
    let step = last.div_ceil(3);
    let diff = (word(a, 0) ^ word(b, 0))
        | (word(a, step) ^ word(b, step))
        | (word(a, last - step) ^ word(b, last - step))
        | (word(a, last) ^ word(b, last));
    diff == 0
}

/// A user as enforcement sees it.
#[derive(Clone, Debug)]
pub struct UserEntry {
    /// Unique per incarnation: the version that created the user. A user
    /// deleted and created again gets a new uid, so old keys stay dead.
    pub uid: u64,
    /// The organisation's slot in [`Snapshot::orgs`].
    pub org_slot: u32,
    /// Organisation id, for identity headers.
    pub org: Arc<str>,
    /// User id, for identity headers.
    pub id: Arc<str>,
    /// Owner, admin or member, now.
    pub role: Role,
    /// Active or deactivated, now.
    pub status: Status,
    /// Member access, now, sorted by name (ignored for owners and admins).
    pub access: Box<[(Arc<str>, Access)]>,
    /// The same access by name identity, sorted: what a check searches
    /// (a binary search without data-dependent branches, instead of a scan
    /// whose exit the CPU mispredicts on every other key).
    access_ids: Box<[(usize, Access)]>,
    /// Member access to servers, now, sorted by name (ignored for owners
    /// and admins, who have every server).
    pub servers: Box<[(Arc<str>, Access)]>,
}

impl UserEntry {
    /// The user's own level on an (interned) domain of their organisation, now.
    #[inline]
    pub fn level_on(&self, domain: &Arc<str>) -> Option<Access> {
        if self.role.is_org_admin() {
            Some(Access::ReadWrite)
        } else {
            Some(self.access_ids[self.index_of(domain)?].1)
        }
    }

    /// Where an interned name sits in the access, by identity.
    #[inline]
    fn index_of(&self, domain: &Arc<str>) -> Option<usize> {
        let id = identity(domain);
        self.access_ids.binary_search_by_key(&id, |(d, _)| *d).ok()
    }

    /// [`Self::level_on`], trying the position `hint` first (see [`Hint`]).
    #[inline]
    fn level_at(&self, domain: &Arc<str>, hint: u8) -> Option<Access> {
        if self.role.is_org_admin() {
            return Some(Access::ReadWrite);
        }
        match self.access_ids.get(usize::from(hint)) {
            Some(&(d, a)) if d == identity(domain) => Some(a),
            _ => self.level_on(domain),
        }
    }

    /// Where an interned name sits in the access, as a [`Hint`].
    fn position(&self, domain: &Arc<str>) -> u8 {
        hint_of(self.index_of(domain))
    }

    /// The user's own level on a server named `server`, assuming it is a
    /// server of their organisation (the caller checks that): read_write
    /// for owners and admins, the assigned level for members.
    #[inline]
    pub fn server_level(&self, server: &str) -> Option<Access> {
        if self.role.is_org_admin() {
            return Some(Access::ReadWrite);
        }
        let i = self
            .servers
            .binary_search_by(|(s, _)| (**s).cmp(server))
            .ok()?;
        Some(self.servers[i].1)
    }
}

/// Which user a name refers to: the key into [`Snapshot::user_ids`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserKey {
    /// Organisation id.
    pub org: Arc<str>,
    /// User id.
    pub user: Arc<str>,
}

/// Per-key state beside the key table, by public id: usage counted in
/// memory for every key, and, for the few keys that have one, a policy.
///
/// Not in [`KeyEntry`]: an entry and its digest prefix fill one cache line
/// exactly. The map is copy-on-write like the rest of the snapshot; the
/// usage cell is shared by every version, so counts survive changes.
#[derive(Clone, Debug)]
pub struct KeySide {
    /// Counted on the request path (atomics: no lock), drained by the
    /// usage writer.
    pub usage: Arc<UsageCell>,
    /// Rate limit, shadow scope, rotation; `None` for most keys.
    pub policy: Option<Arc<Policy>>,
}

/// A key's usage since the last batch was written. Relaxed atomics: the
/// counts are statistics, and the writer's swap takes each request once.
#[derive(Debug, Default)]
pub struct UsageCell {
    /// Unix seconds of the latest admitted request (0: none since the last batch).
    pub last_used: std::sync::atomic::AtomicU32,
    /// The key's organisation slot, for the batch's rows.
    pub org_slot: u32,
    /// Admitted requests since the last batch.
    pub requests: std::sync::atomic::AtomicU64,
    /// Of those, made after the key was rotated.
    pub grace_uses: std::sync::atomic::AtomicU64,
}

impl UsageCell {
    /// Counts one admitted request at `now` (Unix seconds). The last-used
    /// second is written only when it changes, so a busy key's cache line is
    /// mostly read, and the count is one atomic add.
    #[inline]
    pub fn record(&self, now: i64, rotated: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now.clamp(0, i64::from(u32::MAX)) as u32;
        if self.last_used.load(Relaxed) < now {
            self.last_used.fetch_max(now, Relaxed);
        }
        self.requests.fetch_add(1, Relaxed);
        if rotated {
            self.grace_uses.fetch_add(1, Relaxed);
        }
    }

    /// Takes what was counted since the last call: (last used, requests,
    /// grace uses). A request counted while this runs lands in this batch
    /// or the next, never in both.
    pub fn take(&self) -> (u32, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        // Most keys were not used since the last batch: read, do not write,
        // so a batch over a million keys dirties only the lines it must.
        if self.requests.load(Relaxed) == 0 {
            return (self.last_used.load(Relaxed), 0, 0);
        }
        let requests = self.requests.swap(0, Relaxed);
        let grace = self.grace_uses.swap(0, Relaxed);
        (self.last_used.load(Relaxed), requests, grace)
    }

    /// What was counted and not taken yet, without taking it.
    pub fn pending(&self) -> (u32, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.last_used.load(Relaxed),
            self.requests.load(Relaxed),
            self.grace_uses.load(Relaxed),
        )
    }
}

/// What a key carries beyond its scope, as enforcement sees it.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// The key's own rate limit.
    pub rate_limit: Option<RateLimit>,
    /// The shadow scope as a key entry (the real key with the shadow's
    /// domains), so the shadow is decided by the same code as the key.
    pub shadow: Option<KeyEntry>,
    /// The key was rotated: its uses are grace uses.
    pub rotated: bool,
    /// The server the key is bound to (see [`KeyEntry::server_bound`]).
    pub server: Option<ServerBinding>,
}

/// A key's server binding as enforcement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerBinding {
    /// The server's canonical name (interned).
    pub name: Arc<str>,
    /// The level the key grants on it (its creator's current level caps it).
    pub access: Access,
}

/// A key's declared domains. Most keys name one domain: that case is held
/// inline, so a check reads no memory beyond the table entry (the name is
/// interned and compared by pointer).
#[derive(Clone, Debug)]
pub enum KeyDomains {
    /// Org-wide: every domain of the organisation.
    All,
    /// One domain at one level.
    One(Arc<str>, Access),
    /// Several domains, sorted by name.
    Many(Arc<[(Arc<str>, Access)]>),
}

impl KeyDomains {
    /// The names the key declares, in order (sorted for several; none for
    /// an org-wide key).
    fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        let (one, many) = match self {
            KeyDomains::All => (None, &[][..]),
            KeyDomains::One(d, _) => (Some(d), &[][..]),
            KeyDomains::Many(list) => (None, &list[..]),
        };
        one.into_iter().chain(many.iter().map(|(d, _)| d))
    }
}

/// A key as enforcement sees it: small, because there may be millions.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// Public id, as a number (see [`crate::secret::format_id`]).
    pub id: u64,
    /// The creating user's slot in [`Snapshot::users`] (`u32::MAX`: a user
    /// that no longer exists).
    pub user_slot: u32,
    /// The organisation's slot in [`Snapshot::orgs`]: the creator's, which
    /// never changes for a key. Kept here so a check fetches the creator
    /// and the organisation at the same time instead of one after the other.
    pub org_slot: u32,
    /// The declared domains (interned) and levels.
    pub domains: KeyDomains,
    /// Unix seconds (u32 keeps an entry and its digest in one cache line);
    /// `u32::MAX` when the key never expires (or expires after 2106).
    pub expires_at: u32,
    /// Revoked keys stay in the table so metrics can tell "revoked" from "unknown".
    pub revoked: bool,
    /// For a one-domain key: where to look first (fits in the padding).
    hint: Hint,
    /// The key is bound to a server (a server token); the binding itself
    /// is in the key's [`Policy`], which [`Snapshot::authenticate`] fetches
    /// only for such keys. In the padding, so the entry does not grow; a
    /// bound key whose policy is missing is never org-wide and sees no server.
    pub server_bound: bool,
}

/// What an empty table slot holds: a revoked, expired key with no domains,
/// so that even a misread empty slot grants nothing.
impl Default for KeyEntry {
    fn default() -> Self {
        KeyEntry {
            id: 0,
            user_slot: u32::MAX,
            org_slot: u32::MAX,
            domains: KeyDomains::Many(Arc::from([])),
            expires_at: 0,
            revoked: true,
            hint: Hint::NONE,
            server_bound: false,
        }
    }
}

impl KeyEntry {
    /// The public id as text.
    pub fn id_string(&self) -> String {
        crate::secret::format_id(self.id)
    }

    /// The declared level on an interned canonical domain name.
    #[inline]
    fn declared(&self, domain: &Arc<str>) -> Option<Access> {
        match &self.domains {
            KeyDomains::All => Some(Access::ReadWrite),
            KeyDomains::One(d, a) => same_name(d, domain).then_some(*a),
            KeyDomains::Many(list) => list
                .iter()
                .find(|(d, _)| same_name(d, domain))
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
    /// The key's bound server, at this level (server-level routes:
    /// `/server`, `/messages`, ...).
    Server(Access),
    /// `/servers/{id}`: an org-wide account key passes (as
    /// [`Target::Organisation`]); otherwise only a key bound to the server
    /// with this id, at this level.
    ServerById(u64, Access),
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
    /// creator is no longer an owner or admin, or the key is bound to a server).
    OrgWideRequired,
    /// A server-level route with a key bound to no server.
    ServerKeyRequired,
    /// The key is bound to a server, but it or its creator has no level on
    /// it now (the server was deleted, the creator unassigned from it).
    ServerNotVisible,
}

impl Refusal {
    /// Every refusal, in declaration order (so `r as usize` indexes it), for
    /// pre-registering metric label values.
    pub const ALL: [Refusal; 11] = [
        Refusal::MissingKey,
        Refusal::MalformedKey,
        Refusal::UnknownKey,
        Refusal::RevokedKey,
        Refusal::ExpiredKey,
        Refusal::CreatorInactive,
        Refusal::NotVisible,
        Refusal::ReadOnly,
        Refusal::OrgWideRequired,
        Refusal::ServerKeyRequired,
        Refusal::ServerNotVisible,
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
            Refusal::ServerKeyRequired => "server_key_required",
            Refusal::ServerNotVisible => "server_not_visible",
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
    /// Organisations by slot (the hot path: no hashing).
    pub orgs: DenseVec<Option<Arc<OrgEntry>>>,
    /// Organisation id -> slot (the admin path).
    pub org_ids: ShardMap<Arc<str>, u32>,
    /// Users by slot (the hot path: no hashing); deleted users leave their
    /// slot empty.
    pub users: DenseVec<Option<Arc<UserEntry>>>,
    /// (organisation, user id) -> slot (the admin path).
    pub user_ids: ShardMap<UserKey, u32>,
    /// User uid -> slot, for keys as the store records them.
    pub user_slots: ShardMap<u64, u32, MixState>,
    /// Keys by digest, revoked ones included.
    pub keys: DigestMap<KeyEntry>,
    /// Keys not revoked (expired ones included).
    pub live_keys: usize,
    /// Per-key usage and policy, by public id (see [`KeySide`]).
    pub sides: ShardMap<u64, KeySide, MixState>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("orgs", &self.org_ids.len())
            .field("users", &self.user_ids.len())
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
    /// The key's server binding (`None`: not bound, or, for a key marked
    /// bound, a binding that could not be found: it then sees no server).
    pub server: Option<&'s ServerBinding>,
}

impl Snapshot {
    /// An empty snapshot at version 0.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            changed_at_ms: 0,
            orgs: DenseVec::default(),
            org_ids: ShardMap::new(),
            users: DenseVec::default(),
            user_ids: ShardMap::new(),
            user_slots: ShardMap::new(),
            keys: DigestMap::new(),
            live_keys: 0,
            sides: ShardMap::new(),
        }
    }

    /// Finds the key for a digest and checks that it, and its creator, are
    /// live at `now` (Unix seconds).
    #[inline]
    pub fn authenticate(&self, key: &Hashed, now: i64) -> Result<Principal<'_>, Refusal> {
        let key = self.keys.get(key).ok_or(Refusal::UnknownKey)?;
        if key.revoked {
            return Err(Refusal::RevokedKey);
        }
        if i64::from(key.expires_at) <= now {
            return Err(Refusal::ExpiredKey);
        }
        // Independent loads: the creator and the organisation arrive together.
        let user = self.users.get(key.user_slot).and_then(Option::as_deref);
        let org = self.orgs.get(key.org_slot).and_then(Option::as_deref);
        let user = user
            .filter(|u| u.status == Status::Active && u.org_slot == key.org_slot)
            .ok_or(Refusal::CreatorInactive)?;
        let org = org.ok_or(Refusal::CreatorInactive)?;
        let server = if key.server_bound {
            self.sides
                .get(&key.id)
                .and_then(|s| s.policy.as_deref())
                .and_then(|p| p.server.as_ref())
        } else {
            None
        };
        Ok(Principal {
            key,
            user,
            org,
            server,
        })
    }

    /// The usage cell and policy of a key, by public id.
    #[inline]
    pub fn side(&self, id: u64) -> Option<&KeySide> {
        self.sides.get(&id)
    }

    /// An organisation by id.
    pub fn org(&self, org: &str) -> Option<&Arc<OrgEntry>> {
        self.orgs.get(*self.org_ids.get(org)?)?.as_ref()
    }

    /// A user by organisation and id.
    pub fn user(&self, org: &str, user: &str) -> Option<&Arc<UserEntry>> {
        let k = UserKey {
            org: Arc::from(org),
            user: Arc::from(user),
        };
        self.users.get(*self.user_ids.get(&k)?)?.as_ref()
    }

    /// Every user, now.
    pub fn all_users(&self) -> impl Iterator<Item = &Arc<UserEntry>> {
        self.users.iter().flatten()
    }
}

impl<'s> Principal<'s> {
    /// The same principal decided by its shadow scope instead of its own.
    pub fn shadowed(&self, shadow: &'s KeyEntry) -> Principal<'s> {
        Principal {
            key: shadow,
            user: self.user,
            org: self.org,
            server: self.server,
        }
    }

    /// The rate limit that applies: the key's own, else its organisation's
    /// default, else none.
    #[inline]
    pub fn rate_limit(&self, policy: Option<&Policy>) -> Option<RateLimit> {
        policy.and_then(|p| p.rate_limit).or(self.org.rate_limit)
    }

    /// Organisation-level endpoints need an org-wide key whose creator is
    /// still an owner or admin, and that is an account key: a server-bound
    /// key never is, whatever its domain scope.
    #[inline]
    pub fn is_org_wide(&self) -> bool {
        self.all_domains() && !self.key.server_bound
    }

    /// Whether the key's domain scope is every domain of the organisation
    /// (an org-wide key whose creator is still an owner or admin).
    #[inline]
    fn all_domains(&self) -> bool {
        matches!(self.key.domains, KeyDomains::All) && self.user.role.is_org_admin()
    }

    /// The bound server's name (`None`: not bound), for `X-Scopegate-Server`.
    #[inline]
    pub fn server(&self) -> Option<&'s str> {
        self.server.map(|b| &*b.name)
    }

    /// The key's effective level on its bound server: min(the key's
    /// `server_access`, its creator's level on the server now). `None` when
    /// not bound, or when the server is gone or the creator has no level on it.
    #[inline]
    pub fn server_level(&self) -> Option<Access> {
        let b = self.server?;
        self.org.servers.get(&*b.name)?;
        Some(b.access.min(self.user.server_level(&b.name)?))
    }

    /// [`Target::Server`]: the bound server at `need`.
    fn authorize_server(&self, need: Access) -> Result<(), Refusal> {
        if self.server.is_none() && !self.key.server_bound {
            return Err(Refusal::ServerKeyRequired);
        }
        match self.server_level() {
            None => Err(Refusal::ServerNotVisible),
            Some(have) if have >= need => Ok(()),
            Some(_) => Err(Refusal::ReadOnly),
        }
    }

    /// Effective level on an (interned) canonical domain of the organisation:
    /// min(key scope, creator's level now). `None` = not visible.
    #[inline]
    pub fn level_on(&self, domain: &Arc<str>) -> Option<Access> {
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
            Target::Server(need) => self.authorize_server(need),
            Target::ServerById(id, need) => {
                if self.is_org_wide() {
                    return Ok(());
                }
                match self.server {
                    Some(b) if self.org.server_id(&b.name) == Some(id) => {
                        self.authorize_server(need)
                    }
                    _ => Err(Refusal::OrgWideRequired),
                }
            }
            Target::Domain(d, need) => {
                let (name, declared, hint) = self.visible(d).ok_or(Refusal::NotVisible)?;
                match self.user.level_at(name, hint).map(|own| declared.min(own)) {
                    None => Err(Refusal::NotVisible),
                    Some(have) if have >= need => Ok(()),
                    Some(_) => Err(Refusal::ReadOnly),
                }
            }
        }
    }

    /// The interned name of a domain of the organisation that the key names,
    /// with the level the key declares on it, or `None` (not the
    /// organisation's, or not in the key's scope: the same answer). A key
    /// that names domains is matched on its own names first, so the common
    /// check compares one string and confirms membership by identity instead
    /// of hashing the name; only org-wide keys and numeric ids go through the
    /// organisation's maps.
    #[inline]
    fn visible(&self, d: DomainRef<'_>) -> Option<(&'s Arc<str>, Access, u8)> {
        let (name, declared, hint) = match (&self.key.domains, d) {
            (KeyDomains::One(own, a), DomainRef::Name(n)) => {
                (same_text(own, n).then_some(own)?, *a, self.key.hint)
            }
            (KeyDomains::Many(list), DomainRef::Name(n)) => {
                let i = list.binary_search_by(|(own, _)| (**own).cmp(n)).ok()?;
                (&list[i].0, list[i].1, Hint::NONE)
            }
            _ => {
                let name = self.org.resolve(d)?;
                return Some((name, self.key.declared(name)?, Hint::NONE.user));
            }
        };
        self.org
            .has_at(name, hint.org)
            .then_some((name, declared, hint.user))
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
    /// key of an owner or admin (server-bound or not: the header is about
    /// domains), else `domain=level` pairs, sorted, comma-separated.
    pub fn scope_header(&self) -> String {
        let mut out = String::new();
        self.write_scope_header(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    /// [`Self::scope_header`], written into `out` (the gateway writes it
    /// straight into the buffer its header values share).
    pub fn write_scope_header(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        if self.all_domains() {
            return out.write_char('*');
        }
        let mut first = true;
        let mut push = |d: &str, a: Access| {
            let sep = if std::mem::take(&mut first) { "" } else { "," };
            write!(out, "{sep}{d}={}", a.as_str())
        };
        if matches!(self.key.domains, KeyDomains::All) {
            // An org-wide key whose creator was demoted to member: what the member has.
            for (d, a) in self.user.access.iter() {
                if self.org.has(d) {
                    push(d, *a)?;
                }
            }
        }
        for d in self.key.domains.names() {
            if !self.org.has(d) {
                continue;
            }
            if let Some(a) = self.level_on(d) {
                push(d, a)?;
            }
        }
        Ok(())
    }
}

/// Interns strings while building snapshot entries, so a million keys of a few
/// thousand users share their domain names, and domain comparisons on the hot
/// path are mostly pointer comparisons. The writer keeps one for its lifetime.
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
pub(crate) fn user_entry(u: &UserRecord, org_slot: u32, intern: &mut Interner) -> UserEntry {
    let access: Vec<(Arc<str>, Access)> =
        u.access.iter().map(|(d, a)| (intern.get(d), *a)).collect();
    let mut access_ids: Vec<(usize, Access)> =
        access.iter().map(|(d, a)| (identity(d), *a)).collect();
    access_ids.sort_unstable_by_key(|(d, _)| *d);
    // BTreeMap iteration is sorted, which `server_level` relies on.
    let servers: Vec<(Arc<str>, Access)> =
        u.servers.iter().map(|(s, a)| (intern.get(s), *a)).collect();
    UserEntry {
        uid: u.uid,
        org_slot,
        org: intern.get(&u.org),
        id: intern.get(&u.id),
        role: u.role,
        status: u.status,
        access: access.into_boxed_slice(),
        access_ids: access_ids.into_boxed_slice(),
        servers: servers.into_boxed_slice(),
    }
}

/// Builds the enforcement entry for a key record; `None` when its id is not
/// one scopegate issued.
/// `creator` is the user in `user_slot` and `org` their organisation, as the
/// snapshot has them now (`None` for a user that no longer exists).
pub(crate) fn key_entry(
    k: &KeyRecord,
    user_slot: u32,
    (creator, org): (Option<&UserEntry>, Option<&OrgEntry>),
    intern: &mut Interner,
) -> Option<KeyEntry> {
    let mut e = KeyEntry {
        id: crate::secret::parse_id(&k.id)?,
        user_slot,
        org_slot: creator.map_or(u32::MAX, |u| u.org_slot),
        domains: match &k.scope {
            KeyScope::OrgWide => KeyDomains::All,
            KeyScope::Domains(d) => key_domains(d, intern),
        },
        expires_at: k
            .expires_at
            .map_or(u32::MAX, |e| e.clamp(0, i64::from(u32::MAX) - 1) as u32),
        revoked: k.revoked_at.is_some(),
        hint: Hint::NONE,
        server_bound: k.server.is_some(),
    };
    if let (KeyDomains::One(d, _), Some(user), Some(org)) = (&e.domains, creator, org) {
        e.hint = Hint {
            user: user.position(d),
            org: org.position(d),
        };
    }
    Some(e)
}

/// Interned key domains for a domain map.
fn key_domains(
    d: &std::collections::BTreeMap<String, Access>,
    intern: &mut Interner,
) -> KeyDomains {
    if d.len() == 1 {
        let (n, a) = d.iter().next().expect("one entry");
        return KeyDomains::One(intern.get(n), *a);
    }
    // BTreeMap iteration is sorted, which scope_header relies on.
    KeyDomains::Many(d.iter().map(|(n, a)| (intern.get(n), *a)).collect())
}

/// A key's server binding, interned.
pub(crate) fn binding(s: &crate::KeyServer, intern: &mut Interner) -> ServerBinding {
    ServerBinding {
        name: intern.get(&s.name),
        access: s.access,
    }
}

/// Builds the policy of a key with a lifecycle or a server binding (`None`
/// when it has nothing enforcement needs).
pub(crate) fn policy(
    l: &KeyLifecycle,
    server: Option<ServerBinding>,
    entry: &KeyEntry,
    intern: &mut Interner,
) -> Option<Arc<Policy>> {
    if l.rate_limit.is_none() && l.shadow.is_none() && l.rotated_at.is_none() && server.is_none() {
        return None;
    }
    let shadow = l.shadow.as_ref().map(|d| KeyEntry {
        domains: key_domains(d, intern),
        hint: Hint::NONE,
        ..entry.clone()
    });
    Some(Arc::new(Policy {
        rate_limit: l.rate_limit,
        shadow,
        rotated: l.rotated_at.is_some(),
        server,
    }))
}

/// Builds the enforcement entry for an organisation.
pub(crate) fn org_entry(
    uid: u64,
    name: &str,
    domains: &[crate::Domain],
    intern: &mut Interner,
) -> OrgEntry {
    let mut org = OrgEntry {
        uid,
        name: intern.get(name),
        ..OrgEntry::default()
    };
    for d in domains {
        let name = intern.get(&d.name);
        if let Some(id) = d.id {
            org.domain_ids.insert(id, Arc::clone(&name));
        }
        org.domains.insert(name, d.id);
    }
    let mut members: Vec<usize> = org.domains.keys().map(identity).collect();
    members.sort_unstable();
    org.members = members.into_boxed_slice();
    org
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str) -> crate::Domain {
        crate::Domain {
            name: name.to_string(),
            id: None,
        }
    }

    /// Organisation `acme` with five domains, and their names.
    fn acme(intern: &mut Interner) -> (OrgEntry, [&'static str; 5]) {
        let names = [
            "a.example",
            "b.example",
            "c.example",
            "d.example",
            "e.example",
        ];
        (org_entry(1, "acme", &names.map(domain), intern), names)
    }

    #[test]
    fn same_text_sees_every_byte_of_every_length() {
        for n in 0..=40usize {
            let a: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            assert!(same_text(&a, &a.clone()), "{n}");
            for i in 0..n {
                let mut b = a.clone().into_bytes();
                b[i] = b'.';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_text(&a, &b), "length {n}, byte {i}");
            }
            let longer = format!("{a}x");
            assert!(!same_text(&a, &longer) && !same_text(&longer, &a), "{n}");
        }
    }

    #[test]
    fn a_stale_hint_is_only_a_hint() {
        let mut intern = Interner::default();
        let (org, _) = acme(&mut intern);
        let member = |access: &[(&str, Access)], intern: &mut Interner| {
            let u = UserRecord {
                org: "acme".into(),
                id: "m@acme".into(),
                role: Role::Member,
                status: Status::Active,
                access: access.iter().map(|(d, a)| (d.to_string(), *a)).collect(),
                servers: Default::default(),
                uid: 7,
            };
            user_entry(&u, 0, intern)
        };
        let then = member(
            &[
                ("c.example", Access::ReadWrite),
                ("d.example", Access::Read),
            ],
            &mut intern,
        );
        let record = KeyRecord {
            id: crate::secret::format_id(1),
            digest: crate::Digest([1; 32]),
            locator: crate::Locator(1),
            org: "acme".into(),
            user: "m@acme".into(),
            user_uid: 7,
            scope: KeyScope::Domains([("c.example".to_string(), Access::ReadWrite)].into()),
            expires_at: None,
            name: None,
            created_at: 0,
            revoked_at: None,
            lifecycle: Default::default(),
            server: None,
        };
        let key = key_entry(&record, 0, (Some(&then), Some(&org)), &mut intern).unwrap();
        assert_ne!(key.hint.user, u8::MAX);
        assert_ne!(key.hint.org, u8::MAX);
        let decide = |user: &UserEntry, org: &OrgEntry, need| {
            let p = Principal {
                key: &key,
                user,
                org,
                server: None,
            };
            p.authorize(Target::Domain(DomainRef::Name("c.example"), need))
        };
        assert_eq!(decide(&then, &org, Access::ReadWrite), Ok(()));
        // The user's access changes under the key: positions move, the hint
        // goes stale, the decision follows the user as they are now.
        let wider = member(
            &[
                ("a.example", Access::Read),
                ("b.example", Access::Read),
                ("c.example", Access::Read),
                ("e.example", Access::ReadWrite),
            ],
            &mut intern,
        );
        assert_eq!(decide(&wider, &org, Access::Read), Ok(()));
        assert_eq!(
            decide(&wider, &org, Access::ReadWrite),
            Err(Refusal::ReadOnly)
        );
        let without = member(
            &[
                ("a.example", Access::ReadWrite),
                ("d.example", Access::ReadWrite),
            ],
            &mut intern,
        );
        assert_eq!(
            decide(&without, &org, Access::Read),
            Err(Refusal::NotVisible)
        );
        // The organisation loses the domain: the old position names another
        // domain or nothing, and the key sees nothing.
        let smaller = org_entry(
            1,
            "acme",
            &["a.example", "b.example"].map(domain),
            &mut intern,
        );
        assert_eq!(
            decide(&then, &smaller, Access::Read),
            Err(Refusal::NotVisible)
        );
        // Every position a hint could hold, right or wrong, gives the
        // decision the searches give.
        for user_hint in 0..=u8::MAX {
            for org_hint in [0, 1, 2, 3, 4, 5, u8::MAX] {
                let mut k = key.clone();
                k.hint = Hint {
                    user: user_hint,
                    org: org_hint,
                };
                for (user, org) in [
                    (&then, &org),
                    (&wider, &org),
                    (&without, &org),
                    (&then, &smaller),
                ] {
                    for need in [Access::Read, Access::ReadWrite] {
                        let hinted = Principal {
                            key: &k,
                            user,
                            org,
                            server: None,
                        };
                        let unhinted = Principal {
                            key: &key,
                            user,
                            org,
                            server: None,
                        };
                        let mut plain = key.clone();
                        plain.hint = Hint::NONE;
                        let plain = Principal {
                            key: &plain,
                            user,
                            org,
                            server: None,
                        };
                        let t = Target::Domain(DomainRef::Name("c.example"), need);
                        assert_eq!(hinted.authorize(t), plain.authorize(t));
                        assert_eq!(unhinted.authorize(t), plain.authorize(t));
                    }
                }
            }
        }
    }

    #[test]
    fn membership_is_by_interned_identity_and_fails_closed() {
        let mut intern = Interner::default();
        let (org, names) = acme(&mut intern);
        for n in names {
            assert!(org.has(&intern.get(n)), "{n}");
            // The same text in another allocation is not the organisation's
            // name: refused, never granted.
            assert!(!org.has(&Arc::from(n)), "{n}");
        }
        assert!(!org.has(&intern.get("f.example")));
        assert!(!org_entry(2, "empty", &[], &mut intern).has(&intern.get("a.example")));
    }

    #[test]
    fn a_users_level_is_found_by_identity_whatever_the_order() {
        let mut intern = Interner::default();
        let access: std::collections::BTreeMap<String, Access> = (0..40)
            .map(|i| {
                let level = if i % 3 == 0 {
                    Access::Read
                } else {
                    Access::ReadWrite
                };
                (format!("d{i}.example"), level)
            })
            .collect();
        let record = UserRecord {
            uid: 7,
            org: "acme".into(),
            id: "dev@acme.example".into(),
            role: Role::Member,
            status: Status::Active,
            access: access.clone(),
            servers: Default::default(),
        };
        let user = user_entry(&record, 0, &mut intern);
        for (name, level) in &access {
            assert_eq!(user.level_on(&intern.get(name)), Some(*level), "{name}");
            assert_eq!(user.level_on(&Arc::from(name.as_str())), None, "{name}");
        }
        assert_eq!(user.level_on(&intern.get("other.example")), None);
    }

    #[test]
    fn a_bound_key_without_its_binding_fails_closed() {
        let mut intern = Interner::default();
        let (mut org, _) = acme(&mut intern);
        org.put_server(
            &crate::Server {
                name: "prod".into(),
                id: 11,
            },
            &mut intern,
        );
        let owner = UserRecord {
            org: "acme".into(),
            id: "o@acme".into(),
            role: Role::Owner,
            status: Status::Active,
            access: Default::default(),
            servers: Default::default(),
            uid: 1,
        };
        let owner = user_entry(&owner, 0, &mut intern);
        let record = KeyRecord {
            id: crate::secret::format_id(1),
            digest: crate::Digest([1; 32]),
            locator: crate::Locator(1),
            org: "acme".into(),
            user: "o@acme".into(),
            user_uid: 1,
            scope: KeyScope::OrgWide,
            expires_at: None,
            name: None,
            created_at: 0,
            revoked_at: None,
            lifecycle: Default::default(),
            server: Some(crate::KeyServer {
                name: "prod".into(),
                access: Access::ReadWrite,
            }),
        };
        let key = key_entry(&record, 0, (Some(&owner), Some(&org)), &mut intern).unwrap();
        assert!(key.server_bound);
        let b = binding(record.server.as_ref().unwrap(), &mut intern);
        let with = Principal {
            key: &key,
            user: &owner,
            org: &org,
            server: Some(&b),
        };
        assert_eq!(with.authorize(Target::Server(Access::ReadWrite)), Ok(()));
        assert_eq!(with.server_level(), Some(Access::ReadWrite));
        // The policy holding the binding is missing: no server, and still no
        // account key.
        let without = Principal {
            server: None,
            ..with
        };
        for t in [
            Target::Server(Access::Read),
            Target::ServerById(11, Access::Read),
            Target::Organisation,
        ] {
            assert!(without.authorize(t).is_err(), "{t:?}");
        }
        assert_eq!(
            without.authorize(Target::Server(Access::Read)),
            Err(Refusal::ServerNotVisible)
        );
        assert_eq!(without.server_level(), None);
    }

    #[test]
    fn refusal_discriminants_index_all() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
