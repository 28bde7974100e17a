//! The agent's TLS client configuration: rustls with the ring provider, trusting the system
//! roots or the certificates of a `--ca-cert` PEM file, and, once `tracesd enroll` has pinned
//! them, only a coordinator certificate with one of the pinned fingerprints.
//!
//! A pinned fingerprint is the trust: with pins and no `ca_cert`, the certificate chain is
//! not consulted (a self-signed coordinator can be pinned), while the handshake signature is
//! still verified with the certificate's key. With pins and a `ca_cert`, both must hold.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The SHA-256 of a certificate (DER), as `openssl x509 -noout -fingerprint -sha256` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// Parses `sha256:` and 64 hex digits; colons between digits and openssl's
    /// `sha256 Fingerprint=` prefix are accepted, in any case.
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        let digits = lower
            .strip_prefix("sha256 fingerprint=")
            .or_else(|| lower.strip_prefix("sha256:"))
            .unwrap_or(&lower)
            .replace(':', "");
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{trimmed:?} is not a SHA-256 fingerprint (sha256: and 64 hex digits)"
            ));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
                .map_err(|e| format!("{trimmed:?}: {e}"))?;
        }
        Ok(Fingerprint(bytes))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Where `tracesd enroll` finds the fingerprint of the certificate the coordinator presented.
pub type Seen = Arc<Mutex<Option<Fingerprint>>>;

/// Checks the coordinator's certificate: against the pins when there are some (and the CA
/// chain when `chain` is set), else against the chain alone; records what it saw.
#[derive(Debug)]
struct CoordinatorVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<Fingerprint>,
    seen: Option<Seen>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CoordinatorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity.as_ref());
        if let Some(seen) = &self.seen {
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fingerprint);
        }
        if !self.pins.is_empty() && !self.pins.contains(&fingerprint) {
            tracing::error!(presented = %fingerprint, pinned = ?self.pins, "the coordinator presented a certificate that is not pinned");
            return Err(rustls::Error::General(format!(
                "the coordinator's certificate {fingerprint} is not the one pinned in coordinator_fingerprints (enroll again if the coordinator's certificate was replaced)"
            )));
        }
        match &self.chain {
            Some(chain) => {
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why the TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The CA file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The CA file is not valid PEM, or holds an invalid certificate.
    #[error("invalid certificate in {}: {message}", .path.display())]
    Invalid {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The CA file holds no certificate.
    #[error("{} holds no PEM certificate", .path.display())]
    Empty {
        /// The CA file.
        path: PathBuf,
    },
    /// No usable root certificate was found on the system.
    #[error("no system root certificates found (install ca-certificates or use --ca-cert){}", if .errors.is_empty() { String::new() } else { format!(": {}", .errors) })]
    NoSystemRoots {
        /// Errors met while loading them.
        errors: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads every certificate of a PEM file (other PEM sections are skipped).
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Invalid {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// The client configuration: trusts only the certificates in `ca_cert` when given, else the
/// system's roots. ALPN offers `http/1.1` only (the WebSocket upgrade is HTTP/1.1).
pub fn client_config(ca_cert: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_pinned(ca_cert, &[], None)
}

/// The client configuration of an agent: with `pins`, only a coordinator certificate with one
/// of those fingerprints is accepted (and it must also chain to `ca_cert` when given); without,
/// as [`client_config`]. The fingerprint of the certificate presented goes to `seen`.
pub fn client_config_pinned(
    ca_cert: Option<&Path>,
    pins: &[Fingerprint],
    seen: Option<Seen>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = if pins.is_empty() || ca_cert.is_some() {
        let roots = Arc::new(root_store(ca_cert)?);
        Some(
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?,
        )
    } else {
        None
    };
    let verifier = Arc::new(CoordinatorVerifier {
        chain,
        pins: pins.to_vec(),
        seen,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of `ca_cert`, or the system's roots.
fn root_store(ca_cert: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            for certificate in load_ca_file(path)? {
                roots.add(certificate).map_err(|error| TlsError::Invalid {
                    path: path.to_owned(),
                    message: error.to_string(),
                })?;
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let errors = loaded
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(TlsError::NoSystemRoots { errors });
            }
            tracing::debug!(roots = added, "loaded system root certificates");
        }
    }
    Ok(roots)
}

/// The client configuration trusting exactly `roots`.
pub fn client_config_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_named() {
        let error = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/ca.pem: "),
            "{error}"
        );
    }

    #[test]
    fn file_without_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = client_config(Some(&path)).unwrap_err();
        assert!(matches!(error, TlsError::Empty { .. }), "{error}");
        assert!(error.to_string().ends_with("holds no PEM certificate"));
    }

    #[test]
    fn generated_ca_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(&path, ca.pem()).unwrap();
        assert_eq!(load_ca_file(&path).unwrap().len(), 1);
        let config = client_config(Some(&path)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    /// A CA, and a server certificate it signed for `localhost` with its key.
    fn ca_and_leaf() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        (rcgen::Issuer::new(params, key), ca.pem())
    }

    fn leaf(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    ) -> (
        CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        (
            cert.der().clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// Handshakes with a server presenting `cert`; the client's error, if any.
    async fn handshake(
        client: Arc<ClientConfig>,
        cert: CertificateDer<'static>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(stream).await;
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from("localhost").unwrap();
        let result = connector
            .connect(name, stream)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        serving.abort();
        result
    }

    #[tokio::test]
    async fn only_the_pinned_certificate_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (issuer, ca_pem) = ca_and_leaf();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        let (pinned, pinned_key) = leaf(&issuer);
        let (other, other_key) = leaf(&issuer);
        let pin = Fingerprint::of(pinned.as_ref());
        // Without a pin both chain to the CA and pass; what was presented is recorded.
        let seen = Seen::default();
        let open = client_config_pinned(Some(&ca), &[], Some(seen.clone())).unwrap();
        handshake(open.clone(), pinned.clone(), pinned_key.clone_key())
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), Some(pin));
        handshake(open, other.clone(), other_key.clone_key())
            .await
            .unwrap();
        // With the pin, the same CA's other certificate for the same name is refused.
        let strict = client_config_pinned(Some(&ca), &[pin], None).unwrap();
        handshake(strict.clone(), pinned.clone(), pinned_key.clone_key())
            .await
            .unwrap();
        let error = handshake(strict, other.clone(), other_key.clone_key())
            .await
            .unwrap_err();
        assert!(error.contains("not the one pinned"), "{error}");
        // A pin alone trusts a certificate that chains to nothing known (self-signed).
        let pin_only = client_config_pinned(None, &[pin], None).unwrap();
        handshake(pin_only.clone(), pinned, pinned_key)
            .await
            .unwrap();
        assert!(handshake(pin_only, other, other_key).await.is_err());
        // Fingerprints read as openssl prints them.
        let openssl = pin
            .0
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            Fingerprint::parse(&format!("sha256 Fingerprint={openssl}")).unwrap(),
            pin
        );
        assert_eq!(Fingerprint::parse(&pin.to_string()).unwrap(), pin);
        assert!(Fingerprint::parse("sha256:1234").is_err());
    }
}
