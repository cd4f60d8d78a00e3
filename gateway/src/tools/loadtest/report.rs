//! The report: the run's figures and the audit's verdict, as text or one
//! JSON object.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::args::LoadtestArgs;
use super::audit::{Audit, Revocation};
use super::driver::ms;
use super::mix::{Category, Mix, CATEGORIES};

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms_f(ns: u64) -> f64 {
    round3(ns as f64 / 1e6)
}

pub(super) struct Report<'a> {
    pub(super) args: &'a LoadtestArgs,
    pub(super) mix: Mix,
    pub(super) population: Value,
    /// The kept store as it may be shown (a URL without its password).
    pub(super) store: Option<String>,
    pub(super) gateway_threads: usize,
    pub(super) elapsed: f64,
    pub(super) capped: bool,
    pub(super) audit: &'a Audit,
    pub(super) latency: [u64; 4],
    pub(super) max: u64,
    pub(super) revocations: usize,
    pub(super) planned: usize,
    pub(super) revoke_p50: u64,
    pub(super) revoke_max: u64,
    /// `--fleet`: how revocations spread over the instances.
    pub(super) fleet: Option<FleetFigures>,
}

/// How long revocations took to reach every instance of a fleet.
pub(super) struct FleetFigures {
    pub(super) instances: usize,
    /// Per revocation: from the admin answer until the last other instance
    /// was seen refusing the key, in nanoseconds, sorted.
    pub(super) propagation: Vec<u64>,
    /// Instances never seen refusing within the probe limit.
    pub(super) never_refused: usize,
}

impl FleetFigures {
    pub(super) fn of(instances: usize, revocations: &[Revocation]) -> FleetFigures {
        let mut propagation: Vec<u64> = revocations
            .iter()
            .map(|r| {
                r.refused_ns
                    .iter()
                    .map(|t| t.saturating_sub(r.end_ns))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        propagation.sort_unstable();
        // An instance that never refused was recorded at the answer itself.
        let never_refused = revocations
            .iter()
            .flat_map(|r| {
                r.refused_ns
                    .iter()
                    .enumerate()
                    .filter(move |(i, t)| *i != r.via && **t == r.end_ns)
            })
            .count();
        FleetFigures {
            instances,
            propagation,
            never_refused,
        }
    }

    fn quantile(&self, q: f64) -> u64 {
        match self.propagation.len() {
            0 => 0,
            n => self.propagation[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
        }
    }

    fn json(&self, a: &Audit) -> Value {
        json!({
            "instances": self.instances,
            "propagation_ms": {
                "p50": ms_f(self.quantile(0.5)),
                "p99": ms_f(self.quantile(0.99)),
                "max": ms_f(self.propagation.last().copied().unwrap_or(0)),
            },
            "admitted_in_propagation_window": a.admitted_in_propagation,
            "instances_never_refusing": self.never_refused,
        })
    }
}

impl Report<'_> {
    pub(super) fn throughput(&self) -> f64 {
        self.audit.requests() as f64 / self.elapsed.max(1e-9)
    }

    pub(super) fn json(&self) -> Value {
        let a = self.audit;
        let categories: serde_json::Map<String, Value> = CATEGORIES
            .iter()
            .map(|&c| {
                let k = a.categories[c as usize];
                (
                    c.name().to_string(),
                    json!({
                        "percent": self.mix.0[c as usize],
                        "requests": k.requests,
                        "admitted": k.admitted,
                        "refused": k.refused,
                        "errors": k.errors,
                        "unexpected_status": k.unexpected_status,
                    }),
                )
            })
            .collect();
        json!({
            "ok": a.passed(),
            "keys": self.population["valid"],
            "population": self.population,
            "store": self.store,
            "duration_s": round3(self.elapsed),
            "stopped_at_max_requests": self.capped,
            "connections": self.args.connections,
            "open_loop_rate": self.args.rate,
            "gateway_threads": self.gateway_threads,
            "client_threads": self.args.client_threads,
            "requests": a.requests(),
            "throughput_rps": self.throughput().round(),
            "latency_ms": {
                "p50": ms_f(self.latency[0]),
                "p90": ms_f(self.latency[1]),
                "p99": ms_f(self.latency[2]),
                "p99_9": ms_f(self.latency[3]),
                "max": ms_f(self.max),
            },
            "categories": categories,
            "revocations": self.revocations,
            "revocations_planned": self.planned,
            "revoke_ms": { "p50": ms_f(self.revoke_p50), "max": ms_f(self.revoke_max) },
            "sent_after_revocation": a.sent_after_revocation,
            "in_flight_at_revocation": {
                "admitted": a.in_flight_admitted,
                "refused": a.in_flight_refused,
            },
            "upstream_received": a.upstream_received,
            "upstream_duplicates": a.upstream_duplicates,
            "leaked": a.leaked,
            "leaked_detail": {
                "invalid_from_start": a.leaked_invalid,
                "after_revocation": a.leaked_after_revocation,
                "unattributed": a.unattributed,
            },
            "misattributed": a.misattributed,
            "false_refusals": a.false_refusals,
            "answered_without_upstream": a.answered_without_upstream,
            "errors": a.errors(),
            "fleet": self.fleet.as_ref().map(|f| f.json(a)),
        })
    }

    pub(super) fn text(&self) -> String {
        let a = self.audit;
        let mut s = String::new();
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "scopegate loadtest: {} connections, {:.1} s, gateway {} worker threads, client {} thread(s), {}, all on 127.0.0.1",
            self.args.connections,
            self.elapsed,
            self.gateway_threads,
            self.args.client_threads,
            match self.args.rate {
                Some(r) => format!("open loop at {r:.0} req/s (latency from each request's scheduled time)"),
                None => "closed loop".to_string(),
            }
        );
        let p = &self.population;
        let _ = writeln!(
            s,
            "population      {} valid keys; {} revoked, {} expired, {} out of scope; {} users, {} domains{}",
            p["valid"], p["revoked"], p["expired"], p["out_of_scope"], p["users"], p["domains"],
            self.store
                .as_ref()
                .map(|p| format!("; store {p}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "requests        {} ({:.0} req/s){}",
            a.requests(),
            self.throughput(),
            if self.capped {
                "; stopped early at --max-requests"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "latency         p50 {}  p90 {}  p99 {}  p99.9 {}  max {}   (client side, send to full answer)",
            ms(self.latency[0]),
            ms(self.latency[1]),
            ms(self.latency[2]),
            ms(self.latency[3]),
            ms(self.max)
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<14} {:>4} {:>10} {:>10} {:>10} {:>8} {:>11}   expected",
            "category", "mix", "requests", "admitted", "refused", "errors", "odd status"
        );
        for c in CATEGORIES {
            let k = a.categories[c as usize];
            if k.requests == 0 && self.mix.0[c as usize] == 0 {
                continue;
            }
            let expected = match c {
                Category::Valid => "admitted (refused once revoked)".to_string(),
                _ => format!("refused {}", c.refusal_status()),
            };
            let _ = writeln!(
                s,
                "{:<14} {:>3}% {:>10} {:>10} {:>10} {:>8} {:>11}   {expected}",
                c.name(),
                self.mix.0[c as usize],
                k.requests,
                k.admitted,
                k.refused,
                k.errors,
                k.unexpected_status
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "revocations     {} of {} planned during the load ({}, p50 {}, max {})",
            self.revocations,
            self.planned,
            if self.fleet.is_some() {
                "the admin API of a random instance: commit + publish there"
            } else {
                "revoke_key: commit + publish"
            },
            ms(self.revoke_p50),
            ms(self.revoke_max)
        );
        let _ = writeln!(
            s,
            "                {} requests sent after their key's revocation returned (each must be refused); {} in flight during it ({} admitted, {} refused: either is right)",
            a.sent_after_revocation,
            a.in_flight_admitted + a.in_flight_refused,
            a.in_flight_admitted,
            a.in_flight_refused
        );
        if let Some(f) = &self.fleet {
            let _ = writeln!(
                s,
                "fleet           {} instances; a revocation reached every other instance in p50 {}  p99 {}  max {}   (admin answer to probe refused)",
                f.instances,
                ms(f.quantile(0.5)),
                ms(f.quantile(0.99)),
                ms(f.propagation.last().copied().unwrap_or(0))
            );
            let _ = writeln!(
                s,
                "                {} admitted by another instance inside its propagation window (allowed); {} instance(s) never seen refusing (every later admission there counts as leaked)",
                a.admitted_in_propagation, f.never_refused
            );
        }
        let _ = writeln!(
            s,
            "upstream        received {} requests ({} duplicates from retries)",
            a.upstream_received, a.upstream_duplicates
        );
        let _ = writeln!(
            s,
            "LEAKED          {}   (must be 0: {} with keys invalid from the start, {} after revocation, {} unattributed)",
            a.leaked, a.leaked_invalid, a.leaked_after_revocation, a.unattributed
        );
        let _ = writeln!(
            s,
            "misattributed   {}   (must be 0: upstream saw another key id)",
            a.misattributed
        );
        let _ = writeln!(
            s,
            "false refusals  {}   (valid key, live throughout, refused)",
            a.false_refusals
        );
        let _ = writeln!(
            s,
            "errors          {}   (transport errors, timeouts, 5xx)",
            a.errors()
        );
        let _ = writeln!(
            s,
            "result          {}",
            if self.args.bench_passthrough {
                "NOT AUDITED: --bench-passthrough checked no key (the counts above mean nothing); latency only"
            } else if a.passed() {
                "PASS: every request the upstream received was entitled to it"
            } else {
                "FAIL: the upstream received requests it must never have seen"
            }
        );
        s
    }
}
