//! The population: an organisation, its users and keys in every category,
//! created in a store (or loaded with its sidecar file), and the made-up
//! malformed and unknown keys.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use scopegate_keystore::{secret, Access, DomainInput, KeyStore, NewKey, Role, UserInput};

use super::mix::{Category, Rng};

/// The organisation of every load-test population.
pub const ORG: &str = "loadtest";

/// Domains of the organisation (numeric ids 1000..).
pub const DOMAINS: [&str; 8] = [
    "example.com",
    "staging.example.com",
    "client-a.com",
    "client-b.com",
    "mail.client-b.com",
    "news.example.com",
    "eu.example.com",
    "us.example.com",
];

/// Users: one owner, two admins, the rest members.
pub const USERS: usize = 300;

/// Users offboarded (deactivated) before the run; their keys are part of
/// the `revoked` category.
pub(super) const OFFBOARDED: usize = 2;

/// Keys created per commit.
const BATCH: usize = 50_000;

/// Who the audit trail names for the load test's own changes.
pub(super) const ACTOR: &str = "loadtest";

/// One key of the population.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PopKey {
    /// The secret as presented.
    pub secret: String,
    /// Its public id as a number (0 for keys that were never issued).
    pub id: u64,
    /// Index into [`DOMAINS`]: the domain requests with this key target.
    pub domain: u8,
    /// Whether the key may write that domain (a read-only key may not send).
    pub rw: bool,
}

/// Keys by category.
#[derive(Default)]
pub struct Population {
    /// Indexed by `Category as usize`.
    pub pools: [Vec<PopKey>; 6],
    /// Users in the organisation.
    pub users: usize,
}

impl Population {
    pub(super) fn pool(&self, c: Category) -> &Vec<PopKey> {
        &self.pools[c as usize]
    }
    pub(super) fn pool_mut(&mut self, c: Category) -> &mut Vec<PopKey> {
        &mut self.pools[c as usize]
    }
}

/// How many dedicated keys each refusal category gets for `n` valid keys.
pub(super) fn dedicated(n: usize) -> usize {
    (n / 20).clamp(20, 20_000)
}

fn user_id(i: usize) -> String {
    format!("user{i}@loadtest.example")
}

fn offboarded_id(i: usize) -> String {
    format!("offboarded{i}@loadtest.example")
}

fn member_access(u: usize) -> std::collections::BTreeMap<String, Access> {
    let mut access = std::collections::BTreeMap::new();
    access.insert(DOMAINS[u % 8].to_string(), Access::ReadWrite);
    access.insert(DOMAINS[(u + 1) % 8].to_string(), Access::ReadWrite);
    access.insert(DOMAINS[(u + 2) % 8].to_string(), Access::Read);
    access
}

/// A member user index (3..USERS) for the k-th key of some kind.
fn member_for(k: usize) -> usize {
    3 + (k * 7) % (USERS - 3)
}

/// The plan of the k-th valid key: the key to create, the domain requests
/// use, and whether the key writes it. Owners' and admins' keys are org-wide;
/// members' cover one or two of their writable domains, some read-only.
pub(super) fn valid_plan(k: usize) -> (NewKey, u8, bool) {
    let u = k % USERS;
    if u < 3 {
        let key = NewKey {
            user: user_id(u),
            org_wide: true,
            ..NewKey::default()
        };
        return (key, (k % 8) as u8, true);
    }
    let (a, b) = (u % 8, (u + 1) % 8);
    match k % 3 {
        0 => {
            let d = [a, b][(k / 3) % 2];
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[a].into(), DOMAINS[b].into()]),
                ..NewKey::default()
            };
            (key, d as u8, true)
        }
        1 => {
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[a].into()]),
                ..NewKey::default()
            };
            (key, a as u8, true)
        }
        _ => {
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[b].into()]),
                access: Some(Access::Read),
                ..NewKey::default()
            };
            (key, b as u8, false)
        }
    }
}

pub(super) fn say(quiet: bool, msg: std::fmt::Arguments<'_>) {
    if !quiet {
        eprintln!("{msg}");
    }
}

/// Creates keys in commits of [`BATCH`], returning them with their plans.
pub(super) fn create_batched(
    ks: &KeyStore,
    plans: Vec<(NewKey, u8, bool)>,
    now: i64,
    quiet: bool,
    what: &str,
) -> anyhow::Result<Vec<PopKey>> {
    let total = plans.len();
    let mut out = Vec::with_capacity(total);
    let mut plans = plans.into_iter().peekable();
    let started = Instant::now();
    let mut last_report = Instant::now();
    while plans.peek().is_some() {
        let batch: Vec<(NewKey, u8, bool)> = plans.by_ref().take(BATCH).collect();
        let meta: Vec<(u8, bool)> = batch.iter().map(|(_, d, rw)| (*d, *rw)).collect();
        let keys: Vec<NewKey> = batch.into_iter().map(|(k, _, _)| k).collect();
        let created = ks
            .create_keys(ACTOR, ORG, keys, now)
            .with_context(|| format!("creating {what} keys"))?
            .value;
        for (c, (domain, rw)) in created.into_iter().zip(meta) {
            let id = secret::parse_id(&c.meta.id).context("an issued key id")?;
            out.push(PopKey {
                secret: c.secret,
                id,
                domain,
                rw,
            });
        }
        if total > BATCH && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            say(
                quiet,
                format_args!(
                    "  {what} keys: {} of {total} ({:.1} s)",
                    out.len(),
                    started.elapsed().as_secs_f64()
                ),
            );
        }
    }
    Ok(out)
}

/// Creates the organisation, users and keys in an empty store. Returns the
/// population and the instant (Unix seconds) from which the `expired` keys
/// are expired.
pub(super) fn create_population(
    ks: &KeyStore,
    n: usize,
    quiet: bool,
) -> anyhow::Result<(Population, i64)> {
    let domains: Vec<DomainInput> = DOMAINS
        .iter()
        .enumerate()
        .map(|(i, d)| DomainInput {
            name: d.to_string(),
            id: Some(1000 + i as u64),
        })
        .collect();
    ks.put_org(ACTOR, ORG, &domains)
        .context("creating the organisation")?;
    for i in 0..USERS {
        let role = match i {
            0 => Role::Owner,
            1 | 2 => Role::Admin,
            _ => Role::Member,
        };
        let access = if role == Role::Member {
            member_access(i)
        } else {
            Default::default()
        };
        let input = UserInput {
            role,
            access,
            status: None,
        };
        ks.put_user(ACTOR, ORG, &user_id(i), input)
            .context("creating a user")?;
    }
    for i in 0..OFFBOARDED {
        let input = UserInput {
            role: Role::Member,
            access: member_access(i),
            status: None,
        };
        ks.put_user(ACTOR, ORG, &offboarded_id(i), input)
            .context("creating a user")?;
    }
    let extra = dedicated(n);
    let mut pop = Population {
        users: USERS + OFFBOARDED,
        ..Population::default()
    };

    // Expired keys first: they expire one second after creation, which has
    // passed by the time everything else is made.
    let now = scopegate_keystore::time::now();
    let expires_at = now + 1;
    let plans = (0..extra)
        .map(|k| {
            let u = member_for(k);
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[u % 8].into()]),
                expires_at: Some(expires_at),
                name: Some("loadtest expired".into()),
                ..NewKey::default()
            };
            (key, (u % 8) as u8, true)
        })
        .collect();
    *pop.pool_mut(Category::Expired) = create_batched(ks, plans, now, quiet, "expired")?;

    let plans = (0..n).map(valid_plan).collect();
    *pop.pool_mut(Category::Valid) = create_batched(ks, plans, now, quiet, "valid")?;

    // Out of scope: a key covering one writable domain, used on the domain
    // its creator only reads, or on one the creator has no access to.
    let plans = (0..extra)
        .map(|k| {
            let u = member_for(k + 1);
            let key = NewKey {
                user: user_id(u),
                domains: Some(vec![DOMAINS[u % 8].into()]),
                name: Some("loadtest out of scope".into()),
                ..NewKey::default()
            };
            let other = if k % 2 == 0 { (u + 2) % 8 } else { (u + 4) % 8 };
            (key, other as u8, false)
        })
        .collect();
    *pop.pool_mut(Category::OutOfScope) = create_batched(ks, plans, now, quiet, "out-of-scope")?;

    // Revoked: some one by one (as `DELETE /v1/keys/{id}`), the rest by
    // offboarding their creators (as `POST …/deactivate`).
    let direct = extra.min(100);
    let plans = (0..extra)
        .map(|k| {
            let (user, u) = if k < direct {
                let u = member_for(k + 2);
                (user_id(u), u)
            } else {
                let i = k % OFFBOARDED;
                (offboarded_id(i), i)
            };
            let key = NewKey {
                user,
                domains: Some(vec![DOMAINS[u % 8].into()]),
                name: Some("loadtest revoked".into()),
                ..NewKey::default()
            };
            (key, (u % 8) as u8, true)
        })
        .collect();
    let revoked = create_batched(ks, plans, now, quiet, "revoked")?;
    for k in &revoked[..direct] {
        ks.revoke_key(ACTOR, &secret::format_id(k.id), now)
            .context("revoking a key")?;
    }
    for i in 0..OFFBOARDED {
        ks.deactivate_user(ACTOR, ORG, &offboarded_id(i))
            .context("offboarding a user")?;
    }
    *pop.pool_mut(Category::Revoked) = revoked;
    Ok((pop, expires_at))
}

/// Made-up keys: checksum-broken `sg_` strings from valid ones, and
/// well-formed secrets nobody issued.
pub(super) fn made_up_keys(pop: &mut Population, n: usize, rng: &mut Rng) {
    pub(super) const BASE62: &[u8] =
        b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let valid = pop.pool(Category::Valid);
    let mut malformed = Vec::with_capacity(n);
    while malformed.len() < n && !valid.is_empty() {
        let base = &valid[rng.below(valid.len())];
        let mut bytes = base.secret.clone().into_bytes();
        if rng.below(4) == 0 {
            bytes.pop();
        } else if bytes.len() > secret::PREFIX.len() {
            let at = secret::PREFIX.len() + rng.below(bytes.len() - secret::PREFIX.len());
            let mut c = BASE62[rng.below(62)];
            while c == bytes[at] {
                c = BASE62[rng.below(62)];
            }
            bytes[at] = c;
        }
        let s = String::from_utf8(bytes).expect("ASCII");
        if secret::classify(&s).is_err() {
            malformed.push(PopKey {
                secret: s,
                id: 0,
                domain: base.domain,
                rw: base.rw,
            });
        }
    }
    let unknown = (0..n)
        .map(|i| PopKey {
            secret: secret::generate(),
            id: 0,
            domain: (i % 8) as u8,
            rw: true,
        })
        .collect();
    *pop.pool_mut(Category::Malformed) = malformed;
    *pop.pool_mut(Category::Unknown) = unknown;
}

/// The population file beside a kept store.
pub(super) fn sidecar_path(store: &Path) -> PathBuf {
    let mut s = store.as_os_str().to_owned();
    s.push(".loadtest");
    PathBuf::from(s)
}

const SIDECAR_MAGIC: &str = "scopegate-loadtest-population v1";

/// Creates a file only the owner can read (it holds secrets).
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .with_context(|| format!("creating {}", path.display()))
}

pub(super) fn write_sidecar(
    path: &Path,
    pop: &Population,
    fingerprint: &str,
) -> anyhow::Result<()> {
    let mut w = BufWriter::new(create_private(path)?);
    writeln!(w, "{SIDECAR_MAGIC} org={ORG} pepper={fingerprint}")?;
    for c in [
        Category::Valid,
        Category::Revoked,
        Category::Expired,
        Category::OutOfScope,
    ] {
        for k in pop.pool(c) {
            writeln!(
                w,
                "{} {} {:016x} {} {}",
                c.name(),
                k.secret,
                k.id,
                k.domain,
                if k.rw { "rw" } else { "r" }
            )?;
        }
    }
    w.flush()?;
    Ok(())
}

fn read_sidecar(path: &Path, fingerprint: &str) -> anyhow::Result<Population> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = BufReader::new(f).lines();
    let head = lines.next().transpose()?.unwrap_or_default();
    ensure!(
        head.starts_with(SIDECAR_MAGIC),
        "{} is not a load-test population file",
        path.display()
    );
    ensure!(
        head.ends_with(&format!("pepper={fingerprint}")),
        "{} was made with another pepper: set SCOPEGATE_PEPPER to the one used then",
        path.display()
    );
    let mut pop = Population {
        users: USERS + OFFBOARDED,
        ..Population::default()
    };
    for (i, line) in lines.enumerate() {
        let line = line?;
        let f: Vec<&str> = line.split(' ').collect();
        let bad = || format!("{} line {}: malformed", path.display(), i + 2);
        ensure!(f.len() == 5, bad());
        let c = Category::from_name(f[0]).with_context(bad)?;
        let key = PopKey {
            secret: f[1].to_string(),
            id: u64::from_str_radix(f[2], 16).ok().with_context(bad)?,
            domain: f[3].parse().ok().filter(|d| *d < 8).with_context(bad)?,
            rw: f[4] == "rw",
        };
        pop.pool_mut(c).push(key);
    }
    Ok(pop)
}

/// Loads a kept population and reclassifies it by what the store itself
/// says (a key revoked by an earlier run is `revoked` now).
pub(super) fn load_population(
    ks: &KeyStore,
    path: &Path,
    fingerprint: &str,
) -> anyhow::Result<Population> {
    let mut pop = read_sidecar(path, fingerprint)?;
    let now = scopegate_keystore::time::now();
    let states: HashMap<u64, &'static str> = ks
        .list_keys(ORG, None, None, now)
        .context("listing the store's keys")?
        .into_iter()
        .filter_map(|m| Some((secret::parse_id(&m.id)?, m.state)))
        .collect();
    let valid = std::mem::take(pop.pool_mut(Category::Valid));
    for k in valid {
        match states.get(&k.id) {
            Some(&"active") => pop.pool_mut(Category::Valid).push(k),
            Some(&"revoked") => pop.pool_mut(Category::Revoked).push(k),
            Some(&"expired") => pop.pool_mut(Category::Expired).push(k),
            _ => bail!(
                "key {} of {} is not in the store: the files do not belong together",
                secret::format_id(k.id),
                path.display()
            ),
        }
    }
    for c in [Category::Revoked, Category::OutOfScope, Category::Expired] {
        for k in pop.pool(c) {
            ensure!(
                states.contains_key(&k.id),
                "key {} of {} is not in the store",
                secret::format_id(k.id),
                path.display()
            );
        }
    }
    Ok(pop)
}

/// Waits until every `expired` key of the store is expired (at most a few
/// seconds after their creation).
pub(super) fn wait_expired(ks: &KeyStore, pop: &Population) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = scopegate_keystore::time::now();
        let mut all = true;
        for k in pop.pool(Category::Expired) {
            let meta = ks.get_key(&secret::format_id(k.id), now)?;
            if meta.state == "active" {
                all = false;
                break;
            }
        }
        if all {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the expired keys did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the valid keys for wrk: `SECRET DOMAIN rw|r` per line.
pub(super) fn export_secrets(path: &Path, pop: &Population) -> anyhow::Result<()> {
    let mut w = BufWriter::new(create_private(path)?);
    for k in pop.pool(Category::Valid) {
        writeln!(
            w,
            "{} {} {}",
            k.secret,
            DOMAINS[k.domain as usize],
            if k.rw { "rw" } else { "r" }
        )?;
    }
    w.flush()?;
    Ok(())
}

/// A temporary directory removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("scopegate-loadtest-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use scopegate_keystore::Pepper;

    use super::*;

    #[test]
    fn made_up_keys_are_malformed_or_unknown() {
        let mut pop = Population::default();
        pop.pool_mut(Category::Valid).push(PopKey {
            secret: secret::generate(),
            id: 1,
            domain: 0,
            rw: true,
        });
        made_up_keys(&mut pop, 50, &mut Rng(7));
        assert_eq!(pop.pool(Category::Malformed).len(), 50);
        for k in pop.pool(Category::Malformed) {
            assert!(secret::classify(&k.secret).is_err());
            assert!(k.secret.starts_with(secret::PREFIX));
        }
        for k in pop.pool(Category::Unknown) {
            assert!(secret::classify(&k.secret).is_ok());
        }
    }

    #[test]
    fn population_round_trips_through_its_file() {
        let ks = KeyStore::in_memory(Pepper::new(b"loadtest-test-pepper-0123"));
        let (pop, _) = create_population(&ks, 40, true).unwrap();
        assert_eq!(pop.pool(Category::Valid).len(), 40);
        assert_eq!(pop.pool(Category::Revoked).len(), 20);
        let dir = TempDir::new().unwrap();
        let path = dir.0.join("p.loadtest");
        write_sidecar(&path, &pop, "fp").unwrap();
        let back = read_sidecar(&path, "fp").unwrap();
        assert_eq!(back.pools[..4], pop.pools[..4]);
        assert!(read_sidecar(&path, "other").is_err());
        // The store agrees with the categories.
        let now = scopegate_keystore::time::now() + 5;
        let target = |d: u8| {
            scopegate_keystore::Target::Domain(
                scopegate_keystore::DomainRef::Name(DOMAINS[d as usize]),
                Access::Read,
            )
        };
        for k in pop.pool(Category::Valid) {
            assert!(ks
                .check(Some(&k.secret), target(k.domain), now)
                .outcome
                .is_ok());
        }
        for c in [Category::Revoked, Category::Expired, Category::OutOfScope] {
            for k in pop.pool(c) {
                assert!(ks
                    .check(Some(&k.secret), target(k.domain), now)
                    .outcome
                    .is_err());
            }
        }
    }
}
