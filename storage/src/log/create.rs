//! Creating the active segment: its file and header, its index, a fresh
//! data key and its envelope.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ring::rand::SecureRandom;

use crate::io::OpenMode;
use crate::keys::{KeyError, SegmentKeyContext, WrappedDek};

use super::envelope::{KeyEnvelope, write_envelope};
use super::error::LogError;
use super::files;
use super::format::{FLAG_UNENCRYPTED, SEGMENT_HEADER_LEN, SegmentHeader};
use super::index::IndexWriter;
use super::partition::{Active, PartitionLog, Writer};
use super::segment::{Segment, SegmentCrypto};

impl PartitionLog {
    /// Creates the active segment at the log's next offset: header and empty
    /// index (the header synced and the new names made durable), a fresh
    /// data key from the key manager, its envelope (written atomically and
    /// made durable).
    pub(super) fn create_active_locked(&self, w: &mut Writer, now: i64) -> Result<(), LogError> {
        let ctx = &self.ctx;
        if w.dir_missing {
            return Err(LogError::DirectoryMissing {
                dir: ctx.dir.as_ref().clone(),
            });
        }
        let base = w.next_offset;
        let path = ctx.segment_path(base);
        let segment_id = random_segment_id().map_err(|source| LogError::KeyCreate {
            segment: path.clone(),
            source,
        })?;
        let header = SegmentHeader {
            flags: if ctx.encrypted { 0 } else { FLAG_UNENCRYPTED },
            topic_id: ctx.config.topic_id,
            partition: ctx.config.partition,
            segment_id,
            base_offset: base,
            created_at_ms: now,
        };
        let recycling = w.placeholder == Some(base);
        let mode = if recycling {
            OpenMode::Truncate
        } else {
            OpenMode::CreateNew
        };
        let file = files::open(ctx.io.as_ref(), &path, mode, "creating")?;
        // From here until its envelope is in place, the file is an empty
        // newest segment: recovery and the next attempt reuse it (a new
        // descriptor each time, so a failed sync is never retried on this
        // one). The header and the new names are made durable *before* the
        // key manager records the segment's key in the registry: after a
        // power cut in between, recovery finds the header and forgets the
        // key by its segment id, so the registry never names a segment the
        // disk does not hold. A crash before a frame is durable leaves a
        // newest segment without frames, which recovery empties, shredding
        // its envelope if one was written.
        w.placeholder = Some(base);
        files::write_all_at(file.as_ref(), &header.encode(), 0, &path)?;
        let index = IndexWriter::create(
            ctx.io.as_ref(),
            &ctx.dir.join(super::format::index_file_name(base)),
            ctx.config.index_interval_bytes,
        )?;
        crate::observe::timed_fsync(|| file.sync_data())
            .map_err(files::io_err("syncing", &path))?;
        files::sync_dir(ctx.io.as_ref(), &ctx.dir)?;

        let (crypto, envelope) = if ctx.encrypted {
            let key_ctx = SegmentKeyContext {
                topic_id: ctx.config.topic_id,
                partition: ctx.config.partition,
                segment_id,
                scope: ctx.config.kek_scope.clone(),
            };
            let (dek, wrapped) =
                ctx.keys
                    .create(&key_ctx)
                    .map_err(|source| LogError::KeyCreate {
                        segment: path.clone(),
                        source,
                    })?;
            let envelope = self.store_envelope(&key_ctx, &path, base, segment_id, wrapped)?;
            (
                Arc::new(SegmentCrypto::new(&dek, &segment_id)),
                Some(envelope),
            )
        } else {
            (Arc::new(SegmentCrypto::plaintext(&segment_id)), None)
        };
        w.placeholder = None;

        let seg = Arc::new(Segment::new(
            &ctx.io,
            &ctx.dir,
            header,
            envelope,
            SEGMENT_HEADER_LEN as u64,
            i64::MIN,
        ));
        seg.set_active(Arc::clone(&file), Arc::clone(&crypto));
        seg.set_live_index(index.live());
        {
            let mut segs = self.write_segments();
            if segs.is_empty() {
                self.log_start.store(base, Ordering::Release);
            }
            segs.push(Arc::clone(&seg));
        }
        self.sync
            .start_file(Arc::clone(&file), SEGMENT_HEADER_LEN as u64);
        tracing::debug!(segment = %path.display(), "created segment");
        w.active = Some(Active {
            seg,
            file,
            index,
            crypto,
            position: SEGMENT_HEADER_LEN as u64,
            frame_count: 0,
            max_ts: i64::MIN,
        });
        Ok(())
    }

    /// Writes the envelope of a new segment; on failure tells the key
    /// manager to forget the key it just made.
    fn store_envelope(
        &self,
        key_ctx: &SegmentKeyContext,
        path: &Path,
        base: u64,
        segment_id: [u8; 16],
        wrapped: WrappedDek,
    ) -> Result<KeyEnvelope, LogError> {
        let ctx = &self.ctx;
        if wrapped.kek.scope != ctx.config.kek_scope {
            let _ = ctx.keys.forget(key_ctx);
            return Err(LogError::KeyCreate {
                segment: path.to_path_buf(),
                source: KeyError::Config(format!(
                    "the key manager wrapped the key under scope {}, the topic uses {}",
                    wrapped.kek.scope, ctx.config.kek_scope
                )),
            });
        }
        let envelope = KeyEnvelope {
            topic_id: ctx.config.topic_id,
            partition: ctx.config.partition,
            segment_id,
            base_offset: base,
            wrapped,
        };
        if let Err(e) = write_envelope(ctx.io.as_ref(), &ctx.dir, &envelope) {
            let _ = ctx.keys.forget(key_ctx);
            return Err(e);
        }
        Ok(envelope)
    }
}

fn random_segment_id() -> Result<[u8; 16], KeyError> {
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| KeyError::Random)?;
    Ok(id)
}
