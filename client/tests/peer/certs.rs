//! Certificates for the test peer and its clients, made with rcgen: a CA,
//! a server certificate for localhost, client certificates with SPIFFE URI
//! SANs, and a client certificate from a CA the peer does not trust.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// PEM text of a certificate and its key.
#[derive(Clone)]
pub struct CertPem {
    pub cert: String,
    pub key: String,
}

/// Every certificate a test needs.
pub struct TestPki {
    pub ca: String,
    pub server: CertPem,
    pub alice: CertPem,
    pub bob: CertPem,
    pub admin: CertPem,
    /// Signed by another CA.
    pub stranger: CertPem,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA cert");
    (cert.pem(), Issuer::new(params, key))
}

fn client(issuer: &Issuer<'static, KeyPair>, spiffe: &str) -> CertPem {
    let key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    params.subject_alt_names = vec![SanType::URI(spiffe.try_into().expect("ia5"))];
    params.distinguished_name.push(DnType::CommonName, spiffe);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).expect("client cert");
    CertPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

impl TestPki {
    pub fn new() -> Self {
        let (ca_pem, issuer) = ca("strongbox test CA");
        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = params.signed_by(&server_key, &issuer).expect("server cert");
        let (_, other_issuer) = ca("some other CA");
        Self {
            server: CertPem {
                cert: server.pem(),
                key: server_key.serialize_pem(),
            },
            alice: client(&issuer, "spiffe://strongbox.dev/alice"),
            bob: client(&issuer, "spiffe://strongbox.dev/bob"),
            admin: client(&issuer, "spiffe://strongbox.dev/admin"),
            stranger: client(&other_issuer, "spiffe://elsewhere.example/mallory"),
            ca: ca_pem,
        }
    }

    /// Writes `ca.pem`, `<name>.pem`, `<name>.key` and a profile
    /// `<name>.toml` (with relative paths) into `dir`; returns the profile.
    pub fn write_profile(&self, dir: &Path, name: &str, who: &CertPem, broker: &str) -> PathBuf {
        std::fs::write(dir.join("ca.pem"), &self.ca).expect("write ca");
        std::fs::write(dir.join(format!("{name}.pem")), &who.cert).expect("write cert");
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&key, &who.key).expect("write key");
        // As a real key file: only its owner reads it (the CLI warns
        // otherwise).
        let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
        std::fs::set_permissions(&key, private).expect("chmod 600 the key");
        let profile = dir.join(format!("{name}.toml"));
        std::fs::write(
            &profile,
            format!(
                "broker = \"{broker}\"\nserver_name = \"localhost\"\nca = \"ca.pem\"\n\
                 cert = \"{name}.pem\"\nkey = \"{name}.key\"\n"
            ),
        )
        .expect("write profile");
        profile
    }
}
