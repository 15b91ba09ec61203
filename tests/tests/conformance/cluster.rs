//! docs/PROTOCOL.md, "Cluster values", `Metadata`, `ClusterStatus`,
//! `ClusterAddNode` and `ClusterRemoveNode`: a development broker (no
//! `[cluster]` section) is a cluster of one.

use anyhow::{Result, bail, ensure};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::model::NodeRole;

use crate::harness::*;

/// [M1] "Metadata": the broker is the only node, the leader and only
/// replica of every partition of the topics asked that the caller may
/// describe; other topics are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_metadata_of_a_single_node() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.create_topic("demo.l1", 3).await?;
        admin.create_topic("other.l1", 1).await?;
        let alice = broker.session(ALICE).await?;
        let AdminResponse::Metadata(m) = alice
            .ok(AdminRequest::Metadata {
                topics: Some(vec!["demo.l1".into(), "other.l1".into(), "absent".into()]),
            })
            .await?
        else {
            bail!("Metadata answered another response");
        };
        ensure!(m.nodes.len() == 1 && m.nodes[0].id == 1, "{m:?}");
        let port = m.nodes[0]
            .client_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        ensure!(port.is_some_and(|p| p > 0), "{m:?}");
        // alice may describe demo.* only; the absent topic is left out too.
        ensure!(
            m.topics.len() == 1 && m.topics[0].name == "demo.l1",
            "{m:?}"
        );
        let parts = &m.topics[0].partitions;
        ensure!(parts.len() == 3, "{m:?}");
        for (i, p) in parts.iter().enumerate() {
            ensure!(p.partition as usize == i, "{m:?}");
            ensure!(p.leader == Some(1) && p.replicas == [1], "{m:?}");
        }
        // Without a list: every topic the caller may describe.
        let AdminResponse::Metadata(all) =
            admin.ok(AdminRequest::Metadata { topics: None }).await?
        else {
            bail!("Metadata answered another response");
        };
        for name in ["demo.l1", "other.l1", "demo.greetings"] {
            ensure!(all.topic(name).is_some(), "{name} missing: {all:?}");
        }
        Ok(())
    })
    .await
}

/// [M2] "ClusterStatus": `describe` on `*`; a single node answers itself,
/// leader of term 1, last contact 0, lag 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m2_cluster_status_of_a_single_node() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        bob.refused(AdminRequest::ClusterStatus, ErrorCode::NotAuthorized)
            .await?;
        let admin = broker.session(ADMIN).await?;
        let AdminResponse::ClusterStatus(c) = admin.ok(AdminRequest::ClusterStatus).await? else {
            bail!("ClusterStatus answered another response");
        };
        ensure!(
            c.node_id == 1 && c.leader == Some(1) && c.term == 1,
            "{c:?}"
        );
        ensure!(c.nodes.len() == 1, "{c:?}");
        let n = &c.nodes[0];
        ensure!(
            n.id == 1 && n.role == NodeRole::Leader && n.term == 1,
            "{c:?}"
        );
        ensure!(n.last_contact_ms == Some(0) && n.lag == Some(0), "{c:?}");
        ensure!(n.peer_addr.is_empty() && !n.client_addr.is_empty(), "{c:?}");
        Ok(())
    })
    .await
}

/// [M3] "ClusterAddNode", "ClusterRemoveNode": `admin` on `*`, else
/// `not_authorized`; a single node refuses with `invalid_request` saying
/// so; audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m3_membership_changes_on_a_single_node() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let add = AdminRequest::ClusterAddNode {
            id: 2,
            peer_addr: "127.0.0.1:7544".into(),
            client_addr: "127.0.0.1:7444".into(),
        };
        let remove = AdminRequest::ClusterRemoveNode { id: 1 };
        let alice = broker.session(ALICE).await?;
        alice.refused(add.clone(), ErrorCode::NotAuthorized).await?;
        alice
            .refused(remove.clone(), ErrorCode::NotAuthorized)
            .await?;
        let admin = broker.session(ADMIN).await?;
        let e = admin.refused(add, ErrorCode::InvalidRequest).await?;
        ensure!(e.message.contains("runs as a single node"), "{e:?}");
        let e = admin.refused(remove, ErrorCode::InvalidRequest).await?;
        ensure!(e.message.contains("runs as a single node"), "{e:?}");
        admin
            .audited(&["cluster.add_node", "node:2", "127.0.0.1:7544"])
            .await?;
        admin.audited(&["cluster.remove_node", "node:1"]).await?;
        Ok(())
    })
    .await
}
