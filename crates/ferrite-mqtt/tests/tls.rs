//! MQTT over TLS and mutual TLS, with certificates made for the test (rcgen) and a rustls
//! client: the handshake, MQTT inside it, client certificates required and handed to the
//! authenticator.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use ferrite_core::SystemClock;
use ferrite_mqtt::{
    Authenticator, ConnectRequest, MqttConfig, MqttServer, Router, SessionGuard, TlsConfig,
    Unrestricted,
};
use ferrite_mqtt_codec::{Connect, Decoder, Packet, Properties, ProtocolVersion, ReasonCode};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Ferrite test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "device-42");
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
        _dir: dir,
    }
}

/// Records the client certificates the server handed over.
#[derive(Default)]
struct Recorder(Mutex<Vec<Option<Vec<u8>>>>);

impl Authenticator for Recorder {
    fn authenticate(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Arc<dyn SessionGuard>, ReasonCode> {
        self.0
            .lock()
            .unwrap()
            .push(request.client_cert.map(<[u8]>::to_vec));
        Ok(Arc::new(Unrestricted::new(request.client_id)))
    }
}

async fn start(pki: &Pki, mutual: bool, auth: Arc<Recorder>) -> (MqttServer, CancellationToken) {
    let config = MqttConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: if mutual {
                pki.ca.clone()
            } else {
                PathBuf::new()
            },
            ..TlsConfig::default()
        },
        ..MqttConfig::default()
    };
    let shutdown = CancellationToken::new();
    let server = MqttServer::start(
        config,
        Router::new(10),
        auth,
        Arc::new(SystemClock),
        shutdown.clone(),
    )
    .await
    .unwrap();
    (server, shutdown)
}

fn connector(pki: &Pki, with_client_cert: bool) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_client_cert {
        let chain = vec![CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    TlsConnector::from(Arc::new(config))
}

/// TLS handshake, then CONNECT; returns the CONNACK reason, or None if the server closed.
async fn mqtt_over_tls(addr: SocketAddr, connector: TlsConnector) -> Option<ReasonCode> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .ok()?;
    let mut buf = BytesMut::new();
    Packet::Connect(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "tls-client".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    })
    .encode(ProtocolVersion::V5, &mut buf)
    .unwrap();
    tls.write_all(&buf).await.ok()?;
    let mut decoder = Decoder::new(1 << 20);
    decoder.set_version(ProtocolVersion::V5);
    let mut rbuf = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Packet::ConnAck(a)) = decoder.decode(&mut rbuf).unwrap() {
                return Some(a.reason_code);
            }
            match tls.read_buf(&mut rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn mqtt_over_tls_connects() {
    let pki = pki();
    let auth = Arc::new(Recorder::default());
    let (server, shutdown) = start(&pki, false, Arc::clone(&auth)).await;
    let addr = server.tls_addr().expect("TLS listener");
    assert_eq!(
        mqtt_over_tls(addr, connector(&pki, false)).await,
        Some(ReasonCode::SUCCESS)
    );
    assert_eq!(*auth.0.lock().unwrap(), vec![None]);
    // Plain MQTT on the TLS port is not MQTT to it: the handshake fails, nothing is accepted.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(&[0x10, 0x00]).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut sink))
        .await
        .unwrap();
    assert_eq!(auth.0.lock().unwrap().len(), 1);
    shutdown.cancel();
    server.wait().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_and_hands_it_over() {
    let pki = pki();
    let auth = Arc::new(Recorder::default());
    let (server, shutdown) = start(&pki, true, Arc::clone(&auth)).await;
    let addr = server.tls_addr().expect("TLS listener");
    assert_eq!(
        mqtt_over_tls(addr, connector(&pki, false)).await,
        None,
        "no client certificate: refused"
    );
    assert!(auth.0.lock().unwrap().is_empty());
    assert_eq!(
        mqtt_over_tls(addr, connector(&pki, true)).await,
        Some(ReasonCode::SUCCESS)
    );
    let seen = auth.0.lock().unwrap().clone();
    let expected = CertificateDer::from_pem_slice(pki.client_cert.as_bytes())
        .unwrap()
        .to_vec();
    assert_eq!(seen, vec![Some(expected)]);
    shutdown.cancel();
    server.wait().await;
}

#[tokio::test]
async fn bad_tls_files_are_a_clear_start_error() {
    let pki = pki();
    let config = MqttConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: pki.server_key.clone(), // a key where the certificate should be
            key: pki.server_key.clone(),
            ..TlsConfig::default()
        },
        ..MqttConfig::default()
    };
    let err = MqttServer::start(
        config,
        Router::new(10),
        Arc::new(Recorder::default()),
        Arc::new(SystemClock),
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("server.key"), "{err}");
}
