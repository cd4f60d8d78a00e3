//! The connection layer: what a client connection passes through before
//! (and between) its requests. Pingora 0.9 has no knob for most of it — its
//! header limits are fixed (1 MiB, 256 fields), its header read timeout is
//! per read (a client trickling one byte a minute is never cut off), it has
//! no connection limit, and it tolerates smuggling shapes (see
//! [`crate::request::framing`]) — so this [`ServerApp`] sits between
//! Pingora's listener and its HTTP proxy:
//!
//! - a connection takes one of `connections.max_connections` slots, waiting
//!   up to `header_read_timeout_ms` for one (then 503 and closed);
//! - HTTP/2 (ALPN `h2`) goes to Pingora's own HTTP/2 server with this
//!   gateway's settings (streams, resets, idle timeout; see [`h2_options`]);
//! - HTTP/1.1 heads are read here, whole, within `header_read_timeout_ms`
//!   from their first byte, checked by [`scan_head`], and handed to Pingora
//!   as already-read bytes; between requests a connection may idle
//!   `idle_timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, HttpServerOptions, ServerApp};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use scopegate_config::{Connections, ResponseFormat};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::ops::edge::EdgeRefusal;
use crate::request::fast;
use crate::request::framing::{scan_head, HeadLimits, Scan};
use crate::request::proxy::Proxy;
use crate::request::respond::{closing_bytes, Reply};
use crate::request::state::State;

/// The proxy service's application: limits and checks, then Pingora's proxy.
pub struct Edge {
    /// Pingora's HTTP proxy running the gateway's phases.
    proxy: Arc<HttpProxy<Proxy>>,
    /// Metrics.
    state: Arc<State>,
    /// The limits this service started with (they need a restart).
    limits: Connections,
    /// One permit per open client connection, shared by every listener.
    slots: Arc<Semaphore>,
}

/// Pingora's HTTP/2 server settings from `[connections]`.
pub fn h2_options(c: &Connections) -> H2Options {
    let mut o = H2Options::new();
    o.max_concurrent_streams(c.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(c.h2_max_pending_resets)
        .max_header_list_size(c.max_header_bytes as u32)
        // Streams the server itself resets (e.g. refused requests) count
        // too: h2's own bound against "MadeYouReset".
        .max_local_error_reset_streams(Some(1024));
    o
}

impl Edge {
    /// Wraps `proxy`, applying `limits` (HTTP/2 settings are set on it here).
    pub fn new(mut proxy: HttpProxy<Proxy>, state: Arc<State>, limits: Connections) -> Edge {
        proxy.h2_options = Some(h2_options(&limits));
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(limits.idle_timeout);
        proxy.server_options = Some(options);
        Edge {
            proxy: Arc::new(proxy),
            state,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        }
    }

    /// The shape of the gateway's own answers, as configured now.
    fn format(&self) -> ResponseFormat {
        self.state.routing.load().config.response_format
    }

    fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_bytes: self.limits.max_header_bytes,
            max_headers: self.limits.max_headers,
        }
    }

    /// HTTP/1.1: each head read and checked here, then the request handed to
    /// Pingora; the connection loops while Pingora says it may be reused.
    async fn http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let idle_secs = self.limits.idle_timeout.as_secs().max(1);
        let mut first = true;
        let mut persistent = None;
        // The client's address, looked up once per connection.
        let mut client: Option<Option<std::net::IpAddr>> = None;
        loop {
            let wait = if first {
                self.limits.header_read_timeout
            } else {
                self.limits.idle_timeout
            };
            let (head, len) = match read_head(
                &mut stream,
                wait,
                self.limits.header_read_timeout,
                &self.head_limits(),
                shutdown,
            )
            .await
            {
                HeadRead::Head(h, len) => (h, len),
                HeadRead::Gone => return None,
                HeadRead::Idle if first => {
                    // Connected and never spoke.
                    self.state.metrics.edge.refused(EdgeRefusal::HeaderTimeout);
                    return None;
                }
                HeadRead::Idle => return None,
                HeadRead::Slow => {
                    self.state.metrics.edge.refused(EdgeRefusal::HeaderTimeout);
                    return None;
                }
                HeadRead::Refused(why, message) => {
                    self.state.metrics.edge.refused(why);
                    let reply = match why {
                        EdgeRefusal::HeaderTooLarge | EdgeRefusal::TooManyHeaders => {
                            Reply::HeaderTooLarge
                        }
                        _ => Reply::BadRequest("bad_framing", message.to_string()),
                    };
                    answer_and_close(stream, &reply, self.format()).await;
                    return None;
                }
            };
            let head = if self.limits.fast_path && head.len() == len {
                // Frozen, so the parsed header values share the buffer.
                let frozen = head.freeze();
                match fast::eligible(&frozen, len) {
                    Some(request) => {
                        let client = *client.get_or_insert_with(|| {
                            stream.get_socket_digest().and_then(|d| {
                                d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
                            })
                        });
                        let closing = request.close || *shutdown.borrow();
                        if !fast::serve(&self.state, &mut stream, request, client, closing).await {
                            return None;
                        }
                        first = false;
                        continue;
                    }
                    // Nothing else holds the buffer: no copy.
                    None => frozen
                        .try_into_mut()
                        .unwrap_or_else(|b| BytesMut::from(&b[..])),
                }
            } else {
                head
            };
            let mut session = ServerSession::new_http1(stream);
            session.set_keepalive(Some(idle_secs));
            if let Some(p) = persistent.take() {
                pingora::apps::HttpPersistentSettings::apply_to_session(p, &mut session);
            }
            session.set_pipelined_prefix(head);
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            let (s, p) = reused.consume();
            stream = s;
            persistent = p;
            first = false;
        }
    }
}

#[async_trait]
impl ServerApp for Edge {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let edge = &self.state.metrics.edge;
        edge.accepted.inc();
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let wait = Arc::clone(&self.slots).acquire_owned();
                match tokio::time::timeout(self.limits.header_read_timeout, wait).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        edge.refused(EdgeRefusal::ConnectionLimit);
                        if !h2 {
                            answer_and_close(stream, &Reply::OverCapacity, self.format()).await;
                        }
                        return None;
                    }
                }
            }
        };
        edge.open.inc();
        let result = if h2 {
            // Pingora's HTTP/2 server, with the options set in `new`.
            ServerApp::process_new(&self.proxy, stream, shutdown).await
        } else {
            self.http1(stream, shutdown).await
        };
        edge.open.dec();
        drop(permit);
        result
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

enum HeadRead {
    /// A complete, checked head (and whatever followed it), and the head's length.
    Head(BytesMut, usize),
    /// Closed by the client, a read error, or shutdown.
    Gone,
    /// No byte within the wait.
    Idle,
    /// The head started but did not finish within the header timeout.
    Slow,
    /// Refused by [`scan_head`].
    Refused(EdgeRefusal, &'static str),
}

/// Reads one request head. The waits use Pingora's timer wheel
/// (`fast_timeout`, 10 ms ticks), not Tokio's: a Tokio timer registered
/// while the runtime's timer wheel is empty (the usual case between
/// requests, since Pingora's own timeouts do not use it) wakes the I/O
/// driver through its eventfd, which cost one `write` and one extra
/// `epoll_wait` return per request (measured with `strace -c` and `perf
/// record -e syscalls:sys_enter_write`; see README, Benchmarks).
async fn read_head(
    stream: &mut Stream,
    wait: Duration,
    header_timeout: Duration,
    limits: &HeadLimits,
    shutdown: &ShutdownWatch,
) -> HeadRead {
    let mut buf = BytesMut::with_capacity(4096);
    let mut down = shutdown.clone();
    let first = tokio::select! {
        r = pingora::time::fast_timeout::fast_timeout(wait, stream.read_buf(&mut buf)) => r,
        _ = down.wait_for(|stopping| *stopping) => return HeadRead::Gone,
    };
    match first {
        Err(_) => return HeadRead::Idle,
        Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Gone,
        Ok(Ok(_)) => {}
    }
    let deadline = std::time::Instant::now() + header_timeout;
    loop {
        match scan_head(&buf, limits) {
            Scan::Complete(n) => return HeadRead::Head(buf, n),
            Scan::Refuse(why, message) => return HeadRead::Refused(why, message),
            Scan::Partial => {}
        }
        buf.reserve(4096);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match pingora::time::fast_timeout::fast_timeout(left, stream.read_buf(&mut buf)).await {
            Err(_) => return HeadRead::Slow,
            Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Gone,
            Ok(Ok(_)) => {}
        }
    }
}

/// Writes `reply` with `Connection: close` and closes the connection, giving
/// a client that does not read at most a second.
async fn answer_and_close(mut stream: Stream, reply: &Reply, format: ResponseFormat) {
    let bytes = closing_bytes(reply, format);
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        stream.shutdown().await?;
        // Read what the client is still sending for a moment: closing with
        // unread bytes makes the kernel send RST, which may destroy the
        // answer before the client reads it.
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), write).await;
}
