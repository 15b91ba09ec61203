//! The TLS key exchange policy (`tls.key_exchange`) on the broker's side.
//! The policy, its names and its groups are the `strongbox-tls` crate's,
//! which the client shares; they are re-exported here.
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

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use strongbox_tls::{KeyExchange, crypto_provider, group_name, is_hybrid, negotiated_group};

use super::TlsError;

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
    fn the_no_common_group_reason_names_the_cause() {
        assert!(
            no_common_group_reason().contains("NoKxGroupsInCommon"),
            "{}",
            no_common_group_reason()
        );
    }
}
