//! Every access pattern of the Team Accounts guide
//! (`shared/seeds/004_6dc002facb9b1303.txt`), as enforced by
//! `KeyStore::check` and the creation rules of `shared/DESIGN.md`.
//!
//! Decisions are asserted through the public API only: `check(Some(secret),
//! target, now)` and the refusal reason in `Decision::outcome`.

use std::collections::BTreeMap;

use scopegate_keystore::{
    Access, CreatedKey, DomainInput, DomainRef, Error, ErrorKind, Identity, KeyStore, NewKey,
    Pepper, Refusal, Role, Status, Target, UserInput,
};

const NOW: i64 = 1_800_000_000;
const ACTOR: &str = "guide-test";
const ORG: &str = "acme";

const PROD: &str = "example.com";
const STAGING: &str = "staging.example.com";

const RW: Access = Access::ReadWrite;
const R: Access = Access::Read;

fn store() -> KeyStore {
    KeyStore::in_memory(Pepper::new(b"guide-test-pepper-0123456789"))
}

fn put_org(ks: &KeyStore, org: &str, domains: &[(&str, Option<u64>)]) {
    let list: Vec<DomainInput> = domains
        .iter()
        .map(|(name, id)| DomainInput {
            name: name.to_string(),
            id: *id,
        })
        .collect();
    ks.put_org(ACTOR, org, &list).expect("put_org");
}

fn user_input(role: Role, access: &[(&str, Access)], status: Option<Status>) -> UserInput {
    UserInput {
        role,
        access: access
            .iter()
            .map(|(d, a)| (d.to_string(), *a))
            .collect::<BTreeMap<_, _>>(),
        status,
    }
}

fn put_user(ks: &KeyStore, org: &str, user: &str, role: Role, access: &[(&str, Access)]) {
    try_put_user(ks, org, user, role, access).expect("put_user");
}

fn try_put_user(
    ks: &KeyStore,
    org: &str,
    user: &str,
    role: Role,
    access: &[(&str, Access)],
) -> Result<(), Error> {
    ks.put_user(ACTOR, org, user, user_input(role, access, None))
        .map(|_| ())
}

fn new_key(user: &str) -> NewKey {
    NewKey {
        user: user.to_string(),
        ..NewKey::default()
    }
}

fn explicit(user: &str, domains: &[&str], access: Option<Access>) -> NewKey {
    NewKey {
        user: user.to_string(),
        domains: Some(domains.iter().map(|d| d.to_string()).collect()),
        access,
        ..NewKey::default()
    }
}

fn org_wide(user: &str) -> NewKey {
    NewKey {
        user: user.to_string(),
        org_wide: true,
        ..NewKey::default()
    }
}

fn create(ks: &KeyStore, org: &str, key: NewKey) -> CreatedKey {
    ks.create_key(ACTOR, org, key, NOW)
        .expect("create_key")
        .value
}

fn create_err(ks: &KeyStore, org: &str, key: NewKey) -> Error {
    match ks.create_key(ACTOR, org, key, NOW) {
        Ok(k) => panic!("key creation should have been refused, got {k:?}"),
        Err(e) => e,
    }
}

fn assert_err(e: &Error, kind: ErrorKind, code: &str) {
    assert_eq!((e.kind, e.code), (kind, code), "unexpected error: {e}");
}

fn check(ks: &KeyStore, key: &CreatedKey, target: Target<'_>) -> Result<Identity, Refusal> {
    check_at(ks, key, target, NOW)
}

fn check_at(
    ks: &KeyStore,
    key: &CreatedKey,
    target: Target<'_>,
    now: i64,
) -> Result<Identity, Refusal> {
    ks.check(Some(&key.secret), target, now).outcome
}

fn dom(name: &str, need: Access) -> Target<'_> {
    Target::Domain(DomainRef::Name(name), need)
}

/// The decision for reading and for writing a domain.
fn rw(ks: &KeyStore, key: &CreatedKey, name: &str) -> (Result<(), Refusal>, Result<(), Refusal>) {
    (
        check(ks, key, dom(name, R)).map(|_| ()),
        check(ks, key, dom(name, RW)).map(|_| ()),
    )
}

const WRITE: (Result<(), Refusal>, Result<(), Refusal>) = (Ok(()), Ok(()));
const READ_ONLY: (Result<(), Refusal>, Result<(), Refusal>) = (Ok(()), Err(Refusal::ReadOnly));
const HIDDEN: (Result<(), Refusal>, Result<(), Refusal>) =
    (Err(Refusal::NotVisible), Err(Refusal::NotVisible));

fn scope(pairs: &[(&str, Access)]) -> BTreeMap<String, Access> {
    pairs.iter().map(|(d, a)| (d.to_string(), *a)).collect()
}

/// The org of the "staging and production" example: an owner, dev and ops.
fn staging_and_production() -> KeyStore {
    let ks = store();
    put_org(&ks, ORG, &[(PROD, Some(1001)), (STAGING, Some(1002))]);
    put_user(&ks, ORG, "owner@example.com", Role::Owner, &[]);
    put_user(
        &ks,
        ORG,
        "dev@example.com",
        Role::Member,
        &[(STAGING, RW), (PROD, R)],
    );
    put_user(
        &ks,
        ORG,
        "ops@example.com",
        Role::Member,
        &[(PROD, RW), (STAGING, RW)],
    );
    ks
}

// ---------------------------------------------------------------------------
// Staging and production
// ---------------------------------------------------------------------------

#[test]
fn staging_dev_default_key_is_scoped_to_writable_staging_only() {
    let ks = staging_and_production();
    let key = create(&ks, ORG, new_key("dev@example.com"));
    // DESIGN: "a member key with no explicit domains gets every domain where
    // the member has read_write now" -- example.com is read-only for dev.
    assert!(!key.meta.org_wide);
    assert_eq!(key.meta.domains, scope(&[(STAGING, RW)]));
    assert_eq!(rw(&ks, &key, STAGING), WRITE);
    // The key's declared scope does not include example.com at all, so the
    // key cannot see it (404), even though dev can read it in the dashboard:
    // "Member-created API keys can only include domains where that member
    // has read/write access."
    assert_eq!(rw(&ks, &key, PROD), HIDDEN);
    assert_eq!(
        check(&ks, &key, Target::Organisation),
        Err(Refusal::OrgWideRequired)
    );
    let id = check(&ks, &key, Target::AnyKey).expect("any live key");
    assert_eq!(id.user, "dev@example.com");
    assert_eq!(id.org, ORG);
    assert_eq!(id.role, Role::Member);
    assert_eq!(id.scope, "staging.example.com=read_write");
    assert_eq!(id.key_id, key.meta.id);
}

#[test]
fn staging_dev_only_reads_production_where_a_key_covers_it() {
    // The "read -> ok, read_write -> ReadOnly" pattern on example.com, for
    // keys that actually cover example.com: an ops key while ops is demoted
    // to read on production, and an owner's read-only key.
    let ks = staging_and_production();
    let ops = create(&ks, ORG, new_key("ops@example.com"));
    assert_eq!(ops.meta.domains, scope(&[(PROD, RW), (STAGING, RW)]));
    assert_eq!(rw(&ks, &ops, PROD), WRITE);
    // ops gets dev's access: the key follows the creator's level at once.
    put_user(
        &ks,
        ORG,
        "ops@example.com",
        Role::Member,
        &[(STAGING, RW), (PROD, R)],
    );
    assert_eq!(rw(&ks, &ops, PROD), READ_ONLY);
    assert_eq!(rw(&ks, &ops, STAGING), WRITE);

    let owner_ro = create(&ks, ORG, explicit("owner@example.com", &[PROD], Some(R)));
    assert_eq!(rw(&ks, &owner_ro, PROD), READ_ONLY);
    assert_eq!(rw(&ks, &owner_ro, STAGING), HIDDEN);
}

#[test]
fn staging_dev_cannot_create_an_org_wide_key() {
    let ks = staging_and_production();
    let e = create_err(&ks, ORG, org_wide("dev@example.com"));
    assert_err(&e, ErrorKind::Rule, "org_wide_requires_admin");
}

#[test]
fn staging_dev_cannot_create_a_key_for_production_explicitly() {
    let ks = staging_and_production();
    let before = ks.status();
    let e = create_err(&ks, ORG, explicit("dev@example.com", &[PROD], None));
    assert_err(&e, ErrorKind::Rule, "domain_not_writable");
    // Not even together with a writable domain, and not read-only either:
    // a key may be made read-only only on domains the member can write.
    let e = create_err(
        &ks,
        ORG,
        explicit("dev@example.com", &[STAGING, PROD], None),
    );
    assert_err(&e, ErrorKind::Rule, "domain_not_writable");
    let e = create_err(&ks, ORG, explicit("dev@example.com", &[PROD], Some(R)));
    assert_err(&e, ErrorKind::Rule, "domain_not_writable");
    // A domain outside the organisation is a different 422.
    let e = create_err(&ks, ORG, explicit("dev@example.com", &["other.com"], None));
    assert_err(&e, ErrorKind::Rule, "domain_not_in_org");
    assert_eq!(ks.status(), before, "refused creations change nothing");
}

#[test]
fn staging_dev_may_make_a_read_only_key() {
    let ks = staging_and_production();
    let default_ro = create(
        &ks,
        ORG,
        NewKey {
            access: Some(R),
            ..new_key("dev@example.com")
        },
    );
    assert_eq!(default_ro.meta.domains, scope(&[(STAGING, R)]));
    assert_eq!(rw(&ks, &default_ro, STAGING), READ_ONLY);
    assert_eq!(rw(&ks, &default_ro, PROD), HIDDEN);

    let explicit_ro = create(&ks, ORG, explicit("dev@example.com", &[STAGING], Some(R)));
    assert_eq!(explicit_ro.meta.domains, scope(&[(STAGING, R)]));
    assert_eq!(rw(&ks, &explicit_ro, STAGING), READ_ONLY);
    assert_eq!(
        check(&ks, &explicit_ro, Target::AnyKey).unwrap().scope,
        "staging.example.com=read"
    );
}

#[test]
fn staging_ops_default_key_writes_both() {
    let ks = staging_and_production();
    let key = create(&ks, ORG, new_key("ops@example.com"));
    assert_eq!(rw(&ks, &key, PROD), WRITE);
    assert_eq!(rw(&ks, &key, STAGING), WRITE);
    assert_eq!(
        check(&ks, &key, Target::Organisation),
        Err(Refusal::OrgWideRequired)
    );
    assert_eq!(
        check(&ks, &key, Target::AnyKey).unwrap().scope,
        "example.com=read_write,staging.example.com=read_write"
    );
}

// ---------------------------------------------------------------------------
// Agency or client domains
// ---------------------------------------------------------------------------

fn agency() -> KeyStore {
    let ks = store();
    put_org(
        &ks,
        "agency",
        &[
            ("client-a.com", Some(11)),
            ("client-b.com", Some(12)),
            ("mail.client-b.com", None),
        ],
    );
    put_user(&ks, "agency", "boss@agency.test", Role::Owner, &[]);
    put_user(
        &ks,
        "agency",
        "client-a@example.com",
        Role::Member,
        &[("client-a.com", RW)],
    );
    put_user(
        &ks,
        "agency",
        "client-b@example.com",
        Role::Member,
        &[("client-b.com", RW), ("mail.client-b.com", RW)],
    );
    put_org(&ks, "elsewhere", &[("elsewhere.com", Some(13))]);
    ks
}

#[test]
fn agency_client_a_sees_only_client_a() {
    let ks = agency();
    let a = create(&ks, "agency", new_key("client-a@example.com"));
    assert_eq!(a.meta.domains, scope(&[("client-a.com", RW)]));
    assert_eq!(rw(&ks, &a, "client-a.com"), WRITE);
    let nowhere = rw(&ks, &a, "exists-nowhere.example");
    assert_eq!(nowhere, HIDDEN);
    // A domain of the same organisation that client-a may not see gets the
    // very same refusal as a domain that exists nowhere.
    assert_eq!(rw(&ks, &a, "client-b.com"), nowhere);
    assert_eq!(rw(&ks, &a, "mail.client-b.com"), nowhere);
    // ... and as a domain of another organisation.
    assert_eq!(rw(&ks, &a, "elsewhere.com"), nowhere);
    // By numeric id too.
    for id in [12, 13, 99_999] {
        assert_eq!(
            check(&ks, &a, Target::Domain(DomainRef::Id(id), R)),
            Err(Refusal::NotVisible),
            "id {id}"
        );
    }
    assert!(check(&ks, &a, Target::Domain(DomainRef::Id(11), RW)).is_ok());
}

#[test]
fn agency_client_b_key_covers_both_of_its_domains() {
    let ks = agency();
    let b = create(&ks, "agency", new_key("client-b@example.com"));
    assert_eq!(
        b.meta.domains,
        scope(&[("client-b.com", RW), ("mail.client-b.com", RW)])
    );
    assert_eq!(rw(&ks, &b, "client-b.com"), WRITE);
    assert_eq!(rw(&ks, &b, "mail.client-b.com"), WRITE);
    assert_eq!(rw(&ks, &b, "client-a.com"), HIDDEN);
    // client-b cannot create a key for client-a's domain.
    let e = create_err(
        &ks,
        "agency",
        explicit("client-b@example.com", &["client-a.com"], None),
    );
    assert_err(&e, ErrorKind::Rule, "domain_not_writable");
}

// ---------------------------------------------------------------------------
// Support and operations teams
// ---------------------------------------------------------------------------

#[test]
fn support_read_only_member_cannot_make_a_default_key() {
    let ks = staging_and_production();
    put_user(
        &ks,
        ORG,
        "support@example.com",
        Role::Member,
        &[(PROD, R), (STAGING, R)],
    );
    let e = create_err(&ks, ORG, new_key("support@example.com"));
    assert_err(&e, ErrorKind::Rule, "no_writable_domains");
    // Asking for read-only does not help: there is still nothing writable.
    let e = create_err(
        &ks,
        ORG,
        NewKey {
            access: Some(R),
            ..new_key("support@example.com")
        },
    );
    assert_err(&e, ErrorKind::Rule, "no_writable_domains");
    let e = create_err(&ks, ORG, explicit("support@example.com", &[PROD], Some(R)));
    assert_err(&e, ErrorKind::Rule, "domain_not_writable");
    // A member with no access at all.
    put_user(&ks, ORG, "nobody@example.com", Role::Member, &[]);
    let e = create_err(&ks, ORG, new_key("nobody@example.com"));
    assert_err(&e, ErrorKind::Rule, "no_writable_domains");
    let e = create_err(&ks, ORG, explicit("nobody@example.com", &[], None));
    assert_err(&e, ErrorKind::Rule, "no_domains");
}

// ---------------------------------------------------------------------------
// Contractors and external partners
// ---------------------------------------------------------------------------

#[test]
fn contractor_upgraded_later_keys_follow_the_creator_within_declared_scope() {
    let ks = staging_and_production();
    // Read on production, read/write on staging: a key can only be made for staging.
    put_user(
        &ks,
        ORG,
        "contractor@partner.test",
        Role::Member,
        &[(PROD, R), (STAGING, RW)],
    );
    let old = create(&ks, ORG, new_key("contractor@partner.test"));
    let old_ro = create(
        &ks,
        ORG,
        explicit("contractor@partner.test", &[STAGING], Some(R)),
    );
    assert_eq!(rw(&ks, &old, STAGING), WRITE);
    assert_eq!(rw(&ks, &old, PROD), HIDDEN);

    // Upgrade production to read/write.
    put_user(
        &ks,
        ORG,
        "contractor@partner.test",
        Role::Member,
        &[(PROD, RW), (STAGING, RW)],
    );
    // The existing key never grants more than its declared scope.
    assert_eq!(rw(&ks, &old, PROD), HIDDEN);
    assert_eq!(rw(&ks, &old, STAGING), WRITE);
    assert_eq!(rw(&ks, &old_ro, STAGING), READ_ONLY);
    // A new key gets the wider default scope.
    let new = create(&ks, ORG, new_key("contractor@partner.test"));
    assert_eq!(new.meta.domains, scope(&[(PROD, RW), (STAGING, RW)]));
    assert_eq!(rw(&ks, &new, PROD), WRITE);

    // Downgrade staging to read: every key follows on the next check.
    put_user(
        &ks,
        ORG,
        "contractor@partner.test",
        Role::Member,
        &[(PROD, RW), (STAGING, R)],
    );
    assert_eq!(rw(&ks, &old, STAGING), READ_ONLY);
    assert_eq!(rw(&ks, &new, STAGING), READ_ONLY);
    assert_eq!(rw(&ks, &new, PROD), WRITE);
    // Remove staging entirely: the keys no longer see it.
    put_user(
        &ks,
        ORG,
        "contractor@partner.test",
        Role::Member,
        &[(PROD, RW)],
    );
    assert_eq!(rw(&ks, &old, STAGING), HIDDEN);
    assert_eq!(rw(&ks, &new, STAGING), HIDDEN);
    // Give staging back: the declared scope applies again.
    put_user(
        &ks,
        ORG,
        "contractor@partner.test",
        Role::Member,
        &[(PROD, RW), (STAGING, RW)],
    );
    assert_eq!(rw(&ks, &old, STAGING), WRITE);
    assert_eq!(rw(&ks, &old_ro, STAGING), READ_ONLY);
}

#[test]
fn contractor_read_only_first_then_upgraded_can_create_a_key() {
    let ks = staging_and_production();
    put_user(
        &ks,
        ORG,
        "contractor@partner.test",
        Role::Member,
        &[(STAGING, R)],
    );
    let e = create_err(&ks, ORG, new_key("contractor@partner.test"));
    assert_err(&e, ErrorKind::Rule, "no_writable_domains");
    put_user(
        &ks,
        ORG,
        "contractor@partner.test",
        Role::Member,
        &[(STAGING, RW)],
    );
    let key = create(&ks, ORG, new_key("contractor@partner.test"));
    assert_eq!(rw(&ks, &key, STAGING), WRITE);
}

// ---------------------------------------------------------------------------
// Offboarding
// ---------------------------------------------------------------------------

fn dead(r: Result<Identity, Refusal>) -> bool {
    matches!(r, Err(Refusal::RevokedKey) | Err(Refusal::CreatorInactive))
}

#[test]
fn offboarding_deactivate_stops_every_key_of_that_user_at_once() {
    let ks = staging_and_production();
    let dev_keys = vec![
        create(&ks, ORG, new_key("dev@example.com")),
        create(&ks, ORG, explicit("dev@example.com", &[STAGING], Some(R))),
        create(
            &ks,
            ORG,
            NewKey {
                secret: Some("dev-imported-legacy-1".into()),
                ..new_key("dev@example.com")
            },
        ),
    ];
    let ops = create(&ks, ORG, new_key("ops@example.com"));
    let before = ks.status();
    for k in &dev_keys {
        assert!(check(&ks, k, dom(STAGING, R)).is_ok());
    }

    // Any spelling of the user id.
    let applied = ks
        .deactivate_user(ACTOR, ORG, "Dev@Example.COM")
        .expect("deactivate");
    assert_eq!(applied.version, before.version + 1);
    for k in &dev_keys {
        for target in [dom(STAGING, R), dom(STAGING, RW), Target::AnyKey] {
            let r = check(&ks, k, target);
            assert!(dead(r.clone()), "{target:?}: {r:?}");
        }
    }
    // Other users' keys keep working.
    assert_eq!(rw(&ks, &ops, STAGING), WRITE);
    assert_eq!(rw(&ks, &ops, PROD), WRITE);
    let after = ks.status();
    assert_eq!(after.keys, before.keys - dev_keys.len());
    assert_eq!(after.users, before.users, "deactivated users remain");
    // The admin view says so.
    for m in ks
        .list_keys(ORG, Some("dev@example.com"), None, NOW)
        .unwrap()
    {
        assert_eq!(m.state, "revoked", "{m:?}");
        assert!(m.revoked_at.is_some());
    }
    // A deactivated user cannot create keys.
    let e = create_err(&ks, ORG, new_key("dev@example.com"));
    assert_err(&e, ErrorKind::Rule, "user_deactivated");
    // Deactivating again changes nothing.
    let again = ks.deactivate_user(ACTOR, ORG, "dev@example.com").unwrap();
    assert_eq!(again.version, after.version);
}

#[test]
fn offboarding_reactivating_does_not_revive_old_keys() {
    let ks = staging_and_production();
    let old = create(&ks, ORG, new_key("dev@example.com"));
    ks.deactivate_user(ACTOR, ORG, "dev@example.com").unwrap();
    let back = ks
        .put_user(
            ACTOR,
            ORG,
            "dev@example.com",
            user_input(
                Role::Member,
                &[(STAGING, RW), (PROD, R)],
                Some(Status::Active),
            ),
        )
        .unwrap();
    assert!(!back.value, "not a new user");
    for target in [dom(STAGING, R), dom(STAGING, RW), Target::AnyKey] {
        let r = check(&ks, &old, target);
        assert!(dead(r.clone()), "{r:?}");
    }
    // Fresh keys of the reactivated user work.
    let fresh = create(&ks, ORG, new_key("dev@example.com"));
    assert_eq!(rw(&ks, &fresh, STAGING), WRITE);
    assert!(dead(check(&ks, &old, dom(STAGING, RW))));
}

#[test]
fn offboarding_via_put_user_status_deactivated() {
    let ks = staging_and_production();
    let k = create(&ks, ORG, new_key("dev@example.com"));
    ks.put_user(
        ACTOR,
        ORG,
        "dev@example.com",
        user_input(Role::Member, &[(STAGING, RW)], Some(Status::Deactivated)),
    )
    .unwrap();
    assert!(dead(check(&ks, &k, dom(STAGING, R))));
    ks.put_user(
        ACTOR,
        ORG,
        "dev@example.com",
        user_input(Role::Member, &[(STAGING, RW)], Some(Status::Active)),
    )
    .unwrap();
    assert!(dead(check(&ks, &k, dom(STAGING, R))));
}

#[test]
fn offboarding_delete_user_and_recreate_does_not_revive_keys() {
    let ks = staging_and_production();
    let dev = create(&ks, ORG, new_key("dev@example.com"));
    let dev_ro = create(&ks, ORG, explicit("dev@example.com", &[STAGING], Some(R)));
    let ops = create(&ks, ORG, new_key("ops@example.com"));
    let before = ks.status();
    ks.delete_user(ACTOR, ORG, "dev@example.com").unwrap();
    let after = ks.status();
    assert_eq!(after.users, before.users - 1);
    assert_eq!(after.keys, before.keys - 2);
    for k in [&dev, &dev_ro] {
        assert!(dead(check(&ks, k, dom(STAGING, R))));
    }
    assert_eq!(rw(&ks, &ops, STAGING), WRITE);
    // Deleting again: the user is gone.
    let e = ks.delete_user(ACTOR, ORG, "dev@example.com").unwrap_err();
    assert_err(&e, ErrorKind::NotFound, "user_not_found");
    let e = ks
        .deactivate_user(ACTOR, ORG, "dev@example.com")
        .unwrap_err();
    assert_err(&e, ErrorKind::NotFound, "user_not_found");

    // Re-create a user with the same id and the same access.
    let created = ks
        .put_user(
            ACTOR,
            ORG,
            "dev@example.com",
            user_input(Role::Member, &[(STAGING, RW), (PROD, R)], None),
        )
        .unwrap();
    assert!(created.value, "a new user");
    for k in [&dev, &dev_ro] {
        for target in [dom(STAGING, R), Target::AnyKey] {
            assert!(dead(check(&ks, k, target)));
        }
    }
    let fresh = create(&ks, ORG, new_key("dev@example.com"));
    assert_eq!(rw(&ks, &fresh, STAGING), WRITE);
    // Even re-created as an admin, old keys stay dead.
    put_user(&ks, ORG, "dev@example.com", Role::Admin, &[]);
    assert!(dead(check(&ks, &dev, dom(STAGING, R))));
}

// ---------------------------------------------------------------------------
// "Admins and owners always have access to every domain"
// ---------------------------------------------------------------------------

#[test]
fn admins_org_wide_keys_see_domains_added_later() {
    let ks = staging_and_production();
    put_user(&ks, ORG, "admin@example.com", Role::Admin, &[]);
    let owner_wide = create(&ks, ORG, org_wide("owner@example.com"));
    let admin_wide = create(&ks, ORG, org_wide("admin@example.com"));
    let admin_scoped = create(&ks, ORG, new_key("admin@example.com"));
    assert_eq!(
        admin_scoped.meta.domains,
        scope(&[(PROD, RW), (STAGING, RW)])
    );
    assert!(owner_wide.meta.org_wide && owner_wide.meta.domains.is_empty());
    let ops = create(&ks, ORG, new_key("ops@example.com"));

    put_org(
        &ks,
        ORG,
        &[
            (PROD, Some(1001)),
            (STAGING, Some(1002)),
            ("new.example.com", Some(1003)),
        ],
    );
    for k in [&owner_wide, &admin_wide] {
        assert_eq!(rw(&ks, k, "new.example.com"), WRITE);
        assert!(check(&ks, k, Target::Domain(DomainRef::Id(1003), RW)).is_ok());
        assert!(check(&ks, k, Target::Organisation).is_ok());
        assert_eq!(check(&ks, k, Target::AnyKey).unwrap().scope, "*");
    }
    // A domain-scoped admin key does not grow.
    assert_eq!(rw(&ks, &admin_scoped, "new.example.com"), HIDDEN);
    assert_eq!(rw(&ks, &admin_scoped, PROD), WRITE);
    // Nor does a member key.
    assert_eq!(rw(&ks, &ops, "new.example.com"), HIDDEN);
    // A new default key of the admin includes it.
    let admin_new = create(&ks, ORG, new_key("admin@example.com"));
    assert_eq!(rw(&ks, &admin_new, "new.example.com"), WRITE);

    // Removing a domain from the organisation hides it from every key.
    put_org(
        &ks,
        ORG,
        &[(PROD, Some(1001)), ("new.example.com", Some(1003))],
    );
    for k in [&owner_wide, &admin_wide, &admin_scoped, &ops] {
        assert_eq!(rw(&ks, k, STAGING), HIDDEN);
        assert_eq!(
            check(&ks, k, Target::Domain(DomainRef::Id(1002), R)),
            Err(Refusal::NotVisible)
        );
    }
}

#[test]
fn admin_may_not_hold_per_domain_access() {
    let ks = staging_and_production();
    let e = try_put_user(&ks, ORG, "admin@example.com", Role::Admin, &[(PROD, R)]).unwrap_err();
    assert_err(&e, ErrorKind::Rule, "access_for_admin");
    let e = try_put_user(
        &ks,
        ORG,
        "member@example.com",
        Role::Member,
        &[("other.com", R)],
    )
    .unwrap_err();
    assert_err(&e, ErrorKind::Rule, "domain_not_in_org");
}

#[test]
fn demoting_an_admin_narrows_their_org_wide_key_immediately() {
    let ks = staging_and_production();
    put_user(&ks, ORG, "admin@example.com", Role::Admin, &[]);
    let wide = create(&ks, ORG, org_wide("admin@example.com"));
    assert!(check(&ks, &wide, Target::Organisation).is_ok());
    assert_eq!(rw(&ks, &wide, PROD), WRITE);

    put_user(&ks, ORG, "admin@example.com", Role::Member, &[(STAGING, R)]);
    assert_eq!(
        check(&ks, &wide, Target::Organisation),
        Err(Refusal::OrgWideRequired)
    );
    assert_eq!(rw(&ks, &wide, STAGING), READ_ONLY);
    assert_eq!(rw(&ks, &wide, PROD), HIDDEN);
    let id = check(&ks, &wide, Target::AnyKey).unwrap();
    assert_eq!(id.role, Role::Member);
    assert_eq!(id.scope, "staging.example.com=read");

    // Promote again: the org-wide key is whole again.
    put_user(&ks, ORG, "admin@example.com", Role::Admin, &[]);
    assert!(check(&ks, &wide, Target::Organisation).is_ok());
    assert_eq!(rw(&ks, &wide, PROD), WRITE);
    assert_eq!(check(&ks, &wide, Target::AnyKey).unwrap().scope, "*");
}

#[test]
fn owner_demoted_to_admin_keeps_org_wide_access() {
    let ks = staging_and_production();
    put_user(&ks, ORG, "second@example.com", Role::Owner, &[]);
    let wide = create(&ks, ORG, org_wide("second@example.com"));
    put_user(&ks, ORG, "second@example.com", Role::Admin, &[]);
    assert!(check(&ks, &wide, Target::Organisation).is_ok());
    assert_eq!(check(&ks, &wide, Target::AnyKey).unwrap().role, Role::Admin);
}

// ---------------------------------------------------------------------------
// At least one owner must remain
// ---------------------------------------------------------------------------

#[test]
fn last_owner_cannot_be_deactivated_deleted_or_demoted() {
    let ks = staging_and_production();
    let owner = "owner@example.com";
    let v = ks.status().version;
    let e = ks.deactivate_user(ACTOR, ORG, owner).unwrap_err();
    assert_err(&e, ErrorKind::Conflict, "last_owner");
    let e = ks.delete_user(ACTOR, ORG, owner).unwrap_err();
    assert_err(&e, ErrorKind::Conflict, "last_owner");
    for role in [Role::Admin, Role::Member] {
        let e = try_put_user(&ks, ORG, owner, role, &[]).unwrap_err();
        assert_err(&e, ErrorKind::Conflict, "last_owner");
    }
    let e = ks
        .put_user(
            ACTOR,
            ORG,
            owner,
            user_input(Role::Owner, &[], Some(Status::Deactivated)),
        )
        .unwrap_err();
    assert_err(&e, ErrorKind::Conflict, "last_owner");
    assert_eq!(ks.status().version, v, "refusals change nothing");
    // Re-putting the owner as an active owner is fine.
    put_user(&ks, ORG, owner, Role::Owner, &[]);

    // A deactivated second owner does not count.
    ks.put_user(
        ACTOR,
        ORG,
        "second@example.com",
        user_input(Role::Owner, &[], Some(Status::Deactivated)),
    )
    .unwrap();
    let e = ks.deactivate_user(ACTOR, ORG, owner).unwrap_err();
    assert_err(&e, ErrorKind::Conflict, "last_owner");
    // Neither does an owner of another organisation.
    put_org(&ks, "other-org", &[("other.com", None)]);
    put_user(&ks, "other-org", owner, Role::Owner, &[]);
    let e = ks.deactivate_user(ACTOR, ORG, owner).unwrap_err();
    assert_err(&e, ErrorKind::Conflict, "last_owner");
}

#[test]
fn last_owner_may_leave_once_a_second_owner_exists() {
    let ks = staging_and_production();
    put_user(&ks, ORG, "second@example.com", Role::Owner, &[]);
    // Demote the first: fine.
    put_user(&ks, ORG, "owner@example.com", Role::Admin, &[]);
    // Now the second is the last one.
    let e = ks
        .deactivate_user(ACTOR, ORG, "second@example.com")
        .unwrap_err();
    assert_err(&e, ErrorKind::Conflict, "last_owner");
    put_user(&ks, ORG, "owner@example.com", Role::Owner, &[]);
    ks.deactivate_user(ACTOR, ORG, "second@example.com")
        .expect("another active owner remains");
    let e = ks.delete_user(ACTOR, ORG, "owner@example.com").unwrap_err();
    assert_err(&e, ErrorKind::Conflict, "last_owner");
    // Deleting the deactivated owner is fine.
    ks.delete_user(ACTOR, ORG, "second@example.com").unwrap();
    put_user(&ks, ORG, "third@example.com", Role::Owner, &[]);
    ks.delete_user(ACTOR, ORG, "owner@example.com").unwrap();
}

// ---------------------------------------------------------------------------
// Numeric domain ids
// ---------------------------------------------------------------------------

#[test]
fn numeric_domain_ids_resolve_like_names() {
    let ks = staging_and_production();
    put_org(&ks, "other-org", &[("other.com", Some(1001))]);
    let dev = create(&ks, ORG, new_key("dev@example.com"));
    let ops = create(&ks, ORG, new_key("ops@example.com"));
    for key in [&dev, &ops] {
        for (name, id) in [(PROD, 1001), (STAGING, 1002)] {
            for need in [R, RW] {
                assert_eq!(
                    check(&ks, key, Target::Domain(DomainRef::Id(id), need)),
                    check(&ks, key, dom(name, need)),
                    "{name} / {id} / {need:?}"
                );
            }
        }
        // Unknown ids look like unseen domains.
        assert_eq!(
            check(&ks, key, Target::Domain(DomainRef::Id(4242), R)),
            Err(Refusal::NotVisible)
        );
    }
    // Renumbering applies on the next check.
    put_org(&ks, ORG, &[(PROD, Some(2001)), (STAGING, None)]);
    assert_eq!(
        check(&ks, &ops, Target::Domain(DomainRef::Id(1001), R)),
        Err(Refusal::NotVisible)
    );
    assert_eq!(
        check(&ks, &ops, Target::Domain(DomainRef::Id(1002), R)),
        Err(Refusal::NotVisible)
    );
    assert!(check(&ks, &ops, Target::Domain(DomainRef::Id(2001), RW)).is_ok());
    assert!(check(&ks, &ops, dom(STAGING, RW)).is_ok());
}

#[test]
fn put_org_canonicalises_and_refuses_duplicates() {
    let ks = store();
    let created = ks
        .put_org(
            ACTOR,
            "o",
            &[
                DomainInput {
                    name: "Example.COM.".into(),
                    id: Some(1),
                },
                DomainInput {
                    name: "bücher.example".into(),
                    id: None,
                },
            ],
        )
        .unwrap();
    assert!(created.value);
    let names: Vec<String> = ks
        .org_domains("o")
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["example.com", "xn--bcher-kva.example"]);
    let dup = |a: &str, ia, b: &str, ib| {
        ks.put_org(
            ACTOR,
            "o",
            &[
                DomainInput {
                    name: a.into(),
                    id: ia,
                },
                DomainInput {
                    name: b.into(),
                    id: ib,
                },
            ],
        )
        .unwrap_err()
    };
    assert_err(
        &dup("example.com", None, "EXAMPLE.com.", None),
        ErrorKind::Invalid,
        "duplicate_domain",
    );
    assert_err(
        &dup("a.example", Some(5), "b.example", Some(5)),
        ErrorKind::Invalid,
        "duplicate_domain_id",
    );
    assert_err(
        &dup("a_b.example", None, "b.example", None),
        ErrorKind::Invalid,
        "invalid_domain",
    );
    let e = ks.put_org(ACTOR, "bad org", &[]).unwrap_err();
    assert_err(&e, ErrorKind::Invalid, "invalid_org_id");
}

// ---------------------------------------------------------------------------
// Key states and formats
// ---------------------------------------------------------------------------

#[test]
fn expired_keys_are_refused() {
    let ks = staging_and_production();
    let k = create(
        &ks,
        ORG,
        NewKey {
            expires_at: Some(NOW + 100),
            ..new_key("ops@example.com")
        },
    );
    assert!(check_at(&ks, &k, dom(PROD, RW), NOW + 99).is_ok());
    assert_eq!(
        check_at(&ks, &k, dom(PROD, RW), NOW + 100),
        Err(Refusal::ExpiredKey)
    );
    assert_eq!(
        check_at(&ks, &k, Target::AnyKey, NOW + 10_000),
        Err(Refusal::ExpiredKey)
    );
    assert_eq!(ks.get_key(&k.meta.id, NOW + 100).unwrap().state, "expired");
    assert_eq!(ks.get_key(&k.meta.id, NOW).unwrap().state, "active");
    for past in [NOW, NOW - 1] {
        let e = create_err(
            &ks,
            ORG,
            NewKey {
                expires_at: Some(past),
                ..new_key("ops@example.com")
            },
        );
        assert_err(&e, ErrorKind::Rule, "expiry_in_past");
    }
}

#[test]
fn revoked_keys_are_refused() {
    let ks = staging_and_production();
    let k = create(&ks, ORG, new_key("ops@example.com"));
    let other = create(&ks, ORG, new_key("ops@example.com"));
    let before = ks.status();
    let applied = ks.revoke_key(ACTOR, &k.meta.id, NOW).unwrap();
    assert_eq!(applied.version, before.version + 1);
    assert_eq!(applied.value.state, "revoked");
    for target in [
        dom(PROD, R),
        dom(PROD, RW),
        Target::AnyKey,
        Target::Organisation,
    ] {
        assert_eq!(check(&ks, &k, target), Err(Refusal::RevokedKey));
    }
    assert_eq!(rw(&ks, &other, PROD), WRITE);
    assert_eq!(ks.status().keys, before.keys - 1);
    // Revoking again changes nothing.
    let again = ks.revoke_key(ACTOR, &k.meta.id, NOW + 5).unwrap();
    assert_eq!(again.version, applied.version);
    assert_eq!(again.value.revoked_at, applied.value.revoked_at);
    let e = ks
        .revoke_key(ACTOR, "key_0000000000000000", NOW)
        .unwrap_err();
    assert_err(&e, ErrorKind::NotFound, "key_not_found");
}

#[test]
fn malformed_missing_and_unknown_keys() {
    let ks = staging_and_production();
    let k = create(&ks, ORG, new_key("ops@example.com"));
    assert!(k.secret.starts_with("sg_"));
    // Flip each character after the prefix.
    for i in 3..k.secret.len() {
        let mut b = k.secret.clone().into_bytes();
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        let flipped = String::from_utf8(b).unwrap();
        assert_eq!(
            ks.check(Some(&flipped), dom(PROD, R), NOW).outcome,
            Err(Refusal::MalformedKey),
            "position {i}"
        );
    }
    for bad in [
        "",
        "sg_",
        &k.secret[..k.secret.len() - 1],
        &format!("{} ", k.secret),
        "has space",
    ] {
        assert_eq!(
            ks.check(Some(bad), dom(PROD, R), NOW).outcome,
            Err(Refusal::MalformedKey),
            "{bad:?}"
        );
    }
    assert_eq!(
        ks.check(None, dom(PROD, R), NOW).outcome,
        Err(Refusal::MissingKey)
    );
    // A well-formed key this store never issued (another store's key).
    let elsewhere = staging_and_production();
    let foreign = create(&elsewhere, ORG, new_key("ops@example.com"));
    assert_eq!(
        ks.check(Some(&foreign.secret), dom(PROD, R), NOW).outcome,
        Err(Refusal::UnknownKey)
    );
    assert_eq!(
        ks.check(Some("no-such-imported-token"), Target::AnyKey, NOW)
            .outcome,
        Err(Refusal::UnknownKey)
    );
    for r in [
        Refusal::MissingKey,
        Refusal::MalformedKey,
        Refusal::UnknownKey,
        Refusal::RevokedKey,
        Refusal::ExpiredKey,
        Refusal::CreatorInactive,
    ] {
        assert!(r.is_authentication());
    }
    assert!(!Refusal::NotVisible.is_authentication());
}

#[test]
fn imported_foreign_secret_works_and_duplicates_conflict() {
    let ks = staging_and_production();
    let imported = create(
        &ks,
        ORG,
        NewKey {
            secret: Some("pm-legacy-token-123".into()),
            name: Some("legacy".into()),
            ..new_key("ops@example.com")
        },
    );
    assert_eq!(imported.secret, "pm-legacy-token-123");
    let d = ks.check(Some("pm-legacy-token-123"), dom(PROD, RW), NOW);
    assert_eq!(d.outcome.unwrap().key_id, imported.meta.id);
    assert_eq!(d.version, ks.status().version);

    let before = ks.status();
    let e = create_err(
        &ks,
        ORG,
        NewKey {
            secret: Some("pm-legacy-token-123".into()),
            ..new_key("dev@example.com")
        },
    );
    assert_err(&e, ErrorKind::Conflict, "key_exists");
    assert!(!e.message.contains("pm-legacy-token-123"), "{}", e.message);
    // Duplicates within one batch, and all-or-nothing batches.
    let e = ks
        .create_keys(
            ACTOR,
            ORG,
            vec![
                NewKey {
                    secret: Some("batch-token-1".into()),
                    ..new_key("ops@example.com")
                },
                NewKey {
                    secret: Some("batch-token-1".into()),
                    ..new_key("ops@example.com")
                },
            ],
            NOW,
        )
        .unwrap_err();
    assert_err(&e, ErrorKind::Conflict, "key_exists");
    let e = ks
        .create_keys(
            ACTOR,
            ORG,
            vec![
                NewKey {
                    secret: Some("batch-token-2".into()),
                    ..new_key("ops@example.com")
                },
                org_wide("dev@example.com"),
            ],
            NOW,
        )
        .unwrap_err();
    assert_err(&e, ErrorKind::Rule, "org_wide_requires_admin");
    assert_eq!(
        ks.check(Some("batch-token-2"), Target::AnyKey, NOW).outcome,
        Err(Refusal::UnknownKey)
    );
    assert_eq!(ks.status(), before);
    // Secrets that cannot be keys are refused at import.
    for bad in ["has space", "", "sg_notachecksum"] {
        let e = create_err(
            &ks,
            ORG,
            NewKey {
                secret: Some(bad.into()),
                ..new_key("ops@example.com")
            },
        );
        assert_err(&e, ErrorKind::Invalid, "invalid_secret");
    }
    // Importing an issued secret (e.g. moving between stores) works too.
    let issued = create(&ks, ORG, new_key("ops@example.com"));
    let e = create_err(
        &ks,
        ORG,
        NewKey {
            secret: Some(issued.secret.clone()),
            ..new_key("ops@example.com")
        },
    );
    assert_err(&e, ErrorKind::Conflict, "key_exists");
    let other = staging_and_production();
    let moved = create(
        &other,
        ORG,
        NewKey {
            secret: Some(issued.secret.clone()),
            ..new_key("ops@example.com")
        },
    );
    assert!(check(&other, &moved, dom(PROD, RW)).is_ok());
}

#[test]
fn the_secret_never_appears_in_metadata_or_debug_output() {
    let ks = staging_and_production();
    let issued = create(
        &ks,
        ORG,
        NewKey {
            name: Some("ci".into()),
            expires_at: Some(NOW + 3600),
            ..new_key("ops@example.com")
        },
    );
    let imported = create(
        &ks,
        ORG,
        NewKey {
            secret: Some("pm-legacy-token-123".into()),
            ..new_key("ops@example.com")
        },
    );
    ks.revoke_key(ACTOR, &imported.meta.id, NOW).unwrap();
    let all = ks.list_keys(ORG, None, None, NOW).unwrap();
    assert_eq!(all.len(), 2);
    let by_user = ks
        .list_keys(ORG, Some("OPS@example.com"), None, NOW)
        .unwrap();
    assert_eq!(by_user, all);
    for created in [&issued, &imported] {
        let secret = created.secret.as_str();
        let debug = format!("{created:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains(&created.meta.id));
        let pretty = format!("{created:#?}");
        assert!(!pretty.contains(secret));
        let meta = ks.get_key(&created.meta.id, NOW).unwrap();
        let json = serde_json::to_string(&meta).unwrap();
        assert!(!json.contains(secret), "{json}");
        assert!(!format!("{meta:?}").contains(secret));
        assert!(!serde_json::to_string(&created.meta)
            .unwrap()
            .contains(secret));
    }
    let json = serde_json::to_string(&all).unwrap();
    for secret in [&issued.secret, &imported.secret] {
        assert!(!json.contains(secret.as_str()));
        // Not even a long piece of it.
        assert!(!json.contains(&secret[3..19]));
    }
    let value: serde_json::Value = serde_json::to_value(&all[0]).unwrap();
    let obj = value.as_object().unwrap();
    for field in ["key", "secret", "digest"] {
        assert!(!obj.contains_key(field), "{field} in {value}");
    }
}

#[test]
fn unknown_organisation_and_user_on_creation() {
    let ks = staging_and_production();
    let e = create_err(&ks, "no-such-org", new_key("ops@example.com"));
    assert_err(&e, ErrorKind::NotFound, "org_not_found");
    let e = create_err(&ks, ORG, new_key("ghost@example.com"));
    assert_err(&e, ErrorKind::NotFound, "user_not_found");
    let e = create_err(&ks, ORG, new_key("not-an-email"));
    assert_err(&e, ErrorKind::Invalid, "invalid_user_id");
    let e = create_err(
        &ks,
        ORG,
        NewKey {
            org_wide: true,
            domains: Some(vec![PROD.into()]),
            ..new_key("owner@example.com")
        },
    );
    assert_err(&e, ErrorKind::Rule, "org_wide_with_domains");
    let e = create_err(
        &ks,
        ORG,
        NewKey {
            org_wide: true,
            access: Some(R),
            ..new_key("owner@example.com")
        },
    );
    assert_err(&e, ErrorKind::Rule, "org_wide_read_only");
    let e = ks.list_keys("no-such-org", None, None, NOW).unwrap_err();
    assert_err(&e, ErrorKind::NotFound, "org_not_found");
    let e = ks.get_key("key_0000000000000000", NOW).unwrap_err();
    assert_err(&e, ErrorKind::NotFound, "key_not_found");
}

#[test]
fn user_ids_and_domains_are_canonicalised_on_input() {
    let ks = store();
    put_org(
        &ks,
        ORG,
        &[("Example.COM", None), ("Staging.Example.com.", None)],
    );
    put_user(&ks, ORG, "Owner@Example.com", Role::Owner, &[]);
    put_user(
        &ks,
        ORG,
        "DEV@example.com",
        Role::Member,
        &[("STAGING.example.com.", RW), ("example.COM", R)],
    );
    let users = ks.list_users(ORG).unwrap();
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["dev@example.com", "owner@example.com"]);
    let k = create(
        &ks,
        ORG,
        explicit("Dev@Example.Com", &["Staging.EXAMPLE.com."], None),
    );
    assert_eq!(k.meta.user, "dev@example.com");
    assert_eq!(k.meta.domains, scope(&[(STAGING, RW)]));
    assert_eq!(rw(&ks, &k, STAGING), WRITE);
    // The same user, however written: updating it is not a new user.
    let again = ks
        .put_user(
            ACTOR,
            ORG,
            "dev@EXAMPLE.com",
            user_input(Role::Member, &[(STAGING, R)], None),
        )
        .unwrap();
    assert!(!again.value);
    assert_eq!(rw(&ks, &k, STAGING), READ_ONLY);
}

#[test]
fn decisions_carry_the_deciding_version() {
    let ks = staging_and_production();
    let k = create(&ks, ORG, new_key("ops@example.com"));
    let v1 = ks.status().version;
    assert_eq!(ks.check(Some(&k.secret), Target::AnyKey, NOW).version, v1);
    let applied = ks.revoke_key(ACTOR, &k.meta.id, NOW).unwrap();
    let d = ks.check(Some(&k.secret), Target::AnyKey, NOW);
    assert_eq!(d.version, applied.version);
    assert!(d.version > v1);
    assert_eq!(d.outcome, Err(Refusal::RevokedKey));
}

#[test]
fn offboarding_reaches_concurrent_readers_on_the_next_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ks = staging_and_production();
    let key = create(&ks, ORG, new_key("dev@example.com"));
    let other = create(&ks, ORG, new_key("ops@example.com"));
    let stop = AtomicBool::new(false);
    let (deactivated_at, seen) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let d = ks.check(Some(&key.secret), dom(STAGING, RW), NOW);
                        let o = ks.check(Some(&other.secret), dom(STAGING, RW), NOW);
                        assert!(o.outcome.is_ok(), "{o:?}");
                        seen.push((d.version, d.outcome));
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let v = ks
            .deactivate_user(ACTOR, ORG, "dev@example.com")
            .unwrap()
            .version;
        // The very next request after the answer is refused.
        assert!(dead(
            ks.check(Some(&key.secret), dom(STAGING, RW), NOW).outcome
        ));
        std::thread::sleep(std::time::Duration::from_millis(20));
        stop.store(true, Ordering::SeqCst);
        let seen: Vec<_> = readers
            .into_iter()
            .flat_map(|r| r.join().unwrap())
            .collect();
        (v, seen)
    });
    assert!(seen.iter().any(|(v, _)| *v < deactivated_at));
    assert!(seen.iter().any(|(v, _)| *v >= deactivated_at));
    // Every decision agrees with the version that made it.
    for (v, outcome) in seen {
        if v < deactivated_at {
            assert!(outcome.is_ok(), "version {v}: {outcome:?}");
        } else {
            assert!(dead(outcome.clone()), "version {v}: {outcome:?}");
        }
    }
}

/// DESIGN "Write path": every change is validated before it is committed;
/// an empty batch is refused and changes nothing.
#[test]
fn empty_key_batch_is_refused_or_changes_nothing() {
    let ks = staging_and_production();
    let before = ks.status();
    match ks.create_keys(ACTOR, "no-such-org", Vec::new(), NOW) {
        Err(e) => assert_err(&e, ErrorKind::NotFound, "org_not_found"),
        Ok(applied) => panic!(
            "an empty batch for a missing organisation was committed at version {}",
            applied.version
        ),
    }
    assert_eq!(ks.status(), before);
    // For an existing organisation: either refused, or a no-op at the
    // current version.
    if let Ok(applied) = ks.create_keys(ACTOR, ORG, Vec::new(), NOW) {
        assert_eq!(applied.version, before.version);
        assert!(applied.value.is_empty());
    }
    assert_eq!(ks.status(), before);
}
