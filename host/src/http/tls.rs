//! TLS for the HTTP listener (rustls, with the `ring` provider): the
//! server's certificate chain and key, read from PEM files and read again
//! when either file changes (`http::reload`), so that a certificate is rotated by replacing
//! its files, with no restart. Connections already open keep the
//! certificate they were made with; every new handshake gets the newest one
//! that loaded. A pair that does not load (half written, or a key that does
//! not match its certificate) is reported and the previous one kept.
//!
//! It knows nothing of routes or tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::reload::Watched;

/// Why the certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of its kind.
    #[error("{file}: {reason}; --tls-cert takes a PEM file with the certificate chain (server certificate first) and --tls-key a PEM file with its private key (PKCS#8, PKCS#1 or SEC1)")]
    File {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key does not belong to the certificate, or is not usable.
    #[error("{key} does not match the certificate in {cert} ({reason}); give the key the certificate was issued for")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(String),
}

/// The certificate served, read again from its files when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    files: Watched,
}

impl ReloadingCert {
    /// Load the pair of files; an error names the file and the fix.
    pub fn load(cert: &Path, key: &Path) -> Result<ReloadingCert, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = Watched::new(&[cert, key]);
        let loaded = load_pair(cert, key, &provider)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: ArcSwap::from_pointee(loaded),
            files,
        })
    }

    /// A rustls server configuration that serves this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Load the files again if they changed (at most once a second); a
    /// pair that does not load is reported and the previous one kept.
    fn refresh(&self) {
        self.files.reload_if_changed(|| {
            match load_pair(&self.cert, &self.key, &self.provider) {
                Ok(loaded) => {
                    self.current.store(Arc::new(loaded));
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    true
                }
                // Looked at again next time: the other file may be on its way.
                Err(e) => {
                    tracing::warn!(
                        "TLS certificate not reloaded, still serving the previous one: {e}"
                    );
                    false
                }
            }
        });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        Some(self.current.load_full())
    }
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let file_err = |file: &Path, reason: String| TlsError::File {
        file: file.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(cert, "holds no certificate".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_err(key, format!("holds no usable private key: {e}")))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })
}
