//! Real damage to a stopped broker's files, the way a failing disk or a
//! careless operator does it (docs/STORAGE.md has the layouts): a flipped
//! ciphertext byte in a sealed segment, a key envelope gone, a partition
//! directory replaced by an older copy of itself. The broker is stopped
//! gracefully, its files are changed, and it is started again on the same
//! directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use strongbox_protocol::batch::BatchBuilder;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::model::TopicConfig;
use strongbox_tests::copy_dir;

use crate::harness::*;

/// Records written to every partition, one batch (one stored frame) each.
pub(crate) const RECORDS: u64 = 9;

/// Records written before an older copy of a partition is taken.
pub(crate) const OLDER_COPY_END: u64 = 3;

/// A segment rolls after three or four frames of [`value`]'s size, so each
/// partition has several sealed segments.
const SEGMENT_BYTES: u64 = 1024;

/// What is done to one partition of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Nothing: the partition serves every record.
    Healthy,
    /// One byte flipped in the ciphertext of the second frame of the
    /// oldest (sealed) segment: that frame's offsets cannot be read, the
    /// others can.
    FlippedByte,
    /// The key envelope of the oldest (sealed) segment removed: the log
    /// cannot be opened (the partition is `unavailable`).
    NoEnvelope,
    /// The directory replaced by a copy taken after the first
    /// [`OLDER_COPY_END`] records: the partition opens `read_only`.
    OlderCopy,
}

/// A running broker whose topic has damaged partitions.
#[derive(Debug)]
pub(crate) struct Damaged {
    pub(crate) broker: Broker,
    /// The offsets a [`Damage::FlippedByte`] partition cannot deliver:
    /// `[first, end)`.
    pub(crate) first: u64,
    pub(crate) end: u64,
}

/// The value of the record at `offset` of `partition`: about 200 bytes.
pub(crate) fn value(partition: u32, offset: u64) -> String {
    format!("p{partition}-{offset:03}-{}", "x".repeat(190))
}

/// A batch holding the one record [`value`]`(partition, offset)`, stamped
/// now (so that retention, 7 days by default, keeps it).
pub(crate) fn record(partition: u32, offset: u64) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut b = BatchBuilder::new(now);
    b.push(now, None, &[], value(partition, offset).as_bytes())
        .expect("record fits");
    b.finish().expect("batch encodes")
}

/// Starts a broker, creates topic `name` with one partition per entry of
/// `layout`, writes [`RECORDS`] records to each, damages each partition as
/// its entry says and starts the broker again.
pub(crate) async fn damaged_topic(name: &str, layout: &[Damage]) -> Result<Damaged> {
    let mut broker = Broker::start()?;
    let partitions = u32::try_from(layout.len())?;
    let admin = broker.session(ADMIN).await?;
    let config = TopicConfig {
        segment_bytes: Some(SEGMENT_BYTES),
        ..topic_config(partitions)
    };
    let info = admin.create_topic_with(name, config).await?;
    let older_copies: Vec<u32> = (0..partitions)
        .filter(|p| layout[*p as usize] == Damage::OlderCopy)
        .collect();
    let admin = if older_copies.is_empty() {
        write(&admin, name, partitions, 0..RECORDS).await?;
        admin
    } else {
        write(&admin, name, partitions, 0..OLDER_COPY_END).await?;
        drop(admin);
        broker.stop()?;
        for p in &older_copies {
            copy_dir(
                &broker.partition_dir(&info.topic_id, *p),
                &broker.scratch(&format!("older-{p}")),
            )?;
        }
        broker.start_again()?;
        let admin = broker.session(ADMIN).await?;
        write(&admin, name, partitions, OLDER_COPY_END..RECORDS).await?;
        admin
    };
    drop(admin);
    broker.stop()?;

    let (mut first, mut end) = (0, 0);
    for (p, damage) in (0..partitions).zip(layout) {
        let dir = broker.partition_dir(&info.topic_id, p);
        match damage {
            Damage::Healthy => {}
            Damage::FlippedByte => (first, end) = flip_a_byte(&dir)?,
            Damage::NoEnvelope => {
                let oldest = oldest_sealed_segment(&dir)?;
                std::fs::remove_file(oldest.with_extension("key"))?;
            }
            Damage::OlderCopy => {
                std::fs::remove_dir_all(&dir)?;
                copy_dir(&broker.scratch(&format!("older-{p}")), &dir)?;
            }
        }
    }
    broker.start_again()?;
    Ok(Damaged { broker, first, end })
}

/// Appends the records `offsets` to every partition of `topic`, each in a
/// batch of its own, on one producer stream.
async fn write(
    admin: &Session,
    topic: &str,
    partitions: u32,
    offsets: std::ops::Range<u64>,
) -> Result<()> {
    let mut s = admin.open().await?;
    let mut id = 0;
    let mut frames = Vec::new();
    for offset in offsets {
        for p in 0..partitions {
            id += 1;
            frames.push(produce(id, topic, p, record(p, offset)));
        }
    }
    s.send_all(&frames).await?;
    for _ in 0..id {
        match s.next().await? {
            Frame::ProduceAck(_) => {}
            other => bail!("writing {topic}: {other:?}"),
        }
    }
    s.finish()?;
    s.expect_finished().await
}

/// The segment files of a partition directory, oldest first.
fn segment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    Ok(v)
}

/// The oldest segment, which is sealed (it is not the newest).
fn oldest_sealed_segment(dir: &Path) -> Result<PathBuf> {
    let segments = segment_files(dir)?;
    ensure!(
        segments.len() >= 2,
        "{} has {} segment(s)",
        dir.display(),
        segments.len()
    );
    Ok(segments[0].clone())
}

/// `(position, ciphertext length, base offset)` of each frame of a sealed
/// segment file: a 64-byte header, then frames of a 16-byte header (length,
/// base offset, record count) and `length` bytes, then the seal.
fn frames(path: &Path) -> Result<Vec<(usize, usize, u64)>> {
    let data = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut pos = 64;
    while pos + 16 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into()?);
        if len == u32::MAX {
            break;
        }
        let base = u64::from_be_bytes(data[pos + 4..pos + 12].try_into()?);
        out.push((pos, len as usize, base));
        pos += 16 + len as usize;
    }
    Ok(out)
}

/// Flips a ciphertext byte of the second frame of the oldest segment;
/// the offsets that frame held, `[first, end)`.
fn flip_a_byte(dir: &Path) -> Result<(u64, u64)> {
    let victim = oldest_sealed_segment(dir)?;
    let f = frames(&victim)?;
    ensure!(f.len() >= 3, "{} has {} frames", victim.display(), f.len());
    let (pos, len, first) = f[1];
    let end = f[2].2;
    let mut bytes = std::fs::read(&victim)?;
    bytes[pos + 16 + len / 2] ^= 0x20;
    std::fs::write(&victim, bytes)?;
    Ok((first, end))
}
