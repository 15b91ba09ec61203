//! Arbitrary text through the client profile parser.
//!
//! Beyond "no panic": an accepted profile has a broker address with a host
//! (an IPv6 one in brackets) and a port from 1 to 65535, and an error is a
//! profile error naming the profile file.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strongbox_client::{ClientConfig, ClientError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/etc/strongbox/profiles/fuzz.toml");
    match ClientConfig::from_profile_str(&text, path) {
        Ok(config) => {
            let (host, port) = config.broker.rsplit_once(':').expect("host:port");
            assert!(!host.trim().is_empty(), "{:?}", config.broker);
            assert!(
                !host.contains(':') || (host.starts_with('[') && host.ends_with(']')),
                "{:?}",
                config.broker
            );
            assert!(
                port.bytes().all(|b| b.is_ascii_digit())
                    && port.parse::<u16>().is_ok_and(|p| p > 0),
                "{:?}",
                config.broker
            );
        }
        Err(ClientError::Profile { path: p, message }) => {
            assert_eq!(p, path);
            assert!(!message.is_empty());
        }
        Err(e) => panic!("not a profile error: {e}"),
    }
});
