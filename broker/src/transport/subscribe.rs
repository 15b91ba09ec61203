//! Subscription streams: records pushed within the client's byte credit.
//!
//! A subscription holds a cursor per assigned partition. While it has
//! credit it reads whole batches from the partitions that have data (round
//! robin) and sends them as `Records` frames; when it is out of credit or
//! caught up it waits for the client (credit, commits), for a partition's
//! high watermark to move (live tail), for a group rebalance, or for
//! shutdown. A slow subscriber only ever stalls its own stream: it holds
//! no lock and at most one frame of data while it waits.
//!
//! A partition whose records cannot be read (a damaged range, or a log that
//! could not be opened because its files are damaged) is reported with
//! `PartitionError` after the batches before the damage were delivered.
//! The partition then stops (and a single-partition subscription ends with
//! the same code), or, with `SKIP_DAMAGED`, goes on from the end of the
//! range; the other partitions are not affected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::parse_header;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::subscribe::{
    AssignedPartition, Assignment, Commit, OffsetBatch, PartitionError, RECORDS_FRAMING,
    RECORDS_PER_BATCH_FRAMING, Records, StartPosition, Subscribe, SubscriptionTarget,
};
use strongbox_protocol::model::Operations;
use strongbox_protocol::session::subscribe::{BrokerSubscription, SubscriptionRequest};
use strongbox_storage::log::WatermarkSubscription;

use crate::error::BrokerError;
use crate::error::redact_paths;
use crate::services::authz::Authorizer;
use crate::services::caller::ConnCtx;
use crate::services::partitions::groups::{MemberAssignment, Membership};
use crate::services::partitions::partition::{DamagedRange, Delivery, Partition};
use crate::services::partitions::topics::{PartitionSlot, Topic};
use crate::transport::stream_io::{FrameReader, FrameWriter, end_with_error};

/// Most bytes of batches read for one `Records` frame.
const MAX_RECORDS_FRAME: usize = 1024 * 1024;

/// Longest consumer group name.
const MAX_GROUP_NAME: usize = 249;

struct Cursor {
    partition: Arc<Partition>,
    next: u64,
    /// Wakes when the partition's high watermark moves.
    hw: WatermarkSubscription,
}

/// Serves a subscription stream whose first frame is `first`.
pub async fn serve(ctx: ConnCtx, first: Frame, mut reader: FrameReader, mut writer: FrameWriter) {
    let mut session = BrokerSubscription::new();
    let subscribe = match session.handle_frame(first) {
        Ok(SubscriptionRequest::Open(s)) => s,
        Ok(_) => return,
        Err(v) => {
            end_with_error(&mut writer, &mut reader, v.code, &v.message).await;
            return;
        }
    };
    // Held until this task ends, even when it is aborted with its
    // connection: the gauge never counts a subscription that is gone.
    let _active = crate::metrics::GaugeGuard::hold(&ctx.state.metrics.subscriptions_active);
    let mut sub = Subscription {
        ctx: ctx.clone(),
        session,
        reader,
        writer,
        topic: None,
        group: None,
        membership: None,
        cursors: BTreeMap::new(),
        stopped: BTreeMap::new(),
        stop_reason: None,
        round_robin: 0,
        start: subscribe.start,
        generation: None,
    };
    let end = match sub.open(&subscribe).await {
        Ok(()) => sub.run().await,
        Err(e) => Err(e),
    };
    match end {
        Err(e) => {
            sub.session.fail(e.code, e.message.clone());
            end_with_error(&mut sub.writer, &mut sub.reader, e.code, &e.message).await;
        }
        // `SubscriptionEnd` is the last frame, and on shutdown the
        // connection closes right after the streams end: wait until the
        // client has it.
        Ok(()) => {
            sub.writer
                .finish_delivered(ctx.state.config.listener.shutdown_grace.0)
                .await;
        }
    }
}

struct Subscription {
    ctx: ConnCtx,
    session: BrokerSubscription,
    reader: FrameReader,
    writer: FrameWriter,
    topic: Option<Arc<Topic>>,
    group: Option<String>,
    membership: Option<Membership>,
    cursors: BTreeMap<u32, Cursor>,
    /// Assigned partitions reported with `PartitionError` and no longer
    /// delivered, with the offset they stopped at.
    stopped: BTreeMap<u32, u64>,
    /// The code and reason of the last `PartitionError` that stopped a
    /// partition, for the `SubscriptionEnd` of a single partition.
    stop_reason: Option<(ErrorCode, String)>,
    round_robin: usize,
    start: StartPosition,
    /// The generation of the assignment in force; `None` before the first.
    generation: Option<u32>,
}

/// How a subscription ended without an error.
enum Ended {
    Unsubscribed,
    ShuttingDown,
    TopicDeleted,
    ClientGone,
    /// The one partition of a single-partition subscription was stopped
    /// by a `PartitionError` with this code and reason.
    PartitionStopped(ErrorCode, String),
}

impl Subscription {
    async fn open(&mut self, subscribe: &Subscribe) -> Result<(), BrokerError> {
        let mut authz = Authorizer::new(&self.ctx);
        // Reading the audit trail needs `audit`, not `subscribe`.
        let op = crate::audit::read_operation(&subscribe.topic, Operations::SUBSCRIBE);
        authz.check(op, &subscribe.topic)?;
        let topic = self
            .ctx
            .state
            .partitions
            .topics()
            .require(&subscribe.topic)?;
        self.topic = Some(topic.clone());
        match &subscribe.target {
            SubscriptionTarget::Partition(p) => {
                // A partition whose damaged files kept it from opening is
                // assigned, then reported like damage found later.
                if let Err(e) = topic.partition(*p)
                    && e.code != ErrorCode::DataDamaged
                {
                    return Err(e);
                }
                // A single-partition subscription never rebalances: its one
                // assignment has generation 0.
                self.assign(MemberAssignment {
                    generation: 0,
                    partitions: vec![*p],
                })
                .await
            }
            SubscriptionTarget::Group(group) => {
                validate_group(group)?;
                self.group = Some(group.clone());
                let mut membership = self.ctx.state.partitions.groups().join(
                    group,
                    topic.name(),
                    topic.partition_count(),
                );
                let assignment = membership.assignment.borrow_and_update().clone();
                self.membership = Some(membership);
                self.assign(assignment).await
            }
        }
    }

    /// Makes `assignment` current: resolves each partition's start and
    /// sends the `Assignment` frame, then a `PartitionError` for each newly
    /// assigned partition whose damaged files kept it from opening.
    async fn assign(&mut self, assignment: MemberAssignment) -> Result<(), BrokerError> {
        let Some(topic) = self.topic.clone() else {
            return Err(BrokerError::new(
                ErrorCode::Internal,
                "subscription without topic",
            ));
        };
        if self.generation.is_some_and(|g| assignment.generation <= g) {
            // Already applied (a watch can report the value it started with).
            return Ok(());
        }
        if self.session.is_unsubscribed() {
            // The client is leaving; a rebalance no longer concerns it.
            return Ok(());
        }
        let mut cursors = BTreeMap::new();
        let mut stopped = BTreeMap::new();
        let mut reports = Vec::new();
        for index in &assignment.partitions {
            // Keep cursors of partitions this member already had.
            if let Some(cursor) = self.cursors.remove(index) {
                cursors.insert(*index, cursor);
                continue;
            }
            if let Some(at) = self.stopped.remove(index) {
                stopped.insert(*index, at);
                continue;
            }
            let opened = topic.partition(*index).cloned();
            let started = match opened {
                Ok(partition) => match self.start_offset(&topic, &partition).await {
                    Ok(next) => Ok((partition, next)),
                    Err(e) => Err((e, partition.log_start_offset())),
                },
                Err(e) => Err((e, 0)),
            };
            match started {
                Ok((partition, next)) => {
                    let hw = partition.watch_high_watermark();
                    cursors.insert(
                        *index,
                        Cursor {
                            partition,
                            next,
                            hw,
                        },
                    );
                }
                // Damaged files: this partition is reported, the others
                // are served.
                Err((mut e, first)) if e.code == ErrorCode::DataDamaged => {
                    // The reason without the "topic/partition is
                    // unavailable" framing: the report names the partition.
                    if let Some(PartitionSlot::Failed(failed)) =
                        topic.partitions.get(*index as usize)
                    {
                        e.message = redact_paths(&failed.reason);
                    }
                    stopped.insert(*index, first);
                    reports.push((
                        *index,
                        DamagedRange {
                            first,
                            end: None,
                            error: e,
                        },
                    ));
                }
                Err((e, _)) => return Err(e),
            }
        }
        self.cursors = cursors;
        self.stopped = stopped;
        self.generation = Some(assignment.generation);
        let mut partitions: Vec<AssignedPartition> = self
            .cursors
            .iter()
            .map(|(p, c)| AssignedPartition {
                partition: *p,
                next_offset: c.next,
            })
            .chain(self.stopped.iter().map(|(p, at)| AssignedPartition {
                partition: *p,
                next_offset: *at,
            }))
            .collect();
        partitions.sort_by_key(|p| p.partition);
        let frame = self.session.assign(Assignment {
            generation: assignment.generation,
            partitions,
        });
        let frame = frame.map_err(|v| BrokerError::new(v.code, v.message))?;
        self.send(&frame).await?;
        for (index, range) in reports {
            self.report_damage(index, range).await?;
        }
        Ok(())
    }

    /// Sends `PartitionError` for partition `index` (assigned): the
    /// partition then goes on from the end of the range (`SKIP_DAMAGED`
    /// and a known end) or stops.
    async fn report_damage(&mut self, index: u32, range: DamagedRange) -> Result<(), BrokerError> {
        let code = range.error.code;
        let reason = range.error.message;
        tracing::warn!(
            partition = index,
            first = range.first,
            end = ?range.end,
            skip = self.session.skip_damaged(),
            "reporting a damaged range to a subscriber"
        );
        let (frame, continues) = self
            .session
            .partition_error(PartitionError {
                partition: index,
                code: code.as_u16(),
                first_offset: range.first,
                end_offset: range.end.unwrap_or(PartitionError::END_UNKNOWN),
                message: reason.clone(),
            })
            .map_err(|v| BrokerError::new(v.code, v.message))?;
        self.send(&frame).await?;
        match (continues, range.end) {
            (true, Some(end)) => {
                if let Some(cursor) = self.cursors.get_mut(&index) {
                    cursor.next = cursor.next.max(end);
                }
            }
            _ => {
                let at = self.cursors.remove(&index).map_or(range.first, |c| c.next);
                self.stopped.entry(index).or_insert(at);
                let topic = self.topic.as_ref().map_or("", |t| t.name());
                self.stop_reason = Some((code, format!("{topic}/{index}: {reason}")));
            }
        }
        Ok(())
    }

    async fn start_offset(
        &self,
        topic: &Topic,
        partition: &Arc<Partition>,
    ) -> Result<u64, BrokerError> {
        let start = partition.log_start_offset();
        let end = partition.high_watermark();
        if let Some(group) = &self.group {
            let (meta, group, name, index) = (
                self.ctx.state.meta.clone(),
                group.clone(),
                topic.name().to_owned(),
                partition.index,
            );
            let committed =
                tokio::task::spawn_blocking(move || meta.read(|v| v.offset(&group, &name, index)))
                    .await
                    .map_err(|e| BrokerError::internal("reading a committed offset", e))?
                    .map_err(|e| BrokerError::internal("reading a committed offset", e))?;
            if let Some(offset) = committed {
                // Retention may have removed what the group had not read.
                return Ok(offset.clamp(start, end));
            }
        }
        match self.start {
            StartPosition::Earliest => Ok(start),
            StartPosition::Latest => Ok(end),
            StartPosition::Offset(o) if (start..=end).contains(&o) => Ok(o),
            StartPosition::Offset(o) => Err(BrokerError::new(
                ErrorCode::OffsetOutOfRange,
                format!(
                    "{}/{}: offset {o} is outside the retained range {start}..{end}",
                    topic.name(),
                    partition.index
                ),
            )),
            StartPosition::Timestamp(t) => partition.find_timestamp(&self.ctx.principal, t).await,
        }
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), BrokerError> {
        self.writer
            .send(frame)
            .await
            .map_err(|e| BrokerError::new(ErrorCode::Internal, format!("sending failed: {e}")))
    }

    async fn run(&mut self) -> Result<(), BrokerError> {
        let mut shutdown = self.ctx.shutdown.clone();
        let ended = loop {
            if self.cursors.values().any(|c| c.partition.is_closed()) {
                break Ended::TopicDeleted;
            }
            if self.group.is_none() && self.cursors.is_empty() {
                let (code, reason) = self
                    .stop_reason
                    .take()
                    .unwrap_or((ErrorCode::Internal, "the partition stopped".to_owned()));
                break Ended::PartitionStopped(code, reason);
            }
            while self.session.can_send() {
                if !self.deliver_one().await? {
                    break;
                }
            }
            if self.group.is_none() && self.cursors.is_empty() {
                // Its one partition was just stopped: end it above.
                continue;
            }
            let waiting_for_data = self.session.can_send();
            tokio::select! {
                frame = self.reader.next() => match frame {
                    Ok(Some(frame)) => {
                        if let Some(ended) = self.on_frame(frame).await? {
                            break ended;
                        }
                    }
                    // The client finished its send side, after Unsubscribe
                    // or instead of it: either way a normal end.
                    Ok(None) => break Ended::Unsubscribed,
                    Err(e) => match e.code() {
                        Some(code) => return Err(BrokerError::new(code, e.to_string())),
                        None => break Ended::ClientGone,
                    },
                },
                () = wait_for_data(&mut self.cursors), if waiting_for_data => {}
                changed = wait_for_rebalance(self.membership.as_mut()) => {
                    if let Some(assignment) = changed {
                        self.assign(assignment).await?;
                    }
                }
                () = crate::shutdown::stopped(&mut shutdown) => {
                    break if self.session.is_unsubscribed() {
                        Ended::Unsubscribed
                    } else {
                        Ended::ShuttingDown
                    };
                }
            }
        };
        let frame = match ended {
            Ended::Unsubscribed => match self.session.client_finished() {
                Some(frame) => frame,
                None => return Ok(()),
            },
            Ended::ShuttingDown => self
                .session
                .end(Some(ErrorCode::ShuttingDown), "the broker is shutting down"),
            Ended::TopicDeleted => self
                .session
                .end(Some(ErrorCode::UnknownTopic), "the topic was deleted"),
            Ended::PartitionStopped(code, reason) => self.session.end(Some(code), reason),
            Ended::ClientGone => return Ok(()),
        };
        self.send(&frame).await
    }

    /// Processes one client frame; `Some` when the subscription ends.
    async fn on_frame(&mut self, frame: Frame) -> Result<Option<Ended>, BrokerError> {
        match self.session.handle_frame(frame) {
            Ok(SubscriptionRequest::CreditAdded) => Ok(None),
            Ok(SubscriptionRequest::Reply(frame)) => {
                self.send(&frame).await?;
                Ok(None)
            }
            Ok(SubscriptionRequest::Commit(commit)) => {
                let result = self.commit(commit).await;
                let frame = self.session.commit_done(commit, result);
                self.send(&frame).await?;
                Ok(None)
            }
            // Records stop now (the session allows none); the end comes
            // with the client's finish, and any frame before it is a
            // violation.
            Ok(SubscriptionRequest::Unsubscribe) => Ok(None),
            Ok(SubscriptionRequest::Open(_)) => Err(BrokerError::new(
                ErrorCode::UnexpectedFrame,
                "Subscribe on an open subscription",
            )),
            Err(v) => Err(BrokerError::new(v.code, v.message)),
        }
    }

    async fn commit(&self, commit: Commit) -> Result<(), ErrorCode> {
        let (Some(group), Some(topic)) = (self.group.clone(), self.topic.clone()) else {
            return Err(ErrorCode::InvalidRequest);
        };
        // A commit past the partition's end would make the next start take
        // the log for one cut short (and open it read-only).
        if let Some(c) = self.cursors.get(&commit.partition)
            && commit.offset > c.partition.high_watermark()
        {
            return Err(ErrorCode::OffsetOutOfRange);
        }
        let stored = self
            .ctx
            .state
            .metadata
            .commit_offset(
                group,
                topic.name().to_owned(),
                commit.partition,
                commit.offset,
            )
            .await;
        match stored {
            Ok(()) => {
                if let Some(c) = self.cursors.get(&commit.partition) {
                    let lag = c.partition.high_watermark().saturating_sub(commit.offset);
                    self.ctx
                        .state
                        .metrics
                        .consumer_lag
                        .with_label_values(&[
                            topic.name(),
                            &commit.partition.to_string(),
                            self.group.as_deref().unwrap_or_default(),
                        ])
                        .set(i64::try_from(lag).unwrap_or(i64::MAX));
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e.message, "cannot store a committed offset");
                Err(e.code)
            }
        }
    }

    /// Sends one `Records` frame from the next partition with data; false
    /// when every partition is caught up.
    async fn deliver_one(&mut self) -> Result<bool, BrokerError> {
        let budget = self.frame_budget();
        let indexes: Vec<u32> = self.cursors.keys().copied().collect();
        if indexes.is_empty() {
            return Ok(false);
        }
        for step in 0..indexes.len() {
            let at = (self.round_robin + step) % indexes.len();
            let Some(index) = indexes.get(at).copied() else {
                continue;
            };
            let Some(cursor) = self.cursors.get_mut(&index) else {
                continue;
            };
            let partition = cursor.partition.clone();
            let start = partition.log_start_offset();
            if cursor.next < start {
                // Retention removed records this subscriber had not read.
                tracing::info!(
                    partition = index,
                    from = cursor.next,
                    to = start,
                    "skipping records removed by retention"
                );
                cursor.next = start;
            }
            let hw = partition.high_watermark();
            if cursor.next >= hw {
                continue;
            }
            let started = Instant::now();
            // Data keys this read unwraps are audited as this principal's.
            let read = partition
                .deliver(&self.ctx.principal, cursor.next, budget)
                .await?;
            self.ctx
                .state
                .metrics
                .fetch_latency
                .observe(started.elapsed().as_secs_f64());
            let batches = match read {
                Delivery::Batches(batches) => batches,
                Delivery::Damaged(range) => {
                    self.round_robin = at + 1;
                    self.report_damage(index, range).await?;
                    return Ok(true);
                }
            };
            if batches.is_empty() {
                continue;
            }
            let mut records = 0u64;
            let mut bytes = 0u64;
            let mut out = Vec::with_capacity(batches.len());
            let mut next = cursor.next;
            // The frame must fit the client's max_frame_size: take batches
            // while they do (a batch is never split; the rest comes in the
            // next frame).
            let max_length = u64::from(self.writer.max_frame_size());
            let mut length = u64::from(RECORDS_FRAMING - RECORDS_PER_BATCH_FRAMING);
            for (base, batch) in batches {
                let grown = length
                    .saturating_add(u64::from(RECORDS_PER_BATCH_FRAMING))
                    .saturating_add(batch.len() as u64);
                if grown > max_length {
                    if out.is_empty() {
                        // Only a batch stored under a larger max_batch_size
                        // than the broker has now can get here: the
                        // handshake refuses a client too small for that.
                        return Err(BrokerError::new(
                            ErrorCode::FrameTooLarge,
                            format!(
                                "{}/{index}: the batch at offset {base} is {} bytes, more than a Records frame within your max_frame_size {max_length} can carry; reconnect with a larger max_frame_size",
                                partition.topic,
                                batch.len()
                            ),
                        ));
                    }
                    break;
                }
                length = grown;
                let header = parse_header(&batch).map_err(|e| {
                    BrokerError::new(
                        ErrorCode::PartitionUnavailable,
                        format!(
                            "{}/{index}: stored batch at {base} is unreadable: {e}",
                            partition.topic
                        ),
                    )
                })?;
                next = base.saturating_add(u64::from(header.record_count));
                records += u64::from(header.record_count);
                bytes += batch.len() as u64;
                out.push(OffsetBatch {
                    base_offset: base,
                    batch,
                });
            }
            cursor.next = next;
            self.round_robin = at + 1;
            let frame = self
                .session
                .records(Records {
                    partition: index,
                    high_watermark: hw,
                    batches: out,
                })
                .map_err(|v| BrokerError::new(v.code, v.message))?;
            self.send(&frame).await?;
            let metrics = &self.ctx.state.metrics;
            metrics
                .messages_out
                .with_label_values(&[&partition.topic])
                .inc_by(records);
            metrics
                .bytes_out
                .with_label_values(&[&partition.topic])
                .inc_by(bytes);
            return Ok(true);
        }
        Ok(false)
    }

    /// Bytes of batches to read for the next frame: what the credit allows,
    /// capped by the frame limits (the frame is cut to fit exactly when it
    /// is built).
    fn frame_budget(&self) -> usize {
        let credit = usize::try_from(self.session.remaining_credit().max(1)).unwrap_or(usize::MAX);
        let frame_cap = self.writer.max_frame_size() as usize;
        credit.min(MAX_RECORDS_FRAME).min(frame_cap.max(1))
    }
}

fn validate_group(group: &str) -> Result<(), BrokerError> {
    let ok = !group.is_empty()
        && group.len() <= MAX_GROUP_NAME
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::new(
            ErrorCode::InvalidGroup,
            format!(
                "group name {group:?} must be 1 to 249 characters of letters, digits, '.', '_', '-', ':'"
            ),
        ))
    }
}

/// Resolves when the high watermark of a partition that is caught up moves.
async fn wait_for_data(cursors: &mut BTreeMap<u32, Cursor>) {
    let waits: Vec<_> = cursors
        .values_mut()
        .map(|c| {
            let next = c.next;
            // Seen before the value is read: a move in between wakes the
            // wait below at once.
            c.hw.mark_seen();
            let closed_or_moved = c.partition.is_closed() || c.partition.high_watermark() > next;
            let rx = &mut c.hw;
            Box::pin(async move {
                if closed_or_moved {
                    return;
                }
                // An error means the partition is gone; wake up to notice.
                let _ = rx.changed().await;
            })
        })
        .collect();
    if waits.is_empty() {
        std::future::pending::<()>().await;
    }
    futures::future::select_all(waits).await;
}

/// Resolves with the new assignment when the group rebalances; never for a
/// single-partition subscription.
async fn wait_for_rebalance(membership: Option<&mut Membership>) -> Option<MemberAssignment> {
    match membership {
        Some(m) => match m.assignment.changed().await {
            Ok(()) => Some(m.assignment.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
