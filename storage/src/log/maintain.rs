//! Background maintenance of a [`PartitionLog`]: retention (whole sealed
//! segments, envelope first) and rewrapping data keys after a rotation.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::keys::{KekId, KeyError, SegmentKeyContext, WrappedDek};

use super::config::{RetentionPolicy, millis};
use super::envelope::write_envelope;
use super::error::LogError;
use super::files;
use super::format::{deleted_file_name, gap_file_name};
use super::partition::PartitionLog;
use super::recovery::shred_envelope;
use super::segment::Segment;

impl PartitionLog {
    /// Deletes whole sealed segments, oldest first, that `policy` no longer
    /// keeps. The newest segment is never deleted (it records the next
    /// offset). Each deletion shreds the envelope first (then tells the key
    /// manager to forget the key), then removes the data.
    ///
    /// Returns the base offsets of the deleted segments.
    ///
    /// # Errors
    ///
    /// I/O errors; segments deleted before the error stay deleted.
    pub fn apply_retention(&self, policy: &RetentionPolicy) -> Result<Vec<u64>, LogError> {
        let w = self.lock_writer();
        let now = self.ctx.clock.now_ms();
        let mut deleted = Vec::new();
        loop {
            let victim = {
                let segs = self.read_segments();
                let total: u64 = segs.iter().map(|s| s.size()).sum();
                match segs.first() {
                    Some(oldest) if segs.len() > 1 && oldest.is_sealed() => {
                        let by_size = policy.max_bytes.is_some_and(|m| total > m);
                        let by_age = policy.max_age.is_some_and(|age| {
                            now.saturating_sub(oldest.max_timestamp.load(Ordering::Acquire))
                                > millis(age)
                        });
                        (by_size || by_age).then(|| Arc::clone(oldest))
                    }
                    _ => None,
                }
            };
            let Some(victim) = victim else { break };
            {
                let mut segs = self.write_segments();
                segs.retain(|s| !Arc::ptr_eq(s, &victim));
                let start = segs.first().map_or(w.next_offset, |s| s.base);
                self.log_start.store(start, Ordering::Release);
            }
            self.delete_segment_files(&victim)?;
            deleted.push(victim.base);
        }
        drop(w);
        Ok(deleted)
    }

    /// Re-wraps the data keys of the segments whose envelope names KEK
    /// version `from` (after a rotation; the rewrap job calls this for each
    /// partition). For each such segment `rewrap` returns its key wrapped
    /// under the scope's active version, the envelope is replaced
    /// atomically and used from then on, and `commit` records the change in
    /// the key registry. Only envelopes change: no data is read or written.
    ///
    /// Returns how many segments were rewrapped.
    ///
    /// # Errors
    ///
    /// [`LogError::Key`] when `rewrap` or `commit` fails or returns a key
    /// under another scope (segments done before stay done, the others keep
    /// their envelope); I/O errors writing an envelope.
    pub fn rewrap_envelopes(
        &self,
        from: &KekId,
        mut rewrap: impl FnMut(&SegmentKeyContext, &WrappedDek) -> Result<WrappedDek, KeyError>,
        mut commit: impl FnMut(&SegmentKeyContext, &WrappedDek) -> Result<(), KeyError>,
    ) -> Result<u64, LogError> {
        let segs = self.read_segments().clone();
        let mut done = 0;
        for seg in segs {
            // One segment at a time under the writer lock, so retention and
            // truncation cannot delete it halfway, and appends wait only for
            // one unwrap and one envelope write.
            let _w = self.lock_writer();
            if !self.read_segments().iter().any(|s| Arc::ptr_eq(s, &seg)) {
                continue;
            }
            let Some(mut env) = seg.envelope() else {
                continue;
            };
            if env.wrapped.kek != *from {
                continue;
            }
            let key_ctx = env.context();
            let key_err = |source| LogError::Key {
                segment: seg.log_path.clone(),
                source,
            };
            let wrapped = rewrap(&key_ctx, &env.wrapped).map_err(key_err)?;
            if wrapped.kek.scope != self.ctx.config.kek_scope {
                return Err(key_err(KeyError::Config(format!(
                    "the key was rewrapped under scope {}, the topic uses {}",
                    wrapped.kek.scope, self.ctx.config.kek_scope
                ))));
            }
            env.wrapped = wrapped;
            write_envelope(self.ctx.io.as_ref(), &self.ctx.dir, &env)?;
            seg.set_envelope(env.clone());
            commit(&key_ctx, &env.wrapped).map_err(key_err)?;
            done += 1;
        }
        Ok(done)
    }

    /// Removes a segment's files: rename the data aside (so a crash
    /// finishes the job on restart), shred the envelope, remove the data.
    pub(super) fn delete_segment_files(&self, seg: &Segment) -> Result<(), LogError> {
        let dir = self.ctx.dir.as_path();
        let io = self.ctx.io.as_ref();
        let aside = dir.join(deleted_file_name(seg.base));
        io.rename(&seg.log_path, &aside)
            .map_err(files::io_err("renaming for deletion", &seg.log_path))?;
        files::sync_dir(io, dir)?;
        shred_envelope(&self.ctx, seg.base, Some(seg.header.segment_id))?;
        files::remove_if_exists(io, &aside)?;
        files::remove_if_exists(io, &seg.index_path)?;
        self.ctx.indexes.remove(&seg.header.segment_id);
        files::remove_if_exists(io, &dir.join(gap_file_name(seg.base)))?;
        // Made durable before the base can be taken again: after a
        // truncation the next append creates a segment of the same name,
        // and a cut that kept the new `{base}.log` but not the removal of
        // `{base}.log.deleted` would leave a segment that recovery takes
        // for the deleted one (and the name taken for the next append).
        files::sync_dir(io, dir)?;
        self.gaps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&seg.base);
        tracing::info!(segment = %seg.log_path.display(), "deleted segment");
        Ok(())
    }
}
