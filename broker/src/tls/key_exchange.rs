//! The TLS key exchange policy (`tls.key_exchange`) and the one place that
//! turns it into rustls configurations.
//!
//! Every TLS 1.3 handshake of the broker starts from [`crypto_provider`]:
//! the aws-lc-rs provider with the key exchange groups the policy allows,
//! in order of preference. The client listener uses it through
//! [`server_config_with`](super::server_config_with); a connection the
//! broker opens itself (the peer links between nodes, when clusters come)
//! builds its client side with [`client_config_with`], so both directions
//! of every link follow the same policy.
//!
//! | policy | groups offered / accepted, in order |
//! | --- | --- |
//! | `prefer-hybrid` (default) | X25519MLKEM768, SECP256R1MLKEM768, X25519, secp256r1, secp384r1 |
//! | `require-hybrid` | X25519MLKEM768, SECP256R1MLKEM768 |
//! | `classical` | X25519, secp256r1, secp384r1 |
//!
//! X25519MLKEM768 combines X25519 with ML-KEM-768 (FIPS 203): the session
//! keys stay secret as long as either one is unbroken, so traffic recorded
//! today does not open once a quantum computer breaks X25519 ("harvest now,
//! decrypt later"). Authentication (the ECDSA certificates) is not
//! post-quantum: it only has to hold at the time of the handshake.
//!
//! A TLS 1.3 server picks the first group of the client's list that it
//! also accepts. A `prefer-hybrid` client therefore gets the hybrid group
//! from any broker that has it and X25519 from one that does not; a
//! `require-hybrid` broker refuses a client that offers no hybrid group
//! (`handshake_failure`), and the endpoint reports that refusal as the
//! authentication stage `key_exchange`.

use std::fmt;
use std::sync::Arc;

use quinn::crypto::rustls::HandshakeData;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{NamedGroup, RootCertStore};
use serde::Deserialize;

use super::TlsError;

/// Which key exchange groups a TLS handshake may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyExchange {
    /// Hybrid post-quantum groups first, classical ones for peers without
    /// them.
    #[default]
    PreferHybrid,
    /// Hybrid post-quantum groups only: a classical-only peer is refused.
    RequireHybrid,
    /// Classical groups only (X25519 and the NIST curves).
    Classical,
}

impl KeyExchange {
    /// Every policy, in the order the docs list them.
    pub const ALL: [Self; 3] = [Self::PreferHybrid, Self::RequireHybrid, Self::Classical];

    /// The name used in the configuration (`prefer-hybrid`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::PreferHybrid => "prefer-hybrid",
            Self::RequireHybrid => "require-hybrid",
            Self::Classical => "classical",
        }
    }

    /// The groups of this policy, most preferred first.
    pub fn groups(self) -> Vec<&'static dyn SupportedKxGroup> {
        use aws_lc_rs::kx_group::{
            SECP256R1, SECP256R1MLKEM768, SECP384R1, X25519, X25519MLKEM768,
        };
        match self {
            Self::PreferHybrid => vec![
                X25519MLKEM768,
                SECP256R1MLKEM768,
                X25519,
                SECP256R1,
                SECP384R1,
            ],
            Self::RequireHybrid => vec![X25519MLKEM768, SECP256R1MLKEM768],
            Self::Classical => vec![X25519, SECP256R1, SECP384R1],
        }
    }

    /// The names of [`groups`](Self::groups), as metrics and `whoami`
    /// show them.
    pub fn group_names(self) -> Vec<String> {
        self.groups().iter().map(|g| group_name(g.name())).collect()
    }
}

impl fmt::Display for KeyExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// True for the hybrid post-quantum groups.
pub fn is_hybrid(group: NamedGroup) -> bool {
    matches!(
        group,
        NamedGroup::X25519MLKEM768 | NamedGroup::secp256r1MLKEM768
    )
}

/// The IANA name of a group (`X25519MLKEM768`, `X25519`, `secp256r1`).
pub fn group_name(group: NamedGroup) -> String {
    match group {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768".into(),
        NamedGroup::secp256r1MLKEM768 => "SecP256r1MLKEM768".into(),
        other => format!("{other:?}"),
    }
}

/// The aws-lc-rs provider restricted to the groups of `policy`, passed
/// explicitly so that no process-wide default provider is needed.
pub fn crypto_provider(policy: KeyExchange) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: policy.groups(),
        ..aws_lc_rs::default_provider()
    })
}

/// The key exchange group negotiated on an established connection (either
/// side), or `None` before the handshake completed.
///
/// Both ends see the same group: the server's choice travels in its
/// `ServerHello`, which the handshake transcript (and so both `Finished`
/// messages) covers.
pub fn negotiated_group(connection: &quinn::Connection) -> Option<NamedGroup> {
    // quinn builds the handshake data only once the handshake progressed;
    // `establish` and the client ask only after it completed, when the
    // group is always known.
    connection
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .map(|d| d.negotiated_key_exchange_group)
}

/// A TLS 1.3-only client configuration following `policy`: for
/// connections the broker opens (peer links), and for tests that connect
/// to it as a client would. Verifies the server against `roots` and
/// presents `chain`.
///
/// # Errors
///
/// The key does not match the certificate, or is of an unsupported type.
pub fn client_config_with(
    policy: KeyExchange,
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider(policy))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    // No session tickets: the broker issues none, and a resumed session
    // would skip the certificate checks (see the module docs of `tls`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The message of a handshake refused for want of a common group, as the
/// refusing side's TLS stack words it (quinn carries it as the transport
/// error's reason).
pub(crate) fn no_common_group_reason() -> String {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoKxGroupsInCommon).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_offer_what_the_docs_say() {
        assert_eq!(
            KeyExchange::PreferHybrid.group_names(),
            [
                "X25519MLKEM768",
                "SecP256r1MLKEM768",
                "X25519",
                "secp256r1",
                "secp384r1"
            ]
        );
        assert_eq!(
            KeyExchange::RequireHybrid.group_names(),
            ["X25519MLKEM768", "SecP256r1MLKEM768"]
        );
        assert_eq!(
            KeyExchange::Classical.group_names(),
            ["X25519", "secp256r1", "secp384r1"]
        );
        for p in KeyExchange::ALL {
            let hybrid = p.groups().iter().filter(|g| is_hybrid(g.name())).count();
            match p {
                KeyExchange::Classical => assert_eq!(hybrid, 0),
                KeyExchange::RequireHybrid => assert_eq!(hybrid, p.groups().len()),
                KeyExchange::PreferHybrid => assert!(is_hybrid(p.groups()[0].name())),
            }
        }
    }

    #[test]
    fn the_default_prefers_hybrid_and_names_parse() {
        assert_eq!(KeyExchange::default(), KeyExchange::PreferHybrid);
        #[derive(Deserialize)]
        struct T {
            k: KeyExchange,
        }
        for p in KeyExchange::ALL {
            let t: T = toml::from_str(&format!("k = \"{}\"", p.name())).expect("parses");
            assert_eq!(t.k, p);
        }
        assert!(toml::from_str::<T>("k = \"hybrid\"").is_err());
    }

    #[test]
    fn the_no_common_group_reason_names_the_cause() {
        assert!(
            no_common_group_reason().contains("NoKxGroupsInCommon"),
            "{}",
            no_common_group_reason()
        );
    }
}
