//! TLS material from PEM files: the client side of the broker link (`amqps://`) and the
//! server side of the center's HTTP API.
//!
//! Both use rustls with the ring provider, named explicitly rather than taken from the process
//! default: which providers a binary links depends on every crate's features, and rustls
//! refuses to guess when there is more than one.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path}: {message}")]
    Invalid {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("{0}")]
    Setup(String),
}

/// The TLS files of a client link, as configured (`[bus] tls_ca`, `tls_cert`, `tls_key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA certificates (PEM) the server's certificate must chain to; `None`: the system's.
    pub ca: Option<PathBuf>,
    /// A client certificate chain (PEM) to present, with its key.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Whether any TLS file is configured.
    pub fn is_configured(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The rustls client configuration these files make. Reads every file now, so that a
    /// missing or unreadable one is reported when the link is set up, not at each connect.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let roots = match &self.ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates(path, "CA file")? {
                    roots.add(cert).map_err(|err| TlsError::Invalid {
                        what: "CA file",
                        path: path.display().to_string(),
                        message: err.to_string(),
                    })?;
                }
                roots
            }
            None => system_roots()?,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Setup(err.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert, "client certificate")?;
                let key_der = read_private_key(key, "client key")?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|err| TlsError::Invalid {
                        what: "client key",
                        path: key.display().to_string(),
                        message: format!("does not fit the client certificate: {err}"),
                    })?
            }
            (Some(_), None) => {
                return Err(TlsError::Setup(
                    "a client certificate (tls_cert) needs its key (tls_key)".to_string(),
                ))
            }
            (None, Some(_)) => {
                return Err(TlsError::Setup(
                    "a client key (tls_key) needs its certificate (tls_cert)".to_string(),
                ))
            }
        };
        Ok(Arc::new(config))
    }
}

/// The rustls server configuration of a certificate chain and its key (PEM files), without
/// client authentication: API callers authenticate by signature.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = read_certificates(cert, "certificate")?;
    let key_der = read_private_key(key, "key")?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Setup(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|err| TlsError::Invalid {
            what: "key",
            path: key.display().to_string(),
            message: format!("does not fit the certificate: {err}"),
        })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    // Large system stores hold a few certificates rustls cannot parse; those are skipped.
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|err| format!(": {err}"))
            .unwrap_or_default();
        return Err(TlsError::Setup(format!(
            "no system CA certificates found{why}; name the broker's CA with tls_ca"
        )));
    }
    Ok(roots)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate of a PEM file; a file with none is an error (a key file given as the
/// certificate, a DER file).
pub fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let invalid = |message: String| TlsError::Invalid {
        what,
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(err.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it".to_string()));
    }
    Ok(certs)
}

fn read_private_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, what)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| TlsError::Invalid {
        what,
        path: path.display().to_string(),
        message: format!("no PEM private key in it ({err})"),
    })
}

/// What a failed TLS handshake means for the operator, when the failure is rustls' verdict on
/// a certificate; `None` for other failures (a refused connection, a timeout).
pub fn explain_handshake_failure(err: &std::io::Error) -> Option<String> {
    use rustls::{AlertDescription, CertificateError, Error};
    let rustls_error = err.get_ref()?.downcast_ref::<Error>()?;
    let why = match rustls_error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA (check tls_ca: it must be \
             the CA that signed the server's certificate)"
                .to_string()
        }
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate is not valid for the host name in the URL".to_string()
        }
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_string()
        }
        Error::InvalidCertificate(other) => {
            format!("the server's certificate is refused: {other:?}")
        }
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown,
        ) => "the server refused our client certificate (check tls_cert and tls_key)".to_string(),
        _ => return None,
    };
    Some(format!("{why}: {rustls_error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let tls = ClientTls {
            ca: None,
            cert: Some(PathBuf::from("client.pem")),
            key: None,
        };
        let err = tls.client_config().err().map(|err| err.to_string());
        assert_eq!(
            err.as_deref(),
            Some("a client certificate (tls_cert) needs its key (tls_key)")
        );
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = ClientTls {
            ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..Default::default()
        };
        let err = tls.client_config().err().map(|err| err.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|err| err.starts_with("cannot read CA file /nonexistent/ca.pem")),
            "{err:?}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("elves-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").ok();
        let err = read_certificates(&path, "CA file")
            .err()
            .map(|err| err.to_string());
        assert_eq!(
            err,
            Some(format!(
                "CA file {}: no PEM certificate in it",
                path.display()
            ))
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
