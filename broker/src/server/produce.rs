//! Producer streams: validate, authorize, append, acknowledge in order.
//!
//! Each `Produce` is checked and written as soon as it arrives, in arrival
//! order (so idempotent sequences are checked in the order the producer
//! sent them), and its acknowledgement waits for durability in a queue that
//! answers in the same order. While batch *n* waits for its fsync, batch
//! *n + 1* is already written, and one fsync covers both.
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
use strongbox_protocol::batch::RecordBatch;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::admin_types::Operations;
use strongbox_protocol::frames::produce::{Produce, ProduceAck};
use strongbox_protocol::session::produce::{BrokerProducerStream, ProduceOutcome, ProduceRequest};

use crate::server::authz::Authorizer;
use crate::server::connection::ConnCtx;
use crate::server::error::BrokerError;
use crate::server::stream_io::{FrameReader, FrameWriter};

/// Serves a producer stream whose first frame is `first`.
pub async fn serve(ctx: ConnCtx, first: Frame, mut reader: FrameReader, mut writer: FrameWriter) {
    let listener = &ctx.state.config.listener;
    let mut session = BrokerProducerStream::new(listener.max_in_flight, listener.max_batch_size);
    let mut authz = Authorizer::new(&ctx);
    let mut pending: FuturesOrdered<BoxFuture<'static, ProduceOutcome>> = FuturesOrdered::new();
    let mut shutdown = ctx.shutdown.clone();
    let mut next = Some(first);
    let mut reading = true;
    loop {
        let frame = match next.take() {
            Some(frame) => Some(frame),
            None => tokio::select! {
                biased;
                Some(outcome) = pending.next(), if !pending.is_empty() => {
                    match session.answer(outcome) {
                        Ok(frame) => {
                            if writer.send(&frame).await.is_err() {
                                return;
                            }
                        }
                        Err(v) => {
                            tracing::error!(error = %v, "producer answers out of order");
                            writer.reset(ErrorCode::Internal);
                            return;
                        }
                    }
                    None
                }
                () = crate::server::stopped(&mut shutdown), if reading => {
                    reading = false;
                    reader.stop(ErrorCode::ShuttingDown);
                    None
                }
                read = reader.next(), if reading => match read {
                    Ok(Some(frame)) => Some(frame),
                    Ok(None) => {
                        reading = false;
                        None
                    }
                    Err(e) => {
                        if let Some(code) = e.code() {
                            let error = BrokerError::new(code, e.to_string()).to_frame(0);
                            let _ = writer.send(&Frame::Error(error)).await;
                            writer.reset(code);
                        }
                        return;
                    }
                },
                else => break,
            },
        };
        if let Some(frame) = frame {
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
                    let _ = writer.send(&v.to_frame()).await;
                    writer.reset(v.code);
                    reader.stop(v.code);
                    return;
                }
            }
        }
        if !reading && pending.is_empty() {
            break;
        }
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
        Ok((pending, records, bytes)) => async move {
            match pending.complete().await {
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
) -> Result<(crate::server::partition::PendingAppend, u64, u64), BrokerError> {
    // Authorize before looking the topic up, so a denied principal learns
    // nothing about which topics exist.
    authz.check(Operations::PUBLISH, &produce.topic)?;
    let topic = ctx.state.topics.require(&produce.topic)?;
    let partition = topic.partition(produce.partition)?.clone();
    let bytes = produce.batch.len() as u64;
    let batch = RecordBatch::parse(produce.batch).map_err(batch_error)?;
    let min_epoch = match batch.header().producer {
        Some(stamp) => ctx
            .state
            .producer_epochs
            .current(&ctx.state.meta, stamp.producer_id)
            .map_err(|e| BrokerError::internal("reading producer state", e))?
            .ok_or_else(|| {
                BrokerError::new(
                    ErrorCode::UnknownProducer,
                    format!(
                        "producer id {} was not issued by this broker",
                        stamp.producer_id
                    ),
                )
            })?,
        None => 0,
    };
    let records = u64::from(batch.record_count());
    let pending = partition.begin_append(&batch, min_epoch).await?;
    Ok((pending, records, bytes))
}

fn batch_error(e: DecodeError) -> BrokerError {
    let code = match e {
        DecodeError::CrcMismatch { .. } => ErrorCode::CorruptBatch,
        DecodeError::UnsupportedCodec(_) => ErrorCode::UnsupportedCodec,
        _ => ErrorCode::InvalidBatch,
    };
    BrokerError::new(code, format!("record batch rejected: {e}"))
}
