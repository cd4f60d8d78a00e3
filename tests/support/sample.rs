//! The guide's sample organisation, set up directly in a key store:
//! staging/production developers, operations, agency clients, support, and
//! a second organisation to prove isolation.

use std::collections::BTreeMap;

use scopegate_keystore::{Access, DomainInput, KeyStore, NewKey, Role, UserInput};

/// Keys of the sample organisation, by who holds them.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Owner, org-wide.
    pub owner: String,
    /// Admin, org-wide.
    pub admin: String,
    /// Admin, scoped to client-a.com only.
    pub admin_client_a: String,
    /// dev@example.com, default scope (read_write staging.example.com).
    pub dev: String,
    /// dev@example.com, read-only on staging.example.com.
    pub dev_read: String,
    /// ops@example.com, default scope (example.com, staging.example.com).
    pub ops: String,
    /// client-a@example.com, default scope (client-a.com).
    pub client_a: String,
    /// client-b@example.com, default scope (client-b.com, mail.client-b.com).
    pub client_b: String,
    /// Owner of the other organisation, org-wide.
    pub other_owner: String,
    /// Public ids, by the same names.
    pub ids: BTreeMap<&'static str, String>,
}

fn access(pairs: &[(&str, Access)]) -> BTreeMap<String, Access> {
    pairs.iter().map(|(d, a)| (d.to_string(), *a)).collect()
}

/// Creates organisation `acme` (and `other`) with the guide's users and keys.
pub fn setup(ks: &KeyStore) -> Keys {
    use Access::{Read, ReadWrite};
    let domains: Vec<DomainInput> = [
        ("example.com", 101),
        ("staging.example.com", 102),
        ("client-a.com", 103),
        ("client-b.com", 104),
        ("mail.client-b.com", 105),
    ]
    .iter()
    .map(|(n, id)| DomainInput {
        name: n.to_string(),
        id: Some(*id),
    })
    .collect();
    ks.put_org("setup", "acme", &domains).unwrap();
    let users: [(&str, Role, BTreeMap<String, Access>); 7] = [
        ("owner@acme.test", Role::Owner, BTreeMap::new()),
        ("admin@acme.test", Role::Admin, BTreeMap::new()),
        (
            "dev@example.com",
            Role::Member,
            access(&[("staging.example.com", ReadWrite), ("example.com", Read)]),
        ),
        (
            "ops@example.com",
            Role::Member,
            access(&[
                ("example.com", ReadWrite),
                ("staging.example.com", ReadWrite),
            ]),
        ),
        (
            "client-a@example.com",
            Role::Member,
            access(&[("client-a.com", ReadWrite)]),
        ),
        (
            "client-b@example.com",
            Role::Member,
            access(&[
                ("client-b.com", ReadWrite),
                ("mail.client-b.com", ReadWrite),
            ]),
        ),
        (
            "support@example.com",
            Role::Member,
            access(&[("example.com", Read), ("staging.example.com", Read)]),
        ),
    ];
    for (id, role, access) in users {
        ks.put_user(
            "setup",
            "acme",
            id,
            UserInput {
                role,
                access,
                status: None,
            },
        )
        .unwrap();
    }
    ks.put_org(
        "setup",
        "other",
        &[DomainInput {
            name: "other.org".into(),
            id: Some(900),
        }],
    )
    .unwrap();
    ks.put_user(
        "setup",
        "other",
        "boss@other.org",
        UserInput {
            role: Role::Owner,
            access: BTreeMap::new(),
            status: None,
        },
    )
    .unwrap();

    let now = scopegate_keystore::time::now();
    let mut ids = BTreeMap::new();
    let mut make = |label: &'static str, org: &str, k: NewKey| {
        let c = ks.create_key("setup", org, k, now).unwrap().value;
        ids.insert(label, c.meta.id.clone());
        c.secret
    };
    let user = |u: &str| NewKey {
        user: u.into(),
        ..NewKey::default()
    };
    Keys {
        owner: make(
            "owner",
            "acme",
            NewKey {
                org_wide: true,
                ..user("owner@acme.test")
            },
        ),
        admin: make(
            "admin",
            "acme",
            NewKey {
                org_wide: true,
                ..user("admin@acme.test")
            },
        ),
        admin_client_a: make(
            "admin_client_a",
            "acme",
            NewKey {
                domains: Some(vec!["client-a.com".into()]),
                ..user("admin@acme.test")
            },
        ),
        dev: make("dev", "acme", user("dev@example.com")),
        dev_read: make(
            "dev_read",
            "acme",
            NewKey {
                domains: Some(vec!["staging.example.com".into()]),
                access: Some(Read),
                ..user("dev@example.com")
            },
        ),
        ops: make("ops", "acme", user("ops@example.com")),
        client_a: make("client_a", "acme", user("client-a@example.com")),
        client_b: make("client_b", "acme", user("client-b@example.com")),
        other_owner: make(
            "other_owner",
            "other",
            NewKey {
                org_wide: true,
                ..user("boss@other.org")
            },
        ),
        ids,
    }
}
