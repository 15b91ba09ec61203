//! The producer's background task: owns the accumulator, the ledger and
//! the producer stream, and pumps the `ProducerSession` machine.
//!
//! Every record is acknowledged or failed within the delivery timeout:
//! transient failures (a lost connection, a broker restarting, retriable
//! refusals) are retried until then, with backoff; waits that could take
//! longer (reconnecting, a new producer epoch) are cut at the next record's
//! deadline; a batch in flight whose answer does not come in time makes
//! the producer give the stream up so it can be failed. Permanent errors
//! fail at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strongbox_protocol::frames::produce::{Produce, ProduceAck};
use strongbox_protocol::session::produce::{ProduceOutcome, ProducerSession};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::admin::ProducerIdentity;
use crate::backoff::Backoff;
use crate::connection::{Client, Session};
use crate::error::ClientError;
use crate::partitioner::Partitioner;
use crate::producer::accumulator::Accumulator;
use crate::producer::batch::ReadyBatch;
use crate::producer::ledger::{Ledger, Refusal};
use crate::producer::{Command, ProducerConfig};
use crate::wire::{Inbound, StreamIo, encode_chunks};

/// Most commands taken from the handles in one turn of the driver loop:
/// records arrive in bursts, and one pass over timers, the window and
/// flushes per burst (rather than per record) is most of the driver's
/// per-record cost saved.
const COMMANDS_PER_TURN: usize = 512;

/// The open producer stream.
#[derive(Debug)]
struct Stream {
    session: Arc<Session>,
    io: StreamIo,
    machine: ProducerSession,
}

#[derive(Debug)]
pub(crate) struct Driver {
    client: Client,
    rx: mpsc::Receiver<Command>,
    commands_open: bool,
    acc: Accumulator,
    ledger: Ledger,
    partitioner: Partitioner,
    partition_counts: HashMap<String, u32>,
    window_cap: u32,
    stream: Option<Stream>,
    reopen_at: Option<Instant>,
    backoff: Backoff,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    closing: Vec<oneshot::Sender<()>>,
    /// Shared with the handle, for [`Producer::identity`](crate::Producer::identity).
    identity: Arc<Mutex<Option<ProducerIdentity>>>,
    /// Why the last attempt to reach the broker failed, for the message of
    /// records that time out.
    last_error: Option<ClientError>,
    /// Adaptive batching: a partition's pipeline has room while fewer than
    /// this many of its batches are queued or in flight.
    pipeline: usize,
    /// Adaptive batching: batches left the ledger other than by an ack
    /// (failed, expired), so every open batch is looked at again.
    recheck_all: bool,
}

impl Driver {
    pub(crate) fn new(
        client: Client,
        config: ProducerConfig,
        identity: Arc<Mutex<Option<ProducerIdentity>>>,
        rx: mpsc::Receiver<Command>,
    ) -> Self {
        let initial = identity.lock().ok().and_then(|i| *i);
        let limits = client.limits();
        let reconnect = client.config().reconnect.clone();
        Self {
            acc: Accumulator::new(
                config.batch_bytes,
                max_batch(limits.max_batch_size, limits.max_frame_size, 0),
                config.linger,
            ),
            ledger: Ledger::new(initial, reconnect.initial_backoff, config.delivery_timeout),
            backoff: Backoff::new(reconnect),
            window_cap: config.max_in_flight.unwrap_or(u32::MAX).max(1),
            client,
            rx,
            commands_open: true,
            partitioner: Partitioner::default(),
            partition_counts: HashMap::new(),
            stream: None,
            reopen_at: None,
            flushes: Vec::new(),
            closing: Vec::new(),
            identity,
            last_error: None,
            pipeline: config.partition_pipeline.max(1) as usize,
            recheck_all: false,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            self.close_adaptive();
            self.pump().await;
            self.resolve_flushes();
            let idle = self.acc.is_empty() && self.ledger.is_empty();
            if idle && (!self.closing.is_empty() || !self.commands_open) {
                if let Some(mut stream) = self.stream.take() {
                    stream.io.finish();
                }
                for done in self.closing.drain(..) {
                    let _ = done.send(());
                }
                return;
            }
            let deadline = [
                self.acc.next_deadline(),
                self.ledger.next_retry(),
                self.ledger.next_expiry(),
                self.reopen_at,
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                command = self.rx.recv(), if self.commands_open => match command {
                    Some(command) => {
                        self.on_command(command);
                        // Take the rest of the burst; a closed channel is
                        // noticed by the next `recv`.
                        for _ in 1..COMMANDS_PER_TURN {
                            match self.rx.try_recv() {
                                Ok(command) => self.on_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    // Every handle is gone: deliver what was queued, then stop.
                    None => {
                        self.commands_open = false;
                        self.close_all_batches();
                    }
                },
                inbound = next_inbound(&mut self.stream) => self.on_inbound(inbound),
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    for batch in self.acc.expired(now) {
                        self.enqueue(batch);
                    }
                    if self.reopen_at.is_some_and(|t| t <= now) {
                        self.reopen_at = None;
                    }
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Send {
                topic,
                partition,
                partitions,
                record,
            } => {
                let partition = match (partition, partitions) {
                    (Some(p), _) => p,
                    (None, partitions) => {
                        let partitions = partitions.unwrap_or(1);
                        if self.partition_counts.get(&topic) != Some(&partitions) {
                            self.partition_counts.insert(topic.clone(), partitions);
                        }
                        self.partitioner
                            .partition(&topic, record.key.as_deref(), partitions)
                    }
                };
                if !self.closing.is_empty() {
                    let _ = record
                        .completion
                        .send(Err(ClientError::Closed("the producer")));
                    return;
                }
                let limits = self.client.limits();
                self.acc.set_max_batch(max_batch(
                    limits.max_batch_size,
                    limits.max_frame_size,
                    topic.len(),
                ));
                match self.acc.append(&topic, partition, record, Instant::now()) {
                    Ok(closed) => {
                        for batch in closed {
                            self.enqueue(batch);
                        }
                    }
                    Err(refused) => {
                        let (record, error) = *refused;
                        let _ = record.completion.send(Err(error));
                    }
                }
            }
            Command::Flush(done) => {
                self.close_all_batches();
                let watermark = self.acc.next_id().saturating_sub(1);
                self.flushes.push((watermark, done));
            }
            Command::Close(done) => {
                self.close_all_batches();
                self.closing.push(done);
            }
        }
    }

    /// Adaptive batching: hands over the open batches whose partition's
    /// pipeline has room.
    fn close_adaptive(&mut self) {
        let all = std::mem::take(&mut self.recheck_all);
        let (ledger, cap) = (&self.ledger, self.pipeline);
        let closed = self.acc.close_with_room(all, |topic, partition| {
            ledger.pipeline(topic, partition, cap) < cap
        });
        for batch in closed {
            self.enqueue(batch);
        }
    }

    fn close_all_batches(&mut self) {
        for batch in self.acc.drain() {
            self.enqueue(batch);
        }
    }

    /// Hands a closed batch to the ledger.
    fn enqueue(&mut self, batch: ReadyBatch) {
        if let Some(partitions) = self.partition_counts.get(&*batch.topic) {
            self.partitioner
                .batch_closed(&batch.topic, batch.partition, *partitions);
        }
        self.ledger.push(batch);
    }

    fn resolve_flushes(&mut self) {
        let oldest = self.ledger.oldest_id();
        let mut i = 0;
        while i < self.flushes.len() {
            if oldest.is_none_or(|o| o > self.flushes[i].0) {
                let (_, done) = self.flushes.swap_remove(i);
                let _ = done.send(());
            } else {
                i += 1;
            }
        }
    }

    /// Sends every batch the window and the partitions' states allow,
    /// opening the stream (and reconnecting) first when needed.
    async fn pump(&mut self) {
        self.expire(Instant::now());
        while self.ledger.has_sendable(Instant::now()) {
            if self.ledger.needs_new_epoch() {
                if self.ledger.in_flight() > 0 {
                    // Wait for the old epoch's answers first.
                    return;
                }
                if self.reopen_at.is_some_and(|t| t > Instant::now()) {
                    return;
                }
                let taken = self.within_budget(Self::new_epoch).await;
                if let Err(e) = taken {
                    self.unreachable(e);
                    return;
                }
            }
            if self.stream.is_none() {
                if self.reopen_at.is_some_and(|t| t > Instant::now()) {
                    return;
                }
                let opened = self.within_budget(Self::open_stream).await;
                if let Err(e) = opened {
                    self.unreachable(e);
                    return;
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            if !stream.machine.has_window() {
                return;
            }
            let Some(next) = self.ledger.next_to_send(Instant::now()) else {
                return;
            };
            let (batch, bytes) = match next {
                Ok(ready) => ready,
                Err((batch, error)) => {
                    batch.fail(&error);
                    continue;
                }
            };
            let sent = stream
                .machine
                .send(&batch.topic, batch.partition, bytes)
                .map_err(|e| ClientError::InvalidRecord(e.to_string()))
                .and_then(|(correlation_id, frame)| {
                    // The batch goes out as its own chunk, not copied.
                    let wire = encode_chunks(&frame, stream.session.send_max_frame())?;
                    Ok((correlation_id, wire))
                });
            match sent {
                Ok((correlation_id, wire)) => {
                    let queued = stream.io.send_chunks(wire);
                    self.ledger.sent(correlation_id, batch);
                    if let Err(e) = queued {
                        self.stream_failed(e);
                    }
                }
                Err(error) => {
                    // Refused before it left: its sequences are free again.
                    self.ledger.unsent(&batch);
                    self.recheck_all = true;
                    batch.fail(&error);
                    // The session counted it as in flight; start afresh.
                    self.stream_failed(ClientError::InvalidRecord(
                        "a batch could not be encoded".into(),
                    ));
                }
            }
        }
    }

    /// Fails the records whose delivery timeout has passed. A batch in
    /// flight that is due makes the producer give the stream up first
    /// (answers arrive in order, so it cannot be taken out alone); the
    /// others are sent again on a new stream.
    fn expire(&mut self, now: Instant) {
        if self.ledger.in_flight_expired(now)
            && let Some(stream) = self.stream.take()
        {
            tracing::warn!(
                timeout = ?self.ledger.delivery_timeout(),
                "no answer from the broker within the delivery timeout; giving the producer stream up"
            );
            if self.last_error.is_none() {
                self.last_error = Some(ClientError::ConnectionLost(format!(
                    "no answer from broker {} (is it running and reachable?)",
                    self.client.config().broker
                )));
            }
            drop(stream);
            self.ledger.connection_lost();
            self.reopen_at = Some(now + self.backoff.next_delay());
        }
        let expired = self.ledger.expired(now);
        if expired.is_empty() {
            return;
        }
        self.recheck_all = true;
        let error = self.timeout_error();
        for batch in expired {
            batch.fail(&error);
        }
    }

    /// The error of a record that was not acknowledged in time.
    fn timeout_error(&self) -> ClientError {
        // A reconnection in progress knows best why nothing works.
        let cause = self
            .client
            .last_connection_error()
            .or_else(|| self.last_error.clone())
            .map_or_else(String::new, |e| format!(" (last error: {e})"));
        ClientError::Timeout(format!(
            "the record was not acknowledged within the delivery timeout of {:?}{cause}",
            self.ledger.delivery_timeout()
        ))
    }

    /// Runs `step`, cut short when the oldest record's delivery timeout
    /// passes first.
    async fn within_budget<'a, F, Fut>(&'a mut self, step: F) -> Result<(), ClientError>
    where
        F: FnOnce(&'a mut Self) -> Fut,
        Fut: Future<Output = Result<(), ClientError>> + 'a,
    {
        match self.ledger.next_expiry() {
            Some(deadline) => tokio::time::timeout_at(deadline, step(self))
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::Timeout(
                        "the broker could not be reached within the delivery timeout".into(),
                    ))
                }),
            None => step(self).await,
        }
    }

    /// Reaching the broker failed: try again after a backoff when that can
    /// help (records fail when their delivery timeout passes), otherwise
    /// fail every record now.
    fn unreachable(&mut self, error: ClientError) {
        if error.is_retriable() && !self.client.is_closed() {
            tracing::info!(error = %error, "cannot reach the broker; retrying");
            if !matches!(error, ClientError::Timeout(_)) {
                self.last_error = Some(error);
            }
            self.reopen_at = Some(Instant::now() + self.backoff.next_delay());
            self.expire(Instant::now());
        } else {
            self.fail_everything(&error);
        }
    }

    /// Takes a new epoch for the producer id (fencing nothing but our own
    /// past batches).
    async fn new_epoch(&mut self) -> Result<(), ClientError> {
        let Some(old) = self.ledger.identity() else {
            return Ok(());
        };
        let identity = self
            .client
            .admin()
            .init_producer(Some(old.producer_id))
            .await?;
        tracing::info!(
            producer_id = identity.producer_id,
            epoch = identity.epoch,
            "producer took a new epoch"
        );
        self.ledger.new_epoch(identity);
        if let Ok(mut shared) = self.identity.lock() {
            *shared = Some(identity);
        }
        Ok(())
    }

    async fn open_stream(&mut self) -> Result<(), ClientError> {
        let session = self.client.session().await?;
        let (send, recv) = session.open_bi().await?;
        let window = session.welcome.max_in_flight.min(self.window_cap).max(1);
        let machine = ProducerSession::new(window, session.welcome.max_batch_size);
        let io = StreamIo::spawn(send, recv, session.recv_max_frame);
        self.stream = Some(Stream {
            session,
            io,
            machine,
        });
        Ok(())
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let frame = match inbound {
            Inbound::Frame(frame) => frame,
            Inbound::End(None) => {
                return self.stream_failed(ClientError::ConnectionLost(
                    "the broker finished the producer stream".into(),
                ));
            }
            Inbound::End(Some(e)) => return self.stream_failed(e),
        };
        match stream.machine.handle_frame(frame) {
            Ok(ProduceOutcome::Acked(ack)) => self.on_ack(ack),
            Ok(ProduceOutcome::Failed(error)) => {
                let code = error.error_code();
                let client_error = ClientError::from_error_frame(&error);
                if client_error.is_retriable() {
                    // The cause to name if the record times out.
                    self.last_error = Some(client_error.clone());
                }
                match self
                    .ledger
                    .refused(error.correlation_id, code, client_error, Instant::now())
                {
                    Ok(Refusal::Retrying) => {}
                    Ok(Refusal::Failed(batch, error)) => {
                        self.recheck_all = true;
                        batch.fail(&error);
                    }
                    Err(e) => self.stream_failed(e),
                }
            }
            Err(violation) => {
                let error = ClientError::from_violation(violation.clone());
                // An `Error` with correlation id 0 from the broker comes
                // back as a violation carrying its code: that ends the
                // stream by itself. Anything else is the broker's fault:
                // tell it, then reset.
                if matches!(error, ClientError::Protocol(_)) {
                    let max = stream.session.send_max_frame();
                    stream.io.fail(&violation, max);
                }
                self.stream_failed(error);
            }
        }
    }

    fn on_ack(&mut self, ack: ProduceAck) {
        match self.ledger.acked(ack.correlation_id, ack.partition) {
            Ok(batch) => {
                self.backoff.reset();
                self.last_error = None;
                self.acc.pipeline_shrank(&batch.topic, batch.partition);
                batch.complete(ack.base_offset);
            }
            Err(e) => self.stream_failed(e),
        }
    }

    /// The stream broke: unacknowledged batches go back to the queue to be
    /// re-sent with the same sequences on a new stream. Errors that a new
    /// stream cannot fix fail them instead.
    fn stream_failed(&mut self, error: ClientError) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let connection_alive = stream.session.is_alive();
        drop(stream);
        self.ledger.connection_lost();
        self.last_error = Some(error.clone());
        if !connection_alive && !self.client.is_closed() {
            // The next pump reconnects (with the client's backoff) and
            // re-sends; a reconnect that cannot succeed fails the batches.
            tracing::info!(error = %error, "producer connection lost; will reconnect");
            return;
        }
        if error.is_retriable() || matches!(error, ClientError::Protocol(_)) {
            tracing::warn!(error = %error, "producer stream failed; reopening");
            self.reopen_at = Some(Instant::now() + self.backoff.next_delay());
        } else {
            tracing::warn!(error = %error, "producer stream refused");
            self.fail_everything(&error);
        }
    }

    /// Fails every queued and unacknowledged batch.
    fn fail_everything(&mut self, error: &ClientError) {
        self.recheck_all = true;
        for batch in self.ledger.drain() {
            batch.fail(error);
        }
    }
}

/// The largest batch that fits both the broker's batch limit and, inside a
/// `Produce` frame for a topic of `topic_len` bytes, its frame limit.
fn max_batch(max_batch_size: u32, max_frame_size: u32, topic_len: usize) -> usize {
    (max_batch_size as usize).min(Produce::max_batch_len(max_frame_size, topic_len))
}

/// The next event of the stream, or never when there is none.
async fn next_inbound(stream: &mut Option<Stream>) -> Inbound {
    match stream {
        Some(stream) => stream.io.inbound.recv().await.unwrap_or(Inbound::End(Some(
            ClientError::ConnectionLost("the producer stream's tasks ended".into()),
        ))),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
