//! The QUIC endpoint: socket, transport limits, the accept loop and
//! graceful shutdown.
//!
//! [`Server::bind`] opens the UDP socket itself (socket2) to ask for large
//! buffers: with the default ~208 KiB the kernel drops packets under load
//! even on loopback (DEPENDENCIES.md). [`Server::serve`] then accepts
//! connections until shutdown:
//!
//! - a `Semaphore` caps connections, counting those still handshaking; an
//!   attempt over the cap is refused at once (a QUIC `CONNECTION_REFUSED`)
//!   rather than left to time out;
//! - each connection is set up in its own task: TLS handshake (bounded by
//!   `handshake_timeout`), then the principal from its certificate. A
//!   certificate that yields no principal closes the connection with
//!   [`ErrorCode::AuthenticationFailed`] and is reported to the auth-failure
//!   hook;
//! - the caller's handler gets an [`AcceptedConnection`] and runs inside a
//!   `connection` tracing span carrying the principal;
//! - on shutdown it stops accepting, lets handlers finish for
//!   `shutdown_grace` (they see the shutdown flag in their
//!   [`AcceptedConnection::shutdown`]), aborts the rest, closes every
//!   connection with [`ErrorCode::ShuttingDown`] and waits for the endpoint
//!   to go idle so that peers receive the close.
//!
//! The endpoint's stateless-reset key comes from [`EndpointSecret`], which
//! is derived from the broker's TLS private key: a broker that restarts
//! (after a crash, say) on the same address answers packets of the
//! connections it lost with a stateless reset their clients recognize, so
//! they reconnect at once instead of waiting out the idle timeout.
//!
//! Authentication failures are reported once each: the TLS verifier
//! reports rejected certificates (with the claimed identity); this module
//! reports the other handshake failures (no certificate, no common ALPN,
//! and as the stage `key_exchange` a client offering no key exchange group
//! that `tls.key_exchange` accepts) with the peer's address, and identity
//! failures. Every completed handshake is counted by its key exchange
//! group (`strongbox_tls_handshakes_total{group}`), which the connection's
//! span also carries.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};
use strongbox_protocol::ErrorCode;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::ListenerConfig;
use crate::identity::{IdentityMapper, Principal, is_node_certificate, leaf_certificate};
use crate::metrics::BrokerMetrics;
use crate::tls::key_exchange::no_common_group_reason;
pub use crate::tls::reset::EndpointSecret;
use crate::tls::{
    AuthFailure, AuthFailureHook, AuthStage, KeyExchange, ServerTls, group_name, negotiated_group,
};

/// Default per-stream receive window of quinn, kept as the floor.
const MIN_STREAM_WINDOW: u64 = 1_250_000;

/// TLS alerts sent when the client certificate verifier refused a
/// certificate (rustls maps certificate errors to these); such failures were
/// already reported by the verifier.
const CERTIFICATE_ALERTS: &[u8] = &[
    42, // bad_certificate
    43, // unsupported_certificate
    44, // certificate_revoked
    45, // certificate_expired
    46, // certificate_unknown
    48, // unknown_ca
    49, // access_denied
    51, // decrypt_error (a bad signature in the chain)
];

/// An error setting up the endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The UDP socket could not be created or bound.
    #[error("cannot open UDP socket on {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS config lacks the cipher suite QUIC needs for its initial
    /// packets (TLS_AES_128_GCM_SHA256).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Crypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A listener setting does not fit QUIC's limits.
    #[error("listener setting out of range for QUIC: {0}")]
    Transport(String),
}

/// quinn's endpoint configuration: `secret`'s reset key, and connection
/// ids that a restarted endpoint does not discard as foreign (quinn's
/// default generator is keyed per process, so its successor would drop the
/// old connections' packets without answering).
pub fn endpoint_config(secret: &EndpointSecret) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::new(Arc::new(secret.reset_key()));
    config.cid_generator(|| Box::new(RandomConnectionIds));
    config
}

/// 8-byte random connection ids. Every id is taken as possibly ours, so a
/// packet for a connection this process does not know is answered with a
/// stateless reset (quinn rate-limits them).
struct RandomConnectionIds;

/// Bytes of a connection id.
const CID_LEN: usize = 8;

impl quinn::ConnectionIdGenerator for RandomConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        use std::hash::{BuildHasher, Hasher};
        let mut bytes = [0u8; CID_LEN];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            // Ids need only be unlikely to collide: the standard library's
            // per-process random hash keys, new for every `RandomState`.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5EED);
            bytes = h.finish().to_be_bytes();
        }
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The UDP socket buffer sizes the kernel granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Receive buffer, bytes.
    pub recv: usize,
    /// Send buffer, bytes.
    pub send: usize,
}

/// Opens a non-blocking UDP socket on `addr` with the requested buffer
/// sizes, logging when the kernel grants less (raise `net.core.rmem_max` and
/// `net.core.wmem_max` then).
///
/// # Errors
///
/// The socket cannot be created or bound.
pub fn bind_udp(
    addr: SocketAddr,
    recv: usize,
    send: usize,
) -> Result<(std::net::UdpSocket, SocketBuffers), EndpointError> {
    let err = |source| EndpointError::Socket { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    // Failing to enlarge a buffer is not fatal: the broker works, slower.
    if let Err(e) = socket.set_recv_buffer_size(recv) {
        tracing::warn!(error = %e, requested = recv, "cannot set UDP receive buffer size");
    }
    if let Err(e) = socket.set_send_buffer_size(send) {
        tracing::warn!(error = %e, requested = send, "cannot set UDP send buffer size");
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    // Linux reports double the granted size (it counts its bookkeeping), so
    // a report below the request means the kernel clamped it.
    let granted = SocketBuffers {
        recv: socket.recv_buffer_size().map_err(err)?,
        send: socket.send_buffer_size().map_err(err)?,
    };
    if granted.recv < recv {
        tracing::warn!(
            requested = recv,
            granted = granted.recv,
            "kernel clamped the UDP receive buffer; raise net.core.rmem_max for full throughput"
        );
    }
    if granted.send < send {
        tracing::warn!(
            requested = send,
            granted = granted.send,
            "kernel clamped the UDP send buffer; raise net.core.wmem_max for full throughput"
        );
    }
    Ok((socket.into(), granted))
}

/// QUIC transport limits from `[listener]`.
///
/// # Errors
///
/// A value QUIC cannot carry (an idle timeout beyond 2^62 ms).
pub fn transport_config(l: &ListenerConfig) -> Result<TransportConfig, EndpointError> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(l.max_bidi_streams_per_connection));
    // The protocol uses bidirectional streams only; refusing unidirectional
    // ones removes a way to make the broker buffer data it never reads.
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.keep_alive_interval(Some(l.keepalive.0));
    t.max_idle_timeout(Some(IdleTimeout::try_from(l.idle_timeout.0).map_err(
        |e| EndpointError::Transport(format!("listener.idle_timeout: {e}")),
    )?));
    // A stream must be able to hold two whole frames, so that a sender is
    // never stalled by flow control in the middle of a maximum-size frame;
    // the connection window bounds what one client can make the broker
    // buffer across all its streams.
    let stream_window = (2 * u64::from(l.max_frame_size)).max(MIN_STREAM_WINDOW);
    let conn_window = stream_window.saturating_mul(4);
    t.stream_receive_window(
        VarInt::from_u64(stream_window).map_err(|e| EndpointError::Transport(e.to_string()))?,
    );
    t.receive_window(
        VarInt::from_u64(conn_window).map_err(|e| EndpointError::Transport(e.to_string()))?,
    );
    t.send_window(conn_window);
    // Segmentation offload (GSO) stays on, its default: 3-4x on loopback.
    Ok(t)
}

/// quinn's server config: the TLS config plus the transport limits.
///
/// # Errors
///
/// As [`transport_config`], or a TLS config without the QUIC initial suite.
pub fn quic_server_config(
    tls: Arc<rustls::ServerConfig>,
    l: &ListenerConfig,
) -> Result<quinn::ServerConfig, EndpointError> {
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(Arc::new(transport_config(l)?));
    Ok(sc)
}

/// What [`Server::serve`] needs besides the endpoint.
#[derive(Clone)]
pub struct AcceptSettings {
    /// Connections open or handshaking at once.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time handlers get to finish after shutdown is signalled.
    pub shutdown_grace: Duration,
    /// Maps certificates to principals.
    pub identity: Arc<IdentityMapper>,
    /// Told about handshake and identity failures.
    pub auth_hook: Option<AuthFailureHook>,
    /// Connection counters, when metrics are on.
    pub metrics: Option<Arc<BrokerMetrics>>,
    /// The key exchange policy of the TLS config, for the reports of
    /// refused handshakes.
    pub key_exchange: KeyExchange,
}

impl std::fmt::Debug for AcceptSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptSettings")
            .field("max_connections", &self.max_connections)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("key_exchange", &self.key_exchange)
            .finish_non_exhaustive()
    }
}

impl AcceptSettings {
    /// Settings from `[listener]`, with this mapper, hook and metrics.
    pub fn from_config(
        l: &ListenerConfig,
        identity: Arc<IdentityMapper>,
        auth_hook: Option<AuthFailureHook>,
        metrics: Option<Arc<BrokerMetrics>>,
    ) -> Self {
        Self {
            max_connections: usize::try_from(l.max_connections).unwrap_or(usize::MAX),
            handshake_timeout: l.handshake_timeout.0,
            shutdown_grace: l.shutdown_grace.0,
            identity,
            auth_hook,
            metrics,
            key_exchange: KeyExchange::default(),
        }
    }

    /// The same settings, for a TLS config following `policy`.
    #[must_use]
    pub fn with_key_exchange(mut self, policy: KeyExchange) -> Self {
        self.key_exchange = policy;
        self
    }

    fn report(&self, failure: AuthFailure) {
        tracing::info!(
            stage = failure.stage.name(),
            remote = ?failure.remote,
            claimed = ?failure.claimed,
            reason = %failure.reason,
            "authentication failed"
        );
        if let Some(hook) = &self.auth_hook {
            hook(&failure);
        }
    }
}

/// An authenticated connection, handed to the caller's handler.
#[derive(Debug)]
pub struct AcceptedConnection {
    /// The QUIC connection.
    pub connection: quinn::Connection,
    /// Who the client is.
    pub principal: Principal,
    /// The client's address.
    pub remote: SocketAddr,
    /// The key exchange group of the TLS handshake (`X25519MLKEM768`, ...).
    pub key_exchange_group: String,
    /// The certificate claims a node identity (see
    /// [`strongbox_peer::claims_node_identity`]): client operations need
    /// ACL rules that name its principal exactly.
    pub node_certificate: bool,
    /// Turns true when the broker is shutting down: finish in-flight work,
    /// answer it, and return.
    pub shutdown: watch::Receiver<bool>,
}

/// What happened during [`Server::serve`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections that completed authentication and reached the handler.
    pub accepted: u64,
    /// Handlers still running at the end of the grace period, aborted.
    pub aborted: usize,
}

/// A bound QUIC endpoint, ready to serve.
#[derive(Debug)]
pub struct Server {
    endpoint: Endpoint,
    buffers: SocketBuffers,
    settings: AcceptSettings,
}

impl Server {
    /// Binds `[listener] addr` with the given TLS config. Must run inside a
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// The socket cannot be bound, or the configuration is unusable.
    pub fn bind(
        l: &ListenerConfig,
        tls: &ServerTls,
        settings: AcceptSettings,
    ) -> Result<Self, EndpointError> {
        let server_config = quic_server_config(tls.config.clone(), l)?;
        let recv = usize::try_from(l.udp_recv_buffer).unwrap_or(usize::MAX);
        let send = usize::try_from(l.udp_send_buffer).unwrap_or(usize::MAX);
        let (socket, buffers) = bind_udp(l.addr, recv, send)?;
        let endpoint = Endpoint::new(
            endpoint_config(&tls.endpoint),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| EndpointError::Socket {
            addr: l.addr,
            source,
        })?;
        Ok(Self {
            endpoint,
            buffers,
            settings,
        })
    }

    /// The address actually bound (the port, when 0 was asked for).
    ///
    /// # Errors
    ///
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The socket buffer sizes the kernel granted.
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.buffers
    }

    /// The underlying quinn endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Accepts connections and runs `handler` on each until `shutdown`
    /// turns true (or its sender is dropped), then shuts down gracefully.
    pub async fn serve<H, F>(self, mut shutdown: watch::Receiver<bool>, handler: H) -> ServeReport
    where
        H: Fn(AcceptedConnection) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Self {
            endpoint, settings, ..
        } = self;
        let settings = Arc::new(settings);
        let handler = Arc::new(handler);
        let limit = Arc::new(Semaphore::new(
            settings.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        let mut tasks: JoinSet<bool> = JoinSet::new();
        let mut report = ServeReport::default();
        loop {
            let incoming = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    report.accepted += u64::from(matches!(done, Ok(true)));
                    continue;
                }
                incoming = endpoint.accept() => match incoming {
                    Some(i) => i,
                    None => break, // the endpoint was closed
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
                if let Some(m) = &settings.metrics {
                    m.connections_refused.with_label_values(&["limit"]).inc();
                }
                incoming.refuse();
                continue;
            };
            let settings = settings.clone();
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let Some(accepted) = establish(incoming, &settings, shutdown).await else {
                    return false;
                };
                let _open = OpenConnection::new(settings.metrics.clone());
                let span = tracing::info_span!(
                    "connection",
                    id = accepted.connection.stable_id(),
                    remote = %accepted.remote,
                    principal = %accepted.principal,
                    kx = %accepted.key_exchange_group,
                );
                let connection = accepted.connection.clone();
                let stopping = accepted.shutdown.clone();
                handler(accepted).instrument(span).await;
                // A handler that returns because of shutdown leaves its
                // connection open; dropping it would close it with code 0,
                // so say why instead.
                if *stopping.borrow() {
                    connection.close(
                        VarInt::from(ErrorCode::ShuttingDown.as_u16()),
                        b"broker shutting down",
                    );
                }
                true
            });
        }

        // Stop accepting: without a server config the endpoint no longer
        // starts handshakes, while open connections carry on.
        endpoint.set_server_config(None);
        let grace = tokio::time::sleep(settings.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                done = tasks.join_next() => match done {
                    Some(done) => report.accepted += u64::from(matches!(done, Ok(true))),
                    None => break,
                },
                _ = &mut grace => {
                    report.aborted = tasks.len();
                    tracing::warn!(handlers = report.aborted, "shutdown grace period over; aborting connection handlers");
                    // Close first: an aborted handler drops its connection,
                    // which would otherwise close it with code 0, no reason.
                    close_all(&endpoint);
                    tasks.shutdown().await;
                    break;
                }
            }
        }
        close_all(&endpoint);
        // Lets the close frames reach the peers; bounded, since a peer that
        // vanished would otherwise hold us for a whole idle timeout.
        let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
        report
    }
}

/// Closes every connection of `endpoint` with [`ErrorCode::ShuttingDown`].
fn close_all(endpoint: &Endpoint) {
    endpoint.close(
        VarInt::from(ErrorCode::ShuttingDown.as_u16()),
        b"broker shutting down",
    );
}

/// Counts an open connection for as long as it lives, including when its
/// task is aborted.
struct OpenConnection(Option<Arc<BrokerMetrics>>);

impl OpenConnection {
    fn new(metrics: Option<Arc<BrokerMetrics>>) -> Self {
        if let Some(m) = &metrics {
            m.connections_total.inc();
            m.connections_active.inc();
        }
        Self(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.connections_active.dec();
        }
    }
}

/// Handshake and identity. `None` when the connection did not make it; the
/// reason is logged and, for authentication failures, reported.
async fn establish(
    incoming: quinn::Incoming,
    settings: &AcceptSettings,
    shutdown: watch::Receiver<bool>,
) -> Option<AcceptedConnection> {
    let remote = incoming.remote_address();
    // The client's first flight is processed right here, so a ClientHello
    // we refuse (no common ALPN) fails `accept` itself.
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            handshake_failed(settings, remote, &e);
            return None;
        }
    };
    let connection = match tokio::time::timeout(settings.handshake_timeout, connecting).await {
        Err(_) => {
            tracing::debug!(%remote, "handshake timed out");
            return None;
        }
        Ok(Err(e)) => {
            handshake_failed(settings, remote, &e);
            return None;
        }
        Ok(Ok(c)) => c,
    };
    let group = negotiated_group(&connection).map_or_else(|| "unknown".to_owned(), group_name);
    if let Some(m) = &settings.metrics {
        m.tls_handshakes.with_label_values(&[&group]).inc();
    }
    // rustls already insists on ALPN for QUIC; checked again here because
    // everything after this point assumes our protocol.
    let alpn_ok = connection
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == strongbox_protocol::ALPN);
    if !alpn_ok {
        settings.report(AuthFailure {
            stage: AuthStage::Handshake,
            reason: "no strongbox/1 ALPN negotiated".into(),
            claimed: None,
            remote: Some(remote),
        });
        connection.close(
            VarInt::from(ErrorCode::ProtocolViolation.as_u16()),
            b"ALPN strongbox/1 required",
        );
        return None;
    }
    let principal = leaf_certificate(connection.peer_identity()).and_then(|leaf| {
        let node_certificate = is_node_certificate(&leaf);
        Ok((settings.identity.principal_of(&leaf)?, node_certificate))
    });
    match principal {
        Ok((principal, node_certificate)) => Some(AcceptedConnection {
            connection,
            principal,
            remote,
            key_exchange_group: group,
            node_certificate,
            shutdown,
        }),
        Err(e) => {
            settings.report(AuthFailure {
                stage: AuthStage::Identity,
                reason: e.to_string(),
                claimed: None,
                remote: Some(remote),
            });
            let reason = format!("authentication failed: {e}");
            connection.close(
                VarInt::from(ErrorCode::AuthenticationFailed.as_u16()),
                reason.as_bytes(),
            );
            None
        }
    }
}

/// Reports a failed handshake unless the verifier already reported it.
fn handshake_failed(settings: &AcceptSettings, remote: SocketAddr, e: &ConnectionError) {
    let ConnectionError::TransportError(te) = e else {
        // Timeouts, resets, the client giving up: not authentication.
        tracing::debug!(%remote, error = %e, "handshake failed");
        return;
    };
    let code = u64::from(te.code);
    let alert = code.checked_sub(0x100).filter(|a| *a <= 0xff);
    match alert {
        Some(a) if CERTIFICATE_ALERTS.iter().any(|c| u64::from(*c) == a) => {
            tracing::info!(%remote, reason = %te.reason, "client certificate refused");
        }
        Some(_) if te.reason == no_common_group_reason() => settings.report(AuthFailure {
            stage: AuthStage::KeyExchange,
            reason: format!(
                "the client offered no key exchange group that tls.key_exchange = \"{}\" \
                 accepts ({}){}",
                settings.key_exchange,
                settings.key_exchange.group_names().join(", "),
                if settings.key_exchange == KeyExchange::RequireHybrid {
                    ": a classical-only client is refused"
                } else {
                    ""
                }
            ),
            claimed: None,
            remote: Some(remote),
        }),
        Some(_) => settings.report(AuthFailure {
            stage: AuthStage::Handshake,
            reason: te.reason.clone(),
            claimed: None,
            remote: Some(remote),
        }),
        None => tracing::debug!(%remote, error = %e, "handshake failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    fn key(bytes: &[u8]) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bytes.to_vec()))
    }

    #[test]
    fn the_reset_secret_configures_the_endpoint() {
        let a = EndpointSecret::from_private_key(&key(b"broker key one"));
        // Usable as quinn's endpoint configuration.
        let _config = endpoint_config(&a);
        let mut ids = RandomConnectionIds;
        let (x, y) = (
            quinn::ConnectionIdGenerator::generate_cid(&mut ids),
            quinn::ConnectionIdGenerator::generate_cid(&mut ids),
        );
        assert_eq!(x.len(), CID_LEN);
        assert_ne!(x, y);
    }
}
