//! The producer: batching, pipelining and idempotent retries.

mod accumulator;
mod batch;
mod driver;
mod ledger;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admin::ProducerIdentity;
use crate::connection::Client;
use crate::error::ClientError;
use crate::transform::ValueSealer;
use strongbox_protocol::clock::now_ms;

pub(crate) use accumulator::PendingRecord;

/// How a [`Producer`] batches and sends.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Close a partition's batch once it holds this many bytes (it never
    /// exceeds the broker's `max_batch_size`).
    pub batch_bytes: usize,
    /// Close a batch this long after its first record, full or not. Zero
    /// sends every record as soon as the window allows.
    pub linger: Duration,
    /// Most unacknowledged batches on the producer stream; the broker's
    /// `max_in_flight` when `None` (or when smaller).
    pub max_in_flight: Option<u32>,
    /// Memory for records not yet acknowledged; `send` waits for room.
    pub buffer_bytes: usize,
    /// Use an idempotent producer id so retries never write twice.
    /// Without it a batch in flight when the connection drops is sent
    /// again and may be stored twice.
    pub idempotent: bool,
    /// Give up on a record that is not acknowledged this long after it was
    /// sent (while the broker is unreachable, does not answer, or keeps
    /// refusing it with a retriable error): its delivery future then fails
    /// with [`ClientError::Timeout`] naming the last cause. Reconnecting,
    /// resending and retrying all happen within this budget. Default 30 s.
    pub delivery_timeout: Duration,
    /// Rewrites records before they are batched (end-to-end encryption).
    pub sealer: Option<Arc<dyn ValueSealer>>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            batch_bytes: 256 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight: None,
            buffer_bytes: 64 * 1024 * 1024,
            idempotent: true,
            delivery_timeout: Duration::from_secs(30),
            sealer: None,
        }
    }
}

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
    /// The topic.
    pub topic: String,
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
    partition_counts: Mutex<HashMap<String, u32>>,
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
            partition_counts: Mutex::new(HashMap::new()),
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

    /// Queues a record. Waits while the buffer is full; returns a future
    /// that resolves to the record's place once the broker acknowledged it.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidRecord`] for a record that can never be sent
    /// (larger than the buffer), a sealer error, the partition count
    /// lookup failing or not answered within the delivery timeout (records
    /// without a partition need the topic's partition count, fetched once
    /// with `DescribeTopic`), or [`ClientError::Closed`]. Errors of the
    /// delivery itself arrive through the future.
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
        let pending_len = record_size(&record);
        if pending_len > self.buffer_bytes {
            return Err(ClientError::InvalidRecord(format!(
                "a record of {pending_len} bytes is larger than the producer's buffer of {} bytes",
                self.buffer_bytes
            )));
        }
        let permits = u32::try_from(pending_len).unwrap_or(u32::MAX);
        let permit = self
            .memory
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| ClientError::Closed("the producer"))?;
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
        self.tx
            .send(command)
            .await
            .map_err(|_| ClientError::Closed("the producer"))?;
        Ok(DeliveryFuture { rx })
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
        if let Some(n) = self
            .partition_counts
            .lock()
            .ok()
            .and_then(|m| m.get(topic).copied())
        {
            return Ok(n);
        }
        let info = self.client.admin().describe_topic(topic).await?;
        let n = info.config.partitions.max(1);
        if let Ok(mut m) = self.partition_counts.lock() {
            m.insert(topic.to_owned(), n);
        }
        Ok(n)
    }
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
