//! The TLS certificate the proxy listener presents, swappable while it
//! serves: Pingora's rustls listener asks a [`ResolvesServerCert`] for the
//! certificate on every handshake, so a reload replaces what the resolver
//! holds and the next handshake uses it. Connections already open keep the
//! session they negotiated; nothing is dropped.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};

/// The certificate and key in use, replaced whole on reload.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    /// Loads the certificate chain and key from PEM files.
    pub fn load(cert: &Path, key: &Path) -> Result<CertStore, String> {
        Ok(CertStore {
            current: ArcSwap::from_pointee(load_pair(cert, key)?),
        })
    }

    /// Re-reads both files; on any problem the certificate in use stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), String> {
        self.current.store(Arc::new(load_pair(cert, key)?));
        Ok(())
    }

    /// The leaf certificate in use (DER), for tests and logs.
    pub fn leaf(&self) -> Vec<u8> {
        self.current
            .load()
            .cert
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reads a PEM chain and key and checks that they belong together.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    pingora::tls::install_default_crypto_provider();
    let (cert_s, key_s) = (cert.to_string_lossy(), key.to_string_lossy());
    for p in [cert, key] {
        std::fs::metadata(p).map_err(|e| format!("tls: cannot read {}: {e}", p.display()))?;
    }
    let (chain, der) = pingora::tls::load_certs_and_key_files(&cert_s, &key_s)
        .map_err(|e| format!("tls: {cert_s} / {key_s}: {e}"))?
        .ok_or_else(|| {
            format!("tls: {cert_s} holds no PEM certificate or {key_s} no PEM private key")
        })?;
    let provider = pingora::tls::CryptoProvider::get_default()
        .ok_or("tls: no rustls crypto provider installed")?;
    // from_der also checks the key is the certificate's (where it can tell).
    let pair = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        format!("tls: {key_s} is not a usable key for the certificate in {cert_s}: {e}")
    })?;
    Ok(pair)
}
