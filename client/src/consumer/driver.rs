//! The task behind one subscription stream: pumps `SubscriberSession`,
//! turns record batches into records, grants credit as the application
//! consumes, and resubscribes after a dropped connection.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use strongbox_protocol::batch::{RecordBatch, parse_header};
use strongbox_protocol::frames::subscribe::{
    Records, StartPosition, Subscribe, SubscriptionTarget,
};
use strongbox_protocol::session::subscribe::{SubscriberEvent, SubscriberSession};
use tokio::sync::{mpsc, oneshot};

use crate::backoff::Backoff;
use crate::connection::{Client, Session};
use crate::consumer::credit::CreditWindow;
use crate::consumer::{ConsumedRecord, Event, Item};
use crate::error::ClientError;
use crate::transform::{Opened, ValueTransformer};
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
    pub(crate) client: Client,
    pub(crate) index: usize,
    pub(crate) topic: String,
    pub(crate) target: SubscriptionTarget,
    pub(crate) start: StartPosition,
    pub(crate) window: CreditWindow,
    pub(crate) transformer: Option<Arc<dyn ValueTransformer>>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) commands: mpsc::UnboundedReceiver<SubCommand>,
    /// Next offset to hand out, per partition: records below it were
    /// delivered already and are skipped.
    pub(crate) positions: BTreeMap<u32, u64>,
    pub(crate) commits: VecDeque<oneshot::Sender<Result<(), ClientError>>>,
}

/// Why a stream could not be opened.
enum Opening {
    /// No connection, after the client's own retries.
    Connection(ClientError),
    /// The connection was there but the stream failed.
    Stream(ClientError),
}

/// How a stream ended.
enum StreamEnd {
    /// Stop for good (normal end, fatal error, or the consumer is gone).
    Stop(Option<ClientError>),
    /// Open a new stream (after a drop), after `delay`.
    Resubscribe(Duration),
}

impl SubDriver {
    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff::new(self.client.config().reconnect.clone());
        loop {
            let stream = match self.open().await {
                Ok(stream) => stream,
                // The client already retried the connection as its policy
                // says; nothing more to try.
                Err(Opening::Connection(e)) => return self.stop(Some(e)),
                Err(Opening::Stream(e)) if e.is_retriable() => {
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                Err(Opening::Stream(e)) => return self.stop(Some(e)),
            };
            match self.drive(stream).await {
                StreamEnd::Stop(error) => return self.stop(error),
                StreamEnd::Resubscribe(delay) => {
                    self.fail_commits(&ClientError::ConnectionLost(
                        "the subscription was reopened before the commit was answered".into(),
                    ));
                    let delay = if delay.is_zero() {
                        Duration::ZERO
                    } else {
                        delay.max(backoff.next_delay())
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
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
            tokio::select! {
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
            SubscriberEvent::Ended(end) => Some(match end.error_code() {
                None if end.code == 0 => StreamEnd::Stop(None),
                Some(code) if code.is_retriable() => {
                    StreamEnd::Resubscribe(Duration::from_millis(1))
                }
                _ => StreamEnd::Stop(Some(ClientError::from_code(end.code, end.reason))),
            }),
            SubscriberEvent::Failed(error) => {
                let error = ClientError::from_error_frame(&error);
                Some(if error.is_retriable() {
                    StreamEnd::Resubscribe(Duration::from_millis(1))
                } else {
                    StreamEnd::Stop(Some(error))
                })
            }
        }
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
                    topic: self.topic.clone(),
                    partition,
                    offset,
                    timestamp: record.timestamp,
                    key: record.key,
                    headers: record.headers.iter().collect(),
                    value: record.value,
                };
                match &self.transformer {
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
