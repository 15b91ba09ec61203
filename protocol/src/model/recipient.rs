//! The readers of a topic's end-to-end encrypted records.

use bytes::Bytes;

/// A reader of a topic's end-to-end encrypted records, as stored in the
/// topic's recipient directory.
///
/// `entry` is the signed recipient record defined by the client's
/// end-to-end layer; the broker stores and returns it unchanged and cannot
/// forge one, because producers check it against the topic owner's pinned
/// public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientEntry {
    /// The recipient's id (usually its principal).
    pub recipient: String,
    /// The signed entry.
    pub entry: Bytes,
}
