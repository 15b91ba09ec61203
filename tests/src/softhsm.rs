//! SoftHSM2 tokens for end-to-end tests of the `pkcs11` key provider.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once per process, at `C_Initialize`, and
//! `cargo test` runs the tests of one binary as threads of one process. So
//! every test gets a token directory and configuration of its own:
//!
//! - a test that uses a token itself (not only through a broker process)
//!   runs its body in a child process of the test binary whose environment
//!   points at them: [`in_own_process`] and [`Token`]. Broker processes it
//!   starts inherit that environment;
//! - a test that only lets broker processes use the token passes its
//!   configuration in their environment: [`TokenDir`].
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
    let conf = write_conf(dir.path()).expect("softhsm2.conf");
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
        init_token(&label, None)?;
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
        configure_dev_broker(dev_dir, &self.label, &self.pin_file)
    }

    /// The environment a broker process needs to use the token: the
    /// child's own `SOFTHSM2_CONF` (broker processes inherit it; this
    /// passes it explicitly all the same).
    pub fn env(&self) -> (&'static str, String) {
        let conf = std::env::var("SOFTHSM2_CONF")
            .expect("SOFTHSM2_CONF is set: Token is used inside in_own_process");
        ("SOFTHSM2_CONF", conf)
    }
}

/// A token in a token directory of its own under `root`, for broker
/// processes given [`TokenDir::env`]; the test process never loads the
/// module. The token's files can be taken away and brought back, as an HSM
/// is unplugged and plugged in again.
#[derive(Debug)]
pub struct TokenDir {
    root: PathBuf,
    /// The `SOFTHSM2_CONF` file.
    pub conf: PathBuf,
    /// The token label.
    pub label: String,
    /// A `0600` file holding the user PIN.
    pub pin_file: PathBuf,
}

impl TokenDir {
    /// Writes a SoftHSM2 configuration under `root` and initialises a token
    /// in its token directory.
    ///
    /// # Errors
    ///
    /// A file cannot be written or `softhsm2-util` fails.
    pub fn new(root: &Path) -> Result<Self> {
        module_path();
        let conf = write_conf(root)?;
        let label = format!("sbx-keys-{}", std::process::id());
        init_token(&label, Some(&conf))?;
        let pin_file = root.join("token.pin");
        write_private(&pin_file, format!("{USER_PIN}\n").as_bytes())?;
        Ok(Self {
            root: root.to_path_buf(),
            conf,
            label,
            pin_file,
        })
    }

    /// The environment a broker process needs to use the token.
    pub fn env(&self) -> (&'static str, String) {
        ("SOFTHSM2_CONF", self.conf.display().to_string())
    }

    /// Switches the `broker.toml` of the development directory `dev_dir`
    /// from the file provider to this token.
    ///
    /// # Errors
    ///
    /// The file cannot be read or written, or is not the generated one.
    pub fn configure_dev_broker(&self, dev_dir: &Path) -> Result<()> {
        configure_dev_broker(dev_dir, &self.label, &self.pin_file)
    }

    /// Moves the token's files away, leaving an empty token directory.
    ///
    /// # Errors
    ///
    /// A rename fails.
    pub fn take_away(&self) -> Result<()> {
        std::fs::rename(self.tokens(), self.away())?;
        std::fs::create_dir(self.tokens())?;
        Ok(())
    }

    /// Puts the token's files back.
    ///
    /// # Errors
    ///
    /// A rename fails.
    pub fn bring_back(&self) -> Result<()> {
        std::fs::remove_dir(self.tokens())?;
        std::fs::rename(self.away(), self.tokens())?;
        Ok(())
    }

    fn tokens(&self) -> PathBuf {
        self.root.join("tokens")
    }

    fn away(&self) -> PathBuf {
        self.root.join("tokens-away")
    }
}

/// Switches the `broker.toml` of the development directory `dev_dir` from
/// the file provider to the token `label`, whose user PIN is in `pin_file`.
fn configure_dev_broker(dev_dir: &Path, label: &str, pin_file: &Path) -> Result<()> {
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
        label,
        pin_file.display().to_string()
    );
    std::fs::write(&path, text)?;
    Ok(())
}

/// Writes `root/softhsm2.conf`, whose tokens live in `root/tokens`, and
/// returns its path.
fn write_conf(root: &Path) -> Result<PathBuf> {
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    Ok(conf)
}

/// Initialises a token labelled `label` on a free slot with the test PINs,
/// under the configuration `conf` (else the one in the environment).
fn init_token(label: &str, conf: Option<&Path>) -> Result<()> {
    let mut command = Command::new("softhsm2-util");
    command.args([
        "--init-token",
        "--free",
        "--label",
        label,
        "--pin",
        USER_PIN,
        "--so-pin",
        SO_PIN,
    ]);
    if let Some(conf) = conf {
        command.env("SOFTHSM2_CONF", conf);
    }
    let out = command
        .output()
        .context("running softhsm2-util (install softhsm2)")?;
    ensure!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
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
