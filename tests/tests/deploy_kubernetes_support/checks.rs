//! The rendered manifests held against the broker's configuration: each
//! pod's `broker.toml`, found the way the pod finds it and read by the
//! broker's own loader, must agree with the ports, names, mounts,
//! certificates and policies around it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use strongbox_broker::config::{BrokerConfig, ClusterConfig, KeyProviderKind};
use strongbox_client::{ClientConfig, PemSource};

use super::pod::{FileSource, MountKind, PodView, under};
use super::{
    CLUSTER_DOMAIN, Manifests, at, describe, list_at, selects, str_at, strings_at, u64_at,
};

/// Time a pod needs after `listener.shutdown_grace` to seal and sync its
/// partitions before the kubelet's SIGKILL.
const SEAL_TIME: Duration = Duration::from_secs(10);

/// The namespace Prometheus runs in, the only one the metrics port admits.
const MONITORING_NAMESPACE: &str = "monitoring";

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
        ports(&w, &node)?;
        certificates(&w, &node)?;
        storage(&node)?;
        probes(&w, &node)?;
        nodes.push(node);
    }
    addresses(&w, &nodes)?;
    security(w.spec, w.container, "StatefulSet strongbox")?;
    resources(w.container)?;
    grace(&w, &nodes)?;
    disruption_budget(&w)?;
    network_policy(&w)?;
    admin(&w, &nodes, admin_override)?;
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

fn ports(w: &Workload<'_>, node: &Node) -> Result<()> {
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
fn client_service<'a>(w: &Workload<'a>) -> Result<&'a Value> {
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

/// Every node lists the same members, one per pod, at the names the
/// headless Service gives the pods and the ports the pods listen on.
fn addresses(w: &Workload<'_>, nodes: &[Node]) -> Result<()> {
    // The order of the list does not matter to the broker.
    let members = |c: &ClusterConfig| {
        let mut list = c.initial_members.clone();
        list.sort_by_key(|m| m.id);
        list
    };
    let first = members(nodes.first().context("no pods")?.cluster());
    let ids: Vec<u64> = first.iter().map(|m| m.id).collect();
    let want: Vec<u64> = (1..=w.replicas).collect();
    ensure!(
        ids == want,
        "initial_members are nodes {ids:?}; the StatefulSet runs nodes {want:?}"
    );
    for node in nodes {
        let c = node.cluster();
        let pod = &node.view.pod;
        ensure!(
            members(c) == first,
            "pod {pod}: initial_members differ from pod {}'s; every initial node needs the same \
             list",
            nodes[0].view.pod
        );
        ensure!(
            c.trust_domain == nodes[0].cluster().trust_domain,
            "pod {pod}: another trust domain"
        );
        for m in &c.initial_members {
            let host = w.pod_host(m.id - 1);
            for (what, address, listen) in [
                ("peer", &m.peer, c.peer_listen.port()),
                ("client", &m.client, node.config.listener.addr.port()),
            ] {
                let (h, port) = host_port(what, address)?;
                ensure!(
                    h == host && port == u64::from(listen),
                    "pod {pod}: node {}'s {what} address {address} is not {host}:{listen}, where \
                     the headless Service puts pod {}-{}",
                    m.id,
                    w.name,
                    m.id - 1
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

/// The node's TLS files are its own certificate's; the PIN comes from a
/// Secret no one else reads; no other node's certificate is mounted.
fn certificates(w: &Workload<'_>, node: &Node) -> Result<()> {
    let cfg = &node.config;
    let pod = &node.view.pod;
    let secret = |path: &Path, key: &str| -> Result<(String, u32)> {
        match node.view.file(path)? {
            FileSource::Secret { name, key: k, mode } if k == key => Ok((name.clone(), *mode)),
            other => bail!(
                "pod {pod}: {} comes from {other:?}, not a Secret's {key}",
                path.display()
            ),
        }
    };
    let (cert_secret, _) = secret(&cfg.tls.cert, "tls.crt")?;
    let (key_secret, key_mode) = secret(&cfg.tls.key, "tls.key")?;
    let (ca_secret, _) = secret(&cfg.tls.client_ca, "ca.crt")?;
    ensure!(
        cert_secret == key_secret && cert_secret == ca_secret,
        "pod {pod}: certificate, key and CA from different Secrets ({cert_secret}, \
         {key_secret}, {ca_secret})"
    );
    ensure!(
        key_mode & 0o007 == 0,
        "pod {pod}: the node key is readable by others (mode {key_mode:o})"
    );
    let cert = w
        .certificate_of(&cert_secret)
        .with_context(|| format!("pod {pod}: no Certificate writes the Secret {cert_secret}"))?;
    let uri = node.cluster().node_uri();
    let uris = strings_at(cert, "/spec/uris");
    ensure!(
        uris == [uri.clone()],
        "pod {pod}: {} names {uris:?}; node {} needs exactly [{uri}]",
        describe(cert),
        node.cluster().node_id
    );
    let dns = strings_at(cert, "/spec/dnsNames");
    let client_host = w.pod_host(node.ordinal);
    let service = client_service(w)?;
    let service_host = format!(
        "{}.{}.svc.{CLUSTER_DOMAIN}",
        str_at(service, "/metadata/name")?,
        w.namespace
    );
    for host in [&client_host, &service_host] {
        ensure!(
            dns.contains(host),
            "pod {pod}: {} lacks the DNS name {host}, which clients check",
            describe(cert)
        );
    }
    let usages = strings_at(cert, "/spec/usages");
    for usage in ["server auth", "client auth"] {
        ensure!(
            usages.iter().any(|u| u == usage),
            "{}: usage {usage:?} missing (a node serves and dials)",
            describe(cert)
        );
    }
    issuer(w, cert)?;

    // The PIN.
    ensure!(
        cfg.keys.provider == KeyProviderKind::Pkcs11,
        "pod {pod}: keys.provider is not pkcs11"
    );
    let p = cfg.keys.pkcs11.as_ref().context("no [keys.pkcs11]")?;
    ensure!(p.pin_env.is_none(), "pod {pod}: the PIN comes from a file");
    let pin = p.pin_file.as_ref().context("no keys.pkcs11.pin_file")?;
    let (pin_secret, pin_mode) = match node.view.file(pin)? {
        FileSource::Secret { name, mode, .. } => (name.clone(), *mode),
        other => bail!("pod {pod}: the PIN file comes from {other:?}, not a Secret"),
    };
    ensure!(
        w.certificate_of(&pin_secret).is_none(),
        "pod {pod}: the PIN comes from a certificate's Secret"
    );
    ensure!(
        pin_mode & 0o007 == 0,
        "pod {pod}: the PIN file is readable by others (mode {pin_mode:o}); the broker refuses it"
    );

    // No other node's certificate in this container.
    for m in &node.view.mounts {
        let MountKind::Files(files) = &m.kind else {
            continue;
        };
        for source in files.values() {
            if let FileSource::Secret { name, .. } = source
                && let Some(other) = w.certificate_of(name)
                && strings_at(other, "/spec/uris") != [uri.clone()]
            {
                bail!(
                    "pod {pod}: the Secret {name} of {} is visible under {}",
                    describe(other),
                    m.path.display()
                );
            }
        }
    }
    Ok(())
}

/// A cert-manager CA issuer of the rendered set signs `cert`.
fn issuer(w: &Workload<'_>, cert: &Value) -> Result<()> {
    let kind = cert
        .pointer("/spec/issuerRef/kind")
        .and_then(Value::as_str)
        .unwrap_or("Issuer");
    ensure!(kind == "Issuer", "{}: issued by a {kind}", describe(cert));
    let issuer = w
        .rendered
        .named("Issuer", str_at(cert, "/spec/issuerRef/name")?)?;
    ensure!(
        !str_at(issuer, "/spec/ca/secretName")?.is_empty(),
        "{}: not a CA issuer",
        describe(issuer)
    );
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

/// Ingress opens exactly the client, peer and metrics ports: the peer port
/// to the brokers, the metrics port to the monitoring namespace.
fn network_policy(w: &Workload<'_>) -> Result<()> {
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

/// The administrator's pod (`admin-cli.json` over `kubectl run`): its
/// profile reaches every node, its credentials are the admin certificate's,
/// and that certificate's principal is a superuser on every node.
fn admin(w: &Workload<'_>, nodes: &[Node], over: &Value) -> Result<()> {
    let spec = at(over, "/spec")?;
    let containers = list_at(spec, "/containers");
    ensure!(containers.len() == 1, "admin-cli.json: one container");
    let container = &containers[0];
    let name = str_at(container, "/name")?;
    security(spec, container, "admin-cli.json")?;
    let view = PodView::new(w.rendered, spec, container, name, &w.namespace, &[])?;
    let profile_path = view
        .env
        .get("STRONGBOX_PROFILE")
        .context("admin-cli.json sets no STRONGBOX_PROFILE")?;
    let FileSource::ConfigMap { name: cm, key } = view.file(Path::new(profile_path))? else {
        bail!("the admin profile is not from a ConfigMap");
    };
    let text = str_at(w.rendered.named("ConfigMap", cm)?, &format!("/data/{key}"))?;
    let profile = ClientConfig::from_profile_str(text, Path::new(profile_path))?;
    let brokers: BTreeSet<&str> = profile.brokers().into_iter().collect();
    let clients: BTreeSet<&str> = nodes[0]
        .cluster()
        .initial_members
        .iter()
        .map(|m| m.client.as_str())
        .collect();
    ensure!(
        brokers == clients,
        "the admin profile lists {brokers:?}; the nodes' client addresses are {clients:?}"
    );
    let mut secrets = BTreeSet::new();
    for (field, source, key) in [
        ("ca", &profile.ca, "ca.crt"),
        ("cert", &profile.cert, "tls.crt"),
        ("key", &profile.key, "tls.key"),
    ] {
        let PemSource::File(path) = source else {
            bail!("the admin profile's {field} is not a file");
        };
        match view.file(path)? {
            FileSource::Secret { name, key: k, mode } if k == key => {
                ensure!(
                    mode & 0o007 == 0,
                    "admin {field} readable by others (mode {mode:o})"
                );
                secrets.insert(name.clone());
            }
            other => bail!("the admin profile's {field} comes from {other:?}, not {key}"),
        }
    }
    ensure!(secrets.len() == 1, "admin files from several Secrets");
    let secret = secrets.first().context("admin Secret")?;
    let cert = w
        .certificate_of(secret)
        .with_context(|| format!("no Certificate writes the admin Secret {secret}"))?;
    issuer(w, cert)?;
    let uris = strings_at(cert, "/spec/uris");
    ensure!(uris.len() == 1, "{}: one URI SAN", describe(cert));
    let principal = &uris[0];
    let usages = strings_at(cert, "/spec/usages");
    ensure!(
        usages.contains(&"client auth".to_owned()) && !usages.contains(&"server auth".to_owned()),
        "{}: a client certificate only",
        describe(cert)
    );
    for node in nodes {
        let node_prefix = format!("spiffe://{}/strongbox/node/", node.cluster().trust_domain);
        ensure!(
            !principal.starts_with(&node_prefix),
            "the admin principal {principal} is a node identity"
        );
        ensure!(
            node.config.acl.superusers.contains(principal),
            "pod {}: the admin principal {principal} is not among acl.superusers",
            node.view.pod
        );
    }
    Ok(())
}
