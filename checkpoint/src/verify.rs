//! Reading a checkpoint line: its signature first, over the exact bytes
//! written before the signature was known, then its JSON.

use serde_json::Value;

use crate::CheckpointPublicKey;
use crate::format::{Checkpoint, FORMAT, SIGNATURE_FIELD, SIGNATURE_HEX, VERSION, registry_digest};

/// Why a checkpoint line is refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The line is not a signed checkpoint at all.
    #[error("not a signed checkpoint: {0}")]
    Malformed(String),
    /// It names another signing key than the one given.
    #[error(
        "the checkpoint was signed by key {named}, not by the key given ({given}): check the \
         public key file, or the checkpoint is a forgery"
    )]
    OtherKey {
        /// The `key_id` it names.
        named: String,
        /// The id of the key it was checked with.
        given: String,
    },
    /// The signature does not verify.
    #[error(
        "the checkpoint's signature does not verify under key {key_id}: it was altered after \
         signing, or forged"
    )]
    BadSignature {
        /// The key it was checked with.
        key_id: String,
    },
    /// A format or version this program does not read.
    #[error("checkpoint format {format:?} version {version} is not one this program reads")]
    Unsupported {
        /// Its `format`.
        format: String,
        /// Its `version`.
        version: u32,
    },
}

/// Checks a checkpoint line's signature under `key`, then reads it.
/// Surrounding whitespace (the newline of an export file) is ignored.
///
/// # Errors
///
/// [`CheckpointError`] naming what is wrong: not a checkpoint, another
/// key, a signature that does not verify, an unknown format.
pub fn verify_line(line: &str, key: &CheckpointPublicKey) -> Result<Checkpoint, CheckpointError> {
    let line = line.trim();
    let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
    let at = line
        .rfind(SIGNATURE_FIELD)
        .ok_or_else(|| malformed("it has no signature field"))?;
    let (head, tail) = line.split_at(at);
    let sig_hex = tail
        .strip_prefix(SIGNATURE_FIELD)
        .and_then(|t| t.strip_suffix("\"}"))
        .filter(|h| h.len() == SIGNATURE_HEX)
        .ok_or_else(|| malformed("it does not end with a 128-digit signature field"))?;
    let signature = hex::decode(sig_hex).map_err(|_| malformed("the signature is not hex"))?;
    let body = format!("{head}}}");
    // The key it names first, for a clearer message than a bad signature.
    let named: Option<String> = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("key_id").and_then(Value::as_str).map(str::to_owned));
    let given = key.key_id();
    if let Some(named) = named
        && named != given
    {
        return Err(CheckpointError::OtherKey { named, given });
    }
    if !key.verifies(body.as_bytes(), &signature) {
        return Err(CheckpointError::BadSignature { key_id: given });
    }
    let checkpoint: Checkpoint = serde_json::from_str(&body).map_err(|e| {
        CheckpointError::Malformed(format!("signed, but its JSON is not a checkpoint: {e}"))
    })?;
    if checkpoint.format != FORMAT || checkpoint.version != VERSION {
        return Err(CheckpointError::Unsupported {
            format: checkpoint.format,
            version: checkpoint.version,
        });
    }
    if registry_digest(&checkpoint.key_registry.versions) != checkpoint.key_registry.digest {
        return Err(malformed(
            "signed, but its key registry digest does not match its versions",
        ));
    }
    Ok(checkpoint)
}
