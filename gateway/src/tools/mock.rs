//! A mock of the email platform's sending API and domain API: a real HTTP/1.1
//! server on loopback that records exactly what it received.
//!
//! Why it exists: scopegate's promise is about what reaches the upstream (and what
//! never does), so the only honest test is one that looks at the upstream's side of
//! the wire. This mock serves three users:
//!
//! 1. black-box tests start it on `127.0.0.1:0` and assert, from its own record,
//!    whether and exactly what the gateway forwarded (method, request-target,
//!    headers, body bytes and their BLAKE3 hash);
//! 2. `scopegate demo` runs it as a child process (`scopegate mock-upstream`, see
//!    [`run_standalone`]) and it prints one line per request it receives;
//! 3. load tests use it as a fast upstream: hyper connections on a two-worker tokio
//!    runtime (no thread per request), keep-alive on, and recording can be turned
//!    off so that only a counter is kept.
//!
//! The API is synchronous: [`MockUpstream`] owns its tokio runtime on a background
//! thread, so it can be used from plain `#[test]` functions.

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

/// Largest request body the mock accepts (64 MiB); larger bodies get a 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long `stop` waits for in-flight responses before abandoning them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Listen backlog of the mock's socket (load tests open many connections at once).
const LISTEN_BACKLOG: u32 = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request as the mock received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The name of the mock that received the request (e.g. `sending`, `domains`).
    pub upstream: String,
    /// The request method, as sent.
    pub method: String,
    /// The request-target as received (path and `?query`; untouched, not decoded).
    pub target: String,
    /// Header names (lowercase) and values (non-UTF-8 bytes lossily converted).
    ///
    /// Names appear in the order of their first occurrence on the wire; repeated
    /// values of one name are kept together, in their wire order (hyper's `HeaderMap`
    /// does not keep the interleaving of different names).
    pub headers: Vec<(String, String)>,
    /// Length of the full (de-chunked) body in bytes.
    pub body_len: usize,
    /// Lowercase hex BLAKE3 of the full body.
    pub body_blake3: String,
    /// The full body.
    pub body: Vec<u8>,
    /// Whether the request used `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// How the mock answers the requests that arrive after it is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Behavior {
    /// Answer 200 with a JSON echo (201 for POST); `GET /domains` lists domains.
    #[default]
    Normal,
    /// Answer this status with a small JSON body (codes outside 200..=999 answer 500).
    Status(u16),
    /// Wait this long, then answer as `Normal` (abandoned without answer on `stop`).
    Delay(Duration),
    /// Read and record the whole request, then drop the connection without answering.
    CloseWithoutResponse,
    /// Answer 200 (201 for POST) with the same small JSON body whatever was
    /// received: for benchmarks, so that the upstream does the same work
    /// for every client in front of it (the echo of `Normal` grows with the
    /// identity headers an enforcing gateway adds).
    Fixed,
}

/// State shared between the handle and the server tasks.
struct Shared {
    name: String,
    behavior: Mutex<Behavior>,
    recording: AtomicBool,
    printing: AtomicBool,
    count: AtomicUsize,
    records: Mutex<Vec<Recorded>>,
    shutdown: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running mock upstream; stops (gracefully) on [`MockUpstream::stop`] or drop.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("count", &self.count())
            .finish()
    }
}

impl MockUpstream {
    /// Bind 127.0.0.1:0 and serve on a background thread with its own 2-worker tokio runtime.
    pub fn spawn(name: &str) -> io::Result<MockUpstream> {
        Self::spawn_on(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Like [`MockUpstream::spawn`], on a given address; returns once the listener is bound.
    pub fn spawn_on(name: &str, addr: SocketAddr) -> io::Result<MockUpstream> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("mock-{name}"))
            .enable_all()
            .build()?;
        let listener = {
            let _ctx = rt.enter();
            bind(addr)
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                rt.shutdown_background();
                return Err(e);
            }
        };
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            behavior: Mutex::new(Behavior::Normal),
            recording: AtomicBool::new(true),
            printing: AtomicBool::new(false),
            count: AtomicUsize::new(0),
            records: Mutex::new(Vec::new()),
            shutdown: shutdown_rx,
        });
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("mock-{name}-main"))
            .spawn(move || {
                rt.block_on(serve(listener, server_shared));
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(MockUpstream {
            addr,
            shared,
            shutdown: shutdown_tx,
            thread: Some(thread),
        })
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The mock's name (reported in its answers and records).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Every recorded request, in the order their bodies finished arriving.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.records).clone()
    }

    /// How many requests were received (whole), recorded or not.
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Forget recorded requests and reset the count to zero.
    pub fn clear(&self) {
        let mut records = lock(&self.shared.records);
        records.clear();
        self.shared.count.store(0, Ordering::SeqCst);
    }

    /// Set how subsequent requests are answered.
    pub fn set_behavior(&self, b: Behavior) {
        *lock(&self.shared.behavior) = b;
    }

    /// Turn recording on (default) or off (then only the count is kept, for load tests).
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::SeqCst);
    }

    /// Turn printing of one line per request to stdout on or off (default off).
    pub fn set_printing(&self, on: bool) {
        self.shared.printing.store(on, Ordering::SeqCst);
    }

    /// Wait until at least `n` requests were received or `timeout` passes; true if reached.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stop accepting, let in-flight answers finish (bounded), close; also done on drop.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Entry point of `scopegate mock-upstream`: serve on `addr` with printing on until
/// SIGINT or SIGTERM (Ctrl-C elsewhere), then stop. Stdin is ignored.
///
/// Once the listener is bound and the signal handlers are installed it prints
/// `[mock NAME] listening on ADDR` to stdout, which a parent can wait for.
pub fn run_standalone(name: &str, addr: SocketAddr, quiet: bool, fixed: bool) -> io::Result<()> {
    let mock = MockUpstream::spawn_on(name, addr)?;
    mock.set_printing(!quiet);
    mock.set_recording(false);
    if fixed {
        mock.set_behavior(Behavior::Fixed);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            say(format_args!("[mock {name}] listening on {}", mock.addr()));
            // A mock started by another process (the demo, a bench script)
            // goes away with it, even when that process was SIGKILLed.
            let parent = std::os::unix::process::parent_id();
            let orphaned = async {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
                while std::os::unix::process::parent_id() == parent {
                    tick.tick().await;
                }
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = orphaned => {}
            }
        }
        #[cfg(not(unix))]
        {
            say(format_args!("[mock {name}] listening on {}", mock.addr()));
            tokio::signal::ctrl_c().await?;
        }
        Ok::<(), io::Error>(())
    })?;
    say(format_args!("[mock {name}] stopping"));
    mock.stop();
    Ok(())
}

/// Print one line to stdout, ignoring errors (a closed pipe must not kill the mock).
fn say(line: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Resolves once shutdown was requested (or the handle is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accept loop: one task per connection; on shutdown, drop the listener and drain.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    // Every connection task holds a clone of `alive`; `recv` returns None once all are gone.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let alive = alive.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, shared).await;
                        drop(alive);
                    });
                }
                Err(e) => {
                    log::warn!("mock {}: accept failed: {e}", shared.name);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    drop(alive);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, all_closed.recv()).await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let name = shared.name.clone();
    let service = service_fn(move |req| handle(shared.clone(), req));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .pipeline_flush(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        res = conn.as_mut() => res,
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        log::debug!("mock {name}: connection ended: {e}");
    }
}

fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(hyper::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
        })
}

fn header_string(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, mut body) = req.into_parts();
    let recording = shared.recording.load(Ordering::Relaxed);

    // Read the whole body (hyper undoes chunking) before recording anything.
    let mut buf: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            len += data.len();
            if len > MAX_BODY_BYTES {
                log::warn!(
                    "mock {}: request body over {MAX_BODY_BYTES} bytes",
                    shared.name
                );
                let mut resp = json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({"upstream": shared.name, "error": "body too large"}),
                );
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                return Ok(resp);
            }
            if recording {
                buf.extend_from_slice(&data);
            }
        }
    }

    let behavior = lock(&shared.behavior).clone();
    if !recording && behavior == Behavior::Fixed {
        shared.count.fetch_add(1, Ordering::SeqCst);
        let status = if parts.method == Method::POST {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok(json_response(
            status,
            serde_json::json!({"upstream": shared.name, "ok": true}),
        ));
    }

    let method = parts.method.as_str().to_owned();
    let target = parts.uri.to_string();
    let key_id = header_string(&parts.headers, "x-scopegate-key-id");
    let org = header_string(&parts.headers, "x-scopegate-org");
    let scope = header_string(&parts.headers, "x-scopegate-scope");

    if shared.printing.load(Ordering::Relaxed) {
        let user = header_string(&parts.headers, "x-scopegate-user");
        say(format_args!(
            "[mock {}] {method} {target} {len} bytes key-id={} org={} user={} scope={}",
            shared.name,
            key_id.as_deref().unwrap_or("-"),
            org.as_deref().unwrap_or("-"),
            user.as_deref().unwrap_or("-"),
            scope.as_deref().unwrap_or("-"),
        ));
    }

    if recording {
        let record = Recorded {
            upstream: shared.name.clone(),
            method: method.clone(),
            target,
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body_len: len,
            body_blake3: blake3::hash(&buf).to_hex().to_string(),
            body: buf,
            chunked: is_chunked(&parts.headers),
        };
        lock(&shared.records).push(record);
    }
    shared.count.fetch_add(1, Ordering::SeqCst);

    match behavior {
        Behavior::Normal => {}
        Behavior::Status(code) => {
            let status = match StatusCode::from_u16(code) {
                Ok(s) if code >= 200 => s,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let body = serde_json::json!({
                "upstream": shared.name,
                "status": status.as_u16(),
                "message": "status set by mock behavior",
            });
            return Ok(json_response(status, body));
        }
        Behavior::Delay(d) => {
            let mut shutdown = shared.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = stopped(&mut shutdown) => {
                    return Err("mock stopping during delay".into());
                }
            }
        }
        Behavior::CloseWithoutResponse => {
            return Err("mock behavior: close without response".into());
        }
        // Recording: answered like `Normal`, so what was recorded is echoed.
        Behavior::Fixed => {}
    }

    let path = parts.uri.path();
    if (parts.method == Method::GET || parts.method == Method::HEAD) && path == "/domains" {
        let body = serde_json::json!({
            "upstream": shared.name,
            "domains": domains_from_scope(scope.as_deref()),
        });
        return Ok(json_response(StatusCode::OK, body));
    }
    let status = if parts.method == Method::POST {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "upstream": shared.name,
        "method": method,
        "path": path,
        "received_bytes": len,
        "key_id": key_id,
        "org": org,
        "scope": scope,
    });
    Ok(json_response(status, body))
}

/// The domain listing the upstream would show for a forwarded `X-Scopegate-Scope`:
/// `*` -> `["*"]`, `a=read,b=read_write` -> `["a", "b"]`, absent -> `[]`.
fn domains_from_scope(scope: Option<&str>) -> Vec<String> {
    let Some(scope) = scope.map(str::trim) else {
        return Vec::new();
    };
    if scope == "*" {
        return vec!["*".to_owned()];
    }
    scope
        .split(',')
        .filter_map(|pair| {
            let domain = pair.split('=').next().unwrap_or("").trim();
            (!domain.is_empty()).then(|| domain.to_owned())
        })
        .collect()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    // 204 and 304 must not carry a body.
    let bytes = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let len = bytes.len();
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status != StatusCode::NO_CONTENT {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::domains_from_scope;

    #[test]
    fn scope_to_domains() {
        assert_eq!(domains_from_scope(Some("*")), vec!["*"]);
        assert_eq!(
            domains_from_scope(Some("a.com=read, b.com=read_write")),
            vec!["a.com", "b.com"]
        );
        assert!(domains_from_scope(None).is_empty());
        assert!(domains_from_scope(Some("")).is_empty());
    }
}
