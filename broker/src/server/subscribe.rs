//! Subscription streams: records pushed within the client's byte credit.
//!
//! A subscription holds a cursor per assigned partition. While it has
//! credit it reads whole batches from the partitions that have data (round
//! robin) and sends them as `Records` frames; when it is out of credit or
//! caught up it waits for the client (credit, commits), for a partition's
//! high watermark to move (live tail), for a group rebalance, or for
//! shutdown. A slow subscriber only ever stalls its own stream: it holds
//! no lock and at most one frame of data while it waits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::parse_header;
use strongbox_protocol::frame::{FRAME_HEADER_LEN, Frame};
use strongbox_protocol::frames::admin_types::Operations;
use strongbox_protocol::frames::subscribe::{
    AssignedPartition, Assignment, Commit, OffsetBatch, Records, StartPosition, Subscribe,
    SubscriptionTarget,
};
use strongbox_protocol::session::subscribe::{BrokerSubscription, SubscriptionRequest};
use tokio::sync::watch;

use crate::server::authz::Authorizer;
use crate::server::connection::ConnCtx;
use crate::server::error::BrokerError;
use crate::server::groups::{MemberAssignment, Membership};
use crate::server::partition::Partition;
use crate::server::stream_io::{FrameReader, FrameWriter};
use crate::server::topics::Topic;

/// Most bytes of batches read for one `Records` frame.
const MAX_RECORDS_FRAME: usize = 1024 * 1024;

/// Longest consumer group name.
const MAX_GROUP_NAME: usize = 249;

struct Cursor {
    partition: Arc<Partition>,
    next: u64,
    hw: watch::Receiver<u64>,
}

/// Serves a subscription stream whose first frame is `first`.
pub async fn serve(ctx: ConnCtx, first: Frame, reader: FrameReader, writer: FrameWriter) {
    let mut session = BrokerSubscription::new();
    let subscribe = match session.handle_frame(first) {
        Ok(SubscriptionRequest::Open(s)) => s,
        Ok(_) | Err(_) => return,
    };
    let metrics = ctx.state.metrics.clone();
    metrics.subscriptions_active.inc();
    let mut sub = Subscription {
        ctx: ctx.clone(),
        session,
        reader,
        writer,
        topic: None,
        group: None,
        membership: None,
        cursors: BTreeMap::new(),
        round_robin: 0,
        start: subscribe.start,
        generation: 0,
    };
    let end = match sub.open(&subscribe).await {
        Ok(()) => sub.run().await,
        Err(e) => Err(e),
    };
    if let Err(e) = end {
        let frame = sub.session.fail(e.code, e.message);
        let _ = sub.writer.send(&frame).await;
    }
    let _ = sub.writer.finish();
    metrics.subscriptions_active.dec();
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
    round_robin: usize,
    start: StartPosition,
    generation: u32,
}

/// How a subscription ended without an error.
enum Ended {
    Unsubscribed,
    ShuttingDown,
    TopicDeleted,
    ClientGone,
}

impl Subscription {
    async fn open(&mut self, subscribe: &Subscribe) -> Result<(), BrokerError> {
        let mut authz = Authorizer::new(&self.ctx);
        // Reading the audit trail needs `audit`, not `subscribe`.
        let op = crate::audit::read_operation(&subscribe.topic, Operations::SUBSCRIBE);
        authz.check(op, &subscribe.topic)?;
        let topic = self.ctx.state.topics.require(&subscribe.topic)?;
        self.topic = Some(topic.clone());
        match &subscribe.target {
            SubscriptionTarget::Partition(p) => {
                let partition = topic.partition(*p)?.clone();
                self.assign(MemberAssignment {
                    generation: 1,
                    partitions: vec![partition.index],
                })
                .await
            }
            SubscriptionTarget::Group(group) => {
                validate_group(group)?;
                self.group = Some(group.clone());
                let mut membership =
                    self.ctx
                        .state
                        .groups
                        .join(group, topic.name(), topic.partition_count());
                let assignment = membership.assignment.borrow_and_update().clone();
                self.membership = Some(membership);
                self.assign(assignment).await
            }
        }
    }

    /// Makes `assignment` current: resolves each partition's start and
    /// sends the `Assignment` frame.
    async fn assign(&mut self, assignment: MemberAssignment) -> Result<(), BrokerError> {
        let Some(topic) = self.topic.clone() else {
            return Err(BrokerError::new(
                ErrorCode::Internal,
                "subscription without topic",
            ));
        };
        if assignment.generation <= self.generation {
            // Already applied (a watch can report the value it started with).
            return Ok(());
        }
        let mut cursors = BTreeMap::new();
        for index in &assignment.partitions {
            // Keep cursors of partitions this member already had.
            if let Some(cursor) = self.cursors.remove(index) {
                cursors.insert(*index, cursor);
                continue;
            }
            let partition = topic.partition(*index)?.clone();
            let next = self.start_offset(&topic, &partition).await?;
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
        self.cursors = cursors;
        self.generation = assignment.generation;
        let frame = self.session.assign(Assignment {
            generation: self.generation,
            partitions: self
                .cursors
                .iter()
                .map(|(p, c)| AssignedPartition {
                    partition: *p,
                    next_offset: c.next,
                })
                .collect(),
        });
        let frame = frame.map_err(|v| BrokerError::new(v.code, v.message))?;
        self.send(&frame).await
    }

    async fn start_offset(&self, topic: &Topic, partition: &Partition) -> Result<u64, BrokerError> {
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
            StartPosition::Timestamp(t) => {
                crate::audit::with_principal(&self.ctx.principal, || {
                    partition.offset_for_timestamp(t)
                })
            }
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
            while self.session.can_send() {
                if !self.deliver_one().await? {
                    break;
                }
            }
            let waiting_for_data = self.session.can_send();
            tokio::select! {
                frame = self.reader.next() => match frame {
                    Ok(Some(frame)) => {
                        if let Some(ended) = self.on_frame(frame).await? {
                            break ended;
                        }
                    }
                    Ok(None) => break Ended::ClientGone,
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
                () = crate::server::stopped(&mut shutdown) => break Ended::ShuttingDown,
            }
        };
        let frame = match ended {
            Ended::Unsubscribed => self.session.end(None, "unsubscribed"),
            Ended::ShuttingDown => self
                .session
                .end(Some(ErrorCode::ShuttingDown), "the broker is shutting down"),
            Ended::TopicDeleted => self
                .session
                .end(Some(ErrorCode::UnknownTopic), "the topic was deleted"),
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
            Ok(SubscriptionRequest::Unsubscribe) => Ok(Some(Ended::Unsubscribed)),
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
        let meta = self.ctx.state.meta.clone();
        let name = topic.name().to_owned();
        let stored = tokio::task::spawn_blocking(move || {
            meta.write(|b| b.commit_offset(&group, &name, commit.partition, commit.offset))
        })
        .await;
        match stored {
            Ok(Ok(())) => {
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
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot store a committed offset");
                Err(ErrorCode::Internal)
            }
            Err(e) => {
                tracing::error!(error = %e, "commit task failed");
                Err(ErrorCode::Internal)
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
            let batches = crate::audit::with_principal(&self.ctx.principal, || {
                partition.read(cursor.next, budget)
            })?;
            self.ctx
                .state
                .metrics
                .fetch_latency
                .observe(started.elapsed().as_secs_f64());
            if batches.is_empty() {
                continue;
            }
            let mut records = 0u64;
            let mut bytes = 0u64;
            let mut out = Vec::with_capacity(batches.len());
            let mut next = cursor.next;
            for (base, batch) in batches {
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
    /// capped by the frame limits.
    fn frame_budget(&self) -> usize {
        let credit = usize::try_from(self.session.remaining_credit().max(1)).unwrap_or(usize::MAX);
        let frame_cap =
            (self.ctx.peer_max_frame_size as usize).saturating_sub(FRAME_HEADER_LEN + 1024);
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
            let closed_or_moved = c.partition.is_closed() || *c.hw.borrow_and_update() > next;
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
