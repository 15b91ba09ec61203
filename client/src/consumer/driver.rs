//! The task behind one subscription stream: pumps `SubscriberSession`,
//! turns record batches into records, grants credit as the application
//! consumes, and resubscribes after a dropped connection.
//!
//! Recovery is bounded: from the moment a subscription is lost (or first
//! asked for) until the broker assigns partitions again, at most
//! `subscribe_timeout` passes; then the subscription ends with a
//! `timeout` error naming the last failure. An assigned subscription
//! waiting for new records is not timed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use strongbox_protocol::batch::{RecordBatch, parse_header};
use strongbox_protocol::frames::subscribe::{
    PartitionError, Records, StartPosition, Subscribe, SubscriptionTarget,
};
use strongbox_protocol::session::subscribe::{SubscriberEvent, SubscriberSession};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::connection::{Client, Session};
use crate::consumer::credit::CreditWindow;
use crate::consumer::{ConsumedRecord, ConsumerConfig, Event, Item};
use crate::error::ClientError;
use crate::transform::{Opened, ValueOpener};
use crate::wire::{Inbound, StreamIo};

/// How long `close` waits for the broker's `SubscriptionEnd`.
const UNSUBSCRIBE_GRACE: Duration = Duration::from_secs(5);

/// Requests from the consumer to one subscription task.
#[derive(Debug)]
pub(crate) enum SubCommand {
    /// The application took every record of a frame of this cost.
    Consumed(u64),
    /// Commit a group offset.
    Commit {
        partition: u32,
        offset: u64,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// Unsubscribe and stop.
    Close(oneshot::Sender<()>),
}

/// The open subscription stream.
#[derive(Debug)]
struct Stream {
    session: Arc<Session>,
    io: StreamIo,
    machine: SubscriberSession,
}

#[derive(Debug)]
pub(crate) struct SubDriver {
    client: Client,
    index: usize,
    topic: String,
    /// The topic of every record delivered, shared.
    shared_topic: Arc<str>,
    target: SubscriptionTarget,
    start: StartPosition,
    window: CreditWindow,
    opener: Option<Arc<dyn ValueOpener>>,
    events: mpsc::UnboundedSender<Event>,
    commands: mpsc::UnboundedReceiver<SubCommand>,
    /// Next offset to hand out, per partition: records below it were
    /// delivered already and are skipped.
    positions: BTreeMap<u32, u64>,
    commits: VecDeque<oneshot::Sender<Result<(), ClientError>>>,
    skip_damaged: bool,
    subscribe_timeout: Duration,
    /// When the subscription was lost (or first asked for), while it is
    /// not assigned; `None` once the broker has assigned partitions.
    recovering_since: Option<Instant>,
    /// Why the last attempt failed, for the timeout's message.
    last_error: Option<ClientError>,
    /// Damaged ranges already reported, by partition and first offset, so
    /// that a resubscription does not report them twice.
    reported: BTreeSet<(u32, u64)>,
    /// Partitions a `PartitionError` stopped, with its code.
    stopped: BTreeMap<u32, u16>,
}

/// Why a stream could not be opened.
enum Opening {
    /// No connection, after the client's own retries.
    Connection(ClientError),
    /// The connection was there but the stream failed.
    Stream(ClientError),
    /// The subscribe timeout passed first.
    TimedOut,
}

/// How a stream ended.
enum StreamEnd {
    /// Stop for good (normal end, fatal error, or the consumer is gone).
    Stop(Option<ClientError>),
    /// Open a new stream (after a drop), after `delay`.
    Resubscribe(Duration),
}

impl SubDriver {
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor, called once, with the parts of one subscription"
    )]
    pub(crate) fn new(
        client: Client,
        index: usize,
        topic: String,
        target: SubscriptionTarget,
        start: StartPosition,
        config: &ConsumerConfig,
        events: mpsc::UnboundedSender<Event>,
        commands: mpsc::UnboundedReceiver<SubCommand>,
    ) -> Self {
        Self {
            client,
            index,
            shared_topic: Arc::from(topic.as_str()),
            topic,
            target,
            start,
            window: CreditWindow::new(config.credit_window),
            opener: config.opener.clone(),
            events,
            commands,
            positions: BTreeMap::new(),
            commits: VecDeque::new(),
            skip_damaged: config.skip_damaged,
            subscribe_timeout: config.subscribe_timeout,
            recovering_since: None,
            last_error: None,
            reported: BTreeSet::new(),
            stopped: BTreeMap::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff::new(self.client.config().reconnect.clone());
        self.recovering_since = Some(Instant::now());
        loop {
            let opened = match self.deadline() {
                Some(deadline) => tokio::time::timeout_at(deadline, self.open())
                    .await
                    .unwrap_or(Err(Opening::TimedOut)),
                None => self.open().await,
            };
            let stream = match opened {
                Ok(stream) => stream,
                Err(Opening::TimedOut) => {
                    let e = self.timeout_error();
                    return self.stop(Some(e));
                }
                // The client already retried the connection as its policy
                // says; nothing more to try.
                Err(Opening::Connection(e)) => return self.stop(Some(e)),
                Err(Opening::Stream(e)) if e.is_retriable() => {
                    tracing::debug!(topic = %self.topic, error = %e, "cannot open a subscription stream; retrying");
                    self.last_error = Some(e);
                    if !self.pause(backoff.next_delay()).await {
                        let e = self.timeout_error();
                        return self.stop(Some(e));
                    }
                    continue;
                }
                Err(Opening::Stream(e)) => return self.stop(Some(e)),
            };
            match self.drive(stream).await {
                StreamEnd::Stop(error) => return self.stop(error),
                StreamEnd::Resubscribe(delay) => {
                    if self.recovering_since.is_none() {
                        // A new loss: a new budget, a fresh backoff.
                        self.recovering_since = Some(Instant::now());
                        backoff.reset();
                    }
                    self.fail_commits(&ClientError::ConnectionLost(
                        "the subscription was reopened before the commit was answered".into(),
                    ));
                    let delay = if delay.is_zero() {
                        Duration::ZERO
                    } else {
                        delay.max(backoff.next_delay())
                    };
                    if !delay.is_zero() && !self.pause(delay).await {
                        let e = self.timeout_error();
                        return self.stop(Some(e));
                    }
                }
            }
        }
    }

    /// When the subscription must be established again, while it is not.
    fn deadline(&self) -> Option<Instant> {
        self.recovering_since
            .map(|since| since + self.subscribe_timeout)
    }

    /// Sleeps for `delay`; false when the subscribe timeout passes first.
    async fn pause(&self, delay: Duration) -> bool {
        let wake = Instant::now() + delay;
        match self.deadline() {
            Some(deadline) if deadline <= wake => {
                tokio::time::sleep_until(deadline).await;
                false
            }
            _ => {
                tokio::time::sleep_until(wake).await;
                true
            }
        }
    }

    /// The error when the subscription could not be established in time.
    fn timeout_error(&self) -> ClientError {
        let what = match &self.target {
            SubscriptionTarget::Partition(p) => format!("{}/{p}", self.topic),
            SubscriptionTarget::Group(g) => format!("{} as group {g}", self.topic),
        };
        // A reconnection in progress knows best why nothing works.
        let cause = self
            .client
            .last_connection_error()
            .or_else(|| self.last_error.clone())
            .map_or_else(String::new, |e| format!(" (last error: {e})"));
        ClientError::Timeout(format!(
            "could not subscribe to {what} within {:?}{cause}",
            self.subscribe_timeout
        ))
    }

    fn stop(&mut self, error: Option<ClientError>) {
        self.fail_commits(
            &error
                .clone()
                .unwrap_or(ClientError::Closed("the subscription")),
        );
        let _ = self.events.send(Event::Ended {
            index: self.index,
            error,
        });
    }

    fn fail_commits(&mut self, error: &ClientError) {
        for reply in self.commits.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// Opens a stream and sends `Subscribe`, resuming where the
    /// application is (partition mode) or from the group's commits.
    async fn open(&mut self) -> Result<Stream, Opening> {
        let session = self.client.session().await.map_err(Opening::Connection)?;
        let (send, recv) = session.open_bi().await.map_err(Opening::Stream)?;
        let start = match (&self.target, self.positions.values().next()) {
            (SubscriptionTarget::Partition(_), Some(next)) => StartPosition::Offset(*next),
            _ => self.start,
        };
        let (machine, frame) = SubscriberSession::new(Subscribe {
            topic: self.topic.clone(),
            target: self.target.clone(),
            start,
            credit: self.window.initial(),
            skip_damaged: self.skip_damaged,
        });
        let io = StreamIo::spawn(send, recv, session.recv_max_frame);
        io.send_frame(&frame, session.send_max_frame())
            .map_err(Opening::Stream)?;
        Ok(Stream {
            session,
            io,
            machine,
        })
    }

    async fn drive(&mut self, mut stream: Stream) -> StreamEnd {
        let mut closing: Option<oneshot::Sender<()>> = None;
        let mut commands_open = true;
        loop {
            let grace = async {
                if closing.is_some() || !commands_open {
                    tokio::time::sleep(UNSUBSCRIBE_GRACE).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            // Until the broker assigns partitions, the subscribe timeout runs.
            let deadline = self.deadline();
            let unassigned = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = unassigned, if closing.is_none() && commands_open => {
                    return StreamEnd::Stop(Some(self.timeout_error()));
                }
                command = self.commands.recv(), if commands_open && closing.is_none() => {
                    match command {
                        Some(SubCommand::Consumed(cost)) => {
                            if let Some(bytes) = self.window.consumed(cost)
                                && let Some(frame) = stream.machine.grant(bytes)
                                && let Err(e) = stream.io.send_frame(&frame, stream.session.send_max_frame())
                            {
                                return self.dropped(&stream, e);
                            }
                        }
                        Some(SubCommand::Commit { partition, offset, reply }) => {
                            match stream.machine.commit(partition, offset) {
                                Ok(frame) => {
                                    if let Err(e) = stream.io.send_frame(&frame, stream.session.send_max_frame()) {
                                        let _ = reply.send(Err(e.clone()));
                                        return self.dropped(&stream, e);
                                    }
                                    self.commits.push_back(reply);
                                }
                                Err(refused) => {
                                    let _ = reply.send(Err(ClientError::InvalidRecord(refused.to_string())));
                                }
                            }
                        }
                        Some(SubCommand::Close(done)) => {
                            closing = Some(done);
                            if !self.unsubscribe(&mut stream) {
                                return StreamEnd::Stop(None);
                            }
                        }
                        None => {
                            commands_open = false;
                            if !self.unsubscribe(&mut stream) {
                                return StreamEnd::Stop(None);
                            }
                        }
                    }
                }
                inbound = stream.io.inbound.recv() => {
                    let inbound = inbound.unwrap_or(Inbound::End(Some(ClientError::ConnectionLost(
                        "the subscription stream's tasks ended".into(),
                    ))));
                    let end = match inbound {
                        Inbound::Frame(frame) => match stream.machine.handle_frame(frame) {
                            Ok(event) => self.on_event(event),
                            Err(violation) => {
                                let error = ClientError::from_violation(violation.clone());
                                if matches!(error, ClientError::Protocol(_)) {
                                    let max = stream.session.send_max_frame();
                                    stream.io.fail(&violation, max);
                                }
                                Some(StreamEnd::Stop(Some(error)))
                            }
                        },
                        Inbound::End(None) if closing.is_some() || !commands_open => Some(StreamEnd::Stop(None)),
                        Inbound::End(None) => Some(self.dropped(&stream, ClientError::ConnectionLost(
                            "the broker finished the subscription stream".into(),
                        ))),
                        Inbound::End(Some(e)) if closing.is_some() || !commands_open => {
                            tracing::debug!(error = %e, "subscription ended while closing");
                            Some(StreamEnd::Stop(None))
                        }
                        Inbound::End(Some(e)) => Some(self.dropped(&stream, e)),
                    };
                    if let Some(end) = end {
                        if let StreamEnd::Stop(_) = end {
                            stream.io.finish();
                            if let Some(done) = closing.take() {
                                let _ = done.send(());
                            }
                        }
                        return end;
                    }
                }
                () = grace => {
                    if let Some(done) = closing.take() {
                        let _ = done.send(());
                    }
                    return StreamEnd::Stop(None);
                }
            }
        }
    }

    /// Sends `Unsubscribe` and finishes the send side; false when the
    /// stream is already over.
    fn unsubscribe(&mut self, stream: &mut Stream) -> bool {
        let sent = match stream.machine.unsubscribe() {
            Some(frame) => stream
                .io
                .send_frame(&frame, stream.session.send_max_frame())
                .is_ok(),
            None => false,
        };
        stream.io.finish();
        sent
    }

    /// The stream broke: resubscribe (the client reconnects first when the
    /// connection itself is gone), unless retrying cannot help.
    fn dropped(&mut self, stream: &Stream, error: ClientError) -> StreamEnd {
        self.last_error = Some(error.clone());
        if !stream.session.is_alive() {
            tracing::info!(topic = %self.topic, error = %error, "subscription connection lost; resubscribing");
            return StreamEnd::Resubscribe(Duration::ZERO);
        }
        if error.is_retriable() {
            tracing::warn!(topic = %self.topic, error = %error, "subscription stream failed; resubscribing");
            StreamEnd::Resubscribe(Duration::from_millis(1))
        } else {
            StreamEnd::Stop(Some(error))
        }
    }

    fn on_event(&mut self, event: SubscriberEvent) -> Option<StreamEnd> {
        match event {
            SubscriberEvent::Assigned(assignment) => {
                // Established (again): the subscribe timeout stops.
                self.recovering_since = None;
                self.last_error = None;
                for p in &assignment.partitions {
                    let position = self.positions.entry(p.partition).or_insert(p.next_offset);
                    *position = (*position).max(p.next_offset);
                }
                let _ = self.events.send(Event::Assigned {
                    index: self.index,
                    assignment,
                });
                None
            }
            SubscriberEvent::Records(records) => {
                let cost = records.credit_cost();
                let items = self.records(records);
                if items.is_empty() {
                    // Nothing for the application: the credit comes back now.
                    self.window.delivered(cost);
                    let _ = self.window.consumed(cost);
                    return None;
                }
                self.window.delivered(cost);
                let _ = self.events.send(Event::Batch {
                    index: self.index,
                    items,
                    cost,
                });
                None
            }
            SubscriberEvent::Committed(_) => {
                if let Some(reply) = self.commits.pop_front() {
                    let _ = reply.send(Ok(()));
                }
                None
            }
            SubscriberEvent::CommitRefused(ack) => {
                if let Some(reply) = self.commits.pop_front() {
                    let _ = reply.send(Err(ClientError::from_code(
                        ack.code,
                        format!(
                            "commit of offset {} for partition {} refused",
                            ack.offset, ack.partition
                        ),
                    )));
                }
                None
            }
            SubscriberEvent::PartitionError(error) => {
                self.on_partition_error(&error);
                None
            }
            SubscriberEvent::Ended(end) => Some(match end.error_code() {
                None if end.code == 0 => StreamEnd::Stop(None),
                Some(code) if code.is_retriable() => {
                    self.last_error = Some(ClientError::from_code(end.code, end.reason));
                    StreamEnd::Resubscribe(Duration::from_millis(1))
                }
                // A single partition that a `PartitionError` stopped: that
                // report was the item; the subscription is simply over.
                _ if matches!(self.target, SubscriptionTarget::Partition(p)
                    if self.stopped.get(&p) == Some(&end.code)) =>
                {
                    StreamEnd::Stop(None)
                }
                _ => StreamEnd::Stop(Some(ClientError::from_code(end.code, end.reason))),
            }),
            SubscriberEvent::Failed(error) => {
                let error = ClientError::from_error_frame(&error);
                Some(if error.is_retriable() {
                    self.last_error = Some(error);
                    StreamEnd::Resubscribe(Duration::from_millis(1))
                } else {
                    StreamEnd::Stop(Some(error))
                })
            }
        }
    }

    /// A damaged range: reported once as an item; the partition goes on
    /// after it (skipping) or is stopped.
    fn on_partition_error(&mut self, error: &PartitionError) {
        let partition = error.partition;
        let skipped = match error.end() {
            Some(end) if self.skip_damaged => {
                let position = self.positions.entry(partition).or_insert(end);
                *position = (*position).max(end);
                true
            }
            _ => {
                self.stopped.insert(partition, error.code);
                false
            }
        };
        tracing::warn!(
            topic = %self.topic,
            partition,
            first = error.first_offset,
            end = ?error.end(),
            code = error.code,
            message = %error.message,
            "the broker reports damaged records"
        );
        if !self.reported.insert((partition, error.first_offset)) {
            return;
        }
        let _ = self.events.send(Event::Report {
            error: ClientError::PartitionDamaged {
                topic: self.topic.clone(),
                partition,
                code: error.code,
                first_offset: error.first_offset,
                end_offset: error.end(),
                skipped,
                message: error.message.clone(),
            },
        });
    }

    /// The records of a frame the application has not seen yet.
    fn records(&mut self, records: Records) -> VecDeque<Item> {
        let mut items = VecDeque::new();
        let partition = records.partition;
        for batch in records.batches {
            let base = batch.base_offset;
            let parsed = match RecordBatch::parse(batch.batch.clone()) {
                Ok(parsed) => parsed,
                Err(e) => {
                    // Skip the batch so one bad batch cannot wedge the
                    // subscription, and say so.
                    let count = parse_header(&batch.batch).map_or(1, |h| h.record_count);
                    let position = self.positions.entry(partition).or_insert(base);
                    let end = base.saturating_add(u64::from(count));
                    if *position < end {
                        *position = end;
                        items.push_back(Err(ClientError::Protocol(format!(
                            "{}/{partition}: batch at offset {base} is invalid and was skipped: {e}",
                            self.topic
                        ))));
                    }
                    continue;
                }
            };
            for record in parsed.records() {
                let offset = base.saturating_add(u64::from(record.index));
                let position = self.positions.entry(partition).or_insert(offset);
                if offset < *position {
                    continue;
                }
                *position = offset.saturating_add(1);
                let mut consumed = ConsumedRecord {
                    topic: self.shared_topic.clone(),
                    partition,
                    offset,
                    timestamp: record.timestamp,
                    key: record.key,
                    headers: record.headers.iter().collect(),
                    value: record.value,
                };
                match &self.opener {
                    None => items.push_back(Ok(consumed)),
                    Some(t) => match t.open(&mut consumed) {
                        Ok(Opened::Deliver) => items.push_back(Ok(consumed)),
                        Ok(Opened::Skip) => {}
                        Err(e) => items.push_back(Err(e)),
                    },
                }
            }
        }
        items
    }
}
