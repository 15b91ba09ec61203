//! Subscription streams: `Subscribe`, then `Records` within byte credit.
//!
//! Credit is counted in bytes of encoded `Records` frames
//! ([`Records::credit_cost`]). The broker may send a `Records` frame only
//! while the remaining credit is above zero, and then subtracts the frame's
//! cost, so the credit can go negative by at most one frame: a batch larger
//! than the whole window is still delivered, and the client's memory stays
//! bounded by its window plus one frame.
//!
//! A partition whose records cannot be read is reported with
//! `PartitionError` (a damaged offset range). The partition then stops,
//! or, when the client subscribed with `skip_damaged`, continues from the
//! end of the range; the other partitions of the subscription are not
//! affected. Both ends check the same rules ([`PartitionCursor`]).

use std::collections::{BTreeMap, VecDeque};

use crate::error::ErrorCode;
use crate::frame::Frame;
use crate::frames::control::ErrorFrame;
use crate::frames::subscribe::{
    Assignment, Commit, CommitAck, Credit, PartitionError, Records, Subscribe, SubscriptionEnd,
    SubscriptionTarget, Unsubscribe,
};
use crate::session::Violation;

/// Adds `bytes` of credit to `credit`, saturating at `i64::MAX`.
fn add_credit(credit: i64, bytes: u64) -> i64 {
    credit.saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX))
}

fn cost_of(records: &Records) -> i64 {
    i64::try_from(records.credit_cost()).unwrap_or(i64::MAX)
}

/// What a subscription stream has carried so far for one assigned
/// partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct PartitionCursor {
    /// The last base offset sent.
    last: Option<u64>,
    /// Batches must start at or after this (the end of a skipped range).
    resume: u64,
    /// A `PartitionError` stopped the partition: nothing more may come.
    halted: bool,
}

impl PartitionCursor {
    /// Checks the offsets of a `Records` frame and advances.
    fn records(&mut self, records: &Records) -> Result<(), Violation> {
        let violation =
            |message: String| Err(Violation::new(ErrorCode::ProtocolViolation, message));
        if records.batches.is_empty() {
            return violation("Records frame without batches".into());
        }
        if self.halted {
            return violation(format!(
                "Records for partition {} after a PartitionError stopped it",
                records.partition
            ));
        }
        let mut prev = self.last;
        for batch in &records.batches {
            if prev.is_some_and(|p| batch.base_offset <= p) {
                return violation(format!(
                    "partition {}: base offset {} does not follow {}",
                    records.partition,
                    batch.base_offset,
                    prev.unwrap_or_default()
                ));
            }
            if batch.base_offset < self.resume {
                return violation(format!(
                    "partition {}: base offset {} lies in the damaged range skipped up to {}",
                    records.partition, batch.base_offset, self.resume
                ));
            }
            prev = Some(batch.base_offset);
        }
        self.last = prev;
        Ok(())
    }

    /// Checks a `PartitionError` and applies it: the partition stops, or
    /// (when `skip` and the end is known) resumes at the range's end.
    fn damaged(&mut self, error: &PartitionError, skip: bool) -> Result<(), Violation> {
        let violation =
            |message: String| Err(Violation::new(ErrorCode::ProtocolViolation, message));
        if error.code == 0 {
            return violation(format!(
                "PartitionError for partition {} without an error code",
                error.partition
            ));
        }
        if self.halted {
            return violation(format!(
                "PartitionError for partition {} after one stopped it",
                error.partition
            ));
        }
        if error.first_offset >= error.end_offset {
            return violation(format!(
                "PartitionError for partition {}: empty range {}..{}",
                error.partition, error.first_offset, error.end_offset
            ));
        }
        let floor = self
            .last
            .map_or(self.resume, |l| l.saturating_add(1).max(self.resume));
        if error.first_offset < floor {
            return violation(format!(
                "PartitionError for partition {}: range {}..{} starts before offset {floor}, \
                 which was already passed",
                error.partition, error.first_offset, error.end_offset
            ));
        }
        match error.end() {
            Some(end) if skip => self.resume = end,
            _ => self.halted = true,
        }
        Ok(())
    }
}

/// Cursors for the partitions of `assignment`, all starting over.
fn cursors(assignment: &Assignment) -> BTreeMap<u32, PartitionCursor> {
    assignment
        .partitions
        .iter()
        .map(|p| (p.partition, PartitionCursor::default()))
        .collect()
}

/// What the client learns from a subscription stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberEvent {
    /// The partitions this subscription now reads.
    Assigned(Assignment),
    /// Record batches.
    Records(Records),
    /// Records of one partition cannot be delivered. Unless the
    /// subscription skips damaged ranges (and the range's end is known),
    /// that partition gets nothing more; the others go on.
    PartitionError(PartitionError),
    /// A commit was stored.
    Committed(CommitAck),
    /// A commit was refused; the subscription goes on.
    CommitRefused(CommitAck),
    /// The subscription is over (after `Unsubscribe`, or ended by the
    /// broker with a code).
    Ended(SubscriptionEnd),
    /// The broker refused or aborted the subscription.
    Failed(ErrorFrame),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    AwaitingAssignment,
    Active,
    Unsubscribing,
    Ended,
}

/// Why the client may not send a `Commit`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitRefused {
    /// Only group subscriptions commit offsets.
    #[error("only consumer-group subscriptions can commit offsets")]
    NotAGroup,
    /// The partition is not assigned to this subscription.
    #[error("partition {0} is not assigned to this subscription")]
    NotAssigned(u32),
    /// The subscription is not active.
    #[error("the subscription is not active")]
    NotActive,
}

/// The client end of a subscription stream.
#[derive(Debug, Clone)]
pub struct SubscriberSession {
    state: ClientState,
    group: bool,
    skip_damaged: bool,
    credit: i64,
    generation: u32,
    last_offsets: BTreeMap<u32, PartitionCursor>,
    pending_commits: VecDeque<(u32, u64)>,
}

impl SubscriberSession {
    /// Opens a subscription; returns the session and the `Subscribe` frame
    /// to send first.
    pub fn new(subscribe: Subscribe) -> (Self, Frame) {
        let session = Self {
            state: ClientState::AwaitingAssignment,
            group: matches!(subscribe.target, SubscriptionTarget::Group(_)),
            skip_damaged: subscribe.skip_damaged,
            credit: add_credit(0, subscribe.credit),
            generation: 0,
            last_offsets: BTreeMap::new(),
            pending_commits: VecDeque::new(),
        };
        (session, Frame::Subscribe(subscribe))
    }

    /// Remaining credit in bytes (negative after an oversized frame).
    pub fn remaining_credit(&self) -> i64 {
        self.credit
    }

    /// The partitions currently assigned.
    pub fn assigned(&self) -> impl Iterator<Item = u32> + '_ {
        self.last_offsets.keys().copied()
    }

    /// True once the stream is over.
    pub fn is_ended(&self) -> bool {
        self.state == ClientState::Ended
    }

    /// Processes a frame from the broker.
    ///
    /// # Errors
    ///
    /// A [`Violation`] when the broker breaks the protocol: `Records`
    /// without credit ([`ErrorCode::CreditExceeded`]), for an unassigned
    /// partition or with offsets that do not increase
    /// ([`ErrorCode::ProtocolViolation`]), `Records` for a partition a
    /// `PartitionError` stopped or inside a skipped range, a
    /// `PartitionError` that is empty, without a code or before offsets
    /// already passed ([`ErrorCode::ProtocolViolation`]), frames out of
    /// order ([`ErrorCode::UnexpectedFrame`]) or foreign to the stream.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<SubscriberEvent, Violation> {
        let result = self.dispatch(frame);
        if result.is_err() {
            self.state = ClientState::Ended;
        }
        result
    }

    fn dispatch(&mut self, frame: Frame) -> Result<SubscriberEvent, Violation> {
        use ClientState::{Active, AwaitingAssignment, Ended, Unsubscribing};
        match (self.state, frame) {
            (Ended, frame) => Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!("{} after the subscription ended", frame.frame_type().name()),
            )),
            (AwaitingAssignment | Active | Unsubscribing, Frame::Assignment(a)) => {
                if self.state != AwaitingAssignment && a.generation <= self.generation {
                    return Err(Violation::new(
                        ErrorCode::ProtocolViolation,
                        format!(
                            "assignment generation {} does not follow {}",
                            a.generation, self.generation
                        ),
                    ));
                }
                self.generation = a.generation;
                self.last_offsets = cursors(&a);
                if self.state == AwaitingAssignment {
                    self.state = Active;
                }
                Ok(SubscriberEvent::Assigned(a))
            }
            (AwaitingAssignment, Frame::Error(e)) | (Active | Unsubscribing, Frame::Error(e)) => {
                self.state = Ended;
                Ok(SubscriberEvent::Failed(e))
            }
            (
                AwaitingAssignment,
                frame @ (Frame::Records(_) | Frame::CommitAck(_) | Frame::PartitionError(_)),
            ) => Err(Violation::unexpected(&frame, "before Assignment")),
            (AwaitingAssignment, frame @ Frame::SubscriptionEnd(_)) => {
                Err(Violation::unexpected(&frame, "before Assignment"))
            }
            (Active | Unsubscribing, Frame::Records(records)) => {
                if self.credit <= 0 {
                    return Err(Violation::new(
                        ErrorCode::CreditExceeded,
                        format!("Records frame with {} bytes of credit left", self.credit),
                    ));
                }
                let Some(cursor) = self.last_offsets.get_mut(&records.partition) else {
                    return Err(Violation::new(
                        ErrorCode::ProtocolViolation,
                        format!("Records for unassigned partition {}", records.partition),
                    ));
                };
                cursor.records(&records)?;
                self.credit = self.credit.saturating_sub(cost_of(&records));
                Ok(SubscriberEvent::Records(records))
            }
            (Active | Unsubscribing, Frame::PartitionError(error)) => {
                let Some(cursor) = self.last_offsets.get_mut(&error.partition) else {
                    return Err(Violation::new(
                        ErrorCode::ProtocolViolation,
                        format!(
                            "PartitionError for unassigned partition {}",
                            error.partition
                        ),
                    ));
                };
                cursor.damaged(&error, self.skip_damaged)?;
                Ok(SubscriberEvent::PartitionError(error))
            }
            (Active | Unsubscribing, Frame::CommitAck(ack)) => {
                match self.pending_commits.front() {
                    Some(&(p, o)) if p == ack.partition && o == ack.offset => {
                        self.pending_commits.pop_front();
                    }
                    _ => {
                        return Err(Violation::new(
                            ErrorCode::UnexpectedFrame,
                            format!(
                                "CommitAck for partition {} offset {} answers no pending commit",
                                ack.partition, ack.offset
                            ),
                        ));
                    }
                }
                Ok(if ack.code == 0 {
                    SubscriberEvent::Committed(ack)
                } else {
                    SubscriberEvent::CommitRefused(ack)
                })
            }
            (Active | Unsubscribing, Frame::SubscriptionEnd(end)) => {
                self.state = Ended;
                Ok(SubscriberEvent::Ended(end))
            }
            (_, frame) => Err(Violation::wrong_stream(&frame, "subscription")),
        }
    }

    /// Grants `bytes` more credit; returns the `Credit` frame to send, or
    /// `None` when the stream is over or `bytes` is 0.
    pub fn grant(&mut self, bytes: u64) -> Option<Frame> {
        if bytes == 0 || matches!(self.state, ClientState::Ended | ClientState::Unsubscribing) {
            return None;
        }
        self.credit = add_credit(self.credit, bytes);
        Some(Frame::Credit(Credit { bytes }))
    }

    /// Commits `offset` (the next offset to read) for `partition`.
    ///
    /// # Errors
    ///
    /// [`CommitRefused`] when the subscription is not a group, not active,
    /// or does not hold the partition.
    pub fn commit(&mut self, partition: u32, offset: u64) -> Result<Frame, CommitRefused> {
        if !self.group {
            return Err(CommitRefused::NotAGroup);
        }
        if self.state != ClientState::Active {
            return Err(CommitRefused::NotActive);
        }
        if !self.last_offsets.contains_key(&partition) {
            return Err(CommitRefused::NotAssigned(partition));
        }
        self.pending_commits.push_back((partition, offset));
        Ok(Frame::Commit(Commit { partition, offset }))
    }

    /// Ends the subscription; returns the `Unsubscribe` frame, or `None` if
    /// it is already ending.
    pub fn unsubscribe(&mut self) -> Option<Frame> {
        match self.state {
            ClientState::AwaitingAssignment | ClientState::Active => {
                self.state = ClientState::Unsubscribing;
                Some(Frame::Unsubscribe(Unsubscribe))
            }
            _ => None,
        }
    }
}

/// What the broker must do for a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionRequest {
    /// Authorize and open it, then call [`BrokerSubscription::assign`].
    Open(Subscribe),
    /// More credit arrived: resume sending if paused.
    CreditAdded,
    /// Store this commit, then call [`BrokerSubscription::commit_done`].
    Commit(Commit),
    /// Send this frame now (a commit refused by the session rules).
    Reply(Frame),
    /// The client unsubscribed: stop sending records and wait for the end of
    /// the client's send side ([`BrokerSubscription::client_finished`]);
    /// any frame before it is a violation.
    Unsubscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerState {
    AwaitingSubscribe,
    Opening,
    Active,
    /// `Unsubscribe` received; waiting for the client to finish its side.
    Unsubscribed,
    Ended,
}

/// The broker end of a subscription stream.
#[derive(Debug)]
pub struct BrokerSubscription {
    state: BrokerState,
    group: bool,
    skip_damaged: bool,
    credit: i64,
    generation: Option<u32>,
    last_offsets: BTreeMap<u32, PartitionCursor>,
}

impl Default for BrokerSubscription {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerSubscription {
    /// A stream waiting for `Subscribe`.
    pub fn new() -> Self {
        Self {
            state: BrokerState::AwaitingSubscribe,
            group: false,
            skip_damaged: false,
            credit: 0,
            generation: None,
            last_offsets: BTreeMap::new(),
        }
    }

    /// Remaining credit in bytes.
    pub fn remaining_credit(&self) -> i64 {
        self.credit
    }

    /// True when a `Records` frame may be sent now.
    pub fn can_send(&self) -> bool {
        self.state == BrokerState::Active && self.credit > 0
    }

    /// True when the client asked to skip damaged ranges: after a
    /// [`PartitionError`] with a known end, the partition continues there.
    pub fn skip_damaged(&self) -> bool {
        self.skip_damaged
    }

    /// True once [`BrokerSubscription::end`] or [`BrokerSubscription::fail`]
    /// was called.
    pub fn is_ended(&self) -> bool {
        self.state == BrokerState::Ended
    }

    /// True after `Unsubscribe`, until the subscription ends.
    pub fn is_unsubscribed(&self) -> bool {
        self.state == BrokerState::Unsubscribed
    }

    /// The client finished its send side. With or without `Unsubscribe`
    /// before it, that ends the subscription normally: the caller sends
    /// the returned `SubscriptionEnd` (code 0) and finishes. `None` when the
    /// subscription already ended.
    pub fn client_finished(&mut self) -> Option<Frame> {
        match self.state {
            BrokerState::Ended => None,
            _ => Some(self.end(None, "unsubscribed")),
        }
    }

    /// Processes a frame from the client.
    ///
    /// # Errors
    ///
    /// A [`Violation`] that ends the stream: a first frame other than
    /// `Subscribe`, frames after `Unsubscribe`, or frames foreign to the
    /// stream ([`ErrorCode::ProtocolViolation`]); a second `Subscribe` or a
    /// `Commit` before the first `Assignment` ([`ErrorCode::UnexpectedFrame`]).
    pub fn handle_frame(&mut self, frame: Frame) -> Result<SubscriptionRequest, Violation> {
        let result = self.dispatch(frame);
        if result.is_err() {
            self.state = BrokerState::Ended;
        }
        result
    }

    fn dispatch(&mut self, frame: Frame) -> Result<SubscriptionRequest, Violation> {
        use BrokerState::{Active, AwaitingSubscribe, Ended, Opening, Unsubscribed};
        match (self.state, frame) {
            (Ended, frame) => Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!("{} after the subscription ended", frame.frame_type().name()),
            )),
            (Unsubscribed, frame) => Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "{} after Unsubscribe: the client must finish its send side",
                    frame.frame_type().name()
                ),
            )),
            (AwaitingSubscribe, Frame::Subscribe(s)) => {
                self.group = matches!(s.target, SubscriptionTarget::Group(_));
                self.skip_damaged = s.skip_damaged;
                self.credit = add_credit(0, s.credit);
                self.state = Opening;
                Ok(SubscriptionRequest::Open(s))
            }
            // The first frame of a stream decides its kind: anything but
            // `Subscribe` here is not a subscription stream at all.
            (AwaitingSubscribe, frame) => Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "a subscription stream must start with Subscribe, not {}",
                    frame.frame_type().name()
                ),
            )),
            (Opening | Active, frame @ Frame::Subscribe(_)) => {
                Err(Violation::unexpected(&frame, "on an open subscription"))
            }
            (Opening | Active, Frame::Credit(c)) => {
                self.credit = add_credit(self.credit, c.bytes);
                Ok(SubscriptionRequest::CreditAdded)
            }
            (Opening, frame @ Frame::Commit(_)) => {
                Err(Violation::unexpected(&frame, "before Assignment"))
            }
            (Active, Frame::Commit(c)) => {
                let refuse = |code: ErrorCode| {
                    Ok(SubscriptionRequest::Reply(Frame::CommitAck(CommitAck {
                        partition: c.partition,
                        offset: c.offset,
                        code: code.as_u16(),
                    })))
                };
                if !self.group {
                    refuse(ErrorCode::InvalidRequest)
                } else if !self.last_offsets.contains_key(&c.partition) {
                    refuse(ErrorCode::NotAssigned)
                } else {
                    Ok(SubscriptionRequest::Commit(c))
                }
            }
            (Opening | Active, Frame::Unsubscribe(_)) => {
                self.state = Unsubscribed;
                Ok(SubscriptionRequest::Unsubscribe)
            }
            (_, frame) => Err(Violation::wrong_stream(&frame, "subscription")),
        }
    }

    /// Sends a new assignment (the first one activates the subscription).
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Internal`] when the subscription is not open or the
    /// generation does not increase (a broker bug).
    pub fn assign(&mut self, assignment: Assignment) -> Result<Frame, Violation> {
        if !matches!(self.state, BrokerState::Opening | BrokerState::Active) {
            return Err(Violation::new(
                ErrorCode::Internal,
                "assignment on a closed subscription",
            ));
        }
        if self.generation.is_some_and(|g| assignment.generation <= g) {
            return Err(Violation::new(
                ErrorCode::Internal,
                "assignment generation does not increase",
            ));
        }
        self.generation = Some(assignment.generation);
        self.last_offsets = cursors(&assignment);
        self.state = BrokerState::Active;
        Ok(Frame::Assignment(assignment))
    }

    /// Charges `records` against the credit and returns the frame to send.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Internal`] when there is no credit, the partition is not
    /// assigned or offsets do not increase (a broker bug; the client would
    /// reject the frame).
    pub fn records(&mut self, records: Records) -> Result<Frame, Violation> {
        if !self.can_send() {
            return Err(Violation::new(
                ErrorCode::Internal,
                "Records without credit",
            ));
        }
        let Some(cursor) = self.last_offsets.get_mut(&records.partition) else {
            return Err(Violation::new(
                ErrorCode::Internal,
                format!("Records for unassigned partition {}", records.partition),
            ));
        };
        cursor
            .records(&records)
            .map_err(|v| Violation::new(ErrorCode::Internal, v.message))?;
        self.credit = self.credit.saturating_sub(cost_of(&records));
        Ok(Frame::Records(records))
    }

    /// Reports that records of an assigned partition cannot be delivered.
    /// Returns the frame to send and whether the partition goes on from
    /// the range's end (`skip_damaged` was asked and the end is known);
    /// otherwise the partition is stopped and takes no more `Records`.
    /// Not charged against the credit.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Internal`] when the subscription is not active, the
    /// partition is not assigned or already stopped, the code is 0, or the
    /// range is empty or starts before offsets already sent (a broker bug;
    /// the client would reject the frame).
    pub fn partition_error(&mut self, error: PartitionError) -> Result<(Frame, bool), Violation> {
        if self.state != BrokerState::Active {
            return Err(Violation::new(
                ErrorCode::Internal,
                "PartitionError on a subscription that is not active",
            ));
        }
        let Some(cursor) = self.last_offsets.get_mut(&error.partition) else {
            return Err(Violation::new(
                ErrorCode::Internal,
                format!(
                    "PartitionError for unassigned partition {}",
                    error.partition
                ),
            ));
        };
        cursor
            .damaged(&error, self.skip_damaged)
            .map_err(|v| Violation::new(ErrorCode::Internal, v.message))?;
        let continues = !cursor.halted;
        Ok((Frame::PartitionError(error), continues))
    }

    /// The answer to a stored (or failed) commit.
    pub fn commit_done(&mut self, commit: Commit, result: Result<(), ErrorCode>) -> Frame {
        Frame::CommitAck(CommitAck {
            partition: commit.partition,
            offset: commit.offset,
            code: result.err().map_or(0, ErrorCode::as_u16),
        })
    }

    /// Ends the subscription normally (`code` `None`) or with a code.
    pub fn end(&mut self, code: Option<ErrorCode>, reason: impl Into<String>) -> Frame {
        self.state = BrokerState::Ended;
        Frame::SubscriptionEnd(SubscriptionEnd {
            code: code.map_or(0, ErrorCode::as_u16),
            reason: reason.into(),
        })
    }

    /// Refuses or aborts the subscription with an `Error` frame.
    pub fn fail(&mut self, code: ErrorCode, message: impl Into<String>) -> Frame {
        self.state = BrokerState::Ended;
        Frame::Error(ErrorFrame::new(0, code, message))
    }
}
