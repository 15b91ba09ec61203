//! The peer endpoint: one QUIC socket that listens on `cluster.peer_listen`
//! and dials the other nodes.
//!
//! Each call is one bidirectional QUIC stream carrying one request frame
//! and one response frame. Streams are cheap in QUIC, each has its own flow
//! control, and a stream per call means a large snapshot chunk never holds
//! up a heartbeat or a vote behind it (no head-of-line blocking), needs no
//! correlation ids, and lets a bad frame be refused by closing its stream
//! alone.
//!
//! On every request the listener checks, before reading the payload, that
//! the claimed sender id is the certificate's node id and that the node is
//! still a member; either failure is reported to the observer, answered
//! with an error frame, and closes the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{ReadExactError, ReadToEndError, RecvStream, SendStream};
use tokio::task::JoinHandle;

use crate::client::PeerClient;
use crate::config::PeerConfig;
use crate::error::{HandlerError, PeerError};
use crate::frame::{ErrorCode, Frame, FrameError, FrameHeader, FrameKind, HEADER_LEN};
use crate::identity::{NodeId, NodeIdentity};
use crate::observer::{AddressBook, Denial, DenyReason, Direction, Membership, PeerObserver};
use crate::tls::{NodeTls, VerifyOutcome, transport_config};

/// Serves the calls that arrive on the peer listener.
pub trait PeerHandler: Send + Sync + 'static {
    /// Answers a call of `method` from node `from` (verified: its
    /// certificate's node id, a current member). `payload` is the request
    /// as sent; the returned bytes are the response.
    fn handle(
        &self,
        from: NodeId,
        method: u16,
        payload: Bytes,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send;
}

/// What the endpoint's tasks share.
pub(crate) struct Shared {
    pub(crate) tls: NodeTls,
    pub(crate) config: PeerConfig,
    pub(crate) membership: Arc<dyn Membership>,
    pub(crate) observer: Arc<dyn PeerObserver>,
    pub(crate) transport: Arc<quinn::TransportConfig>,
}

/// A node's peer endpoint: the listener and the dialer.
#[derive(Clone)]
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PeerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerEndpoint")
            .field("identity", self.shared.tls.identity())
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl PeerEndpoint {
    /// Opens the peer listener on `addr` (port 0 picks a free one). It
    /// accepts nothing until [`serve`](Self::serve) runs.
    ///
    /// # Errors
    ///
    /// [`PeerError::Bind`] when the socket cannot be opened,
    /// [`PeerError::Tls`] when the TLS configuration is refused.
    pub fn bind(
        addr: SocketAddr,
        tls: NodeTls,
        config: PeerConfig,
        membership: Arc<dyn Membership>,
        observer: Arc<dyn PeerObserver>,
    ) -> Result<Self, PeerError> {
        let transport = transport_config(
            config.max_concurrent_calls,
            config.keep_alive,
            config.idle_timeout,
        );
        // The endpoint's default server configuration is only a fallback:
        // every incoming connection gets its own, whose verifier knows the
        // remote address (see `serve`).
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let (default, _) = tls.server_config(
            unspecified,
            membership.clone(),
            observer.clone(),
            transport.clone(),
        )?;
        let endpoint = quinn::Endpoint::server(default, addr)
            .map_err(|source| PeerError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            shared: Arc::new(Shared {
                tls,
                config,
                membership,
                observer,
                transport,
            }),
        })
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This node's identity.
    pub fn identity(&self) -> &NodeIdentity {
        self.shared.tls.identity()
    }

    /// Accepts peer connections and serves their calls with `handler`
    /// until [`close`](Self::close). Returns the accept loop's task.
    pub fn serve<H: PeerHandler>(&self, handler: Arc<H>) -> JoinHandle<()> {
        let endpoint = self.endpoint.clone();
        let shared = self.shared.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(shared.config.max_connections).unwrap_or(usize::MAX),
        ));
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(
                        remote = %incoming.remote_address(),
                        max = shared.config.max_connections,
                        "peer connection refused: too many connections"
                    );
                    incoming.refuse();
                    continue;
                };
                let (shared, handler) = (shared.clone(), handler.clone());
                tokio::spawn(async move {
                    accept(incoming, shared, handler).await;
                    drop(slot);
                });
            }
        })
    }

    /// A client that calls other nodes through this endpoint, finding them
    /// in `addresses`. Clients of one endpoint do not share connections;
    /// keep one per endpoint.
    pub fn client(&self, addresses: Arc<dyn AddressBook>) -> PeerClient {
        PeerClient::new(self.endpoint.clone(), self.shared.clone(), addresses)
    }

    /// Closes every connection with `ShuttingDown` and stops accepting;
    /// waits up to three seconds for the close to reach the peers.
    pub async fn close(&self) {
        self.endpoint
            .close(ErrorCode::ShuttingDown.as_varint(), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
    }
}

/// Handshake, then the connection's streams.
async fn accept<H: PeerHandler>(incoming: quinn::Incoming, shared: Arc<Shared>, handler: Arc<H>) {
    let remote = incoming.remote_address();
    let (config, verifier) = match shared.tls.server_config(
        remote,
        shared.membership.clone(),
        shared.observer.clone(),
        shared.transport.clone(),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%remote, error = %e, "cannot configure a peer connection");
            incoming.refuse();
            return;
        }
    };
    let connecting = match incoming.accept_with(Arc::new(config)) {
        Ok(c) => c,
        Err(e) => return handshake_failed(&shared, remote, verifier.outcome(), &e),
    };
    let connection = match tokio::time::timeout(shared.config.handshake_timeout, connecting).await {
        Err(_) => {
            tracing::debug!(%remote, "peer handshake timed out");
            return;
        }
        Ok(Err(e)) => return handshake_failed(&shared, remote, verifier.outcome(), &e),
        Ok(Ok(c)) => c,
    };
    let Some(VerifyOutcome::Accepted(identity)) = verifier.outcome() else {
        // rustls does not complete a handshake without a verified client
        // certificate; this is a second lock on the same door.
        connection.close(
            ErrorCode::NotAMember.as_varint(),
            b"no verified node certificate",
        );
        return;
    };
    tracing::debug!(%remote, node = identity.node_id(), "peer connected");
    let identity = Arc::new(identity);
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%remote, node = identity.node_id(), error = %e, "peer connection ended");
                return;
            }
        };
        tokio::spawn(serve_call(
            connection.clone(),
            identity.clone(),
            send,
            recv,
            shared.clone(),
            handler.clone(),
        ));
    }
}

/// Reports a failed handshake that the verifier did not already report.
fn handshake_failed(
    shared: &Shared,
    remote: SocketAddr,
    outcome: Option<VerifyOutcome>,
    e: &quinn::ConnectionError,
) {
    if matches!(outcome, Some(VerifyOutcome::Refused(..))) {
        return;
    }
    match e {
        quinn::ConnectionError::TransportError(te) => shared.observer.denied(&Denial {
            remote,
            identity: None,
            reason: DenyReason::Handshake,
            direction: Direction::Inbound,
            detail: te.to_string(),
        }),
        other => tracing::debug!(%remote, error = %other, "peer handshake failed"),
    }
}

/// One call: read and check the request, run the handler, answer.
async fn serve_call<H: PeerHandler>(
    connection: quinn::Connection,
    identity: Arc<NodeIdentity>,
    mut send: SendStream,
    mut recv: RecvStream,
    shared: Arc<Shared>,
    handler: Arc<H>,
) {
    let own = shared.tls.identity().node_id();
    let max = shared.config.max_payload;
    let mut head = [0u8; HEADER_LEN];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(n)) => {
            let e = FrameError::Truncated {
                offset: 0,
                need: HEADER_LEN,
                have: n,
            };
            return refuse_stream(send, recv, own, &e).await;
        }
        // The stream was reset or the connection lost: nobody to answer.
        Err(ReadExactError::ReadError(_)) => return,
    }
    let header = match FrameHeader::decode(&head, max) {
        Ok(h) if h.kind == FrameKind::Request => h,
        Ok(h) => {
            let e = FrameError::Kind(h.kind as u8);
            return refuse_stream(send, recv, own, &e).await;
        }
        Err(e) => return refuse_stream(send, recv, own, &e).await,
    };
    let node = identity.node_id();
    // Identity and membership before a byte of payload is read.
    if header.node != node {
        let detail = format!(
            "request claims to come from node {} but the certificate is node {node}'s",
            header.node
        );
        return refuse_connection(
            &connection,
            send,
            &shared,
            &identity,
            DenyReason::IdentityMismatch,
            ErrorCode::IdentityMismatch,
            detail,
        )
        .await;
    }
    if !shared.membership.is_member(node) {
        let detail = format!("node {node} is no longer a member of the cluster");
        return refuse_connection(
            &connection,
            send,
            &shared,
            &identity,
            DenyReason::NotAMember,
            ErrorCode::NotAMember,
            detail,
        )
        .await;
    }
    let Ok(len) = usize::try_from(header.len) else {
        let e = FrameError::TooLarge {
            len: header.len,
            max,
        };
        return refuse_stream(send, recv, own, &e).await;
    };
    let payload = match recv.read_to_end(len).await {
        Ok(p) if p.len() == len => Bytes::from(p),
        Ok(p) => {
            let e = FrameError::Truncated {
                offset: HEADER_LEN,
                need: len,
                have: p.len(),
            };
            return refuse_stream(send, recv, own, &e).await;
        }
        Err(ReadToEndError::TooLong) => {
            // More bytes than the header announced.
            let e = FrameError::Trailing(1);
            return refuse_stream(send, recv, own, &e).await;
        }
        Err(ReadToEndError::Read(_)) => return,
    };
    let answer = match handler.handle(node, header.code, payload).await {
        Ok(body) if body.len() > usize::try_from(max).unwrap_or(usize::MAX) => Frame::error(
            ErrorCode::HandlerFailed,
            own,
            &format!(
                "the response of {} bytes exceeds the peer maximum of {max} bytes",
                body.len()
            ),
        ),
        Ok(body) => match Frame::response(header.code, own, body) {
            Ok(f) => f,
            Err(e) => Frame::error(ErrorCode::HandlerFailed, own, &e.to_string()),
        },
        Err(e) => Frame::error(e.code(), own, &e.to_string()),
    };
    write_frame(&mut send, &answer).await;
}

/// Writes `frame` and finishes the stream; a peer that went away is not an
/// error worth more than a debug line.
async fn write_frame(send: &mut SendStream, frame: &Frame) {
    let result = async {
        send.write_all(&frame.header.encode()).await?;
        send.write_chunk(frame.payload.clone()).await?;
        send.finish()?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "peer response not delivered");
    }
}

/// Answers a bad frame with an error frame and closes this stream only.
async fn refuse_stream(mut send: SendStream, mut recv: RecvStream, own: NodeId, e: &FrameError) {
    tracing::debug!(error = %e, "bad peer frame");
    let code = e.code();
    // Stop the sender first: whatever it still sends is not read.
    let _ = recv.stop(code.as_varint());
    write_frame(&mut send, &Frame::error(code, own, &e.to_string())).await;
}

/// Reports an identity refusal, answers it, and closes the connection.
async fn refuse_connection(
    connection: &quinn::Connection,
    mut send: SendStream,
    shared: &Shared,
    identity: &NodeIdentity,
    reason: DenyReason,
    code: ErrorCode,
    detail: String,
) {
    shared.observer.denied(&Denial {
        remote: connection.remote_address(),
        identity: Some(identity.clone()),
        reason,
        direction: Direction::Inbound,
        detail: detail.clone(),
    });
    let own = shared.tls.identity().node_id();
    write_frame(&mut send, &Frame::error(code, own, &detail)).await;
    // Give the error frame a moment to arrive before the close overtakes
    // it; the close carries the same code either way.
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    connection.close(code.as_varint(), detail.as_bytes());
}
