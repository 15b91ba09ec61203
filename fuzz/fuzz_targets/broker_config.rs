//! Arbitrary text through the broker's config parser and its validation.
//!
//! Beyond "no panic" (also in the TOML parser, on deep nesting or odd
//! escapes): every error about a setting names it by a non-empty dotted
//! path, and its message starts with that path.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strongbox_broker::config::BrokerConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let result = BrokerConfig::from_toml_str(&text, Path::new("/nonexistent/strongbox"))
        .and_then(BrokerConfig::validate);
    if let Err(e) = result
        && let Some(field) = e.field()
    {
        assert!(!field.is_empty() && field != "(top level)", "{e}");
        assert!(e.to_string().starts_with(field), "{e}");
    }
});
