//! A small certificate authority for development and tests: CA, server and
//! client certificates, and CRLs, made with rcgen.
//!
//! `strongbox-broker dev` uses it to create its development PKI, and the
//! workspace's tests use it for the mTLS matrix (another CA, expired,
//! revoked, DNS-only and CN-only certificates). It is not meant for issuing
//! production certificates: there is no policy, no audit, and the CA key
//! sits in a file.
//!
//! ```
//! use strongbox_broker::pki::{CertSpec, TestCa};
//!
//! let ca = TestCa::new("Example CA")?;
//! let alice = ca.issue(&CertSpec::client_uri("spiffe://example/alice"))?;
//! let crl_pem = ca.crl(&[&alice], 1)?;
//! assert!(crl_pem.contains("BEGIN X509 CRL"));
//! # Ok::<(), strongbox_broker::pki::PkiError>(())
//! ```

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

/// An error making certificates or writing them out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// rcgen refused the parameters.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A name is not valid in a certificate (not ASCII for a URI or DNS).
    #[error("invalid certificate name {0:?}")]
    InvalidName(String),
    /// A CA certificate or key given in PEM could not be read.
    #[error("cannot load the CA: {0}")]
    Load(String),
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS client authentication.
    Client,
    /// TLS server authentication.
    Server,
    /// A cluster node: server and client authentication (it serves
    /// clients and peers, and connects to peers).
    Node,
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// SAN URIs, in order (a SPIFFE ID goes here).
    pub uris: Vec<String>,
    /// SAN DNS names, in order.
    pub dns: Vec<String>,
    /// SAN IP addresses.
    pub ips: Vec<IpAddr>,
    /// Subject common name.
    pub common_name: Option<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Client or server.
    pub usage: Usage,
}

impl CertSpec {
    /// A client certificate with nothing in it, valid from an hour ago for
    /// a year; fill in names with the other constructors or by hand.
    pub fn client() -> Self {
        let now = SystemTime::now();
        Self {
            uris: Vec::new(),
            dns: Vec::new(),
            ips: Vec::new(),
            common_name: None,
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(365 * 24 * 3600),
            usage: Usage::Client,
        }
    }

    /// A client certificate with one SAN URI (a SPIFFE ID).
    pub fn client_uri(uri: &str) -> Self {
        Self {
            uris: vec![uri.to_string()],
            ..Self::client()
        }
    }

    /// A client certificate with one SAN DNS name and no URI.
    pub fn client_dns(name: &str) -> Self {
        Self {
            dns: vec![name.to_string()],
            ..Self::client()
        }
    }

    /// A client certificate with only a subject common name.
    pub fn client_cn(cn: &str) -> Self {
        Self {
            common_name: Some(cn.to_string()),
            ..Self::client()
        }
    }

    /// A server certificate for these names (DNS names or IP addresses).
    pub fn server(names: &[&str]) -> Self {
        let (ips, dns): (Vec<&str>, Vec<&str>) = names
            .iter()
            .copied()
            .partition(|n| n.parse::<IpAddr>().is_ok());
        Self {
            dns: dns.into_iter().map(str::to_string).collect(),
            ips: ips.into_iter().filter_map(|s| s.parse().ok()).collect(),
            common_name: names.first().map(|s| s.to_string()),
            usage: Usage::Server,
            ..Self::client()
        }
    }

    /// A node certificate: the node URI
    /// `spiffe://<trust_domain>/strongbox/node/<id>` first, then the DNS
    /// names and IP addresses clients verify (`localhost`, `127.0.0.1`);
    /// usable as server and as client certificate.
    pub fn node(trust_domain: &str, id: u64, names: &[&str]) -> Self {
        let server = Self::server(names);
        Self {
            uris: vec![crate::config::cluster::node_uri(trust_domain, id)],
            common_name: Some(format!("strongbox node {id}")),
            usage: Usage::Node,
            ..server
        }
    }

    /// The same certificate with validity `[not_before, not_after]`.
    pub fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// The same certificate, expired: valid for a day that ended an hour ago.
    pub fn expired(self) -> Self {
        let now = SystemTime::now();
        self.valid(
            now - Duration::from_secs(25 * 3600),
            now - Duration::from_secs(3600),
        )
    }
}

/// An issued certificate and its private key. The key is zeroized on drop
/// and never shown by `Debug`.
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    serial: Vec<u8>,
    key_pem: Zeroizing<String>,
    key_der: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &hex_string(&self.serial))
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The private key, for rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.to_vec()))
    }

    /// The serial number's bytes.
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// Writes `<dir>/<name>.pem` and `<dir>/<name>.key` (the key 0600) and
    /// returns their paths.
    ///
    /// # Errors
    ///
    /// A file cannot be written.
    pub fn write_to(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, self.cert_pem.as_bytes(), false)?;
        write_file(&key, self.key_pem.as_bytes(), true)?;
        Ok((cert, key))
    }
}

/// A certificate authority held in memory.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: Zeroizing<String>,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new self-signed CA (ECDSA P-256) named `common_name`, valid from
    /// an hour ago for ten years.
    ///
    /// # Errors
    ///
    /// Key generation or signing failed.
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Strongbox");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // webpki checks cRLSign on the issuer of a CRL.
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        let certified = CertifiedIssuer::self_signed(params.clone(), key)?;
        let (cert_pem, cert_der) = (certified.pem(), certified.der().clone());
        // Keep the issuer without its certificate, as `load` does.
        let key = KeyPair::from_pem(&key_pem)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_der,
            key_pem,
        })
    }

    /// A CA from its certificate and private key, both PEM: the files
    /// `new` wrote (`strongbox-broker dev` keeps them under `ca/`), so
    /// tests can issue and revoke certificates of a development broker.
    ///
    /// # Errors
    ///
    /// [`PkiError::Load`] when either does not parse.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key_pem = Zeroizing::new(key_pem.to_owned());
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Load(format!("CA private key: {e}")))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Load(format!("CA certificate: {e}")))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| PkiError::Load(format!("CA certificate: {e}")))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The CA's private key, PKCS#8 PEM (for `dev` to keep on disk).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate.
    ///
    /// # Errors
    ///
    /// A name that is not valid in a certificate, or a signing failure.
    pub fn issue(&self, spec: &CertSpec) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = &spec.common_name {
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        for uri in &spec.uris {
            let v = uri
                .clone()
                .try_into()
                .map_err(|_| PkiError::InvalidName(uri.clone()))?;
            params.subject_alt_names.push(SanType::URI(v));
        }
        for dns in &spec.dns {
            let v = dns
                .clone()
                .try_into()
                .map_err(|_| PkiError::InvalidName(dns.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(v));
        }
        params
            .subject_alt_names
            .extend(spec.ips.iter().copied().map(SanType::IpAddress));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match spec.usage {
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            serial,
            key_pem: Zeroizing::new(key.serialize_pem()),
            key_der: Zeroizing::new(key.serialize_der()),
        })
    }

    /// A CRL (PEM) revoking `revoked`, numbered `crl_number` (increase it on
    /// every new CRL), valid from a minute ago for 30 days.
    ///
    /// # Errors
    ///
    /// A signing failure.
    pub fn crl(&self, revoked: &[&IssuedCert], crl_number: u64) -> Result<String, PkiError> {
        let at = SystemTime::now() - Duration::from_secs(60);
        let serials: Vec<RevokedSerial> = revoked
            .iter()
            .map(|c| RevokedSerial {
                serial: c.serial.clone(),
                revoked_at: at,
            })
            .collect();
        self.crl_of_serials(&serials, crl_number)
    }

    /// A CRL (PEM) revoking the certificates with these serial numbers,
    /// numbered `crl_number`, valid from a minute ago for 30 days.
    ///
    /// # Errors
    ///
    /// A signing failure.
    pub fn crl_of_serials(
        &self,
        revoked: &[RevokedSerial],
        crl_number: u64,
    ) -> Result<String, PkiError> {
        let now = SystemTime::now();
        let params = CertificateRevocationListParams {
            this_update: (now - Duration::from_secs(60)).into(),
            next_update: (now + Duration::from_secs(30 * 24 * 3600)).into(),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&c.serial),
                    revocation_time: c.revoked_at.into(),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// A revoked certificate, as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    /// The certificate's serial number, as encoded in it.
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: SystemTime,
}

/// 16 random bytes, positive as a DER integer and without a leading zero
/// byte (so its encoding is exactly these bytes).
fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut serial = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::Random)?;
    if let Some(first) = serial.first_mut() {
        *first = (*first & 0x7f) | 0x01;
    }
    Ok(serial)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file; a secret one is created with mode 0600 from the start, so
/// it is never readable by others even briefly.
pub(crate) fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::identity::{IdentitySource, extract_identity};

    #[test]
    fn identities_come_out_as_put_in() {
        let ca = TestCa::new("t").unwrap();
        let uri = ca.issue(&CertSpec::client_uri("spiffe://t/a")).unwrap();
        let id = extract_identity(&uri.cert_der).unwrap();
        assert_eq!(
            (id.name.as_str(), id.source),
            ("spiffe://t/a", IdentitySource::SanUri)
        );
        let dns = ca.issue(&CertSpec::client_dns("svc.t")).unwrap();
        assert_eq!(
            extract_identity(&dns.cert_der).unwrap().source,
            IdentitySource::SanDns
        );
        let cn = ca.issue(&CertSpec::client_cn("legacy")).unwrap();
        let id = extract_identity(&cn.cert_der).unwrap();
        assert_eq!(
            (id.name.as_str(), id.source),
            ("legacy", IdentitySource::CommonName)
        );
        let none = ca.issue(&CertSpec::client()).unwrap();
        assert!(extract_identity(&none.cert_der).is_err());
    }

    #[test]
    fn debug_never_shows_keys() {
        let ca = TestCa::new("t").unwrap();
        let c = ca.issue(&CertSpec::client_uri("spiffe://t/a")).unwrap();
        assert!(!format!("{c:?}").contains("PRIVATE"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        assert!(c.key_pem().contains("PRIVATE KEY"));
    }

    #[test]
    fn a_loaded_ca_issues_certificates_the_original_verifies() {
        use rustls::server::WebPkiClientVerifier;

        let ca = TestCa::new("t").unwrap();
        let loaded = TestCa::load(&ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        let leaf = loaded.issue(&CertSpec::client_uri("spiffe://t/a")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_client_cert(&leaf.cert_der, &[], now)
            .unwrap();

        // A CRL signed by the loaded CA revokes it for the original.
        let crl = loaded.crl(&[&leaf], 2).unwrap();
        let crl = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(crl.as_bytes())
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls([crl])
            .build()
            .unwrap();
        assert!(
            verifier
                .verify_client_cert(&leaf.cert_der, &[], now)
                .is_err()
        );

        assert!(TestCa::load("not pem", ca.key_pem()).is_err());
        assert!(TestCa::load(&ca.cert_pem(), "not pem").is_err());
    }

    #[test]
    fn node_certificates_carry_the_node_uri_and_serve_both_ways() {
        use rustls::server::WebPkiClientVerifier;
        use x509_parser::prelude::*;

        let ca = TestCa::new("t").unwrap();
        let node = ca
            .issue(&CertSpec::node(
                "strongbox.dev",
                3,
                &["localhost", "127.0.0.1"],
            ))
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&node.cert_der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("uri:{u}"),
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "uri:spiffe://strongbox.dev/strongbox/node/3",
                "dns:localhost",
                "ip:[127, 0, 0, 1]"
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth, "{eku:?}");
        // Its identity, as the client listener would map it, is the node URI.
        assert_eq!(
            extract_identity(&node.cert_der).unwrap().name,
            "spiffe://strongbox.dev/strongbox/node/3"
        );

        // Accepted as a client certificate and as a server certificate.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        let roots = Arc::new(roots);
        let now = rustls::pki_types::UnixTime::now();
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap()
            .verify_client_cert(&node.cert_der, &[], now)
            .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        server
            .verify_server_cert(&node.cert_der, &[], &name, &[], now)
            .unwrap();
    }

    #[test]
    fn serials_are_distinct_and_positive() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a, b);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
    }
}
