//! Shared by `deploy_kubernetes`: `deploy/kubernetes` rendered by `kubectl
//! kustomize` (the real one: a missing kubectl fails the test), the
//! rendered documents, and what the broker container of one pod sees
//! ([`pod::PodView`]).

pub(crate) mod checks;
pub(crate) mod pod;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use serde_json::Value;

/// The cluster domain the pod and Service DNS names are written for.
pub(crate) const CLUSTER_DOMAIN: &str = "cluster.local";

/// The documents `kubectl kustomize` rendered.
#[derive(Debug)]
pub(crate) struct Manifests {
    pub(crate) docs: Vec<Value>,
}

impl Manifests {
    /// Renders the kustomization in `dir` and parses the result.
    pub(crate) fn render(dir: &Path) -> Result<Self> {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .output()
            .context(
                "cannot run kubectl: install Debian's kubernetes-client package (scripts/test-all \
                 unpacks it when kubectl is missing)",
            )?;
        ensure!(
            out.status.success(),
            "kubectl kustomize {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self::parse(&String::from_utf8(out.stdout).context("kubectl output is not UTF-8")?)
    }

    /// Parses a stream of YAML documents.
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let mut docs = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let value = Value::deserialize(doc).context("rendered YAML does not parse")?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        ensure!(!docs.is_empty(), "kubectl kustomize rendered nothing");
        Ok(Self { docs })
    }

    /// Every document of `kind`.
    pub(crate) fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
            .collect()
    }

    /// The document of `kind` named `name`.
    pub(crate) fn named(&self, kind: &str, name: &str) -> Result<&Value> {
        self.of_kind(kind)
            .into_iter()
            .find(|d| d.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
            .with_context(|| format!("no {kind} named {name} is rendered"))
    }

    /// The one document of `kind`.
    pub(crate) fn only(&self, kind: &str) -> Result<&Value> {
        let all = self.of_kind(kind);
        ensure!(
            all.len() == 1,
            "expected one {kind}, rendered {}",
            all.len()
        );
        Ok(all[0])
    }
}

/// `Kind name` of a document, for messages.
pub(crate) fn describe(v: &Value) -> String {
    format!(
        "{} {}",
        v.get("kind").and_then(Value::as_str).unwrap_or("(object)"),
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)")
    )
}

/// The value at a JSON pointer.
pub(crate) fn at<'a>(v: &'a Value, ptr: &str) -> Result<&'a Value> {
    v.pointer(ptr)
        .with_context(|| format!("{} has no {ptr}", describe(v)))
}

/// The string at a JSON pointer.
pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> Result<&'a str> {
    at(v, ptr)?
        .as_str()
        .with_context(|| format!("{} {ptr} is not a string", describe(v)))
}

/// The unsigned integer at a JSON pointer.
pub(crate) fn u64_at(v: &Value, ptr: &str) -> Result<u64> {
    at(v, ptr)?
        .as_u64()
        .with_context(|| format!("{} {ptr} is not an unsigned integer", describe(v)))
}

/// The array at a JSON pointer (empty when absent).
pub(crate) fn list_at<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The strings of the array at a JSON pointer.
pub(crate) fn strings_at(v: &Value, ptr: &str) -> Vec<String> {
    list_at(v, ptr)
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// True when every label of `selector` (a `matchLabels`-like map) is on
/// `labels`, and `selector` is not empty.
pub(crate) fn selects(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    let (Some(selector), Some(labels)) = (
        selector.and_then(Value::as_object),
        labels.and_then(Value::as_object),
    ) else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
