//! SoftHSM2 tokens for end-to-end tests of the `pkcs11` key provider.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once per process, at `C_Initialize`, and
//! `cargo test` runs the tests of one binary as threads of one process. A
//! test that uses a token itself (not only through a broker process) runs
//! its body in a child process of the test binary whose environment points
//! at a token directory of its own: [`in_own_process`]. Broker processes it
//! starts inherit that environment.
//!
//! A machine without SoftHSM2 fails these tests, saying what to install;
//! they are never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, ensure};
use strongbox_storage::keys::{PinSource, Pkcs11Config, Pkcs11KeyProvider};

/// Debian's SoftHSM2 module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The user PIN of every test token.
pub const USER_PIN: &str = "27182818";
const SO_PIN: &str = "16180339";

/// Set in the child: the test it runs.
const CHILD_VAR: &str = "STRONGBOX_E2E_SOFTHSM_CHILD";
/// Set in the child: its token directory.
const DIR_VAR: &str = "STRONGBOX_E2E_SOFTHSM_DIR";

/// The SoftHSM2 module: `$STRONGBOX_PKCS11_MODULE`, or Debian's path.
/// Fails the test, never skips it, when it is missing.
pub fn module_path() -> PathBuf {
    let path = std::env::var_os("STRONGBOX_PKCS11_MODULE")
        .map_or_else(|| PathBuf::from(MODULE), PathBuf::from);
    assert!(
        path.exists(),
        "PKCS#11 module {} not found: install softhsm2 (apt-get install softhsm2), or set \
         STRONGBOX_PKCS11_MODULE to the module's path",
        path.display()
    );
    path
}

/// Runs `body` in a child process of this test binary with a SoftHSM2
/// configuration and token directory of its own. `name` is the test's
/// name in its binary (`--exact`); the parent checks that the child ran
/// exactly that test and that it passed.
pub fn in_own_process(name: &str, body: impl FnOnce()) {
    if std::env::var(CHILD_VAR).as_deref() == Ok(name) {
        body();
        return;
    }
    module_path();
    let util = Command::new("softhsm2-util").arg("--version").output();
    assert!(
        util.is_ok_and(|o| o.status.success()),
        "softhsm2-util not found: install softhsm2 (apt-get install softhsm2)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("token dir");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("softhsm2.conf");
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_VAR, name)
        .env(DIR_VAR, dir.path())
        .output()
        .expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child process for {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child process did not run {name}:\n{stdout}\n{stderr}"
    );
}

/// A freshly initialised token in the child's token directory.
#[derive(Debug, Clone)]
pub struct Token {
    /// Its label.
    pub label: String,
    /// A `0600` file holding the user PIN.
    pub pin_file: PathBuf,
}

impl Token {
    /// Initialises a token with a unique label on a free slot. Only inside
    /// [`in_own_process`].
    ///
    /// # Errors
    ///
    /// `softhsm2-util` fails.
    pub fn new(prefix: &str) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(
            std::env::var_os(DIR_VAR).context("Token::new runs inside in_own_process")?,
        );
        let label = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ensure!(label.len() <= 32, "token label {label} is over 32 bytes");
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                &label,
                "--pin",
                USER_PIN,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .context("softhsm2-util (install softhsm2)")?;
        ensure!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.join(format!("{label}.pin"));
        write_private(&pin_file, format!("{USER_PIN}\n").as_bytes())?;
        Ok(Self { label, pin_file })
    }

    /// A provider on this token, in this process.
    ///
    /// # Errors
    ///
    /// The module, token or login fails.
    pub fn provider(&self) -> Result<Pkcs11KeyProvider> {
        Pkcs11KeyProvider::open(&Pkcs11Config {
            module: module_path(),
            token_label: self.label.clone(),
            pin: PinSource::File(self.pin_file.clone()),
        })
        .context("opening the token")
    }

    /// Switches the `broker.toml` of the development directory `dev_dir`
    /// from the file provider to this token.
    ///
    /// # Errors
    ///
    /// The file cannot be read or written, or is not the generated one.
    pub fn configure_dev_broker(&self, dev_dir: &Path) -> Result<()> {
        let path = dev_dir.join("broker.toml");
        let text = std::fs::read_to_string(&path)?;
        ensure!(
            text.contains("provider = \"file\""),
            "{} does not use the file provider:\n{text}",
            path.display()
        );
        let text = text.replacen("provider = \"file\"", "provider = \"pkcs11\"", 1);
        let text = format!(
            "{text}\n[keys.pkcs11]\nmodule = {:?}\ntoken_label = {:?}\npin_file = {:?}\n",
            module_path().display().to_string(),
            self.label,
            self.pin_file.display().to_string()
        );
        std::fs::write(&path, text)?;
        Ok(())
    }
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}
