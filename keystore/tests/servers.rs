//! Servers, Postmark's second resource kind (DESIGN "Postmark profile", seed
//! `000_b5065306bed1a7af.txt`): organisations have servers (name, numeric
//! id); owners and admins have read_write on every server, members only on
//! the servers assigned to them (`read`: Server Viewer, `read_write`: Server
//! Admin); a key may be bound to one server (a server token), and never
//! grants more there than its creator could do right now.
//!
//! Every rule is checked through the public [`KeyStore`] API, on an
//! in-memory store and on SQLite files (reopened, migrated from the schema
//! before servers existed, and followed by a second instance).

use std::collections::BTreeMap;
use std::path::Path;

use scopegate_keystore::{
    Access, DomainInput, DomainRef, ErrorKind, KeyStore, NewKey, Pepper, Refusal, Role,
    SqliteStore, Status, Target, UserInput,
};

const ACTOR: &str = "servers-test";
const NOW: i64 = 1_800_000_000;
const ORG: &str = "acme";
const OWNER: &str = "owner@acme.test";
const ADMIN: &str = "admin@acme.test";
const DEV: &str = "dev@acme.test";
const SUPPORT: &str = "support@acme.test";

use Access::{Read, ReadWrite as Rw};

fn pepper() -> Pepper {
    Pepper::new(b"servers-test-pepper-0123456789ab")
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

/// Organisation `acme` (one domain, servers `prod` = 11 and `staging` = 12),
/// an owner, an admin, `dev` (Server Admin on prod, Viewer on staging, writes
/// the domain) and `support` (Server Viewer on prod, no domain).
fn seed(ks: &KeyStore) {
    ks.put_org(
        ACTOR,
        ORG,
        &[DomainInput {
            name: "acme.example".into(),
            id: Some(7),
        }],
    )
    .unwrap();
    assert!(ks.put_server(ACTOR, ORG, "prod", 11).unwrap().value);
    assert!(ks.put_server(ACTOR, ORG, "staging", 12).unwrap().value);
    ks.put_user(ACTOR, ORG, OWNER, user(Role::Owner, &[]))
        .unwrap();
    ks.put_user(ACTOR, ORG, ADMIN, user(Role::Admin, &[]))
        .unwrap();
    ks.put_user_with_servers(
        ACTOR,
        ORG,
        DEV,
        user(Role::Member, &[("acme.example", Rw)]),
        Some(levels(&[("prod", Rw), ("staging", Read)])),
    )
    .unwrap();
    ks.put_user_with_servers(
        ACTOR,
        ORG,
        SUPPORT,
        user(Role::Member, &[]),
        Some(levels(&[("prod", Read)])),
    )
    .unwrap();
}

fn seeded() -> KeyStore {
    let ks = KeyStore::in_memory(pepper());
    seed(&ks);
    ks
}

fn server_key(user: &str, server: &str, access: Option<Access>) -> NewKey {
    NewKey {
        user: user.into(),
        server: Some(server.into()),
        server_access: access,
        ..NewKey::default()
    }
}

fn create(ks: &KeyStore, key: NewKey) -> String {
    ks.create_key(ACTOR, ORG, key, NOW).unwrap().value.secret
}

fn create_err(ks: &KeyStore, key: NewKey) -> (ErrorKind, &'static str, String) {
    let e = ks.create_key(ACTOR, ORG, key, NOW).unwrap_err();
    (e.kind, e.code, e.message)
}

fn decide(ks: &KeyStore, secret: &str, target: Target<'_>) -> Result<(), Refusal> {
    ks.check(Some(secret), target, NOW).outcome.map(drop)
}

/// (server name, effective level) as the gateway's principal sees them.
fn bound(ks: &KeyStore, secret: &str) -> (Option<String>, Option<Access>) {
    let snap = ks.snapshot();
    let key = ks.present(&snap, secret).unwrap();
    let p = snap.authenticate(&key, NOW).unwrap();
    (p.server().map(str::to_string), p.server_level())
}

fn server_decisions(ks: &KeyStore, secret: &str) -> [Result<(), Refusal>; 2] {
    [
        decide(ks, secret, Target::Server(Read)),
        decide(ks, secret, Target::Server(Rw)),
    ]
}

const OK2: [Result<(), Refusal>; 2] = [Ok(()), Ok(())];
const READ_ONLY: [Result<(), Refusal>; 2] = [Ok(()), Err(Refusal::ReadOnly)];
const INVISIBLE: [Result<(), Refusal>; 2] = [
    Err(Refusal::ServerNotVisible),
    Err(Refusal::ServerNotVisible),
];

#[test]
fn owners_and_admins_have_every_server_including_ones_added_later() {
    let ks = seeded();
    for creator in [OWNER, ADMIN] {
        let s = create(&ks, server_key(creator, "staging", None));
        assert_eq!(server_decisions(&ks, &s), OK2, "{creator}");
        assert_eq!(bound(&ks, &s), (Some("staging".into()), Some(Rw)));
    }
    // A server added after the owner and admin were: theirs at once.
    ks.put_server(ACTOR, ORG, "Eu-Mail", 13).unwrap();
    assert_eq!(ks.org_servers(ORG).unwrap().len(), 3);
    for creator in [OWNER, ADMIN] {
        let s = create(&ks, server_key(creator, "eu-mail", None));
        assert_eq!(server_decisions(&ks, &s), OK2, "{creator}");
        assert_eq!(decide(&ks, &s, Target::ServerById(13, Rw)), Ok(()));
    }
    // An org-wide account key reaches every server by id, added later too;
    // an id no server has is still the account's call (the upstream answers).
    let account = create(
        &ks,
        NewKey {
            user: OWNER.into(),
            org_wide: true,
            ..NewKey::default()
        },
    );
    for id in [11, 12, 13, 999] {
        assert_eq!(decide(&ks, &account, Target::ServerById(id, Rw)), Ok(()));
    }
    // ... but it is no server token: server-level routes need a binding.
    assert_eq!(
        server_decisions(&ks, &account),
        [
            Err(Refusal::ServerKeyRequired),
            Err(Refusal::ServerKeyRequired)
        ]
    );
    assert_eq!(bound(&ks, &account), (None, None));
}

#[test]
fn server_admins_bind_keys_server_viewers_cannot() {
    let ks = seeded();
    // Server Admin on prod.
    let s = create(&ks, server_key(DEV, "prod", None));
    assert_eq!(server_decisions(&ks, &s), OK2);
    // Server Viewer on staging: no key bound to it (422, the server named).
    let (kind, code, message) = create_err(&ks, server_key(DEV, "staging", Some(Read)));
    assert_eq!((kind, code), (ErrorKind::Rule, "server_not_writable"));
    assert!(message.contains("staging"), "{message}");
    // A Viewer-only member with no domain at all: no key.
    let (_, code, _) = create_err(&ks, server_key(SUPPORT, "prod", Some(Read)));
    assert_eq!(code, "server_not_writable");
    // Not a server of the organisation; not a server name at all.
    let (kind, code, message) = create_err(&ks, server_key(OWNER, "nowhere", None));
    assert_eq!((kind, code), (ErrorKind::Rule, "server_not_in_org"));
    assert!(message.contains("nowhere"), "{message}");
    let (kind, code, _) = create_err(&ks, server_key(OWNER, "no/such", None));
    assert_eq!((kind, code), (ErrorKind::Rule, "invalid_server_name"));
    // A level without a server.
    let (_, code, _) = create_err(
        &ks,
        NewKey {
            user: OWNER.into(),
            server_access: Some(Read),
            ..NewKey::default()
        },
    );
    assert_eq!(code, "server_access_without_server");
}

#[test]
fn a_server_admin_with_no_writable_domain_still_gets_a_server_token() {
    let ks = seeded();
    ks.put_user_with_servers(
        ACTOR,
        ORG,
        SUPPORT,
        user(Role::Member, &[("acme.example", Read)]),
        Some(levels(&[("prod", Rw)])),
    )
    .unwrap();
    let c = ks
        .create_key(ACTOR, ORG, server_key(SUPPORT, "Prod", None), NOW)
        .unwrap()
        .value;
    assert_eq!(c.meta.server.as_deref(), Some("prod"));
    assert_eq!(c.meta.server_access, Some(Rw));
    assert!(c.meta.domains.is_empty());
    assert_eq!(server_decisions(&ks, &c.secret), OK2);
    // Its domain scope is empty: it sees no domain.
    assert_eq!(
        decide(
            &ks,
            &c.secret,
            Target::Domain(DomainRef::Name("acme.example"), Read)
        ),
        Err(Refusal::NotVisible)
    );
    // Without a server the old rule stands.
    let (_, code, _) = create_err(
        &ks,
        NewKey {
            user: SUPPORT.into(),
            ..NewKey::default()
        },
    );
    assert_eq!(code, "no_writable_domains");
}

#[test]
fn a_read_only_binding_reads_and_never_writes() {
    let ks = seeded();
    let s = create(&ks, server_key(DEV, "prod", Some(Read)));
    assert_eq!(server_decisions(&ks, &s), READ_ONLY);
    assert_eq!(bound(&ks, &s), (Some("prod".into()), Some(Read)));
    let meta = ks.list_keys(ORG, Some(DEV), None, NOW).unwrap();
    assert_eq!(meta[0].server_access, Some(Read));
}

#[test]
fn the_creator_changing_changes_the_key_on_the_next_check() {
    let ks = seeded();
    let s = create(&ks, server_key(DEV, "prod", None));
    let domain = Target::Domain(DomainRef::Name("acme.example"), Rw);
    assert_eq!(server_decisions(&ks, &s), OK2);
    // Demoted to Server Viewer on prod: the key reads only.
    let dev = |servers: &[(&str, Access)]| {
        ks.put_user_with_servers(
            ACTOR,
            ORG,
            DEV,
            user(Role::Member, &[("acme.example", Rw)]),
            Some(levels(servers)),
        )
        .unwrap();
    };
    dev(&[("prod", Read)]);
    assert_eq!(server_decisions(&ks, &s), READ_ONLY);
    assert_eq!(bound(&ks, &s).1, Some(Read));
    // Unassigned from prod: the key sees no server; its domain still works.
    dev(&[("staging", Rw)]);
    assert_eq!(server_decisions(&ks, &s), INVISIBLE);
    assert_eq!(bound(&ks, &s), (Some("prod".into()), None));
    assert_eq!(decide(&ks, &s, domain), Ok(()));
    // Assigned again: back (the binding was never the problem).
    dev(&[("prod", Rw)]);
    assert_eq!(server_decisions(&ks, &s), OK2);
    // A user update that does not mention servers keeps them.
    ks.put_user(ACTOR, ORG, DEV, user(Role::Member, &[("acme.example", Rw)]))
        .unwrap();
    assert_eq!(server_decisions(&ks, &s), OK2);
    // Deactivated: every key of theirs dies with them.
    ks.deactivate_user(ACTOR, ORG, DEV).unwrap();
    assert_eq!(
        decide(&ks, &s, Target::Server(Read)),
        Err(Refusal::RevokedKey)
    );
}

#[test]
fn an_admin_demoted_to_member_keeps_only_the_servers_assigned() {
    let ks = seeded();
    let prod = create(&ks, server_key(ADMIN, "prod", None));
    let staging = create(&ks, server_key(ADMIN, "staging", None));
    // Owners and admins take no per-server access (they have every server).
    let e = ks
        .put_user_with_servers(
            ACTOR,
            ORG,
            ADMIN,
            user(Role::Admin, &[]),
            Some(levels(&[("prod", Read)])),
        )
        .unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::Rule, "servers_for_admin"));
    ks.put_user_with_servers(
        ACTOR,
        ORG,
        ADMIN,
        user(Role::Member, &[]),
        Some(levels(&[("prod", Read)])),
    )
    .unwrap();
    assert_eq!(server_decisions(&ks, &prod), READ_ONLY);
    assert_eq!(server_decisions(&ks, &staging), INVISIBLE);
    // Promoted again: every server, and the member map is gone.
    ks.put_user(ACTOR, ORG, ADMIN, user(Role::Admin, &[]))
        .unwrap();
    assert_eq!(server_decisions(&ks, &staging), OK2);
    let admin = ks
        .list_users(ORG)
        .unwrap()
        .into_iter()
        .find(|u| u.id == ADMIN)
        .unwrap();
    assert!(admin.servers.is_empty());
}

#[test]
fn deleting_the_creator_kills_their_server_keys() {
    let ks = seeded();
    let s = create(&ks, server_key(DEV, "prod", None));
    ks.delete_user(ACTOR, ORG, DEV).unwrap();
    assert_eq!(
        decide(&ks, &s, Target::Server(Read)),
        Err(Refusal::RevokedKey)
    );
    // The same user created again is another incarnation: the old key stays dead.
    ks.put_user_with_servers(
        ACTOR,
        ORG,
        DEV,
        user(Role::Member, &[]),
        Some(levels(&[("prod", Rw)])),
    )
    .unwrap();
    assert!(decide(&ks, &s, Target::Server(Read)).is_err());
}

#[test]
fn a_deleted_server_is_invisible_to_the_keys_bound_to_it() {
    let ks = seeded();
    let by_dev = create(&ks, server_key(DEV, "prod", None));
    let by_owner = create(&ks, server_key(OWNER, "prod", None));
    let other = create(&ks, server_key(OWNER, "staging", None));
    let revoked = ks
        .create_key(ACTOR, ORG, server_key(OWNER, "prod", None), NOW)
        .unwrap()
        .value;
    ks.revoke_key(ACTOR, &revoked.meta.id, NOW).unwrap();
    // Two live keys are bound to prod (the revoked one does not count).
    assert_eq!(ks.delete_server(ACTOR, ORG, "PROD").unwrap().value, 2);
    for s in [&by_dev, &by_owner] {
        assert_eq!(server_decisions(&ks, s), INVISIBLE);
        assert_eq!(
            decide(&ks, s, Target::ServerById(11, Read)),
            Err(Refusal::OrgWideRequired)
        );
    }
    assert_eq!(server_decisions(&ks, &other), OK2);
    // Members lost their access to it with it: a server of the same name
    // added again is not theirs, nor their keys'. (An owner has every server.)
    let dev = ks
        .list_users(ORG)
        .unwrap()
        .into_iter()
        .find(|u| u.id == DEV);
    assert_eq!(dev.unwrap().servers, levels(&[("staging", Read)]));
    ks.put_server(ACTOR, ORG, "prod", 31).unwrap();
    assert_eq!(server_decisions(&ks, &by_dev), INVISIBLE);
    assert_eq!(server_decisions(&ks, &by_owner), OK2);
    ks.delete_server(ACTOR, ORG, "prod").unwrap();
    let e = ks.delete_server(ACTOR, ORG, "prod").unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::NotFound, "server_not_found"));
    // New bindings and member assignments to it are refused.
    let (_, code, _) = create_err(&ks, server_key(OWNER, "prod", None));
    assert_eq!(code, "server_not_in_org");
    let e = ks
        .put_user_with_servers(
            ACTOR,
            ORG,
            SUPPORT,
            user(Role::Member, &[]),
            Some(levels(&[("prod", Read)])),
        )
        .unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::Rule, "server_not_in_org"));
}

#[test]
fn a_server_token_is_never_an_account_token() {
    let ks = seeded();
    // An owner's key bound to a server, with every domain in its scope.
    let c = ks
        .create_key(
            ACTOR,
            ORG,
            NewKey {
                user: OWNER.into(),
                org_wide: true,
                server: Some("prod".into()),
                ..NewKey::default()
            },
            NOW,
        )
        .unwrap()
        .value;
    assert!(c.meta.org_wide);
    let s = c.secret;
    assert_eq!(
        decide(&ks, &s, Target::Organisation),
        Err(Refusal::OrgWideRequired)
    );
    // Its domain scope is as declared: every domain.
    let identity = ks
        .check(Some(&s), Target::Domain(DomainRef::Id(7), Rw), NOW)
        .outcome
        .unwrap();
    assert_eq!(identity.scope, "*");
    // `/servers/{id}`: its own server only, at its level.
    assert_eq!(decide(&ks, &s, Target::ServerById(11, Rw)), Ok(()));
    assert_eq!(
        decide(&ks, &s, Target::ServerById(12, Read)),
        Err(Refusal::OrgWideRequired)
    );
    let viewer = create(&ks, server_key(DEV, "prod", Some(Read)));
    assert_eq!(decide(&ks, &viewer, Target::ServerById(11, Read)), Ok(()));
    assert_eq!(
        decide(&ks, &viewer, Target::ServerById(11, Rw)),
        Err(Refusal::ReadOnly)
    );
    // A domain key is neither.
    let domain_key = create(
        &ks,
        NewKey {
            user: DEV.into(),
            ..NewKey::default()
        },
    );
    assert_eq!(
        decide(&ks, &domain_key, Target::ServerById(11, Read)),
        Err(Refusal::OrgWideRequired)
    );
    assert_eq!(
        decide(&ks, &domain_key, Target::Server(Read)),
        Err(Refusal::ServerKeyRequired)
    );
}

#[test]
fn changing_a_servers_id_moves_server_by_id_with_it() {
    let ks = seeded();
    let s = create(&ks, server_key(DEV, "prod", None));
    assert!(!ks.put_server(ACTOR, ORG, "prod", 21).unwrap().value);
    assert_eq!(decide(&ks, &s, Target::ServerById(21, Rw)), Ok(()));
    assert_eq!(
        decide(&ks, &s, Target::ServerById(11, Rw)),
        Err(Refusal::OrgWideRequired)
    );
    // Putting it as it is changes nothing.
    let v = ks.status().version;
    assert_eq!(ks.put_server(ACTOR, ORG, "prod", 21).unwrap().version, v);
}

#[test]
fn server_input_is_checked() {
    let ks = seeded();
    // Another server's id: a conflict, naming the server that has it.
    let e = ks.put_server(ACTOR, ORG, "eu", 12).unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::Conflict, "server_id_taken"));
    assert!(e.message.contains("staging"), "{e}");
    for bad in ["", "a b", "a/b", &"x".repeat(65)] {
        let e = ks.put_server(ACTOR, ORG, bad, 99).unwrap_err();
        assert_eq!(
            (e.kind, e.code),
            (ErrorKind::Rule, "invalid_server_name"),
            "{bad:?}"
        );
    }
    let e = ks.put_server(ACTOR, "nope", "prod", 1).unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::NotFound, "org_not_found"));
    let e = ks.delete_server(ACTOR, "nope", "prod").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    let e = ks.org_servers("nope").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    let e = ks
        .put_user_with_servers(
            ACTOR,
            ORG,
            SUPPORT,
            user(Role::Member, &[]),
            Some(levels(&[("nowhere", Read)])),
        )
        .unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::Rule, "server_not_in_org"));
    assert!(e.message.contains("nowhere"), "{e}");
    // Replacing the domain list keeps the servers.
    ks.put_org(
        ACTOR,
        ORG,
        &[DomainInput {
            name: "other.example".into(),
            id: None,
        }],
    )
    .unwrap();
    let names: Vec<String> = ks
        .org_servers(ORG)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["prod", "staging"]);
}

#[test]
fn bindings_survive_rotation_and_patches() {
    let ks = seeded();
    let c = ks
        .create_key(ACTOR, ORG, server_key(DEV, "prod", Some(Read)), NOW)
        .unwrap()
        .value;
    ks.update_key(
        ACTOR,
        &c.meta.id,
        scopegate_keystore::KeyPatch {
            rate_limit: Some(Some(scopegate_keystore::RateLimit {
                per_second: 5,
                burst: 5,
            })),
            shadow: None,
        },
        NOW,
    )
    .unwrap();
    assert_eq!(server_decisions(&ks, &c.secret), READ_ONLY);
    let (new, old) = ks.rotate_key(ACTOR, &c.meta.id, 60, NOW).unwrap().value;
    assert_eq!(old.server.as_deref(), Some("prod"));
    assert_eq!(new.meta.server.as_deref(), Some("prod"));
    assert_eq!(new.meta.server_access, Some(Read));
    assert_eq!(server_decisions(&ks, &new.secret), READ_ONLY);
    assert_eq!(server_decisions(&ks, &c.secret), READ_ONLY);
}

/// Every decision the server rules make for `secrets`, for comparing stores.
fn matrix(ks: &KeyStore, secrets: &[String]) -> Vec<Result<(), Refusal>> {
    let mut out = Vec::new();
    for s in secrets {
        for need in [Read, Rw] {
            for t in [
                Target::Server(need),
                Target::ServerById(11, need),
                Target::ServerById(12, need),
                Target::Organisation,
                Target::Domain(DomainRef::Name("acme.example"), need),
            ] {
                out.push(decide(ks, s, t));
            }
        }
    }
    out
}

/// Keys of every kind in a seeded store, and a few changes under them.
fn population(ks: &KeyStore) -> Vec<String> {
    let secrets = vec![
        create(ks, server_key(OWNER, "prod", None)),
        create(ks, server_key(ADMIN, "staging", Some(Read))),
        create(ks, server_key(DEV, "prod", None)),
        create(ks, server_key(DEV, "prod", Some(Read))),
        create(
            ks,
            NewKey {
                user: OWNER.into(),
                org_wide: true,
                ..NewKey::default()
            },
        ),
    ];
    ks.put_server(ACTOR, ORG, "eu", 13).unwrap();
    ks.put_server(ACTOR, ORG, "staging", 22).unwrap();
    ks.put_user_with_servers(
        ACTOR,
        ORG,
        DEV,
        user(Role::Member, &[("acme.example", Rw)]),
        Some(levels(&[("prod", Read), ("eu", Rw)])),
    )
    .unwrap();
    secrets
}

fn open(path: &Path) -> KeyStore {
    KeyStore::open_sqlite(path, pepper()).expect("open store")
}

#[test]
fn servers_users_and_bindings_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let (secrets, before, users) = {
        let ks = open(&db);
        seed(&ks);
        let secrets = population(&ks);
        let before = matrix(&ks, &secrets);
        (secrets, before, ks.list_users(ORG).unwrap())
    };
    let ks = open(&db);
    assert_eq!(matrix(&ks, &secrets), before);
    assert_eq!(ks.list_users(ORG).unwrap(), users);
    let dev = users.iter().find(|u| u.id == DEV).unwrap();
    assert_eq!(dev.servers, levels(&[("eu", Rw), ("prod", Read)]));
    let servers: Vec<(String, u64)> = ks
        .org_servers(ORG)
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.id))
        .collect();
    assert_eq!(
        servers,
        [
            ("eu".into(), 13),
            ("prod".into(), 11),
            ("staging".into(), 22)
        ]
    );
}

/// A store file as the scopegate before servers wrote it: schema 4, made by
/// dropping what migration 5 adds from a store with keys, users, limits and
/// usage in it. It opens, migrates to 5 and keeps every decision.
#[test]
fn a_store_from_before_servers_migrates_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let (secrets, before, users, keys) = {
        let ks = open(&db);
        seed_without_servers(&ks);
        let mut secrets = Vec::new();
        for (user, org_wide) in [(OWNER, true), (DEV, false), (SUPPORT, false)] {
            secrets.push(create(
                &ks,
                NewKey {
                    user: user.into(),
                    org_wide,
                    rate_limit: Some(scopegate_keystore::RateLimit {
                        per_second: 3,
                        burst: 9,
                    }),
                    ..NewKey::default()
                },
            ));
        }
        let keys = ks.list_keys(ORG, None, None, NOW).unwrap();
        let id = scopegate_keystore::secret::parse_id(&keys[0].id).unwrap();
        ks.snapshot().side(id).unwrap().usage.record(NOW, false);
        assert_eq!(ks.flush_usage().unwrap(), 1);
        let users = ks.list_users(ORG).unwrap();
        let keys = ks.list_keys(ORG, None, None, NOW).unwrap();
        (secrets.clone(), matrix(&ks, &secrets), users, keys)
    };
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "DROP TABLE servers; ALTER TABLE users DROP COLUMN servers;
             ALTER TABLE keys DROP COLUMN server; ALTER TABLE keys DROP COLUMN server_access;
             PRAGMA user_version = 4;",
        )
        .unwrap();
    }
    let ks = open(&db);
    assert_eq!(SqliteStore::open(&db).unwrap().schema_version().unwrap(), 5);
    assert_eq!(matrix(&ks, &secrets), before);
    assert_eq!(ks.list_users(ORG).unwrap(), users);
    assert_eq!(ks.list_keys(ORG, None, None, NOW).unwrap(), keys);
    assert_eq!(keys[0].requests, 1, "usage kept");
    // And servers work on it.
    ks.put_server(ACTOR, ORG, "prod", 11).unwrap();
    let s = create(&ks, server_key(OWNER, "prod", None));
    drop(ks);
    let ks = open(&db);
    assert_eq!(server_decisions(&ks, &s), OK2);
}

fn seed_without_servers(ks: &KeyStore) {
    ks.put_org(
        ACTOR,
        ORG,
        &[DomainInput {
            name: "acme.example".into(),
            id: Some(7),
        }],
    )
    .unwrap();
    ks.put_user(ACTOR, ORG, OWNER, user(Role::Owner, &[]))
        .unwrap();
    ks.put_user(ACTOR, ORG, DEV, user(Role::Member, &[("acme.example", Rw)]))
        .unwrap();
    ks.put_user(
        ACTOR,
        ORG,
        SUPPORT,
        UserInput {
            status: Some(Status::Active),
            ..user(Role::Member, &[("acme.example", Rw)])
        },
    )
    .unwrap();
}

#[test]
fn a_second_instance_applies_server_changes_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let (a, b) = (open(&db), open(&db));
    seed(&a);
    let f = b.follow().unwrap();
    assert!(!f.reloaded);
    let secrets = population(&a);
    let s = create(&a, server_key(DEV, "eu", None));
    a.delete_server(ACTOR, ORG, "eu").unwrap();
    // Added again: the member's access went with the old one, on every
    // instance and in the tables.
    a.put_server(ACTOR, ORG, "eu", 33).unwrap();
    let f = b.follow().unwrap();
    assert!(!f.reloaded, "server changes are applied one by one");
    assert!(f.applied >= 10, "{f:?}");
    for ks in [&a, &b, &open(&db)] {
        assert_eq!(server_decisions(ks, &s), INVISIBLE);
    }
    assert_eq!(matrix(&b, &secrets), matrix(&a, &secrets));
    assert_eq!(b.org_servers(ORG).unwrap(), a.org_servers(ORG).unwrap());
    assert_eq!(matrix(&open(&db), &secrets), matrix(&a, &secrets));
}

#[test]
fn a_follower_that_cannot_read_an_entry_reloads_instead_of_skipping_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let (a, b) = (open(&db), open(&db));
    seed(&a);
    b.follow().unwrap();
    let s = create(&a, server_key(OWNER, "prod", None));
    a.delete_server(ACTOR, ORG, "prod").unwrap();
    // The deletion's payload, as a scopegate that does not know it would
    // see it: a kind it cannot parse.
    let version = a.status().version;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE changes SET payload = '{\"kind\":\"delete_server_v9\"}' WHERE version = ?1",
            [version as i64],
        )
        .unwrap();
    let f = b.follow().unwrap();
    assert!(f.reloaded, "{f:?}");
    assert_eq!(f.version, version);
    assert_eq!(server_decisions(&b, &s), INVISIBLE);
}
