//! `strongbox-broker config check FILE`: exit 0 for a configuration a
//! broker would start with (warnings allowed), 1 otherwise, with a line per
//! check that names the file or field at fault, then what the broker would
//! do. Checked against real files, a real SoftHSM2 token, a port in use and
//! a running broker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Result, ensure};
use strongbox_broker::pki::{CertSpec, TestCa};
use strongbox_tests::softhsm::{MODULE, TokenDir};
use strongbox_tests::{BrokerProcess, binary};

/// A directory with a CA, a broker certificate, a CRL and a key directory,
/// and a config naming them.
struct Setup {
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl Setup {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = TestCa::new("Check CA")?;
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls)?;
        ca.issue(&CertSpec::server(&["localhost"]))?
            .write_to(&tls, "broker")?;
        std::fs::write(tls.join("ca.pem"), ca.cert_pem())?;
        std::fs::write(tls.join("crl.pem"), ca.crl(&[], 3)?)?;
        Ok(Self { dir, ca })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes broker.toml with `keys` as its [keys] section and `extra`
    /// appended.
    fn config(&self, keys: &str, extra: &str) -> Result<PathBuf> {
        let text = format!(
            "[broker]\ndata_dir = \"data\"\n\
             [listener]\naddr = \"127.0.0.1:0\"\n\
             [tls]\ncert = \"tls/broker.pem\"\nkey = \"tls/broker.key\"\n\
             client_ca = \"tls/ca.pem\"\ncrls = [\"tls/crl.pem\"]\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             {keys}\n{extra}"
        );
        let path = self.path().join("broker.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

const FILE_KEYS: &str = "[keys]\nprovider = \"file\"\n[keys.file]\ndir = \"keys\"\n";

fn check(config: &Path, env: &[(&str, &str)]) -> Result<(Output, String)> {
    let mut cmd = Command::new(binary("strongbox-broker"));
    cmd.args(["config", "check"]).arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out, text))
}

fn line_with<'a>(text: &'a str, needle: &str) -> Option<&'a str> {
    text.lines().find(|l| l.contains(needle))
}

#[test]
fn a_good_configuration_passes_and_says_what_the_broker_would_do() -> Result<()> {
    let s = Setup::new()?;
    let config = s.config(FILE_KEYS, "")?;
    let (out, text) = check(&config, &[])?;
    ensure!(out.status.success(), "{text}");
    ensure!(text.contains("result: ok (0 error(s)"), "{text}");
    let cert = line_with(&text, "tls.cert:").unwrap_or_default();
    ensure!(
        cert.starts_with("  ok") && cert.contains("CN=localhost"),
        "{text}"
    );
    ensure!(
        line_with(&text, "tls.key:").is_some_and(|l| l.contains("matches")),
        "{text}"
    );
    ensure!(
        line_with(&text, "tls.crls:").is_some_and(|l| l.contains("number 3")),
        "{text}"
    );
    // The file provider works but deserves a warning.
    ensure!(
        line_with(&text, "keys:").is_some_and(|l| l.trim_start().starts_with("warning")),
        "{text}"
    );
    ensure!(text.contains("would:"), "{text}");
    ensure!(
        text.contains("serve as broker \"strongbox\" on 127.0.0.1:0"),
        "{text}"
    );
    ensure!(text.contains("control.sock"), "{text}");
    // It changed nothing: no data directory, no key directory.
    ensure!(!s.path().join("data").exists() && !s.path().join("keys").exists());
    Ok(())
}

#[test]
fn files_that_do_not_fit_are_errors_naming_them() -> Result<()> {
    let s = Setup::new()?;
    // A key that belongs to another certificate.
    let other = s.ca.issue(&CertSpec::server(&["localhost"]))?;
    std::fs::write(s.path().join("tls/broker.key"), other.key_pem())?;
    let config = s.config(FILE_KEYS, "")?;
    let (out, text) = check(&config, &[])?;
    ensure!(!out.status.success(), "{text}");
    let line = line_with(&text, "broker.key").unwrap_or_default();
    ensure!(
        line.trim_start().starts_with("error")
            && line.contains("cannot be used with the certificate"),
        "{text}"
    );

    // An expired certificate.
    let expired = s.ca.issue(&CertSpec::server(&["localhost"]).expired())?;
    expired.write_to(&s.path().join("tls"), "broker")?;
    let (out, text) = check(&config, &[])?;
    ensure!(!out.status.success(), "{text}");
    ensure!(
        line_with(&text, "tls.cert:").is_some_and(|l| l.contains("expired")),
        "{text}"
    );

    // A configuration that does not parse: the line and column.
    std::fs::write(&config, "[listener\naddr = 1\n")?;
    let (out, text) = check(&config, &[])?;
    ensure!(!out.status.success() && text.contains("line 1"), "{text}");
    Ok(())
}

#[test]
fn the_key_provider_must_be_reachable() -> Result<()> {
    let s = Setup::new()?;
    // A PKCS#11 module that is not there.
    let missing = s.path().join("no-such-module.so");
    let config = s.config(
        &format!(
            "[keys]\nprovider = \"pkcs11\"\n[keys.pkcs11]\nmodule = {:?}\ntoken_label = \"x\"\npin_env = \"CHECK_PIN\"\n",
            missing.display().to_string()
        ),
        "",
    )?;
    let (out, text) = check(&config, &[("CHECK_PIN", "1234")])?;
    ensure!(!out.status.success(), "{text}");
    // `validate` already refuses a module path that does not exist.
    ensure!(text.contains("no-such-module.so"), "{text}");

    // A real SoftHSM2 token: logged in.
    let token = TokenDir::new(&s.path().join("hsm"))?;
    let pkcs11 = format!(
        "[keys]\nprovider = \"pkcs11\"\n[keys.pkcs11]\nmodule = {MODULE:?}\ntoken_label = {:?}\npin_file = {:?}\n",
        token.label,
        token.pin_file.display().to_string()
    );
    let config = s.config(&pkcs11, "")?;
    let (k, v) = token.env();
    let (out, text) = check(&config, &[(k, &v)])?;
    ensure!(out.status.success(), "{text}");
    ensure!(
        line_with(&text, "keys.pkcs11:")
            .is_some_and(|l| l.trim_start().starts_with("ok") && l.contains("logged in")),
        "{text}"
    );

    // The same token with a wrong PIN: unreachable for the broker.
    std::fs::write(&token.pin_file, "00000000\n")?;
    let (out, text) = check(&config, &[(k, &v)])?;
    ensure!(!out.status.success(), "{text}");
    ensure!(
        line_with(&text, "keys.pkcs11:").is_some_and(|l| l.trim_start().starts_with("error")),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_running_broker_shows_as_ports_in_use_and_a_held_store() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dev)?;
    // The dev config names port 0; ask about the ports it bound.
    let text = std::fs::read_to_string(dev.join("broker.toml"))?;
    let bound = dev.join("bound.toml");
    std::fs::write(
        &bound,
        text.replace(
            "addr = \"127.0.0.1:0\"",
            &format!("addr = \"{}\"", broker.addr),
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", broker.metrics.unwrap_or(broker.addr)),
        ),
    )?;
    let (out, text) = check(&bound, &[])?;
    ensure!(out.status.success(), "warnings only: {text}");
    ensure!(
        line_with(&text, "listener.addr:")
            .is_some_and(|l| l.trim_start().starts_with("warning") && l.contains("in use")),
        "{text}"
    );
    ensure!(
        line_with(&text, "metrics.listen:").is_some_and(|l| l.contains("in use")),
        "{text}"
    );
    ensure!(
        line_with(&text, "metadata store:").is_some_and(|l| l.contains("held by a running broker")),
        "{text}"
    );
    drop(broker);
    Ok(())
}
