//! docs/PROTOCOL.md, "Producer stream" (storage errors) and
//! "PartitionState", for faults that cannot be made with a separate
//! broker process: a full disk, a failing fsync, a log that cannot be
//! opened because reading it fails. These tests run the broker in this
//! process with its partition logs on the fault-injecting I/O backend
//! (`FaultyIo`), and talk to it over real QUIC exactly like the others.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use strongbox_broker::config::BrokerConfig;
use strongbox_broker::dev::ensure_dev_dir;
use strongbox_broker::server::{RunningBroker, run_with_io};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::subscribe::StartPosition;
use strongbox_protocol::model::{PartitionState, TopicInfo};
use strongbox_storage::io::{Fault, FaultRule, FaultyIo, IoOp, PathMatch, StorageIo};

use crate::damage::record;
use crate::harness::*;

/// A broker running in this process on [`FaultyIo`].
struct InProcess {
    broker: Option<RunningBroker>,
    config: BrokerConfig,
    io: FaultyIo,
    dev: PathBuf,
    _tmp: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let listen: SocketAddr = "127.0.0.1:0".parse()?;
        let layout = ensure_dev_dir(&tmp.path().join("dev"), listen)?;
        let mut config = BrokerConfig::load(&layout.config)?.validate()?;
        config.listener.addr = listen;
        config.metrics.enabled = false;
        let io = FaultyIo::new();
        let broker =
            run_with_io(config.clone(), Arc::new(io.clone()) as Arc<dyn StorageIo>).await?;
        Ok(Self {
            broker: Some(broker),
            config,
            io,
            dev: layout.dir,
            _tmp: tmp,
        })
    }

    fn running(&self) -> Result<&RunningBroker> {
        self.broker.as_ref().context("the broker is stopped")
    }

    /// A connection as `who` past Hello/Welcome.
    async fn session(&self, who: &str) -> Result<Session> {
        let config = profile_client_config(&self.dev, who)?;
        let conn = connect_to(self.running()?.addr, config).await?;
        Session::establish(conn, hello()).await
    }

    /// The directory of partition `partition` of `topic`.
    fn partition_dir(&self, topic: &TopicInfo, partition: u32) -> Result<PathBuf> {
        let id: String = topic.topic_id.iter().map(|b| format!("{b:02x}")).collect();
        Ok(self
            .running()?
            .state
            .partitions
            .topics()
            .data_dir()
            .join("log")
            .join(id)
            .join(partition.to_string()))
    }

    /// Stops the broker gracefully.
    async fn stop(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
    }

    /// Starts the broker again on the same directories and I/O backend.
    async fn start_again(&mut self) -> Result<()> {
        let io = Arc::new(self.io.clone()) as Arc<dyn StorageIo>;
        self.broker = Some(run_with_io(self.config.clone(), io).await?);
        Ok(())
    }
}

/// The next answer on a producer stream: correlation id and code (0 for a
/// `ProduceAck`, with its base offset).
async fn answer(s: &mut Stream) -> Result<(u64, u16, Option<u64>)> {
    match s.next().await? {
        Frame::ProduceAck(a) => Ok((a.correlation_id, 0, Some(a.base_offset))),
        Frame::Error(e) => Ok((e.correlation_id, e.code, None)),
        other => bail!("{other:?}"),
    }
}

/// A disk that refuses writes under `dir` (`ENOSPC`).
fn disk_full(dir: PathBuf) -> FaultRule {
    FaultRule::new(IoOp::Write, PathMatch::Under(dir), Fault::Enospc)
}

/// Polls `DescribeTopic` until partition 0 of `topic` is in `state`;
/// its `error`.
async fn wait_for_state(
    session: &Session,
    topic: &str,
    state: PartitionState,
) -> Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = session.describe(topic).await?;
        let p = info.partitions.first().context("no partition")?;
        if p.state == state {
            return Ok(p.error.clone());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{topic}/0 stayed {:?} ({:?}), expected {state:?}",
            p.state,
            p.error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [P10] "Producer stream", per-request failures: a `Produce` whose write
/// fails because the partition's disk is full is answered with
/// `storage_full`, one whose sync fails with `storage_failed`; the stream
/// goes on, and the same batch sent again once the disk works is appended
/// (both codes are retriable). Run in-process: only a fault-injecting
/// backend fills a disk or fails an fsync on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p10_a_failed_write_or_sync_is_storage_full_or_storage_failed() -> Result<()> {
    let broker = InProcess::start().await?;
    let admin = broker.session(ADMIN).await?;
    let info = admin.create_topic_with("demo.p10", topic_config(2)).await?;
    let dir = broker.partition_dir(&info, 0)?;
    let alice = broker.session(ALICE).await?;
    let mut s = alice.open().await?;
    s.send(&produce(1, "demo.p10", 0, record(0, 0))).await?;
    ensure!(answer(&mut s).await? == (1, 0, Some(0)));

    let (mut id, mut next) = (1, 1);
    for (rule, code) in [
        (disk_full(dir.clone()), ErrorCode::StorageFull),
        (
            FaultRule::new(IoOp::Sync, PathMatch::Under(dir.clone()), Fault::Eio),
            ErrorCode::StorageFailed,
        ),
    ] {
        let armed = broker.io.arm(rule);
        id += 1;
        s.send(&produce(id, "demo.p10", 0, record(0, next))).await?;
        let got = answer(&mut s).await?;
        ensure!(got == (id, code.as_u16(), None), "expected {code}: {got:?}");
        ensure!(code.is_retriable());
        // The stream goes on: another partition takes the next batch.
        id += 1;
        s.send(&produce(id, "demo.p10", 1, batch(&["fine"])))
            .await?;
        ensure!(answer(&mut s).await?.1 == 0);
        // The disk works again: the same batch, sent again, is appended
        // right after the last acknowledged record.
        broker.io.disarm(armed);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            id += 1;
            s.send(&produce(id, "demo.p10", 0, record(0, next))).await?;
            match answer(&mut s).await? {
                (_, 0, Some(offset)) => {
                    ensure!(offset == next, "appended at {offset}, expected {next}");
                    next += 1;
                    break;
                }
                (_, c, None) if c == code.as_u16() => {}
                other => bail!("retrying after {code}: {other:?}"),
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "no append within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// [V8] "PartitionState": a partition whose write failed is `fenced`:
/// `DescribeTopic` shows it with an `error`, it still serves reads, and it
/// takes writes again by itself once the disk accepts them (no restart, no
/// request in between), `ok` again with no `error`. Run in-process, as
/// [P10].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v8_a_fenced_partition_serves_reads_and_resumes_by_itself() -> Result<()> {
    let broker = InProcess::start().await?;
    let admin = broker.session(ADMIN).await?;
    let info = admin.create_topic_with("demo.v8", topic_config(1)).await?;
    for offset in 0..2 {
        ensure!(admin.append("demo.v8", 0, record(0, offset)).await? == offset);
    }
    let full = broker.io.arm(disk_full(broker.partition_dir(&info, 0)?));
    match admin.produce_one("demo.v8", 0, record(0, 2)).await? {
        Frame::Error(e) if e.code == ErrorCode::StorageFull.as_u16() => {}
        other => bail!("expected storage_full, got {other:?}"),
    }
    let why = wait_for_state(&admin, "demo.v8", PartitionState::Fenced).await?;
    ensure!(
        why.is_some_and(|w| !w.is_empty()),
        "a fenced partition says why"
    );
    // Reads go on.
    let mut s = admin
        .subscribe(subscribe_partition(
            "demo.v8",
            0,
            StartPosition::Earliest,
            1 << 20,
        ))
        .await?;
    let mut read = Vec::new();
    while read.len() < 2 {
        match s.next().await? {
            Frame::Assignment(_) => {}
            Frame::Records(r) => read.extend(r.batches.iter().map(|b| b.base_offset)),
            other => bail!("reading a fenced partition: {other:?}"),
        }
    }
    ensure!(read == vec![0, 1], "{read:?}");
    // The disk has space again: the partition resumes with no request.
    broker.io.disarm(full);
    let why = wait_for_state(&admin, "demo.v8", PartitionState::Ok).await?;
    ensure!(why.is_none(), "an ok partition has no error: {why:?}");
    ensure!(admin.append("demo.v8", 0, record(0, 2)).await? == 2);
    Ok(())
}

/// [P12] "Producer stream" and "Subscription stream": a partition whose
/// log could not be opened for another reason than damage (here reading
/// its files fails at start) is `partition_unavailable`: each `Produce` to
/// it is answered with that code and the stream goes on, a subscription
/// to it is refused with it, and `DescribeTopic` shows it `unavailable`.
/// Run in-process, as [P10].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p12_a_log_that_cannot_be_opened_is_partition_unavailable() -> Result<()> {
    let mut broker = InProcess::start().await?;
    let admin = broker.session(ADMIN).await?;
    let info = admin.create_topic_with("demo.p12", topic_config(2)).await?;
    for p in 0..2 {
        admin.append("demo.p12", p, record(p, 0)).await?;
    }
    let dir = broker.partition_dir(&info, 1)?;
    drop(admin);
    broker.stop().await;
    broker.io.arm(FaultRule::new(
        IoOp::Open,
        PathMatch::Under(dir),
        Fault::Eio,
    ));
    broker.start_again().await?;

    let admin = broker.session(ADMIN).await?;
    let p = &admin.describe("demo.p12").await?.partitions;
    ensure!(
        p[0].state == PartitionState::Ok && p[1].state == PartitionState::Unavailable,
        "{p:?}"
    );
    let alice = broker.session(ALICE).await?;
    let mut s = alice.open().await?;
    s.send_all(&[
        produce(1, "demo.p12", 1, record(1, 1)),
        produce(2, "demo.p12", 0, record(0, 1)),
    ])
    .await?;
    let got = (answer(&mut s).await?, answer(&mut s).await?);
    ensure!(
        got == (
            (1, ErrorCode::PartitionUnavailable.as_u16(), None),
            (2, 0, Some(1))
        ),
        "{got:?}"
    );
    let mut sub = alice
        .subscribe(subscribe_partition(
            "demo.p12",
            1,
            StartPosition::Earliest,
            1 << 20,
        ))
        .await?;
    sub.expect_ended_with(ErrorCode::PartitionUnavailable)
        .await
        .map(drop)
}
