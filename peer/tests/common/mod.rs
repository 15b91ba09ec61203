//! Test PKI and endpoints for the peer transport's tests: certificates made
//! with rcgen the way the development PKI makes them, and nodes on
//! 127.0.0.1:0.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use strongbox_peer::{
    Denial, DenyReason, HandlerError, NodeId, NodeTls, PeerConfig, PeerEndpoint, PeerHandler,
    PeerObserver,
};
use strongbox_tls::KeyExchange;

pub const TRUST_DOMAIN: &str = "cluster.test";

/// A certificate and its key.
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub key: Vec<u8>,
}

impl Issued {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).into();
        let cert = params.self_signed(&key).expect("self-signed");
        Self {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        roots
    }

    /// A leaf with these URI SANs, both TLS usages, valid `[from, until]`.
    pub fn issue_with(&self, uris: &[&str], from: SystemTime, until: SystemTime) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "peer test");
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).to_owned().try_into().expect("uri")));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = from.into();
        params.not_after = until.into();
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Issued {
            der: cert.der().clone(),
            key: key.serialize_der(),
        }
    }

    pub fn issue(&self, uris: &[&str]) -> Issued {
        let now = SystemTime::now();
        self.issue_with(
            uris,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(24 * 3600),
        )
    }

    pub fn node(&self, id: NodeId) -> Issued {
        self.issue(&[&node_uri(id)])
    }

    pub fn expired_node(&self, id: NodeId) -> Issued {
        let now = SystemTime::now();
        self.issue_with(
            &[&node_uri(id)],
            now - Duration::from_secs(2 * 24 * 3600),
            now - Duration::from_secs(3600),
        )
    }
}

pub fn node_uri(id: NodeId) -> String {
    format!("spiffe://{TRUST_DOMAIN}/strongbox/node/{id}")
}

/// `NodeTls` for a certificate, skipping the own-identity check: a test
/// that needs a node to present a client certificate builds it by hand.
pub fn node_tls(ca: &Ca, cert: &Issued) -> NodeTls {
    NodeTls::new(
        vec![cert.der.clone()],
        cert.key(),
        ca.roots(),
        TRUST_DOMAIN,
        KeyExchange::PreferHybrid,
    )
    .expect("node tls")
}

/// Membership that tests change while connections are open.
#[derive(Default, Clone)]
pub struct Members(pub Arc<Mutex<BTreeSet<NodeId>>>);

impl Members {
    pub fn of(ids: &[NodeId]) -> Self {
        Self(Arc::new(Mutex::new(ids.iter().copied().collect())))
    }
    pub fn remove(&self, id: NodeId) {
        self.0.lock().expect("lock").remove(&id);
    }
}

impl strongbox_peer::Membership for Members {
    fn is_member(&self, id: NodeId) -> bool {
        self.0.lock().expect("lock").contains(&id)
    }
}

/// Addresses that tests fill in as nodes start.
#[derive(Default, Clone)]
pub struct Book(pub Arc<Mutex<HashMap<NodeId, SocketAddr>>>);

impl Book {
    pub fn set(&self, id: NodeId, addr: SocketAddr) {
        self.0.lock().expect("lock").insert(id, addr);
    }
}

impl strongbox_peer::AddressBook for Book {
    fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.0.lock().expect("lock").get(&id).copied()
    }
}

/// Records every denial.
#[derive(Default, Clone)]
pub struct Recorder(pub Arc<Mutex<Vec<Denial>>>);

impl Recorder {
    pub fn all(&self) -> Vec<Denial> {
        self.0.lock().expect("lock").clone()
    }
    pub fn reasons(&self) -> Vec<DenyReason> {
        self.all().iter().map(|d| d.reason).collect()
    }
    /// Waits (bounded) until a denial with `reason` was recorded.
    pub async fn wait_for(&self, reason: DenyReason) -> Denial {
        for _ in 0..200 {
            if let Some(d) = self.all().into_iter().find(|d| d.reason == reason) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no {reason} denial recorded; got {:?}", self.all());
    }
}

impl PeerObserver for Recorder {
    fn denied(&self, d: &Denial) {
        self.0.lock().expect("lock").push(d.clone());
    }
}

/// Method numbers of the test handler.
pub const ECHO: u16 = 1;
pub const WHO: u16 = 2;
pub const FAIL: u16 = 3;

/// Echoes, names the caller, or fails.
pub struct TestHandler;

impl PeerHandler for TestHandler {
    async fn handle(
        &self,
        from: NodeId,
        method: u16,
        payload: Bytes,
    ) -> Result<Bytes, HandlerError> {
        match method {
            ECHO => Ok(payload),
            WHO => Ok(Bytes::from(from.to_string())),
            FAIL => Err(HandlerError::failed("the test handler fails on purpose")),
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

pub fn test_config() -> PeerConfig {
    PeerConfig {
        max_payload: 1024 * 1024,
        call_timeout: Duration::from_secs(10),
        ..PeerConfig::default()
    }
}

/// A running node.
pub struct Node {
    pub endpoint: PeerEndpoint,
    pub addr: SocketAddr,
    pub observer: Recorder,
    pub members: Members,
}

pub fn start(tls: NodeTls, members: Members, config: PeerConfig) -> Node {
    let observer = Recorder::default();
    let endpoint = PeerEndpoint::bind(
        "127.0.0.1:0".parse().expect("addr"),
        tls,
        config,
        Arc::new(members.clone()),
        Arc::new(observer.clone()),
    )
    .expect("bind");
    endpoint.serve(Arc::new(TestHandler));
    let addr = endpoint.local_addr().expect("addr");
    Node {
        endpoint,
        addr,
        observer,
        members,
    }
}

/// A raw QUIC connection to a peer listener, presenting `cert` (any
/// certificate at all) and accepting any server: the tests' stand-in for a
/// misbehaving or foreign node.
pub async fn raw_connect(cert: &Issued, server: SocketAddr) -> quinn::Connection {
    let provider = strongbox_tls::crypto_provider(KeyExchange::PreferHybrid);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(vec![cert.der.clone()], cert.key())
        .expect("client cert");
    config.alpn_protocols = vec![strongbox_peer::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).expect("quic");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    tokio::time::timeout(
        Duration::from_secs(10),
        endpoint.connect(server, "node").expect("connect"),
    )
    .await
    .expect("handshake in time")
    .expect("the client side of the handshake completes")
}

/// Sends `bytes` on a new stream, finishes it, and reads the whole answer
/// (bounded). `Err` carries the connection or stream error.
pub async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let fut = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        // A refused stream may be stopped before everything is written.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        recv.read_to_end(4 * 1024 * 1024)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
