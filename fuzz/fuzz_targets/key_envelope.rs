//! Arbitrary bytes through the key envelope parser (the wrapped data key of
//! a segment).
//!
//! When the first byte is odd, the last four bytes of the rest are
//! rewritten as the CRC-32C of what precedes them, so mutations reach the
//! checks behind the CRC. Beyond "no panic", an envelope the parser accepts
//! holds a wrapped key within the 1024-byte limit (and no more memory than
//! that) and encodes back to the input bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strongbox_storage::log::envelope::{KeyEnvelope, MAX_WRAPPED_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&control, envelope)) = data.split_first() else {
        return;
    };
    let mut bytes = envelope.to_vec();
    if control & 1 == 1
        && let Some(body) = bytes.len().checked_sub(4)
    {
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_be_bytes());
    }
    if let Ok(envelope) = KeyEnvelope::decode(&bytes) {
        let blob = &envelope.wrapped.wrapped;
        assert!(!blob.is_empty() && blob.len() <= MAX_WRAPPED_LEN);
        assert!(blob.capacity() <= MAX_WRAPPED_LEN);
        assert_eq!(
            envelope.encode().expect("an accepted envelope encodes"),
            bytes
        );
    }
});
