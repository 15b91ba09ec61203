//! The client configuration from `--profile` and the connection flags, as
//! the `strongbox` CLI builds it.

use std::path::Path;

use anyhow::{Result, bail};
use strongbox_client::{ClientConfig, PemSource};

use crate::cli::ConnectArgs;

/// The configuration the connection flags describe; `profile` (the
/// spawned broker's) replaces `--profile` when given.
///
/// # Errors
///
/// Neither a profile nor all of --broker, --ca, --cert and --key; a
/// profile that does not load.
pub fn client_config(args: &ConnectArgs, profile: Option<&Path>) -> Result<ClientConfig> {
    let profile = profile.or(args.profile.as_deref());
    let mut config = match profile {
        Some(path) => ClientConfig::from_profile(path)?,
        None => {
            let missing: Vec<&str> = [
                ("--broker", args.broker.is_none()),
                ("--ca", args.ca.is_none()),
                ("--cert", args.cert.is_none()),
                ("--key", args.key.is_none()),
            ]
            .into_iter()
            .filter(|(_, missing)| *missing)
            .map(|(flag, _)| flag)
            .collect();
            if !missing.is_empty() {
                bail!(
                    "no connection settings: give --spawn-dev, --profile FILE (or set \
                     STRONGBOX_PROFILE), or {}",
                    missing.join(", ")
                );
            }
            ClientConfig::new(
                String::new(),
                PemSource::pem(Vec::new()),
                PemSource::pem(Vec::new()),
                PemSource::pem(Vec::new()),
            )
        }
    };
    if let Some(broker) = &args.broker {
        config.broker.clone_from(broker);
    }
    if let Some(ca) = &args.ca {
        config.ca = PemSource::file(ca);
    }
    if let Some(cert) = &args.cert {
        config.cert = PemSource::file(cert);
    }
    if let Some(key) = &args.key {
        config.key = PemSource::file(key);
    }
    if let Some(name) = &args.server_name {
        config.server_name = Some(name.clone());
    }
    config.client_name = concat!("strongbox-bench/", env!("CARGO_PKG_VERSION")).into();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_without_a_profile_must_be_complete() {
        let args = ConnectArgs {
            broker: Some("127.0.0.1:7443".into()),
            ca: Some("ca.pem".into()),
            ..ConnectArgs::default()
        };
        let err = client_config(&args, None).expect_err("incomplete");
        assert!(err.to_string().contains("--cert, --key"), "{err}");
        let args = ConnectArgs {
            cert: Some("c.pem".into()),
            key: Some("c.key".into()),
            ..args
        };
        let config = client_config(&args, None).expect("complete");
        assert_eq!(config.broker, "127.0.0.1:7443");
    }
}
