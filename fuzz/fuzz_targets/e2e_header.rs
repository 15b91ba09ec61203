//! Arbitrary bytes through the `strongbox-e2e` record header parser.
//!
//! Beyond "no panic": the two public entry points agree on what they
//! accept, and a header the parser accepts is written back byte for byte
//! (one encoding per header, and nothing accepted that the writer would
//! refuse to write, such as a key id with a control character).

#![no_main]

use libfuzzer_sys::fuzz_target;
use strongbox_client::e2e::{E2eError, reencode_header, sealed_with};

fuzz_target!(|data: &[u8]| {
    let parsed = sealed_with(data);
    match reencode_header(data) {
        Ok(written) => {
            assert!(parsed.is_ok());
            assert_eq!(written, data, "accepted a non-canonical header");
        }
        Err(E2eError::MalformedHeader(_) | E2eError::UnsupportedHeader(_)) => {
            assert!(parsed.is_err());
        }
        Err(e) => panic!("accepted a header the writer refuses: {e:?}"),
    }
});
