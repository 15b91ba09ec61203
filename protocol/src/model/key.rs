//! Key-encryption key versions, their NIST SP 800-57 states, and the
//! progress of the job that rewraps data keys under the active version.

/// NIST SP 800-57 state of a key-encryption key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Wraps new data keys.
    Active,
    /// Unwraps existing data keys only.
    DecryptOnly,
    /// Gone from the provider; data under it cannot be read.
    Destroyed,
    /// Suspected exposed; still unwraps, first in the rewrap queue.
    Compromised,
}

impl KeyState {
    /// The state's name as shown by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::DecryptOnly => "decrypt-only",
            Self::Destroyed => "destroyed",
            Self::Compromised => "compromised",
        }
    }
}

/// One version of a key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionInfo {
    /// `broker`, or `topic:<name>` for a dedicated key.
    pub scope: String,
    /// Version number, from 1.
    pub version: u32,
    /// Its state.
    pub state: KeyState,
    /// Which provider holds it (`file`, `pkcs11`).
    pub provider: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When the state last changed.
    pub state_changed_at: i64,
    /// Segment keys wrapped under this version.
    pub segments: u64,
}

/// Progress of the background rewrap job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RewrapProgress {
    /// True while the job runs.
    pub running: bool,
    /// Envelopes the job must rewrap.
    pub total: u64,
    /// Envelopes rewrapped so far.
    pub done: u64,
    /// Envelopes it could not rewrap (their key version is destroyed, or
    /// the envelope is corrupt).
    pub failed: u64,
}
