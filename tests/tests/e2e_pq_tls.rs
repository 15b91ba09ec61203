//! Hybrid post-quantum key exchange on the client link, against real
//! broker processes: `strongbox-broker dev` negotiates X25519MLKEM768 with
//! the CLI by default (`whoami --json` reports it, the handshake metric
//! counts it); each `tls.key_exchange` of the broker meets each
//! `--key-exchange` of the client with the group the policies promise; and
//! a `require-hybrid` broker refuses a classical-only client in the TLS
//! handshake, with an `auth.failure` audit record (stage `key_exchange`)
//! and a count in `strongbox_auth_failures_total{stage="key_exchange"}`.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strongbox_tests::BrokerProcess;
use strongbox_tests::cli_checks::{cli_json, cli_ok, text};

/// Sets `[tls] key_exchange` in a dev directory's broker.toml.
fn set_key_exchange(dev: &Path, policy: &str) -> Result<()> {
    let path = dev.join("broker.toml");
    let toml = std::fs::read_to_string(&path)?;
    ensure!(toml.contains("[tls]\n"), "no [tls] section in {toml}");
    let toml = toml.replace("[tls]\n", &format!("[tls]\nkey_exchange = \"{policy}\"\n"));
    std::fs::write(&path, toml)?;
    Ok(())
}

/// A dev broker serving with `tls.key_exchange = policy`.
fn broker_with(dev: &Path, policy: &str) -> Result<BrokerProcess> {
    // The first run makes the directory; the second reads the policy.
    let mut first = BrokerProcess::start_dev(dev)?;
    first.terminate()?;
    set_key_exchange(dev, policy)?;
    BrokerProcess::start_dev(dev)
}

/// `whoami --json` with the client policy `client`.
fn whoami(broker: &BrokerProcess, client: &str) -> Result<Value> {
    cli_json(
        &broker.profile("admin"),
        &["--key-exchange", client, "whoami"],
    )
}

/// The value of one series in the metrics text.
fn series(broker: &BrokerProcess, line_start: &str) -> Result<f64> {
    let text = broker.metrics_text()?;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).map(str::trim))
        .with_context(|| format!("{line_start} not in the metrics:\n{text}"))?
        .parse()
        .with_context(|| format!("{line_start} is not a number"))
}

#[test]
fn dev_negotiates_x25519mlkem768_and_whoami_reports_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    let admin = broker.profile("admin");
    let me = cli_json(&admin, &["whoami"])?;
    assert_eq!(me["key_exchange"], "X25519MLKEM768", "{me}");
    assert_eq!(me["principal"], "spiffe://strongbox.dev/admin");
    let shown = cli_ok(&admin, &["whoami"])?;
    assert!(shown.contains("key exchange  X25519MLKEM768"), "{shown}");
    // A classical client still gets in, classically.
    assert_eq!(whoami(&broker, "classical")?["key_exchange"], "X25519");
    let hybrid = series(
        &broker,
        "strongbox_tls_handshakes_total{group=\"X25519MLKEM768\"}",
    )?;
    let classical = series(&broker, "strongbox_tls_handshakes_total{group=\"X25519\"}")?;
    assert!(hybrid >= 2.0 && classical >= 1.0, "{hybrid} {classical}");
    Ok(())
}

#[test]
fn each_broker_policy_meets_each_client_policy_as_promised() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // (broker policy, [(client policy, group negotiated, or None: refused)])
    type Clients = &'static [(&'static str, Option<&'static str>)];
    let cases: [(&str, Clients); 2] = [
        (
            "prefer-hybrid",
            &[
                ("prefer-hybrid", Some("X25519MLKEM768")),
                ("require-hybrid", Some("X25519MLKEM768")),
                ("classical", Some("X25519")),
            ],
        ),
        (
            "classical",
            &[
                ("prefer-hybrid", Some("X25519")),
                ("classical", Some("X25519")),
                ("require-hybrid", None),
            ],
        ),
    ];
    for (i, (server, clients)) in cases.iter().enumerate() {
        let broker = broker_with(&tmp.path().join(format!("dev{i}")), server)?;
        for (client, want) in *clients {
            match want {
                Some(group) => {
                    let me = whoami(&broker, client)?;
                    assert_eq!(
                        me["key_exchange"], *group,
                        "broker {server}, client {client}: {me}"
                    );
                }
                None => {
                    let out = strongbox_tests::cli(
                        &broker.profile("admin"),
                        &["--key-exchange", client, "whoami"],
                    )?;
                    let err = text(&out.stderr);
                    ensure!(
                        !out.status.success()
                            && err.contains("no TLS key exchange group in common"),
                        "broker {server}, client {client}: expected a refusal, got {:?}: {err}",
                        out.status.code()
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn require_hybrid_refuses_a_classical_client_audited_and_counted() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = broker_with(&tmp.path().join("dev"), "require-hybrid")?;
    let admin = broker.profile("admin");
    assert_eq!(
        series(
            &broker,
            "strongbox_auth_failures_total{stage=\"key_exchange\"}"
        )?,
        0.0
    );

    let out = strongbox_tests::cli(&admin, &["--key-exchange", "classical", "whoami"])?;
    let err = text(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && err.contains("no TLS key exchange group in common"),
        "a classical client was not refused as expected ({:?}): {err}",
        out.status.code()
    );
    // Hybrid clients are served, with the hybrid group.
    assert_eq!(
        whoami(&broker, "prefer-hybrid")?["key_exchange"],
        "X25519MLKEM768"
    );
    assert_eq!(
        whoami(&broker, "require-hybrid")?["key_exchange"],
        "X25519MLKEM768"
    );

    // Counted once, as an authentication failure and a refused connection.
    assert_eq!(
        series(
            &broker,
            "strongbox_auth_failures_total{stage=\"key_exchange\"}"
        )?,
        1.0
    );
    assert_eq!(
        series(
            &broker,
            "strongbox_connections_refused_total{reason=\"key_exchange\"}"
        )?,
        1.0
    );
    assert_eq!(
        series(&broker, "strongbox_tls_handshakes_total{group=\"X25519\"}")?,
        0.0
    );

    // Audited: an auth.failure record at stage key_exchange, with the
    // client's address and the policy that refused it.
    let mut found = None;
    for _ in 0..50 {
        let out = cli_ok(&admin, &["audit", "tail", "--json"])?;
        found = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["action"] == "auth.failure" && r["details"]["stage"] == "key_exchange");
        if found.is_some() {
            break;
        }
        // The audit writer appends in batches; give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let record = found.context("no auth.failure record with stage key_exchange")?;
    let reason = record["details"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("require-hybrid") && reason.contains("classical-only client"),
        "{record}"
    );
    assert!(
        record["details"]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{record}"
    );
    assert_eq!(record["outcome"], "failure");
    Ok(())
}
