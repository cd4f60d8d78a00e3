//! Model-based state-machine test: random sequences of admin operations run
//! against the real `KeyStore` and against a small reference model written
//! straight from `shared/DESIGN.md` ("Access model", "Decisions and
//! responses"). After every operation the two must agree on the result of
//! the operation (Ok/Err, `ErrorKind` and `code`, versions), on `status()`,
//! and on the decision for every key ever created against every target.
//!
//! The universe is deliberately small so that collisions happen often: two
//! organisations (plus one that never exists), five candidate domains per
//! organisation (one name shared by both, numeric ids that clash across
//! organisations), five user ids present in both organisations, a handful of
//! importable secrets.
//!
//! Where the design leaves the *order* of validation open (several rules
//! broken at once), the model checks in the implementation's order; the
//! set of rules is the design's.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::Config;

use scopegate_keystore::{
    Access, Applied, DomainInput, DomainRef, Error, ErrorKind, Identity, KeyStore, NewKey, Pepper,
    Refusal, Role, Status, Target, UserInput,
};

const ACTOR: &str = "model-check";
const START: i64 = 1_800_000_000;

const ORGS: [&str; 3] = ["org-a", "org-b", "org-missing"];
const USERS: [&str; 6] = [
    "u0@x.test",
    "u1@x.test",
    "u2@x.test",
    "u3@x.test",
    "u4@x.test",
    "not-an-email",
];
/// Per organisation: five candidate domains with their default numeric ids.
/// Index 5 is an invalid name.
const POOL: [[(&str, Option<u64>); 5]; 2] = [
    [
        ("a1.example", None),
        ("a2.example", None),
        ("ids-a.example", Some(7)),
        ("shared.example", None),
        ("late-a.example", Some(9)),
    ],
    [
        ("b1.example", None),
        ("b2.example", None),
        ("ids-b.example", Some(7)),
        ("shared.example", Some(11)),
        ("late-b.example", None),
    ],
];
const BAD_DOMAIN: &str = "bad_name.example";
const TOKENS: [&str; 3] = ["imp-token-0", "imp-token-1", "pm-legacy-token-2"];
const BAD_SECRETS: [&str; 3] = ["bad token", "sg_notachecksum", ""];
const EXPIRIES: [i64; 5] = [-5, 0, 1, 50, 300];

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum IdChoice {
    Default,
    NoId,
    Id(u64),
}

#[derive(Clone, Debug)]
struct DomSpec {
    /// 0..5 = pool entry of the organisation, 5 = invalid name.
    idx: usize,
    id: IdChoice,
}

#[derive(Clone, Debug)]
enum Import {
    Token(usize),
    /// The secret of the n-th key created so far (mod count).
    DupOf(usize),
    Bad(usize),
}

#[derive(Clone, Debug)]
struct KeySpec {
    user: usize,
    upper: bool,
    domains: Option<Vec<usize>>,
    org_wide: bool,
    access: Option<Access>,
    expires: Option<usize>,
    name: Option<bool>,
    import: Option<Import>,
}

#[derive(Clone, Debug)]
enum Op {
    PutOrg {
        org: usize,
        domains: Vec<DomSpec>,
        upper: bool,
    },
    PutUser {
        org: usize,
        user: usize,
        upper: bool,
        role: Role,
        access: Vec<(usize, Access)>,
        status: Option<Status>,
    },
    Deactivate {
        org: usize,
        user: usize,
        upper: bool,
    },
    Delete {
        org: usize,
        user: usize,
    },
    CreateKeys {
        org: usize,
        keys: Vec<KeySpec>,
    },
    Revoke {
        key: usize,
        bogus: bool,
    },
    Advance(i64),
}

fn org_idx() -> impl Strategy<Value = usize> {
    prop_oneof![20 => 0..2usize, 1 => Just(2usize)]
}

fn user_idx() -> impl Strategy<Value = usize> {
    prop_oneof![40 => 0..4usize, 8 => Just(4usize), 1 => Just(5usize)]
}

fn upper() -> impl Strategy<Value = bool> {
    prop::bool::weighted(0.1)
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::Read), Just(Access::ReadWrite)]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![1 => Just(Role::Owner), 1 => Just(Role::Admin), 3 => Just(Role::Member)]
}

fn dom_spec() -> impl Strategy<Value = DomSpec> {
    (
        prop_oneof![30 => 0..5usize, 1 => Just(5usize)],
        prop_oneof![
            12 => Just(IdChoice::Default),
            1 => Just(IdChoice::NoId),
            1 => Just(IdChoice::Id(7)),
            1 => Just(IdChoice::Id(8)),
        ],
    )
        .prop_map(|(idx, id)| DomSpec { idx, id })
}

fn key_spec() -> impl Strategy<Value = KeySpec> {
    (
        (user_idx(), upper()),
        prop_oneof![
            12 => Just(None),
            6 => prop::collection::vec(prop_oneof![40 => 0..5usize, 1 => Just(5usize)], 1..3).prop_map(Some),
            1 => Just(Some(Vec::new())),
        ],
        prop::bool::weighted(0.25),
        prop_oneof![3 => Just(None), 1 => Just(Some(Access::Read)), 1 => Just(Some(Access::ReadWrite))],
        prop_oneof![4 => Just(None), 1 => (0..EXPIRIES.len()).prop_map(Some)],
        prop_oneof![10 => Just(None), 10 => Just(Some(true)), 1 => Just(Some(false))],
        prop_oneof![
            10 => Just(None),
            2 => (0..TOKENS.len()).prop_map(|i| Some(Import::Token(i))),
            1 => any::<usize>().prop_map(|i| Some(Import::DupOf(i))),
            1 => (0..BAD_SECRETS.len()).prop_map(|i| Some(Import::Bad(i))),
        ],
    )
        .prop_map(
            |((user, upper), domains, org_wide, access, expires, name, import)| KeySpec {
                user,
                upper,
                // Mostly valid org-wide requests; sometimes with domains.
                domains: if org_wide && domains.as_ref().is_some_and(|d| d.len() < 2) {
                    None
                } else {
                    domains
                },
                org_wide,
                access,
                expires,
                name,
                import,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (org_idx(), prop::collection::vec(dom_spec(), 0..6), upper())
            .prop_map(|(org, domains, upper)| Op::PutOrg { org, domains, upper }),
        5 => (
            org_idx(),
            user_idx(),
            upper(),
            role(),
            prop::collection::vec((prop_oneof![40 => 0..5usize, 1 => Just(5usize)], access()), 0..4),
            prop::bool::weighted(0.85),
            prop_oneof![6 => Just(None), 3 => Just(Some(Status::Active)), 1 => Just(Some(Status::Deactivated))],
        )
            .prop_map(|(org, user, upper, role, access, clear_for_admin, status)| {
                let access = if role != Role::Member && clear_for_admin {
                    Vec::new()
                } else {
                    access
                };
                Op::PutUser { org, user, upper, role, access, status }
            }),
        1 => (org_idx(), user_idx(), upper())
            .prop_map(|(org, user, upper)| Op::Deactivate { org, user, upper }),
        1 => (org_idx(), user_idx()).prop_map(|(org, user)| Op::Delete { org, user }),
        14 => (
            org_idx(),
            prop_oneof![6 => prop::collection::vec(key_spec(), 1..2), 1 => prop::collection::vec(key_spec(), 2..4)],
        )
            .prop_map(|(org, keys)| Op::CreateKeys { org, keys }),
        1 => (any::<usize>(), prop::bool::weighted(0.1))
            .prop_map(|(key, bogus)| Op::Revoke { key, bogus }),
        2 => prop_oneof![1..20i64, 20..400i64].prop_map(Op::Advance),
    ]
}

/// An ASCII-uppercase spelling, with a trailing dot for domains.
fn shout(s: &str, dot: bool) -> String {
    let mut u = s.to_ascii_uppercase();
    if dot {
        u.push('.');
    }
    u
}

fn pool_name(org: usize, idx: usize) -> &'static str {
    if idx >= 5 {
        BAD_DOMAIN
    } else {
        POOL[org.min(1)][idx].0
    }
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

type MErr = (ErrorKind, &'static str);

#[derive(Clone, Debug)]
struct MUser {
    role: Role,
    active: bool,
    access: BTreeMap<String, Access>,
}

#[derive(Clone, Debug)]
struct MKey {
    id: String,
    secret: String,
    org: String,
    user: String,
    org_wide: bool,
    /// Declared scope; empty when org-wide.
    domains: BTreeMap<String, Access>,
    expires_at: Option<i64>,
    revoked: bool,
}

#[derive(Default, Debug)]
struct Model {
    /// Organisation -> its domains (canonical name, numeric id).
    orgs: BTreeMap<String, Vec<(String, Option<u64>)>>,
    users: BTreeMap<(String, String), MUser>,
    keys: Vec<MKey>,
    version: u64,
}

/// DESIGN: domain names are lowercased, one trailing dot dropped; names with
/// characters outside `[a-z0-9.-]` are refused (enough for this universe).
fn m_canon_domain(s: &str) -> Result<String, MErr> {
    let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        Ok(s)
    } else {
        Err((ErrorKind::Invalid, "invalid_domain"))
    }
}

/// DESIGN: a user id is an email; compared lowercased.
fn m_canon_user(s: &str) -> Result<String, MErr> {
    if s.contains('@') {
        Ok(s.to_lowercase())
    } else {
        Err((ErrorKind::Invalid, "invalid_user_id"))
    }
}

fn org_missing() -> MErr {
    (ErrorKind::NotFound, "org_not_found")
}

fn is_admin(role: Role) -> bool {
    role == Role::Owner || role == Role::Admin
}

/// What a model key needs, before the real store assigns id and secret.
#[derive(Debug)]
struct Planned {
    org: String,
    user: String,
    org_wide: bool,
    domains: BTreeMap<String, Access>,
    expires_at: Option<i64>,
    /// The imported secret, if any.
    secret: Option<String>,
}

impl Model {
    fn org_has(&self, org: &str, domain: &str) -> bool {
        self.orgs[org].iter().any(|(d, _)| d == domain)
    }

    /// The user's own level on a domain now (DESIGN: owners and admins have
    /// read_write on every domain of their organisation).
    fn user_level(&self, org: &str, u: &MUser, domain: &str) -> Option<Access> {
        if !self.org_has(org, domain) {
            return None;
        }
        if is_admin(u.role) {
            Some(Access::ReadWrite)
        } else {
            u.access.get(domain).copied()
        }
    }

    fn other_active_owner(&self, org: &str, leaving: &str) -> bool {
        self.users
            .iter()
            .any(|((o, id), u)| o == org && id != leaving && u.role == Role::Owner && u.active)
    }

    fn last_owner(&self, org: &str, leaving: &str) -> Result<(), MErr> {
        if self.other_active_owner(org, leaving) {
            Ok(())
        } else {
            Err((ErrorKind::Conflict, "last_owner"))
        }
    }

    fn revoke_keys_of(&mut self, org: &str, user: &str) {
        for k in &mut self.keys {
            if k.org == org && k.user == user {
                k.revoked = true;
            }
        }
    }

    fn commit(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn put_org(
        &mut self,
        org: &str,
        domains: &[(String, Option<u64>)],
    ) -> Result<(bool, u64), MErr> {
        let valid = !org.is_empty()
            && org
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err((ErrorKind::Invalid, "invalid_org_id"));
        }
        let mut list: Vec<(String, Option<u64>)> = Vec::new();
        for (name, id) in domains {
            let name = m_canon_domain(name)?;
            if list.iter().any(|(n, _)| *n == name) {
                return Err((ErrorKind::Invalid, "duplicate_domain"));
            }
            if id.is_some() && list.iter().any(|(_, i)| i == id) {
                return Err((ErrorKind::Invalid, "duplicate_domain_id"));
            }
            list.push((name, *id));
        }
        let created = !self.orgs.contains_key(org);
        self.orgs.insert(org.to_string(), list);
        Ok((created, self.commit()))
    }

    fn put_user(
        &mut self,
        org: &str,
        user: &str,
        role: Role,
        access: &BTreeMap<String, Access>,
        status: Option<Status>,
    ) -> Result<(bool, u64), MErr> {
        let user = m_canon_user(user)?;
        let mut acc = BTreeMap::new();
        for (d, a) in access {
            acc.insert(m_canon_domain(d)?, *a);
        }
        if is_admin(role) && !acc.is_empty() {
            return Err((ErrorKind::Rule, "access_for_admin"));
        }
        if !self.orgs.contains_key(org) {
            return Err(org_missing());
        }
        if acc.keys().any(|d| !self.org_has(org, d)) {
            return Err((ErrorKind::Rule, "domain_not_in_org"));
        }
        let key = (org.to_string(), user.clone());
        let existing = self.users.get(&key).cloned();
        let active = match status {
            Some(s) => s == Status::Active,
            None => existing.as_ref().is_none_or(|u| u.active),
        };
        if let Some(u) = &existing {
            // Demoting or deactivating an active owner needs another one.
            if u.role == Role::Owner && u.active && !(role == Role::Owner && active) {
                self.last_owner(org, &user)?;
            }
            if u.active && !active {
                self.revoke_keys_of(org, &user);
            }
        }
        self.users.insert(
            key,
            MUser {
                role,
                active,
                access: acc,
            },
        );
        Ok((existing.is_none(), self.commit()))
    }

    fn deactivate(&mut self, org: &str, user: &str) -> Result<u64, MErr> {
        let user = m_canon_user(user)?;
        if !self.orgs.contains_key(org) {
            return Err(org_missing());
        }
        let key = (org.to_string(), user.clone());
        let u = self
            .users
            .get(&key)
            .cloned()
            .ok_or((ErrorKind::NotFound, "user_not_found"))?;
        if !u.active {
            return Ok(self.version);
        }
        if u.role == Role::Owner {
            self.last_owner(org, &user)?;
        }
        self.users.get_mut(&key).unwrap().active = false;
        self.revoke_keys_of(org, &user);
        Ok(self.commit())
    }

    fn delete(&mut self, org: &str, user: &str) -> Result<u64, MErr> {
        let user = m_canon_user(user)?;
        if !self.orgs.contains_key(org) {
            return Err(org_missing());
        }
        let key = (org.to_string(), user.clone());
        let u = self
            .users
            .get(&key)
            .cloned()
            .ok_or((ErrorKind::NotFound, "user_not_found"))?;
        if u.role == Role::Owner && u.active {
            self.last_owner(org, &user)?;
        }
        self.users.remove(&key);
        self.revoke_keys_of(org, &user);
        Ok(self.commit())
    }

    /// The creation rules of DESIGN "Access model" for one key.
    fn plan_key(&self, org: &str, k: &NewKey, now: i64) -> Result<Planned, MErr> {
        if !self.orgs.contains_key(org) {
            return Err(org_missing());
        }
        let user = m_canon_user(&k.user)?;
        let u = self
            .users
            .get(&(org.to_string(), user.clone()))
            .ok_or((ErrorKind::NotFound, "user_not_found"))?;
        if !u.active {
            return Err((ErrorKind::Rule, "user_deactivated"));
        }
        if k.expires_at.is_some_and(|e| e <= now) {
            return Err((ErrorKind::Rule, "expiry_in_past"));
        }
        if k.name
            .as_ref()
            .is_some_and(|n| n.chars().any(char::is_control))
        {
            return Err((ErrorKind::Invalid, "invalid_name"));
        }
        let level = k.access.unwrap_or(Access::ReadWrite);
        let mut domains = BTreeMap::new();
        if k.org_wide {
            if k.domains.is_some() {
                return Err((ErrorKind::Rule, "org_wide_with_domains"));
            }
            if level != Access::ReadWrite {
                return Err((ErrorKind::Rule, "org_wide_read_only"));
            }
            if !is_admin(u.role) {
                return Err((ErrorKind::Rule, "org_wide_requires_admin"));
            }
        } else {
            match &k.domains {
                None => {
                    for (d, _) in &self.orgs[org] {
                        if self.user_level(org, u, d) == Some(Access::ReadWrite) {
                            domains.insert(d.clone(), level);
                        }
                    }
                    if domains.is_empty() {
                        return Err((ErrorKind::Rule, "no_writable_domains"));
                    }
                }
                Some(list) => {
                    if list.is_empty() {
                        return Err((ErrorKind::Rule, "no_domains"));
                    }
                    for d in list {
                        let d = m_canon_domain(d)?;
                        if !self.org_has(org, &d) {
                            return Err((ErrorKind::Rule, "domain_not_in_org"));
                        }
                        if self.user_level(org, u, &d) != Some(Access::ReadWrite) {
                            return Err((ErrorKind::Rule, "domain_not_writable"));
                        }
                        domains.insert(d, level);
                    }
                }
            }
        }
        if let Some(s) = &k.secret {
            let printable = !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
            // In this universe an `sg_` secret carries a valid checksum exactly
            // when the store issued it; `sg_notachecksum` does not.
            let issued = self.keys.iter().any(|m| &m.secret == s);
            if !printable || (s.starts_with("sg_") && !issued) {
                return Err((ErrorKind::Invalid, "invalid_secret"));
            }
        }
        Ok(Planned {
            org: org.to_string(),
            user,
            org_wide: k.org_wide,
            domains,
            expires_at: k.expires_at,
            secret: k.secret.clone(),
        })
    }

    fn create_keys(&self, org: &str, keys: &[NewKey], now: i64) -> Result<Vec<Planned>, MErr> {
        let mut out: Vec<Planned> = Vec::new();
        for k in keys {
            let p = self.plan_key(org, k, now)?;
            if let Some(s) = &p.secret {
                let taken = self.keys.iter().any(|m| &m.secret == s)
                    || out.iter().any(|q| q.secret.as_ref() == Some(s));
                if taken {
                    return Err((ErrorKind::Conflict, "key_exists"));
                }
            }
            out.push(p);
        }
        Ok(out)
    }

    /// DESIGN "Enforcement": the decision for one key and target.
    fn check(&self, key: &MKey, target: Target<'_>, now: i64) -> Result<Identity, Refusal> {
        if key.revoked {
            return Err(Refusal::RevokedKey);
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err(Refusal::ExpiredKey);
        }
        let u = self
            .users
            .get(&(key.org.clone(), key.user.clone()))
            .filter(|u| u.active)
            .ok_or(Refusal::CreatorInactive)?;
        let org = &self.orgs[&key.org];
        // effective level on d = min(key scope on d, creator's level now)
        let level = |d: &str| -> Option<Access> {
            let declared = if key.org_wide {
                Some(Access::ReadWrite)
            } else {
                key.domains.get(d).copied()
            }?;
            let own = self.user_level(&key.org, u, d)?;
            Some(declared.min(own))
        };
        match target {
            Target::AnyKey => {}
            Target::Organisation => {
                if !(key.org_wide && is_admin(u.role)) {
                    return Err(Refusal::OrgWideRequired);
                }
            }
            Target::Domain(d, need) => {
                let name = org
                    .iter()
                    .find(|(n, id)| match d {
                        DomainRef::Name(x) => n == x,
                        DomainRef::Id(x) => *id == Some(x),
                    })
                    .map(|(n, _)| n.as_str())
                    .ok_or(Refusal::NotVisible)?;
                match level(name) {
                    None => return Err(Refusal::NotVisible),
                    Some(have) if have < need => return Err(Refusal::ReadOnly),
                    Some(_) => {}
                }
            }
            // This universe has no servers: every key is an account key.
            Target::Server(_) => return Err(Refusal::ServerKeyRequired),
            Target::ServerById(..) => {
                if !(key.org_wide && is_admin(u.role)) {
                    return Err(Refusal::OrgWideRequired);
                }
            }
        }
        let scope = if key.org_wide && is_admin(u.role) {
            "*".to_string()
        } else {
            let mut names: Vec<&String> = org.iter().map(|(n, _)| n).collect();
            names.sort();
            names
                .into_iter()
                .filter_map(|n| level(n).map(|a| format!("{n}={}", a.as_str())))
                .collect::<Vec<_>>()
                .join(",")
        };
        Ok(Identity {
            key_id: key.id.clone(),
            org: key.org.clone(),
            user: key.user.clone(),
            role: u.role,
            scope,
        })
    }

    fn live_keys(&self) -> usize {
        self.keys.iter().filter(|k| !k.revoked).count()
    }
}

// ---------------------------------------------------------------------------
// Running both
// ---------------------------------------------------------------------------

fn pair<T, U>(real: &Result<Applied<T>, Error>, model: &Result<U, MErr>) -> Result<(), String>
where
    T: std::fmt::Debug,
    U: std::fmt::Debug,
{
    match (real, model) {
        (Ok(_), Ok(_)) => Ok(()),
        (Err(e), Err((kind, code))) if e.kind == *kind && e.code == *code => Ok(()),
        _ => Err(format!(
            "real {:?} vs model {:?}",
            real.as_ref()
                .map(|a| &a.value)
                .map_err(|e| (e.kind, e.code, e.message.as_str())),
            model
        )),
    }
}

struct Harness {
    ks: KeyStore,
    m: Model,
    now: i64,
    /// Every target a check is made against.
    targets: Vec<Target<'static>>,
}

impl Harness {
    fn new() -> Harness {
        let mut targets = vec![Target::AnyKey, Target::Organisation];
        let mut names: Vec<&'static str> = POOL.iter().flatten().map(|(n, _)| *n).collect();
        names.push("nowhere.example");
        names.sort();
        names.dedup();
        for need in [Access::Read, Access::ReadWrite] {
            for n in &names {
                targets.push(Target::Domain(DomainRef::Name(n), need));
            }
            for id in [7, 8, 9, 11, 12_345] {
                targets.push(Target::Domain(DomainRef::Id(id), need));
            }
            targets.push(Target::Server(need));
            targets.push(Target::ServerById(7, need));
        }
        Harness {
            ks: KeyStore::in_memory(Pepper::new(b"model-check-pepper-0123456789")),
            m: Model::default(),
            now: START,
            targets,
        }
    }

    fn run(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::PutOrg {
                org,
                domains,
                upper,
            } => {
                let org_name = ORGS[*org];
                let list: Vec<DomainInput> = domains
                    .iter()
                    .map(|d| {
                        let name = pool_name(*org, d.idx);
                        let default_id = if d.idx < 5 {
                            POOL[(*org).min(1)][d.idx].1
                        } else {
                            None
                        };
                        DomainInput {
                            name: if *upper {
                                shout(name, d.idx % 2 == 0)
                            } else {
                                name.to_string()
                            },
                            id: match d.id {
                                IdChoice::Default => default_id,
                                IdChoice::NoId => None,
                                IdChoice::Id(i) => Some(i),
                            },
                        }
                    })
                    .collect();
                let real = self.ks.put_org(ACTOR, org_name, &list);
                let model = self.m.put_org(
                    org_name,
                    &list
                        .iter()
                        .map(|d| (d.name.clone(), d.id))
                        .collect::<Vec<_>>(),
                );
                pair(&real, &model)?;
                if let (Ok(r), Ok((created, v))) = (&real, &model) {
                    if r.value != *created || r.version != *v {
                        return Err(format!("put_org: real {r:?} vs model {model:?}"));
                    }
                }
            }
            Op::PutUser {
                org,
                user,
                upper,
                role,
                access,
                status,
            } => {
                let org_name = ORGS[*org];
                let uid = if *upper {
                    shout(USERS[*user], false)
                } else {
                    USERS[*user].to_string()
                };
                let access: BTreeMap<String, Access> = access
                    .iter()
                    .map(|(i, a)| {
                        let n = pool_name(*org, *i);
                        (
                            if *upper {
                                shout(n, true)
                            } else {
                                n.to_string()
                            },
                            *a,
                        )
                    })
                    .collect();
                let real = self.ks.put_user(
                    ACTOR,
                    org_name,
                    &uid,
                    UserInput {
                        role: *role,
                        access: access.clone(),
                        status: *status,
                    },
                );
                let model = self.m.put_user(org_name, &uid, *role, &access, *status);
                pair(&real, &model)?;
                if let (Ok(r), Ok((created, v))) = (&real, &model) {
                    if r.value != *created || r.version != *v {
                        return Err(format!("put_user: real {r:?} vs model {model:?}"));
                    }
                }
            }
            Op::Deactivate { org, user, upper } => {
                let uid = if *upper {
                    shout(USERS[*user], false)
                } else {
                    USERS[*user].to_string()
                };
                let real = self.ks.deactivate_user(ACTOR, ORGS[*org], &uid);
                let model = self.m.deactivate(ORGS[*org], &uid);
                pair(&real, &model)?;
                if let (Ok(r), Ok(v)) = (&real, &model) {
                    if r.version != *v {
                        return Err(format!("deactivate: version {} vs model {v}", r.version));
                    }
                }
            }
            Op::Delete { org, user } => {
                let real = self.ks.delete_user(ACTOR, ORGS[*org], USERS[*user]);
                let model = self.m.delete(ORGS[*org], USERS[*user]);
                pair(&real, &model)?;
                if let (Ok(r), Ok(v)) = (&real, &model) {
                    if r.version != *v {
                        return Err(format!("delete: version {} vs model {v}", r.version));
                    }
                }
            }
            Op::CreateKeys { org, keys } => {
                let org_name = ORGS[*org];
                let new_keys: Vec<NewKey> = keys.iter().map(|k| self.new_key(*org, k)).collect();
                let real = self
                    .ks
                    .create_keys(ACTOR, org_name, new_keys.clone(), self.now);
                let model = self.m.create_keys(org_name, &new_keys, self.now);
                pair(&real, &model)?;
                if let (Ok(r), Ok(planned)) = (real, model) {
                    let v = self.m.commit();
                    if r.version != v || r.value.len() != planned.len() {
                        return Err(format!("create_keys: version {} vs {v}", r.version));
                    }
                    for (created, p) in r.value.into_iter().zip(planned) {
                        let meta = &created.meta;
                        if meta.org_wide != p.org_wide
                            || meta.domains != p.domains
                            || meta.user != p.user
                            || meta.org != p.org
                            || meta.state != "active"
                            || p.secret.as_ref().is_some_and(|s| *s != created.secret)
                        {
                            return Err(format!(
                                "created key differs: real {meta:?} vs model scope {:?} org_wide {} user {}",
                                p.domains, p.org_wide, p.user
                            ));
                        }
                        self.m.keys.push(MKey {
                            id: meta.id.clone(),
                            secret: created.secret.clone(),
                            org: p.org,
                            user: p.user,
                            org_wide: p.org_wide,
                            domains: p.domains,
                            expires_at: p.expires_at,
                            revoked: false,
                        });
                    }
                }
            }
            Op::Revoke { key, bogus } => {
                let id = if *bogus || self.m.keys.is_empty() {
                    "key_ffffffffffffffff".to_string()
                } else {
                    self.m.keys[key % self.m.keys.len()].id.clone()
                };
                let real = self.ks.revoke_key(ACTOR, &id, self.now);
                let model = match self.m.keys.iter().position(|k| k.id == id) {
                    None => Err((ErrorKind::NotFound, "key_not_found")),
                    Some(i) if self.m.keys[i].revoked => Ok(self.m.version),
                    Some(i) => {
                        self.m.keys[i].revoked = true;
                        Ok(self.m.commit())
                    }
                };
                pair(&real, &model)?;
                if let (Ok(r), Ok(v)) = (&real, &model) {
                    if r.version != *v || r.value.state != "revoked" {
                        return Err(format!("revoke: real {r:?} vs model version {v}"));
                    }
                }
            }
            Op::Advance(secs) => self.now += secs,
        }
        Ok(())
    }

    fn new_key(&self, org: usize, k: &KeySpec) -> NewKey {
        let uid = if k.upper {
            shout(USERS[k.user], false)
        } else {
            USERS[k.user].to_string()
        };
        NewKey {
            user: uid,
            domains: k.domains.as_ref().map(|list| {
                list.iter()
                    .map(|i| {
                        let n = pool_name(org, *i);
                        if k.upper {
                            shout(n, true)
                        } else {
                            n.to_string()
                        }
                    })
                    .collect()
            }),
            org_wide: k.org_wide,
            access: k.access,
            expires_at: k.expires.map(|i| self.now + EXPIRIES[i]),
            name: k.name.map(|ok| {
                if ok {
                    "ci key".to_string()
                } else {
                    "bad\nname".to_string()
                }
            }),
            secret: k.import.as_ref().map(|imp| match imp {
                Import::Token(i) => TOKENS[*i].to_string(),
                Import::Bad(i) => BAD_SECRETS[*i].to_string(),
                Import::DupOf(i) => {
                    if self.m.keys.is_empty() {
                        TOKENS[0].to_string()
                    } else {
                        self.m.keys[i % self.m.keys.len()].secret.clone()
                    }
                }
            }),
            ..NewKey::default()
        }
    }

    /// Status and every key against every target.
    fn verify(&self) -> Result<(), String> {
        let s = self.ks.status();
        let expect = (
            self.m.version,
            self.m.orgs.len(),
            self.m.users.len(),
            self.m.live_keys(),
        );
        if (s.version, s.orgs, s.users, s.keys) != expect {
            return Err(format!(
                "status {s:?} vs model (version, orgs, users, keys) {expect:?}"
            ));
        }
        for k in &self.m.keys {
            for t in &self.targets {
                let real = self.ks.check(Some(&k.secret), *t, self.now);
                let model = self.m.check(k, *t, self.now);
                if real.outcome != model {
                    return Err(format!(
                        "check of {} ({}/{}, org_wide {}, scope {:?}) on {t:?} at {}: real {:?} vs model {model:?}",
                        k.id, k.org, k.user, k.org_wide, k.domains, self.now, real.outcome
                    ));
                }
                if real.version != s.version {
                    return Err("decision version differs from status".into());
                }
            }
        }
        Ok(())
    }

    /// At the end: the admin view agrees too.
    fn verify_metadata(&self) -> Result<(), String> {
        for k in &self.m.keys {
            let meta = self
                .ks
                .get_key(&k.id, self.now)
                .map_err(|e| e.to_string())?;
            let state = if k.revoked {
                "revoked"
            } else if k.expires_at.is_some_and(|e| e <= self.now) {
                "expired"
            } else {
                "active"
            };
            if meta.state != state || meta.domains != k.domains || meta.org_wide != k.org_wide {
                return Err(format!("metadata {meta:?} vs model {k:?}"));
            }
        }
        for org in self.m.orgs.keys() {
            let n = self
                .ks
                .list_keys(org, None, None, self.now)
                .map_err(|e| e.to_string())?
                .len();
            let m = self.m.keys.iter().filter(|k| &k.org == org).count();
            if n != m {
                return Err(format!("list_keys({org}): {n} vs model {m}"));
            }
        }
        Ok(())
    }
}

/// Both organisations with four domains, an owner, an admin and two members
/// each (user 4 does not exist yet), so most random operations do something.
fn prelude() -> Vec<Op> {
    let mut ops = Vec::new();
    for org in 0..2 {
        ops.push(Op::PutOrg {
            org,
            domains: (0..4)
                .map(|idx| DomSpec {
                    idx,
                    id: IdChoice::Default,
                })
                .collect(),
            upper: false,
        });
        let rw = Access::ReadWrite;
        let users = [
            (Role::Owner, vec![]),
            (Role::Admin, vec![]),
            (Role::Member, vec![(0, rw), (1, rw), (2, Access::Read)]),
            (Role::Member, vec![(3, rw), (0, Access::Read)]),
        ];
        for (user, (role, access)) in users.into_iter().enumerate() {
            ops.push(Op::PutUser {
                org,
                user,
                upper: false,
                role,
                access,
                status: None,
            });
        }
    }
    ops
}

fn run_sequence(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    h.verify().map_err(TestCaseError::fail)?;
    for op in prelude() {
        h.run(&op)
            .map_err(|e| TestCaseError::fail(format!("prelude {op:?}: {e}")))?;
    }
    for (i, op) in ops.iter().enumerate() {
        h.run(op)
            .map_err(|e| TestCaseError::fail(format!("op {i} {op:?}: {e}")))?;
        h.verify()
            .map_err(|e| TestCaseError::fail(format!("after op {i} {op:?}: {e}")))?;
    }
    h.verify_metadata().map_err(TestCaseError::fail)?;
    // Malformed and missing keys never reach the model.
    let s = Some("sg_0000000000000000000000000000000000000");
    for t in &h.targets {
        prop_assert_eq!(
            h.ks.check(None, *t, h.now).outcome,
            Err(Refusal::MissingKey)
        );
        prop_assert_eq!(h.ks.check(s, *t, h.now).outcome, Err(Refusal::MalformedKey));
        prop_assert_eq!(
            h.ks.check(Some("never-imported"), *t, h.now).outcome,
            Err(Refusal::UnknownKey)
        );
    }
    Ok(())
}

fn cases() -> u32 {
    // About 15 ms per case in a debug build.
    ["MODEL_CHECK_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        max_shrink_iters: 2_000,
        ..Config::default()
    })]

    #[test]
    fn keystore_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        run_sequence(&ops)?;
    }
}

/// A fixed sequence through the trickiest paths, so a regression shows up
/// even if the random search misses it.
#[test]
fn scripted_sequence_agrees_with_the_model() {
    use Op::*;
    let member = |org, user, access: Vec<(usize, Access)>| PutUser {
        org,
        user,
        upper: false,
        role: Role::Member,
        access,
        status: None,
    };
    let key = |org, user, domains: Option<Vec<usize>>, org_wide| CreateKeys {
        org,
        keys: vec![KeySpec {
            user,
            upper: false,
            domains,
            org_wide,
            access: None,
            expires: None,
            name: None,
            import: None,
        }],
    };
    let ops = vec![
        member(0, 1, vec![(0, Access::ReadWrite), (2, Access::Read)]),
        member(1, 1, vec![(2, Access::ReadWrite)]),
        key(0, 1, None, false),
        key(1, 1, None, false),
        key(0, 0, None, true),
        PutUser {
            org: 0,
            user: 2,
            upper: true,
            role: Role::Admin,
            access: vec![],
            status: None,
        },
        key(0, 2, None, true),
        key(0, 2, Some(vec![3]), false),
        PutOrg {
            org: 0,
            domains: (0..5)
                .map(|idx| DomSpec {
                    idx,
                    id: IdChoice::Default,
                })
                .collect(),
            upper: true,
        },
        member(0, 2, vec![(4, Access::Read)]),
        Deactivate {
            org: 0,
            user: 1,
            upper: true,
        },
        member(0, 1, vec![(0, Access::ReadWrite)]),
        PutUser {
            org: 0,
            user: 1,
            upper: false,
            role: Role::Member,
            access: vec![(0, Access::ReadWrite)],
            status: Some(Status::Active),
        },
        key(0, 1, None, false),
        Delete { org: 1, user: 1 },
        member(1, 1, vec![(2, Access::ReadWrite)]),
        Deactivate {
            org: 0,
            user: 0,
            upper: false,
        },
        PutUser {
            org: 0,
            user: 3,
            upper: false,
            role: Role::Owner,
            access: vec![],
            status: None,
        },
        Deactivate {
            org: 0,
            user: 0,
            upper: false,
        },
        Revoke {
            key: 1,
            bogus: false,
        },
        Revoke {
            key: 1,
            bogus: false,
        },
        Advance(100),
    ];
    run_sequence(&ops).unwrap();
}
