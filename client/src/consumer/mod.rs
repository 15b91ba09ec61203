//! The consumer: a `Stream` of records from partitions or a consumer group.

mod credit;
mod driver;

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use strongbox_protocol::frames::subscribe::{Assignment, StartPosition, SubscriptionTarget};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::connection::Client;
use crate::error::ClientError;
use crate::transform::ValueOpener;

use driver::{SubCommand, SubDriver};

/// One record read from a partition. Key and value share the buffer the
/// batch arrived in (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The topic, shared by every record of the subscription (one
    /// allocation per subscription rather than one per record).
    pub topic: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The record's offset.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, as the producer set it.
    pub timestamp: i64,
    /// The key.
    pub key: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The value.
    pub value: Bytes,
}

impl ConsumedRecord {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// What a consumer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One partition.
    Partition(u32),
    /// Several partitions, each on its own stream.
    Partitions(Vec<u32>),
    /// Every partition of the topic (the count comes from `DescribeTopic`).
    AllPartitions,
    /// Join a consumer group: the broker assigns partitions and resumes
    /// each from the group's committed offset.
    Group(String),
}

/// A topic, what to read of it, and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic.
    pub topic: String,
    /// Partitions or a group.
    pub target: Target,
    /// Where to start (for a group: only where it has no committed offset).
    pub start: StartPosition,
}

impl Subscription {
    /// One partition, from the earliest retained record.
    pub fn partition(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            target: Target::Partition(partition),
            start: StartPosition::Earliest,
        }
    }

    /// Every partition, from the earliest retained record.
    pub fn all_partitions(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            target: Target::AllPartitions,
            start: StartPosition::Earliest,
        }
    }

    /// A consumer group, from the earliest record where it has no commit.
    pub fn group(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            target: Target::Group(group.into()),
            start: StartPosition::Earliest,
        }
    }

    /// Sets the start position.
    #[must_use]
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }
}

/// How a [`Consumer`] reads.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Bytes of records the broker may send ahead of the application, per
    /// subscription stream. Memory stays within this plus one frame.
    pub credit_window: u64,
    /// Rewrites records before they are yielded (end-to-end decryption).
    pub opener: Option<Arc<dyn ValueOpener>>,
    /// Longest time a subscription may take to be established: connecting,
    /// subscribing, and resubscribing after a lost connection or a
    /// retriable refusal (`shutting_down`, `partition_unavailable`, ...),
    /// each time counted from when the subscription was lost. When it
    /// passes, the subscription ends with [`ClientError::Timeout`]. Waiting
    /// for new records on an established subscription (a live tail) is
    /// never limited.
    pub subscribe_timeout: Duration,
    /// After the broker reports a damaged range of a partition, go on from
    /// the end of the range instead of stopping that partition (the
    /// protocol's `SKIP_DAMAGED`). Either way the range is reported as a
    /// [`ClientError::PartitionDamaged`] item.
    pub skip_damaged: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            credit_window: 2 * 1024 * 1024,
            opener: None,
            subscribe_timeout: Duration::from_secs(30),
            skip_damaged: false,
        }
    }
}

/// One item of the stream.
pub(crate) type Item = Result<ConsumedRecord, ClientError>;

/// What subscription tasks tell the consumer.
#[derive(Debug)]
pub(crate) enum Event {
    Assigned {
        index: usize,
        assignment: Assignment,
    },
    Batch {
        index: usize,
        items: VecDeque<Item>,
        cost: u64,
    },
    /// A partition of this subscription is damaged; the stream goes on.
    Report { error: ClientError },
    Ended {
        index: usize,
        error: Option<ClientError>,
    },
}

#[derive(Debug)]
struct SubHandle {
    commands: mpsc::UnboundedSender<SubCommand>,
    task: Option<JoinHandle<()>>,
    ended: bool,
}

/// Reads records as a [`futures::Stream`] of
/// `Result<`[`ConsumedRecord`]`, `[`ClientError`]`>`.
///
/// Records of a partition arrive in offset order. The broker sends only as
/// many bytes as the consumer's credit window allows; credit is given back
/// as the application takes records, so a slow application slows its
/// subscription down instead of growing memory. After a dropped connection
/// the consumer reconnects and resumes after the last record it delivered
/// (partitions) or from the group's committed offsets (groups), skipping
/// records it already delivered.
///
/// An `Err` item reports one failure:
///
/// - [`ClientError::PartitionDamaged`]: the broker cannot deliver a range
///   of offsets of one partition (damaged data, or a partition whose damaged
///   files kept it from opening). Every readable record before the range
///   was delivered first. The other partitions go on; the damaged one stops
///   unless [`ConsumerConfig::skip_damaged`] is set, in which case it goes
///   on after the range. A single-partition subscription whose partition
///   stopped then ends (`None`).
/// - a record its opener could not open (the stream goes on);
/// - the end of a subscription: the broker refused it, the topic was
///   deleted, or it could not be re-established within
///   [`ConsumerConfig::subscribe_timeout`] ([`ClientError::Timeout`]).
///
/// Retriable failures (a lost connection, a broker restarting) are not
/// items: the consumer resubscribes within the timeout. The stream ends
/// (`None`) when every subscription is over.
///
/// ```no_run
/// use futures::StreamExt;
/// use strongbox_client::{Client, ClientConfig, Consumer, ConsumerConfig, Subscription};
///
/// # async fn run() -> Result<(), strongbox_client::ClientError> {
/// let client = Client::connect(ClientConfig::from_profile("strongbox-dev/profiles/alice.toml")?).await?;
/// let mut consumer = Consumer::subscribe(
///     &client,
///     Subscription::group("demo.greetings", "greeters"),
///     ConsumerConfig::default(),
/// )
/// .await?;
/// let mut seen = 0;
/// while let Some(record) = consumer.next().await {
///     let record = record?;
///     println!("{}@{}: {}", record.partition, record.offset, String::from_utf8_lossy(&record.value));
///     seen += 1;
///     if seen % 100 == 0 {
///         consumer.commit_consumed().await?;
///     }
/// }
/// consumer.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    subs: Vec<SubHandle>,
    events: mpsc::UnboundedReceiver<Event>,
    backlog: VecDeque<Event>,
    current: Option<(usize, VecDeque<Item>, u64)>,
    assignment: BTreeMap<u32, usize>,
    consumed: BTreeMap<u32, u64>,
    committed: BTreeMap<u32, u64>,
    group: bool,
}

impl Consumer {
    /// Opens the subscription streams and waits until the broker has
    /// assigned partitions to each.
    ///
    /// # Errors
    ///
    /// The broker's refusal (`NotAuthorized`, `UnknownTopic`, ...), or
    /// connection errors.
    pub async fn subscribe(
        client: &Client,
        subscription: Subscription,
        config: ConsumerConfig,
    ) -> Result<Self, ClientError> {
        let targets: Vec<SubscriptionTarget> = match subscription.target {
            Target::Partition(p) => vec![SubscriptionTarget::Partition(p)],
            Target::Partitions(ps) => ps.into_iter().map(SubscriptionTarget::Partition).collect(),
            Target::AllPartitions => {
                let admin = client.admin();
                let describe = admin.describe_topic(&subscription.topic);
                let info = tokio::time::timeout(config.subscribe_timeout, describe)
                    .await
                    .map_err(|_| {
                        ClientError::Timeout(format!(
                            "the partitions of {} could not be listed within {:?}",
                            subscription.topic, config.subscribe_timeout
                        ))
                    })??;
                (0..info.config.partitions.max(1))
                    .map(SubscriptionTarget::Partition)
                    .collect()
            }
            Target::Group(g) => vec![SubscriptionTarget::Group(g)],
        };
        if targets.is_empty() {
            return Err(ClientError::Config("no partition to subscribe to".into()));
        }
        let group = matches!(targets.first(), Some(SubscriptionTarget::Group(_)));
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut subs = Vec::with_capacity(targets.len());
        for (index, target) in targets.into_iter().enumerate() {
            let (commands, commands_rx) = mpsc::unbounded_channel();
            let driver = SubDriver::new(
                client.clone(),
                index,
                subscription.topic.clone(),
                target,
                subscription.start,
                &config,
                events_tx.clone(),
                commands_rx,
            );
            subs.push(SubHandle {
                commands,
                task: Some(tokio::spawn(driver.run())),
                ended: false,
            });
        }
        let mut consumer = Self {
            subs,
            events,
            backlog: VecDeque::new(),
            current: None,
            assignment: BTreeMap::new(),
            consumed: BTreeMap::new(),
            committed: BTreeMap::new(),
            group,
        };
        let mut assigned = vec![false; consumer.subs.len()];
        while assigned.contains(&false) {
            match consumer.events.recv().await {
                Some(Event::Assigned { index, assignment }) => {
                    consumer.assign(index, &assignment);
                    if let Some(a) = assigned.get_mut(index) {
                        *a = true;
                    }
                }
                // A stream that was assigned and has ended already (its
                // only partition was reported damaged) yields its items.
                Some(event @ Event::Ended { index, .. })
                    if assigned.get(index).copied().unwrap_or(false) =>
                {
                    consumer.backlog.push_back(event);
                }
                Some(Event::Ended { error, .. }) => {
                    consumer.close().await;
                    return Err(error.unwrap_or(ClientError::Closed("the subscription")));
                }
                Some(batch) => consumer.backlog.push_back(batch),
                None => return Err(ClientError::Closed("the subscription")),
            }
        }
        Ok(consumer)
    }

    /// The partitions currently assigned to this consumer.
    pub fn assignment(&self) -> Vec<u32> {
        self.assignment.keys().copied().collect()
    }

    /// The offset after the last record yielded, per partition.
    pub fn positions(&self) -> BTreeMap<u32, u64> {
        self.consumed.clone()
    }

    /// Commits `offset` (the next offset the group should read) for
    /// `partition` and waits for the broker to store it.
    ///
    /// # Errors
    ///
    /// [`ClientError::Broker`] when the broker refuses (`NotAssigned`
    /// after a rebalance), [`ClientError::InvalidRecord`] when this is not
    /// a group subscription or does not hold the partition, or a
    /// connection error (commit again after the consumer resubscribed).
    pub async fn commit(&self, partition: u32, offset: u64) -> Result<(), ClientError> {
        if !self.group {
            return Err(ClientError::InvalidRecord(
                "only consumer-group subscriptions can commit offsets".into(),
            ));
        }
        let index = self.assignment.get(&partition).copied().unwrap_or(0);
        let Some(sub) = self.subs.get(index) else {
            return Err(ClientError::Closed("the subscription"));
        };
        let (reply, rx) = oneshot::channel();
        sub.commands
            .send(SubCommand::Commit {
                partition,
                offset,
                reply,
            })
            .map_err(|_| ClientError::Closed("the subscription"))?;
        rx.await
            .unwrap_or(Err(ClientError::Closed("the subscription")))
    }

    /// Commits, for every assigned partition, the offset after the last
    /// record this consumer yielded (when it moved since the last commit).
    ///
    /// # Errors
    ///
    /// As [`Consumer::commit`]; the first failure stops it.
    pub async fn commit_consumed(&mut self) -> Result<(), ClientError> {
        let due: Vec<(u32, u64)> = self
            .consumed
            .iter()
            .filter(|(p, o)| self.assignment.contains_key(p) && self.committed.get(p) != Some(o))
            .map(|(p, o)| (*p, *o))
            .collect();
        for (partition, offset) in due {
            self.commit(partition, offset).await?;
            self.committed.insert(partition, offset);
        }
        Ok(())
    }

    /// Unsubscribes every stream and waits (briefly) for the broker to
    /// confirm.
    pub async fn close(&mut self) {
        let mut waits = Vec::new();
        for sub in &mut self.subs {
            let (tx, rx) = oneshot::channel();
            if sub.commands.send(SubCommand::Close(tx)).is_ok() {
                waits.push(rx);
            }
        }
        // One deadline for all: a stream that is still (re)subscribing
        // does not answer, and is stopped below.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for rx in waits {
            let _ = tokio::time::timeout_at(deadline, rx).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        for sub in &mut self.subs {
            sub.ended = true;
            if let Some(mut task) = sub.task.take()
                && tokio::time::timeout_at(deadline, &mut task).await.is_err()
            {
                task.abort();
            }
        }
        self.current = None;
        self.backlog.clear();
    }

    fn assign(&mut self, index: usize, assignment: &Assignment) {
        self.assignment.retain(|_, i| *i != index);
        for p in &assignment.partitions {
            self.assignment.insert(p.partition, index);
        }
    }

    fn note_consumed(&mut self, index: usize, cost: u64) {
        if let Some(sub) = self.subs.get(index) {
            let _ = sub.commands.send(SubCommand::Consumed(cost));
        }
    }

    fn handle_event(&mut self, event: Event) -> Option<Item> {
        match event {
            Event::Assigned { index, assignment } => {
                self.assign(index, &assignment);
                None
            }
            Event::Batch { index, items, cost } => {
                self.current = Some((index, items, cost));
                None
            }
            Event::Report { error } => Some(Err(error)),
            Event::Ended { index, error } => {
                if let Some(sub) = self.subs.get_mut(index) {
                    sub.ended = true;
                }
                error.map(Err)
            }
        }
    }
}

impl Stream for Consumer {
    type Item = Result<ConsumedRecord, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some((index, items, cost)) = &mut this.current {
                if let Some(item) = items.pop_front() {
                    if items.is_empty() {
                        let (index, cost) = (*index, *cost);
                        this.current = None;
                        this.note_consumed(index, cost);
                    }
                    if let Ok(record) = &item {
                        this.consumed
                            .insert(record.partition, record.offset.saturating_add(1));
                    }
                    return Poll::Ready(Some(item));
                }
                let (index, cost) = (*index, *cost);
                this.current = None;
                this.note_consumed(index, cost);
            }
            if let Some(event) = this.backlog.pop_front() {
                if let Some(item) = this.handle_event(event) {
                    return Poll::Ready(Some(item));
                }
                continue;
            }
            if this.subs.iter().all(|s| s.ended) {
                return Poll::Ready(None);
            }
            match this.events.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    if let Some(item) = this.handle_event(event) {
                        return Poll::Ready(Some(item));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // The tasks unsubscribe when their command channel closes; do not
        // abort them so the broker hears `Unsubscribe`.
        for sub in &mut self.subs {
            sub.task.take();
        }
    }
}
