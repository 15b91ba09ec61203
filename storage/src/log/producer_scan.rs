//! The scan that rebuilds idempotent-producer state: the headers of the
//! batches in the newest segments, oldest first.
//!
//! Idempotence needs, per producer, the sequence and offset of the batches
//! it sent last; a producer retries only batches it sent moments ago, so
//! the newest two segments always hold them. The scan belongs to the log
//! because only the log knows where its segments start, which of them
//! cannot be read any more (a destroyed key) and where damage ends.

use strongbox_protocol::batch::{BatchHeader, parse_header};

use crate::keys::KeyError;

use super::error::LogError;
use super::partition::PartitionLog;

/// Bytes of batches read per step of the scan.
const SCAN_STEP: usize = 4 * 1024 * 1024;

impl PartitionLog {
    /// Calls `visit` with the base offset and header of every readable
    /// batch of the newest two segments, below the high watermark, oldest
    /// first: what an idempotent-producer table is rebuilt from (at open,
    /// and after [`PartitionLog::truncations`] moved).
    ///
    /// A segment whose key was destroyed is skipped (it has no producer
    /// state to give, and must not make the whole partition unavailable);
    /// a damaged range is skipped when its end is known, and ends the scan
    /// otherwise.
    ///
    /// # Errors
    ///
    /// As [`PartitionLog::read`], for failures other than the two above.
    pub fn scan_recent_batches(
        &self,
        mut visit: impl FnMut(u64, &BatchHeader),
    ) -> Result<(), LogError> {
        let segments = self.segments();
        let start = segments
            .len()
            .checked_sub(2)
            .and_then(|i| segments.get(i))
            .or_else(|| segments.first())
            .map_or(self.log_start_offset(), |s| s.base_offset);
        let end = self.high_watermark();
        let mut next = start;
        while next < end {
            let batches = match self.read(next, SCAN_STEP) {
                Ok(batches) => batches,
                Err(LogError::Key {
                    source: KeyError::Destroyed(_),
                    ..
                }) => match segments.iter().find(|s| s.base_offset > next) {
                    Some(s) => {
                        next = s.base_offset;
                        continue;
                    }
                    None => break,
                },
                // A damaged range is reported to whoever reads it; the
                // batches after it still tell which sequences producers
                // used.
                Err(e) => match e.damaged_range() {
                    Some((_, Some(resume))) if resume > next => {
                        tracing::warn!(error = %e, "the producer scan skips a damaged range");
                        next = resume;
                        continue;
                    }
                    Some(_) => {
                        tracing::warn!(error = %e, "the producer scan stops at a damaged range");
                        break;
                    }
                    None => return Err(e),
                },
            };
            let Some((last_base, last_bytes)) = batches.last() else {
                break;
            };
            let mut advanced = next;
            for (base, bytes) in &batches {
                // The log authenticated these bytes; a header that does not
                // parse would be a bug, and is skipped rather than trusted.
                if let Ok(header) = parse_header(bytes) {
                    visit(*base, &header);
                    advanced = base.saturating_add(u64::from(header.record_count));
                }
            }
            if advanced <= next {
                // No progress: stop instead of looping on a batch that
                // cannot be read.
                tracing::warn!(
                    offset = next,
                    base = last_base,
                    len = last_bytes.len(),
                    "the producer scan stalled"
                );
                break;
            }
            next = advanced;
        }
        Ok(())
    }
}
