//! Arbitrary bytes through the peer protocol's frame decoder.
//!
//! The first byte picks the receiver's maximum payload (0 to 255 bytes), so
//! both sides of the length check are reached. Beyond "no panic": an
//! accepted header re-encodes to the first 16 input bytes and its length is
//! within the maximum; an accepted frame re-encodes to the whole input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strongbox_peer::frame::{Frame, FrameHeader, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&max, bytes)) = data.split_first() else {
        return;
    };
    let max = u32::from(max);
    if let Ok(header) = FrameHeader::decode(bytes, max) {
        assert!(header.len <= max);
        assert_eq!(&header.encode()[..], &bytes[..HEADER_LEN]);
    }
    if let Ok(frame) = Frame::decode(bytes, max) {
        assert_eq!(frame.encode(), bytes);
    }
});
