//! Arbitrary bytes through the streaming frame decoder (with a small frame
//! limit, so length checks are hit often) and through the record batch
//! parser.
//!
//! Beyond "no panic", the target checks the decoder's memory bound and that
//! whatever the decoders accept is the canonical encoding of what they
//! return: re-encoding a decoded frame or rebuilding a parsed batch gives
//! back the input bytes.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
use strongbox_protocol::frame::{FRAME_HEADER_LEN, Frame, FrameDecoder};

/// A small limit, so that forged lengths on both sides of it are common.
const MAX_FRAME: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte sets the size of each read; the rest is the stream.
    let Some((&read, stream)) = data.split_first() else {
        return;
    };
    let read = usize::from(read).max(1);

    let mut decoder = FrameDecoder::new(MAX_FRAME);
    let mut consumed = 0usize;
    'stream: for chunk in stream.chunks(read) {
        decoder.extend(chunk);
        assert!(decoder.capacity() <= MAX_FRAME as usize + FRAME_HEADER_LEN + read);
        loop {
            let buffered = decoder.buffered();
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let used = buffered - decoder.buffered();
                    let wire = frame
                        .to_bytes(MAX_FRAME)
                        .expect("a decoded frame re-encodes");
                    assert_eq!(&wire[..], &stream[consumed..consumed + used]);
                    consumed += used;
                    check_frame_batches(&frame);
                }
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }

    check_batch(Bytes::copy_from_slice(stream));
});

fn check_frame_batches(frame: &Frame) {
    match frame {
        Frame::Produce(p) => check_batch(p.batch.clone()),
        Frame::Records(r) => r.batches.iter().for_each(|b| check_batch(b.batch.clone())),
        _ => {}
    }
}

/// A batch the parser accepts rebuilds to the same bytes.
fn check_batch(bytes: Bytes) {
    let Ok(batch) = RecordBatch::parse(bytes.clone()) else {
        return;
    };
    let header = *batch.header();
    let mut builder = BatchBuilder::new(header.base_timestamp);
    if let Some(p) = header.producer {
        builder.producer(p);
    }
    for record in batch.records() {
        let headers: Vec<(String, Bytes)> = record.headers.iter().collect();
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
    assert_eq!(builder.finish().expect("an accepted batch rebuilds"), bytes);
}
