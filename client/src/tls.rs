//! TLS and QUIC settings: TLS 1.3 only, the aws-lc-rs provider with the
//! key exchange groups of [`KeyExchange`] (the policy the broker shares,
//! from the `strongbox-tls` crate), ALPN `strongbox/1`, the client
//! certificate.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use strongbox_tls::KeyExchange;
use strongbox_tls::{crypto_provider, group_name};

use crate::config::ClientConfig;
use crate::error::ClientError;

/// UDP socket buffer size asked for; loopback and fast links drop packets
/// with the 208 KiB default.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// The key exchange group of an established connection, by its IANA name.
/// Both ends see the same one: the broker's choice is in its `ServerHello`,
/// which both `Finished` messages authenticate.
pub(crate) fn negotiated_group(conn: &quinn::Connection) -> Option<String> {
    strongbox_tls::negotiated_group(conn).map(group_name)
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

    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider(config.key_exchange))
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
