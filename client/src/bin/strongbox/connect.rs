//! Builds the client configuration from `--profile` and the connection
//! flags.

use std::time::Duration;

use strongbox_client::{Client, ClientConfig, PemSource};

use crate::UsageError;
use crate::cli::GlobalArgs;

/// How long the CLI keeps trying to reconnect before it reports failure.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// The configuration the global options describe.
pub(crate) fn config(global: &GlobalArgs) -> anyhow::Result<ClientConfig> {
    let mut config = match &global.profile {
        Some(path) => ClientConfig::from_profile(path)?,
        None => {
            let missing: Vec<&str> = [
                ("--broker", global.broker.is_none()),
                ("--ca", global.ca.is_none()),
                ("--cert", global.cert.is_none()),
                ("--key", global.key.is_none()),
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
        config.broker.clone_from(broker);
    }
    if let Some(ca) = &global.ca {
        config.ca = PemSource::file(ca);
    }
    if let Some(cert) = &global.cert {
        config.cert = PemSource::file(cert);
    }
    if let Some(key) = &global.key {
        config.key = PemSource::file(key);
    }
    if let Some(name) = &global.server_name {
        config.server_name = Some(name.clone());
    }
    config.client_name = concat!("strongbox-cli/", env!("CARGO_PKG_VERSION")).into();
    config.reconnect.give_up_after = Some(GIVE_UP_AFTER);
    Ok(config)
}

/// Connects with the global options.
pub(crate) async fn connect(global: &GlobalArgs) -> anyhow::Result<Client> {
    Ok(Client::connect(config(global)?).await?)
}
