//! `strongbox keyring ...`: local end-to-end keyrings. No broker needed.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};
use strongbox_client::e2e::{KeyInfo, Keyring};

use crate::cli::GlobalArgs;
use crate::commands::Out;
use crate::output::{Table, time_ms};

/// `keyring ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyringCommand {
    /// Create a keyring file (mode 0600) with a new random key, version 1.
    #[command(after_help = "Example:\n  strongbox keyring new orders.keyring --id orders-key")]
    New {
        /// The keyring file to create (refuses to overwrite).
        file: PathBuf,
        /// The key id, written into every record sealed with it.
        #[arg(long, value_name = "ID")]
        id: String,
    },
    /// Add the next version of a key; it becomes the active one. Older
    /// versions stay, so their records remain readable.
    #[command(after_help = "Example:\n  strongbox keyring rotate orders.keyring")]
    Rotate {
        /// The keyring file.
        file: PathBuf,
        /// The key id (default: the keyring's only key).
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
    /// List key ids, versions and creation times (never key bytes).
    List {
        /// The keyring file.
        file: PathBuf,
    },
    /// Write a keyring holding one key (every version, or one) for a reader.
    #[command(after_help = "\
Examples:
  strongbox keyring export orders.keyring --id orders-key --out reader.keyring
  strongbox keyring export orders.keyring --id orders-key --version 2 --out v2.keyring")]
    Export {
        /// The keyring file.
        file: PathBuf,
        /// The key id.
        #[arg(long, value_name = "ID")]
        id: String,
        /// Only this version (default: every version of the key).
        #[arg(long, value_name = "N")]
        version: Option<u32>,
        /// The keyring file to create (mode 0600; refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub(crate) fn run(global: &GlobalArgs, command: KeyringCommand) -> anyhow::Result<()> {
    let mut out = Out::new();
    match command {
        KeyringCommand::New { file, id } => {
            let keyring = Keyring::generate(&id)?;
            keyring.create(&file)?;
            report(&mut out, global.json, &file, "created", &keyring.keys())?;
        }
        KeyringCommand::Rotate { file, id } => {
            let mut keyring = Keyring::load(&file)?;
            let id = match id {
                Some(id) => id,
                None => keyring.sole_id()?,
            };
            let version = keyring.rotate(&id)?;
            keyring.save(&file)?;
            if global.json {
                out.json(&json!({"file": file.display().to_string(), "id": id, "active_version": version}))?;
            } else {
                out.line(&format!(
                    "{id} v{version} is now the active key in {}",
                    file.display()
                ))?;
            }
        }
        KeyringCommand::List { file } => {
            let keyring = Keyring::load(&file)?;
            if global.json {
                out.json(&Value::Array(keyring.keys().iter().map(key_json).collect()))?;
            } else {
                out.write(&key_table(&keyring.keys()))?;
            }
        }
        KeyringCommand::Export {
            file,
            id,
            version,
            out: target,
        } => {
            let exported = Keyring::load(&file)?.export(&id, version)?;
            exported.create(&target)?;
            report(&mut out, global.json, &target, "exported", &exported.keys())?;
        }
    }
    Ok(())
}

fn report(
    out: &mut Out,
    json: bool,
    file: &std::path::Path,
    verb: &str,
    keys: &[KeyInfo],
) -> anyhow::Result<()> {
    if json {
        out.json(&json!({
            "file": file.display().to_string(),
            verb: keys.iter().map(key_json).collect::<Vec<_>>(),
        }))?;
    } else {
        let names: Vec<String> = keys
            .iter()
            .map(|k| format!("{} v{}", k.id, k.version))
            .collect();
        out.line(&format!(
            "{verb} {} (mode 0600) with {}",
            file.display(),
            names.join(", ")
        ))?;
    }
    Ok(())
}

pub(crate) fn key_table(keys: &[KeyInfo]) -> String {
    let mut table = Table::new(&["ID", "VERSION", "CREATED", "ACTIVE"]);
    for k in keys {
        table.row(vec![
            k.id.clone(),
            k.version.to_string(),
            time_ms(k.created_at),
            if k.active { "yes" } else { "" }.to_owned(),
        ]);
    }
    table.render()
}

pub(crate) fn key_json(k: &KeyInfo) -> Value {
    json!({"id": k.id, "version": k.version, "created_at": k.created_at, "active": k.active})
}
