//! TLS and QUIC settings: TLS 1.3 only, the aws-lc-rs provider with the
//! key exchange groups of [`KeyExchange`], ALPN `strongbox/1`, the client
//! certificate.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::HandshakeData;
use rustls::NamedGroup;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::ClientConfig;
use crate::error::ClientError;

/// UDP socket buffer size asked for; loopback and fast links drop packets
/// with the 208 KiB default.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Which key exchange groups the TLS handshake may use; the broker has the
/// same setting (`tls.key_exchange`).
///
/// | policy | groups offered, in order |
/// | --- | --- |
/// | `prefer-hybrid` (default) | X25519MLKEM768, SecP256r1MLKEM768, X25519, secp256r1, secp384r1 |
/// | `require-hybrid` | X25519MLKEM768, SecP256r1MLKEM768 |
/// | `classical` | X25519, secp256r1, secp384r1 |
///
/// X25519MLKEM768 combines X25519 with ML-KEM-768 (FIPS 203), so traffic
/// recorded today stays secret even once X25519 falls to a quantum
/// computer. The broker picks the first group of this list that it
/// accepts: with `require-hybrid`, a broker without the hybrid groups is
/// refused rather than silently used classically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyExchange {
    /// Hybrid post-quantum groups first, classical ones for a broker
    /// without them.
    #[default]
    PreferHybrid,
    /// Hybrid post-quantum groups only.
    RequireHybrid,
    /// Classical groups only (X25519 and the NIST curves).
    Classical,
}

impl KeyExchange {
    /// The name used in profiles and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::PreferHybrid => "prefer-hybrid",
            Self::RequireHybrid => "require-hybrid",
            Self::Classical => "classical",
        }
    }

    /// Parses a name made by [`name`](Self::name).
    pub fn parse(name: &str) -> Option<Self> {
        [Self::PreferHybrid, Self::RequireHybrid, Self::Classical]
            .into_iter()
            .find(|p| p.name() == name)
    }

    fn groups(self) -> Vec<&'static dyn SupportedKxGroup> {
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
}

impl fmt::Display for KeyExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The IANA name of a key exchange group (`X25519MLKEM768`, `X25519`).
pub(crate) fn group_name(group: NamedGroup) -> String {
    match group {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768".into(),
        NamedGroup::secp256r1MLKEM768 => "SecP256r1MLKEM768".into(),
        other => format!("{other:?}"),
    }
}

/// The key exchange group of an established connection. Both ends see the
/// same one: the broker's choice is in its `ServerHello`, which both
/// `Finished` messages authenticate.
pub(crate) fn negotiated_group(conn: &quinn::Connection) -> Option<String> {
    conn.handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .map(|d| group_name(d.negotiated_key_exchange_group))
}

/// Reads the CA bundle, certificate chain and key, and builds the QUIC
/// client configuration.
pub(crate) fn quic_client_config(
    config: &ClientConfig,
) -> Result<quinn::ClientConfig, ClientError> {
    let ca_pem = config.ca.load("CA certificates")?;
    let cert_pem = config.cert.load("client certificate")?;
    let key_pem = config.key.load("private key")?;

    let mut roots = rustls::RootCertStore::empty();
    let mut ca_count = 0usize;
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        let cert = cert.map_err(|e| credentials("CA certificates", config.ca.describe(), e))?;
        roots
            .add(cert)
            .map_err(|e| credentials("CA certificates", config.ca.describe(), e))?;
        ca_count += 1;
    }
    if ca_count == 0 {
        return Err(credentials(
            "CA certificates",
            config.ca.describe(),
            "no CERTIFICATE block found",
        ));
    }
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| credentials("client certificate", config.cert.describe(), e))?;
    if chain.is_empty() {
        return Err(credentials(
            "client certificate",
            config.cert.describe(),
            "no CERTIFICATE block found",
        ));
    }
    // The error of a key parse never contains key bytes.
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| credentials("private key", config.key.describe(), e))?;

    let provider = Arc::new(CryptoProvider {
        kx_groups: config.key_exchange.groups(),
        ..aws_lc_rs::default_provider()
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| credentials("private key", config.key.describe(), e))?;
    tls.alpn_protocols = vec![strongbox_protocol::ALPN.to_vec()];
    // The broker issues no session tickets (a resumed session would skip
    // its certificate checks); do not keep any either.
    tls.resumption = rustls::client::Resumption::disabled();

    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(config.keepalive));
    // Idle timeout: three keep-alive intervals, at least 10 s.
    let idle = config
        .keepalive
        .saturating_mul(3)
        .max(std::time::Duration::from_secs(10));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        transport.max_idle_timeout(Some(idle));
    }
    client.transport_config(Arc::new(transport));
    Ok(client)
}

fn credentials(what: &'static str, source_name: String, e: impl fmt::Display) -> ClientError {
    ClientError::Credentials {
        what,
        source_name,
        message: e.to_string(),
    }
}

/// A client endpoint on an ephemeral port of the broker's address family,
/// with enlarged socket buffers (best effort).
pub(crate) fn client_endpoint(broker: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    use socket2::{Domain, Protocol, Socket, Type};

    let bind: SocketAddr = if broker.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let io = |e: std::io::Error| ClientError::Connect {
        broker: broker.to_string(),
        message: format!("cannot open a UDP socket: {e}"),
    };
    let socket =
        Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    // Larger buffers are an optimization; the kernel may cap them.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&bind.into()).map_err(io)?;
    let runtime = quinn::default_runtime().ok_or_else(|| ClientError::Connect {
        broker: broker.to_string(),
        message: "no async runtime: call from within a tokio runtime".into(),
    })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        runtime,
    )
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_offer_the_documented_groups() {
        let names = |p: KeyExchange| -> Vec<String> {
            p.groups().iter().map(|g| group_name(g.name())).collect()
        };
        assert_eq!(
            names(KeyExchange::PreferHybrid),
            [
                "X25519MLKEM768",
                "SecP256r1MLKEM768",
                "X25519",
                "secp256r1",
                "secp384r1"
            ]
        );
        assert_eq!(
            names(KeyExchange::RequireHybrid),
            ["X25519MLKEM768", "SecP256r1MLKEM768"]
        );
        assert_eq!(
            names(KeyExchange::Classical),
            ["X25519", "secp256r1", "secp384r1"]
        );
        assert_eq!(KeyExchange::default(), KeyExchange::PreferHybrid);
        for p in [
            KeyExchange::PreferHybrid,
            KeyExchange::RequireHybrid,
            KeyExchange::Classical,
        ] {
            assert_eq!(KeyExchange::parse(p.name()), Some(p));
        }
        assert_eq!(KeyExchange::parse("hybrid"), None);
    }
}
