//! Every table of the metadata store: its name, key and value.
//!
//! Table names carry a format version (`.v1`); a change of a key or value
//! layout gets a new table name and a migration, never a silent reinterpretation.
//! Keys use redb's native encodings (strings, little-endian integers, fixed
//! byte arrays, tuples of those). Values marked JSON are UTF-8 JSON objects
//! whose byte strings are lowercase hex; unknown fields are ignored on read so
//! that a newer broker may add fields, and a missing or ill-typed field is a
//! [`super::MetaError::Corrupt`] error.

use redb::{TableDefinition, TableHandle, WriteTransaction};

use super::MetaError;

/// Key of [`SEGMENT_KEYS`]: (topic id, partition, segment id).
pub type SegmentKey = ([u8; 16], u32, [u8; 16]);

/// Key of [`SEGMENTS_BY_KEK`]: (KEK scope label, version, topic id,
/// partition, segment id).
pub type SegmentByKekKey<'a> = (&'a str, u32, [u8; 16], u32, [u8; 16]);

/// Topic name → JSON `{topic_id, created_at, config: {partitions,
/// durability: {mode: "fsync" | "interval" | "none", interval_ms?},
/// retention_ms, retention_bytes, segment_bytes, segment_ms, dedicated_kek}}`.
pub const TOPICS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("topics.v1");

/// (group, topic, partition) → committed offset (`u64`, native).
pub const GROUP_OFFSETS: TableDefinition<'static, (&str, &str, u32), u64> =
    TableDefinition::new("group_offsets.v1");

/// Producer id → JSON `{epoch, updated_at}`.
pub const PRODUCERS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("producers.v1");

/// (KEK scope label, version) → JSON `{state, provider, created_at,
/// state_changed_at, segments}`; `state` is `active`, `decrypt-only`,
/// `destroyed` or `compromised`; `segments` counts the entries of
/// [`SEGMENT_KEYS`] under this version.
pub const KEK_VERSIONS: TableDefinition<'static, (&str, u32), &[u8]> =
    TableDefinition::new("kek_versions.v1");

/// (topic id, partition, segment id) → JSON `{scope, version}`: the KEK
/// version that wraps the segment's data key.
pub const SEGMENT_KEYS: TableDefinition<'static, SegmentKey, &[u8]> =
    TableDefinition::new("segment_keys.v1");

/// (KEK scope label, version, topic id, partition, segment id) → `()`: the
/// index of [`SEGMENT_KEYS`] by KEK version (the rewrap queue).
pub const SEGMENTS_BY_KEK: TableDefinition<'static, SegmentByKekKey<'static>, ()> =
    TableDefinition::new("segments_by_kek.v1");

/// (principal pattern, topic pattern, operation bits, effect: 0 allow,
/// 1 deny) → JSON `{expires_at, request_id, created_at}`.
pub const ACLS: TableDefinition<'static, (&str, &str, u16, u8), &[u8]> =
    TableDefinition::new("acls.v1");

/// Access request id → JSON `{requester, topic, operations, reason,
/// public_key, state: "pending" | "approved" | "denied" | "expired",
/// created_at, decided_by, decision_reason, decided_at, expires_at}`.
pub const ACCESS_REQUESTS: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("access_requests.v1");

/// (topic, recipient) → the signed recipient entry, stored exactly as given
/// (no encoding: the broker never interprets it).
pub const RECIPIENTS: TableDefinition<'static, (&str, &str), &[u8]> =
    TableDefinition::new("recipients.v1");

/// Name → JSON. `audit_head`: `{sequence, hash}`; `rewrap_job`: `{scope,
/// from_version, principal, started_at, updated_at, finished_at, done,
/// failed, total}`.
pub const SINGLETONS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("singletons.v1");

/// Name → last value handed out (`u64`, native): `producer_id`,
/// `access_request_id`.
pub const COUNTERS: TableDefinition<'static, &str, u64> = TableDefinition::new("counters.v1");

/// (topic id, partition) → JSON `{durable_end, updated_at}`: the offset
/// after the last record the partition is known to have made durable. It
/// only ever grows; see [`super::PartitionEnd`].
pub const PARTITION_ENDS: TableDefinition<'static, ([u8; 16], u32), &[u8]> =
    TableDefinition::new("partition_ends.v1");

/// Topic id → JSON `{name, partitions, dedicated_kek}`: a
/// topic removed from [`TOPICS`] whose files and key registry entries are
/// not all gone yet; see [`super::TopicDeletion`].
pub const TOPIC_DELETIONS: TableDefinition<'static, [u8; 16], &[u8]> =
    TableDefinition::new("topic_deletions.v1");

/// (topic id, partition) → JSON `{replicas}`: the node ids that hold the
/// partition, the first being its preferred leader. Replicated through the
/// cluster's metadata group; empty on a broker that is not in a cluster.
pub const PARTITION_ASSIGNMENTS: TableDefinition<'static, ([u8; 16], u32), &[u8]> =
    TableDefinition::new("partition_assignments.v1");

/// KEK scope label (`*` for every scope without its own entry) → JSON
/// `{rotate_every_ms}`: the key *policy* a cluster agrees on. The keys
/// themselves, their versions and wrapped data keys stay per node.
pub const KEY_POLICIES: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("key_policies.v1");

/// Name → JSON written by the cluster's state machine (`strongbox-cluster`):
/// `last_applied`, the log id `{leader_id: {term, node_id}, index}` of the
/// newest entry of the metadata group applied to this store, and
/// `membership`, the newest membership applied (`{log_id, membership:
/// {configs, nodes}}`). Written in the same transaction as the changes of
/// the entries, so the store and the point it reached never disagree.
pub const RAFT_STATE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("raft_state.v1");

/// Tables earlier versions created and this one no longer has, dropped at
/// open so that a store reads the same whichever version created it (and
/// its snapshots, which refuse tables they do not know, keep working).
///
/// - `producer_partitions.v1`, (producer id, topic, partition) → JSON:
///   created empty by every store, never written. Producer state is rebuilt
///   from the log at open (docs/STORAGE.md, "Metadata store").
const RETIRED: &[&str] = &["producer_partitions.v1"];

/// Creates every table (a no-op for those that exist) and drops the
/// [`RETIRED`] ones.
pub(super) fn create_all(txn: &WriteTransaction) -> Result<(), MetaError> {
    let retired: Vec<_> = txn
        .list_tables()?
        .filter(|t| RETIRED.contains(&t.name()))
        .collect();
    for table in retired {
        txn.delete_table(table)?;
    }
    txn.open_table(TOPICS)?;
    txn.open_table(GROUP_OFFSETS)?;
    txn.open_table(PRODUCERS)?;
    txn.open_table(KEK_VERSIONS)?;
    txn.open_table(SEGMENT_KEYS)?;
    txn.open_table(SEGMENTS_BY_KEK)?;
    txn.open_table(ACLS)?;
    txn.open_table(ACCESS_REQUESTS)?;
    txn.open_table(RECIPIENTS)?;
    txn.open_table(SINGLETONS)?;
    txn.open_table(COUNTERS)?;
    txn.open_table(PARTITION_ENDS)?;
    txn.open_table(TOPIC_DELETIONS)?;
    txn.open_table(PARTITION_ASSIGNMENTS)?;
    txn.open_table(KEY_POLICIES)?;
    txn.open_table(RAFT_STATE)?;
    Ok(())
}
