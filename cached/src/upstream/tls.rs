//! Trust anchors for TLS origins: the system's store (read once at start) plus the PEM
//! certificates of `cached.tls_ca_file`. Verification itself is rustls's, through ureq.

use anyhow::{bail, Context as _};
use std::path::Path;
use std::sync::Arc;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

/// The trust anchors every verifying TLS server of the instance shares.
pub struct Trust {
    roots: RootCerts,
}

impl Trust {
    /// Loads the system store and `ca_file` (when given). An unreadable or empty CA file is
    /// an error; an empty system store only a warning (a private CA may be all that is used).
    pub fn load(ca_file: Option<&Path>) -> anyhow::Result<Trust> {
        let mut certs: Vec<Certificate<'static>> = Vec::new();
        let system = rustls_native_certs::load_native_certs();
        for e in &system.errors {
            log::warn!("system trust store: {e}");
        }
        certs.extend(
            system
                .certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned()),
        );
        if certs.is_empty() && ca_file.is_none() {
            log::warn!("the system trust store is empty: no https origin can be verified");
        }
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cached.tls_ca_file {}", path.display()))?;
            let before = certs.len();
            for item in ureq::tls::parse_pem(&pem) {
                match item.with_context(|| format!("cached.tls_ca_file {}", path.display()))? {
                    PemItem::Certificate(c) => certs.push(c),
                    _ => continue,
                }
            }
            if certs.len() == before {
                bail!(
                    "cached.tls_ca_file {}: no PEM certificate in it",
                    path.display()
                );
            }
        }
        Ok(Trust {
            roots: RootCerts::Specific(Arc::new(certs)),
        })
    }

    /// The TLS settings of one server: rustls, these anchors, and verification unless the
    /// site turned it off.
    pub fn config(&self, verify: bool) -> TlsConfig {
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(self.roots.clone())
            .disable_verification(!verify)
            .build()
    }
}

/// The TLS failure inside an upstream error, if it is one: rustls reports handshake and
/// certificate failures as I/O errors that carry a `rustls::Error`.
pub fn tls_failure(e: &ureq::Error) -> Option<String> {
    match e {
        ureq::Error::Rustls(r) => Some(r.to_string()),
        ureq::Error::Tls(s) => Some(s.to_string()),
        ureq::Error::TlsRequired => Some("TLS required".into()),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|r| r.to_string()),
        _ => None,
    }
}
