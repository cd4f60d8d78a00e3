//! The load: keep-alive connections of a hand-written client, each request
//! a category by the mix and a key at random; the revoker revoking keys as
//! it runs; the progress line.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use scopegate_keystore::{secret, KeyStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::audit::{seq_of, ClientRecord, Revocation};
use super::fleet::{Fleet, PROPAGATION_LIMIT};
use super::histogram::{quantile, Histogram};
use super::mix::{Category, Mix, Rng};
use super::population::{Population, ACTOR, DOMAINS};
use super::upstream::{head_end, header_lines, parse_u64, SEQ_HEADER};

/// A request without an answer after this long counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What every load task shares.
pub(super) struct Load {
    /// The gateway, or (`--fleet`) each instance: connection `c` goes to
    /// `proxies[c % proxies.len()]`.
    pub(super) proxies: Vec<SocketAddr>,
    pub(super) start: Instant,
    pub(super) deadline: Instant,
    pub(super) mix: Mix,
    pub(super) pop: Arc<Population>,
    /// Per valid key: when its revocation returned (ns since start), or MAX.
    pub(super) revoked_end: Vec<AtomicU64>,
    /// Valid keys in the order they get revoked.
    pub(super) schedule: Vec<u32>,
    /// Revocations begun so far.
    pub(super) revocations_started: AtomicUsize,
    pub(super) hist: Histogram,
    pub(super) sent: AtomicU64,
    pub(super) max_requests: u64,
    pub(super) leaked_so_far: AtomicU64,
    pub(super) errors_so_far: AtomicU64,
    pub(super) stop: AtomicBool,
    /// `Authorization: Bearer ` (the first configured key header).
    pub(super) key_prefix: String,
    /// Open loop: seconds between two requests of one connection.
    pub(super) interval: Option<f64>,
    /// Connections of the load client.
    pub(super) connections: usize,
}

impl Load {
    pub(super) fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A category by the mix and a key of it; a fifth of the valid picks
    /// come from the keys around the revocation front.
    pub(super) fn pick(&self, rng: &mut Rng) -> (Category, u32) {
        let mut cat = self.mix.pick(rng.below(100) as u32);
        if self.pop.pool(cat).is_empty() {
            cat = Category::Valid;
        }
        if cat == Category::Valid && !self.schedule.is_empty() && rng.below(5) == 0 {
            let front = self.revocations_started.load(Ordering::Relaxed);
            let lo = front.saturating_sub(16);
            let hi = (front + 16).min(self.schedule.len());
            if lo < hi {
                return (cat, self.schedule[lo + rng.below(hi - lo)]);
            }
        }
        (cat, rng.below(self.pop.pool(cat).len()) as u32)
    }
}

/// A keep-alive HTTP/1.1 connection that reads Content-Length answers.
struct Client {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
    pub(super) filled: usize,
}

impl Client {
    pub(super) async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: vec![0; 4096],
            filled: 0,
        })
    }

    pub(super) async fn fill(&mut self) -> std::io::Result<()> {
        if self.filled == self.buf.len() {
            if self.buf.len() >= 1 << 20 {
                return Err(std::io::Error::other("answer too large"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.filled += n;
        Ok(())
    }

    /// Sends `req`, reads the answer; returns its status and whether the
    /// server closes the connection.
    pub(super) async fn roundtrip(&mut self, req: &[u8]) -> std::io::Result<(u16, bool)> {
        self.stream.write_all(req).await?;
        let mut scanned = 0;
        let end = loop {
            if let Some(end) = head_end(&self.buf[..self.filled], scanned) {
                break end;
            }
            scanned = self.filled.saturating_sub(3);
            self.fill().await?;
        };
        let head = &self.buf[..end];
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let mut len = None;
        let mut close = false;
        for (n, v) in header_lines(head) {
            if n.eq_ignore_ascii_case(b"content-length") {
                len = parse_u64(v).map(|l| l as usize);
            } else if n.eq_ignore_ascii_case(b"connection") {
                close = v.eq_ignore_ascii_case(b"close");
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                return Err(std::io::Error::other("chunked answers are not supported"));
            }
        }
        let len = match (len, status) {
            (Some(l), _) => l,
            (None, 204 | 304) => 0,
            (None, _) => return Err(std::io::Error::other("answer without Content-Length")),
        };
        let total = end + len;
        while self.filled < total {
            self.fill().await?;
        }
        self.buf.copy_within(total..self.filled, 0);
        self.filled -= total;
        Ok((status, close))
    }
}

/// One connection's loop; returns its requests in order.
pub(super) async fn drive(load: Arc<Load>, conn: usize, seed: u64) -> Vec<ClientRecord> {
    let mut rng = Rng(seed ^ (conn as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut out = Vec::with_capacity(4096);
    let mut client: Option<Client> = None;
    let mut req = Vec::with_capacity(512);
    loop {
        if load.stop.load(Ordering::Relaxed) || Instant::now() >= load.deadline {
            break;
        }
        if load.sent.fetch_add(1, Ordering::Relaxed) >= load.max_requests {
            load.stop.store(true, Ordering::Relaxed);
            break;
        }
        let (cat, key) = load.pick(&mut rng);
        let k = &load.pop.pool(cat)[key as usize];
        req.clear();
        let _ = write!(
            req,
            "GET /domains/{} HTTP/1.1\r\nHost: loadtest.invalid\r\n{}{}\r\n{SEQ_HEADER}: {}\r\n\r\n",
            DOMAINS[k.domain as usize],
            load.key_prefix,
            k.secret,
            seq_of(conn, out.len())
        );
        if client.is_none() {
            client = match Client::connect(load.proxies[conn % load.proxies.len()]).await {
                Ok(c) => Some(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    None
                }
            };
        }
        // Open loop: wait for this request's slot, and measure from it.
        let scheduled_ns = match load.interval {
            Some(every) => {
                // Connections start staggered across one interval.
                let offset = every * conn as f64 / load.connections as f64;
                let due = load.start + Duration::from_secs_f64(offset + every * out.len() as f64);
                tokio::time::sleep_until(due.into()).await;
                Some(due.duration_since(load.start).as_nanos() as u64)
            }
            None => None,
        };
        let send_ns = load.now_ns();
        let result = match client.as_mut() {
            Some(c) => tokio::time::timeout(REQUEST_TIMEOUT, c.roundtrip(&req))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        let recv_ns = load.now_ns();
        let status = match result {
            Ok((status, close)) => {
                if close {
                    client = None;
                }
                status
            }
            Err(_) => {
                client = None;
                load.errors_so_far.fetch_add(1, Ordering::Relaxed);
                0
            }
        };
        load.hist
            .record(recv_ns - scheduled_ns.unwrap_or(send_ns).min(send_ns));
        // (In a fleet, other instances may admit a revoked key until the
        // change reaches them: only the audit can tell.)
        if status == 200 && load.proxies.len() == 1 {
            let after_revocation = cat == Category::Valid
                && send_ns >= load.revoked_end[key as usize].load(Ordering::Acquire);
            if cat != Category::Valid || after_revocation {
                load.leaked_so_far.fetch_add(1, Ordering::Relaxed);
            }
        }
        out.push(ClientRecord {
            send_ns,
            recv_ns,
            key,
            status,
            cat,
        });
    }
    out
}

/// Through what the revoker revokes.
pub(super) enum Revoke {
    /// `KeyStore::revoke_key`, the call the admin API makes, on the one
    /// gateway's own key store.
    Store(Arc<KeyStore>),
    /// The admin API of a random instance of a fleet, then probes of the
    /// others until each refuses.
    Fleet(Arc<Fleet>),
}

/// Revokes `schedule` keys at `rate` per second until the deadline.
pub(super) fn revoker(
    via: Revoke,
    load: Arc<Load>,
    rate: f64,
    seed: u64,
) -> anyhow::Result<(Vec<Revocation>, Vec<u64>)> {
    let mut done = Vec::new();
    let mut took = Vec::new();
    let valid = load.pop.pool(Category::Valid);
    let mut rng = Rng(seed);
    for (i, &key) in load.schedule.iter().enumerate() {
        let at = load.start + Duration::from_secs_f64(i as f64 / rate);
        if at >= load.deadline || load.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let id = secret::format_id(valid[key as usize].id);
        load.revocations_started.store(i + 1, Ordering::Relaxed);
        let start_ns = load.now_ns();
        let revocation = match &via {
            Revoke::Store(ks) => {
                ks.revoke_key(ACTOR, &id, scopegate_keystore::time::now())
                    .with_context(|| format!("revoking {id}"))?;
                let end_ns = load.now_ns();
                load.revoked_end[key as usize].store(end_ns, Ordering::Release);
                Revocation::single(key, start_ns, end_ns)
            }
            Revoke::Fleet(fleet) => {
                let via = rng.below(fleet.len());
                fleet.revoke(via, &id)?;
                let end_ns = load.now_ns();
                load.revoked_end[key as usize].store(end_ns, Ordering::Release);
                let refused_ns =
                    propagation(fleet, &load, via, end_ns, &valid[key as usize].secret)?;
                Revocation {
                    key,
                    start_ns,
                    end_ns,
                    via,
                    refused_ns,
                }
            }
        };
        took.push(revocation.end_ns - start_ns);
        done.push(revocation);
    }
    Ok((done, took))
}

/// Probes every instance but `via` until it refuses `secret`: per instance,
/// when it was first seen refusing (`end_ns` for `via`; for an instance that
/// never did within [`PROPAGATION_LIMIT`], also `end_ns`, so the audit counts
/// every admission after the revocation as a leak there).
fn propagation(
    fleet: &Fleet,
    load: &Load,
    via: usize,
    end_ns: u64,
    secret: &str,
) -> anyhow::Result<Vec<u64>> {
    let mut refused = vec![None; fleet.len()];
    refused[via] = Some(end_ns);
    let limit = end_ns + PROPAGATION_LIMIT.as_nanos() as u64;
    while refused.iter().any(Option::is_none) && load.now_ns() < limit {
        for (i, r) in refused.iter_mut().enumerate() {
            if r.is_none() && fleet.refuses(i, secret)? {
                *r = Some(load.now_ns());
            }
        }
    }
    Ok(refused.into_iter().map(|r| r.unwrap_or(end_ns)).collect())
}

/// Prints one progress line per second until the load stops.
pub(super) fn progress(load: Arc<Load>, finished: Arc<AtomicBool>) {
    let mut last = 0u64;
    let mut tick = 1u64;
    while !finished.load(Ordering::Relaxed) {
        let at = load.start + Duration::from_secs(tick);
        while Instant::now() < at {
            if finished.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let counts = load.hist.counts();
        let total: u64 = counts.iter().sum();
        let max = load.hist.max();
        eprintln!(
            "[{tick:>3}s] {:>7} req/s  p50 {:>7}  p99 {:>7}  revoked {:>5}  errors {}  leaked {}",
            total - last,
            ms(quantile(&counts, 0.50, max)),
            ms(quantile(&counts, 0.99, max)),
            load.revocations_started.load(Ordering::Relaxed),
            load.errors_so_far.load(Ordering::Relaxed),
            load.leaked_so_far.load(Ordering::Relaxed),
        );
        last = total;
        tick += 1;
    }
}

pub(super) fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}
