//! Many Raft groups over one peer link: the transport of the partition
//! groups (one openraft group per replicated partition).
//!
//! The metadata group has the peer methods 1 to 5 to itself
//! ([`crate::net`]). Every other group shares methods 16 to 19, and each
//! call names its group first:
//!
//! ```text
//! offset size field
//!      0   16 topic       the topic's 128-bit id
//!     16    4 partition   big-endian
//!     20    .. body       the message, CBOR (see below)
//! ```
//!
//! | method | body of the request | body of the response |
//! | --- | --- | --- |
//! | [`METHOD_GROUP_APPEND`] | `AppendEntriesRequest` | `AppendEntriesResponse` |
//! | [`METHOD_GROUP_VOTE`] | `VoteRequest` | `VoteResponse` |
//! | [`METHOD_GROUP_PRE_VOTE`] | `VoteRequest` | `VoteResponse` |
//! | [`METHOD_GROUP_SNAPSHOT`] | u32 BE length, CBOR `{vote, meta}`, then the snapshot bytes | `SnapshotResponse` |
//!
//! Responses carry no group id: a call's response belongs to its request.
//! The bodies are CBOR (RFC 8949) rather than the metadata group's JSON:
//! openraft's messages need a self-describing format, and a partition
//! group's entries carry record batches, which CBOR holds as byte strings
//! where JSON would spell every byte as a number.
//!
//! A node answers for the groups registered in its [`GroupRouter`]. A call
//! for a group it does not run (not created here yet, or removed) fails;
//! the caller's openraft takes that as an unreachable replica and backs
//! off, as it would for a node that is down.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use bytes::{BufMut, Bytes, BytesMut};
use openraft::entry::RaftEntry;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{Raft, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use strongbox_peer::{HandlerError, PeerClient, PeerHandler};

use crate::net::{rpc_error, split_snapshot};
use crate::types::NodeId;

/// AppendEntries of a group (heartbeats included).
pub const METHOD_GROUP_APPEND: u16 = 16;
/// RequestVote of a group.
pub const METHOD_GROUP_VOTE: u16 = 17;
/// Pre-vote of a group.
pub const METHOD_GROUP_PRE_VOTE: u16 = 18;
/// A whole snapshot of a group.
pub const METHOD_GROUP_SNAPSHOT: u16 = 19;
/// The first method number of the groups; below it, the metadata group's.
pub const FIRST_GROUP_METHOD: u16 = 16;

/// Bytes of a group id on the wire.
pub const GROUP_ID_LEN: usize = 20;

/// Which group a message is for: a partition of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId {
    /// The topic's 128-bit id.
    pub topic: [u8; 16],
    /// The partition.
    pub partition: u32,
}

impl GroupId {
    /// The 20 bytes that start a group call.
    pub fn to_bytes(self) -> [u8; GROUP_ID_LEN] {
        let mut out = [0u8; GROUP_ID_LEN];
        out[..16].copy_from_slice(&self.topic);
        out[16..].copy_from_slice(&self.partition.to_be_bytes());
        out
    }

    /// Splits a call's payload into its group id and body.
    ///
    /// # Errors
    ///
    /// A payload shorter than a group id.
    pub fn split(payload: &[u8]) -> Result<(Self, &[u8]), GroupCallError> {
        let (id, body) = payload
            .split_first_chunk::<GROUP_ID_LEN>()
            .ok_or(GroupCallError::Short(payload.len()))?;
        let (topic, partition) = id.split_at(16);
        let mut t = [0u8; 16];
        t.copy_from_slice(topic);
        let mut p = [0u8; 4];
        p.copy_from_slice(partition);
        Ok((
            Self {
                topic: t,
                partition: u32::from_be_bytes(p),
            },
            body,
        ))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", hex::encode(self.topic), self.partition)
    }
}

/// Why a group call could not be decoded or answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupCallError {
    /// The payload is shorter than a group id.
    #[error("a group call of {0} bytes is shorter than its 20-byte group id")]
    Short(usize),
    /// The body does not decode as the message the method names.
    #[error("the body does not decode: {0}")]
    Decode(String),
    /// This node runs no such group.
    #[error("no group {0} on this node (not created here yet, or removed)")]
    NoGroup(GroupId),
}

/// Encodes `value` as CBOR after `group`'s id.
fn encode_call<T: Serialize>(group: GroupId, value: &T) -> Result<Bytes, String> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&group.to_bytes());
    ciborium::into_writer(value, &mut out).map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(value, &mut out).map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GroupCallError> {
    ciborium::from_reader(bytes).map_err(|e| GroupCallError::Decode(e.to_string()))
}

/// Sends one group's messages through the peer transport: the network
/// factory of that group's `Raft`.
pub struct GroupNetwork<C> {
    client: PeerClient,
    group: GroupId,
    _config: PhantomData<fn() -> C>,
}

impl<C> GroupNetwork<C> {
    /// Messages of `group` go through `client`.
    pub fn new(client: PeerClient, group: GroupId) -> Self {
        Self {
            client,
            group,
            _config: PhantomData,
        }
    }
}

impl<C> Clone for GroupNetwork<C> {
    fn clone(&self) -> Self {
        Self::new(self.client.clone(), self.group)
    }
}

impl<C> fmt::Debug for GroupNetwork<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupNetwork")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// One group's messages from this node to `target`.
pub struct GroupConnection<C> {
    client: PeerClient,
    group: GroupId,
    target: NodeId,
    _config: PhantomData<fn() -> C>,
}

impl<C> fmt::Debug for GroupConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupConnection")
            .field("group", &self.group)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl<C> RaftNetworkFactory<C> for GroupNetwork<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
    AppendEntriesRequest<C>: Serialize,
    AppendEntriesResponse<C>: DeserializeOwned,
    VoteRequest<C>: Serialize,
    VoteResponse<C>: DeserializeOwned,
    VoteOf<C>: Serialize,
    SnapshotMetaOf<C>: Serialize,
    SnapshotResponse<C>: DeserializeOwned,
{
    type Network = GroupConnection<C>;

    async fn new_client(&mut self, target: NodeId, _node: &C::Node) -> GroupConnection<C> {
        GroupConnection {
            client: self.client.clone(),
            group: self.group,
            target,
            _config: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> GroupConnection<C> {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: u16,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<C>> {
        let payload = encode_call(self.group, request)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        let answer = self
            .client
            .call_raw_within(self.target, method, payload, option.hard_ttl())
            .await
            .map_err(|e| rpc_error(&e))?;
        decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

/// What precedes a snapshot's bytes.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader<V, M> {
    vote: V,
    meta: M,
}

impl<C> RaftNetworkV2<C> for GroupConnection<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
    AppendEntriesRequest<C>: Serialize,
    AppendEntriesResponse<C>: DeserializeOwned,
    VoteRequest<C>: Serialize,
    VoteResponse<C>: DeserializeOwned,
    VoteOf<C>: Serialize,
    SnapshotMetaOf<C>: Serialize,
    SnapshotResponse<C>: DeserializeOwned,
{
    type SnapshotData = Vec<u8>;

    /// Sends the entries openraft asks for, or, when they do not fit in one
    /// peer call, the longest prefix (halving) that does: a follower that
    /// takes the prefix is answered to openraft as a partial success up to
    /// the prefix's last entry, and openraft sends the rest next. A single
    /// entry too large for a call fails (the peer endpoint's `max_payload`
    /// must exceed the largest record batch).
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let max = usize::try_from(self.client.max_payload()).unwrap_or(usize::MAX);
        let network = |e: String| RPCError::Network(NetworkError::from_string(e));
        let mut payload = encode_call(self.group, &rpc).map_err(network)?;
        let mut cut = None;
        while payload.len() > max && rpc.entries.len() > 1 {
            let keep = rpc.entries.len() / 2;
            rpc.entries.truncate(keep);
            cut = rpc.entries.last().map(RaftEntry::log_id);
            payload = encode_call(self.group, &rpc).map_err(network)?;
        }
        let answer = self
            .client
            .call_raw_within(self.target, METHOD_GROUP_APPEND, payload, option.hard_ttl())
            .await
            .map_err(|e| rpc_error(&e))?;
        let answer: AppendEntriesResponse<C> =
            decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        Ok(match (answer, cut) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (answer, _) => answer,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(METHOD_GROUP_VOTE, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(METHOD_GROUP_PRE_VOTE, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let network = |e: String| StreamingError::Network(NetworkError::from_string(e));
        let header = encode(&SnapshotHeader {
            vote,
            meta: snapshot.meta,
        })
        .map_err(network)?;
        let header_len =
            u32::try_from(header.len()).map_err(|_| network("snapshot header too long".into()))?;
        let mut payload =
            BytesMut::with_capacity(GROUP_ID_LEN + 4 + header.len() + snapshot.snapshot.len());
        payload.put_slice(&self.group.to_bytes());
        payload.put_u32(header_len);
        payload.put_slice(&header);
        payload.put_slice(&snapshot.snapshot);
        let answer = self
            .client
            .call_raw_within(
                self.target,
                METHOD_GROUP_SNAPSHOT,
                payload.freeze(),
                option.hard_ttl(),
            )
            .await
            .map_err(|e| match rpc_error::<C>(&e) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                _ => StreamingError::Network(NetworkError::new(&e)),
            })?;
        decode(&answer).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

/// The groups this node runs, by id, and the peer handler that answers
/// their messages.
pub struct GroupRouter<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    groups: RwLock<HashMap<GroupId, Raft<C, SM>>>,
}

impl<C: RaftTypeConfig, SM: RaftStateMachine<C>> Default for GroupRouter<C, SM> {
    fn default() -> Self {
        Self {
            groups: RwLock::new(HashMap::new()),
        }
    }
}

impl<C: RaftTypeConfig, SM: RaftStateMachine<C>> fmt::Debug for GroupRouter<C, SM> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupRouter")
            .field("groups", &self.ids())
            .finish()
    }
}

impl<C: RaftTypeConfig, SM: RaftStateMachine<C>> GroupRouter<C, SM> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, messages for `id` go to `raft` (replacing any earlier
    /// one).
    pub fn insert(&self, id: GroupId, raft: Raft<C, SM>) {
        self.write().insert(id, raft);
    }

    /// Stops answering for `id`; returns its `Raft`, to shut it down.
    pub fn remove(&self, id: GroupId) -> Option<Raft<C, SM>> {
        self.write().remove(&id)
    }

    /// The group `id`, when this node runs it.
    pub fn get(&self, id: GroupId) -> Option<Raft<C, SM>> {
        self.read().get(&id).cloned()
    }

    /// The groups this node runs, in order.
    pub fn ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = self.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    // A poisoned lock only means a panic elsewhere while it was held; the
    // map itself is always whole (inserts and removals cannot half-happen).
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupId, Raft<C, SM>>> {
        self.groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<GroupId, Raft<C, SM>>> {
        self.groups
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<C, SM> GroupRouter<C, SM>
where
    C: RaftTypeConfig<NodeId = NodeId>,
    SM: RaftStateMachine<C, SnapshotData = Vec<u8>>,
    AppendEntriesRequest<C>: DeserializeOwned,
    AppendEntriesResponse<C>: Serialize,
    VoteRequest<C>: DeserializeOwned,
    VoteResponse<C>: Serialize,
    VoteOf<C>: DeserializeOwned,
    SnapshotMetaOf<C>: DeserializeOwned,
    SnapshotResponse<C>: Serialize,
{
    /// Answers one call of a group method.
    ///
    /// # Errors
    ///
    /// The payload does not decode, the group does not run here, or its
    /// `Raft` failed (it is shutting down).
    pub async fn answer(&self, method: u16, payload: &[u8]) -> Result<Bytes, HandlerError> {
        let failed = |e: &dyn fmt::Display| HandlerError::failed(e.to_string());
        let (id, body) = GroupId::split(payload).map_err(|e| failed(&e))?;
        if !matches!(
            method,
            METHOD_GROUP_APPEND | METHOD_GROUP_VOTE | METHOD_GROUP_PRE_VOTE | METHOD_GROUP_SNAPSHOT
        ) {
            return Err(HandlerError::unknown_method(method));
        }
        let raft = self
            .get(id)
            .ok_or_else(|| failed(&GroupCallError::NoGroup(id)))?;
        let answer = match method {
            METHOD_GROUP_APPEND => {
                let rpc = decode(body).map_err(|e| failed(&e))?;
                let answer = raft.append_entries(rpc).await.map_err(|e| failed(&e))?;
                encode(&answer)
            }
            METHOD_GROUP_VOTE | METHOD_GROUP_PRE_VOTE => {
                let rpc = decode(body).map_err(|e| failed(&e))?;
                let answer = if method == METHOD_GROUP_VOTE {
                    raft.vote(rpc).await
                } else {
                    raft.pre_vote(rpc).await
                }
                .map_err(|e| failed(&e))?;
                encode(&answer)
            }
            _ => {
                let (header, data) = split_snapshot(body)
                    .ok_or_else(|| failed(&"a snapshot call shorter than its header"))?;
                let header: SnapshotHeader<VoteOf<C>, SnapshotMetaOf<C>> =
                    decode(header).map_err(|e| failed(&e))?;
                let snapshot = SnapshotOf::<C, Vec<u8>> {
                    meta: header.meta,
                    snapshot: data.to_vec(),
                };
                let answer = raft
                    .install_full_snapshot(header.vote, snapshot)
                    .await
                    .map_err(|e| failed(&e))?;
                encode(&answer)
            }
        };
        answer.map_err(|e| failed(&e))
    }
}

impl<C, SM> PeerHandler for GroupRouter<C, SM>
where
    C: RaftTypeConfig<NodeId = NodeId>,
    SM: RaftStateMachine<C, SnapshotData = Vec<u8>>,
    AppendEntriesRequest<C>: DeserializeOwned,
    AppendEntriesResponse<C>: Serialize,
    VoteRequest<C>: DeserializeOwned,
    VoteResponse<C>: Serialize,
    VoteOf<C>: DeserializeOwned,
    SnapshotMetaOf<C>: DeserializeOwned,
    SnapshotResponse<C>: Serialize,
{
    async fn handle(
        &self,
        _from: NodeId,
        method: u16,
        payload: Bytes,
    ) -> Result<Bytes, HandlerError> {
        self.answer(method, &payload).await
    }
}

/// One node's peer handler: the metadata group's methods (below
/// [`FIRST_GROUP_METHOD`]) to `meta`, the others to `groups`.
#[derive(Debug)]
pub struct Routes<M, G> {
    /// Answers methods 1 to 15.
    pub meta: Arc<M>,
    /// Answers methods from 16.
    pub groups: Arc<G>,
}

impl<M: PeerHandler, G: PeerHandler> PeerHandler for Routes<M, G> {
    async fn handle(
        &self,
        from: NodeId,
        method: u16,
        payload: Bytes,
    ) -> Result<Bytes, HandlerError> {
        if method < FIRST_GROUP_METHOD {
            self.meta.handle(from, method, payload).await
        } else {
            self.groups.handle(from, method, payload).await
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_group_id_is_20_bytes_topic_then_partition() {
        let id = GroupId {
            topic: [0xAB; 16],
            partition: 0x0102_0304,
        };
        let bytes = id.to_bytes();
        assert_eq!(&bytes[..16], &[0xAB; 16]);
        assert_eq!(&bytes[16..], &[1, 2, 3, 4]);
        let mut call = bytes.to_vec();
        call.extend_from_slice(b"body");
        let (back, body) = GroupId::split(&call).expect("split");
        assert_eq!((back, body), (id, &b"body"[..]));
        assert_eq!(id.to_string(), "abababababababababababababababab/16909060");
        for cut in 0..GROUP_ID_LEN {
            assert!(GroupId::split(&call[..cut]).is_err(), "cut {cut}");
        }
    }

    proptest! {
        /// Any bytes after a group id decode to a message or an error, never
        /// a panic.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<AppendEntriesRequest<crate::types::TypeConfig>>(&body);
            let _ = decode::<VoteRequest<crate::types::TypeConfig>>(&body);
            let _ = split_snapshot(&body);
        }
    }
}
