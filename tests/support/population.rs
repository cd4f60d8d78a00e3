//! Synthetic key populations for benches and load tests: one organisation,
//! a few hundred users in the guide's roles, and N keys spread over them.

use scopegate_keystore::{Access, DomainInput, KeyStore, NewKey, Role, UserInput};

/// Domains of the synthetic organisation `bench`: the ones `scopegate
/// loadtest` populates with, so the wrk scripts' domains fit both.
pub use scopegate_gateway::loadtest::DOMAINS;

/// Users: one owner, one admin, the rest members with read_write on two
/// domains and read on one.
pub const USERS: usize = 200;

/// Keys created, in creation order, with the domain each can write.
pub struct Population {
    /// Issued secrets.
    pub secrets: Vec<String>,
    /// Public key ids (parallel to `secrets`).
    pub ids: Vec<String>,
    /// A domain each secret can write (parallel to `secrets`).
    pub writable: Vec<&'static str>,
}

fn user_id(i: usize) -> String {
    format!("user{i}@example.com")
}

/// Fills `ks` with organisation `bench` and `n` keys, created in batches of
/// 50k so a million keys take a few seconds.
pub fn populate(ks: &KeyStore, n: usize) -> Population {
    let org = "bench";
    let domains: Vec<DomainInput> = DOMAINS
        .iter()
        .enumerate()
        .map(|(i, d)| DomainInput {
            name: d.to_string(),
            id: Some(1000 + i as u64),
        })
        .collect();
    ks.put_org("bench", org, &domains).expect("org");
    for i in 0..USERS {
        let role = match i {
            0 => Role::Owner,
            1 => Role::Admin,
            _ => Role::Member,
        };
        let mut access = std::collections::BTreeMap::new();
        if role == Role::Member {
            access.insert(DOMAINS[i % 8].to_string(), Access::ReadWrite);
            access.insert(DOMAINS[(i + 1) % 8].to_string(), Access::ReadWrite);
            access.insert(DOMAINS[(i + 2) % 8].to_string(), Access::Read);
        }
        ks.put_user(
            "bench",
            org,
            &user_id(i),
            UserInput {
                role,
                access,
                status: None,
            },
        )
        .expect("user");
    }
    let now = scopegate_keystore::time::now();
    let mut secrets = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut writable = Vec::with_capacity(n);
    let mut made = 0;
    while made < n {
        let batch = (n - made).min(50_000);
        let keys: Vec<NewKey> = (made..made + batch)
            .map(|k| {
                let u = 2 + k % (USERS - 2);
                NewKey {
                    user: user_id(u),
                    domains: Some(vec![DOMAINS[u % 8].to_string()]),
                    ..NewKey::default()
                }
            })
            .collect();
        for (k, c) in (made..).zip(ks.create_keys("bench", org, keys, now).expect("keys").value) {
            secrets.push(c.secret);
            ids.push(c.meta.id);
            writable.push(DOMAINS[(2 + k % (USERS - 2)) % 8]);
        }
        made += batch;
    }
    Population {
        secrets,
        ids,
        writable,
    }
}

/// `0..n` in a fixed pseudo-random order (xorshift), so that consecutive
/// checks in a bench touch unrelated keys, the same order on every run.
pub fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Every secret of a population in [`shuffled`] order, one after the other in
/// one buffer, as a request's key arrives in a fresh, cache-hot buffer: a
/// bench's cache misses are then the table's, not its own. (One `String` per
/// key, allocated after the population, lands wherever the allocator has
/// room, and reading the secret was a cache miss of the harness's.)
pub struct LaidOut {
    buf: String,
    writable: Vec<&'static str>,
}

impl LaidOut {
    /// Lays out `pop`'s secrets.
    pub fn new(pop: &Population) -> LaidOut {
        let order = shuffled(pop.secrets.len());
        let mut buf = String::with_capacity(order.len() * scopegate_keystore::secret::ISSUED_LEN);
        for &k in &order {
            buf.push_str(&pop.secrets[k]);
        }
        LaidOut {
            buf,
            writable: order.iter().map(|&k| pop.writable[k]).collect(),
        }
    }

    /// (secret, a domain it can write) for every key, in the laid-out order.
    pub fn pairs(&self) -> Vec<(&str, &'static str)> {
        issued_in(&self.buf)
            .zip(self.writable.iter().copied())
            .collect()
    }
}

/// The issued secrets laid end to end in `buf`, one after the other.
pub fn issued_in(buf: &str) -> impl Iterator<Item = &str> {
    let len = scopegate_keystore::secret::ISSUED_LEN;
    (0..buf.len() / len).map(move |i| &buf[i * len..(i + 1) * len])
}
