//! Key lifecycle changes through both stores: a rotation, a key's new rate
//! limit and shadow, an organisation's default limit and usage batches, made
//! on one instance, seen by another that follows the same store (a fleet),
//! and still there after both are reopened.

use std::collections::BTreeMap;

use scopegate_keystore::{
    Access, DomainInput, KeyPatch, KeyStore, NewKey, Pepper, RateLimit, Role, Target, UserInput,
};
use scopegate_suite::pg::fresh_database_url;

const ACTOR: &str = "lifecycle-test";
const NOW: i64 = 1_800_000_000;
const PEPPER: &[u8] = b"lifecycle-test-pepper-0123456789";

fn open(location: &str) -> KeyStore {
    KeyStore::open_location(location, Pepper::new(PEPPER))
        .unwrap_or_else(|e| panic!("opening {location}: {e}"))
}

fn admitted(ks: &KeyStore, secret: &str, now: i64) -> bool {
    ks.check(Some(secret), Target::AnyKey, now).outcome.is_ok()
}

const LIMIT: RateLimit = RateLimit {
    per_second: 5,
    burst: 10,
};

/// The policy an instance enforces for a key, by public id.
fn policy_of(ks: &KeyStore, id: &str) -> (Option<RateLimit>, bool, bool) {
    let snap = ks.snapshot();
    let n = scopegate_keystore::secret::parse_id(id).expect("a scopegate id");
    let p = snap.side(n).and_then(|s| s.policy.clone());
    (
        p.as_ref().and_then(|p| p.rate_limit),
        p.as_ref().is_some_and(|p| p.shadow.is_some()),
        p.as_ref().is_some_and(|p| p.rotated),
    )
}

/// Runs the whole scenario on two instances of one store.
fn scenario(location: &str) {
    let a = open(location);
    let b = open(location);
    a.put_org(
        ACTOR,
        "o",
        &[DomainInput {
            name: "a.example".into(),
            id: None,
        }],
    )
    .unwrap();
    let owner = UserInput {
        role: Role::Owner,
        access: BTreeMap::new(),
        status: None,
    };
    a.put_user(ACTOR, "o", "owner@o.test", owner).unwrap();
    let key = a
        .create_key(
            ACTOR,
            "o",
            NewKey {
                user: "owner@o.test".into(),
                name: Some("ci".into()),
                rate_limit: Some(LIMIT),
                ..NewKey::default()
            },
            NOW,
        )
        .unwrap()
        .value;
    let old_id = key.meta.id.clone();

    // Rotation on A, seen by B once it follows the log.
    let rotated = a.rotate_key(ACTOR, &old_id, 30, NOW).unwrap().value;
    let (new, old_after) = rotated;
    assert_eq!(new.meta.name.as_deref(), Some("ci"));
    assert_eq!(new.meta.domains, key.meta.domains);
    assert_eq!(new.meta.rate_limit, Some(LIMIT), "limits carry over");
    assert_eq!(old_after.replaced_by.as_deref(), Some(new.meta.id.as_str()));
    b.follow().unwrap();
    for ks in [&a, &b] {
        assert!(admitted(ks, &key.secret, NOW + 29), "old key within grace");
        assert!(!admitted(ks, &key.secret, NOW + 30), "old key at grace end");
        assert!(admitted(ks, &new.secret, NOW + 3600), "new key");
        assert_eq!(policy_of(ks, &old_id), (Some(LIMIT), false, true));
        assert_eq!(policy_of(ks, &new.meta.id), (Some(LIMIT), false, false));
    }

    // A new limit and a shadow on B, an organisation default on A.
    let patch = KeyPatch {
        rate_limit: Some(None),
        shadow: Some(Some(BTreeMap::from([(
            "a.example".to_string(),
            Access::Read,
        )]))),
    };
    b.update_key(ACTOR, &new.meta.id, patch, NOW).unwrap();
    a.set_org_rate_limit(ACTOR, "o", Some(LIMIT)).unwrap();
    a.follow().unwrap();
    b.follow().unwrap();
    for ks in [&a, &b] {
        assert_eq!(policy_of(ks, &new.meta.id), (None, true, false));
        assert_eq!(ks.org_rate_limit("o").unwrap(), Some(LIMIT));
    }

    // Usage counted on both instances adds up in the store.
    let snap_a = a.snapshot_arc();
    let snap_b = b.snapshot_arc();
    let id_n = scopegate_keystore::secret::parse_id(&old_id).unwrap();
    for _ in 0..3 {
        snap_a.side(id_n).unwrap().usage.record(NOW + 5, true);
    }
    snap_b.side(id_n).unwrap().usage.record(NOW + 7, true);
    assert_eq!(a.flush_usage().unwrap(), 1);
    assert_eq!(b.flush_usage().unwrap(), 1);
    assert_eq!(a.flush_usage().unwrap(), 0, "nothing new to write");
    drop((a, b, snap_a, snap_b));

    // Everything is still there after a restart.
    let c = open(location);
    let meta = c.get_key(&old_id, NOW + 60).unwrap();
    assert_eq!(meta.state, "expired");
    assert_eq!(meta.requests, 4);
    assert_eq!(meta.grace_uses, Some(4));
    assert_eq!(
        meta.last_used_at.as_deref(),
        Some(scopegate_keystore::time::rfc3339(NOW + 7).as_str())
    );
    assert_eq!(policy_of(&c, &old_id), (Some(LIMIT), false, true));
    assert_eq!(policy_of(&c, &new.meta.id), (None, true, false));
    assert_eq!(c.org_rate_limit("o").unwrap(), Some(LIMIT));
    assert!(!admitted(&c, &key.secret, NOW + 30));
    assert!(admitted(&c, &new.secret, NOW + 30));
    let unused = c.list_keys("o", None, Some(NOW + 1), NOW + 60).unwrap();
    assert_eq!(
        unused.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        [new.meta.id.as_str()],
        "only the key never used is unused since NOW+1"
    );
    // A revoked (or expired) key cannot be rotated.
    let e = c.rotate_key(ACTOR, &old_id, 10, NOW + 60).unwrap_err();
    assert_eq!(e.code, "key_not_live");
}

#[test]
fn sqlite_instances_share_rotations_limits_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    scenario(dir.path().join("store.db").to_str().unwrap());
}

#[test]
fn postgres_instances_share_rotations_limits_and_usage() {
    scenario(&fresh_database_url());
}

#[test]
fn a_shadow_wider_than_the_key_is_refused() {
    let ks = KeyStore::in_memory(Pepper::new(PEPPER));
    ks.put_org(
        ACTOR,
        "o",
        &["a.example", "b.example"].map(|n| DomainInput {
            name: n.into(),
            id: None,
        }),
    )
    .unwrap();
    let member = UserInput {
        role: Role::Member,
        access: BTreeMap::from([
            ("a.example".to_string(), Access::ReadWrite),
            ("b.example".to_string(), Access::ReadWrite),
        ]),
        status: None,
    };
    ks.put_user(ACTOR, "o", "m@o.test", member).unwrap();
    let key = |shadow: &[(&str, Access)]| NewKey {
        user: "m@o.test".into(),
        domains: Some(vec!["a.example".into()]),
        access: Some(Access::Read),
        shadow: Some(shadow.iter().map(|(d, a)| (d.to_string(), *a)).collect()),
        ..NewKey::default()
    };
    for wider in [
        &[("a.example", Access::ReadWrite)][..],
        &[("b.example", Access::Read)][..],
    ] {
        let e = ks.create_key(ACTOR, "o", key(wider), NOW).unwrap_err();
        assert_eq!(e.code, "shadow_wider", "{wider:?}");
    }
    ks.create_key(ACTOR, "o", key(&[("A.example", Access::Read)]), NOW)
        .unwrap();
    let zero = NewKey {
        user: "m@o.test".into(),
        rate_limit: Some(RateLimit {
            per_second: 0,
            burst: 1,
        }),
        ..NewKey::default()
    };
    assert_eq!(
        ks.create_key(ACTOR, "o", zero, NOW).unwrap_err().code,
        "invalid_rate_limit"
    );
}
