//! MQTT over TLS: builds the rustls server configuration (ring provider) from PEM files,
//! optionally requiring client certificates signed by a configured CA (mutual TLS).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};

use crate::MqttError;
use crate::config::{ClientAuth, TlsConfig};

fn tls_error(path: &Path, what: impl std::fmt::Display) -> MqttError {
    MqttError::Tls(format!("{}: {what}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The acceptor for `config`, which must be [`TlsConfig::enabled`].
pub(crate) fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, MqttError> {
    let provider = Arc::new(crypto::ring::default_provider());
    let chain = certs(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| tls_error(&config.key, e))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?;
    let builder = if config.client_ca.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for ca in certs(&config.client_ca)? {
            roots.add(ca).map_err(|e| tls_error(&config.client_ca, e))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = match config.client_auth {
            ClientAuth::Required => verifier,
            ClientAuth::Optional => verifier.allow_unauthenticated(),
        }
        .build()
        .map_err(|e| tls_error(&config.client_ca, e))?;
        builder.with_client_cert_verifier(verifier)
    };
    let server = builder
        .with_single_cert(chain, key)
        .map_err(|e| tls_error(&config.cert, e))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
