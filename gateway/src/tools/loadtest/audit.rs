//! The audit: every request the upstream received checked against the
//! ground truth (leaks), and every valid request refused (false refusals).
//! Pure, so a test can feed it a made-up run.

use std::collections::HashMap;

use super::mix::Category;
use super::upstream::UpstreamRecord;

/// Bits of a sequence number that count requests within one connection.
pub(super) const SEQ_BITS: u32 = 40;

/// One request as the client sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRecord {
    /// Nanoseconds since the run started, taken just before the write.
    pub send_ns: u64,
    /// When the answer was complete (or the request failed).
    pub recv_ns: u64,
    /// Index of the key in its category's pool.
    pub key: u32,
    /// HTTP status; 0 for a transport error or timeout.
    pub status: u16,
    /// The key's category.
    pub cat: Category,
}

/// One revocation done during the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Index of the key in the valid pool.
    pub key: u32,
    /// Just before `revoke_key` (or the admin call) was made.
    pub start_ns: u64,
    /// Just after it returned.
    pub end_ns: u64,
    /// `--fleet`: the instance the revocation went through.
    pub via: usize,
    /// `--fleet`: per instance, when a probe first saw it refuse the key
    /// (`end_ns` for `via`); empty for a single gateway.
    pub refused_ns: Vec<u64>,
}

impl Revocation {
    /// A revocation through the one gateway there is.
    pub fn single(key: u32, start_ns: u64, end_ns: u64) -> Revocation {
        Revocation {
            key,
            start_ns,
            end_ns,
            via: 0,
            refused_ns: Vec::new(),
        }
    }

    /// Until when `instance` may still admit the key: the revoking instance
    /// (and a single gateway) never after the call returned; another
    /// instance until a probe saw it refuse.
    fn admits_until(&self, instance: usize) -> u64 {
        if instance == self.via {
            return self.end_ns;
        }
        self.refused_ns
            .get(instance)
            .copied()
            .unwrap_or(self.end_ns)
            .max(self.end_ns)
    }
}

/// The sequence number of request `i` of connection `conn`.
pub fn seq_of(conn: usize, i: usize) -> u64 {
    ((conn as u64) << SEQ_BITS) | i as u64
}

/// Counts of one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CategoryCounts {
    /// Requests sent.
    pub requests: u64,
    /// Requests the upstream received.
    pub admitted: u64,
    /// Requests the gateway answered itself with a 4xx.
    pub refused: u64,
    /// Transport errors, timeouts and 5xx answers.
    pub errors: u64,
    /// Refusals with another status than the category's.
    pub unexpected_status: u64,
}

/// What the audit found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Per category, indexed by `Category as usize`.
    pub categories: [CategoryCounts; 6],
    /// Requests the upstream received that it must never have: the sum of
    /// the three kinds below.
    pub leaked: u64,
    /// … with a key that was invalid, expired, out of scope or malformed from the start.
    pub leaked_invalid: u64,
    /// … sent after its key's revocation had returned.
    pub leaked_after_revocation: u64,
    /// … that the client never sent (no or unknown sequence number).
    pub unattributed: u64,
    /// Received with another key id than the key the client used.
    pub misattributed: u64,
    /// The same request received more than once (a gateway retry).
    pub upstream_duplicates: u64,
    /// Requests the upstream received, in all.
    pub upstream_received: u64,
    /// Valid requests refused although their key was live throughout.
    pub false_refusals: u64,
    /// Valid requests sent after their key's revocation returned (all must be refused).
    pub sent_after_revocation: u64,
    /// Valid requests in flight while their key was being revoked: admitted …
    pub in_flight_admitted: u64,
    /// … or refused (both are correct).
    pub in_flight_refused: u64,
    /// Answered 200 by the gateway without reaching the upstream.
    pub answered_without_upstream: u64,
    /// `--fleet`: admitted by an instance other than the revoking one after
    /// the revocation returned, but before that instance was seen refusing
    /// the key (the propagation window; not a leak).
    pub admitted_in_propagation: u64,
}

impl Audit {
    /// Requests sent, in all.
    pub fn requests(&self) -> u64 {
        self.categories.iter().map(|c| c.requests).sum()
    }
    /// Errors, in all.
    pub fn errors(&self) -> u64 {
        self.categories.iter().map(|c| c.errors).sum()
    }
    /// Whether the run proves what it must: nothing leaked, nothing misattributed.
    pub fn passed(&self) -> bool {
        self.leaked == 0 && self.misattributed == 0
    }
}

/// Checks every request against the ground truth. `conns[c][i]` is request
/// `i` of connection `c`, which went to instance `c % instances`;
/// `key_id(cat, key)` is the id of a pool key (None for made-up keys).
pub fn audit(
    conns: &[Vec<ClientRecord>],
    revocations: &[Revocation],
    upstream: &[UpstreamRecord],
    instances: usize,
    key_id: impl Fn(Category, u32) -> Option<u64>,
) -> Audit {
    let mut a = Audit::default();
    let instances = instances.max(1);
    let revoked: HashMap<u32, &Revocation> = revocations.iter().map(|r| (r.key, r)).collect();
    let mut seen: Vec<Vec<bool>> = conns.iter().map(|c| vec![false; c.len()]).collect();
    let lookup = |seq: u64| -> Option<(usize, usize)> {
        let (c, i) = (
            (seq >> SEQ_BITS) as usize,
            (seq & ((1 << SEQ_BITS) - 1)) as usize,
        );
        (c < conns.len() && i < conns[c].len()).then_some((c, i))
    };

    // What the upstream received.
    for u in upstream {
        a.upstream_received += 1;
        let Some((c, i)) = u.seq.and_then(lookup) else {
            a.unattributed += 1;
            continue;
        };
        if seen[c][i] {
            a.upstream_duplicates += 1;
            continue;
        }
        seen[c][i] = true;
        let r = &conns[c][i];
        if r.cat != Category::Valid {
            a.leaked_invalid += 1;
        } else if let Some(v) = revoked.get(&r.key).filter(|v| r.send_ns >= v.end_ns) {
            if r.send_ns < v.admits_until(c % instances) {
                a.admitted_in_propagation += 1;
            } else {
                a.leaked_after_revocation += 1;
            }
        }
        if u.key_id.is_none() || u.key_id != key_id(r.cat, r.key) {
            a.misattributed += 1;
        }
    }
    a.leaked = a.leaked_invalid + a.leaked_after_revocation + a.unattributed;

    // What the client sent.
    for (c, conn) in conns.iter().enumerate() {
        for (i, r) in conn.iter().enumerate() {
            let counts = &mut a.categories[r.cat as usize];
            counts.requests += 1;
            let admitted = seen[c][i];
            let error = r.status == 0 || r.status >= 500;
            if admitted {
                counts.admitted += 1;
            } else if error {
                counts.errors += 1;
            } else if r.status == 200 {
                a.answered_without_upstream += 1;
                counts.errors += 1;
            } else {
                counts.refused += 1;
            }
            let refused = !admitted && !error && r.status != 200;
            let mut expected_refusal = r.cat != Category::Valid;
            if r.cat == Category::Valid {
                match revoked.get(&r.key) {
                    Some(v) if r.send_ns >= v.end_ns => {
                        a.sent_after_revocation += 1;
                        expected_refusal = true;
                    }
                    Some(v) if r.recv_ns >= v.start_ns => {
                        // In flight during the revocation: either is right.
                        if admitted {
                            a.in_flight_admitted += 1;
                        } else if refused {
                            a.in_flight_refused += 1;
                        }
                        continue;
                    }
                    _ => {
                        if refused {
                            a.false_refusals += 1;
                        }
                    }
                }
            }
            if expected_refusal && refused && r.status != r.cat.refusal_status() {
                counts.unexpected_status += 1;
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cat: Category, key: u32, send_ns: u64, recv_ns: u64, status: u16) -> ClientRecord {
        ClientRecord {
            send_ns,
            recv_ns,
            key,
            status,
            cat,
        }
    }

    fn up(conn: usize, i: usize, key_id: u64) -> UpstreamRecord {
        UpstreamRecord {
            seq: Some(seq_of(conn, i)),
            key_id: Some(key_id),
        }
    }

    /// Valid keys have id 100 + index; made-up keys none.
    fn ids(cat: Category, key: u32) -> Option<u64> {
        match cat {
            Category::Valid | Category::OutOfScope => Some(100 + key as u64),
            _ => None,
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let conns = vec![vec![
            rec(Category::Valid, 1, 10, 20, 200),
            rec(Category::Revoked, 0, 30, 40, 401),
            rec(Category::OutOfScope, 2, 50, 60, 404),
        ]];
        let a = audit(&conns, &[], &[up(0, 0, 101)], 1, ids);
        assert!(a.passed());
        assert_eq!(a.leaked, 0);
        assert_eq!(a.false_refusals, 0);
        assert_eq!(a.categories[Category::Valid as usize].admitted, 1);
        assert_eq!(a.categories[Category::Revoked as usize].refused, 1);
        assert_eq!(a.requests(), 3);
    }

    #[test]
    fn admitted_after_revocation_returned_is_a_leak() {
        // Key 7 was revoked between 100 and 150; the request was sent at
        // 160, and the (broken) gateway let it through anyway.
        let conns = vec![vec![rec(Category::Valid, 7, 160, 170, 200)]];
        let revs = [Revocation::single(7, 100, 150)];
        let a = audit(&conns, &revs, &[up(0, 0, 107)], 1, ids);
        assert_eq!(a.leaked, 1);
        assert_eq!(a.leaked_after_revocation, 1);
        assert_eq!(a.sent_after_revocation, 1);
        assert!(!a.passed());
    }

    #[test]
    fn in_a_fleet_only_the_propagation_window_of_other_instances_is_forgiven() {
        // Key 7 revoked through instance 1 between 100 and 150; instance 0
        // was seen refusing it at 180, instance 2 at 170.
        let revs = [Revocation {
            key: 7,
            start_ns: 100,
            end_ns: 150,
            via: 1,
            refused_ns: vec![180, 150, 170],
        }];
        // Connections 0, 1, 2 go to instances 0, 1, 2; connection 3 to 0.
        let conns = vec![
            vec![rec(Category::Valid, 7, 175, 176, 200)], // 0: inside its window
            vec![rec(Category::Valid, 7, 151, 152, 200)], // 1: the revoking one: a leak
            vec![rec(Category::Valid, 7, 171, 172, 200)], // 2: after its window: a leak
            vec![rec(Category::Valid, 7, 160, 161, 401)], // 0: refused early: fine
        ];
        let upstream = [up(0, 0, 107), up(1, 0, 107), up(2, 0, 107)];
        let a = audit(&conns, &revs, &upstream, 3, ids);
        assert_eq!(a.admitted_in_propagation, 1);
        assert_eq!(a.leaked_after_revocation, 2);
        assert_eq!(a.sent_after_revocation, 4);
        assert!(!a.passed());
        // The same run as one gateway: all three admissions are leaks.
        let single = [Revocation::single(7, 100, 150)];
        assert_eq!(
            audit(&conns, &single, &upstream, 1, ids).leaked_after_revocation,
            3
        );
    }

    #[test]
    fn in_flight_during_revocation_goes_either_way() {
        let revs = [Revocation::single(7, 100, 150)];
        let conns = vec![vec![
            rec(Category::Valid, 7, 90, 120, 200),
            rec(Category::Valid, 7, 95, 130, 401),
            rec(Category::Valid, 7, 60, 80, 401),
        ]];
        let a = audit(&conns, &revs, &[up(0, 0, 107)], 1, ids);
        assert!(a.passed());
        assert_eq!(a.in_flight_admitted, 1);
        assert_eq!(a.in_flight_refused, 1);
        // Answered before the revocation began: it had to be admitted.
        assert_eq!(a.false_refusals, 1);
    }

    #[test]
    fn invalid_keys_reaching_the_upstream_leak() {
        let conns = vec![vec![
            rec(Category::Malformed, 0, 10, 20, 200),
            rec(Category::Expired, 0, 30, 40, 200),
        ]];
        let a = audit(&conns, &[], &[up(0, 0, 1), up(0, 1, 2)], 1, ids);
        assert_eq!(a.leaked_invalid, 2);
        assert_eq!(a.leaked, 2);
    }

    #[test]
    fn unattributed_duplicates_and_misattribution() {
        let conns = vec![vec![rec(Category::Valid, 1, 10, 20, 200)]];
        let upstream = [
            up(0, 0, 999), // wrong key id
            up(0, 0, 999), // a retry
            UpstreamRecord {
                seq: None,
                key_id: Some(101),
            },
            up(5, 0, 101), // no such connection
        ];
        let a = audit(&conns, &[], &upstream, 1, ids);
        assert_eq!(a.misattributed, 1);
        assert_eq!(a.upstream_duplicates, 1);
        assert_eq!(a.unattributed, 2);
        assert_eq!(a.leaked, 2);
        assert!(!a.passed());
    }

    #[test]
    fn unexpected_refusal_status_is_counted() {
        let conns = vec![vec![
            rec(Category::OutOfScope, 0, 10, 20, 401),
            rec(Category::Valid, 3, 10, 20, 0),
        ]];
        let a = audit(&conns, &[], &[], 1, ids);
        assert_eq!(
            a.categories[Category::OutOfScope as usize].unexpected_status,
            1
        );
        assert_eq!(a.categories[Category::Valid as usize].errors, 1);
        assert_eq!(a.false_refusals, 0);
    }
}
