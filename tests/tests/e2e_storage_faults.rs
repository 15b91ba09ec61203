//! A full disk and a failing fsync under a running broker: a broker
//! (in this process, so its partition logs can sit on the fault-injecting
//! I/O backend) serves real QUIC clients. While the partition's disk
//! refuses writes, a producer gets the coded error (`storage_full`, then
//! `storage_failed` for a failing fsync) promptly, and `topic describe`
//! and the metrics show the partition fenced. Once
//! the disk works again the same partition takes writes with no restart,
//! every acknowledged record is still there, and a graceful stop logs no
//! "closing the log failed".

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use strongbox_broker::config::BrokerConfig;
use strongbox_broker::dev::ensure_dev_dir;
use strongbox_broker::server::run_with_io;
use strongbox_client::{Client, ProducerConfig, ProducerRecord};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::BatchBuilder;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::produce::Produce;
use strongbox_protocol::model::PartitionState;
use strongbox_storage::io::{Fault, FaultRule, FaultyIo, IoOp, PathMatch, StorageIo};
use strongbox_tests::client::{connect, read_n, topic};
use strongbox_tests::raw::{self, FrameStream};

/// A generous bound on "promptly": the broker used to leave producers
/// waiting for minutes.
const PROMPTLY: Duration = Duration::from_secs(30);

/// Captures what the broker logs at ERROR level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

fn record(value: String) -> ProducerRecord {
    ProducerRecord {
        topic: "faulty".into(),
        partition: Some(0),
        value: Bytes::from(value),
        ..ProducerRecord::default()
    }
}

async fn state_of(client: &Client) -> Result<(PartitionState, Option<String>)> {
    let info = client.admin().describe_topic("faulty").await?;
    let p = info.partitions.first().context("a partition")?;
    Ok((p.state, p.error.clone()))
}

async fn wait_for_state(client: &Client, wanted: PartitionState) -> Result<Option<String>> {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let (state, why) = state_of(client).await?;
        if state == wanted {
            return Ok(why);
        }
        if Instant::now() > deadline {
            bail!("the partition stayed {state:?} ({why:?}), expected {wanted:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_gets_the_coded_error_and_later_succeeds_without_a_restart() -> Result<()> {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish(),
    )
    .context("installing the log capture")?;

    let root = tempfile::tempdir()?;
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    let layout = ensure_dev_dir(&root.path().join("dev"), listen)?;
    let mut config = BrokerConfig::load(&layout.config)?.validate()?;
    config.listener.addr = listen;
    config.metrics.enabled = false;
    let io = FaultyIo::new();
    let broker = run_with_io(config, Arc::new(io.clone()) as Arc<dyn StorageIo>).await?;
    layout.set_broker_addr(broker.addr)?;
    let admin: PathBuf = layout
        .profile("admin")
        .context("admin profile")?
        .path
        .clone();
    let client = connect(&admin).await?;
    let info = client.admin().create_topic("faulty", topic(1)).await?;
    let dir = broker
        .state
        .partitions
        .topics()
        .data_dir()
        .join("log")
        .join(hex(&info.topic_id))
        .join("0");

    let producer = client.producer(ProducerConfig::default()).await?;
    for i in 0..10 {
        let m = producer.send_and_wait(record(format!("v{i}"))).await?;
        ensure!(m.offset == i, "offset {} for v{i}", m.offset);
    }

    // A producer on the wire, to see each answer's code as the broker
    // sends it (the client library retries retriable codes).
    let conn = raw::connect(broker.addr, raw::profile_config(&layout.dir, "admin")?).await?;
    let (control, _) = raw::handshake(&conn).await?;
    let _pings = raw::keep_alive(control);
    let mut wire = FrameStream::open(&conn).await?;

    // The partition's disk is full.
    let full = io.arm(FaultRule::new(
        IoOp::Write,
        PathMatch::Under(dir.clone()),
        Fault::Enospc,
    ));
    let started = Instant::now();
    let code = refused(&mut wire, 1, "refused").await?;
    ensure!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    ensure!(code == ErrorCode::StorageFull, "{code}");
    let why = wait_for_state(&client, PartitionState::Fenced).await?;
    ensure!(
        why.as_deref().is_some_and(|w| w.contains("storage_full")),
        "{why:?}"
    );
    let fenced = "strongbox_partition_state{partition=\"0\",state=\"fenced\",topic=\"faulty\"} 1";
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let metrics = broker.state.metrics.encode()?;
        if metrics.lines().any(|l| l == fenced) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the metrics never showed {fenced}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Space is freed: the same partition takes writes again, no restart.
    io.disarm(full);
    wait_for_state(&client, PartitionState::Ok).await?;
    ensure!(
        acked(&mut wire, 2, "v10").await? == 10,
        "continues right after"
    );

    // An fsync that fails: the append it covered fails with the coded
    // error; the log resumes from its last durable point once syncs work.
    let failing = io.arm(FaultRule::new(
        IoOp::Sync,
        PathMatch::Under(dir.clone()),
        Fault::Eio,
    ));
    let code = refused(&mut wire, 3, "unsynced").await?;
    ensure!(code == ErrorCode::StorageFailed, "{code}");
    wait_for_state(&client, PartitionState::Fenced).await?;
    io.disarm(failing);
    wait_for_state(&client, PartitionState::Ok).await?;
    let m = producer.send_and_wait(record("v11".into())).await?;
    ensure!(
        m.offset == 11,
        "the unacknowledged offset is taken again: {}",
        m.offset
    );
    ensure!(
        io.syncs_after_failure() == 0,
        "an fsync was retried on a failed descriptor"
    );
    drop(wire);
    conn.close(0u32.into(), b"done");

    // Every acknowledged record, in order, and nothing that was refused.
    let mut consumer = client
        .subscribe(
            strongbox_client::Subscription::partition("faulty", 0),
            strongbox_client::ConsumerConfig::default(),
        )
        .await?;
    let read = read_n(&mut consumer, 12).await?;
    let got: Vec<(u64, String)> = read
        .iter()
        .map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned()))
        .collect();
    let want: Vec<(u64, String)> = (0..12).map(|i| (i, format!("v{i}"))).collect();
    ensure!(got == want, "{got:?}");
    drop(consumer);
    producer.close().await?;
    client.close().await;

    broker.shutdown().await;
    let logged = captured.text();
    ensure!(
        !logged.contains("closing the log failed"),
        "a partition that resumed must close cleanly:\n{logged}"
    );
    Ok(())
}

fn produce(correlation_id: u64, value: &str) -> Result<Frame> {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    b.push(1_700_000_000_000, None, &[], value.as_bytes())?;
    Ok(Frame::Produce(Produce {
        correlation_id,
        topic: "faulty".into(),
        partition: 0,
        batch: b.finish()?,
    }))
}

/// Sends one record and returns the code the broker refused it with.
async fn refused(wire: &mut FrameStream, correlation_id: u64, value: &str) -> Result<ErrorCode> {
    wire.send(&produce(correlation_id, value)?).await?;
    match tokio::time::timeout(PROMPTLY, wire.next()).await {
        Ok(Ok(Frame::Error(e))) if e.correlation_id == correlation_id => {
            e.error_code().context("a known code")
        }
        Ok(other) => bail!("expected an error for {correlation_id}, got {other:?}"),
        Err(_) => bail!("no answer within {PROMPTLY:?}"),
    }
}

/// Sends one record and returns the offset the broker acknowledged.
async fn acked(wire: &mut FrameStream, correlation_id: u64, value: &str) -> Result<u64> {
    wire.send(&produce(correlation_id, value)?).await?;
    match tokio::time::timeout(PROMPTLY, wire.next()).await {
        Ok(Ok(Frame::ProduceAck(a))) if a.correlation_id == correlation_id => Ok(a.base_offset),
        Ok(other) => bail!("expected an ack for {correlation_id}, got {other:?}"),
        Err(_) => bail!("no answer within {PROMPTLY:?}"),
    }
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
