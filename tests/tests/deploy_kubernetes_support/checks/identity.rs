//! Identities: each node's TLS files, PIN and Certificate against its
//! configuration, and the administrator's pod, profile and certificate.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use strongbox_broker::config::KeyProviderKind;
use strongbox_client::{ClientConfig, PemSource};

use super::network::client_service;
use super::{Node, Workload, security};
use crate::deploy_kubernetes_support::pod::{FileSource, MountKind, PodView};
use crate::deploy_kubernetes_support::{CLUSTER_DOMAIN, at, describe, list_at, str_at, strings_at};

/// The node's TLS files are its own certificate's; the PIN comes from a
/// Secret no one else reads; no other node's certificate is mounted.
pub(super) fn certificates(w: &Workload<'_>, node: &Node) -> Result<()> {
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
/// The administrator's pod (`admin-cli.json` over `kubectl run`): its
/// profile reaches every node, its credentials are the admin certificate's,
/// and that certificate's principal is a superuser on every node.
pub(super) fn admin(w: &Workload<'_>, nodes: &[Node], over: &Value) -> Result<()> {
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
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| n.cluster().client_address(&n.config.listener))
        .collect();
    let clients: BTreeSet<&str> = addresses.iter().map(String::as_str).collect();
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
