//! Producer streams: pipelined `Produce` frames answered in order.
//!
//! The client may have up to `max_in_flight` `Produce` frames unanswered.
//! The broker answers each with `ProduceAck` or `Error` carrying the same
//! correlation id, in the order the frames arrived, whatever order the
//! appends finish in.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::error::ErrorCode;
use crate::frame::Frame;
use crate::frames::control::ErrorFrame;
use crate::frames::produce::{Produce, ProduceAck};
use crate::session::Violation;

/// What the client learns from a producer stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProduceOutcome {
    /// The batch is durable.
    Acked(ProduceAck),
    /// The broker refused the batch; the stream goes on.
    Failed(ErrorFrame),
}

impl ProduceOutcome {
    /// The correlation id answered.
    pub fn correlation_id(&self) -> u64 {
        match self {
            Self::Acked(a) => a.correlation_id,
            Self::Failed(e) => e.correlation_id,
        }
    }
}

/// Why the client could not send a batch now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceRefused {
    /// `max_in_flight` batches await their acks; wait for one.
    #[error("{0} batches already in flight")]
    WindowFull(u32),
    /// The batch exceeds the broker's `max_batch_size`.
    #[error("batch of {len} bytes exceeds the broker's limit of {max}")]
    TooLarge {
        /// The batch's length.
        len: usize,
        /// The limit.
        max: u32,
    },
}

/// The client end of a producer stream.
#[derive(Debug)]
pub struct ProducerSession {
    next_correlation: u64,
    in_flight: VecDeque<u64>,
    max_in_flight: u32,
    max_batch_size: u32,
}

impl ProducerSession {
    /// A stream with the limits from the broker's `Welcome`.
    pub fn new(max_in_flight: u32, max_batch_size: u32) -> Self {
        Self {
            next_correlation: 1,
            in_flight: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
            max_batch_size,
        }
    }

    /// Unanswered batches.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// True when another batch may be sent now.
    pub fn has_window(&self) -> bool {
        self.in_flight.len() < self.max_in_flight as usize
    }

    /// Builds the `Produce` frame for `batch` and records it as in flight.
    ///
    /// # Errors
    ///
    /// [`ProduceRefused`] when the window is full or the batch is too large;
    /// nothing is recorded.
    pub fn send(
        &mut self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<(u64, Frame), ProduceRefused> {
        if !self.has_window() {
            return Err(ProduceRefused::WindowFull(self.max_in_flight));
        }
        if batch.len() > self.max_batch_size as usize {
            return Err(ProduceRefused::TooLarge {
                len: batch.len(),
                max: self.max_batch_size,
            });
        }
        let correlation_id = self.next_correlation;
        self.next_correlation += 1;
        self.in_flight.push_back(correlation_id);
        Ok((
            correlation_id,
            Frame::Produce(Produce {
                correlation_id,
                topic: topic.to_owned(),
                partition,
                batch,
            }),
        ))
    }

    /// Processes a frame from the broker.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::ProtocolViolation`] for an answer that is not for the
    /// oldest batch in flight, or a frame that does not belong on a producer
    /// stream. An `Error` with correlation id 0 ends the stream: it is
    /// returned as a violation carrying the broker's code.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<ProduceOutcome, Violation> {
        let outcome = match frame {
            Frame::ProduceAck(ack) => ProduceOutcome::Acked(ack),
            Frame::Error(error) if error.correlation_id == 0 => {
                let code = error.error_code().unwrap_or(ErrorCode::ProtocolViolation);
                return Err(Violation::new(code, error.message));
            }
            Frame::Error(error) => ProduceOutcome::Failed(error),
            frame => return Err(Violation::wrong_stream(&frame, "producer")),
        };
        match self.in_flight.front() {
            Some(&oldest) if oldest == outcome.correlation_id() => {
                self.in_flight.pop_front();
                Ok(outcome)
            }
            Some(&oldest) => Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "answer for correlation id {} while {oldest} is the oldest in flight",
                    outcome.correlation_id()
                ),
            )),
            None => Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "answer for correlation id {} with nothing in flight",
                    outcome.correlation_id()
                ),
            )),
        }
    }
}

/// The broker end of a producer stream.
///
/// Hands each valid `Produce` to the broker and makes sure the answers leave
/// in order: [`BrokerProducerStream::answer`] accepts only the answer for the
/// oldest request.
#[derive(Debug)]
pub struct BrokerProducerStream {
    last_correlation: Option<u64>,
    in_flight: VecDeque<u64>,
    max_in_flight: u32,
    max_batch_size: u32,
}

/// A `Produce` the broker must act on, or refuse at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProduceRequest {
    /// Validate, authorize and append this batch.
    Append(Produce),
    /// Answer this `Error` (the batch exceeds `max_batch_size`); the
    /// request counts as in flight until answered.
    Reject(ErrorFrame),
}

impl BrokerProducerStream {
    /// A stream with the limits the broker announced in `Welcome`.
    pub fn new(max_in_flight: u32, max_batch_size: u32) -> Self {
        Self {
            last_correlation: None,
            in_flight: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
            max_batch_size,
        }
    }

    /// Requests not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Processes a frame from the client.
    ///
    /// # Errors
    ///
    /// A [`Violation`] that ends the stream: a frame other than `Produce`
    /// ([`ErrorCode::ProtocolViolation`]), a correlation id of 0 (reserved
    /// for stream-level errors) or one that does not increase
    /// ([`ErrorCode::ProtocolViolation`]), or more than
    /// `max_in_flight` unanswered requests ([`ErrorCode::LimitExceeded`]).
    pub fn handle_frame(&mut self, frame: Frame) -> Result<ProduceRequest, Violation> {
        let Frame::Produce(produce) = frame else {
            return Err(Violation::wrong_stream(&frame, "producer"));
        };
        if produce.correlation_id == 0
            || self
                .last_correlation
                .is_some_and(|last| produce.correlation_id <= last)
        {
            return Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "correlation id {} does not increase (last was {})",
                    produce.correlation_id,
                    self.last_correlation.unwrap_or_default()
                ),
            ));
        }
        if self.in_flight.len() >= self.max_in_flight as usize {
            return Err(Violation::new(
                ErrorCode::LimitExceeded,
                format!("more than {} Produce frames in flight", self.max_in_flight),
            ));
        }
        self.last_correlation = Some(produce.correlation_id);
        self.in_flight.push_back(produce.correlation_id);
        if produce.batch.len() > self.max_batch_size as usize {
            return Ok(ProduceRequest::Reject(ErrorFrame::new(
                produce.correlation_id,
                ErrorCode::FrameTooLarge,
                format!(
                    "batch of {} bytes exceeds max_batch_size {}",
                    produce.batch.len(),
                    self.max_batch_size
                ),
            )));
        }
        Ok(ProduceRequest::Append(produce))
    }

    /// Turns the answer to the oldest request into the frame to send.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Internal`] when `outcome` does not answer the oldest
    /// request: a bug in the caller, which must not reorder answers.
    pub fn answer(&mut self, outcome: ProduceOutcome) -> Result<Frame, Violation> {
        match self.in_flight.front() {
            Some(&oldest) if oldest == outcome.correlation_id() => {
                self.in_flight.pop_front();
                Ok(match outcome {
                    ProduceOutcome::Acked(ack) => Frame::ProduceAck(ack),
                    ProduceOutcome::Failed(error) => Frame::Error(error),
                })
            }
            _ => Err(Violation::new(
                ErrorCode::Internal,
                format!(
                    "answer for correlation id {} is out of order",
                    outcome.correlation_id()
                ),
            )),
        }
    }
}
