//! Consumer groups: members of a group share a topic's partitions.
//!
//! Each `(group, topic)` pair has a membership and a generation. A member
//! joining or leaving bumps the generation and redistributes the partitions
//! over the members in join order (partition `p` goes to member
//! `p mod members`), so every partition has exactly one owner per
//! generation. Members learn their share through a `watch` channel and
//! resume each newly owned partition from the group's committed offset.
//! Delivery is at least once: records a previous owner sent after its last
//! commit are sent again by the next owner.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// A member's share of the group's partitions in one generation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberAssignment {
    /// Increases with every membership change.
    pub generation: u32,
    /// The partitions this member owns, ascending.
    pub partitions: Vec<u32>,
}

#[derive(Debug)]
struct GroupState {
    generation: u32,
    partitions: u32,
    members: BTreeMap<u64, watch::Sender<MemberAssignment>>,
}

impl GroupState {
    fn rebalance(&mut self) {
        self.generation = self.generation.wrapping_add(1).max(1);
        let n = self.members.len();
        for (index, tx) in self.members.values().enumerate() {
            let partitions = (0..self.partitions)
                .filter(|p| (*p as usize) % n == index)
                .collect();
            // A member whose receiver is gone is about to leave; ignore.
            let _ = tx.send(MemberAssignment {
                generation: self.generation,
                partitions,
            });
        }
    }
}

/// Every consumer group of the broker.
#[derive(Debug, Default, Clone)]
pub struct Groups {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    next_member: u64,
    groups: HashMap<(String, String), GroupState>,
}

/// Membership of one subscription in a group; leaving happens on drop.
#[derive(Debug)]
pub struct Membership {
    groups: Groups,
    key: (String, String),
    member: u64,
    /// The member's current assignment; changes on rebalance.
    pub assignment: watch::Receiver<MemberAssignment>,
}

impl Groups {
    /// No groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins `group` on `topic`, which has `partitions` partitions.
    pub fn join(&self, group: &str, topic: &str, partitions: u32) -> Membership {
        let key = (group.to_owned(), topic.to_owned());
        let mut inner = self.lock();
        inner.next_member += 1;
        let member = inner.next_member;
        let (tx, rx) = watch::channel(MemberAssignment::default());
        let state = inner
            .groups
            .entry(key.clone())
            .or_insert_with(|| GroupState {
                generation: 0,
                partitions,
                members: BTreeMap::new(),
            });
        // A topic's partition count never changes after creation, but a
        // group may outlive a deleted and recreated topic.
        state.partitions = partitions;
        state.members.insert(member, tx);
        state.rebalance();
        drop(inner);
        Membership {
            groups: self.clone(),
            key,
            member,
            assignment: rx,
        }
    }

    /// Members currently in `group` on `topic`.
    pub fn member_count(&self, group: &str, topic: &str) -> usize {
        self.lock()
            .groups
            .get(&(group.to_owned(), topic.to_owned()))
            .map_or(0, |g| g.members.len())
    }

    fn leave(&self, key: &(String, String), member: u64) {
        let mut inner = self.lock();
        if let Some(state) = inner.groups.get_mut(key) {
            state.members.remove(&member);
            if state.members.is_empty() {
                inner.groups.remove(key);
            } else {
                state.rebalance();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked mid-update:
        // every mutation above completes before any call that could panic.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.groups.leave(&self.key, self.member);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn members_share_partitions_and_rebalance_on_leave() {
        let groups = Groups::new();
        let a = groups.join("g", "t", 4);
        assert_eq!(a.assignment.borrow().partitions, vec![0, 1, 2, 3]);
        let b = groups.join("g", "t", 4);
        assert_eq!(a.assignment.borrow().partitions, vec![0, 2]);
        assert_eq!(b.assignment.borrow().partitions, vec![1, 3]);
        assert_eq!(
            a.assignment.borrow().generation,
            b.assignment.borrow().generation
        );
        drop(a);
        assert_eq!(b.assignment.borrow().partitions, vec![0, 1, 2, 3]);
        assert_eq!(groups.member_count("g", "t"), 1);
        drop(b);
        assert_eq!(groups.member_count("g", "t"), 0);
    }

    #[test]
    fn groups_on_other_topics_are_independent() {
        let groups = Groups::new();
        let a = groups.join("g", "t1", 2);
        let b = groups.join("g", "t2", 2);
        assert_eq!(a.assignment.borrow().partitions, vec![0, 1]);
        assert_eq!(b.assignment.borrow().partitions, vec![0, 1]);
    }

    proptest! {
        /// After any sequence of joins and leaves, every partition has
        /// exactly one owner among the live members, and generations agree.
        #[test]
        fn every_partition_has_one_owner(
            partitions in 1u32..16,
            ops in proptest::collection::vec(any::<bool>(), 1..40),
        ) {
            let groups = Groups::new();
            let mut members: Vec<Membership> = Vec::new();
            for join in ops {
                if join || members.is_empty() {
                    members.push(groups.join("g", "t", partitions));
                } else {
                    members.remove(0);
                }
                if members.is_empty() {
                    prop_assert_eq!(groups.member_count("g", "t"), 0);
                    continue;
                }
                let mut owners = vec![0u32; partitions as usize];
                let generation = members[0].assignment.borrow().generation;
                for m in &members {
                    let a = m.assignment.borrow();
                    prop_assert_eq!(a.generation, generation);
                    for p in &a.partitions {
                        owners[*p as usize] += 1;
                    }
                }
                prop_assert!(owners.iter().all(|&n| n == 1));
            }
        }
    }
}
