//! What one container of one pod sees, worked out from a pod template the
//! way the kubelet would: its environment and arguments after `$(VAR)`
//! expansion, and its mounts with the files each puts where (ConfigMap and
//! Secret keys, projected items, `subPath` and `subPathExpr`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{Manifests, at, list_at, str_at};

/// The keys of a Secret written by cert-manager for a Certificate.
const CERT_MANAGER_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

/// Kubernetes' default mode of ConfigMap and Secret files (0644).
const DEFAULT_MODE: u32 = 0o644;

/// Where a mounted file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileSource {
    /// A key of a ConfigMap (its rendered name).
    ConfigMap { name: String, key: String },
    /// A key of a Secret, with the file's mode.
    Secret {
        name: String,
        key: String,
        mode: u32,
    },
}

/// What a mount is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MountKind {
    /// Files from ConfigMaps and Secrets, by their path under the mount.
    Files(BTreeMap<PathBuf, FileSource>),
    /// A volume of the StatefulSet's `volumeClaimTemplates`, by name.
    Claim(String),
    /// An `emptyDir`.
    EmptyDir,
}

/// One `volumeMount` of the container.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    pub(crate) path: PathBuf,
    pub(crate) volume: String,
    pub(crate) read_only: bool,
    pub(crate) kind: MountKind,
}

/// The container of one pod.
#[derive(Debug)]
pub(crate) struct PodView {
    pub(crate) pod: String,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) args: Vec<String>,
    pub(crate) mounts: Vec<Mount>,
}

/// Expands `$(NAME)` references to defined variables, as Kubernetes does in
/// `args`, `command`, `env` values and `subPathExpr`; `$$` is a literal
/// `$`, and an undefined reference stays as written.
pub(crate) fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|s| s.split_once(')'))
            .filter(|(name, _)| env.contains_key(*name))
        {
            out.push_str(&env[name]);
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

impl PodView {
    /// The container `container` of pod `pod` (in namespace `namespace`)
    /// made from the pod spec `spec`; `claims` are the names of the
    /// StatefulSet's volume claim templates. ConfigMaps without `items` are
    /// looked up in `rendered`.
    pub(crate) fn new(
        rendered: &Manifests,
        spec: &Value,
        container: &Value,
        pod: &str,
        namespace: &str,
        claims: &[String],
    ) -> Result<Self> {
        let mut env = BTreeMap::new();
        for var in list_at(container, "/env") {
            let name = str_at(var, "/name")?.to_owned();
            if let Some(value) = var.get("value").and_then(Value::as_str) {
                let value = expand(value, &env);
                env.insert(name, value);
            } else if let Some(field) = var
                .pointer("/valueFrom/fieldRef/fieldPath")
                .and_then(Value::as_str)
            {
                match field {
                    "metadata.name" => env.insert(name, pod.to_owned()),
                    "metadata.namespace" => env.insert(name, namespace.to_owned()),
                    _ => None,
                };
            }
        }
        let args = list_at(container, "/args")
            .iter()
            .map(|a| a.as_str().map(|a| expand(a, &env)))
            .collect::<Option<Vec<_>>>()
            .context("an argument is not a string")?;

        let mut mounts = Vec::new();
        for m in list_at(container, "/volumeMounts") {
            let volume = str_at(m, "/name")?.to_owned();
            let sub = match (
                m.get("subPath").and_then(Value::as_str),
                m.get("subPathExpr").and_then(Value::as_str),
            ) {
                (Some(_), Some(_)) => bail!("mount {volume} has subPath and subPathExpr"),
                (Some(s), None) => Some(s.to_owned()),
                (None, Some(e)) => Some(expand(e, &env)),
                (None, None) => None,
            };
            let kind = match list_at(spec, "/volumes")
                .iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(volume.as_str()))
            {
                Some(v) => volume_kind(rendered, v, sub.as_deref())?,
                None if claims.contains(&volume) => MountKind::Claim(volume.clone()),
                None => bail!("pod {pod} mounts {volume}, which is no volume of it"),
            };
            mounts.push(Mount {
                path: PathBuf::from(str_at(m, "/mountPath")?),
                volume,
                read_only: m.get("readOnly").and_then(Value::as_bool) == Some(true),
                kind,
            });
        }
        Ok(Self {
            pod: pod.to_owned(),
            env,
            args,
            mounts,
        })
    }

    /// The mount `path` is under (the deepest one), and the path below it.
    pub(crate) fn mount_of(&self, path: &Path) -> Option<(&Mount, PathBuf)> {
        self.mounts
            .iter()
            .filter_map(|m| {
                path.strip_prefix(&m.path)
                    .ok()
                    .map(|rest| (m, rest.to_path_buf()))
            })
            .max_by_key(|(m, _)| m.path.components().count())
    }

    /// Where the file at `path` comes from; an error when no mount puts a
    /// file there.
    pub(crate) fn file(&self, path: &Path) -> Result<&FileSource> {
        let (mount, rest) = self.mount_of(path).with_context(|| {
            format!(
                "pod {}: {} is on no mount (the image's read-only file system)",
                self.pod,
                path.display()
            )
        })?;
        match &mount.kind {
            MountKind::Files(files) => files.get(&rest).with_context(|| {
                format!(
                    "pod {}: {} is not among the files mount {} ({}) puts there: {:?}",
                    self.pod,
                    path.display(),
                    mount.volume,
                    mount.path.display(),
                    files.keys().collect::<Vec<_>>()
                )
            }),
            _ => bail!(
                "pod {}: {} is on the volume {}, which holds no files of the manifests",
                self.pod,
                path.display(),
                mount.volume
            ),
        }
    }

    /// Writes the container's view of its mounts under `root`: each file
    /// (a ConfigMap's text from `rendered`, a placeholder for a Secret's
    /// value, with its mode) and each directory volume.
    pub(crate) fn materialize(&self, root: &Path, rendered: &Manifests) -> Result<()> {
        for m in &self.mounts {
            let dir = under(root, &m.path);
            std::fs::create_dir_all(&dir)?;
            let MountKind::Files(files) = &m.kind else {
                continue;
            };
            for (rel, source) in files {
                let path = dir.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let (text, mode) = match source {
                    FileSource::ConfigMap { name, key } => (
                        str_at(
                            rendered.named("ConfigMap", name)?,
                            &format!("/data/{}", key.replace('~', "~0").replace('/', "~1")),
                        )?
                        .to_owned(),
                        DEFAULT_MODE,
                    ),
                    FileSource::Secret { name, key, mode } => {
                        (format!("(the value of Secret {name}, key {key})\n"), *mode)
                    }
                };
                std::fs::write(&path, text)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
        }
        Ok(())
    }
}

/// `path` (absolute, as in the container) under `root`.
pub(crate) fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The files a volume puts under its mount, keeping those under `sub` (and
/// relative to it) when the mount has a subPath.
fn volume_kind(rendered: &Manifests, volume: &Value, sub: Option<&str>) -> Result<MountKind> {
    let name = str_at(volume, "/name")?;
    let mut files = BTreeMap::new();
    if volume.get("emptyDir").is_some() {
        return Ok(MountKind::EmptyDir);
    } else if let Some(claim) = volume.pointer("/persistentVolumeClaim/claimName") {
        return Ok(MountKind::Claim(
            claim.as_str().context("claimName")?.to_owned(),
        ));
    } else if let Some(cm) = volume.get("configMap") {
        config_map_files(rendered, cm, &mut files)?;
    } else if let Some(secret) = volume.get("secret") {
        let mode = mode_of(secret, "defaultMode", DEFAULT_MODE)?;
        secret_files(secret, "secretName", mode, &mut files)?;
    } else if let Some(projected) = volume.get("projected") {
        let mode = mode_of(projected, "defaultMode", DEFAULT_MODE)?;
        for source in list_at(projected, "/sources") {
            if let Some(secret) = source.get("secret") {
                secret_files(secret, "name", mode, &mut files)?;
            } else if let Some(cm) = source.get("configMap") {
                config_map_files(rendered, cm, &mut files)?;
            }
        }
    } else {
        bail!("volume {name}: a kind this test does not know");
    }
    if let Some(sub) = sub {
        let sub = Path::new(sub);
        files = files
            .into_iter()
            .filter_map(|(path, source)| {
                path.strip_prefix(sub)
                    .ok()
                    .map(|rest| (rest.to_path_buf(), source))
            })
            .collect();
        ensure!(
            !files.is_empty(),
            "volume {name} holds nothing under the subPath {}",
            sub.display()
        );
    }
    Ok(MountKind::Files(files))
}

fn mode_of(v: &Value, field: &str, default: u32) -> Result<u32> {
    match v.get(field) {
        None => Ok(default),
        Some(m) => m
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("{field} {m} is not a file mode")),
    }
}

fn config_map_files(
    rendered: &Manifests,
    cm: &Value,
    files: &mut BTreeMap<PathBuf, FileSource>,
) -> Result<()> {
    let name = str_at(cm, "/name")?;
    let items = list_at(cm, "/items");
    if items.is_empty() {
        let data = at(rendered.named("ConfigMap", name)?, "/data")?
            .as_object()
            .context("ConfigMap data")?;
        for key in data.keys() {
            files.insert(
                PathBuf::from(key),
                FileSource::ConfigMap {
                    name: name.to_owned(),
                    key: key.clone(),
                },
            );
        }
    }
    for item in items {
        files.insert(
            PathBuf::from(str_at(item, "/path")?),
            FileSource::ConfigMap {
                name: name.to_owned(),
                key: str_at(item, "/key")?.to_owned(),
            },
        );
    }
    Ok(())
}

/// A Secret's files: its `items`, or without them the keys cert-manager
/// writes (the only Secrets mounted whole here are certificates').
fn secret_files(
    secret: &Value,
    name_field: &str,
    default_mode: u32,
    files: &mut BTreeMap<PathBuf, FileSource>,
) -> Result<()> {
    let name = str_at(secret, &format!("/{name_field}"))?;
    let items = list_at(secret, "/items");
    if items.is_empty() {
        for key in CERT_MANAGER_KEYS {
            files.insert(
                PathBuf::from(key),
                FileSource::Secret {
                    name: name.to_owned(),
                    key: key.to_owned(),
                    mode: default_mode,
                },
            );
        }
    }
    for item in items {
        files.insert(
            PathBuf::from(str_at(item, "/path")?),
            FileSource::Secret {
                name: name.to_owned(),
                key: str_at(item, "/key")?.to_owned(),
                mode: mode_of(item, "mode", default_mode)?,
            },
        );
    }
    Ok(())
}

#[test]
fn expansion_follows_kubernetes_rules() {
    let env = BTreeMap::from([("POD_NAME".to_owned(), "strongbox-1".to_owned())]);
    assert_eq!(
        expand("/etc/$(POD_NAME).toml $$(POD_NAME) $(OTHER) $", &env),
        "/etc/strongbox-1.toml $(POD_NAME) $(OTHER) $"
    );
}
