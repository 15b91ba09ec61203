//! The key registry's tables. The rules (which state changes are allowed,
//! one active version per scope) live in [`crate::keys::registry`]; this file
//! stores records and keeps the per-version segment counts and the
//! by-version index consistent with the segment table, in the same
//! transaction.

use redb::TableHandle;
use serde::{Deserialize, Serialize};
use strongbox_protocol::model::KeyState;

use super::codec::{corrupt, decode, encode};
use super::tables::{KEK_VERSIONS, SEGMENT_KEYS, SEGMENTS_BY_KEK};
use super::{Batch, MetaError, MetaView};
use crate::keys::{KekId, KekScope, KekVersion, SegmentRef};

#[derive(Serialize, Deserialize)]
struct VersionJson {
    state: StateJson,
    provider: String,
    created_at: i64,
    state_changed_at: i64,
    segments: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum StateJson {
    Active,
    DecryptOnly,
    Destroyed,
    Compromised,
}

impl From<KeyState> for StateJson {
    fn from(s: KeyState) -> Self {
        match s {
            KeyState::Active => Self::Active,
            KeyState::DecryptOnly => Self::DecryptOnly,
            KeyState::Destroyed => Self::Destroyed,
            KeyState::Compromised => Self::Compromised,
        }
    }
}

impl From<StateJson> for KeyState {
    fn from(s: StateJson) -> Self {
        match s {
            StateJson::Active => Self::Active,
            StateJson::DecryptOnly => Self::DecryptOnly,
            StateJson::Destroyed => Self::Destroyed,
            StateJson::Compromised => Self::Compromised,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SegmentJson {
    scope: String,
    version: u32,
}

fn version_from(scope: &str, version: u32, bytes: &[u8]) -> Result<KekVersion, MetaError> {
    let key = format_args!("({scope}, {version})");
    let parsed = KekScope::parse(scope)
        .ok_or_else(|| corrupt(KEK_VERSIONS.name(), key, "unknown scope label"))?;
    let j: VersionJson = decode(KEK_VERSIONS.name(), key, bytes)?;
    Ok(KekVersion {
        id: KekId {
            scope: parsed,
            version,
        },
        state: j.state.into(),
        provider: j.provider,
        created_at: j.created_at,
        state_changed_at: j.state_changed_at,
        segments: j.segments,
    })
}

fn seg_key(s: &SegmentRef) -> ([u8; 16], u32, [u8; 16]) {
    (s.topic_id, s.partition, s.segment_id)
}

impl MetaView<'_> {
    /// The registry record of `id`.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn kek_version(&self, id: &KekId) -> Result<Option<KekVersion>, MetaError> {
        let scope = id.scope.label();
        self.get_with(KEK_VERSIONS, (scope.as_str(), id.version), <[u8]>::to_vec)?
            .map(|b| version_from(&scope, id.version, &b))
            .transpose()
    }

    /// Every registered version of `scope` (of every scope when `None`), by
    /// scope label and version.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn kek_versions(&self, scope: Option<&KekScope>) -> Result<Vec<KekVersion>, MetaError> {
        let label = scope.map(KekScope::label);
        let mut out = Vec::new();
        let from = label.as_deref().map(|l| (l, 0u32));
        self.scan(KEK_VERSIONS, from, |(s, v), bytes| {
            if let Some(l) = &label
                && s != l
            {
                return Ok(false);
            }
            out.push(version_from(s, v, bytes)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every scope with a registered version.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn kek_scopes(&self) -> Result<Vec<KekScope>, MetaError> {
        let mut out: Vec<KekScope> = Vec::new();
        for v in self.kek_versions(None)? {
            if out.last() != Some(&v.id.scope) {
                out.push(v.id.scope);
            }
        }
        Ok(out)
    }

    /// The KEK version that wraps a segment's data key.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn segment_kek(&self, segment: &SegmentRef) -> Result<Option<KekId>, MetaError> {
        let Some(bytes) = self.get_with(SEGMENT_KEYS, seg_key(segment), <[u8]>::to_vec)? else {
            return Ok(None);
        };
        let j: SegmentJson = decode(SEGMENT_KEYS.name(), segment, &bytes)?;
        let scope = KekScope::parse(&j.scope)
            .ok_or_else(|| corrupt(SEGMENT_KEYS.name(), segment, "unknown scope label"))?;
        Ok(Some(KekId {
            scope,
            version: j.version,
        }))
    }

    /// Up to `limit` segments whose data key `id` wraps, in key order,
    /// starting after `after` (for paging through a rewrap).
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn segments_under(
        &self,
        id: &KekId,
        after: Option<&SegmentRef>,
        limit: usize,
    ) -> Result<Vec<SegmentRef>, MetaError> {
        let scope = id.scope.label();
        let start = match after {
            Some(a) => (
                scope.as_str(),
                id.version,
                a.topic_id,
                a.partition,
                a.segment_id,
            ),
            None => (scope.as_str(), id.version, [0u8; 16], 0, [0u8; 16]),
        };
        let mut out = Vec::new();
        self.scan(SEGMENTS_BY_KEK, Some(start), |(s, v, t, p, g), ()| {
            if s != scope || v != id.version || out.len() >= limit {
                return Ok(false);
            }
            let seg = SegmentRef {
                topic_id: t,
                partition: p,
                segment_id: g,
            };
            if after != Some(&seg) {
                out.push(seg);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// The segments of one partition that have a registered key: (segment
    /// id, KEK version), by segment id.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn partition_segment_keks(
        &self,
        topic_id: &[u8; 16],
        partition: u32,
    ) -> Result<Vec<([u8; 16], KekId)>, MetaError> {
        let mut out = Vec::new();
        let start = (*topic_id, partition, [0u8; 16]);
        self.scan(SEGMENT_KEYS, Some(start), |(t, p, g), bytes| {
            if t != *topic_id || p != partition {
                return Ok(false);
            }
            let seg = SegmentRef {
                topic_id: t,
                partition: p,
                segment_id: g,
            };
            let j: SegmentJson = decode(SEGMENT_KEYS.name(), seg, bytes)?;
            let scope = KekScope::parse(&j.scope)
                .ok_or_else(|| corrupt(SEGMENT_KEYS.name(), seg, "unknown scope label"))?;
            out.push((
                g,
                KekId {
                    scope,
                    version: j.version,
                },
            ));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every segment with a registered key: (segment, KEK version).
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn segment_keks(&self) -> Result<Vec<(SegmentRef, KekId)>, MetaError> {
        let mut out = Vec::new();
        self.scan(SEGMENT_KEYS, None, |(t, p, g), bytes| {
            let seg = SegmentRef {
                topic_id: t,
                partition: p,
                segment_id: g,
            };
            let j: SegmentJson = decode(SEGMENT_KEYS.name(), seg, bytes)?;
            let scope = KekScope::parse(&j.scope)
                .ok_or_else(|| corrupt(SEGMENT_KEYS.name(), seg, "unknown scope label"))?;
            out.push((
                seg,
                KekId {
                    scope,
                    version: j.version,
                },
            ));
            Ok(true)
        })?;
        Ok(out)
    }
}

impl Batch<'_> {
    /// Stores a version record as is. The key registry's rules are enforced
    /// by [`crate::keys::registry`]; call this only through it.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn put_kek_version(&mut self, v: &KekVersion) -> Result<(), MetaError> {
        let scope = v.id.scope.label();
        let value = encode(
            "kek version",
            &VersionJson {
                state: v.state.into(),
                provider: v.provider.clone(),
                created_at: v.created_at,
                state_changed_at: v.state_changed_at,
                segments: v.segments,
            },
        )?;
        self.put(
            KEK_VERSIONS,
            (scope.as_str(), v.id.version),
            value.as_slice(),
        )?;
        Ok(())
    }

    fn adjust_count(&mut self, id: &KekId, add: bool) -> Result<(), MetaError> {
        let mut v = self.kek_version(id)?.ok_or_else(|| {
            MetaError::Conflict(format!("key {id} is not registered in the key registry"))
        })?;
        v.segments = if add {
            v.segments.saturating_add(1)
        } else {
            v.segments.saturating_sub(1)
        };
        self.put_kek_version(&v)
    }

    /// Records that `kek` wraps the data key of `segment`, replacing what
    /// was recorded (after a rewrap); keeps counts and the index in step.
    /// A move to a newer version of the same scope is a rewrap, and counts
    /// towards an unfinished rewrap job of that scope in the same
    /// transaction, whoever made it (the job, or a reader that found an
    /// envelope ahead of the registry after a crash), so the job's count is
    /// exact across crashes. Returns the version recorded before.
    ///
    /// # Errors
    ///
    /// [`MetaError::Conflict`] when `kek` is not registered;
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn assign_segment_kek(
        &mut self,
        segment: &SegmentRef,
        kek: &KekId,
    ) -> Result<Option<KekId>, MetaError> {
        let old = self.segment_kek(segment)?;
        if old.as_ref() == Some(kek) {
            return Ok(old);
        }
        if let Some(old) = &old {
            self.unindex(segment, old)?;
            if old.scope == kek.scope && old.version < kek.version {
                self.count_rewrap_move(old)?;
            }
        }
        self.adjust_count(kek, true)?;
        let scope = kek.scope.label();
        let value = encode(
            "segment key",
            &SegmentJson {
                scope: scope.clone(),
                version: kek.version,
            },
        )?;
        self.put(SEGMENT_KEYS, seg_key(segment), value.as_slice())?;
        self.put(
            SEGMENTS_BY_KEK,
            (
                scope.as_str(),
                kek.version,
                segment.topic_id,
                segment.partition,
                segment.segment_id,
            ),
            (),
        )?;
        Ok(old)
    }

    /// Forgets a segment's key record; returns the version it was under.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn remove_segment_kek(&mut self, segment: &SegmentRef) -> Result<Option<KekId>, MetaError> {
        let old = self.segment_kek(segment)?;
        if let Some(old) = &old {
            self.unindex(segment, old)?;
            self.delete(SEGMENT_KEYS, seg_key(segment))?;
        }
        Ok(old)
    }

    fn unindex(&mut self, segment: &SegmentRef, kek: &KekId) -> Result<(), MetaError> {
        let scope = kek.scope.label();
        self.delete(
            SEGMENTS_BY_KEK,
            (
                scope.as_str(),
                kek.version,
                segment.topic_id,
                segment.partition,
                segment.segment_id,
            ),
        )?;
        // A segment recorded under a version that has since vanished from
        // the registry has no count to lower.
        if self.kek_version(kek)?.is_some() {
            self.adjust_count(kek, false)?;
        }
        Ok(())
    }
}
