//! TLS and HTTP/2 for the edge tests: self-signed certificates made at test
//! time (never committed), a rustls client that trusts exactly one of them,
//! HTTP/1.1 over TLS through [`Conn`], and a small HTTP/2 client on the `h2`
//! crate that speaks the suite's [`Request`] and [`Response`].

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_rustls::rustls;

use crate::http::{Conn, Request, Response};

/// A certificate and key written as PEM files, and the certificate's DER.
#[derive(Clone, Debug)]
pub struct TestCert {
    /// The PEM certificate file.
    pub cert: PathBuf,
    /// The PEM private key file.
    pub key: PathBuf,
    /// The certificate (DER), to trust it or recognise it.
    pub der: Vec<u8>,
}

/// A new self-signed certificate for `localhost` and `127.0.0.1`, written to
/// `dir` as `<tag>.crt` / `<tag>.key`.
pub fn make_cert(dir: &Path, tag: &str) -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen makes a certificate");
    let cert = dir.join(format!("{tag}.crt"));
    let key = dir.join(format!("{tag}.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    TestCert {
        cert,
        key,
        der: ck.cert.der().to_vec(),
    }
}

/// A client config trusting only `roots`, offering `alpn`.
pub fn client_config(roots: &[&[u8]], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(r.to_vec()))
            .expect("a valid root");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection's facts, after the handshake.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// The protocol chosen by ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The TLS version.
    pub version: Option<rustls::ProtocolVersion>,
    /// The server's leaf certificate (DER).
    pub leaf: Vec<u8>,
}

impl Negotiated {
    /// What `conn`'s handshake settled.
    fn of(conn: &rustls::ClientConnection) -> Negotiated {
        Negotiated {
            alpn: conn.alpn_protocol().map(|p| p.to_vec()),
            version: conn.protocol_version(),
            leaf: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec())
                .unwrap_or_default(),
        }
    }
}

/// Opens a TLS connection (handshake done) with `config`.
pub fn tls_stream(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<(
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    Negotiated,
)> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut tcp = tcp;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    let negotiated = Negotiated::of(&conn);
    Ok((rustls::StreamOwned::new(conn, tcp), negotiated))
}

/// An HTTP/1.1 connection over TLS (ALPN `http/1.1`) trusting `root`.
pub fn h1_conn(addr: SocketAddr, root: &[u8]) -> (Conn, Negotiated) {
    let (s, n) = tls_stream(addr, client_config(&[root], &[b"http/1.1"])).expect("TLS handshake");
    (Conn::from_transport(Box::new(s)), n)
}

/// An HTTP/2 connection over TLS (ALPN `h2`), driven by its own runtime.
pub struct H2Client {
    rt: tokio::runtime::Runtime,
    send: h2::client::SendRequest<Bytes>,
    /// What the handshake negotiated.
    pub negotiated: Negotiated,
}

impl H2Client {
    /// Connects, trusting only `root`; panics unless the server picks `h2`.
    pub fn connect(addr: SocketAddr, root: &[u8]) -> H2Client {
        Self::try_connect(addr, root).expect("HTTP/2 over TLS")
    }

    /// Connects, trusting only `root`.
    pub fn try_connect(addr: SocketAddr, root: &[u8]) -> Result<H2Client, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = client_config(&[root], &[b"h2"]);
        let (send, negotiated) = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let negotiated = Negotiated::of(tls.get_ref().1);
            if negotiated.alpn.as_deref() != Some(b"h2") {
                return Err(format!("ALPN chose {:?}", negotiated.alpn));
            }
            let (send, conn) = h2::client::handshake(tls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, String>((send, negotiated))
        })?;
        Ok(H2Client {
            rt,
            send,
            negotiated,
        })
    }

    /// Sends `req` as one HTTP/2 stream and reads the whole response.
    /// Connection-level HTTP/1.1 headers (`Connection`, `Transfer-Encoding`,
    /// `Host`) have no place in HTTP/2: `Host` becomes `:authority`, the
    /// others are left out, and a chunked body is sent as DATA frames.
    pub fn send(&mut self, req: &Request) -> Result<Response, String> {
        let mut b = http::Request::builder()
            .method(req.method.as_str())
            .uri(format!("https://localhost{}", req.target));
        let mut has_len = false;
        for (k, v) in &req.headers {
            let lk = k.to_ascii_lowercase();
            if ["connection", "transfer-encoding", "host", "keep-alive"].contains(&lk.as_str()) {
                continue;
            }
            has_len |= lk == "content-length";
            b = b.header(k.as_str(), v.as_str());
        }
        if !has_len && req.chunked.is_none() && !req.body.is_empty() {
            b = b.header("content-length", req.body.len().to_string());
        }
        let head = b.body(()).map_err(|e| e.to_string())?;
        let send = self.send.clone();
        let body = req.body.clone();
        let chunk = req.chunked.unwrap_or(usize::MAX).max(1);
        self.rt.block_on(async move {
            let mut send = send.ready().await.map_err(|e| e.to_string())?;
            let (resp, mut stream) = send
                .send_request(head, body.is_empty())
                .map_err(|e| e.to_string())?;
            if !body.is_empty() {
                let chunks: Vec<&[u8]> = body.chunks(chunk).collect();
                let n = chunks.len();
                for (i, c) in chunks.into_iter().enumerate() {
                    stream.reserve_capacity(c.len());
                    stream
                        .send_data(Bytes::copy_from_slice(c), i + 1 == n)
                        .map_err(|e| e.to_string())?;
                }
            }
            let resp = tokio::time::timeout(Duration::from_secs(30), resp)
                .await
                .map_err(|_| "no response within 30 s".to_string())?
                .map_err(|e| e.to_string())?;
            let (parts, mut body) = resp.into_parts();
            let mut out = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = body.flow_control().release_capacity(chunk.len());
                out.extend_from_slice(&chunk);
            }
            Ok(Response {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: out,
            })
        })
    }

    /// Opens `n` streams and resets each at once (CANCEL), as fast as the
    /// connection takes them: the rapid-reset flood. Returns the error that
    /// ended the connection, if the server ended it.
    pub fn rapid_reset(&mut self, n: usize, target: &str) -> Option<String> {
        let send = self.send.clone();
        let uri = format!("https://localhost{target}");
        self.rt.block_on(async move {
            let mut send = send;
            for _ in 0..n {
                send = match send.ready().await {
                    Ok(s) => s,
                    Err(e) => return Some(e.to_string()),
                };
                let head = http::Request::get(uri.as_str()).body(()).unwrap();
                match send.send_request(head, true) {
                    Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                    Err(e) => return Some(e.to_string()),
                }
                tokio::task::yield_now().await;
            }
            // Give the server a moment to answer the flood.
            tokio::time::sleep(Duration::from_millis(300)).await;
            send.ready().await.err().map(|e| e.to_string())
        })
    }
}
