//! The rendered manifests held against the broker's configuration: each
//! pod's `broker.toml`, found the way the pod finds it and read by the
//! broker's own loader, must agree with the ports, names, mounts,
//! certificates and policies around it.

mod identity;
mod network;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use strongbox_broker::config::{BrokerConfig, ClusterConfig};

use super::pod::{FileSource, MountKind, PodView, under};
use super::{CLUSTER_DOMAIN, Manifests, at, list_at, selects, str_at, strings_at, u64_at};

/// Time a pod needs after `listener.shutdown_grace` to seal and sync its
/// partitions before the kubelet's SIGKILL.
const SEAL_TIME: Duration = Duration::from_secs(10);

/// The StatefulSet and what surrounds it.
struct Workload<'a> {
    rendered: &'a Manifests,
    namespace: String,
    name: String,
    replicas: u64,
    labels: &'a Value,
    spec: &'a Value,
    container: &'a Value,
    headless: String,
}

/// One pod: its container's view and the configuration it runs with.
struct Node {
    ordinal: u64,
    view: PodView,
    config: BrokerConfig,
}

impl Node {
    fn cluster(&self) -> &ClusterConfig {
        self.config
            .cluster
            .as_ref()
            .expect("checked when the node was read")
    }
}

/// Runs every check; `admin_override` is `admin-cli.json`.
pub(crate) fn check(rendered: &Manifests, admin_override: &Value) -> Result<()> {
    let w = workload(rendered)?;
    let mut nodes = Vec::new();
    for ordinal in 0..w.replicas {
        let node = node(&w, ordinal)?;
        validate_in_pod(&w, &node)?;
        network::ports(&w, &node)?;
        identity::certificates(&w, &node)?;
        storage(&node)?;
        probes(&w, &node)?;
        nodes.push(node);
    }
    network::addresses(&w, &nodes)?;
    security(w.spec, w.container, "StatefulSet strongbox")?;
    resources(w.container)?;
    grace(&w, &nodes)?;
    disruption_budget(&w)?;
    network::network_policy(&w)?;
    identity::admin(&w, &nodes, admin_override)?;
    Ok(())
}

fn workload(rendered: &Manifests) -> Result<Workload<'_>> {
    let sts = rendered.only("StatefulSet")?;
    let labels = at(sts, "/spec/template/metadata/labels")?;
    ensure!(
        selects(sts.pointer("/spec/selector/matchLabels"), Some(labels)),
        "the StatefulSet's selector does not select its pods"
    );
    let spec = at(sts, "/spec/template/spec")?;
    let containers = list_at(spec, "/containers");
    ensure!(containers.len() == 1, "one container per pod: the broker");
    let headless = str_at(sts, "/spec/serviceName")?.to_owned();
    let service = rendered.named("Service", &headless)?;
    ensure!(
        service.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None"),
        "Service {headless} (the StatefulSet's serviceName) is not headless"
    );
    ensure!(
        service.pointer("/spec/publishNotReadyAddresses") == Some(&Value::Bool(true)),
        "Service {headless} must publish not-ready pods: peers find a starting node by its name"
    );
    ensure!(
        selects(service.pointer("/spec/selector"), Some(labels)),
        "Service {headless} does not select the StatefulSet's pods"
    );
    Ok(Workload {
        rendered,
        namespace: str_at(sts, "/metadata/namespace")?.to_owned(),
        name: str_at(sts, "/metadata/name")?.to_owned(),
        replicas: u64_at(sts, "/spec/replicas")?,
        labels,
        spec,
        container: &containers[0],
        headless,
    })
}

impl Workload<'_> {
    /// The DNS name of pod `ordinal` under the headless Service.
    fn pod_host(&self, ordinal: u64) -> String {
        format!(
            "{}-{ordinal}.{}.{}.svc.{CLUSTER_DOMAIN}",
            self.name, self.headless, self.namespace
        )
    }

    /// The container port a Service or policy port (a number or a name)
    /// designates, with its protocol.
    fn container_port(&self, port: &Value) -> Result<(u64, String)> {
        for p in list_at(self.container, "/ports") {
            let number = u64_at(p, "/containerPort")?;
            let hit = match port {
                Value::String(name) => p.get("name").and_then(Value::as_str) == Some(name),
                other => other.as_u64() == Some(number),
            };
            if hit {
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                return Ok((number, proto.to_owned()));
            }
        }
        bail!("port {port} is none of the broker container's ports")
    }

    /// The certificate whose Secret is `secret`, if one is rendered.
    fn certificate_of(&self, secret: &str) -> Option<&Value> {
        self.rendered
            .of_kind("Certificate")
            .into_iter()
            .find(|c| c.pointer("/spec/secretName").and_then(Value::as_str) == Some(secret))
    }
}

/// Pod `ordinal`'s container and the configuration its arguments name.
fn node(w: &Workload<'_>, ordinal: u64) -> Result<Node> {
    let pod = format!("{}-{ordinal}", w.name);
    let claims = list_at(
        w.rendered.only("StatefulSet")?,
        "/spec/volumeClaimTemplates",
    )
    .iter()
    .map(|c| str_at(c, "/metadata/name").map(str::to_owned))
    .collect::<Result<Vec<_>>>()?;
    let view = PodView::new(w.rendered, w.spec, w.container, &pod, &w.namespace, &claims)?;
    ensure!(
        view.args.first().map(String::as_str) == Some("serve"),
        "pod {pod} does not run `serve`: {:?}",
        view.args
    );
    let config_path = view
        .args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .with_context(|| format!("pod {pod}: no --config in {:?}", view.args))?
        .clone();
    let FileSource::ConfigMap { name, key } = view.file(Path::new(&config_path))? else {
        bail!("pod {pod}: its configuration {config_path} is not from a ConfigMap");
    };
    let text = str_at(
        w.rendered.named("ConfigMap", name)?,
        &format!("/data/{}", key.replace('~', "~0").replace('/', "~1")),
    )?;
    let dir = Path::new(&config_path).parent().context("config dir")?;
    let config = BrokerConfig::from_toml_str(text, dir)
        .with_context(|| format!("pod {pod}: {config_path} does not load"))?;
    let node_id = config
        .cluster
        .as_ref()
        .with_context(|| format!("pod {pod}: {config_path} has no [cluster]"))?
        .node_id;
    ensure!(
        node_id == ordinal + 1,
        "pod {pod} runs {config_path}, whose cluster.node_id is {node_id}, not {}",
        ordinal + 1
    );
    Ok(Node {
        ordinal,
        view,
        config,
    })
}

/// The broker's whole validation, on a copy of the pod's file system as
/// its mounts lay it out (the PKCS#11 module is the image's).
fn validate_in_pod(w: &Workload<'_>, node: &Node) -> Result<()> {
    let root = tempfile::tempdir()?;
    node.view.materialize(root.path(), w.rendered)?;
    let mut config = node.config.clone();
    let reroot = |p: &mut std::path::PathBuf| *p = under(root.path(), p);
    reroot(&mut config.broker.data_dir);
    reroot(&mut config.tls.cert);
    reroot(&mut config.tls.key);
    reroot(&mut config.tls.client_ca);
    config.tls.crls.iter_mut().for_each(reroot);
    reroot(&mut config.keys.file.dir);
    if let Some(dir) = config.checkpoints.export_dir.as_mut() {
        reroot(dir);
    }
    if let Some(p) = config.keys.pkcs11.as_mut() {
        if node.view.mount_of(&p.module).is_none() {
            let module = under(root.path(), &p.module);
            std::fs::create_dir_all(module.parent().context("module dir")?)?;
            std::fs::write(&module, "(the HSM vendor's module, in the image)")?;
        }
        reroot(&mut p.module);
        if let Some(pin) = p.pin_file.as_mut() {
            reroot(pin);
        }
    }
    config.validate().with_context(|| {
        format!(
            "pod {}: its configuration does not validate with the files its mounts provide",
            node.view.pod
        )
    })?;
    Ok(())
}
/// The data directory and the checkpoint directory are on two claimed
/// volumes (the root file system is read-only).
fn storage(node: &Node) -> Result<()> {
    let pod = &node.view.pod;
    let claim = |what: &str, path: &Path| -> Result<String> {
        let (mount, rest) = node
            .view
            .mount_of(path)
            .with_context(|| format!("pod {pod}: {what} {} is on no mount", path.display()))?;
        let MountKind::Claim(name) = &mount.kind else {
            bail!(
                "pod {pod}: {what} {} is not on a claimed volume",
                path.display()
            );
        };
        ensure!(
            !mount.read_only,
            "pod {pod}: {what} is on a read-only mount"
        );
        ensure!(
            rest.components().count() > 0 || what != "broker.data_dir",
            "pod {pod}: broker.data_dir is the volume's root; use a directory inside it"
        );
        Ok(name.clone())
    };
    let data = claim("broker.data_dir", &node.config.broker.data_dir)?;
    let export = node
        .config
        .checkpoints
        .export_dir
        .as_ref()
        .with_context(|| format!("pod {pod}: no checkpoints.export_dir"))?;
    let checkpoints = claim("checkpoints.export_dir", export)?;
    ensure!(
        data != checkpoints,
        "pod {pod}: checkpoints on the data directory's volume ({data})"
    );
    Ok(())
}

fn probes(w: &Workload<'_>, node: &Node) -> Result<()> {
    let metrics = u64::from(node.config.metrics.listen.port());
    for (probe, path, required) in [
        ("livenessProbe", "/healthz", true),
        ("readinessProbe", "/readyz", true),
        ("startupProbe", "/healthz", false),
    ] {
        let Some(p) = w.container.get(probe) else {
            ensure!(!required, "no {probe}");
            continue;
        };
        ensure!(
            str_at(p, "/httpGet/path")? == path,
            "{probe} asks {}, not {path}",
            str_at(p, "/httpGet/path")?
        );
        let (number, protocol) = w.container_port(at(p, "/httpGet/port")?)?;
        ensure!(
            number == metrics && protocol == "TCP",
            "{probe} asks port {number}/{protocol}, not metrics.listen's {metrics}"
        );
    }
    Ok(())
}

/// Non-root, no capabilities, a read-only root, the default seccomp
/// profile, no service account token.
fn security(spec: &Value, container: &Value, what: &str) -> Result<()> {
    let pod_sc = spec.get("securityContext");
    let sc = container.get("securityContext");
    let either = |field: &str| {
        sc.and_then(|s| s.pointer(field))
            .or_else(|| pod_sc.and_then(|s| s.pointer(field)))
    };
    ensure!(
        either("/runAsNonRoot") == Some(&Value::Bool(true)),
        "{what}: runAsNonRoot is not set"
    );
    ensure!(
        either("/runAsUser")
            .and_then(Value::as_u64)
            .is_some_and(|u| u != 0),
        "{what}: no non-zero runAsUser"
    );
    ensure!(
        either("/seccompProfile/type").and_then(Value::as_str) == Some("RuntimeDefault"),
        "{what}: seccomp profile is not RuntimeDefault"
    );
    let sc = sc.with_context(|| format!("{what}: the container has no securityContext"))?;
    ensure!(
        sc.get("readOnlyRootFilesystem") == Some(&Value::Bool(true)),
        "{what}: the root file system is writable"
    );
    ensure!(
        sc.get("allowPrivilegeEscalation") == Some(&Value::Bool(false)),
        "{what}: privilege escalation is allowed"
    );
    ensure!(
        sc.get("privileged") != Some(&Value::Bool(true)),
        "{what}: privileged"
    );
    ensure!(
        strings_at(sc, "/capabilities/drop") == ["ALL"]
            && list_at(sc, "/capabilities/add").is_empty(),
        "{what}: capabilities are not all dropped"
    );
    ensure!(
        spec.get("automountServiceAccountToken") == Some(&Value::Bool(false)),
        "{what}: a service account token is mounted"
    );
    Ok(())
}

fn resources(container: &Value) -> Result<()> {
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            at(container, &format!("/resources/{kind}/{resource}"))?;
        }
    }
    Ok(())
}

/// The kubelet's SIGKILL comes after the broker's graceful stop.
fn grace(w: &Workload<'_>, nodes: &[Node]) -> Result<()> {
    let period = Duration::from_secs(u64_at(w.spec, "/terminationGracePeriodSeconds")?);
    for node in nodes {
        let shutdown = node.config.listener.shutdown_grace.0;
        ensure!(
            period >= shutdown + SEAL_TIME,
            "terminationGracePeriodSeconds ({period:?}) leaves pod {} no time after \
             listener.shutdown_grace ({shutdown:?}) to seal its partitions",
            node.view.pod
        );
    }
    Ok(())
}

/// At most one broker down by choice, and a majority stays up.
fn disruption_budget(w: &Workload<'_>) -> Result<()> {
    let pdb = w.rendered.only("PodDisruptionBudget")?;
    ensure!(
        selects(pdb.pointer("/spec/selector/matchLabels"), Some(w.labels)),
        "the PodDisruptionBudget does not select the brokers"
    );
    let unavailable = u64_at(pdb, "/spec/maxUnavailable")?;
    ensure!(
        unavailable == 1 && w.replicas - unavailable > w.replicas / 2,
        "maxUnavailable {unavailable} of {} brokers: a majority must stay up",
        w.replicas
    );
    Ok(())
}
