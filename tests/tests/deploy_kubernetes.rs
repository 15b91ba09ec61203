//! The Kubernetes manifests (`deploy/kubernetes`), rendered by the real
//! `kubectl kustomize` (no cluster is needed to render; none is used) and
//! held against the broker's configuration. For each pod of the
//! StatefulSet, the test finds the `broker.toml` its arguments name (after
//! `$(POD_NAME)` expansion, through its ConfigMap mount), loads it with the
//! broker's own loader, lays out the files the pod's mounts provide and
//! runs the broker's whole validation on them. Then:
//!
//! - the container, Service and NetworkPolicy ports are the client, peer
//!   and metrics ports the configuration listens on, with their protocols;
//! - every `initial_members` peer and client address is the name the
//!   headless Service gives that node's pod, at the pod's port, the same
//!   list on every node;
//! - the TLS files and the HSM PIN come from the node's own Secrets (no
//!   other node's certificate is visible in its container), the data and
//!   checkpoint directories from two claimed volumes;
//! - each node Certificate carries exactly the node URI of that node's
//!   `node_id` and trust domain, and the DNS names clients check;
//! - the probes ask `/healthz` and `/readyz` on the metrics port; the
//!   security context, disruption budget and grace period are as
//!   documented; the administrator's pod reaches every node with a
//!   superuser's certificate.
//!
//! Another test breaks a copy of the directory in one place at a time and
//! expects the checks to refuse each copy, so none of them passes
//! vacuously; a third adds node 4 to a copy the way docs/OPERATIONS.md
//! says (a node that joins through seeds) and expects the checks to accept
//! it. A missing kubectl fails the tests: scripts/test-all unpacks Debian's
//! kubernetes-client when there is none.

mod deploy_kubernetes_support;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use deploy_kubernetes_support::{Manifests, checks};
use serde_json::Value;

fn layout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy/kubernetes")
}

/// Renders the kustomization in `dir` and checks it with its
/// `admin-cli.json`.
fn render_and_check(dir: &Path) -> Result<()> {
    let rendered = Manifests::render(dir)?;
    let admin: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("admin-cli.json"))?)
        .context("admin-cli.json")?;
    checks::check(&rendered, &admin)
}

#[test]
fn the_manifests_agree_with_the_broker_configuration() -> Result<()> {
    render_and_check(&layout())
}

/// One way to break the layout: in `file`, replace the first `from` with
/// `to`; the checks must then fail with a message containing `expect`.
struct Breakage {
    file: &'static str,
    from: &'static str,
    to: &'static str,
    expect: &'static str,
}

const BREAKAGES: &[Breakage] = &[
    Breakage {
        file: "service-nodes.yaml",
        from: "port: 7444",
        to: "port: 7445",
        expect: "Service strongbox-nodes: port 7445/UDP leads to container port 7444",
    },
    Breakage {
        file: "service-nodes.yaml",
        from: "publishNotReadyAddresses: true",
        to: "publishNotReadyAddresses: false",
        expect: "Service strongbox-nodes must publish not-ready pods",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "automountServiceAccountToken: false",
        to: "automountServiceAccountToken: true",
        expect: "StatefulSet strongbox: a service account token is mounted",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "                - ALL\n",
        to: "                - NET_RAW\n",
        expect: "StatefulSet strongbox: capabilities are not all dropped",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "            limits:\n              cpu: \"2\"\n              memory: 2Gi\n",
        to: "",
        expect: "has no /resources/limits/cpu",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "name: strongbox-node-1-hsm",
        to: "name: strongbox-node-1-tls",
        expect: "pod strongbox-0: the PIN comes from a certificate's Secret",
    },
    Breakage {
        file: "config/strongbox-1.toml",
        from: "export_dir = \"/var/lib/strongbox-checkpoints\"",
        to: "export_dir = \"/var/lib/strongbox/checkpoints\"",
        expect: "pod strongbox-1: checkpoints on the data directory's volume (data)",
    },
    Breakage {
        file: "service-client.yaml",
        from: "targetPort: client",
        to: "targetPort: peer",
        expect: "not the client listener 7443/UDP",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "containerPort: 9644",
        to: "containerPort: 9645",
        expect: "metrics.listen = 0.0.0.0:9644",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "path: /readyz",
        to: "path: /metrics",
        expect: "readinessProbe asks /metrics, not /readyz",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "- /etc/strongbox/config/$(POD_NAME).toml",
        to: "- /etc/strongbox/config/strongbox-0.toml",
        expect: "pod strongbox-1 runs /etc/strongbox/config/strongbox-0.toml, whose \
                 cluster.node_id is 1, not 2",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "path: strongbox-1/hsm.pin",
        to: "path: strongbox-1/pin",
        expect: "keys.pkcs11.pin_file: cannot read",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "name: strongbox-node-2-tls",
        to: "name: strongbox-node-3-tls",
        expect: "pod strongbox-1: Certificate strongbox-node-3 names",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "path: strongbox-1/ca.crt",
        to: "path: strongbox-0/node-2-ca.crt",
        expect: "pod strongbox-0: the Secret strongbox-node-2-tls of Certificate \
                 strongbox-node-2 is visible under /etc/strongbox/node",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "port: metrics",
        to: "port: client",
        expect: "startupProbe asks port 7443/UDP, not metrics.listen's 9644",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "defaultMode: 288",
        to: "defaultMode: 292",
        expect: "the node key is readable by others (mode 444)",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "mountPath: /var/lib/strongbox\n",
        to: "mountPath: /var/lib/strongbox-data\n",
        expect: "broker.data_dir /var/lib/strongbox/data is on no mount",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "readOnlyRootFilesystem: true",
        to: "readOnlyRootFilesystem: false",
        expect: "StatefulSet strongbox: the root file system is writable",
    },
    Breakage {
        file: "statefulset.yaml",
        from: "terminationGracePeriodSeconds: 45",
        to: "terminationGracePeriodSeconds: 25",
        expect: "no time after listener.shutdown_grace",
    },
    Breakage {
        file: "config/strongbox-0.toml",
        from: "{ id = 3, peer = \"strongbox-2.",
        to: "{ id = 3, peer = \"strongbox-3.",
        expect: "pod strongbox-0: node 3's peer address \
                 strongbox-3.strongbox-nodes.strongbox.svc.cluster.local:7444 is not \
                 strongbox-2.strongbox-nodes.strongbox.svc.cluster.local:7444",
    },
    Breakage {
        file: "config/strongbox-1.toml",
        from: "  { id = 3,",
        to: "  # { id = 3,",
        expect: "pod strongbox-1: initial_members differ from pod strongbox-0's",
    },
    Breakage {
        file: "config/strongbox-2.toml",
        from: "superusers = [\"spiffe://strongbox.example/strongbox/admin\"]",
        to: "superusers = []",
        expect: "pod strongbox-2: the admin principal spiffe://strongbox.example/strongbox/admin \
                 is not among acl.superusers",
    },
    Breakage {
        file: "config/strongbox-2.toml",
        from: "listen = \"0.0.0.0:9644\"",
        to: "listen = \"127.0.0.1:9644\"",
        expect: "pod strongbox-2: metrics.listen = 127.0.0.1:9644 is not reachable",
    },
    Breakage {
        file: "certificates.yaml",
        from: "spiffe://strongbox.example/strongbox/node/2",
        to: "spiffe://strongbox.example/strongbox/node/5",
        expect: "node 2 needs exactly [spiffe://strongbox.example/strongbox/node/2]",
    },
    Breakage {
        file: "certificates.yaml",
        from: "- strongbox-1.strongbox-nodes.strongbox.svc.cluster.local",
        to: "- strongbox-1.strongbox-nodes.strongbox.svc",
        expect: "lacks the DNS name strongbox-1.strongbox-nodes.strongbox.svc.cluster.local",
    },
    Breakage {
        file: "networkpolicy.yaml",
        from: "kubernetes.io/metadata.name: monitoring",
        to: "kubernetes.io/metadata.name: default",
        expect: "the metrics port admits more than the monitoring namespace",
    },
    Breakage {
        file: "networkpolicy.yaml",
        from: "port: 7444",
        to: "port: 7445",
        expect: "port 7445 is none of the broker container's ports",
    },
    Breakage {
        file: "networkpolicy.yaml",
        from: "    - from:\n        - podSelector:\n",
        to: "    - from:\n        - namespaceSelector: {}\n          podSelector:\n",
        expect: "the peer port admits more than the brokers",
    },
    Breakage {
        file: "certificates.yaml",
        from: "    - client auth\n",
        to: "",
        expect: "Certificate strongbox-node-1: usage \"client auth\" missing",
    },
    Breakage {
        file: "poddisruptionbudget.yaml",
        from: "maxUnavailable: 1",
        to: "maxUnavailable: 2",
        expect: "a majority must stay up",
    },
    Breakage {
        file: "admin-profile.yaml",
        from: "\"strongbox-2.strongbox-nodes.strongbox.svc.cluster.local:7443\"",
        to: "\"strongbox.strongbox.svc.cluster.local:7443\"",
        expect: "the admin profile lists",
    },
    Breakage {
        file: "admin-cli.json",
        from: "\"secretName\": \"strongbox-admin-tls\"",
        to: "\"secretName\": \"strongbox-node-1-tls\"",
        expect: "Certificate strongbox-node-1: a client certificate only",
    },
];

/// Copies the files of `from` (one level of subdirectories) into `to`.
fn copy_layout(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_layout(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[test]
fn each_check_refuses_a_broken_copy() -> Result<()> {
    let mut missed = Vec::new();
    for b in BREAKAGES {
        let tmp = tempfile::tempdir()?;
        copy_layout(&layout(), tmp.path())?;
        let path = tmp.path().join(b.file);
        let text = std::fs::read_to_string(&path)?;
        ensure!(
            text.contains(b.from),
            "{} no longer contains {:?}: update this breakage",
            b.file,
            b.from
        );
        std::fs::write(&path, text.replacen(b.from, b.to, 1))?;
        match render_and_check(tmp.path()) {
            Ok(()) => missed.push(format!("{}: {:?} -> {:?} passed", b.file, b.from, b.to)),
            Err(e) => {
                let message = format!("{e:#}");
                if !message.contains(b.expect) {
                    missed.push(format!(
                        "{}: {:?} -> {:?} failed for another reason: {message}",
                        b.file, b.from, b.to
                    ));
                }
            }
        }
    }
    if !missed.is_empty() {
        bail!("{}", missed.join("\n"));
    }
    Ok(())
}

/// In `text`, `from` replaced by `to` once; an error when `from` is not
/// there.
fn edit(text: &str, from: &str, to: &str) -> Result<String> {
    ensure!(text.contains(from), "{from:?} is no longer in the layout");
    Ok(text.replacen(from, to, 1))
}

/// The steps of docs/OPERATIONS.md ("Growing and shrinking") that add node
/// 4 as pod strongbox-3, applied to a copy of `dir`.
fn add_node_4(dir: &Path) -> Result<()> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let write = |f: &str, text: String| std::fs::write(dir.join(f), text);

    // 1. Its Certificate: a copy of node 3's.
    let certs = read("certificates.yaml")?;
    let start = certs
        .find("---\n# Node 3")
        .context("node 3's Certificate")?;
    let end = certs
        .find("---\n# The administrator")
        .context("the admin's")?;
    let node4 = certs[start..end]
        .replace("Node 3", "Node 4")
        .replace("strongbox-2.", "strongbox-3.")
        .replace("node-3", "node-4")
        .replace("node/3", "node/4");
    write(
        "certificates.yaml",
        format!("{}{node4}{}", &certs[..end], &certs[end..]),
    )?;

    // 2. Its HSM token and PIN Secret are outside the layout.

    // 3. Its configuration: node 3's with its own id, names and token, and
    // the running nodes' peer addresses as seeds.
    let node3 = read("config/strongbox-2.toml")?;
    let members = node3
        .find("initial_members = [")
        .context("initial_members")?;
    let config = node3[..members]
        .replace("Node 3", "Node 4")
        .replace("pod strongbox-2", "pod strongbox-3")
        .replace("node_id = 3", "node_id = 4")
        .replace("strongbox-2.", "strongbox-3.")
        .replace("strongbox-node-3", "strongbox-node-4");
    let seeds = (0..3)
        .map(|o| format!("  \"strongbox-{o}.strongbox-nodes.strongbox.svc.cluster.local:7444\",\n"))
        .collect::<String>();
    write(
        "config/strongbox-3.toml",
        format!("{config}seeds = [\n{seeds}]\n"),
    )?;
    let kustomization = read("kustomization.yaml")?;
    write(
        "kustomization.yaml",
        edit(
            &kustomization,
            "      - config/strongbox-2.toml\n",
            "      - config/strongbox-2.toml\n      - config/strongbox-3.toml\n",
        )?,
    )?;

    // 4. Its Secrets projected for pod strongbox-3, four replicas, and its
    // client address in the admin profile.
    let sts = read("statefulset.yaml")?;
    let sources: String = [
        "              - secret:",
        "                  name: strongbox-node-4-tls",
        "                  items:",
        "                    - key: tls.crt",
        "                      path: strongbox-3/tls.crt",
        "                    - key: tls.key",
        "                      path: strongbox-3/tls.key",
        "                    - key: ca.crt",
        "                      path: strongbox-3/ca.crt",
        "              - secret:",
        "                  name: strongbox-node-4-hsm",
        "                  items:",
        "                    - key: pin",
        "                      path: strongbox-3/hsm.pin",
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect();
    let sts = edit(
        &sts,
        "        - name: tmp\n          emptyDir:",
        &format!("{sources}        - name: tmp\n          emptyDir:"),
    )?;
    write(
        "statefulset.yaml",
        edit(&sts, "replicas: 3", "replicas: 4")?,
    )?;
    let profile = read("admin-profile.yaml")?;
    let last = "      \"strongbox-2.strongbox-nodes.strongbox.svc.cluster.local:7443\",\n";
    write(
        "admin-profile.yaml",
        edit(
            &profile,
            last,
            &format!(
                "{last}      \"strongbox-3.strongbox-nodes.strongbox.svc.cluster.local:7443\",\n"
            ),
        )?,
    )?;
    Ok(())
}

#[test]
fn a_node_added_as_documented_joins_through_seeds() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    copy_layout(&layout(), tmp.path())?;
    add_node_4(tmp.path())?;
    render_and_check(tmp.path()).context("four nodes, as OPERATIONS.md adds them")?;

    // A seed that is no running pod's peer address is refused.
    let config = tmp.path().join("config/strongbox-3.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        edit(
            &text,
            "\"strongbox-0.strongbox-nodes",
            "\"strongbox-9.strongbox-nodes",
        )?,
    )?;
    let err = render_and_check(tmp.path()).expect_err("a seed no pod answers on");
    ensure!(
        format!("{err:#}").contains("pod strongbox-3: the seed strongbox-9."),
        "{err:#}"
    );
    Ok(())
}
