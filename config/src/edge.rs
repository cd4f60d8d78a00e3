//! The settings for facing the internet: `[tls]` (termination, certificate
//! files) and `[connections]` (what one client connection may cost the
//! gateway). Model, file schema, conversion and checks in one place, because
//! they change together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Problem;

/// TLS termination.
///
/// Exists so the gateway can face clients directly: with `cert` and `key`
/// set, the proxy listener speaks TLS 1.2/1.3 and offers HTTP/2 by ALPN.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// `cert`: PEM file with the certificate chain, leaf first. Re-read on
    /// every reload (SIGHUP, `POST /v1/reload`).
    pub cert: Option<PathBuf>,
    /// `key`: PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// `listen`: where TLS is served. `None` (the file's `""`): on `listen`
    /// itself, replacing plain HTTP; set: a second listener, and `listen`
    /// keeps serving plain HTTP beside it.
    pub listen: Option<SocketAddr>,
}

impl Tls {
    /// The certificate and key files, when TLS is on.
    pub fn files(&self) -> Option<(&PathBuf, &PathBuf)> {
        Some((self.cert.as_ref()?, self.key.as_ref()?))
    }
}

/// What one client connection may hold, and for how long.
///
/// Exists because an edge gateway is judged by what it survives: every
/// limit here bounds memory, file descriptors or tasks a client can pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// `max_header_bytes`: request line and headers together; past it, 431.
    pub max_header_bytes: usize,
    /// `max_headers`: header fields in one request; past it, 431.
    pub max_headers: usize,
    /// `header_read_timeout_ms`: a request head must arrive whole within
    /// this, from its first byte (slowloris): otherwise the connection is
    /// closed.
    pub header_read_timeout: Duration,
    /// `idle_timeout_ms`: how long a keep-alive connection may sit between
    /// requests (HTTP/1.1) or without streams (HTTP/2) before it is closed.
    pub idle_timeout: Duration,
    /// `max_connections`: client connections open at once, all listeners
    /// together. Excess connections wait for a slot up to
    /// `header_read_timeout_ms`, then are refused (503 over plain HTTP/1.1,
    /// closed otherwise).
    pub max_connections: usize,
    /// `h2_max_concurrent_streams`: streams one HTTP/2 connection may have
    /// open at once (advertised in SETTINGS).
    pub h2_max_concurrent_streams: u32,
    /// `h2_max_pending_resets`: streams a client may open and reset before
    /// the gateway has accepted them; past it the connection is closed with
    /// GOAWAY ENHANCE_YOUR_CALM (the rapid-reset flood, CVE-2023-44487).
    pub h2_max_pending_resets: usize,
    /// `fast_path`: plain HTTP/1.1 requests without a body are proxied by
    /// the gateway's own loop (same decisions and answers, less CPU per
    /// request); `false` sends every request through Pingora's proxy.
    pub fast_path: bool,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_millis(10_000),
            idle_timeout: Duration::from_millis(60_000),
            max_connections: 16_384,
            h2_max_concurrent_streams: 100,
            h2_max_pending_resets: 20,
            fast_path: true,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    listen: Option<String>,
}

impl RawTls {
    pub(crate) fn into_tls(self, problems: &mut Vec<Problem>) -> Tls {
        let path = |v: Option<String>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
        let listen = match self.listen.as_deref() {
            None | Some("") => None,
            Some(text) => match text.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(Problem::new(
                        "tls.listen",
                        format!("{text:?} is not a socket address; expected IP:PORT such as 0.0.0.0:8443"),
                    ));
                    None
                }
            },
        };
        Tls {
            cert: path(self.cert),
            key: path(self.key),
            listen,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnections {
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    h2_max_concurrent_streams: Option<u32>,
    h2_max_pending_resets: Option<usize>,
    fast_path: Option<bool>,
}

impl RawConnections {
    pub(crate) fn into_connections(self) -> Connections {
        let d = Connections::default();
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        Connections {
            max_header_bytes: self.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            header_read_timeout: ms(self.header_read_timeout_ms, d.header_read_timeout),
            idle_timeout: ms(self.idle_timeout_ms, d.idle_timeout),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            h2_max_concurrent_streams: self
                .h2_max_concurrent_streams
                .unwrap_or(d.h2_max_concurrent_streams),
            h2_max_pending_resets: self
                .h2_max_pending_resets
                .unwrap_or(d.h2_max_pending_resets),
            fast_path: self.fast_path.unwrap_or(d.fast_path),
        }
    }
}

/// Checks `[tls]` against `listen` and `admin_listen`.
pub(crate) fn check_tls(
    tls: &Tls,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    problems: &mut Vec<Problem>,
) {
    match (&tls.cert, &tls.key) {
        (Some(_), None) => problems.push(Problem::new(
            "tls.key",
            "tls.cert is set: the private key file is needed too",
        )),
        (None, Some(_)) => problems.push(Problem::new(
            "tls.cert",
            "tls.key is set: the certificate chain file is needed too",
        )),
        (None, None) if tls.listen.is_some() => problems.push(Problem::new(
            "tls.listen",
            "needs tls.cert and tls.key (there is nothing to serve TLS with)",
        )),
        _ => {}
    }
    if let Some(addr) = tls.listen {
        if addr.port() != 0 && (addr == listen || addr == admin_listen) {
            problems.push(Problem::new(
                "tls.listen",
                format!("{addr} is already `listen` or `admin_listen`; the listeners need different addresses"),
            ));
        }
    }
}

/// Checks `[connections]`: each limit within a range that keeps the gateway
/// usable and bounded.
pub(crate) fn check_connections(c: &Connections, problems: &mut Vec<Problem>) {
    let Connections {
        max_header_bytes,
        max_headers,
        header_read_timeout,
        idle_timeout,
        max_connections,
        h2_max_concurrent_streams,
        h2_max_pending_resets,
        fast_path: _,
    } = *c;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    for (key, value, min, max) in [
        // Pingora's own parser stops at 1 MiB and 256 fields.
        ("max_header_bytes", max_header_bytes as u64, 1024, 1 << 20),
        ("max_headers", max_headers as u64, 8, 256),
        (
            "header_read_timeout_ms",
            ms(header_read_timeout),
            100,
            600_000,
        ),
        ("idle_timeout_ms", ms(idle_timeout), 100, 3_600_000),
        ("max_connections", max_connections as u64, 1, 1_000_000),
        (
            "h2_max_concurrent_streams",
            h2_max_concurrent_streams as u64,
            1,
            10_000,
        ),
        (
            "h2_max_pending_resets",
            h2_max_pending_resets as u64,
            1,
            10_000,
        ),
    ] {
        if value < min || value > max {
            problems.push(Problem::new(
                format!("connections.{key}"),
                format!("must be between {min} and {max}, got {value}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn tls_needs_both_files_and_its_own_address() {
        let err = Config::from_toml_str("[tls]\ncert = \"c.pem\"\n", "t.toml").unwrap_err();
        assert!(err.has_key("tls.key"), "{err}");
        let err = Config::from_toml_str(
            "listen = \"127.0.0.1:8080\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nlisten = \"127.0.0.1:8080\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(err.has_key("tls.listen"), "{err}");
        let c = Config::from_toml_str(
            "[tls]\ncert = \"c\"\nkey = \"k\"\nlisten = \"0.0.0.0:8443\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.tls.listen, Some("0.0.0.0:8443".parse().unwrap()));
        assert!(c.tls.files().is_some());
    }

    #[test]
    fn connection_limits_are_bounded() {
        let err = Config::from_toml_str(
            "[connections]\nmax_headers = 1000\nheader_read_timeout_ms = 0\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(err.has_key("connections.max_headers"), "{err}");
        assert!(err.has_key("connections.header_read_timeout_ms"), "{err}");
    }

    #[test]
    fn the_fast_path_is_on_unless_turned_off() {
        assert!(
            Config::from_toml_str("", "t.toml")
                .unwrap()
                .connections
                .fast_path
        );
        let off = Config::from_toml_str("[connections]\nfast_path = false\n", "t.toml").unwrap();
        assert!(!off.connections.fast_path);
        let err = Config::from_toml_str("[connections]\nfast_path = \"no\"\n", "t.toml");
        assert!(err.is_err());
    }
}
