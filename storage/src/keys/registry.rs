//! The key registry: every KEK version with its NIST SP 800-57 state, and
//! which segment's data key each version wraps. Stored in the metadata store
//! (tables `kek_versions.v1`, `segment_keys.v1`, `segments_by_kek.v1`).
//!
//! States and the changes allowed between them:
//!
//! ```text
//!            rotate / retire           compromised
//!   active ───────────────▶ decrypt-only ─────────▶ compromised
//!     │  └────────────── compromised ─────────────────▲   │
//!     │                        │ destroy                   │ destroy
//!     └──── destroy ───────────▼───────────────────────────▼
//!                          destroyed  (terminal)
//! ```
//!
//! - A version is born `active`; nothing ever returns to `active`.
//! - A scope has at most one `active` version. Rotation makes the new version
//!   active and the old one `decrypt-only` in one transaction.
//! - `compromised` can be marked from any state but `destroyed`; a
//!   compromised version still unwraps (so its data can be rewrapped) but
//!   never wraps.
//! - `destroyed` is terminal: the provider no longer holds the key.

use strongbox_protocol::model::{KeyState, KeyVersionInfo};

use super::{KekId, KekScope, KeyError, SegmentKeyContext};
use crate::meta::{Batch, MetaError};

/// One KEK version as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekVersion {
    /// Scope and version.
    pub id: KekId,
    /// Its state.
    pub state: KeyState,
    /// The provider kind that holds it (`file`, `pkcs11`).
    pub provider: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When the state last changed.
    pub state_changed_at: i64,
    /// Segments whose data key it wraps.
    pub segments: u64,
}

impl KekVersion {
    /// The version as the admin protocol describes it. `scope` is the name
    /// to show (`broker`, or `topic:<name>`), which only the broker knows.
    pub fn to_info(&self, scope: String) -> KeyVersionInfo {
        KeyVersionInfo {
            scope,
            version: self.id.version,
            state: self.state,
            provider: self.provider.clone(),
            created_at: self.created_at,
            state_changed_at: self.state_changed_at,
            segments: self.segments,
        }
    }
}

/// A segment, as the registry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentRef {
    /// The topic's id.
    pub topic_id: [u8; 16],
    /// Partition index.
    pub partition: u32,
    /// The segment's random id.
    pub segment_id: [u8; 16],
}

impl From<&SegmentKeyContext> for SegmentRef {
    fn from(ctx: &SegmentKeyContext) -> Self {
        Self {
            topic_id: ctx.topic_id,
            partition: ctx.partition,
            segment_id: ctx.segment_id,
        }
    }
}

impl std::fmt::Display for SegmentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            hex::encode(self.topic_id),
            self.partition,
            hex::encode(self.segment_id)
        )
    }
}

/// True when a version may go from `from` to `to`.
pub fn transition_allowed(from: KeyState, to: KeyState) -> bool {
    use KeyState::{Active, Compromised, DecryptOnly, Destroyed};
    matches!(
        (from, to),
        (Active, DecryptOnly | Compromised | Destroyed)
            | (DecryptOnly, Compromised | Destroyed)
            | (Compromised, Destroyed)
    )
}

/// True when a version in `state` may unwrap data keys.
pub fn can_unwrap(state: KeyState) -> bool {
    !matches!(state, KeyState::Destroyed)
}

/// Registers `id` as the new active version of its scope, demoting the
/// current active version (if any) to `decrypt-only`.
///
/// # Errors
///
/// [`KeyError::InvalidTransition`] when `id` is registered already or is not
/// newer than every registered version of the scope; registry failures.
pub fn add_active_version(
    tx: &mut Batch<'_>,
    id: &KekId,
    provider: &str,
    now_ms: i64,
) -> Result<KekVersion, KeyError> {
    let versions = tx.kek_versions(Some(&id.scope))?;
    if let Some(newest) = versions.iter().map(|v| v.id.version).max()
        && newest >= id.version
    {
        return Err(KeyError::InvalidTransition(format!(
            "cannot add {id}: version {newest} of scope {} already exists",
            id.scope
        )));
    }
    for mut old in versions {
        if old.state == KeyState::Active {
            old.state = KeyState::DecryptOnly;
            old.state_changed_at = now_ms;
            tx.put_kek_version(&old)?;
        }
    }
    let v = KekVersion {
        id: id.clone(),
        state: KeyState::Active,
        provider: provider.to_owned(),
        created_at: now_ms,
        state_changed_at: now_ms,
        segments: 0,
    };
    tx.put_kek_version(&v)?;
    Ok(v)
}

/// Moves `id` to `to`, enforcing the transition rules.
///
/// # Errors
///
/// [`KeyError::KekNotFound`] when the version is not registered;
/// [`KeyError::InvalidTransition`]; registry failures.
pub fn set_state(
    tx: &mut Batch<'_>,
    id: &KekId,
    to: KeyState,
    now_ms: i64,
) -> Result<KekVersion, KeyError> {
    let mut v = tx
        .kek_version(id)?
        .ok_or_else(|| KeyError::KekNotFound(id.label()))?;
    if !transition_allowed(v.state, to) {
        return Err(KeyError::InvalidTransition(format!(
            "key {id} is {} and cannot become {}",
            v.state.name(),
            to.name()
        )));
    }
    v.state = to;
    v.state_changed_at = now_ms;
    tx.put_kek_version(&v)?;
    Ok(v)
}

/// The active version of `scope` in `tx`.
///
/// # Errors
///
/// Registry failures.
pub fn active_version(
    tx: &crate::meta::MetaView<'_>,
    scope: &KekScope,
) -> Result<Option<KekVersion>, MetaError> {
    Ok(tx
        .kek_versions(Some(scope))?
        .into_iter()
        .find(|v| v.state == KeyState::Active))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [KeyState; 4] = [
        KeyState::Active,
        KeyState::DecryptOnly,
        KeyState::Destroyed,
        KeyState::Compromised,
    ];

    #[test]
    fn destroyed_is_terminal_and_nothing_returns_to_active() {
        for s in ALL {
            assert!(!transition_allowed(KeyState::Destroyed, s));
            assert!(!transition_allowed(s, KeyState::Active));
        }
    }

    #[test]
    fn compromised_reachable_from_every_live_state() {
        for s in [KeyState::Active, KeyState::DecryptOnly] {
            assert!(transition_allowed(s, KeyState::Compromised));
        }
        assert!(!transition_allowed(
            KeyState::Compromised,
            KeyState::DecryptOnly
        ));
    }
}
