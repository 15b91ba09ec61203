//! What the broker says when it starts, and what `dev` writes:
//!
//! - a normal start with SoftHSM2 logs no ERROR line;
//! - a PKCS#11 provider that cannot start is one `error:` line that says
//!   each thing once and points at `SOFTHSM2_CONF` or the module path;
//! - `dev` writes the `--listen` and `--metrics-listen` it runs with into
//!   its `broker.toml`, keeping the operator's edits.

mod e2e_keys_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use e2e_keys_support::{Provider, Setup, publish, topic_config};
use strongbox_tests::BrokerProcess;
use strongbox_tests::client::connect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_start_with_softhsm_logs_no_error() -> Result<()> {
    let setup = Setup::new(Provider::SoftHsm, 200)?;
    let mut broker = setup.start()?;
    let client = connect(&setup.admin()).await?;
    client
        .admin()
        .create_topic("start.clean", topic_config(1, 1 << 20, true))
        .await?;
    publish(&client, "start.clean", 1, "s", 0..3, 50).await?;
    client.close().await;
    ensure!(broker.terminate()? == Some(0), "clean stop");
    let log = broker.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    ensure!(
        errors.is_empty(),
        "ERROR lines at a normal start:\n{}",
        errors.join("\n")
    );
    ensure!(log.contains("broker serving"), "{log}");
    Ok(())
}

/// Runs `strongbox-broker dev` on `dir`, which must fail to start; its
/// exit code and stderr.
fn failed_start(dir: &Path, env: &[(&str, Option<&str>)]) -> Result<(Option<i32>, String)> {
    let mut cmd = Command::new(strongbox_tests::binary("strongbox-broker"));
    cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + strongbox_tests::START_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the broker did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The one `error:` line of a failed start.
fn error_line(stderr: &str) -> Result<&str> {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    match lines.as_slice() {
        [one] => Ok(one),
        _ => bail!("expected one error line:\n{stderr}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_start_failures_say_what_to_check() -> Result<()> {
    let setup = Setup::new(Provider::SoftHsm, 200)?;
    let hsm = setup.hsm.as_ref().context("a token")?;

    // Without SOFTHSM2_CONF, SoftHSM2 looks elsewhere and finds no token.
    let (code, stderr) = failed_start(&setup.dir, &[("SOFTHSM2_CONF", None)])?;
    ensure!(code == Some(1), "{code:?}: {stderr}");
    let line = error_line(&stderr)?;
    ensure!(
        line.contains(&format!("no token labelled \"{}\"", hsm.label))
            && line.contains("SOFTHSM2_CONF is not set"),
        "{line}"
    );
    ensure!(
        line.matches("no token labelled").count() == 1,
        "said once: {line}"
    );

    // A SOFTHSM2_CONF that names nothing: the module cannot start.
    let missing = setup.dir.join("no-such-softhsm2.conf");
    let (code, stderr) = failed_start(
        &setup.dir,
        &[("SOFTHSM2_CONF", Some(&missing.display().to_string()))],
    )?;
    ensure!(code == Some(1), "{code:?}: {stderr}");
    let line = error_line(&stderr)?;
    ensure!(
        line.contains("cannot initialize PKCS#11 module")
            && line.contains(&format!("SOFTHSM2_CONF names {}", missing.display())),
        "{line}"
    );
    ensure!(
        line.matches("cannot initialize").count() == 1,
        "said once: {line}"
    );

    // A module path that does not exist: the field and the path.
    let config = setup.dir.join("broker.toml");
    let text = std::fs::read_to_string(&config)?;
    let module = strongbox_tests::softhsm::module_path()
        .display()
        .to_string();
    std::fs::write(
        &config,
        text.replace(&module, "/nonexistent/libvendor-pkcs11.so"),
    )?;
    let (name, value) = hsm.env();
    let (code, stderr) = failed_start(&setup.dir, &[(name, Some(&value))])?;
    ensure!(code == Some(1), "{code:?}: {stderr}");
    let line = error_line(&stderr)?;
    ensure!(
        line.contains("keys.pkcs11.module") && line.contains("/nonexistent/libvendor-pkcs11.so"),
        "{line}"
    );
    Ok(())
}

/// `[listener] addr` and `[metrics] listen` of a development directory.
fn written_addresses(dir: &Path) -> Result<(String, String)> {
    let config = strongbox_broker::config::BrokerConfig::load(&dir.join("broker.toml"))?;
    Ok((
        config.listener.addr.to_string(),
        config.metrics.listen.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_writes_the_addresses_it_listens_on() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    // A directory made for the default addresses.
    strongbox_broker::dev::ensure_dev_dir(&dir, strongbox_broker::dev::DEFAULT_DEV_LISTEN)?;
    assert_eq!(
        written_addresses(&dir)?,
        ("127.0.0.1:7443".to_owned(), "127.0.0.1:9644".to_owned())
    );
    // The operator adds a rule and a comment.
    let config = dir.join("broker.toml");
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(
        "\n# added by the operator\n[[acl.rules]]\nprincipal = \"spiffe://strongbox.dev/carol\"\n\
         topic = \"demo.*\"\noperations = [\"describe\"]\neffect = \"allow\"\n",
    );
    std::fs::write(&config, &text)?;

    // Started on free ports, with a metrics address of its own.
    let mut broker =
        BrokerProcess::start_dev_args(&dir, &["--metrics-listen", "127.0.0.1:0"], &[])?;
    assert_eq!(
        written_addresses(&dir)?,
        ("127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned())
    );
    let text = std::fs::read_to_string(&config)?;
    ensure!(
        text.contains("# added by the operator") && text.contains("spiffe://strongbox.dev/carol"),
        "the operator's edits stay:\n{text}"
    );
    ensure!(broker.terminate()? == Some(0));
    Ok(())
}
