//! The auditing upstream: a tiny HTTP/1.1 server that answers 200 and
//! records, for every request, the key id the gateway added and the load
//! client's sequence number.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use scopegate_keystore::secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The header carrying the client's per-request sequence number.
pub const SEQ_HEADER: &str = "X-Loadtest-Seq";

/// What the upstream saw of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamRecord {
    /// The client's sequence number, if the header was there and numeric.
    pub seq: Option<u64>,
    /// The key id the gateway named, if the header was there and parsed.
    pub key_id: Option<u64>,
}

/// A minimal HTTP/1.1 server on its own thread that answers every request
/// with a small 200 and records [`UpstreamRecord`]s.
pub(super) struct Recorder {
    pub(super) addr: SocketAddr,
    pub(super) records: Arc<Mutex<Vec<UpstreamRecord>>>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) thread: Option<JoinHandle<()>>,
}

const UPSTREAM_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"upstream\":\"audit\"}\n";

impl Recorder {
    pub(super) fn start(key_id_header: &str) -> anyhow::Result<Recorder> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _g = rt.enter();
            let s = tokio::net::TcpSocket::new_v4()?;
            s.set_reuseaddr(true)?;
            s.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            s.listen(1024)?
        };
        let addr = listener.local_addr()?;
        let records = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let (stop, stop_rx) = watch::channel(false);
        let r = Arc::clone(&records);
        let names = Arc::new((
            SEQ_HEADER.to_ascii_lowercase(),
            key_id_header.to_ascii_lowercase(),
        ));
        let thread = std::thread::Builder::new()
            .name("loadtest-upstream".into())
            .spawn(move || {
                rt.block_on(recorder_accept(listener, r, names, stop_rx));
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Recorder {
            addr,
            records,
            stop,
            thread: Some(thread),
        })
    }

    pub(super) fn stop(&mut self) -> Vec<UpstreamRecord> {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn recorder_accept(
    listener: TcpListener,
    records: Arc<Mutex<Vec<UpstreamRecord>>>,
    names: Arc<(String, String)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        if let Ok((stream, _)) = accepted {
            let _ = stream.set_nodelay(true);
            let records = Arc::clone(&records);
            let names = Arc::clone(&names);
            tokio::spawn(recorder_conn(stream, records, names, stop.clone()));
        }
    }
}

/// The end of the header block (index after `\r\n\r\n`), searching from `from`.
pub(super) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

/// The header lines of a head (after the first line), as name/value pairs.
pub(super) fn header_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|b| *b == b'\n').skip(1).filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|b| *b == b':')?;
        Some((line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()))
    })
}

pub(super) fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

async fn recorder_conn(
    mut stream: TcpStream,
    records: Arc<Mutex<Vec<UpstreamRecord>>>,
    names: Arc<(String, String)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 8192];
    let mut filled = 0;
    let mut scanned = 0;
    loop {
        // Serve every complete request in the buffer.
        while let Some(end) = head_end(&buf[..filled], scanned) {
            let mut rec = UpstreamRecord {
                seq: None,
                key_id: None,
            };
            let mut body = 0usize;
            let mut close = false;
            let mut chunked = false;
            for (n, v) in header_lines(&buf[..end]) {
                if n.eq_ignore_ascii_case(names.0.as_bytes()) {
                    rec.seq = parse_u64(v);
                } else if n.eq_ignore_ascii_case(names.1.as_bytes()) {
                    rec.key_id = std::str::from_utf8(v).ok().and_then(secret::parse_id);
                } else if n.eq_ignore_ascii_case(b"content-length") {
                    body = parse_u64(v).unwrap_or(0) as usize;
                } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                    chunked = true;
                } else if n.eq_ignore_ascii_case(b"connection") {
                    close = v.eq_ignore_ascii_case(b"close");
                }
            }
            if chunked {
                // Never sent by the gateway for the load test's GETs.
                let _ = stream
                    .write_all(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            }
            let total = end + body;
            if buf.len() < total {
                buf.resize(total, 0);
            }
            while filled < total {
                match stream.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => filled += n,
                }
            }
            records.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
            buf.copy_within(total..filled, 0);
            filled -= total;
            scanned = 0;
            if stream.write_all(UPSTREAM_ANSWER).await.is_err() || close {
                return;
            }
        }
        scanned = filled.saturating_sub(3);
        if filled == buf.len() {
            if buf.len() >= 1 << 20 {
                return;
            }
            buf.resize(buf.len() * 2, 0);
        }
        tokio::select! {
            r = stream.read(&mut buf[filled..]) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
