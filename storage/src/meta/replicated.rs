//! What a cluster replicates, and what stays with one node.
//!
//! In a cluster, one consensus group (the `strongbox-cluster` crate) agrees
//! on the metadata every node must share: topics and where their partitions
//! live, ACL rules, consumer-group offsets, producer ids, access requests,
//! recipients and the key *policy*. Each node applies the group's log to its
//! own store, so these tables hold the same rows on every node. The others
//! (the key registry, the partitions' durable ends, topic deletions in
//! progress, the audit head, the rewrap job) describe one node's disk and
//! keys, and never leave it.
//!
//! Topics whose names start with `_` are a node's own (its audit trail
//! `_audit`, with its own id on every node): their rows in `topics.v1`,
//! `group_offsets.v1` and `recipients.v1` are node-local too.
//!
//! [`ReplicatedTables`] is a copy of the replicated rows, taken with
//! [`MetaView::export_replicated`] and put in place of a store's own with
//! [`Batch::replace_replicated`]: the contents of a metadata snapshot.

use redb::{Key, TableDefinition, TableHandle, Value};
use serde::{Deserialize, Serialize};

use super::codec::{corrupt, decode, encode};
use super::tables::{
    ACCESS_REQUESTS, ACLS, COUNTERS, GROUP_OFFSETS, KEY_POLICIES, PARTITION_ASSIGNMENTS, PRODUCERS,
    RAFT_STATE, RECIPIENTS, TOPICS,
};
use super::{Batch, MetaError, MetaView, ProducerRecord, TopicEntry};

/// Whether rows about the topic `name` stay with this node (see the module
/// documentation).
pub fn is_node_local_topic(name: &str) -> bool {
    name.starts_with('_')
}

/// The key policy of a KEK scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    /// Rotate the scope's active KEK once it is this old, in milliseconds;
    /// never when `None`.
    pub rotate_every_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct AssignmentJson {
    replicas: Vec<u64>,
}

/// A stored row: its key and its value as stored (JSON, or the raw
/// recipient entry), the value written as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row<K> {
    /// The row's key.
    pub key: K,
    /// The stored value.
    #[serde(with = "hex_vec")]
    pub value: Vec<u8>,
}

/// Every replicated row of a store, table by table, in key order. Its serde
/// form is the body of a metadata snapshot (docs/STORAGE.md, "Cluster
/// metadata snapshot").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatedTables {
    /// `topics.v1`: name → topic.
    pub topics: Vec<Row<String>>,
    /// `partition_assignments.v1`: (topic id, partition) → replicas.
    pub partition_assignments: Vec<Row<([u8; 16], u32)>>,
    /// `group_offsets.v1`: ((group, topic, partition), offset).
    pub group_offsets: Vec<((String, String, u32), u64)>,
    /// `producers.v1`: producer id → record.
    pub producers: Vec<Row<u64>>,
    /// `acls.v1`: (principal, topic, operations, effect) → rule details.
    pub acls: Vec<Row<(String, String, u16, u8)>>,
    /// `access_requests.v1`: id → request.
    pub access_requests: Vec<Row<u64>>,
    /// `recipients.v1`: (topic, recipient) → signed entry.
    pub recipients: Vec<Row<(String, String)>>,
    /// `key_policies.v1`: scope label → policy.
    pub key_policies: Vec<Row<String>>,
    /// `counters.v1`: (name, last value handed out).
    pub counters: Vec<(String, u64)>,
}

impl MetaView<'_> {
    /// The replicas of every partition of the topic `topic_id` that has an
    /// assignment, by partition.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn partition_assignments(
        &self,
        topic_id: &[u8; 16],
    ) -> Result<Vec<(u32, Vec<u64>)>, MetaError> {
        let mut out = Vec::new();
        self.scan(PARTITION_ASSIGNMENTS, Some((*topic_id, 0)), |(t, p), v| {
            if t != *topic_id {
                return Ok(false);
            }
            let key = format_args!("({}, {p})", hex::encode(t));
            let j: AssignmentJson = decode(PARTITION_ASSIGNMENTS.name(), key, v)?;
            out.push((p, j.replicas));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The key policy of the scope `scope` (`*`: the default).
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn key_policy(&self, scope: &str) -> Result<Option<KeyPolicy>, MetaError> {
        self.get_with(KEY_POLICIES, scope, <[u8]>::to_vec)?
            .map(|b| decode(KEY_POLICIES.name(), scope, &b))
            .transpose()
    }

    /// Every key policy, by scope label.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn key_policies(&self) -> Result<Vec<(String, KeyPolicy)>, MetaError> {
        let mut out = Vec::new();
        self.scan(KEY_POLICIES, None, |scope, v| {
            out.push((scope.to_owned(), decode(KEY_POLICIES.name(), scope, v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The entry `name` of `raft_state.v1`, as stored.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn raft_state(&self, name: &str) -> Result<Option<Vec<u8>>, MetaError> {
        self.get_with(RAFT_STATE, name, <[u8]>::to_vec)
    }

    /// A copy of every replicated row (see the module documentation).
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn export_replicated(&self) -> Result<ReplicatedTables, MetaError> {
        let mut t = ReplicatedTables::default();
        self.scan(TOPICS, None, |name, v| {
            if !is_node_local_topic(name) {
                t.topics.push(row(name.to_owned(), v));
            }
            Ok(true)
        })?;
        self.scan(PARTITION_ASSIGNMENTS, None, |k, v| {
            t.partition_assignments.push(row(k, v));
            Ok(true)
        })?;
        self.scan(GROUP_OFFSETS, None, |(g, topic, p), offset| {
            if !is_node_local_topic(topic) {
                t.group_offsets
                    .push(((g.to_owned(), topic.to_owned(), p), offset));
            }
            Ok(true)
        })?;
        self.scan(PRODUCERS, None, |k, v| {
            t.producers.push(row(k, v));
            Ok(true)
        })?;
        self.scan(ACLS, None, |(p, topic, ops, effect), v| {
            t.acls
                .push(row((p.to_owned(), topic.to_owned(), ops, effect), v));
            Ok(true)
        })?;
        self.scan(ACCESS_REQUESTS, None, |k, v| {
            t.access_requests.push(row(k, v));
            Ok(true)
        })?;
        self.scan(RECIPIENTS, None, |(topic, r), v| {
            if !is_node_local_topic(topic) {
                t.recipients.push(row((topic.to_owned(), r.to_owned()), v));
            }
            Ok(true)
        })?;
        self.scan(KEY_POLICIES, None, |k, v| {
            t.key_policies.push(row(k.to_owned(), v));
            Ok(true)
        })?;
        self.scan(COUNTERS, None, |k, v| {
            t.counters.push((k.to_owned(), v));
            Ok(true)
        })?;
        Ok(t)
    }

    /// Decodes every replicated row, so that a replacement holding a value
    /// this store cannot read is refused before it is committed.
    fn check_replicated(&self) -> Result<(), MetaError> {
        self.topics()?;
        self.acls()?;
        self.access_requests()?;
        self.key_policies()?;
        self.scan(PRODUCERS, None, |id, v| {
            decode::<ProducerRecord>(PRODUCERS.name(), id, v)?;
            Ok(true)
        })?;
        self.scan(PARTITION_ASSIGNMENTS, None, |(t, p), v| {
            let key = format_args!("({}, {p})", hex::encode(t));
            decode::<AssignmentJson>(PARTITION_ASSIGNMENTS.name(), key, v)?;
            Ok(true)
        })?;
        Ok(())
    }
}

fn row<K>(key: K, value: &[u8]) -> Row<K> {
    Row {
        key,
        value: value.to_vec(),
    }
}

impl Batch<'_> {
    /// Records which nodes hold a partition (the first is its preferred
    /// leader).
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn put_partition_assignment(
        &mut self,
        topic_id: &[u8; 16],
        partition: u32,
        replicas: &[u64],
    ) -> Result<(), MetaError> {
        let value = encode(
            "partition assignment",
            &AssignmentJson {
                replicas: replicas.to_vec(),
            },
        )?;
        self.put(
            PARTITION_ASSIGNMENTS,
            (*topic_id, partition),
            value.as_slice(),
        )?;
        Ok(())
    }

    /// Forgets the assignments of every partition of a topic.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn remove_partition_assignments(&mut self, topic_id: &[u8; 16]) -> Result<(), MetaError> {
        let mut partitions = Vec::new();
        self.scan(PARTITION_ASSIGNMENTS, Some((*topic_id, 0)), |(t, p), _| {
            if t != *topic_id {
                return Ok(false);
            }
            partitions.push(p);
            Ok(true)
        })?;
        for p in partitions {
            self.delete(PARTITION_ASSIGNMENTS, (*topic_id, p))?;
        }
        Ok(())
    }

    /// Stores the key policy of `scope`; returns true when it replaced one.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn put_key_policy(&mut self, scope: &str, policy: &KeyPolicy) -> Result<bool, MetaError> {
        let value = encode("key policy", policy)?;
        self.put(KEY_POLICIES, scope, value.as_slice())
    }

    /// Removes the key policy of `scope`; returns true when it was there.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn remove_key_policy(&mut self, scope: &str) -> Result<bool, MetaError> {
        self.delete(KEY_POLICIES, scope)
    }

    /// Stores the entry `name` of `raft_state.v1`.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn put_raft_state(&mut self, name: &str, value: &[u8]) -> Result<(), MetaError> {
        self.put(RAFT_STATE, name, value)?;
        Ok(())
    }

    /// Replaces every replicated row of the store with `tables`, leaving the
    /// node-local tables and rows as they are, and returns the topics that
    /// are gone (by name and id: a topic deleted and created again under
    /// the same name counts as gone). Each gone topic's files are recorded
    /// for deletion and its durable ends forgotten, as
    /// [`Batch::delete_topic`] does.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`] when `tables` holds a row of a node-local
    /// topic or a value this store cannot decode (nothing is kept, as for
    /// any error in a [`super::MetaStore::write`]); [`MetaError::Db`].
    pub fn replace_replicated(
        &mut self,
        tables: &ReplicatedTables,
    ) -> Result<Vec<TopicEntry>, MetaError> {
        let before: Vec<TopicEntry> = self
            .topics()?
            .into_iter()
            .filter(|t| !is_node_local_topic(&t.name))
            .collect();

        self.clear(TOPICS, |name| !is_node_local_topic(name))?;
        self.clear(PARTITION_ASSIGNMENTS, |_| true)?;
        self.clear(GROUP_OFFSETS, |(_, t, _)| !is_node_local_topic(t))?;
        self.clear(PRODUCERS, |_| true)?;
        self.clear(ACLS, |_| true)?;
        self.clear(ACCESS_REQUESTS, |_| true)?;
        self.clear(RECIPIENTS, |(t, _)| !is_node_local_topic(t))?;
        self.clear(KEY_POLICIES, |_| true)?;
        self.clear(COUNTERS, |_| true)?;

        let local = |table: &str, key: &dyn std::fmt::Display| {
            corrupt(
                table,
                key,
                "a replicated copy holds a row of a node-local topic",
            )
        };
        for r in &tables.topics {
            if is_node_local_topic(&r.key) {
                return Err(local(TOPICS.name(), &r.key));
            }
            self.put(TOPICS, r.key.as_str(), r.value.as_slice())?;
        }
        for r in &tables.partition_assignments {
            self.put(PARTITION_ASSIGNMENTS, r.key, r.value.as_slice())?;
        }
        for ((g, t, p), offset) in &tables.group_offsets {
            if is_node_local_topic(t) {
                return Err(local(GROUP_OFFSETS.name(), t));
            }
            self.put(GROUP_OFFSETS, (g.as_str(), t.as_str(), *p), *offset)?;
        }
        for r in &tables.producers {
            self.put(PRODUCERS, r.key, r.value.as_slice())?;
        }
        for r in &tables.acls {
            let (p, t, ops, effect) = &r.key;
            self.put(
                ACLS,
                (p.as_str(), t.as_str(), *ops, *effect),
                r.value.as_slice(),
            )?;
        }
        for r in &tables.access_requests {
            self.put(ACCESS_REQUESTS, r.key, r.value.as_slice())?;
        }
        for r in &tables.recipients {
            let (t, name) = &r.key;
            if is_node_local_topic(t) {
                return Err(local(RECIPIENTS.name(), t));
            }
            self.put(RECIPIENTS, (t.as_str(), name.as_str()), r.value.as_slice())?;
        }
        for r in &tables.key_policies {
            self.put(KEY_POLICIES, r.key.as_str(), r.value.as_slice())?;
        }
        for (name, value) in &tables.counters {
            self.put(COUNTERS, name.as_str(), *value)?;
        }
        self.check_replicated()?;

        let mut gone = Vec::new();
        for old in before {
            let kept = self
                .topic(&old.name)?
                .is_some_and(|now| now.topic_id == old.topic_id);
            if !kept {
                self.remove_partition_ends(&old.topic_id)?;
                self.start_topic_deletion(&old)?;
                gone.push(old);
            }
        }
        Ok(gone)
    }

    /// Deletes every row of `def` whose key `select` picks.
    fn clear<K, V>(
        &mut self,
        def: TableDefinition<'static, K, V>,
        select: impl Fn(K::SelfType<'_>) -> bool,
    ) -> Result<(), MetaError>
    where
        K: Key + 'static,
        V: Value + 'static,
    {
        let mut table = self.txn.open_table(def)?;
        table.retain(|k, _| !select(k))?;
        Ok(())
    }
}

/// Byte strings as lowercase hex.
mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use strongbox_protocol::model::{AclEffect, AclRule, Durability, Operations, TopicConfig};

    use super::*;
    use crate::meta::{AclEntry, MetaStore};

    fn topic(name: &str, id: u8) -> TopicEntry {
        TopicEntry {
            name: name.to_owned(),
            topic_id: [id; 16],
            created_at: 1,
            config: TopicConfig {
                partitions: 2,
                durability: Durability::Fsync,
                retention_ms: None,
                retention_bytes: None,
                segment_bytes: None,
                segment_ms: None,
                dedicated_kek: false,
            },
        }
    }

    fn fill(meta: &MetaStore, prefix: &str, id: u8) {
        meta.write(|b| {
            b.create_topic(&topic(&format!("{prefix}orders"), id))?;
            b.put_partition_assignment(&[id; 16], 0, &[1, 2])?;
            b.commit_offset("billing", &format!("{prefix}orders"), 0, 7)?;
            b.put_acl(&AclEntry {
                rule: AclRule {
                    principal: format!("{prefix}alice"),
                    topic: "*".into(),
                    operations: Operations(1),
                    effect: AclEffect::Allow,
                    expires_at: None,
                },
                request_id: None,
                created_at: 3,
            })?;
            b.put_recipient(&format!("{prefix}orders"), "bob", b"\x00signed")?;
            b.put_key_policy(
                "*",
                &KeyPolicy {
                    rotate_every_ms: Some(id.into()),
                },
            )?;
            b.allocate_producer_id()?;
            // Node-local rows.
            b.create_topic(&topic("_audit", id.wrapping_add(100)))?;
            b.commit_offset("billing", "_audit", 0, u64::from(id))?;
            b.raise_partition_end(&[id; 16], 0, 5, 1)?;
            Ok::<_, MetaError>(())
        })
        .expect("fill");
    }

    #[test]
    fn replacing_copies_replicated_rows_and_keeps_node_local_ones() {
        let a = MetaStore::in_memory().expect("a");
        let b = MetaStore::in_memory().expect("b");
        fill(&a, "a-", 1);
        fill(&b, "b-", 2);
        let exported = a.read(|r| r.export_replicated()).expect("export");
        assert_eq!(exported.topics.len(), 1, "_audit is node-local");
        let gone = b
            .write(|w| w.replace_replicated(&exported))
            .expect("replace");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone.first().map(|t| t.name.as_str()), Some("b-orders"));

        assert_eq!(b.read(|r| r.export_replicated()).expect("export"), exported);
        // Node-local rows of b are untouched.
        let audit = b.read(|r| r.topic("_audit")).expect("read").expect("kept");
        assert_eq!(audit.topic_id, [102; 16]);
        assert_eq!(
            b.read(|r| r.offset("billing", "_audit", 0)).expect("read"),
            Some(2)
        );
        // The topic b lost is recorded for deletion, its durable ends gone.
        let deletions = b.read(|r| r.topic_deletions()).expect("read");
        assert_eq!(deletions.len(), 1);
        assert_eq!(deletions.first().map(|d| d.topic_id), Some([2; 16]));
        assert_eq!(
            b.read(|r| r.partition_end(&[2; 16], 0)).expect("read"),
            None
        );
    }

    #[test]
    fn a_replacement_with_an_unreadable_value_changes_nothing() {
        let a = MetaStore::in_memory().expect("a");
        fill(&a, "", 1);
        let before = a.read(|r| r.export_replicated()).expect("export");
        let mut bad = before.clone();
        if let Some(r) = bad.topics.first_mut() {
            r.value = b"{not json".to_vec();
        }
        let e = a
            .write(|w| w.replace_replicated(&bad))
            .expect_err("corrupt");
        assert!(matches!(e, MetaError::Corrupt { .. }), "{e}");
        let mut local = before.clone();
        local.recipients.push(Row {
            key: ("_audit".into(), "x".into()),
            value: vec![1],
        });
        let e = a
            .write(|w| w.replace_replicated(&local))
            .expect_err("node-local row");
        assert!(e.to_string().contains("node-local"), "{e}");
        assert_eq!(a.read(|r| r.export_replicated()).expect("export"), before);
    }

    #[test]
    fn deleting_a_topic_forgets_its_assignments() {
        let a = MetaStore::in_memory().expect("a");
        fill(&a, "", 1);
        assert_eq!(
            a.read(|r| r.partition_assignments(&[1; 16])).expect("read"),
            vec![(0, vec![1, 2])]
        );
        a.write(|w| w.delete_topic("orders")).expect("delete");
        assert!(
            a.read(|r| r.partition_assignments(&[1; 16]))
                .expect("read")
                .is_empty()
        );
    }
}
