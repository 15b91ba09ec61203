//! Ports and addresses: the container, the Services and the NetworkPolicy
//! against the ports each node listens on, and the members' addresses
//! against the names the headless Service gives the pods.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strongbox_broker::config::ClusterConfig;

use super::{Node, Workload};
use crate::deploy_kubernetes_support::{at, describe, list_at, selects, strings_at, u64_at};

/// The namespace Prometheus runs in, the only one the metrics port admits.
const MONITORING_NAMESPACE: &str = "monitoring";

pub(super) fn ports(w: &Workload<'_>, node: &Node) -> Result<()> {
    let cfg = &node.config;
    let pod = &node.view.pod;
    ensure!(
        cfg.metrics.enabled,
        "pod {pod}: metrics are off; the probes need them"
    );
    let wanted = [
        ("listener.addr", cfg.listener.addr, "UDP"),
        ("cluster.peer_listen", node.cluster().peer_listen, "UDP"),
        ("metrics.listen", cfg.metrics.listen, "TCP"),
    ];
    let declared = list_at(w.container, "/ports");
    ensure!(
        declared.len() == wanted.len(),
        "the broker container declares {} ports; the configuration listens on {}",
        declared.len(),
        wanted.len()
    );
    for (field, addr, proto) in wanted {
        ensure!(
            addr.ip().is_unspecified(),
            "pod {pod}: {field} = {addr} is not reachable on the pod's address; bind 0.0.0.0"
        );
        let port = Value::from(addr.port());
        let (number, protocol) = w
            .container_port(&port)
            .with_context(|| format!("pod {pod}: {field} = {addr}"))?;
        ensure!(
            number == u64::from(addr.port()) && protocol == proto,
            "pod {pod}: {field} = {addr} is declared as {number}/{protocol}, not {proto}"
        );
    }

    // The headless Service: pod names reach the pods directly, so its
    // ports are the container's.
    let headless = w.rendered.named("Service", &w.headless)?;
    let mut reached = BTreeSet::new();
    for p in list_at(headless, "/spec/ports") {
        let port = u64_at(p, "/port")?;
        let target = p.get("targetPort").cloned().unwrap_or(Value::from(port));
        let (number, protocol) = w.container_port(&target)?;
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        ensure!(
            number == port && protocol == proto,
            "Service {}: port {port}/{proto} leads to container port {number}/{protocol}",
            w.headless
        );
        reached.insert(number);
    }
    for (field, addr) in [
        ("cluster.peer_listen", node.cluster().peer_listen),
        ("listener.addr", cfg.listener.addr),
    ] {
        ensure!(
            reached.contains(&u64::from(addr.port())),
            "Service {} has no port for {field} ({})",
            w.headless,
            addr.port()
        );
    }

    // The client Service leads to the client listener and nothing else.
    let client = client_service(w)?;
    let client_ports = list_at(client, "/spec/ports");
    ensure!(
        client_ports.len() == 1,
        "{}: one port, the client listener's",
        describe(client)
    );
    let p = &client_ports[0];
    let target = p
        .get("targetPort")
        .cloned()
        .unwrap_or(Value::from(u64_at(p, "/port")?));
    let (number, protocol) = w.container_port(&target)?;
    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
    ensure!(
        number == u64::from(cfg.listener.addr.port()) && protocol == "UDP" && proto == "UDP",
        "{} leads to {number}/{protocol} ({proto}), not the client listener {}/UDP",
        describe(client),
        cfg.listener.addr.port()
    );
    Ok(())
}

/// The Service other than the headless one that selects the pods.
pub(super) fn client_service<'a>(w: &Workload<'a>) -> Result<&'a Value> {
    let services: Vec<&Value> = w
        .rendered
        .of_kind("Service")
        .into_iter()
        .filter(|s| s.pointer("/metadata/name").and_then(Value::as_str) != Some(&w.headless))
        .collect();
    ensure!(
        services.len() == 1,
        "one client Service besides the headless one"
    );
    ensure!(
        selects(services[0].pointer("/spec/selector"), Some(w.labels)),
        "{} does not select the brokers",
        describe(services[0])
    );
    Ok(services[0])
}

/// `host:port` split; an error naming `what` otherwise.
fn host_port<'s>(what: &str, s: &'s str) -> Result<(&'s str, u64)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{what} {s:?} is not host:port"))?;
    Ok((host, port.parse().with_context(|| format!("{what} {s:?}"))?))
}

/// The nodes that bootstrap the cluster list the same initial members, and
/// a node added later lists running members as seeds; every address is
/// the name the headless Service gives that node's pod, at the port that
/// pod listens on.
pub(super) fn addresses(w: &Workload<'_>, nodes: &[Node]) -> Result<()> {
    // The pod of node `id` (node ids are ordinals plus one), and its peer
    // and client ports.
    let pod_of = |id: u64| -> Result<&Node> {
        nodes
            .iter()
            .find(|n| n.cluster().node_id == id)
            .with_context(|| format!("node {id} is listed, but no pod runs it"))
    };
    // The order of the list does not matter to the broker.
    let members = |c: &ClusterConfig| {
        let mut list = c.initial_members.clone();
        list.sort_by_key(|m| m.id);
        list
    };
    let founders: Vec<&Node> = nodes
        .iter()
        .filter(|n| !n.cluster().initial_members.is_empty())
        .collect();
    let first = founders
        .first()
        .context("no node lists initial_members: nothing bootstraps the cluster")?;
    for node in nodes {
        let c = node.cluster();
        let pod = &node.view.pod;
        ensure!(
            c.trust_domain == first.cluster().trust_domain,
            "pod {pod}: another trust domain than pod {}'s",
            first.view.pod
        );
        if c.initial_members.is_empty() {
            for seed in &c.seeds {
                let (host, port) = host_port("seed", seed)?;
                let running = nodes.iter().find(|n| {
                    n.ordinal != node.ordinal
                        && w.pod_host(n.ordinal) == host
                        && u64::from(n.cluster().peer_listen.port()) == port
                });
                ensure!(
                    running.is_some(),
                    "pod {pod}: the seed {seed} is no other pod's peer address"
                );
            }
        } else {
            ensure!(
                members(c) == members(first.cluster()),
                "pod {pod}: initial_members differ from pod {}'s; every initial node needs the \
                 same list",
                first.view.pod
            );
        }
        for m in &c.initial_members {
            let member = pod_of(m.id)?;
            let host = w.pod_host(member.ordinal);
            for (what, address, listen) in [
                ("peer", &m.peer, member.cluster().peer_listen.port()),
                ("client", &m.client, member.config.listener.addr.port()),
            ] {
                let (h, port) = host_port(what, address)?;
                ensure!(
                    h == host && port == u64::from(listen),
                    "pod {pod}: node {}'s {what} address {address} is not {host}:{listen}, where \
                     the headless Service puts pod {}",
                    m.id,
                    member.view.pod
                );
            }
        }
        let own = w.pod_host(node.ordinal);
        for (what, address) in [
            ("cluster.peer_advertise", c.peer_address()),
            (
                "cluster.client_advertise",
                c.client_address(&node.config.listener),
            ),
        ] {
            ensure!(
                host_port(what, &address)?.0 == own,
                "pod {pod}: {what} {address} is not the pod's name {own}"
            );
        }
    }
    Ok(())
}
/// Ingress opens exactly the client, peer and metrics ports: the peer port
/// to the brokers, the metrics port to the monitoring namespace.
pub(super) fn network_policy(w: &Workload<'_>) -> Result<()> {
    let np = w.rendered.only("NetworkPolicy")?;
    ensure!(
        selects(np.pointer("/spec/podSelector/matchLabels"), Some(w.labels)),
        "the NetworkPolicy does not select the brokers"
    );
    ensure!(
        strings_at(np, "/spec/policyTypes").contains(&"Ingress".to_owned()),
        "the NetworkPolicy does not restrict ingress"
    );
    let mut opened: BTreeMap<(u64, String), Vec<&Value>> = BTreeMap::new();
    for rule in list_at(np, "/spec/ingress") {
        let ports = list_at(rule, "/ports");
        ensure!(!ports.is_empty(), "an ingress rule opens every port");
        for p in ports {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            let (number, protocol) = w.container_port(at(p, "/port")?)?;
            ensure!(
                proto == protocol,
                "the NetworkPolicy opens {number}/{proto}; the broker listens on {number}/{protocol}"
            );
            opened
                .entry((number, protocol))
                .or_default()
                .extend(list_at(rule, "/from"));
        }
    }
    let port = |name: &str| w.container_port(&Value::from(name));
    let (client, peer, metrics) = (port("client")?, port("peer")?, port("metrics")?);
    let keys: BTreeSet<_> = opened.keys().cloned().collect();
    ensure!(
        keys == BTreeSet::from([client.clone(), peer.clone(), metrics.clone()]),
        "the NetworkPolicy opens {keys:?}; the brokers listen on {client:?}, {peer:?} and \
         {metrics:?}"
    );
    let peers = &opened[&peer];
    ensure!(
        peers.len() == 1
            && peers[0].get("namespaceSelector").is_none()
            && peers[0].get("ipBlock").is_none()
            && selects(peers[0].pointer("/podSelector/matchLabels"), Some(w.labels)),
        "the peer port admits more than the brokers: {peers:?}"
    );
    let monitoring = &opened[&metrics];
    let want = serde_json::json!({ "kubernetes.io/metadata.name": MONITORING_NAMESPACE });
    ensure!(
        monitoring.len() == 1
            && monitoring[0].get("podSelector").is_none()
            && monitoring[0].pointer("/namespaceSelector/matchLabels") == Some(&want),
        "the metrics port admits more than the {MONITORING_NAMESPACE} namespace: {monitoring:?}"
    );
    ensure!(!opened[&client].is_empty(), "the client port admits no one");
    Ok(())
}
