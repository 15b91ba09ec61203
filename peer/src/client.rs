//! Calling other nodes: a pool of one connection per node, dialed on first
//! use and again after it is lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, ReadExactError, ReadToEndError, WriteError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::endpoint::Shared;
use crate::error::PeerError;
use crate::frame::{ErrorCode, Frame, FrameHeader, FrameKind, HEADER_LEN, MAX_ERROR_MESSAGE};
use crate::identity::NodeId;
use crate::observer::AddressBook;
use crate::tls::{NodeTls, VerifyOutcome};

/// One node's slot: its connection, dialed by one caller at a time.
type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// Calls other nodes over the peer link. Cheap to clone; clones share the
/// pool.
#[derive(Clone)]
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    addresses: Arc<dyn AddressBook>,
    pool: Arc<Mutex<HashMap<NodeId, Slot>>>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("node", &self.shared.tls.identity().node_id())
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        shared: Arc<Shared>,
        addresses: Arc<dyn AddressBook>,
    ) -> Self {
        Self {
            endpoint,
            shared,
            addresses,
            pool: Arc::default(),
        }
    }

    /// The largest request payload this client sends (the endpoint's
    /// `max_payload`); a call with a larger one is refused locally.
    pub fn max_payload(&self) -> u32 {
        self.shared.config.max_payload
    }

    /// Calls `method` on node `to` with an opaque payload and returns the
    /// response's payload. Dials `to` first when there is no open
    /// connection; the whole call is bounded by the configured call
    /// timeout.
    ///
    /// # Errors
    ///
    /// [`PeerError::UnknownNode`], [`PeerError::Unreachable`],
    /// [`PeerError::Handshake`] (including a remote that is not node `to`),
    /// [`PeerError::Timeout`], [`PeerError::Refused`] (a coded refusal),
    /// [`PeerError::Remote`] (the handler's error),
    /// [`PeerError::ConnectionLost`], [`PeerError::Protocol`],
    /// [`PeerError::PayloadTooLarge`].
    pub async fn call_raw(
        &self,
        to: NodeId,
        method: u16,
        payload: Bytes,
    ) -> Result<Bytes, PeerError> {
        self.call_raw_within(to, method, payload, self.shared.config.call_timeout)
            .await
    }

    /// As [`call_raw`](Self::call_raw), bounded by `timeout` instead of the
    /// configured call timeout (a heartbeat wants less than a snapshot).
    ///
    /// # Errors
    ///
    /// As [`call_raw`](Self::call_raw).
    pub async fn call_raw_within(
        &self,
        to: NodeId,
        method: u16,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let max = self.shared.config.max_payload;
        if payload.len() > usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(PeerError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        tokio::time::timeout(timeout, self.call_inner(to, method, payload))
            .await
            .map_err(|_| PeerError::Timeout {
                node: to,
                after: timeout,
            })?
    }

    /// Calls `method` on node `to` with `request` encoded by
    /// [`codec::encode`], and decodes the response as `Resp`.
    ///
    /// # Errors
    ///
    /// As [`call_raw`](Self::call_raw), and [`PeerError::Codec`].
    pub async fn call<Req, Resp>(
        &self,
        to: NodeId,
        method: u16,
        request: &Req,
    ) -> Result<Resp, PeerError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_within(to, method, request, self.shared.config.call_timeout)
            .await
    }

    /// As [`call`](Self::call), bounded by `timeout`.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub async fn call_within<Req, Resp>(
        &self,
        to: NodeId,
        method: u16,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let response = self
            .call_raw_within(to, method, codec::encode(request)?, timeout)
            .await?;
        codec::decode(&response)
    }

    /// Closes the pooled connection to `to`, if any; the next call dials
    /// again.
    pub async fn disconnect(&self, to: NodeId) {
        let slot = self.slot(to);
        if let Some(c) = slot.lock().await.take() {
            c.close(quinn::VarInt::from_u32(0), b"disconnected");
        }
    }

    async fn call_inner(
        &self,
        to: NodeId,
        method: u16,
        payload: Bytes,
    ) -> Result<Bytes, PeerError> {
        let connection = self.connection(to).await?;
        let (mut send, mut recv) = match connection.open_bi().await {
            Ok(s) => s,
            // The pooled connection died since its last use: dial once more.
            Err(_) => self
                .fresh_connection(to, &connection)
                .await?
                .open_bi()
                .await
                .map_err(|e| lost(to, connection.remote_address(), &e))?,
        };
        let own = self.shared.tls.identity().node_id();
        let request = Frame::request(method, own, payload)?;
        let written = async {
            send.write_all(&request.header.encode()).await?;
            send.write_chunk(request.payload).await?;
            Ok::<_, WriteError>(())
        }
        .await;
        match written {
            Ok(()) => {
                let _ = send.finish();
            }
            // Stopped: the remote refused the request and says why in its
            // response, read below.
            Err(WriteError::Stopped(_)) => {}
            Err(WriteError::ConnectionLost(e)) => {
                return Err(lost(to, connection.remote_address(), &e));
            }
            Err(e) => {
                return Err(PeerError::ConnectionLost {
                    node: to,
                    reason: e.to_string(),
                });
            }
        }
        let max = self.shared.config.max_payload;
        let mut head = [0u8; HEADER_LEN];
        match recv.read_exact(&mut head).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(n)) => {
                return Err(protocol(to, format!("response header cut after {n} bytes")));
            }
            Err(ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e))) => {
                return Err(lost(to, connection.remote_address(), &e));
            }
            Err(ReadExactError::ReadError(quinn::ReadError::Reset(code))) => {
                return Err(PeerError::Refused {
                    node: to,
                    code: u16::try_from(code.into_inner()).unwrap_or(u16::MAX),
                    message: "the remote reset the stream".into(),
                });
            }
            Err(ReadExactError::ReadError(e)) => return Err(protocol(to, e.to_string())),
        }
        let header = FrameHeader::decode(&head, max).map_err(|e| protocol(to, e.to_string()))?;
        if header.node != to {
            return Err(protocol(
                to,
                format!("the response names node {} as its sender", header.node),
            ));
        }
        let limit = match header.kind {
            FrameKind::Response => usize::try_from(header.len).unwrap_or(usize::MAX),
            FrameKind::Error => MAX_ERROR_MESSAGE,
            FrameKind::Request => {
                return Err(protocol(to, "a request frame as the response".into()));
            }
        };
        let body = match recv.read_to_end(limit).await {
            Ok(b) if u32::try_from(b.len()).ok() == Some(header.len) => b,
            Ok(b) => {
                return Err(protocol(
                    to,
                    format!(
                        "the header announced {} bytes, the stream held {}",
                        header.len,
                        b.len()
                    ),
                ));
            }
            Err(ReadToEndError::TooLong) => {
                return Err(protocol(to, "more bytes than the header announced".into()));
            }
            Err(ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => {
                return Err(lost(to, connection.remote_address(), &e));
            }
            Err(ReadToEndError::Read(e)) => return Err(protocol(to, e.to_string())),
        };
        if header.kind == FrameKind::Response {
            if header.code != method {
                return Err(protocol(
                    to,
                    format!(
                        "response to method {} on a call of method {method}",
                        header.code
                    ),
                ));
            }
            return Ok(Bytes::from(body));
        }
        let message = String::from_utf8_lossy(&body).into_owned();
        let code = header.code;
        Err(match ErrorCode::from_u16(code) {
            Some(ErrorCode::HandlerFailed | ErrorCode::UnknownMethod) => PeerError::Remote {
                node: to,
                code,
                message,
            },
            _ => PeerError::Refused {
                node: to,
                code,
                message,
            },
        })
    }

    fn slot(&self, to: NodeId) -> Slot {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(to)
            .or_default()
            .clone()
    }

    /// The pooled connection to `to`, dialing when there is none or it
    /// was closed.
    async fn connection(&self, to: NodeId) -> Result<quinn::Connection, PeerError> {
        let slot = self.slot(to);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let c = self.dial(to).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Replaces `stale` (unless another call already did) with a new
    /// connection.
    async fn fresh_connection(
        &self,
        to: NodeId,
        stale: &quinn::Connection,
    ) -> Result<quinn::Connection, PeerError> {
        let slot = self.slot(to);
        let mut guard = slot.lock().await;
        if let Some(c) = guard
            .as_ref()
            .filter(|c| c.stable_id() != stale.stable_id() && c.close_reason().is_none())
        {
            return Ok(c.clone());
        }
        let c = self.dial(to).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn dial(&self, to: NodeId) -> Result<quinn::Connection, PeerError> {
        // An address book may resolve a host name (a Kubernetes pod's DNS
        // name, say), which blocks: off the runtime's worker threads.
        let book = self.addresses.clone();
        let addr = tokio::task::spawn_blocking(move || book.address_of(to))
            .await
            .ok()
            .flatten()
            .ok_or(PeerError::UnknownNode(to))?;
        let (config, verifier) = self.shared.tls.client_config(
            to,
            addr,
            self.shared.observer.clone(),
            self.shared.transport.clone(),
        )?;
        let connecting = self
            .endpoint
            .connect_with(config, addr, NodeTls::dial_server_name())
            .map_err(|e| unreachable(to, addr, e.to_string()))?;
        match connecting.await {
            Ok(c) => Ok(c),
            Err(e) => Err(match verifier.outcome() {
                Some(VerifyOutcome::Refused(reason, detail)) => PeerError::Handshake {
                    node: to,
                    addr,
                    reason: format!("{reason}: {detail}"),
                },
                _ => match e {
                    ConnectionError::TransportError(te) => PeerError::Handshake {
                        node: to,
                        addr,
                        reason: te.to_string(),
                    },
                    ConnectionError::ApplicationClosed(a) => refused(to, &a),
                    other => unreachable(to, addr, other.to_string()),
                },
            }),
        }
    }
}

fn unreachable(node: NodeId, addr: SocketAddr, reason: String) -> PeerError {
    PeerError::Unreachable { node, addr, reason }
}

fn protocol(node: NodeId, reason: String) -> PeerError {
    PeerError::Protocol { node, reason }
}

fn refused(node: NodeId, a: &quinn::ApplicationClose) -> PeerError {
    PeerError::Refused {
        node,
        code: u16::try_from(a.error_code.into_inner()).unwrap_or(u16::MAX),
        message: String::from_utf8_lossy(&a.reason).into_owned(),
    }
}

/// A connection error met during a call: a coded close is a refusal, a
/// TLS alert is a handshake failure (TLS 1.3 reports a refused client
/// certificate only after the dialer thinks it is connected).
fn lost(node: NodeId, addr: SocketAddr, e: &ConnectionError) -> PeerError {
    match e {
        ConnectionError::ApplicationClosed(a) => refused(node, a),
        ConnectionError::TransportError(te) if is_crypto_code(te.code) => PeerError::Handshake {
            node,
            addr,
            reason: te.to_string(),
        },
        ConnectionError::ConnectionClosed(c) if is_crypto_code(c.error_code) => {
            PeerError::Handshake {
                node,
                addr,
                reason: c.to_string(),
            }
        }
        other => PeerError::ConnectionLost {
            node,
            reason: other.to_string(),
        },
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100 to 0x1ff.
fn is_crypto_code(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}
