//! One client connection: the control stream, then a task per stream.
//!
//! The first bidirectional stream is the control stream; the handshake on
//! it must finish before any other stream is looked at. Every later stream
//! is served by the handler its first frame selects: `Produce` → producer,
//! `Subscribe` → subscription, an admin request → admin.
//!
//! On shutdown the connection stops accepting streams, lets the stream
//! tasks finish what is in flight (producers answer every batch they
//! accepted), says `Goodbye` and closes.

use std::sync::Arc;
use std::time::Instant;

use quinn::VarInt;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::session::Violation;
use strongbox_protocol::session::control::{BrokerControl, BrokerControlConfig, ControlEvent};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::services::BrokerState;
use crate::services::caller::ConnCtx;
use crate::transport::endpoint::AcceptedConnection;
use crate::transport::stream_io::{FrameReader, FrameWriter, end_with_error};

/// The QUIC application error code for closing with `code`.
pub fn close_code(code: ErrorCode) -> VarInt {
    VarInt::from_u32(u32::from(code.as_u16()))
}

/// Serves one authenticated connection until it closes or the broker stops.
pub async fn serve(state: Arc<BrokerState>, accepted: AcceptedConnection) {
    let AcceptedConnection {
        connection,
        principal,
        remote,
        shutdown,
        node_certificate,
        // In the endpoint's span already.
        key_exchange_group: _,
    } = accepted;
    // The endpoint runs this inside the connection's `connection` span
    // (id, remote, principal): a span of our own here would repeat it on
    // every line. `strongbox_connections_active` is counted by the endpoint
    // too, for the connection's whole life (aborted handlers included).
    let _ = remote;
    serve_inner(
        state,
        connection,
        principal.into_string(),
        node_certificate,
        shutdown,
    )
    .await;
}

async fn serve_inner(
    state: Arc<BrokerState>,
    connection: quinn::Connection,
    principal: String,
    node_certificate: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = &state.config.listener;
    let control_config = BrokerControlConfig {
        versions: strongbox_protocol::SUPPORTED_VERSIONS.to_vec(),
        broker_id: state.config.broker.id.clone(),
        max_frame_size: listener.max_frame_size,
        max_batch_size: listener.max_batch_size,
        max_in_flight: listener.max_in_flight,
        keepalive: listener.keepalive.0,
        handshake_timeout: listener.handshake_timeout.0,
    };
    let handshake_timeout = listener.handshake_timeout.0;
    let (send, recv) = match tokio::time::timeout(handshake_timeout, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection closed before the control stream");
            return;
        }
        Err(_) => {
            connection.close(close_code(ErrorCode::Timeout), b"no control stream");
            return;
        }
    };
    let mut reader = FrameReader::new(recv, listener.max_frame_size);
    let mut writer = FrameWriter::new(send, strongbox_protocol::frame::MIN_MAX_FRAME_SIZE);
    let mut control = BrokerControl::new(control_config, principal.clone(), Instant::now());

    // The handshake: Hello in, Welcome (or Error) out.
    let hello = tokio::time::timeout(handshake_timeout, reader.next()).await;
    // The name the client gives itself (its profile's `client_name`), for
    // the operator's log. Free text from the peer: logged quoted.
    let mut client_name = String::new();
    let outcome = match hello {
        Ok(Ok(Some(frame))) => {
            if let Frame::Hello(h) = &frame {
                client_name.clone_from(&h.client_name);
            }
            control.handle_frame(frame, Instant::now())
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => Err(Violation::new(
            e.code().unwrap_or(ErrorCode::MalformedFrame),
            e.to_string(),
        )),
        Err(_) => Err(Violation::new(
            ErrorCode::Timeout,
            "no Hello within the handshake timeout",
        )),
    };
    if let Err(v) = outcome {
        tracing::info!(code = %v.code, reason = %v.message, "handshake refused");
        close_with_error(&connection, &mut reader, &mut writer, v.code, &v.message).await;
        return;
    }
    let peer_max = control
        .peer_max_frame_size()
        .unwrap_or(strongbox_protocol::frame::MIN_MAX_FRAME_SIZE);
    writer.set_max_frame_size(peer_max);
    while let Some(frame) = control.poll_transmit() {
        if writer.send(&frame).await.is_err() {
            return;
        }
    }
    while control.poll_event().is_some() {}
    tracing::info!(client = ?client_name, version = control.version(), "connection established");

    let ctx = ConnCtx {
        state: state.clone(),
        principal,
        node_certificate,
        peer_max_frame_size: peer_max,
        shutdown: shutdown.clone(),
    };
    let mut streams: JoinSet<()> = JoinSet::new();
    // A certificate revoked after the connection opened: re-check it each
    // time the CRLs change.
    let mut revocation_check = tokio::time::interval(REVOCATION_CHECK);
    revocation_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut crl_generation = state.client_verifier.get().map(|v| v.generation());
    let mut ended: Option<(ErrorCode, String)> = None;
    loop {
        let deadline = control.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            () = crate::shutdown::stopped(&mut shutdown) => break,
            frame = reader.next() => {
                let result = match frame {
                    Ok(Some(frame)) => control.handle_frame(frame, Instant::now()),
                    Ok(None) => {
                        ended = Some((ErrorCode::ProtocolViolation, "control stream finished".into()));
                        break;
                    }
                    Err(e) => match e.code() {
                        Some(code) => Err(Violation::new(code, e.to_string())),
                        None => break, // the connection is gone
                    },
                };
                if let Err(v) = result {
                    ended = Some((v.code, v.message));
                    break;
                }
            }
            _ = revocation_check.tick() => {
                if let Some(reason) = revoked_since(&state, &connection, &mut crl_generation) {
                    state.audit.record(
                        crate::audit::AuditEvent::failure(crate::audit::AuditAction::AuthFailure, "connection")
                            .principal(ctx.principal.clone())
                            .detail("stage", "revocation")
                            .detail("reason", reason.clone()),
                    );
                    ended = Some((ErrorCode::AuthenticationFailed, format!("client certificate no longer accepted: {reason}")));
                    break;
                }
            }
            () = sleep_until(deadline) => {
                if let Err(v) = control.handle_timeout(Instant::now()) {
                    ended = Some((v.code, v.message));
                    break;
                }
            }
            incoming = connection.accept_bi() => match incoming {
                Ok((send, recv)) => {
                    let ctx = ctx.clone();
                    streams.spawn(async move { serve_stream(ctx, send, recv).await }.in_current_span());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connection closed");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
        while let Some(frame) = control.poll_transmit() {
            if writer.send(&frame).await.is_err() {
                break;
            }
        }
        if let Some(ControlEvent::Goodbye(bye)) = control.poll_event() {
            tracing::debug!(code = bye.code, reason = %bye.reason, "client said goodbye");
            break;
        }
    }

    if let Some((code, reason)) = ended {
        // A violation, a timeout or a revoked certificate: nothing more is
        // served on this connection. The client learns why from the Error
        // frame and from the close itself.
        tracing::info!(code = %code, reason = %reason, "connection ended");
        streams.abort_all();
        close_with_error(&connection, &mut reader, &mut writer, code, &reason).await;
        return;
    }
    // Let the stream tasks finish what they accepted (they watch the same
    // shutdown signal), bounded by the grace period.
    let grace = state.config.listener.shutdown_grace.0;
    let drained = tokio::time::timeout(grace, async {
        while streams.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        streams.abort_all();
    }
    let (code, reason) = if *shutdown.borrow() {
        (Some(ErrorCode::ShuttingDown), "the broker is shutting down")
    } else {
        (None, "goodbye")
    };
    control.close(code, reason);
    while let Some(frame) = control.poll_transmit() {
        let _ = writer.send(&frame).await;
    }
    // The Goodbye (if the client has not said its own) reaches the client
    // before the close, which carries the same code.
    writer.finish_delivered(DELIVERY_WAIT).await;
    connection.close(
        code.map_or(VarInt::from_u32(0), close_code),
        reason.as_bytes(),
    );
}

/// How long the broker waits for the client to acknowledge its last frames
/// (an `Error`, a `Goodbye`) before it closes the connection anyway.
pub const DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Ends the connection because of `code`: `Error` on the control stream,
/// which the broker finishes and waits (at most [`DELIVERY_WAIT`]) to see
/// acknowledged, so closing does not discard it; then CONNECTION_CLOSE with
/// the same code and the reason, for a client that is not reading.
async fn close_with_error(
    connection: &quinn::Connection,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    code: ErrorCode,
    reason: &str,
) {
    reader.stop(code);
    let frame = Frame::Error(strongbox_protocol::frames::control::ErrorFrame::new(
        0,
        code,
        reason.to_owned(),
    ));
    if writer.send(&frame).await.is_ok() {
        writer.finish_delivered(DELIVERY_WAIT).await;
    }
    connection.close(close_code(code), reason.as_bytes());
}

/// How often a connection looks for a CRL change.
const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// When the CRLs changed since the last look, re-verifies the connection's
/// certificate chain; the reason when it is no longer accepted.
fn revoked_since(
    state: &BrokerState,
    connection: &quinn::Connection,
    seen: &mut Option<u64>,
) -> Option<String> {
    let verifier = state.client_verifier.get()?;
    let generation = verifier.generation();
    if *seen == Some(generation) {
        return None;
    }
    *seen = Some(generation);
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    verifier
        .check_chain(&chain, rustls::pki_types::UnixTime::now())
        .err()
        .map(|e| e.to_string())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Serves one non-control stream: its first frame decides what it is.
async fn serve_stream(ctx: ConnCtx, send: quinn::SendStream, recv: quinn::RecvStream) {
    let max_frame = ctx.state.config.listener.max_frame_size;
    let mut reader = FrameReader::new(recv, max_frame);
    let mut writer = FrameWriter::new(send, ctx.peer_max_frame_size);
    let first = match reader.next().await {
        Ok(Some(frame)) => frame,
        Ok(None) => return,
        Err(e) => {
            if let Some(code) = e.code() {
                end_with_error(&mut writer, &mut reader, code, &e.to_string()).await;
            }
            return;
        }
    };
    match first {
        Frame::Produce(_) => crate::transport::produce::serve(ctx, first, reader, writer).await,
        Frame::Subscribe(_) => crate::transport::subscribe::serve(ctx, first, reader, writer).await,
        Frame::Request(request) => {
            crate::transport::admin::serve(ctx, request, reader, writer).await
        }
        other => {
            let message = format!(
                "a stream must start with Produce, Subscribe or an admin request, not {}",
                other.frame_type().name()
            );
            end_with_error(
                &mut writer,
                &mut reader,
                ErrorCode::ProtocolViolation,
                &message,
            )
            .await;
        }
    }
}
