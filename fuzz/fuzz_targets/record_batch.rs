//! Arbitrary bytes through the record batch parser and record iteration.
//!
//! The first byte steers the input past the parser's first checks: bit 0
//! rewrites `body_length` to cover the rest of the input, bit 1 rewrites
//! the CRC-32C to match, so mutations reach record framing instead of
//! stopping at the CRC. The rest is the batch.
//!
//! Beyond "no panic", a batch the parser accepts must iterate exactly
//! `record_count` records, with their indices and the batch's largest
//! timestamp, hand out keys, header values and values that are views of
//! the input rather than copies, and rebuild through `BatchBuilder` to the
//! input bytes (so nothing unread, no second encoding). An error must name
//! a byte inside the input.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use strongbox_protocol::batch::{BATCH_HEADER_LEN, BatchBuilder, RecordBatch};
use strongbox_protocol::error::DecodeError;

const FIX_LENGTH: u8 = 0b01;
const FIX_CRC: u8 = 0b10;

fuzz_target!(|data: &[u8]| {
    let Some((&control, batch)) = data.split_first() else {
        return;
    };
    let mut batch = batch.to_vec();
    if batch.len() >= BATCH_HEADER_LEN {
        if control & FIX_LENGTH != 0 {
            let body = u32::try_from(batch.len() - BATCH_HEADER_LEN).unwrap_or(u32::MAX);
            batch[30..34].copy_from_slice(&body.to_be_bytes());
        }
        if control & FIX_CRC != 0 {
            let crc = crc32c::crc32c_append(crc32c::crc32c(&batch[..34]), &batch[38..]);
            batch[34..38].copy_from_slice(&crc.to_be_bytes());
        }
    }
    let bytes = Bytes::from(batch);
    match RecordBatch::parse(bytes.clone()) {
        Ok(parsed) => check_accepted(&bytes, &parsed),
        Err(e) => check_error(bytes.len(), &e),
    }
});

/// True when `part` is empty or lies inside `whole`'s buffer.
fn inside(whole: &Bytes, part: &Bytes) -> bool {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= start && p + part.len() <= start + whole.len())
}

fn check_accepted(bytes: &Bytes, batch: &RecordBatch) {
    let header = *batch.header();
    let mut builder = BatchBuilder::new(header.base_timestamp);
    if let Some(p) = header.producer {
        builder.producer(p);
    }
    let mut max_timestamp = i64::MIN;
    for (i, record) in batch.records().enumerate() {
        assert_eq!(record.index as usize, i);
        max_timestamp = max_timestamp.max(record.timestamp);
        assert!(inside(bytes, &record.value), "value copied");
        assert!(
            record.key.as_ref().is_none_or(|k| inside(bytes, k)),
            "key copied"
        );
        let headers: Vec<(String, Bytes)> = record.headers.iter().collect();
        assert_eq!(headers.len(), record.headers.len());
        assert!(
            headers.iter().all(|(_, v)| inside(bytes, v)),
            "header copied"
        );
        let headers: Vec<(&str, &[u8])> =
            headers.iter().map(|(n, v)| (n.as_str(), &v[..])).collect();
        builder
            .push(
                record.timestamp,
                record.key.as_deref(),
                &headers,
                &record.value,
            )
            .expect("an accepted record rebuilds");
    }
    assert_eq!(builder.len(), header.record_count);
    assert_eq!(batch.max_timestamp(), max_timestamp);
    assert_eq!(
        &builder.finish().expect("an accepted batch rebuilds"),
        bytes
    );
}

fn check_error(len: usize, e: &DecodeError) {
    match *e {
        DecodeError::Truncated { offset, need, have } => {
            assert!(need > have && offset + have <= len, "{e} in {len} bytes");
            assert!(
                offset >= BATCH_HEADER_LEN || (offset == 0 && len < BATCH_HEADER_LEN),
                "{e}"
            );
        }
        DecodeError::TrailingBytes { offset, remaining } => {
            assert!(
                offset >= BATCH_HEADER_LEN && offset + remaining <= len,
                "{e} in {len} bytes"
            );
        }
        DecodeError::InvalidUtf8 { offset } => {
            assert!(
                offset >= BATCH_HEADER_LEN && offset < len,
                "{e} in {len} bytes"
            );
        }
        DecodeError::InvalidValue { offset, .. } => assert!(offset < len, "{e} in {len} bytes"),
        _ => {}
    }
}
