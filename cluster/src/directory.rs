//! Who the peer transport talks to: the metadata group's members and their
//! peer addresses, as the group itself records them.
//!
//! Before a node has joined a group (it has no membership yet) the
//! directory answers from the bootstrap list (`initial_members` in the
//! config). A node with neither, a new node waiting to be added, accepts
//! calls from any node certificate of its trust domain and cluster CA: it
//! holds nothing yet, and it must let the leader that adds it reach it.
//! From its first membership on, only members get through.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::OnceLock;

use strongbox_peer::{AddressBook, Membership};

use crate::node::MetaRaft;
use crate::types::{NodeId, NodeInfo};

/// The members and addresses the peer transport uses.
#[derive(Debug, Default)]
pub struct Directory {
    node: OnceLock<MetaRaft>,
    bootstrap: BTreeMap<NodeId, NodeInfo>,
}

impl Directory {
    /// A directory answering from `bootstrap` until a node is attached.
    pub fn new(bootstrap: BTreeMap<NodeId, NodeInfo>) -> Self {
        Self {
            node: OnceLock::new(),
            bootstrap,
        }
    }

    /// From now on, membership comes from `node`'s group (once it has
    /// one). A second call is ignored.
    pub fn attach(&self, node: MetaRaft) {
        let _ = self.node.set(node);
    }

    /// The members as known now: the group's, else the bootstrap list.
    pub fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        let from_group = self.node.get().map(MetaRaft::members).unwrap_or_default();
        if from_group.is_empty() {
            self.bootstrap.clone()
        } else {
            from_group
        }
    }
}

impl Membership for Directory {
    fn is_member(&self, id: NodeId) -> bool {
        let members = self.members();
        members.is_empty() || members.contains_key(&id)
    }
}

impl AddressBook for Directory {
    fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        let members = self.members();
        let info = members.get(&id)?;
        info.peer_addr.to_socket_addrs().ok()?.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(port: u16) -> NodeInfo {
        NodeInfo {
            peer_addr: format!("127.0.0.1:{port}"),
            client_addr: String::new(),
        }
    }

    #[test]
    fn before_a_group_the_bootstrap_list_decides() {
        let d = Directory::new(BTreeMap::from([(1, info(7001)), (2, info(7002))]));
        assert!(d.is_member(1) && d.is_member(2));
        assert!(!d.is_member(3));
        assert_eq!(
            d.address_of(2),
            Some("127.0.0.1:7002".parse().expect("addr"))
        );
        assert_eq!(d.address_of(3), None);
    }

    #[test]
    fn a_host_name_is_resolved() {
        let d = Directory::new(BTreeMap::from([(
            1,
            NodeInfo {
                peer_addr: "localhost:7001".into(),
                client_addr: String::new(),
            },
        )]));
        let addr = d.address_of(1).expect("localhost resolves");
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 7001);
    }

    #[test]
    fn a_node_waiting_to_be_added_accepts_any_node() {
        let d = Directory::new(BTreeMap::new());
        assert!(d.is_member(42));
        assert_eq!(d.address_of(42), None);
    }
}
