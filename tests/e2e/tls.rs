//! Certificates made at test time (`rcgen`) for the TLS test origin ([`crate::origin`]).
//!
//! [`TestCa::new`] makes a private CA and writes its certificate as PEM to a temp file, the
//! argument of `cached --tls-ca-file`; [`TestCa::leaf`] signs a server certificate for some
//! names and a validity window (dates in the past make an expired one);
//! [`TestCert::self_signed`] makes one no CA vouches for. [`TestCert::server_config`] turns a
//! certificate into a rustls server configuration (ring provider, TLS 1.2 and 1.3).
//!
//! The tests at the bottom check the helpers themselves with a rustls client: the CA's
//! leaf verifies, and the self-signed, wrong-name and expired ones fail for that reason.

// A shared harness: not every test file uses every helper.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A calendar date `(year, month, day)`, midnight UTC.
pub type Date = (i32, u8, u8);

/// Far enough on both sides of any test run.
pub const LONG_AGO: Date = (2000, 1, 1);
pub const FAR_AHEAD: Date = (2100, 1, 1);

/// The rustls crypto provider every test endpoint uses (ring; no process-wide default is set).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A private certificate authority; its PEM lives in a temp file while this lives.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
    dir: tempfile::TempDir,
    pem_path: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "shmproxy e2e test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(LONG_AGO.0, LONG_AGO.1, LONG_AGO.2);
        params.not_after = rcgen::date_time_ymd(FAR_AHEAD.0, FAR_AHEAD.1, FAR_AHEAD.2);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let pem = cert.pem();
        let dir = tempfile::Builder::new()
            .prefix("shmproxy-e2e-ca-")
            .tempdir()
            .expect("tempdir for the CA");
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, &pem).expect("write ca.pem");
        TestCa {
            issuer: Issuer::new(params, key),
            der: cert.der().clone(),
            pem,
            dir,
            pem_path,
        }
    }

    /// The CA certificate as PEM, in a file (for `--tls-ca-file`).
    pub fn pem_path(&self) -> &Path {
        &self.pem_path
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from `not_before`
    /// to `not_after`, signed by this CA.
    pub fn leaf(&self, names: &[&str], not_before: Date, not_after: Date) -> TestCert {
        let (params, key) = leaf_params(names, not_before, not_after);
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        TestCert::new(names, cert.der().clone(), cert.pem(), key)
    }

    /// A leaf for `names` valid from long ago to far ahead.
    pub fn leaf_valid(&self, names: &[&str]) -> TestCert {
        self.leaf(names, LONG_AGO, FAR_AHEAD)
    }

    /// A client trust store holding only this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("add the CA root");
        roots
    }
}

fn leaf_params(names: &[&str], not_before: Date, not_after: Date) -> (CertificateParams, KeyPair) {
    let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    // Names are checked against the subjectAltName; the subject is only an issuer name to
    // webpki, so it must not match any root of a system trust store (some have a
    // `CN=localhost`), or a self-signed leaf fails as a bad signature instead of an
    // unknown issuer.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("shmproxy e2e leaf {}", names.join(" ")),
    );
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = KeyPair::generate().expect("leaf key");
    (params, key)
}

/// A server certificate and its private key.
pub struct TestCert {
    names: Vec<String>,
    der: CertificateDer<'static>,
    pem: String,
    key_der: Vec<u8>,
}

impl TestCert {
    fn new(names: &[&str], der: CertificateDer<'static>, pem: String, key: KeyPair) -> TestCert {
        TestCert {
            names: names.iter().map(|s| s.to_string()).collect(),
            der,
            pem,
            key_der: key.serialize_der(),
        }
    }

    /// A certificate for `names` that signs itself: no CA vouches for it.
    pub fn self_signed(names: &[&str]) -> TestCert {
        let (params, key) = leaf_params(names, LONG_AGO, FAR_AHEAD);
        let cert = params.self_signed(&key).expect("self-sign the leaf");
        TestCert::new(names, cert.der().clone(), cert.pem(), key)
    }

    /// The names the certificate is valid for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A rustls server configuration presenting this certificate (TLS 1.2 and 1.3, no client
    /// certificates, ALPN `http/1.1`).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .expect("server certificate and key");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// A rustls client configuration trusting `roots` only.
pub fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    //! The helpers on their own: a rustls client against the TLS origin.
    use super::*;
    use crate::origin::{Origin, Route};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// One `GET path` over TLS to `origin` with server name `name`; the whole answer as text,
    /// or the TLS error.
    fn tls_get(
        origin: &Origin,
        name: &str,
        roots: rustls::RootCertStore,
        path: &str,
    ) -> Result<String, String> {
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(client_config(roots), server_name).unwrap();
        let tcp = TcpStream::connect_timeout(&origin.addr(), Duration::from_secs(5)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let req = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        match tls.read_to_end(&mut out) {
            Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
            // The origin closes after `Connection: close` without close_notify being required.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
                Ok(String::from_utf8_lossy(&out).into_owned())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn tls_helpers_ca_leaf_serves_200_to_a_rustls_client() {
        let ca = TestCa::new();
        assert!(ca.pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let on_disk = std::fs::read_to_string(ca.pem_path()).unwrap();
        assert_eq!(on_disk, ca.pem());
        let cert = ca.leaf_valid(&["localhost"]);
        let origin = Origin::start_tls(&cert);
        assert!(
            origin.url().starts_with("https://localhost:"),
            "{}",
            origin.url()
        );
        origin.route("/hello", Route::ok("hello over tls"));
        let text = tls_get(&origin, "localhost", ca.roots(), "/hello").expect("TLS GET");
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(text.ends_with("hello over tls"), "{text}");
        assert_eq!(origin.count("/hello"), 1);
        assert_eq!(origin.accepted(), 1);
    }

    #[test]
    fn tls_helpers_bad_certificates_fail_for_their_reason() {
        let ca = TestCa::new();
        let cases: [(&str, TestCert, &str); 3] = [
            (
                "self-signed",
                TestCert::self_signed(&["localhost"]),
                "unknownissuer",
            ),
            (
                "other name",
                ca.leaf_valid(&["other.test"]),
                "not valid for name",
            ),
            (
                "expired",
                ca.leaf(&["localhost"], (2001, 1, 1), (2002, 1, 1)),
                "expired",
            ),
        ];
        for (what, cert, reason) in cases {
            let origin = Origin::start_tls(&cert);
            origin.route("/x", Route::ok("x"));
            let err = tls_get(&origin, "localhost", ca.roots(), "/x")
                .expect_err(&format!("{what}: the handshake must fail"));
            assert!(
                err.to_ascii_lowercase().contains(reason),
                "{what}: error {err:?} lacks {reason}"
            );
            assert_eq!(origin.count("/x"), 0, "{what}: no request got through");
        }
    }

    #[test]
    fn tls_helpers_ip_address_names_verify() {
        let ca = TestCa::new();
        let cert = ca.leaf_valid(&["127.0.0.1"]);
        let origin = Origin::builder().tls(&cert).url_host("127.0.0.1").start();
        assert!(origin.url().starts_with("https://127.0.0.1:"));
        origin.route("/ip", Route::ok("ip"));
        let text = tls_get(&origin, "127.0.0.1", ca.roots(), "/ip").expect("TLS GET by IP");
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    }

    #[test]
    fn tls_helpers_keep_alive_idle_close_and_connection_count() {
        let ca = TestCa::new();
        let cert = ca.leaf_valid(&["localhost"]);
        let origin = Origin::builder()
            .tls(&cert)
            .idle_close(Duration::from_millis(300))
            .advertise_keep_alive(1)
            .start();
        origin.route("/ka", Route::ok("ka"));
        let server_name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(client_config(ca.roots()), server_name).unwrap();
        let tcp = TcpStream::connect_timeout(&origin.addr(), Duration::from_secs(5)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = vec![0u8; 4096];
        for _ in 0..2 {
            tls.write_all(b"GET /ka HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let text = crate::origin::tests::read_answer(&mut tls);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.contains("Keep-Alive: timeout=1\r\n"), "{text}");
            assert!(text.ends_with("\r\n\r\nka"), "{text}");
        }
        let idle_from = std::time::Instant::now();
        let got = tls.read(&mut buf);
        let idle = idle_from.elapsed();
        assert!(
            matches!(got, Ok(0)) || got.is_err(),
            "closed, not answered: {got:?}"
        );
        assert!(
            idle >= Duration::from_millis(250) && idle < Duration::from_secs(3),
            "closed after {idle:?}, want ~300 ms"
        );
        assert_eq!(origin.count("/ka"), 2);
        assert_eq!(origin.accepted(), 1, "both requests on one connection");
    }
}
