//! Reconciling key envelopes with the key registry after an interrupted
//! rewrap.
//!
//! [`PartitionLog::rewrap_envelopes`] writes a segment's new envelope, then
//! records the new KEK version in the registry. A crash between the two
//! leaves the registry one version behind the envelope: the registry still
//! lists the segment under the old version. The envelope on disk is the
//! truth (it is what the next open unwraps); this module reads it and
//! hands it to the caller to record.

use std::sync::Arc;

use crate::keys::{KekId, KeyError, SegmentKeyContext, WrappedDek};

use super::envelope::{EnvelopeProblem, read_envelope};
use super::partition::PartitionLog;

/// What reconciling one segment's envelope found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Reconciled {
    /// Its envelope on disk names another version of the same scope, and
    /// the caller's `commit` recorded it.
    Corrected,
    /// The log cannot correct the registry for it: the log holds no such
    /// segment, or its envelope is still under the version asked about,
    /// under another scope, unreadable or for another segment. The text
    /// says which.
    NotCorrected(String),
    /// The caller's `commit` failed.
    CommitFailed(KeyError),
}

impl PartitionLog {
    /// For each of `segment_ids`, which the key registry lists under KEK
    /// version `from`: reads the segment's envelope on disk and, when it
    /// names another version of `from`'s scope (a rewrap interrupted between
    /// the envelope and the registry), calls `commit` with it so the caller
    /// records the version the segment really is under. The log then uses
    /// that envelope too. Results are in the order of `segment_ids`.
    ///
    /// Blocking: reads one small file per segment.
    pub fn reconcile_envelopes(
        &self,
        from: &KekId,
        segment_ids: &[[u8; 16]],
        mut commit: impl FnMut(&SegmentKeyContext, &WrappedDek) -> Result<(), KeyError>,
    ) -> Vec<([u8; 16], Reconciled)> {
        let mut out = Vec::with_capacity(segment_ids.len());
        for id in segment_ids {
            // Under the writer lock, so a rewrap or retention of this log
            // does not replace or delete the envelope while it is read.
            let _w = self.lock_writer();
            let seg = self
                .read_segments()
                .iter()
                .find(|s| s.header.segment_id == *id)
                .map(Arc::clone);
            let Some(seg) = seg else {
                out.push((
                    *id,
                    Reconciled::NotCorrected("the log holds no such segment".into()),
                ));
                continue;
            };
            let found = match read_envelope(self.ctx.io.as_ref(), &self.ctx.dir, seg.base) {
                Ok(env) => env,
                Err(problem) => {
                    let why = match problem {
                        EnvelopeProblem::Missing => "its envelope is missing".to_owned(),
                        EnvelopeProblem::Empty => "its envelope is empty".to_owned(),
                        EnvelopeProblem::Corrupt(why) => format!("its envelope is corrupt: {why}"),
                    };
                    out.push((*id, Reconciled::NotCorrected(why)));
                    continue;
                }
            };
            let result = if found.segment_id != seg.header.segment_id
                || found.base_offset != seg.base
                || found.topic_id != seg.header.topic_id
                || found.partition != seg.header.partition
            {
                Reconciled::NotCorrected("its envelope belongs to another segment".into())
            } else if found.wrapped.kek.scope != from.scope {
                Reconciled::NotCorrected(format!(
                    "its envelope is under scope {}, not {}",
                    found.wrapped.kek.scope, from.scope
                ))
            } else if found.wrapped.kek == *from {
                Reconciled::NotCorrected(format!("its envelope is still under {from}"))
            } else {
                match commit(&found.context(), &found.wrapped) {
                    Ok(()) => {
                        seg.set_envelope(found);
                        Reconciled::Corrected
                    }
                    Err(e) => Reconciled::CommitFailed(e),
                }
            };
            out.push((*id, result));
        }
        out
    }
}
