//! The container image definition (`deploy/container/Containerfile`),
//! checked as far as a machine without a container engine allows: no image
//! is built here (docs/OPERATIONS.md says so). The file is parsed and held
//! against the broker itself:
//!
//! - two stages; the final one copies in only the two binaries the build
//!   stage built (names of real workspace binaries), the CA bundle and the
//!   empty data directory;
//! - it runs as a non-root user; the data directory is its volume and is
//!   `broker.data_dir` of `deploy/container/broker.toml`;
//! - the exposed ports are the ports that configuration listens on (the
//!   broker's defaults, UDP for QUIC and TCP for metrics), on all
//!   interfaces;
//! - the health check runs `strongbox-broker health` with the configuration
//!   path the entry point serves, and that command really answers from a
//!   running broker's `/readyz`;
//! - `.dockerignore` keeps the build output out of the build context.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use strongbox_broker::config::{BrokerConfig, ListenerConfig, MetricsConfig};
use strongbox_tests::{BrokerProcess, binary};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// One instruction: its keyword and its arguments, continuation lines
/// joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

fn parse(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
        current.clear();
    }
    out
}

/// The JSON array form of an instruction's arguments.
fn exec_form(args: &str) -> Result<Vec<String>> {
    serde_json::from_str(args).with_context(|| format!("not an exec-form array: {args}"))
}

#[test]
fn the_containerfile_agrees_with_the_broker() -> Result<()> {
    let text = std::fs::read_to_string(workspace().join("deploy/container/Containerfile"))?;
    let all = parse(&text);
    let froms: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "FROM")
        .map(|(n, _)| n)
        .collect();
    ensure!(
        froms.len() == 2,
        "a build stage and a runtime stage: {froms:?}"
    );
    let build_stage = &all[froms[0]..froms[1]];
    let final_stage = &all[froms[1]..];
    ensure!(
        all[froms[0]].args.ends_with("AS build"),
        "{:?}",
        all[froms[0]]
    );

    // The build stage builds the two binaries, by their real names.
    let build = build_stage
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .context("no cargo build")?;
    ensure!(build.args.contains("--release") && build.args.contains("--locked"));
    for bin in ["strongbox-broker", "strongbox"] {
        ensure!(
            build.args.contains(&format!("--bin {bin} "))
                || build.args.contains(&format!("--bin {bin}"))
        );
        // A workspace binary of that name exists (built for the tests).
        binary(bin);
    }

    // The final stage copies only the binaries, the CA bundle and the
    // data directory.
    let mut copied = Vec::new();
    for i in final_stage
        .iter()
        .filter(|i| matches!(i.keyword.as_str(), "COPY" | "ADD"))
    {
        ensure!(i.keyword == "COPY", "ADD in the final stage: {i:?}");
        ensure!(
            i.args.contains("--from=build"),
            "a copy from the context: {i:?}"
        );
        let dest = i.args.split_whitespace().last().context("destination")?;
        copied.push(dest.to_owned());
    }
    ensure!(
        copied
            == [
                "/usr/local/bin/strongbox-broker",
                "/usr/local/bin/strongbox",
                "/etc/ssl/certs/ca-certificates.crt",
                "/var/lib/strongbox",
            ],
        "{copied:?}"
    );
    ensure!(
        !final_stage.iter().any(|i| i.keyword == "RUN"),
        "the runtime stage runs commands (it has no shell)"
    );

    // A non-root user.
    let user = final_stage
        .iter()
        .find(|i| i.keyword == "USER")
        .context("no USER")?;
    let uid: u32 = user
        .args
        .split(':')
        .next()
        .context("uid")?
        .parse()
        .context("a numeric uid")?;
    ensure!(uid != 0, "runs as root");
    let data_copy = final_stage
        .iter()
        .find(|i| i.args.ends_with("/var/lib/strongbox") && i.keyword == "COPY")
        .context("data directory")?;
    ensure!(
        data_copy.args.contains(&format!("--chown={}", user.args)),
        "the data directory is not owned by the user: {data_copy:?}"
    );

    // The configuration the image expects.
    let entry = exec_form(
        &final_stage
            .iter()
            .find(|i| i.keyword == "ENTRYPOINT")
            .context("no ENTRYPOINT")?
            .args,
    )?;
    let cmd = exec_form(
        &final_stage
            .iter()
            .find(|i| i.keyword == "CMD")
            .context("no CMD")?
            .args,
    )?;
    ensure!(entry == ["/usr/local/bin/strongbox-broker"], "{entry:?}");
    ensure!(cmd.first().map(String::as_str) == Some("serve"), "{cmd:?}");
    let config_path = cmd
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .context("no --config")?
        .clone();
    let config = BrokerConfig::from_toml_str(
        &std::fs::read_to_string(workspace().join("deploy/container/broker.toml"))?,
        Path::new(&config_path).parent().context("config dir")?,
    )?;

    // The volume is the data directory.
    let volume = exec_form(
        &final_stage
            .iter()
            .find(|i| i.keyword == "VOLUME")
            .context("no VOLUME")?
            .args,
    )?;
    ensure!(
        volume == [config.broker.data_dir.display().to_string()],
        "VOLUME {volume:?} is not broker.data_dir {}",
        config.broker.data_dir.display()
    );

    // The exposed ports are what the configuration listens on: the
    // broker's default ports, on every interface.
    let expose = final_stage
        .iter()
        .find(|i| i.keyword == "EXPOSE")
        .context("no EXPOSE")?;
    let ports: Vec<&str> = expose.args.split_whitespace().collect();
    let quic = format!("{}/udp", config.listener.addr.port());
    let metrics = format!("{}/tcp", config.metrics.listen.port());
    ensure!(ports == [quic.as_str(), metrics.as_str()], "{ports:?}");
    ensure!(config.listener.addr.port() == ListenerConfig::default().addr.port());
    ensure!(config.metrics.listen.port() == MetricsConfig::default().listen.port());
    ensure!(config.listener.addr.ip().is_unspecified());
    ensure!(config.metrics.enabled && config.metrics.listen.ip().is_unspecified());

    // The health check asks the broker's /readyz with that configuration.
    let health = final_stage
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .context("no HEALTHCHECK")?;
    let probe = exec_form(health.args.split_once("CMD ").context("CMD")?.1.trim())?;
    ensure!(
        probe
            == [
                "/usr/local/bin/strongbox-broker",
                "health",
                "--config",
                config_path.as_str()
            ],
        "{probe:?}"
    );
    ensure!(
        final_stage
            .iter()
            .any(|i| i.keyword == "STOPSIGNAL" && i.args == "SIGTERM"),
        "the broker stops gracefully on SIGTERM"
    );

    let ignore = std::fs::read_to_string(workspace().join(".dockerignore"))?;
    ensure!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
    Ok(())
}

#[test]
fn the_health_check_command_answers_from_readyz() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dev)?;
    // The dev config names port 0; point a copy at the bound port.
    let metrics = broker.metrics.context("metrics")?;
    let text = std::fs::read_to_string(dev.join("broker.toml"))?;
    let probe_config = dev.join("probe.toml");
    std::fs::write(
        &probe_config,
        text.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"0.0.0.0:{}\"", metrics.port()),
        ),
    )?;
    let out = Command::new(binary("strongbox-broker"))
        .args(["health", "--config"])
        .arg(&probe_config)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.contains("/readyz: 200"), "{stdout}");

    broker.terminate()?;
    let out = Command::new(binary("strongbox-broker"))
        .args(["health", "--config"])
        .arg(&probe_config)
        .output()?;
    if out.status.success() {
        bail!("health succeeded with the broker stopped");
    }
    Ok(())
}
