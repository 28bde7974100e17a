//! The agent's TLS client configuration: rustls with the ring provider, trusting the system
//! roots or the certificates of a `--ca-cert` PEM file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

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
    client_config_with_roots(roots)
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
}
