//! The monitoring artifacts of `deploy/` against the real broker:
//!
//! - `deploy/prometheus/strongbox.rules.yml` passes `promtool check rules`
//!   and its unit tests (`promtool test rules`);
//! - every metric the rules and the Grafana dashboard
//!   (`deploy/grafana/strongbox-broker.json`) use is exported on a running
//!   broker's `/metrics` (or is a recording rule of the rules file, or
//!   Prometheus's own `up`);
//! - `/metrics` carries the process figures (memory, CPU, descriptors,
//!   start time) under their standard names, with values that match the
//!   process.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use strongbox_client::{ConsumerConfig, Subscription};
use strongbox_tests::BrokerProcess;
use strongbox_tests::client::{connect, read_n};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn promtool(args: &[&str], dir: &Path) -> Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context(
            "promtool is not installed: install Debian's prometheus package \
             (scripts/test-all does)",
        )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() -> Result<()> {
    let dir = workspace().join("deploy/prometheus");
    let checked = promtool(&["check", "rules", "strongbox.rules.yml"], &dir)?;
    ensure!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "tests/strongbox.rules.test.yml"], &dir)?;
    ensure!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

/// Metric-name tokens in a PromQL expression: identifiers that start with
/// `strongbox_`, `strongbox:` or `process_`, and `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
            token.clear();
            continue;
        }
        if in_string {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
            continue;
        }
        let is_metric = token.starts_with("strongbox_")
            || token.starts_with("strongbox:")
            || token.starts_with("process_")
            || (token == "up" && c == '{');
        if is_metric {
            out.insert(std::mem::take(&mut token));
        }
        token.clear();
    }
    out
}

#[test]
fn the_name_scanner_finds_metrics_not_labels_or_strings() {
    let names = metric_names(
        r#"sum by (instance) (rate(strongbox_acl_denials_total{job="strongbox_x", instance=~"$instance"}[5m])) / up{job="strongbox"} > strongbox:storage_available:ratio and process_open_fds"#,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "process_open_fds",
            "strongbox:storage_available:ratio",
            "strongbox_acl_denials_total",
            "up"
        ]
    );
}

/// Every `expr:` of the rules file, and every `record:` name.
fn rules() -> Result<(Vec<String>, BTreeSet<String>)> {
    let text = std::fs::read_to_string(workspace().join("deploy/prometheus/strongbox.rules.yml"))?;
    let mut exprs = Vec::new();
    let mut records = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if let Some(e) = line.strip_prefix("expr:") {
            exprs.push(e.trim().to_owned());
        } else if let Some(r) = line.strip_prefix("- record:") {
            records.insert(r.trim().to_owned());
        }
    }
    ensure!(exprs.len() > 20, "too few rules parsed");
    Ok((exprs, records))
}

/// Every target expression of the dashboard (and its variable queries).
fn dashboard_exprs() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(workspace().join("deploy/grafana/strongbox-broker.json"))?;
    let dash: serde_json::Value = serde_json::from_str(&text).context("dashboard JSON")?;
    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().context("panels")? {
        let id = panel["id"].as_u64().context("panel id")?;
        ensure!(ids.insert(id), "panel id {id} repeated");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().context("targets")?;
        ensure!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            ensure!(t["datasource"]["uid"] == "${datasource}", "{t}");
            exprs.push(t["expr"].as_str().context("expr")?.to_owned());
        }
    }
    for var in dash["templating"]["list"]
        .as_array()
        .context("templating")?
    {
        if let Some(q) = var["definition"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    Ok(exprs)
}

/// The metric names a scrape exposes (histograms with their series
/// suffixes).
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

fn value(text: &str, name: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .with_context(|| format!("{name} is not on /metrics"))?
        .trim()
        .parse()
        .context("not a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_and_the_dashboard_use_only_metrics_the_broker_exports() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    // Traffic, so that the families whose series appear with use have some:
    // a group commit gives consumer lag.
    let out = strongbox_tests::cli(
        &broker.profile("alice"),
        &["publish", "demo.greetings", "a", "b"],
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bob = connect(&broker.profile("bob")).await?;
    let mut consumer = bob
        .subscribe(
            Subscription::group("demo.greetings", "watchers"),
            ConsumerConfig::default(),
        )
        .await?;
    read_n(&mut consumer, 2).await?;
    consumer.commit_consumed().await?;
    consumer.close().await;

    let text = broker.metrics_text()?;
    let names = exposed(&text);
    let (rule_exprs, records) = rules()?;
    let mut used = BTreeSet::new();
    for e in rule_exprs.iter().chain(&dashboard_exprs()?) {
        used.extend(metric_names(e));
    }
    ensure!(used.len() > 25, "too few metric names found: {used:?}");
    let mut missing = Vec::new();
    for name in &used {
        let known = if name.contains(':') {
            records.contains(name)
        } else {
            name == "up" || names.contains(name)
        };
        if !known {
            missing.push(name.clone());
        }
    }
    if !missing.is_empty() {
        bail!(
            "used by the rules or the dashboard but not exported: {missing:?}\n/metrics:\n{text}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_process_figures() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    let text = broker.metrics_text()?;
    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("strongbox_storage_available_bytes", "gauge"),
    ] {
        ensure!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} ({kind}) missing:\n{text}"
        );
    }
    let start = value(&text, "process_start_time_seconds")?;
    ensure!(
        start >= started - 5.0 && start <= started + 120.0,
        "start time {start} is not when the broker started ({started})"
    );
    let rss = value(&text, "process_resident_memory_bytes")?;
    let measured = broker.rss_kib()? as f64 * 1024.0;
    ensure!(
        rss > measured / 2.0 && rss < measured * 2.0,
        "resident memory {rss} vs /proc {measured}"
    );
    let pid = broker.pid().context("pid")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as f64;
    let open = value(&text, "process_open_fds")?;
    ensure!(
        open > 5.0 && (open - fds).abs() <= 5.0,
        "open fds {open} vs /proc {fds}"
    );
    ensure!(value(&text, "process_cpu_seconds_total")? > 0.0);
    Ok(())
}
