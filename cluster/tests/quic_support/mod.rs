//! Test harness for the peer transport tests: a cluster CA issuing node
//! certificates of the trust domain `cluster.test`.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use strongbox_cluster::NodeId;
use strongbox_peer::NodeTls;
use strongbox_tls::KeyExchange;

/// The trust domain of the test nodes.
pub const TRUST_DOMAIN: &str = "cluster.test";

/// A cluster CA issuing node certificates.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Pki {
    /// A new CA.
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "cluster test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).expect("CA");
        Self {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Node `id`'s TLS material, trusting this CA.
    pub fn node_tls(&self, id: NodeId) -> NodeTls {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("node {id}"));
        params.subject_alt_names.push(SanType::URI(
            format!("spiffe://{TRUST_DOMAIN}/strongbox/node/{id}")
                .try_into()
                .expect("uri"),
        ));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(24 * 3600)).into();
        let cert = params.signed_by(&key, &self.issuer).expect("node cert");
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        NodeTls::new(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            roots,
            TRUST_DOMAIN,
            KeyExchange::PreferHybrid,
        )
        .expect("node tls")
    }
}

/// Polls `ready` every 50 ms until it holds; fails the test after `within`.
pub async fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
