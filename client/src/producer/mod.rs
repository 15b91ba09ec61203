//! The producer: batching, pipelining and idempotent retries.

mod accumulator;
mod batch;
mod driver;
mod ledger;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admin::ProducerIdentity;
use crate::connection::Client;
use crate::error::ClientError;
use crate::transform::ValueSealer;
use strongbox_protocol::clock::now_ms;

pub(crate) use accumulator::PendingRecord;

/// How a [`Producer`] batches and sends.
///
/// The defaults are the fast ones; most applications change nothing.
///
/// **Batching.** With the default `linger` of zero, batching adapts to the
/// load: a record sent while its partition's pipeline has room (fewer than
/// [`partition_pipeline`](Self::partition_pipeline) batches of the partition
/// queued or in flight) goes out at once, alone or with the records that
/// arrived in the same instant; while the pipeline is full, records
/// collect into one batch that grows until an earlier batch is
/// acknowledged or it reaches [`batch_bytes`](Self::batch_bytes). A light
/// load gets the latency of one round trip and one disk sync; a heavy one
/// gets full batches. A nonzero `linger` is an opt-in for fewer, larger
/// batches at light load: every batch that is not full then waits that
/// long after its first record.
///
/// **Back-pressure.** [`buffer_bytes`](Self::buffer_bytes) bounds the
/// records sent but not yet acknowledged, and so the time a record spends
/// queued in the producer when the application sends faster than the
/// broker acknowledges (about `buffer_bytes` divided by the acknowledged
/// bytes per second). When it is full, [`Producer::send`] waits for room (at
/// most the delivery timeout) and [`Producer::try_send`] returns
/// [`TrySendError::WouldBlock`] with the record.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Close a partition's batch once it holds this many bytes (it never
    /// exceeds the broker's `max_batch_size`). Default 256 KiB.
    pub batch_bytes: usize,
    /// Zero (the default): adaptive batching, see above. Otherwise a batch
    /// that is not full closes this long after its first record, whatever
    /// the pipeline holds: larger batches at light load, for a latency of
    /// up to `linger` more.
    pub linger: Duration,
    /// Adaptive batching (linger zero): a batch that is not full goes out
    /// while fewer than this many batches of its partition are queued or in
    /// flight. Default 2: one batch being made durable by the broker, the
    /// next written behind it. 1 gives fewer, larger batches; more gives
    /// smaller ones at a higher cost per record. At least 1.
    pub partition_pipeline: u32,
    /// Most unacknowledged batches on the producer stream; the broker's
    /// `max_in_flight` when `None` (or when smaller).
    pub max_in_flight: Option<u32>,
    /// Memory for records not yet acknowledged. When it is full, `send`
    /// waits for room and `try_send` returns
    /// [`TrySendError::WouldBlock`]. It bounds the time records queue in the
    /// producer under overload: 8 MiB (the default) is about 28 ms of
    /// queueing at 300 MB/s. A larger buffer absorbs longer bursts at the
    /// cost of that latency.
    pub buffer_bytes: usize,
    /// Use an idempotent producer id so retries never write twice.
    /// Without it a batch in flight when the connection drops is sent
    /// again and may be stored twice.
    pub idempotent: bool,
    /// Give up on a record that is not acknowledged this long after it was
    /// sent (while the broker is unreachable, does not answer, or keeps
    /// refusing it with a retriable error): its delivery future then fails
    /// with [`ClientError::Timeout`] naming the last cause. Reconnecting,
    /// resending and retrying all happen within this budget. `send` also
    /// waits at most this long for room in a full buffer. Default 30 s.
    pub delivery_timeout: Duration,
    /// Rewrites records before they are batched (end-to-end encryption).
    pub sealer: Option<Arc<dyn ValueSealer>>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            batch_bytes: 256 * 1024,
            linger: Duration::ZERO,
            partition_pipeline: 2,
            max_in_flight: None,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            idempotent: true,
            delivery_timeout: Duration::from_secs(30),
            sealer: None,
        }
    }
}

/// The default [`ProducerConfig::buffer_bytes`].
pub const DEFAULT_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// One record to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: String,
    /// The partition; chosen by key hash (or sticky round robin without a
    /// key) when `None`.
    pub partition: Option<u32>,
    /// The key.
    pub key: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The value.
    pub value: Bytes,
    /// Milliseconds since the Unix epoch; now when `None`.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            value: value.into(),
            ..Self::default()
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the partition.
    #[must_use]
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    #[must_use]
    pub fn timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordMetadata {
    /// The topic, shared by the records of one batch.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The record's offset in the partition.
    pub offset: u64,
}

/// Resolves when the broker has acknowledged (made durable) one record.
#[derive(Debug)]
#[must_use = "a delivery future does nothing unless awaited; dropping it does not cancel the send"]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed("the producer"))))
    }
}

/// Commands from the handle to the driver task.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        topic: String,
        partition: Option<u32>,
        /// The topic's partition count, when the producer chooses the
        /// partition.
        partitions: Option<u32>,
        record: PendingRecord,
    },
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Publishes records: batches them per partition, keeps up to the
/// broker's `max_in_flight` batches on one stream, and retries across
/// reconnects without writing any record twice.
///
/// [`send`](Producer::send) waits only for buffer memory and returns a
/// [`DeliveryFuture`] that resolves to the record's offset once it is
/// durable. Records of one partition are stored in the order `send` was
/// called.
///
/// ```no_run
/// use strongbox_client::{Client, ClientConfig, ProducerConfig, ProducerRecord};
///
/// # async fn run() -> Result<(), strongbox_client::ClientError> {
/// let client = Client::connect(ClientConfig::from_profile("strongbox-dev/profiles/alice.toml")?).await?;
/// let producer = client.producer(ProducerConfig::default()).await?;
///
/// // Fire many, then wait for the acknowledgements.
/// let mut pending = Vec::new();
/// for i in 0..1000 {
///     let record = ProducerRecord::new("demo.greetings", format!("hello {i}"))
///         .key(format!("user-{}", i % 10))
///         .header("kind", "greeting");
///     pending.push(producer.send(record).await?);
/// }
/// for delivery in pending {
///     let meta = delivery.await?;
///     println!("stored at {}/{}@{}", meta.topic, meta.partition, meta.offset);
/// }
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Producer {
    client: Client,
    tx: mpsc::Sender<Command>,
    memory: Arc<Semaphore>,
    buffer_bytes: usize,
    partition_counts: Arc<Mutex<HashMap<String, u32>>>,
    /// Topics whose partition count is being fetched for `try_send`.
    fetching: Arc<Mutex<HashSet<String>>>,
    /// The runtime the producer was made in: `try_send` is not async, and
    /// may be called from a thread outside it.
    runtime: tokio::runtime::Handle,
    sealer: Option<Arc<dyn ValueSealer>>,
    identity: Arc<Mutex<Option<ProducerIdentity>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    delivery_timeout: Duration,
}

impl Producer {
    /// Creates a producer; an idempotent one first asks the broker for a
    /// producer id (`InitProducer`).
    ///
    /// # Errors
    ///
    /// As [`Admin::init_producer`](crate::Admin::init_producer).
    pub async fn new(client: &Client, config: ProducerConfig) -> Result<Self, ClientError> {
        let identity = if config.idempotent {
            Some(client.admin().init_producer(None).await?)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(1024);
        let buffer_bytes = config.buffer_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let memory = Arc::new(Semaphore::new(buffer_bytes));
        let sealer = config.sealer.clone();
        let delivery_timeout = config.delivery_timeout;
        let identity = Arc::new(Mutex::new(identity));
        let driver = driver::Driver::new(client.clone(), config, identity.clone(), rx);
        let task = tokio::spawn(driver.run());
        Ok(Self {
            client: client.clone(),
            tx,
            memory,
            buffer_bytes,
            partition_counts: Arc::new(Mutex::new(HashMap::new())),
            fetching: Arc::new(Mutex::new(HashSet::new())),
            runtime: tokio::runtime::Handle::current(),
            sealer,
            identity,
            task: Mutex::new(Some(task)),
            delivery_timeout,
        })
    }

    /// The idempotent producer id and its current epoch, when idempotent.
    /// The epoch changes when the producer had to give up on batches the
    /// broker may have stored, so their sequence numbers are never reused.
    pub fn identity(&self) -> Option<ProducerIdentity> {
        self.identity.lock().ok().and_then(|i| *i)
    }

    /// Queues a record. Waits while the buffer is full (at most the
    /// delivery timeout); returns a future that resolves to the record's
    /// place once the broker acknowledged it.
    ///
    /// The wait for room is the producer's back-pressure: when the
    /// application sends faster than the broker acknowledges, `send` takes
    /// as long as it takes the broker to make room. Use
    /// [`Producer::try_send`] to be told instead of waiting.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidRecord`] for a record that can never be sent
    /// (larger than the buffer), a sealer error, the partition count
    /// lookup failing or not answered within the delivery timeout (records
    /// without a partition need the topic's partition count, fetched once
    /// with `DescribeTopic`), [`ClientError::Timeout`] when the buffer stays
    /// full for the whole delivery timeout, or [`ClientError::Closed`].
    /// Errors of the delivery itself arrive through the future.
    pub async fn send(&self, mut record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        if let Some(t) = &self.sealer {
            t.seal(&mut record)?;
        }
        let partitions = match record.partition {
            Some(_) => None,
            None => Some(
                tokio::time::timeout(self.delivery_timeout, self.partition_count(&record.topic))
                    .await
                    .map_err(|_| {
                        ClientError::Timeout(format!(
                            "the partition count of {} could not be fetched within the delivery \
                             timeout of {:?}",
                            record.topic, self.delivery_timeout
                        ))
                    })??,
            ),
        };
        let permits = self.permits_for(&record)?;
        let permit = tokio::time::timeout(
            self.delivery_timeout,
            self.memory.clone().acquire_many_owned(permits),
        )
        .await
        .map_err(|_| {
            ClientError::Timeout(format!(
                "the producer's buffer of {} bytes stayed full for the delivery timeout of {:?}: \
                 the broker acknowledges records more slowly than they are sent (or not at all)",
                self.buffer_bytes, self.delivery_timeout
            ))
        })?
        .map_err(|_| ClientError::Closed("the producer"))?;
        let (command, delivery) = command(record, partitions, permit);
        self.tx
            .send(command)
            .await
            .map_err(|_| ClientError::Closed("the producer"))?;
        Ok(delivery)
    }

    /// Queues a record if that needs no waiting: the non-blocking
    /// [`Producer::send`]. When the producer's buffer is full (the broker
    /// acknowledges more slowly than records are sent), the record comes
    /// back, unchanged, in [`TrySendError::WouldBlock`], so the caller can
    /// slow down, drop or divert it, or wait with `send`.
    ///
    /// A record without a partition needs its topic's partition count: the
    /// first `try_send` to a topic starts fetching it and returns
    /// `WouldBlock`; later ones go through once it is known.
    ///
    /// ```no_run
    /// use strongbox_client::{Producer, ProducerRecord, TrySendError};
    ///
    /// # async fn run(producer: &Producer) -> Result<(), strongbox_client::ClientError> {
    /// let record = ProducerRecord::new("demo.metrics", "cpu=0.93").partition(0);
    /// match producer.try_send(record) {
    ///     Ok(delivery) => drop(delivery), // queued; await it to know it is stored
    ///     Err(TrySendError::WouldBlock(record)) => {
    ///         // Overloaded: this sample can wait for room (or be dropped).
    ///         producer.send(*record).await?;
    ///     }
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`TrySendError::WouldBlock`] as above; [`TrySendError::Failed`] with
    /// the errors of [`Producer::send`] that waiting cannot fix.
    pub fn try_send(&self, record: ProducerRecord) -> Result<DeliveryFuture, TrySendError> {
        let would_block = |record| Err(TrySendError::WouldBlock(Box::new(record)));
        let partitions = match record.partition {
            Some(_) => None,
            None => match self.cached_partition_count(&record.topic) {
                Some(n) => Some(n),
                None => {
                    self.fetch_partition_count(&record.topic);
                    return would_block(record);
                }
            },
        };
        let slot = match self.tx.try_reserve() {
            Ok(slot) => slot,
            Err(mpsc::error::TrySendError::Full(())) => return would_block(record),
            Err(mpsc::error::TrySendError::Closed(())) => {
                return Err(ClientError::Closed("the producer").into());
            }
        };
        // Seal a copy, so the record handed back is the caller's own.
        let (original, sealed) = match &self.sealer {
            Some(t) => {
                let mut sealed = record.clone();
                t.seal(&mut sealed)?;
                (Some(record), sealed)
            }
            None => (None, record),
        };
        let permits = self.permits_for(&sealed)?;
        let permit = match self.memory.clone().try_acquire_many_owned(permits) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return would_block(original.unwrap_or(sealed)),
            Err(TryAcquireError::Closed) => return Err(ClientError::Closed("the producer").into()),
        };
        let (command, delivery) = command(sealed, partitions, permit);
        slot.send(command);
        Ok(delivery)
    }

    /// The buffer permits `record` needs.
    fn permits_for(&self, record: &ProducerRecord) -> Result<u32, ClientError> {
        let pending_len = record_size(record);
        if pending_len > self.buffer_bytes {
            return Err(ClientError::InvalidRecord(format!(
                "a record of {pending_len} bytes is larger than the producer's buffer of {} bytes \
                 (raise ProducerConfig::buffer_bytes)",
                self.buffer_bytes
            )));
        }
        Ok(u32::try_from(pending_len).unwrap_or(u32::MAX))
    }

    /// Sends a record and waits for its acknowledgement.
    ///
    /// # Errors
    ///
    /// As [`Producer::send`], and the delivery's error.
    pub async fn send_and_wait(
        &self,
        record: ProducerRecord,
    ) -> Result<RecordMetadata, ClientError> {
        self.send(record).await?.await
    }

    /// Sends every record queued so far at once (ignoring `linger`) and
    /// waits until each is acknowledged or failed.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when the producer is closed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(tx))
            .await
            .map_err(|_| ClientError::Closed("the producer"))?;
        rx.await.map_err(|_| ClientError::Closed("the producer"))
    }

    /// Flushes, then ends the producer stream. Records sent afterwards fail
    /// with [`ClientError::Closed`].
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when already closed.
    pub async fn close(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Close(tx))
            .await
            .map_err(|_| ClientError::Closed("the producer"))?;
        let result = rx.await.map_err(|_| ClientError::Closed("the producer"));
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        result
    }

    /// The partition count of `topic`, from the cache or `DescribeTopic`.
    async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(n) = self.cached_partition_count(topic) {
            return Ok(n);
        }
        let n = describe_partitions(&self.client, topic).await?;
        if let Ok(mut m) = self.partition_counts.lock() {
            m.insert(topic.to_owned(), n);
        }
        Ok(n)
    }

    fn cached_partition_count(&self, topic: &str) -> Option<u32> {
        self.partition_counts
            .lock()
            .ok()
            .and_then(|m| m.get(topic).copied())
    }

    /// Starts fetching the partition count of `topic` in the background
    /// (for `try_send`, which cannot wait), unless a fetch is under way.
    fn fetch_partition_count(&self, topic: &str) {
        let started = self
            .fetching
            .lock()
            .is_ok_and(|mut f| f.insert(topic.to_owned()));
        if !started {
            return;
        }
        let (client, counts, fetching) = (
            self.client.clone(),
            self.partition_counts.clone(),
            self.fetching.clone(),
        );
        let (topic, timeout) = (topic.to_owned(), self.delivery_timeout);
        self.runtime.spawn(async move {
            // A failure is not reported here: the next `try_send` starts
            // another fetch, and `send` reports the error.
            if let Ok(Ok(n)) =
                tokio::time::timeout(timeout, describe_partitions(&client, &topic)).await
                && let Ok(mut m) = counts.lock()
            {
                m.insert(topic.clone(), n);
            }
            if let Ok(mut f) = fetching.lock() {
                f.remove(&topic);
            }
        });
    }
}

/// Why [`Producer::try_send`] did not queue a record.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum TrySendError {
    /// Queuing the record would have to wait: the producer's buffer is full
    /// because the broker acknowledges more slowly than records are sent
    /// (or the topic's partition count is still being fetched). The record
    /// is handed back unchanged.
    #[error(
        "the producer's buffer is full: the broker acknowledges more slowly than records are \
         sent (try again later, or wait for room with send)"
    )]
    WouldBlock(Box<ProducerRecord>),
    /// The record can never be sent, or the producer is closed: the errors
    /// of [`Producer::send`] that waiting cannot fix.
    #[error(transparent)]
    Failed(#[from] ClientError),
}

impl TrySendError {
    /// The record handed back by [`TrySendError::WouldBlock`].
    pub fn into_record(self) -> Option<ProducerRecord> {
        match self {
            Self::WouldBlock(record) => Some(*record),
            Self::Failed(_) => None,
        }
    }
}

impl From<TrySendError> for ClientError {
    /// `WouldBlock` becomes [`ClientError::Timeout`] (the record could not be
    /// queued in time: no time at all); `Failed` its error.
    fn from(e: TrySendError) -> Self {
        match e {
            TrySendError::WouldBlock(_) => ClientError::Timeout(e.to_string()),
            TrySendError::Failed(e) => e,
        }
    }
}

/// The topic's partition count, by `DescribeTopic`.
async fn describe_partitions(client: &Client, topic: &str) -> Result<u32, ClientError> {
    let info = client.admin().describe_topic(topic).await?;
    Ok(info.config.partitions.max(1))
}

/// The driver's command for `record`, and the future its delivery
/// resolves.
fn command(
    record: ProducerRecord,
    partitions: Option<u32>,
    permit: OwnedSemaphorePermit,
) -> (Command, DeliveryFuture) {
    let (completion, rx) = oneshot::channel();
    let timestamp = record.timestamp.unwrap_or_else(now_ms);
    let command = Command::Send {
        topic: record.topic,
        partition: record.partition,
        partitions,
        record: PendingRecord {
            timestamp,
            key: record.key,
            headers: record.headers,
            value: record.value,
            completion,
            permit: Some(permit),
        },
    };
    (command, DeliveryFuture { rx })
}

/// Bytes a record holds in the producer's buffer: what it will add to a
/// batch.
fn record_size(record: &ProducerRecord) -> usize {
    strongbox_protocol::batch::record_len(
        record.key.as_ref().map_or(0, Bytes::len),
        record.headers.iter().map(|(n, v)| (n.len(), v.len())),
        record.value.len(),
    )
}
