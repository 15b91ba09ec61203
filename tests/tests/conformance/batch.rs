//! docs/PROTOCOL.md, "The record batch".

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::BatchBuilder;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::subscribe::StartPosition;

use crate::harness::*;

/// Produces each batch on one stream and expects the per-request `code`
/// for each (the stream goes on), then a good batch acknowledged.
async fn refused_batches(broker: &Broker, batches: Vec<Vec<u8>>, code: ErrorCode) -> Result<()> {
    let alice = broker.session(ALICE).await?;
    let mut s = alice.open().await?;
    let n = batches.len() as u64;
    for (i, b) in batches.into_iter().enumerate() {
        s.send(&produce(i as u64 + 1, "demo.greetings", 0, Bytes::from(b)))
            .await?;
        match s.next().await? {
            Frame::Error(e) => {
                ensure!(e.correlation_id == i as u64 + 1, "{e:?}");
                ensure!(e.code == code.as_u16(), "batch {i}: {e:?}, expected {code}");
            }
            other => bail!("batch {i}: expected Error {code}, got {other:?}"),
        }
    }
    s.send(&produce(n + 1, "demo.greetings", 0, batch(&["fine"])))
        .await?;
    ensure!(matches!(s.next().await?, Frame::ProduceAck(_)));
    Ok(())
}

/// [R0] "The record batch": a batch is delivered byte for byte as the
/// producer wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r0_batches_are_delivered_unchanged() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut b = BatchBuilder::new(-5);
        b.push(-5, Some(b""), &[("h", b"1"), ("h", b"2")], b"\x00\xff")?;
        b.push(i64::from(i32::MAX) - 5, None, &[], &[7u8; 3000])?;
        let written = b.finish()?;
        let offset = alice.append("demo.greetings", 0, written.clone()).await?;
        let mut sub = alice
            .subscribe(subscribe_partition(
                "demo.greetings",
                0,
                StartPosition::Offset(offset),
                1 << 20,
            ))
            .await?;
        ensure!(matches!(sub.next().await?, Frame::Assignment(_)));
        match sub.next().await? {
            Frame::Records(r) => {
                ensure!(r.batches[0].base_offset == offset);
                ensure!(
                    r.batches[0].batch == written,
                    "the batch changed in the broker"
                );
            }
            other => bail!("{other:?}"),
        }
        Ok(())
    })
    .await
}

/// [R1] "Validation" 1: too short, another magic or version, or a reserved
/// flag bit is `invalid_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_header_magic_version_and_reserved_flags() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let good = batch(&["a"]).to_vec();
        let mut cases = vec![good[..37].to_vec()];
        for (at, value) in [(0usize, 0x00u8), (1, 0x41), (2, 2), (3, 0x10), (3, 0x80)] {
            let mut b = good.clone();
            b[at] = value;
            reseal(&mut b);
            cases.push(b);
        }
        refused_batches(&broker, cases, ErrorCode::InvalidBatch).await
    })
    .await
}

/// [R2] "Validation" 2: a codec other than 0 is `unsupported_codec`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_a_codec_is_unsupported_codec() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let good = batch(&["a"]).to_vec();
        let cases = (1u8..=7)
            .map(|codec| {
                let mut b = good.clone();
                b[3] = codec;
                reseal(&mut b);
                b
            })
            .collect();
        refused_batches(&broker, cases, ErrorCode::UnsupportedCodec).await
    })
    .await
}

/// [R3] "Validation" 3: producer fields without the idempotent flag are
/// `invalid_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_producer_fields_without_the_flag() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let good = batch(&["a"]).to_vec();
        // producer_id at 4..12, epoch 12..14, base_sequence 14..18.
        let cases = [11usize, 13, 17]
            .into_iter()
            .map(|at| {
                let mut b = good.clone();
                b[at] = 1;
                reseal(&mut b);
                b
            })
            .collect();
        refused_batches(&broker, cases, ErrorCode::InvalidBatch).await
    })
    .await
}

/// [R4] "Validation" 4: a `record_count` of 0, or a `body_length` that is
/// not the bytes after the header, is `invalid_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_record_count_and_body_length() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let good = batch(&["a"]).to_vec();
        let mut zero = good.clone();
        zero[26..30].copy_from_slice(&0u32.to_be_bytes());
        reseal(&mut zero);
        let mut trailing = good.clone();
        trailing.push(0);
        reseal(&mut trailing);
        let mut short = good.clone();
        let body = u32::from_be_bytes([short[30], short[31], short[32], short[33]]);
        short[30..34].copy_from_slice(&(body + 5).to_be_bytes());
        reseal(&mut short);
        refused_batches(
            &broker,
            vec![zero, trailing, short],
            ErrorCode::InvalidBatch,
        )
        .await
    })
    .await
}

/// [R5] "Validation" 5: a CRC that does not match is `corrupt_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_a_crc_mismatch_is_corrupt_batch() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let good = batch(&["abc"]).to_vec();
        let cases = [18usize, 34, 40, good.len() - 1]
            .into_iter()
            .map(|at| {
                let mut b = good.clone();
                b[at] ^= 0x01;
                b
            })
            .collect();
        refused_batches(&broker, cases, ErrorCode::CorruptBatch).await
    })
    .await
}

/// [R6] "Validation" 6: records that do not fill their lengths exactly,
/// or fewer records than `record_count`, are `invalid_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r6_record_framing() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let good = batch(&["abc", "def"]).to_vec();
        // The first record's length, one more and one less.
        let len = u32::from_be_bytes([good[38], good[39], good[40], good[41]]);
        let mut cases = Vec::new();
        for wrong in [len + 1, len - 1] {
            let mut b = good.clone();
            b[38..42].copy_from_slice(&wrong.to_be_bytes());
            reseal(&mut b);
            cases.push(b);
        }
        let mut three = good.clone();
        three[26..30].copy_from_slice(&3u32.to_be_bytes());
        reseal(&mut three);
        cases.push(three);
        refused_batches(&broker, cases, ErrorCode::InvalidBatch).await
    })
    .await
}

/// [R7] "Validation" 7: a batch over `max_batch_size` is `frame_too_large`
/// for that request; the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_a_batch_over_max_batch_size_is_frame_too_large() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let big = batch_of_size(1024 * 1024 + 1).to_vec();
        ensure!(big.len() > 1024 * 1024);
        refused_batches(&broker, vec![big], ErrorCode::FrameTooLarge).await
    })
    .await
}
