//! TLS for the REST API (`ssl_cert_file`/`ssl_key_file`), served with rustls and
//! its ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the REST API's TLS setup failed. Startup stops: fix the files or the config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("error loading TLS certificate/key: {path}: {reason}")]
    Certificate {
        /// The file as resolved against the config folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("error loading TLS certificate/key: {path}: {reason}")]
    Key {
        /// The file as resolved against the config folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("error loading TLS certificate/key: {0}")]
    Config(#[from] rustls::Error),
}

/// `file` as upstream reads it: relative paths are relative to the config folder.
pub fn resolve(config_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir.join(p)
    }
}

/// The server side of TLS for a certificate chain and key in PEM files (PKCS#1,
/// PKCS#8 or SEC1 keys), offering HTTP/1.1 only as the API serves nothing else.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_path_buf(),
            reason: "no PEM certificate in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        // TLS 1.2 and 1.3, as upstream's MinVersion TLS 1.2.
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_read_from_the_config_folder() {
        let dir = Path::new("/etc/cluster");
        assert_eq!(
            resolve(dir, Path::new("server.crt")),
            PathBuf::from("/etc/cluster/server.crt")
        );
        assert_eq!(
            resolve(dir, Path::new("/tls/k.pem")),
            PathBuf::from("/tls/k.pem")
        );
    }

    #[test]
    fn missing_or_empty_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = server_config(&empty, &empty).unwrap_err();
        assert!(
            matches!(&err, TlsError::Certificate { path, .. } if path == &empty),
            "{err}"
        );
        let missing = dir.path().join("nope.crt");
        let err = server_config(&missing, &empty).unwrap_err().to_string();
        assert!(
            err.starts_with("error loading TLS certificate/key:") && err.contains("nope.crt"),
            "{err}"
        );
    }

    #[test]
    fn upstreams_sample_pair_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream/ssl");
        server_config(&dir.join("server.crt"), &dir.join("server.key")).unwrap();
        // A key that is not the certificate's is refused.
        let other = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            other.path(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(server_config(&dir.join("server.crt"), other.path()).is_err());
    }
}
