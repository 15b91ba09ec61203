//! `strongbox-broker checkpoint public-key`: the checkpoint key's public
//! half, for whoever checks checkpoints offline (`strongbox audit verify
//! --checkpoint FILE --checkpoint-key KEY.pem`, or any ECDSA P-256 tool).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::BrokerConfig;

/// The arguments of `strongbox-broker checkpoint public-key`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublicKeyArgs {
    /// The broker configuration whose `[keys]` section names the key
    /// provider holding the checkpoint key.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Make the key pair in the provider if it does not exist yet (the
    /// broker makes it at its first start otherwise).
    #[arg(long)]
    pub create: bool,
    /// Write the PEM to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs the command: the PEM on stdout (or in `--out`), the key id on
/// stderr. Exit status 0, or 1 with a one-line reason.
pub fn run_public_key(args: &PublicKeyArgs) -> ExitCode {
    match public_key(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn public_key(args: &PublicKeyArgs) -> Result<(), String> {
    let config = BrokerConfig::load(&args.config)
        .map_err(|e| format!("config {}: {e}", args.config.display()))?;
    let provider = crate::services::open_provider(&config)
        .map_err(|e| format!("cannot open the key provider: {e}"))?;
    let key = provider
        .checkpoint_key(args.create)
        .map_err(|e| format!("cannot read the checkpoint key: {e}"))?
        .ok_or_else(|| {
            format!(
                "the key provider ({}) holds no checkpoint key yet: the broker makes it at its \
                 first start, or run this again with --create",
                provider.info().location
            )
        })?;
    let pem = key.to_pem();
    match &args.out {
        Some(path) => std::fs::write(path, &pem)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => {
            let _ = std::io::stdout().lock().write_all(pem.as_bytes());
        }
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "checkpoint key {} (ECDSA P-256) from {} {}",
        key.key_id(),
        provider.info().kind,
        provider.info().location
    );
    Ok(())
}
