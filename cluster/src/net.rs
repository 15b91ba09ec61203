//! The metadata group's network: openraft's messages carried by the peer
//! transport (strongbox-peer: QUIC, mutual TLS between node certificates).
//!
//! [`PeerNetwork`] sends; [`RaftService`] answers. Each message is one
//! peer call; its method number says what it is:
//!
//! | method | request | response |
//! | --- | --- | --- |
//! | [`METHOD_APPEND`] | `AppendEntriesRequest` (JSON) | `AppendEntriesResponse` (JSON) |
//! | [`METHOD_VOTE`] | `VoteRequest` (JSON) | `VoteResponse` (JSON) |
//! | [`METHOD_PRE_VOTE`] | `VoteRequest` (JSON) | `VoteResponse` (JSON) |
//! | [`METHOD_SNAPSHOT`] | u32 BE length, JSON `{vote, meta}`, then the snapshot bytes | `SnapshotResponse` (JSON) |
//! | [`METHOD_PROPOSE`] | a [`MetaCommand`] (JSON) | a [`Forwarded`] (JSON) |
//!
//! Raft messages are JSON because openraft's types serialize through
//! serde with shapes a non-self-describing format cannot carry; metadata
//! traffic is small. A snapshot's body is not JSON: its bytes follow the
//! header as they are ([`crate::snapshot_format`]).
//!
//! [`METHOD_PROPOSE`] forwards an admin write from a follower to the
//! leader, so a client may send it to any node.

use std::future::Future;

use bytes::{BufMut, Bytes, BytesMut};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::VoteOf;
use serde::{Deserialize, Serialize};
use strongbox_peer::{HandlerError, PeerClient, PeerError, PeerHandler};

use crate::command::{MetaCommand, MetaResponse};
use crate::node::{MetaRaft, ProposeError};
use crate::state_machine::RaftSnapshot;
use crate::types::{NodeId, NodeInfo, SnapshotMeta, TypeConfig};

/// AppendEntries (heartbeats included).
pub const METHOD_APPEND: u16 = 1;
/// RequestVote.
pub const METHOD_VOTE: u16 = 2;
/// Pre-vote.
pub const METHOD_PRE_VOTE: u16 = 3;
/// A whole snapshot.
pub const METHOD_SNAPSHOT: u16 = 4;
/// An admin write forwarded to the leader.
pub const METHOD_PROPOSE: u16 = 5;

/// The answer to a forwarded proposal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Forwarded {
    /// Applied; the state machine's answer.
    Applied(MetaResponse),
    /// The node asked is not the leader (any more).
    NotLeader {
        /// The leader it knows of.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// The entry was appended, then the leader lost its leadership before
    /// it committed: it may or may not be applied (the message says so).
    OutcomeUnknown(String),
    /// The proposal failed otherwise; the message says how.
    Failed(String),
}

/// Sends the group's messages through the peer transport.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    client: PeerClient,
}

impl PeerNetwork {
    /// Messages go through `client` (whose address book knows the members).
    pub fn new(client: PeerClient) -> Self {
        Self { client }
    }

    /// Forwards `command` to `leader`, which proposes it.
    ///
    /// # Errors
    ///
    /// The leader cannot be reached or answered with an error.
    pub async fn forward(
        &self,
        leader: NodeId,
        command: &MetaCommand,
    ) -> Result<Forwarded, PeerError> {
        let payload = to_json(command).map_err(|e| PeerError::Tls(e.to_string()))?;
        let answer = self
            .client
            .call_raw(leader, METHOD_PROPOSE, payload)
            .await?;
        serde_json::from_slice(&answer).map_err(|e| PeerError::Protocol {
            node: leader,
            reason: format!("a forwarded proposal's answer does not decode: {e}"),
        })
    }
}

/// One node's messages to `target`.
#[derive(Debug)]
pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, _node: &NodeInfo) -> PeerConnection {
        PeerConnection {
            client: self.client.clone(),
            target,
        }
    }
}

/// A failed call as openraft sees it: a node it cannot reach, or one that
/// could not answer (its handler failed: a group not running there yet, a
/// `Raft` shutting down), which openraft backs off from; or a network
/// failure.
pub(crate) fn rpc_error<C: openraft::RaftTypeConfig>(e: &PeerError) -> RPCError<C> {
    match e {
        PeerError::UnknownNode(_)
        | PeerError::Unreachable { .. }
        | PeerError::Handshake { .. }
        | PeerError::ConnectionLost { .. }
        | PeerError::Timeout { .. }
        | PeerError::Remote { .. } => RPCError::Unreachable(Unreachable::new(e)),
        _ => RPCError::Network(NetworkError::new(e)),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(value).map(Bytes::from)
}

impl PeerConnection {
    async fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        method: u16,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let payload = to_json(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self
            .client
            .call_raw_within(self.target, method, payload, option.hard_ttl())
            .await
            .map_err(|e| rpc_error::<TypeConfig>(&e))?;
        serde_json::from_slice(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(METHOD_APPEND, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(METHOD_VOTE, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(METHOD_PRE_VOTE, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: RaftSnapshot,
        _cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = to_json(&SnapshotHeader {
            vote,
            meta: snapshot.meta,
        })
        .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let header_len = u32::try_from(header.len()).map_err(|_| {
            StreamingError::Network(NetworkError::from_string("snapshot header too long"))
        })?;
        let mut payload = BytesMut::with_capacity(4 + header.len() + snapshot.snapshot.len());
        payload.put_u32(header_len);
        payload.put_slice(&header);
        payload.put_slice(&snapshot.snapshot);
        let answer = self
            .client
            .call_raw_within(
                self.target,
                METHOD_SNAPSHOT,
                payload.freeze(),
                option.hard_ttl(),
            )
            .await
            .map_err(|e| match rpc_error::<TypeConfig>(&e) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                _ => StreamingError::Network(NetworkError::new(&e)),
            })?;
        serde_json::from_slice(&answer).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

/// What precedes a snapshot's bytes.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMeta,
}

/// Answers the group's messages (and forwarded proposals) for one node.
#[derive(Debug, Clone)]
pub struct RaftService {
    node: MetaRaft,
}

impl RaftService {
    /// Answers for `node`.
    pub fn new(node: MetaRaft) -> Self {
        Self { node }
    }

    async fn answer(&self, method: u16, payload: Bytes) -> Result<Bytes, HandlerError> {
        let raft = self.node.raft();
        let failed = |e: &dyn std::fmt::Display| HandlerError::failed(e.to_string());
        match method {
            METHOD_APPEND => {
                let rpc = decode(&payload)?;
                let answer = raft.append_entries(rpc).await.map_err(|e| failed(&e))?;
                to_json(&answer).map_err(|e| failed(&e))
            }
            METHOD_VOTE | METHOD_PRE_VOTE => {
                let rpc = decode(&payload)?;
                let answer = if method == METHOD_VOTE {
                    raft.vote(rpc).await
                } else {
                    raft.pre_vote(rpc).await
                }
                .map_err(|e| failed(&e))?;
                to_json(&answer).map_err(|e| failed(&e))
            }
            METHOD_SNAPSHOT => {
                let (header, data) = split_snapshot(&payload).ok_or_else(|| {
                    HandlerError::failed("a snapshot call shorter than its header")
                })?;
                let header: SnapshotHeader = decode(header)?;
                let snapshot = RaftSnapshot {
                    meta: header.meta,
                    snapshot: data.to_vec(),
                };
                let answer = raft
                    .install_full_snapshot(header.vote, snapshot)
                    .await
                    .map_err(|e| failed(&e))?;
                to_json(&answer).map_err(|e| failed(&e))
            }
            METHOD_PROPOSE => {
                let command: MetaCommand = decode(&payload)?;
                let answer = match self.node.propose(command).await {
                    Ok(response) => Forwarded::Applied(response),
                    Err(ProposeError::NotLeader { leader }) => Forwarded::NotLeader { leader },
                    Err(e @ ProposeError::OutcomeUnknown { .. }) => {
                        Forwarded::OutcomeUnknown(e.to_string())
                    }
                    Err(e) => Forwarded::Failed(e.to_string()),
                };
                to_json(&answer).map_err(|e| failed(&e))
            }
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

impl PeerHandler for RaftService {
    async fn handle(
        &self,
        _from: NodeId,
        method: u16,
        payload: Bytes,
    ) -> Result<Bytes, HandlerError> {
        self.answer(method, payload).await
    }
}

/// Decodes a JSON request; bytes that do not decode fail the call.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, HandlerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| HandlerError::failed(format!("the request does not decode: {e}")))
}

/// A snapshot call's header and body: a u32 big-endian length, that many
/// bytes of header, the rest the body. `None` when it is shorter than it
/// says.
pub(crate) fn split_snapshot(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = payload.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_call_splits_into_header_and_body() {
        let mut payload = vec![0, 0, 0, 3];
        payload.extend_from_slice(b"abcdef");
        let (h, b) = split_snapshot(&payload).expect("split");
        assert_eq!((h, b), (&b"abc"[..], &b"def"[..]));
        for cut in 0..7 {
            assert!(split_snapshot(&payload[..cut]).is_none(), "cut {cut}");
        }
        assert!(split_snapshot(&[0, 0, 0, 9, 1]).is_none());
    }
}
