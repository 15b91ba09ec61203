//! The peer link's TLS: TLS 1.3 only, ALPN `strongbox-peer/1`, the key
//! exchange policy of `strongbox-tls`, and certificates checked both ways.
//!
//! - The listener requires a client certificate chained to the cluster CA
//!   and naming a node of the cluster's trust domain that is a current
//!   member. Its verifier is built per incoming connection so that every
//!   refusal is reported with the remote's address.
//! - The dialer verifies the remote's chain against the cluster CA, and
//!   that its certificate names exactly the node it meant to dial. Node
//!   certificates carry no DNS name: the node id is the name that counts,
//!   so the usual host name check is replaced by the node id check.
//!
//! Node certificates are both TLS server and TLS client certificates (the
//! extended key usages `serverAuth` and `clientAuth`): every node listens
//! and dials. Session resumption and early data are off: a resumed session
//! would skip the certificate checks.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use strongbox_tls::{KeyExchange, crypto_provider};

use crate::error::PeerError;
use crate::frame::ALPN;
use crate::identity::{IdentityError, NodeId, NodeIdentity};
use crate::observer::{Denial, DenyReason, Direction, Membership, PeerObserver};

/// The server name given to rustls when dialing. Never sent (SNI is off)
/// and never checked (the node id is): rustls only needs a name.
const DIAL_SERVER_NAME: &str = "strongbox-node";

/// A node's TLS material for the peer link: its own node certificate and
/// key, the cluster CA, the trust domain and the key exchange policy.
#[derive(Clone)]
pub struct NodeTls {
    identity: NodeIdentity,
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("identity", &self.identity)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// The TLS material of a node. `chain` starts with the node's own
    /// certificate, which must name a node of `trust_domain`; `cluster_ca`
    /// holds the CAs that issue node certificates.
    ///
    /// # Errors
    ///
    /// [`PeerError::OwnIdentity`] when the certificate is not a node
    /// certificate of `trust_domain`, [`PeerError::Tls`] when the key does
    /// not match it or the CA store is empty.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cluster_ca: RootCertStore,
        trust_domain: &str,
        key_exchange: KeyExchange,
    ) -> Result<Self, PeerError> {
        let leaf = chain
            .first()
            .ok_or(PeerError::Tls("the node certificate chain is empty".into()))?;
        let identity = NodeIdentity::from_certificate_in(leaf, trust_domain)?;
        let provider = crypto_provider(key_exchange);
        let certified = Arc::new(
            CertifiedKey::from_der(chain, key, &provider)
                .map_err(|e| PeerError::Tls(e.to_string()))?,
        );
        let roots = Arc::new(cluster_ca);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| PeerError::Tls(e.to_string()))?;
        Ok(Self {
            identity,
            certified,
            roots,
            client_verifier,
            provider,
        })
    }

    /// As [`new`](Self::new), with the cluster's trust domain taken from
    /// the node's own certificate.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_own_certificate(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cluster_ca: RootCertStore,
        key_exchange: KeyExchange,
    ) -> Result<Self, PeerError> {
        let leaf = chain
            .first()
            .ok_or(PeerError::Tls("the node certificate chain is empty".into()))?;
        let domain = NodeIdentity::from_certificate(leaf)?
            .trust_domain()
            .to_owned();
        Self::new(chain, key, cluster_ca, &domain, key_exchange)
    }

    /// This node's identity, from its certificate.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// A QUIC server configuration for one incoming connection from
    /// `remote`: its verifier reports refusals with that address.
    ///
    /// # Errors
    ///
    /// [`PeerError::Tls`] when rustls or quinn refuse the configuration.
    pub fn server_config(
        &self,
        remote: SocketAddr,
        membership: Arc<dyn Membership>,
        observer: Arc<dyn PeerObserver>,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<(quinn::ServerConfig, Arc<InboundVerifier>), PeerError> {
        let verifier = Arc::new(InboundVerifier {
            inner: self.client_verifier.clone(),
            trust_domain: self.identity.trust_domain().to_owned(),
            membership,
            verdict: Verdict::new(remote, observer, Direction::Inbound),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                self.certified.clone(),
            )));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        let crypto =
            QuicServerConfig::try_from(config).map_err(|e| PeerError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport);
        Ok((server, verifier))
    }

    /// A QUIC client configuration for dialing node `expected` at
    /// `remote`: the remote must present a certificate of that node.
    ///
    /// # Errors
    ///
    /// [`PeerError::Tls`] when rustls or quinn refuse the configuration.
    pub fn client_config(
        &self,
        expected: NodeId,
        remote: SocketAddr,
        observer: Arc<dyn PeerObserver>,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<(quinn::ClientConfig, Arc<OutboundVerifier>), PeerError> {
        let verifier = Arc::new(OutboundVerifier {
            roots: self.roots.clone(),
            provider: self.provider.clone(),
            trust_domain: self.identity.trust_domain().to_owned(),
            expected,
            verdict: Verdict::new(remote, observer, Direction::Outbound),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(Arc::new(ClientCert(self.certified.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_sni = false;
        let crypto =
            QuicClientConfig::try_from(config).map_err(|e| PeerError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport);
        Ok((client, verifier))
    }

    /// The server name to pass to quinn when dialing.
    pub fn dial_server_name() -> &'static str {
        DIAL_SERVER_NAME
    }
}

/// Presents the node certificate when dialing.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The reason a TLS certificate error is reported under.
fn certificate_reason(e: &rustls::Error) -> DenyReason {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                DenyReason::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                DenyReason::NotYetValid
            }
            CertificateError::UnknownIssuer => DenyReason::ForeignCa,
            _ => DenyReason::BadCertificate,
        },
        _ => DenyReason::BadCertificate,
    }
}

fn identity_reason(e: &IdentityError) -> DenyReason {
    match e {
        IdentityError::NotANode => DenyReason::ClientCertificate,
        _ => DenyReason::BadIdentity,
    }
}

/// The outcome of a verifier: the identity it accepted, or the refusal it
/// reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The certificate was accepted for this node.
    Accepted(NodeIdentity),
    /// The certificate was refused and the refusal reported.
    Refused(DenyReason, String),
}

/// What a verifier decided about one handshake, and who hears of a
/// refusal: shared by both directions.
struct Verdict {
    remote: SocketAddr,
    observer: Arc<dyn PeerObserver>,
    direction: Direction,
    outcome: Mutex<Option<VerifyOutcome>>,
}

impl Verdict {
    fn new(remote: SocketAddr, observer: Arc<dyn PeerObserver>, direction: Direction) -> Self {
        Self {
            remote,
            observer,
            direction,
            outcome: Mutex::new(None),
        }
    }

    fn outcome(&self) -> Option<VerifyOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn accept(&self, identity: NodeIdentity) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(VerifyOutcome::Accepted(identity));
    }

    /// Reports the refusal to the observer, remembers it, and returns the
    /// TLS error that fails the handshake.
    fn refuse(
        &self,
        identity: Option<NodeIdentity>,
        reason: DenyReason,
        detail: String,
    ) -> rustls::Error {
        self.observer.denied(&Denial {
            remote: self.remote,
            identity,
            reason,
            direction: self.direction,
            detail: detail.clone(),
        });
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(VerifyOutcome::Refused(reason, detail));
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    }
}

/// Verifies the client certificate of one incoming peer connection.
pub struct InboundVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    membership: Arc<dyn Membership>,
    verdict: Verdict,
}

impl fmt::Debug for InboundVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundVerifier")
            .field("remote", &self.verdict.remote)
            .field("outcome", &self.outcome())
            .finish_non_exhaustive()
    }
}

impl InboundVerifier {
    /// What the verifier decided, `None` when it was never asked.
    pub fn outcome(&self) -> Option<VerifyOutcome> {
        self.verdict.outcome()
    }
}

impl ClientCertVerifier for InboundVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // An unauthenticated peer learns nothing of the trusted CAs; a node
        // presents the one certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The claimed identity, for the report only: not trusted until the
        // chain is.
        let claimed = NodeIdentity::from_certificate(end_entity).ok();
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            // The TLS error itself goes back, so the alert says what failed.
            let _ = self
                .verdict
                .refuse(claimed, certificate_reason(&e), e.to_string());
            return Err(e);
        }
        let identity = match NodeIdentity::from_certificate_in(end_entity, &self.trust_domain) {
            Ok(id) => id,
            Err(e) => {
                return Err(self
                    .verdict
                    .refuse(None, identity_reason(&e), e.to_string()));
            }
        };
        if !self.membership.is_member(identity.node_id()) {
            let detail = format!("node {} is not a member of the cluster", identity.node_id());
            return Err(self
                .verdict
                .refuse(Some(identity), DenyReason::NotAMember, detail));
        }
        self.verdict.accept(identity);
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies the server certificate of one outgoing peer connection: the
/// chain against the cluster CA, and the node id against the one dialed.
pub struct OutboundVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    trust_domain: String,
    expected: NodeId,
    verdict: Verdict,
}

impl fmt::Debug for OutboundVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundVerifier")
            .field("expected", &self.expected)
            .field("remote", &self.verdict.remote)
            .finish_non_exhaustive()
    }
}

impl OutboundVerifier {
    /// What the verifier decided, `None` when it was never asked.
    pub fn outcome(&self) -> Option<VerifyOutcome> {
        self.verdict.outcome()
    }
}

impl ServerCertVerifier for OutboundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let claimed = NodeIdentity::from_certificate(end_entity).ok();
        let chain = ParsedCertificate::try_from(end_entity).and_then(|parsed| {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &self.roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )
        });
        if let Err(e) = chain {
            // The TLS error itself goes back, so the alert says what failed.
            let _ = self
                .verdict
                .refuse(claimed, certificate_reason(&e), e.to_string());
            return Err(e);
        }
        let identity = match NodeIdentity::from_certificate_in(end_entity, &self.trust_domain) {
            Ok(id) => id,
            Err(e) => {
                return Err(self
                    .verdict
                    .refuse(None, identity_reason(&e), e.to_string()));
            }
        };
        if identity.node_id() != self.expected {
            let detail = format!(
                "dialed node {} but {} answered with the certificate of node {}",
                self.expected,
                self.verdict.remote,
                identity.node_id()
            );
            return Err(self
                .verdict
                .refuse(Some(identity), DenyReason::WrongNode, detail));
        }
        self.verdict.accept(identity);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configuration allows TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
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

/// The QUIC transport settings of peer links.
pub(crate) fn transport_config(
    max_streams: u32,
    keep_alive: Duration,
    idle_timeout: Duration,
) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(max_streams));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.keep_alive_interval(Some(keep_alive));
    // An idle timeout that does not fit QUIC's varint is left at quinn's
    // default rather than refused: the setting is ours, not the network's.
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}
