//! A broker per test and a client that speaks the wire protocol by hand:
//! raw quinn connections, frames encoded with the protocol crate's codec,
//! nothing from the client crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::{Bytes, BytesMut};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::RecordBatch;
use strongbox_protocol::batch::{BatchBuilder, ProducerStamp};
use strongbox_protocol::frame::{DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder};
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::frames::control::{ErrorFrame, Hello, Welcome};
use strongbox_protocol::frames::produce::Produce;
use strongbox_protocol::frames::subscribe::{StartPosition, Subscribe, SubscriptionTarget};
use strongbox_protocol::model::{Durability, TopicConfig, TopicInfo};
use strongbox_protocol::{ALPN, SUPPORTED_VERSIONS};
use strongbox_tests::BrokerProcess;
use strongbox_tests::raw::{Identity, client_config};

/// How long a read waits before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The principals of a development broker.
pub(crate) const ADMIN: &str = "admin";
pub(crate) const ALICE: &str = "alice";
pub(crate) const BOB: &str = "bob";
/// Alice's principal, as the broker maps her certificate.
pub(crate) const ALICE_PRINCIPAL: &str = "spiffe://strongbox.dev/alice";

/// A development broker of its own for one test, stopped (by PID) when
/// dropped.
#[derive(Debug)]
pub(crate) struct Broker {
    pub(crate) process: BrokerProcess,
    _tmp: tempfile::TempDir,
}

impl Broker {
    /// A broker with the default settings.
    pub(crate) fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// A broker whose `[listener]` section also sets `settings` (TOML
    /// values, written as given: `("keepalive", "\"300ms\"")`).
    pub(crate) fn start_with(settings: &[(&str, &str)]) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("dev");
        if !settings.is_empty() {
            strongbox_broker::dev::ensure_dev_dir(&dir, "127.0.0.1:0".parse()?)?;
            let path = dir.join("broker.toml");
            let toml = std::fs::read_to_string(&path)?;
            let extra: String = settings
                .iter()
                .map(|(k, v)| format!("{k} = {v}\n"))
                .collect();
            let (head, tail) = toml
                .split_once("[listener]\n")
                .ok_or_else(|| anyhow!("no [listener] in broker.toml"))?;
            std::fs::write(&path, format!("{head}[listener]\n{extra}{tail}"))?;
        }
        let process = BrokerProcess::start_dev(&dir)?;
        Ok(Self { process, _tmp: tmp })
    }

    /// The development directory (certificates, profiles).
    pub(crate) fn dir(&self) -> &Path {
        &self.process.dir
    }

    /// A QUIC client config presenting `who`'s certificate.
    pub(crate) fn client_config(&self, who: &str) -> Result<quinn::ClientConfig> {
        profile_client_config(self.dir(), who)
    }

    /// A QUIC connection as `who`, before any frame.
    pub(crate) async fn connect(&self, who: &str) -> Result<quinn::Connection> {
        self.connect_with(self.client_config(who)?).await
    }

    /// A QUIC connection with `config`.
    pub(crate) async fn connect_with(
        &self,
        config: quinn::ClientConfig,
    ) -> Result<quinn::Connection> {
        connect_to(self.process.addr, config).await
    }

    /// A connection as `who` past Hello/Welcome.
    pub(crate) async fn session(&self, who: &str) -> Result<Session> {
        let conn = self.connect(who).await?;
        Session::establish(conn, hello()).await
    }

    /// The directory of partition `partition` of the topic whose id is
    /// `topic_id` (docs/STORAGE.md, "Directory layout").
    pub(crate) fn partition_dir(&self, topic_id: &[u8; 16], partition: u32) -> PathBuf {
        let id: String = topic_id.iter().map(|b| format!("{b:02x}")).collect();
        self.process
            .data_dir()
            .join("log")
            .join(id)
            .join(partition.to_string())
    }

    /// A path of the test's temporary directory, outside the broker's.
    pub(crate) fn scratch(&self, name: &str) -> PathBuf {
        self._tmp.path().join(name)
    }

    /// Stops the broker gracefully (SIGTERM), so that its files can be
    /// changed while it is down.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let status = self.process.terminate()?;
        ensure!(status == Some(0), "graceful stop exited with {status:?}");
        Ok(())
    }

    /// Starts the broker again on the same directory (a new port: open new
    /// sessions).
    pub(crate) fn start_again(&mut self) -> Result<()> {
        self.process = BrokerProcess::start_dev(&self.process.dir)?;
        Ok(())
    }

    /// Kills the broker (SIGKILL) and starts it again on the same directory
    /// and the same address, as after a crash.
    pub(crate) fn crash_and_restart_in_place(&mut self) -> Result<()> {
        let addr = self.process.addr;
        self.process.crash()?;
        self.process = BrokerProcess::start_dev_on(&self.process.dir, addr)?;
        Ok(())
    }

    /// The broker's log so far (for failure messages).
    pub(crate) fn log(&self) -> String {
        self.process.log_text()
    }
}

/// A QUIC client config presenting the certificate of profile `who` of the
/// development directory `dev_dir`.
pub(crate) fn profile_client_config(dev_dir: &Path, who: &str) -> Result<quinn::ClientConfig> {
    client_config(
        &std::fs::read(dev_dir.join("ca/ca.pem"))?,
        Some(Identity::profile(dev_dir, who)?),
        &[ALPN],
    )
}

/// A QUIC connection to `addr` with `config`, before any frame.
pub(crate) async fn connect_to(
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection> {
    let endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
    let connecting = endpoint.connect_with(config, addr, "localhost")?;
    Ok(tokio::time::timeout(WAIT, connecting)
        .await
        .context("QUIC handshake hung")??)
}

/// An established connection; its control stream is kept open (dropping
/// it would finish it, which ends the connection).
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) conn: quinn::Connection,
    pub(crate) control: Stream,
    pub(crate) welcome: Welcome,
}

impl Session {
    /// Sends `hello` on a new control stream and expects `Welcome`.
    pub(crate) async fn establish(conn: quinn::Connection, hello: Frame) -> Result<Self> {
        let mut control = Stream::open(&conn).await?;
        control.send(&hello).await?;
        match control.next().await? {
            Frame::Welcome(welcome) => Ok(Self {
                conn,
                control,
                welcome,
            }),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }

    /// A new stream.
    pub(crate) async fn open(&self) -> Result<Stream> {
        Stream::open(&self.conn).await
    }

    /// Sends one admin request on a stream of its own, finishes, and
    /// returns the answer (a response or an `Error`).
    pub(crate) async fn request(&self, request: AdminRequest) -> Result<Frame> {
        let mut s = self.open().await?;
        s.send(&Frame::Request(request)).await?;
        s.finish()?;
        s.next().await
    }

    /// As [`Session::request`], expecting a response.
    pub(crate) async fn ok(&self, request: AdminRequest) -> Result<AdminResponse> {
        match self.request(request.clone()).await? {
            Frame::Response(r) => Ok(r),
            other => bail!("{request:?} answered {other:?}"),
        }
    }

    /// As [`Session::request`], expecting an `Error` with `code` (and
    /// correlation id 0, as on every stream but a producer's).
    pub(crate) async fn refused(
        &self,
        request: AdminRequest,
        code: ErrorCode,
    ) -> Result<ErrorFrame> {
        match self.request(request.clone()).await? {
            Frame::Error(e) if e.code == code.as_u16() && e.correlation_id == 0 => Ok(e),
            other => bail!("{request:?}: expected Error {code}, got {other:?}"),
        }
    }

    /// Creates `name` with `partitions` partitions (the session must be
    /// allowed to).
    pub(crate) async fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        self.create_topic_with(name, topic_config(partitions))
            .await
            .map(drop)
    }

    /// Creates `name` with `config`; the topic as the broker describes it.
    pub(crate) async fn create_topic_with(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<TopicInfo> {
        match self
            .ok(AdminRequest::CreateTopic {
                name: name.into(),
                config,
            })
            .await?
        {
            AdminResponse::Topic(info) => Ok(info),
            other => bail!("CreateTopic {name} answered {other:?}"),
        }
    }

    /// The topic `name` as `DescribeTopic` reports it.
    pub(crate) async fn describe(&self, name: &str) -> Result<TopicInfo> {
        match self
            .ok(AdminRequest::DescribeTopic { name: name.into() })
            .await?
        {
            AdminResponse::Topic(info) => Ok(info),
            other => bail!("DescribeTopic {name} answered {other:?}"),
        }
    }

    /// Waits until the audit trail (read from `_audit` as this session,
    /// which needs `audit`) holds a record containing every one of
    /// `needles`.
    pub(crate) async fn audited(&self, needles: &[&str]) -> Result<()> {
        let mut sub = self
            .subscribe(subscribe_partition(
                "_audit",
                0,
                StartPosition::Earliest,
                u64::MAX / 2,
            ))
            .await?;
        loop {
            match sub.next().await? {
                Frame::Records(r) => {
                    for b in r.batches {
                        let batch = RecordBatch::parse(b.batch)?;
                        for record in batch.records() {
                            let text = String::from_utf8_lossy(&record.value);
                            if needles.iter().all(|n| text.contains(n)) {
                                return Ok(());
                            }
                        }
                    }
                }
                Frame::Assignment(_) => {}
                other => bail!("reading the audit trail for {needles:?}: {other:?}"),
            }
        }
    }

    /// Appends `batch` on a producer stream of its own; the answer.
    pub(crate) async fn produce_one(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<Frame> {
        let mut s = self.open().await?;
        s.send(&produce(1, topic, partition, batch)).await?;
        let answer = s.next().await?;
        s.finish()?;
        Ok(answer)
    }

    /// Appends `batch` and expects a `ProduceAck`; its base offset.
    pub(crate) async fn append(&self, topic: &str, partition: u32, batch: Bytes) -> Result<u64> {
        match self.produce_one(topic, partition, batch).await? {
            Frame::ProduceAck(ack) => Ok(ack.base_offset),
            other => bail!("append to {topic}/{partition}: {other:?}"),
        }
    }

    /// Opens a subscription stream with `subscribe`.
    pub(crate) async fn subscribe(&self, subscribe: Subscribe) -> Result<Stream> {
        let mut s = self.open().await?;
        s.send(&Frame::Subscribe(subscribe)).await?;
        Ok(s)
    }
}

/// A bidirectional stream carrying frames.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    decoder: FrameDecoder,
    /// The client finished its send side (nothing left for the broker to stop).
    finished: bool,
}

/// How a read ended instead of yielding a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The broker finished its send side.
    Finished,
    /// The broker reset the stream with this code.
    Reset(u64),
    /// The connection closed (application close code and reason, or
    /// another cause).
    Closed(Option<u64>, String),
    /// Nothing within [`WAIT`].
    Silent,
    /// Something else.
    Other(String),
}

impl Stream {
    /// Opens a stream (nothing is sent until the first write).
    pub(crate) async fn open(conn: &quinn::Connection) -> Result<Self> {
        let (send, recv) = conn.open_bi().await?;
        Ok(Self {
            send,
            recv,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE),
            finished: false,
        })
    }

    /// Accepts frames up to `max` from now on (what the client announced).
    pub(crate) fn set_max_frame_size(&mut self, max: u32) {
        self.decoder.set_max_frame_size(max);
    }

    /// Writes one frame.
    pub(crate) async fn send(&mut self, frame: &Frame) -> Result<()> {
        let bytes = frame.to_bytes(DEFAULT_MAX_FRAME_SIZE)?;
        self.send_raw(&bytes).await
    }

    /// Writes several frames in one write, so that they arrive together.
    pub(crate) async fn send_all(&mut self, frames: &[Frame]) -> Result<()> {
        let mut buf = BytesMut::new();
        for f in frames {
            f.encode(&mut buf, DEFAULT_MAX_FRAME_SIZE)?;
        }
        self.send_raw(&buf).await
    }

    /// Writes raw bytes.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Finishes the send side.
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.send.finish()?;
        self.finished = true;
        Ok(())
    }

    /// The next frame, or how the stream ended.
    pub(crate) async fn read(&mut self) -> Result<Frame, End> {
        self.read_within(WAIT).await
    }

    /// The next frame within `wait`, or how the stream ended.
    pub(crate) async fn read_within(&mut self, wait: Duration) -> Result<Frame, End> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => {
                    return Err(End::Other(format!(
                        "undecodable bytes from the broker: {e}"
                    )));
                }
            }
            let read = tokio::time::timeout_at(deadline, self.recv.read_chunk(64 * 1024, true));
            match read.await {
                Err(_) => return Err(End::Silent),
                Ok(Ok(Some(chunk))) => self.decoder.extend(&chunk.bytes),
                Ok(Ok(None)) if self.decoder.buffered() == 0 => return Err(End::Finished),
                Ok(Ok(None)) => return Err(End::Other("the stream ended inside a frame".into())),
                Ok(Err(quinn::ReadError::Reset(code))) => {
                    return Err(End::Reset(code.into_inner()));
                }
                Ok(Err(quinn::ReadError::ConnectionLost(e))) => return Err(closed(&e)),
                Ok(Err(e)) => return Err(End::Other(e.to_string())),
            }
        }
    }

    /// The next frame; anything else fails the test.
    pub(crate) async fn next(&mut self) -> Result<Frame> {
        self.read()
            .await
            .map_err(|end| anyhow!("expected a frame: {end:?}"))
    }

    /// Expects that the broker finished the stream, with nothing more.
    pub(crate) async fn expect_finished(&mut self) -> Result<()> {
        match self.read().await {
            Err(End::Finished) => Ok(()),
            Ok(frame) => bail!("expected the end of the stream, got {frame:?}"),
            Err(end) => bail!("expected a clean end of the stream, got {end:?}"),
        }
    }

    /// Expects `Error` (correlation id 0) with `code` next.
    pub(crate) async fn expect_error(&mut self, code: ErrorCode) -> Result<ErrorFrame> {
        match self.read().await {
            Ok(Frame::Error(e)) => {
                ensure!(
                    e.code == code.as_u16(),
                    "Error {} ({}), expected {code}",
                    e.code,
                    e.message
                );
                Ok(e)
            }
            other => bail!("expected Error {code}, got {other:?}"),
        }
    }

    /// Expects the stream to end with an error the way docs/PROTOCOL.md
    /// ("Ending a stream with an error") says: `Error` with correlation id
    /// 0 and `code`, then a clean finish (no reset), and the client's send
    /// side stopped with `code` unless the client had finished it.
    pub(crate) async fn expect_ended_with(&mut self, code: ErrorCode) -> Result<ErrorFrame> {
        let error = self.expect_error(code).await?;
        ensure!(
            error.correlation_id == 0,
            "correlation id {}",
            error.correlation_id
        );
        self.expect_finished().await?;
        if !self.finished {
            self.expect_stopped(code).await?;
        }
        Ok(error)
    }

    /// Expects the broker to have stopped the client's send side with `code`.
    pub(crate) async fn expect_stopped(&mut self, code: ErrorCode) -> Result<()> {
        let stopped = tokio::time::timeout(WAIT, self.send.stopped())
            .await
            .context("the broker did not stop the client's send side")?;
        match stopped {
            Ok(Some(c)) => {
                ensure!(
                    c.into_inner() == u64::from(code.as_u16()),
                    "stopped with {c}, expected {code}"
                );
                Ok(())
            }
            other => bail!("expected STOP_SENDING {code}, got {other:?}"),
        }
    }

    /// Expects nothing from the broker for `quiet` (the stream stays open).
    pub(crate) async fn expect_quiet(&mut self, quiet: Duration) -> Result<()> {
        match self.read_within(quiet).await {
            Err(End::Silent) => Ok(()),
            other => bail!("expected silence, got {other:?}"),
        }
    }
}

fn closed(e: &quinn::ConnectionError) -> End {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => End::Closed(
            Some(c.error_code.into_inner()),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => End::Closed(None, other.to_string()),
    }
}

/// Waits for the broker to close `conn`; the application close code and
/// reason.
pub(crate) async fn closed_with(conn: &quinn::Connection, code: ErrorCode) -> Result<String> {
    let e = tokio::time::timeout(WAIT, conn.closed())
        .await
        .context("the broker did not close the connection")?;
    match closed(&e) {
        End::Closed(Some(c), reason) if c == u64::from(code.as_u16()) => Ok(reason),
        other => bail!("closed with {other:?}, expected {code}"),
    }
}

/// The `Hello` of a version 1 client accepting default-size frames.
pub(crate) fn hello() -> Frame {
    hello_with(SUPPORTED_VERSIONS.to_vec(), DEFAULT_MAX_FRAME_SIZE)
}

/// A `Hello` with the given versions and frame size.
pub(crate) fn hello_with(versions: Vec<u16>, max_frame_size: u32) -> Frame {
    Frame::Hello(Hello {
        versions,
        client_name: "conformance".into(),
        max_frame_size,
        features: 0,
    })
}

/// A topic config with `partitions` partitions, fsync durability and the
/// broker's defaults for the rest.
pub(crate) fn topic_config(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        durability: Durability::Fsync,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: None,
        segment_ms: None,
        dedicated_kek: false,
    }
}

/// A plain (not idempotent) batch of `values`, one record each.
pub(crate) fn batch(values: &[&str]) -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for (i, v) in values.iter().enumerate() {
        b.push(1_700_000_000_000 + i as i64, Some(b"k"), &[], v.as_bytes())
            .expect("record fits");
    }
    b.finish().expect("batch encodes")
}

/// An idempotent batch of `count` records stamped `stamp`.
pub(crate) fn stamped(stamp: ProducerStamp, count: u32) -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    b.producer(stamp);
    for i in 0..count {
        b.push(1_700_000_000_000, None, &[], format!("v{i}").as_bytes())
            .expect("record fits");
    }
    b.finish().expect("batch encodes")
}

/// A batch of about `size` bytes (one record).
pub(crate) fn batch_of_size(size: usize) -> Bytes {
    let value = vec![b'x'; size.saturating_sub(38 + 18)];
    let mut b = BatchBuilder::new(1_700_000_000_000);
    b.push(1_700_000_000_000, None, &[], &value)
        .expect("record fits");
    b.finish().expect("batch encodes")
}

/// Recomputes the CRC of a batch changed on purpose, so that the broker
/// judges the change and not the checksum.
pub(crate) fn reseal(batch: &mut [u8]) {
    let mut crc = crc32c::crc32c(&batch[..34]);
    crc = crc32c::crc32c_append(crc, &batch[38..]);
    batch[34..38].copy_from_slice(&crc.to_be_bytes());
}

/// A `Produce` frame.
pub(crate) fn produce(correlation_id: u64, topic: &str, partition: u32, batch: Bytes) -> Frame {
    Frame::Produce(Produce {
        correlation_id,
        topic: topic.into(),
        partition,
        batch,
    })
}

/// A one-partition `Subscribe`.
pub(crate) fn subscribe_partition(
    topic: &str,
    partition: u32,
    start: StartPosition,
    credit: u64,
) -> Subscribe {
    Subscribe {
        topic: topic.into(),
        target: SubscriptionTarget::Partition(partition),
        start,
        credit,
        skip_damaged: false,
    }
}

/// A group `Subscribe`.
pub(crate) fn subscribe_group(
    topic: &str,
    group: &str,
    start: StartPosition,
    credit: u64,
) -> Subscribe {
    Subscribe {
        topic: topic.into(),
        target: SubscriptionTarget::Group(group.into()),
        start,
        credit,
        skip_damaged: false,
    }
}

/// Frame bytes built by hand: `type` and `body` behind a correct length.
pub(crate) fn raw_frame(frame_type: u16, body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len() + 2)
        .expect("small body")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The encoded body of `frame` (its bytes after length and type).
pub(crate) fn body_of(frame: &Frame) -> Vec<u8> {
    frame.to_bytes(DEFAULT_MAX_FRAME_SIZE).expect("encodes")[6..].to_vec()
}

/// Runs `test` with a broker's log attached to its failure.
pub(crate) async fn with_log<F>(broker: &Broker, test: F) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    test.await
        .with_context(|| format!("broker log:\n{}", broker.log()))
}
