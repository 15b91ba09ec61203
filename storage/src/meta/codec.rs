//! JSON encoding of stored values, and its error mapping.

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MetaError;

/// Encodes `value` as JSON.
pub(super) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, MetaError> {
    serde_json::to_vec(value).map_err(|e| MetaError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Decodes a JSON value read from `table` under `key`.
pub(super) fn decode<T: DeserializeOwned>(
    table: &str,
    key: impl Display,
    bytes: &[u8],
) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(table, key, e))
}

/// A corrupt-value error.
pub(super) fn corrupt(table: &str, key: impl Display, reason: impl Display) -> MetaError {
    MetaError::Corrupt {
        table: table.to_owned(),
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Fixed-size byte arrays as lowercase hex.
pub(super) mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(in crate::meta) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(in crate::meta) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// Optional byte strings as lowercase hex or null.
pub(super) mod opt_hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(in crate::meta) fn serialize<S: Serializer>(
        v: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub(in crate::meta) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
