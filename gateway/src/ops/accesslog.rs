//! One structured line per request, written by a background thread so that
//! logging never blocks the request path: when the writer falls behind,
//! lines are dropped and counted (`scopegate_access_log_dropped_total`).
//!
//! A line never holds a key or a digest: only the public key id. Paths are
//! logged without their query string, and anything shaped like an issued
//! key is masked even there.

use std::io::Write;
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::IntCounter;
use scopegate_config::{AccessLog as Dest, LogFormat, LogSettings};
use serde::Serialize;

/// One request, as logged.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// Unix milliseconds when the request arrived.
    pub ts_ms: i64,
    /// HTTP method.
    pub method: String,
    /// Path without query (canonical when it could be decoded).
    pub path: String,
    /// Status sent to the client.
    pub status: u16,
    /// `admitted`, `invalid_key`, … (see `Outcome`).
    pub decision: &'static str,
    /// The refusal reason when there is one (`revoked_key`, `not_visible`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Public key id, once the key was recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Organisation of the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Upstream group, when forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Request body bytes received.
    pub bytes_in: usize,
    /// Response body bytes sent.
    pub bytes_out: usize,
    /// Microseconds from arrival to the end of the response.
    pub latency_us: u64,
    /// For an admitted request, why the key's shadow scope would have refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_refuse: Option<&'static str>,
}

/// Masks anything shaped like an issued key (`sg_` + 38 base62 characters).
pub fn mask_keys(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"sg_") {
            let run = b[i + 3..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric())
                .count();
            if run >= 20 {
                out.push_str("sg_<masked>");
                i += 3 + run;
                continue;
            }
        }
        let ch = s[i..].chars().next().expect("inside the string");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

impl Entry {
    fn text(&self) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let shadow = self
            .would_refuse
            .map_or_else(String::new, |r| format!(" would_refuse={r}"));
        format!(
            "{} {} {} {} decision={} reason={} key_id={} org={} upstream={} bytes_in={} bytes_out={} latency_us={}{}",
            scopegate_keystore::time::rfc3339(self.ts_ms / 1000),
            self.method,
            self.path,
            self.status,
            self.decision,
            self.reason.unwrap_or("-"),
            opt(&self.key_id),
            opt(&self.org),
            opt(&self.upstream),
            self.bytes_in,
            self.bytes_out,
            self.latency_us,
            shadow
        )
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Entry>>,
    dropped: IntCounter,
}

/// Lines buffered between the request path and the writer thread.
const QUEUE: usize = 65_536;

impl AccessLog {
    /// Starts the writer thread (none when the log is off).
    pub fn start(
        settings: &LogSettings,
        dropped: IntCounter,
    ) -> std::io::Result<(AccessLog, Option<JoinHandle<()>>)> {
        let out: Box<dyn Write + Send> = match &settings.access_log {
            Dest::Off => return Ok((AccessLog { tx: None, dropped }, None)),
            Dest::Stdout => Box::new(std::io::stdout()),
            Dest::Stderr => Box::new(std::io::stderr()),
            Dest::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let json = settings.format == LogFormat::Json;
        let (tx, rx) = sync_channel::<Entry>(QUEUE);
        let handle = std::thread::Builder::new()
            .name("scopegate-access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(out);
                loop {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(e) => {
                            let line = if json {
                                serde_json::to_string(&e).expect("entries serialise")
                            } else {
                                e.text()
                            };
                            let _ = writeln!(out, "{line}");
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            let _ = out.flush();
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                let _ = out.flush();
            })?;
        Ok((
            AccessLog {
                tx: Some(tx),
                dropped,
            },
            Some(handle),
        ))
    }

    /// Queues a line without blocking; drops and counts it if the queue is full.
    pub fn log(&self, e: Entry) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(e) {
                self.dropped.inc();
            }
        }
    }

    /// Whether lines are written at all (skip building entries when not).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_issued_keys_anywhere() {
        let k = format!("sg_{}", "A1b2".repeat(9) + "xy");
        assert_eq!(
            mask_keys(&format!("/domains/{k}/x")),
            "/domains/sg_<masked>/x"
        );
        assert_eq!(mask_keys("/sg_short/é"), "/sg_short/é");
    }

    #[test]
    fn text_line_has_every_field() {
        let e = Entry {
            ts_ms: 0,
            method: "GET".into(),
            path: "/domains/example.com".into(),
            status: 200,
            decision: "admitted",
            reason: None,
            key_id: Some("key_1".into()),
            org: Some("acme".into()),
            upstream: Some("domains".into()),
            bytes_in: 0,
            bytes_out: 10,
            latency_us: 120,
            would_refuse: None,
        };
        assert_eq!(
            e.text(),
            "1970-01-01T00:00:00Z GET /domains/example.com 200 decision=admitted reason=- key_id=key_1 org=acme upstream=domains bytes_in=0 bytes_out=10 latency_us=120"
        );
    }
}
