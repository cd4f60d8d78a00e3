//! Limits that sit beside the decision: per-key rate limits (token buckets)
//! and per-address brute-force limits (failed key attempts).
//!
//! Both are per instance: N instances behind a load balancer admit up to N
//! times a key's rate, and an address blocked by one instance is not blocked
//! by the others (see README, "Key lifecycle and limits").
//!
//! The request path pays for neither unless it needs it: a key without a
//! limit never touches the bucket map (its policy is read from the snapshot
//! it was decided by), and while no address is blocked the check before
//! hashing is one atomic load.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use scopegate_config::BruteForce;
use scopegate_keystore::RateLimit;

/// A token is a thousand milli-tokens: integer arithmetic, so a limit admits
/// exactly `burst + per_second * seconds` requests, with no rounding drift.
const TOKEN: u64 = 1000;

/// Most addresses tracked at once; past this, new addresses' failures are
/// not counted until a sweep frees room (so an attacker with many addresses
/// cannot make the gateway grow without bound).
const MAX_TRACKED: usize = 100_000;

/// One key's token bucket.
#[derive(Debug)]
struct Bucket {
    /// Milli-tokens held as of `at_ms`.
    milli: u64,
    /// When `milli` was last brought up to date (Unix ms).
    at_ms: u64,
    /// The limit the bucket was filled under: a key given another limit
    /// starts over with a full bucket of the new size.
    limit: RateLimit,
}

impl Bucket {
    /// The bucket refilled up to `now_ms` under `limit`.
    fn refill(&mut self, limit: RateLimit, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        // per_second tokens per second = per_second milli-tokens per ms.
        let cap = u64::from(limit.burst) * TOKEN;
        self.milli = (self.milli + elapsed.saturating_mul(u64::from(limit.per_second))).min(cap);
        self.at_ms = now_ms;
    }
}

/// Failed attempts of one client address.
#[derive(Debug)]
struct Strikes {
    /// Start of the current one-minute window (Unix ms).
    window_ms: u64,
    /// Failures in the window.
    count: u32,
    /// Blocked until then (Unix ms); 0 = not blocked.
    blocked_until_ms: u64,
}

/// The limiter state of one instance, kept across config reloads.
///
/// Its clock is the request's arrival time (Unix ms), which the request
/// path has already read: no second clock read per request. A clock
/// stepped back only delays refills (elapsed time saturates at zero).
pub struct Guard {
    /// Token buckets of rate-limited keys, by public key id. A bucket that
    /// has refilled to its burst is the same as no bucket, so the sweep
    /// drops those: the map holds only keys used within the last
    /// burst/per_second seconds, never more than the live limited keys.
    buckets: DashMap<u64, Bucket>,
    /// Failed attempts by client address.
    strikes: DashMap<IpAddr, Strikes>,
    /// The latest end of any block (Unix ms): while the clock is
    /// past it, no address is blocked and the check is this one load.
    blocked_until_ms: AtomicU64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new()
    }
}

/// Why a request was refused by a guard, and when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a retry can succeed (at least 1), for `Retry-After`.
    pub retry_after: u64,
}

impl Guard {
    /// An empty guard.
    pub fn new() -> Guard {
        Guard {
            buckets: DashMap::new(),
            strikes: DashMap::new(),
            blocked_until_ms: AtomicU64::new(0),
        }
    }

    /// The guard's clock now (Unix ms), for callers without a request's
    /// arrival time.
    pub fn now_ms(&self) -> u64 {
        scopegate_keystore::time::now_ms().max(0) as u64
    }

    /// Takes one token from a rate-limited key's bucket, or says when one
    /// will be there.
    pub fn take(&self, key_id: u64, limit: RateLimit, now_ms: u64) -> Result<(), Limited> {
        let full = Bucket {
            milli: u64::from(limit.burst) * TOKEN,
            at_ms: now_ms,
            limit,
        };
        let mut b = self
            .buckets
            .entry(key_id)
            .or_insert_with(|| Bucket { ..full });
        if b.limit != limit {
            *b = full;
        }
        b.refill(limit, now_ms);
        if b.milli >= TOKEN {
            b.milli -= TOKEN;
            return Ok(());
        }
        let wait_ms = (TOKEN - b.milli).div_ceil(u64::from(limit.per_second.max(1)));
        Err(Limited {
            retry_after: wait_ms.div_ceil(1000).max(1),
        })
    }

    /// Whether `addr` is blocked now. One atomic load while no address is.
    #[inline]
    pub fn blocked(&self, addr: Option<IpAddr>, now_ms: u64) -> Option<Limited> {
        if self.blocked_until_ms.load(Ordering::Relaxed) <= now_ms {
            return None;
        }
        let s = self.strikes.get(&addr?)?;
        (s.blocked_until_ms > now_ms).then(|| Limited {
            retry_after: (s.blocked_until_ms - now_ms).div_ceil(1000).max(1),
        })
    }

    /// Counts a failed key attempt from `addr`; returns true when this
    /// failure blocked it.
    pub fn failed(&self, addr: Option<IpAddr>, cfg: &BruteForce, now_ms: u64) -> bool {
        let Some(addr) = addr else { return false };
        if cfg.attempts_per_minute == 0 {
            return false;
        }
        if self.strikes.len() >= MAX_TRACKED && !self.strikes.contains_key(&addr) {
            return false;
        }
        let mut s = self.strikes.entry(addr).or_insert(Strikes {
            window_ms: now_ms,
            count: 0,
            blocked_until_ms: 0,
        });
        if now_ms.saturating_sub(s.window_ms) >= 60_000 {
            s.window_ms = now_ms;
            s.count = 0;
        }
        s.count += 1;
        if s.count < cfg.attempts_per_minute || s.blocked_until_ms > now_ms {
            return false;
        }
        let until = now_ms + cfg.block.as_millis() as u64;
        s.blocked_until_ms = until;
        s.count = 0;
        s.window_ms = now_ms;
        self.blocked_until_ms.fetch_max(until, Ordering::Relaxed);
        true
    }

    /// Drops what no longer matters: buckets refilled to their burst (the
    /// same as none) and addresses whose window and block are over. Run
    /// every few seconds off the request path; `limit_of` gives a key's
    /// current limit (`None`: no longer limited, drop its bucket).
    pub fn sweep(&self, limit_of: impl Fn(u64) -> Option<RateLimit>) {
        let now = self.now_ms();
        self.buckets.retain(|id, b| match limit_of(*id) {
            Some(limit) => {
                b.refill(limit, now);
                b.milli < u64::from(limit.burst) * TOKEN
            }
            None => false,
        });
        self.strikes
            .retain(|_, s| s.blocked_until_ms > now || now.saturating_sub(s.window_ms) < 60_000);
    }

    /// (buckets, tracked addresses) held now, for tests and metrics.
    pub fn sizes(&self) -> (usize, usize) {
        (self.buckets.len(), self.strikes.len())
    }
}

/// How often the housekeeping thread sweeps the guard.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_second: 2,
        burst: 3,
    };

    #[test]
    fn a_bucket_admits_exactly_its_burst_then_its_rate() {
        let g = Guard::new();
        let admitted = |from: u64, to: u64, step: u64| {
            (from..to)
                .step_by(step as usize)
                .filter(|t| g.take(1, LIMIT, *t).is_ok())
                .count()
        };
        // 3 at once, then one every 500 ms: over 10 s at 10 requests a
        // second, 3 + 2 * 10 minus the first instant's refill.
        assert_eq!(admitted(0, 1, 1), 1);
        assert_eq!(admitted(0, 1, 1), 1);
        assert_eq!(admitted(0, 1, 1), 1);
        assert_eq!(admitted(0, 1, 1), 0);
        assert_eq!(admitted(100, 10_100, 100), 20);
        assert_eq!(
            g.take(1, LIMIT, 10_100),
            Err(Limited { retry_after: 1 }),
            "half a second to the next token rounds up to one"
        );
    }

    #[test]
    fn a_new_limit_starts_with_a_full_bucket() {
        let g = Guard::new();
        while g.take(1, LIMIT, 0).is_ok() {}
        let more = RateLimit {
            per_second: 2,
            burst: 10,
        };
        assert_eq!((0..20).filter(|_| g.take(1, more, 0).is_ok()).count(), 10);
    }

    #[test]
    fn a_full_bucket_is_swept_and_a_fresh_one_is_the_same() {
        let g = Guard::new();
        g.take(7, LIMIT, g.now_ms()).unwrap();
        g.sweep(|_| Some(LIMIT));
        assert_eq!(g.sizes().0, 1, "not refilled yet");
        g.sweep(|_| None);
        assert_eq!(g.sizes().0, 0, "no longer limited");
    }

    #[test]
    fn an_address_is_blocked_after_its_attempts_and_others_are_not() {
        let g = Guard::new();
        let cfg = BruteForce {
            attempts_per_minute: 3,
            block: Duration::from_secs(10),
        };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(!g.failed(Some(a), &cfg, 0));
        assert!(!g.failed(Some(a), &cfg, 1));
        assert_eq!(g.blocked(Some(a), 2), None);
        assert!(g.failed(Some(a), &cfg, 2));
        assert_eq!(g.blocked(Some(a), 3), Some(Limited { retry_after: 10 }));
        assert_eq!(g.blocked(Some(b), 3), None);
        assert_eq!(g.blocked(Some(a), 10_002), None, "the block ends");
        // Failures a minute apart never add up.
        for t in 0..10 {
            assert!(!g.failed(Some(b), &cfg, 20_000 + t * 30_000));
        }
    }
}
