//! Servers in the PostgreSQL store, against a real PostgreSQL (`support::pg`):
//! servers, members' server access and key bindings round-trip; a second
//! instance applies server changes from the change log one by one; a
//! database from before servers (schema 2) migrates and keeps its data.
//! (The rules themselves: `keystore/tests/servers.rs`.)

use std::collections::BTreeMap;

use scopegate_keystore::postgres::PostgresStore;
use scopegate_keystore::{
    Access, DomainInput, DomainRef, KeyStore, NewKey, Pepper, Refusal, Role, Target, UserInput,
};
use scopegate_suite::pg::fresh_database_url;

const ACTOR: &str = "servers-store-test";
const NOW: i64 = 1_800_000_000;
const ORG: &str = "acme";

fn pepper() -> Pepper {
    Pepper::new(b"servers-store-test-pepper-0123456789")
}

fn open(url: &str) -> KeyStore {
    KeyStore::open_location(url, pepper()).unwrap_or_else(|e| panic!("opening {url}: {e}"))
}

fn user(role: Role, access: &[(&str, Access)]) -> UserInput {
    UserInput {
        role,
        access: access.iter().map(|(d, a)| (d.to_string(), *a)).collect(),
        status: None,
    }
}

fn levels(list: &[(&str, Access)]) -> BTreeMap<String, Access> {
    list.iter().map(|(s, a)| (s.to_string(), *a)).collect()
}

fn seed_org(ks: &KeyStore) {
    ks.put_org(
        ACTOR,
        ORG,
        &[DomainInput {
            name: "acme.example".into(),
            id: Some(7),
        }],
    )
    .unwrap();
    ks.put_user(ACTOR, ORG, "owner@acme.test", user(Role::Owner, &[]))
        .unwrap();
}

/// Servers, a Server Admin and a Server Viewer, and keys bound and not.
fn seed(ks: &KeyStore) -> Vec<String> {
    seed_org(ks);
    ks.put_server(ACTOR, ORG, "prod", 11).unwrap();
    ks.put_server(ACTOR, ORG, "staging", 12).unwrap();
    ks.put_user_with_servers(
        ACTOR,
        ORG,
        "dev@acme.test",
        user(Role::Member, &[("acme.example", Access::ReadWrite)]),
        Some(levels(&[
            ("prod", Access::ReadWrite),
            ("staging", Access::Read),
        ])),
    )
    .unwrap();
    let key = |user: &str, server: Option<&str>, access: Option<Access>| {
        ks.create_key(
            ACTOR,
            ORG,
            NewKey {
                user: user.into(),
                org_wide: server.is_none(),
                server: server.map(str::to_string),
                server_access: access,
                ..NewKey::default()
            },
            NOW,
        )
        .unwrap()
        .value
        .secret
    };
    vec![
        key("owner@acme.test", None, None),
        key("owner@acme.test", Some("staging"), Some(Access::Read)),
        key("dev@acme.test", Some("prod"), None),
        key("dev@acme.test", Some("prod"), Some(Access::Read)),
    ]
}

fn matrix(ks: &KeyStore, secrets: &[String]) -> Vec<Result<(), Refusal>> {
    let mut out = Vec::new();
    for s in secrets {
        for need in [Access::Read, Access::ReadWrite] {
            for t in [
                Target::Server(need),
                Target::ServerById(11, need),
                Target::ServerById(12, need),
                Target::ServerById(13, need),
                Target::Organisation,
                Target::Domain(DomainRef::Name("acme.example"), need),
            ] {
                out.push(ks.check(Some(s), t, NOW).outcome.map(drop));
            }
        }
    }
    out
}

#[test]
fn servers_round_trip_and_a_follower_applies_their_changes() {
    let url = fresh_database_url();
    let a = open(&url);
    let b = open(&url);
    let secrets = seed(&a);
    let f = b.follow().unwrap();
    assert!(!f.reloaded && f.applied > 0, "{f:?}");
    assert_eq!(matrix(&b, &secrets), matrix(&a, &secrets));
    // The Server Admin is made a Viewer; a server is renumbered, another
    // added, one deleted: b applies each change without reloading.
    a.put_user_with_servers(
        ACTOR,
        ORG,
        "dev@acme.test",
        user(Role::Member, &[("acme.example", Access::ReadWrite)]),
        Some(levels(&[("prod", Access::Read)])),
    )
    .unwrap();
    a.put_server(ACTOR, ORG, "prod", 13).unwrap();
    a.put_server(ACTOR, ORG, "eu", 14).unwrap();
    assert_eq!(a.delete_server(ACTOR, ORG, "staging").unwrap().value, 1);
    // Added again: the Server Viewer's access went with the old one.
    a.put_server(ACTOR, ORG, "staging", 15).unwrap();
    let f = b.follow().unwrap();
    assert_eq!((f.applied, f.reloaded), (5, false));
    let decisions = matrix(&a, &secrets);
    assert_eq!(matrix(&b, &secrets), decisions);
    // The Viewer's read_write binding now reads only; by its new id.
    assert_eq!(
        b.check(
            Some(&secrets[2]),
            Target::ServerById(13, Access::ReadWrite),
            NOW
        )
        .outcome
        .map(drop),
        Err(Refusal::ReadOnly)
    );
    // The owner's key bound to staging sees the staging added again (an
    // owner has every server); by its new id only.
    assert_eq!(
        b.check(Some(&secrets[1]), Target::ServerById(15, Access::Read), NOW)
            .outcome
            .map(drop),
        Ok(())
    );
    assert_eq!(
        b.check(Some(&secrets[1]), Target::ServerById(12, Access::Read), NOW)
            .outcome
            .map(drop),
        Err(Refusal::OrgWideRequired)
    );
    // A third instance, loaded from the tables, agrees; so do the records.
    let c = open(&url);
    assert_eq!(matrix(&c, &secrets), decisions);
    assert_eq!(c.org_servers(ORG).unwrap(), a.org_servers(ORG).unwrap());
    assert_eq!(c.list_users(ORG).unwrap(), a.list_users(ORG).unwrap());
    let keys = c.list_keys(ORG, None, None, NOW).unwrap();
    assert_eq!(keys, a.list_keys(ORG, None, None, NOW).unwrap());
    let bound: Vec<_> = keys
        .iter()
        .filter_map(|k| Some((k.server.clone()?, k.server_access?)))
        .collect();
    assert_eq!(bound.len(), 3);
    let dev = c
        .list_users(ORG)
        .unwrap()
        .into_iter()
        .find(|u| u.id == "dev@acme.test");
    assert_eq!(dev.unwrap().servers, levels(&[("prod", Access::Read)]));
    assert!(bound.contains(&("staging".into(), Access::Read)));
}

/// A database from the scopegate before servers: schema 2, made by dropping
/// what migration 3 adds. It migrates and keeps its keys and decisions.
#[test]
fn a_database_from_before_servers_migrates_and_keeps_its_data() {
    let url = fresh_database_url();
    let (secret, keys, users) = {
        let ks = open(&url);
        seed_org(&ks);
        let secret = ks
            .create_key(
                ACTOR,
                ORG,
                NewKey {
                    user: "owner@acme.test".into(),
                    org_wide: true,
                    ..NewKey::default()
                },
                NOW,
            )
            .unwrap()
            .value
            .secret;
        (
            secret,
            ks.list_keys(ORG, None, None, NOW).unwrap(),
            ks.list_users(ORG).unwrap(),
        )
    };
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "DROP TABLE servers; ALTER TABLE users DROP COLUMN servers;
             ALTER TABLE keys DROP COLUMN server; ALTER TABLE keys DROP COLUMN server_access;
             UPDATE scopegate_schema SET version = 2;",
        )
        .unwrap();
    let ks = open(&url);
    assert_eq!(
        PostgresStore::connect(&url, &pepper().fingerprint())
            .unwrap()
            .schema_version()
            .unwrap(),
        PostgresStore::known_schema_version()
    );
    assert_eq!(PostgresStore::known_schema_version(), 3);
    assert_eq!(ks.list_keys(ORG, None, None, NOW).unwrap(), keys);
    assert_eq!(ks.list_users(ORG).unwrap(), users);
    assert_eq!(
        ks.check(Some(&secret), Target::Organisation, NOW)
            .outcome
            .map(drop),
        Ok(())
    );
    ks.put_server(ACTOR, ORG, "prod", 11).unwrap();
    assert_eq!(
        ks.check(
            Some(&secret),
            Target::ServerById(11, Access::ReadWrite),
            NOW
        )
        .outcome
        .map(drop),
        Ok(())
    );
}
