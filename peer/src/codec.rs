//! The encoding of typed calls: postcard 1.x (serde, not self-describing:
//! integers as LEB128 varints, zigzag for signed ones, byte strings and
//! sequences length-prefixed with a varint, enum variants as a varint
//! index, no field names). The payload of a typed call is exactly the
//! postcard encoding of the value, with nothing before or after it.
//!
//! Both ends must agree on the Rust types: the method number selects the
//! type, and a change to a type is a new method number.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::PeerError;

/// Encodes `value` as a call payload.
///
/// # Errors
///
/// [`PeerError::Codec`] when serde refuses the value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, PeerError> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|source| PeerError::Codec {
            what: "encode",
            source,
        })
}

/// Decodes a call payload; bytes left over after the value are an error.
///
/// # Errors
///
/// [`PeerError::Codec`] for bytes that are not exactly one `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PeerError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(PeerError::Codec {
            what: "decode",
            source: if rest.is_empty() {
                postcard::Error::DeserializeUnexpectedEnd
            } else {
                postcard::Error::DeserializeBadEncoding
            },
        }),
        Err(source) => Err(PeerError::Codec {
            what: "decode",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Msg {
        term: u64,
        leader: Option<u64>,
        entries: Vec<Vec<u8>>,
        note: String,
    }

    #[test]
    fn the_encoding_is_postcard_byte_for_byte() {
        let m = Msg {
            term: 300,
            leader: Some(2),
            entries: vec![vec![0xAA]],
            note: "x".into(),
        };
        assert_eq!(
            &encode(&m).expect("encodes")[..],
            [0xAC, 0x02, 0x01, 0x02, 0x01, 0x01, 0xAA, 0x01, b'x']
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = encode(&7u64).expect("encodes").to_vec();
        b.push(0);
        assert!(decode::<u64>(&b).is_err());
    }

    proptest! {
        #[test]
        fn typed_messages_round_trip(
            term: u64,
            leader: Option<u64>,
            entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..32), 0..8),
            note in ".{0,16}",
        ) {
            let m = Msg { term, leader, entries, note };
            let b = encode(&m).expect("encodes");
            prop_assert_eq!(decode::<Msg>(&b).expect("decodes"), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Msg>(&bytes);
        }
    }
}
