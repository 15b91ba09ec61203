//! The buffers reads fill: reused, so that reading a frame neither
//! allocates nor zero-fills memory that the read is about to overwrite.
//!
//! A read fills one buffer with several frames in one positional read,
//! decrypts each in place and hands out the plaintext batches as slices of
//! that buffer (the broker sends them to subscribers as they are: the
//! decrypted bytes are the bytes sent). The buffer comes back to the pool
//! once nothing else holds a slice of it: the pool keeps one handle, and a
//! buffer is taken again only when that handle is the last one
//! ([`Bytes::try_into_mut`]), so a read can never write into bytes that an
//! earlier read handed out. Its length stays what it was: the memory is
//! already initialized, and only the part a read fills is ever handed out.

use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};

/// Buffers kept for reuse, process-wide: reads of all partitions share
/// them, so memory kept does not grow with the number of partitions.
const POOLED: usize = 16;

/// Smallest buffer allocated, and the step of buffer sizes: a read of a
/// small batch still gets a buffer later reads can reuse, and reads of
/// about the same budget fit each other's buffers.
const MIN_BUFFER: usize = 16 * 1024;

/// Buffers larger than this are not kept (a rare huge batch does not pin
/// its memory).
const MAX_POOLED_BUFFER: usize = 4 * 1024 * 1024;

static POOL: Mutex<Vec<Bytes>> = Mutex::new(Vec::new());

/// A buffer of at least `len` bytes that nothing else refers to. Its
/// contents are unspecified (the caller overwrites what it uses).
pub(crate) fn take(len: usize) -> BytesMut {
    {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        let mut busy = Vec::with_capacity(pool.len());
        let mut found = None;
        for b in pool.drain(..) {
            if found.is_some() {
                busy.push(b);
                continue;
            }
            match b.try_into_mut() {
                Ok(free) if free.len() >= len => found = Some(free),
                // Free but too small: let it go; a larger one replaces it.
                Ok(_) => {}
                Err(b) => busy.push(b),
            }
        }
        *pool = busy;
        if let Some(free) = found {
            return free;
        }
    }
    // Fresh memory: zeroed by the allocator (pages straight from the
    // kernel are zero already), once per buffer, not once per read.
    BytesMut::zeroed(len.max(MIN_BUFFER).next_multiple_of(MIN_BUFFER))
}

/// Keeps `buffer` (a whole buffer from [`take`], frozen) for reuse once the
/// slices handed out of it are dropped.
pub(crate) fn give_back(buffer: &Bytes) {
    if buffer.len() > MAX_POOLED_BUFFER {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() >= POOLED {
        // The oldest is the least likely to be free soon.
        pool.remove(0);
    }
    pool.push(buffer.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_reused_only_when_no_slice_of_it_is_left() {
        let mut first = take(100);
        first[..5].copy_from_slice(b"first");
        let first = first.freeze();
        let first_ptr = first.as_ptr();
        give_back(&first);
        let held = first.slice(0..5);
        drop(first);
        // The slice still refers to the buffer: a new read gets another.
        let mut second = take(100);
        assert_ne!(second.as_ptr(), first_ptr, "a held buffer is not reused");
        second[..5].copy_from_slice(b"other");
        assert_eq!(&held[..], b"first", "a held slice never changes");
        let second = second.freeze();
        let second_ptr = second.as_ptr();
        give_back(&second);
        drop(second);
        drop(held);
        // Both are free now; one of them is handed out again, whole.
        let again = take(100);
        assert!(again.len() >= MIN_BUFFER);
        assert!(
            again.as_ptr() == first_ptr || again.as_ptr() == second_ptr,
            "a free buffer is reused"
        );
    }

    #[test]
    fn small_free_buffers_make_way_for_larger_reads() {
        let small = take(10).freeze();
        give_back(&small);
        drop(small);
        let large = take(MIN_BUFFER * 4);
        assert!(large.len() >= MIN_BUFFER * 4);
    }
}
