//! The key exchange policy and its rustls groups.
//!
//! | policy | groups offered / accepted, in order |
//! | --- | --- |
//! | `prefer-hybrid` (default) | X25519MLKEM768, SecP256r1MLKEM768, X25519, secp256r1, secp384r1 |
//! | `require-hybrid` | X25519MLKEM768, SecP256r1MLKEM768 |
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
//! `require-hybrid` end refuses a peer that offers no hybrid group, rather
//! than silently using a classical one.

use std::fmt;
use std::sync::Arc;

use quinn::crypto::rustls::HandshakeData;
use rustls::NamedGroup;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use serde::Deserialize;

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

    /// The name used in configurations, profiles and on the command line
    /// (`prefer-hybrid`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::PreferHybrid => "prefer-hybrid",
            Self::RequireHybrid => "require-hybrid",
            Self::Classical => "classical",
        }
    }

    /// Parses a name made by [`name`](Self::name); `None` for any other
    /// text.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
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

    /// The names of [`groups`](Self::groups), as metrics, `whoami` and
    /// error messages show them.
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
    connection
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .map(|d| d.negotiated_key_exchange_group)
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
        assert_eq!(
            crypto_provider(KeyExchange::Classical).kx_groups.len(),
            KeyExchange::Classical.groups().len()
        );
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
            assert_eq!(KeyExchange::parse(p.name()), Some(p));
            assert_eq!(p.to_string(), p.name());
        }
        assert!(toml::from_str::<T>("k = \"hybrid\"").is_err());
        assert_eq!(KeyExchange::parse("hybrid"), None);
        assert_eq!(KeyExchange::parse("Prefer-Hybrid"), None);
    }
}
