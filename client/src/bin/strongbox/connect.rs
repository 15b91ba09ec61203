//! Builds the client configuration from `--profile` and the connection
//! flags.

use std::path::Path;
use std::time::Duration;

use strongbox_client::{Client, ClientConfig, PemSource};

use crate::UsageError;
use crate::cli::GlobalArgs;

/// How long the CLI keeps trying to reconnect before it reports failure.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// The configuration the global options describe.
pub(crate) fn config(global: &GlobalArgs) -> anyhow::Result<ClientConfig> {
    let key_file = global.key_file().map_err(UsageError)?;
    let mut config = match &global.profile {
        Some(path) => ClientConfig::from_profile(path)?,
        None => {
            let missing: Vec<&str> = [
                ("--broker", global.broker.is_none()),
                ("--ca", global.ca.is_none()),
                ("--cert", global.cert.is_none()),
                ("--client-key", key_file.is_none()),
            ]
            .into_iter()
            .filter(|(_, missing)| *missing)
            .map(|(flag, _)| flag)
            .collect();
            if !missing.is_empty() {
                return Err(UsageError(format!(
                    "no connection settings: give --profile FILE (or set STRONGBOX_PROFILE), \
                     or {}",
                    missing.join(", ")
                ))
                .into());
            }
            ClientConfig::new(
                String::new(),
                PemSource::pem(Vec::new()),
                PemSource::pem(Vec::new()),
                PemSource::pem(Vec::new()),
            )
        }
    };
    if let Some(broker) = &global.broker {
        // --broker names one broker: the profile's list no longer applies.
        config.broker.clone_from(broker);
        config.fallback_brokers.clear();
    }
    if let Some(ca) = &global.ca {
        config.ca = PemSource::file(ca);
    }
    if let Some(cert) = &global.cert {
        config.cert = PemSource::file(cert);
    }
    if let Some(key) = key_file {
        config.key = PemSource::file(key);
    }
    if let Some(name) = &global.server_name {
        config.server_name = Some(name.clone());
    }
    if let Some(kx) = global.key_exchange {
        config.key_exchange = kx;
    }
    // The profile's `client_name` is what the broker logs for this
    // connection; only a profile without one gets the CLI's own.
    let named = global
        .profile
        .as_deref()
        .and_then(profile_client_name)
        .is_some();
    if !named {
        config.client_name = concat!("strongbox-cli/", env!("CARGO_PKG_VERSION")).into();
    }
    if let PemSource::File(key) = &config.key {
        warn_if_readable_by_others(key);
    }
    config.reconnect.give_up_after = Some(GIVE_UP_AFTER);
    Ok(config)
}

/// The `client_name` a profile sets, if any (the profile was parsed
/// already; this only looks for the one field).
fn profile_client_name(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    table.get("client_name")?.as_str().map(str::to_owned)
}

/// Warns on stderr when the private key file can be read by its group or
/// by others: anyone who can read it can act as this client.
fn warn_if_readable_by_others(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: private key {} can be read by its group or others (mode {mode:o}): \
                 whoever reads it can connect as you; run chmod 600 {}",
                key.display(),
                key.display()
            );
        }
    }
}

/// Connects with the global options.
pub(crate) async fn connect(global: &GlobalArgs) -> anyhow::Result<Client> {
    Ok(Client::connect(config(global)?).await?)
}
