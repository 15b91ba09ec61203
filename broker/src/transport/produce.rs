//! Producer streams: validate, authorize, append, acknowledge in order.
//!
//! Each `Produce` is checked and queued for its partition's writer as soon
//! as it arrives, in arrival order (so idempotent sequences are checked in
//! the order the producer sent them), and its acknowledgement waits for the
//! write and then for durability in a queue that answers in the same order.
//! The stream never waits for storage itself: the writer runs off the async
//! threads (see `gateway.rs`), and while batch *n* waits for its fsync,
//! batch *n + 1* is already written, and one fsync covers both.
//!
//! Per-request failures (not authorized, unknown topic, corrupt batch,
//! sequence errors) answer that request and the stream goes on; a protocol
//! violation ends the stream. On shutdown the stream stops reading, answers
//! everything it accepted, and finishes.

use std::time::Instant;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesOrdered, StreamExt};
use strongbox_protocol::DecodeError;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::{ProducerStamp, RecordBatch};
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::produce::{Produce, ProduceAck};
use strongbox_protocol::model::Operations;
use strongbox_protocol::session::produce::{BrokerProducerStream, ProduceOutcome, ProduceRequest};

use crate::audit::{AuditAction, AuditEvent, topic_resource};
use crate::error::BrokerError;
use crate::services::authz::Authorizer;
use crate::services::caller::ConnCtx;
use crate::transport::stream_io::{FrameReader, FrameWriter, end_with_error};

/// Serves a producer stream whose first frame is `first`.
///
/// Reading, appending and answering go on side by side: answers are queued
/// in request order and written as the client's flow control allows, while
/// the stream keeps reading. A `Produce` counts as in flight from when it
/// is read until its answer is queued, so a client that sends more than
/// `max_in_flight` without reading the answers meets `limit_exceeded`
/// instead of silently stalling the broker's reads.
///
/// However the stream ends (the client finishes, a violation, shutdown),
/// every batch read before that point is answered first: a stored batch is
/// never left unacknowledged. A violation is then reported with `Error`
/// (correlation id 0) and the stream is finished, never reset, so the
/// `Error` is not discarded in flight.
pub async fn serve(ctx: ConnCtx, first: Frame, mut reader: FrameReader, mut writer: FrameWriter) {
    let listener = &ctx.state.config.listener;
    let mut session = BrokerProducerStream::new(listener.max_in_flight, listener.max_batch_size);
    let mut authz = Authorizer::new(&ctx);
    let mut pending: FuturesOrdered<BoxFuture<'static, ProduceOutcome>> = FuturesOrdered::new();
    let mut shutdown = ctx.shutdown.clone();
    let mut next = Some(first);
    let mut reading = true;
    // The stream-level error to report once everything read is answered.
    let mut violation: Option<(ErrorCode, String)> = None;
    // The answer being written: its request stays in flight (counted against
    // `max_in_flight`) until QUIC has taken the whole frame.
    let mut writing: Option<ProduceOutcome> = None;
    loop {
        if let Some(frame) = next.take() {
            match session.handle_frame(frame) {
                Ok(ProduceRequest::Append(produce)) => {
                    pending.push_back(start(&ctx, &mut authz, produce).await);
                }
                Ok(ProduceRequest::Reject(error)) => {
                    pending
                        .push_back(futures::future::ready(ProduceOutcome::Failed(error)).boxed());
                }
                Err(v) => {
                    tracing::info!(code = %v.code, reason = %v.message, "producer stream violation");
                    reading = false;
                    reader.stop(v.code);
                    violation = Some((v.code, v.message));
                }
            }
        }
        if !writer.has_queued()
            && let Some(outcome) = writing.take()
            && let Err(v) = session.answer(outcome)
        {
            tracing::error!(error = %v, "producer answers out of order");
            writer.reset(ErrorCode::Internal);
            return;
        }
        if !reading && pending.is_empty() && writing.is_none() {
            break;
        }
        tokio::select! {
            biased;
            written = writer.write_queued(), if writer.has_queued() => {
                if written.is_err() {
                    return; // the client stopped the stream or the connection is gone
                }
            }
            // One answer at a time, so a client that does not read its
            // answers leaves its requests in flight, where they count.
            Some(outcome) = pending.next(), if writing.is_none() => {
                let frame = match &outcome {
                    ProduceOutcome::Acked(ack) => Frame::ProduceAck(*ack),
                    ProduceOutcome::Failed(error) => Frame::Error(error.clone()),
                };
                if let Err(e) = writer.queue(&frame) {
                    tracing::error!(error = %e, "cannot encode a Produce answer");
                    writer.reset(ErrorCode::Internal);
                    return;
                }
                writing = Some(outcome);
            }
            () = crate::shutdown::stopped(&mut shutdown), if reading => {
                reading = false;
                reader.stop(ErrorCode::ShuttingDown);
            }
            read = reader.next(), if reading => match read {
                Ok(Some(frame)) => next = Some(frame),
                Ok(None) => reading = false,
                Err(e) => match e.code() {
                    Some(code) => {
                        tracing::info!(code = %code, reason = %e, "producer stream violation");
                        reading = false;
                        reader.stop(code);
                        violation = Some((code, e.to_string()));
                    }
                    None => return, // the connection is gone
                },
            },
        }
    }
    if let Some((code, message)) = violation {
        end_with_error(&mut writer, &mut reader, code, &message).await;
        return;
    }
    // The last acknowledgements must reach the client before the connection
    // closes (on shutdown it closes right after the streams end).
    writer
        .finish_delivered(ctx.state.config.listener.shutdown_grace.0)
        .await;
}

/// Checks and writes one batch; returns the future of its answer.
async fn start(
    ctx: &ConnCtx,
    authz: &mut Authorizer,
    produce: Produce,
) -> BoxFuture<'static, ProduceOutcome> {
    let arrived = Instant::now();
    let correlation_id = produce.correlation_id;
    let partition_index = produce.partition;
    let topic_name = produce.topic.clone();
    let written = write(ctx, authz, produce).await;
    let metrics = ctx.state.metrics.clone();
    match written {
        Err(e) => {
            futures::future::ready(ProduceOutcome::Failed(e.to_frame(correlation_id))).boxed()
        }
        Ok((queued, records, bytes)) => async move {
            let completed = match queued.written().await {
                Ok(pending) => pending.complete().await,
                Err(e) => Err(e),
            };
            match completed {
                Ok(outcome) => {
                    if !outcome.duplicate {
                        metrics
                            .messages_in
                            .with_label_values(&[&topic_name])
                            .inc_by(records);
                        metrics
                            .bytes_in
                            .with_label_values(&[&topic_name])
                            .inc_by(bytes);
                    }
                    metrics
                        .produce_latency
                        .observe(arrived.elapsed().as_secs_f64());
                    ProduceOutcome::Acked(ProduceAck {
                        correlation_id,
                        partition: partition_index,
                        base_offset: outcome.base_offset,
                        duplicate: outcome.duplicate,
                    })
                }
                Err(e) => ProduceOutcome::Failed(e.to_frame(correlation_id)),
            }
        }
        .boxed(),
    }
}

async fn write(
    ctx: &ConnCtx,
    authz: &mut Authorizer,
    produce: Produce,
) -> Result<
    (
        crate::services::partitions::partition::QueuedWrite,
        u64,
        u64,
    ),
    BrokerError,
> {
    // Authorize before looking the topic up, so a denied principal learns
    // nothing about which topics exist.
    authz.check(Operations::PUBLISH, &produce.topic)?;
    let topic = ctx.state.partitions.topics().require(&produce.topic)?;
    let partition = topic.partition(produce.partition)?.clone();
    let bytes = produce.batch.len() as u64;
    let batch = RecordBatch::parse(produce.batch).map_err(batch_error)?;
    let min_epoch = match batch.header().producer {
        Some(stamp) => issued_epoch(ctx, &produce.topic, &stamp)?,
        None => 0,
    };
    let records = u64::from(batch.record_count());
    let queued = partition.queue_append(batch, min_epoch);
    Ok((queued, records, bytes))
}

/// The current epoch of the producer id a batch is stamped with, after
/// checking that the connection's principal owns the id and that the epoch
/// was issued. A refusal is audited.
fn issued_epoch(ctx: &ConnCtx, topic: &str, stamp: &ProducerStamp) -> Result<u16, BrokerError> {
    let issued = ctx
        .state
        .partitions
        .producer_epochs()
        .current(&ctx.state.meta, stamp.producer_id)
        .map_err(|e| BrokerError::internal("reading producer state", e))?
        .ok_or_else(|| {
            BrokerError::new(
                ErrorCode::UnknownProducer,
                format!(
                    "producer id {} was not issued by this broker; call InitProducer for a new one",
                    stamp.producer_id
                ),
            )
        })?;
    let refusal = if !issued.is_owned_by(&ctx.principal) {
        Some((
            ErrorCode::ProducerNotOwned,
            "not_owned",
            format!(
                "producer id {} was issued to another principal; call InitProducer for an id of your own",
                stamp.producer_id
            ),
        ))
    } else if stamp.epoch > issued.epoch {
        Some((
            ErrorCode::InvalidProducerEpoch,
            "epoch_not_issued",
            format!(
                "producer id {} has epoch {}; epoch {} was never issued (InitProducer issues epochs)",
                stamp.producer_id, issued.epoch, stamp.epoch
            ),
        ))
    } else {
        None
    };
    match refusal {
        None => Ok(issued.epoch),
        Some((code, reason, message)) => {
            tracing::warn!(
                target: "strongbox::audit",
                principal = %ctx.principal,
                producer_id = stamp.producer_id,
                epoch = stamp.epoch,
                topic,
                reason,
                "producer id refused"
            );
            ctx.state.audit.record(
                AuditEvent::denied(AuditAction::ProducerDeny, topic_resource(topic))
                    .principal(ctx.principal.clone())
                    .detail("producer_id", stamp.producer_id)
                    .detail("epoch", stamp.epoch)
                    .detail("reason", reason),
            );
            Err(BrokerError::new(code, message))
        }
    }
}

fn batch_error(e: DecodeError) -> BrokerError {
    let code = match e {
        DecodeError::CrcMismatch { .. } => ErrorCode::CorruptBatch,
        DecodeError::UnsupportedCodec(_) => ErrorCode::UnsupportedCodec,
        _ => ErrorCode::InvalidBatch,
    };
    BrokerError::new(code, format!("record batch rejected: {e}"))
}
