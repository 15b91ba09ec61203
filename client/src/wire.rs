//! Frames over QUIC streams.
//!
//! [`FrameReader`] turns a receive stream into frames; [`StreamIo`] runs a
//! bidirectional stream in two small tasks so that the state machine that
//! owns it never blocks on a write while answers wait to be read.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use strongbox_protocol::frame::{Frame, FrameDecoder};
use strongbox_protocol::session::Violation;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ClientError;

/// Largest chunk asked of quinn per read.
const READ_CHUNK: usize = 256 * 1024;

/// How much to ask of quinn for the next read: no more than the decoder's
/// buffer has room for while that is any, so that a chunk running past the
/// end of the frame being assembled does not make the decoder move (copy)
/// that whole frame to grow its buffer; `READ_CHUNK` when the buffer is full.
fn read_size(decoder: &FrameDecoder) -> usize {
    match decoder.capacity().saturating_sub(decoder.buffered()) {
        0 => READ_CHUNK,
        spare => spare.min(READ_CHUNK),
    }
}

/// Reads whole frames from a receive stream.
#[derive(Debug)]
pub(crate) struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    pub(crate) fn new(recv: quinn::RecvStream, max_frame_size: u32) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame_size),
        }
    }

    /// The next frame; `None` when the broker finished the stream between
    /// frames. Cancel-safe: partial frames stay buffered.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => {
                    return Err(ClientError::Protocol(format!(
                        "undecodable frame from the broker: {e}"
                    )));
                }
            }
            match self.recv.read_chunk(read_size(&self.decoder), true).await {
                Ok(Some(chunk)) => self.decoder.extend(&chunk.bytes),
                Ok(None) if self.decoder.buffered() == 0 => return Ok(None),
                Ok(None) => {
                    return Err(ClientError::Protocol(format!(
                        "the broker finished the stream inside a frame ({} bytes left over)",
                        self.decoder.buffered()
                    )));
                }
                Err(e) => return Err(ClientError::from_read(&e)),
            }
        }
    }
}

/// Encodes `frame` for the wire.
pub(crate) fn encode(frame: &Frame, max_frame_size: u32) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    frame
        .encode(&mut buf, max_frame_size)
        .map_err(|e| ClientError::InvalidRecord(e.to_string()))?;
    Ok(buf.freeze())
}

/// Encodes `frame` as chunks for a vectored write, sharing (not copying)
/// the record batches of `Produce` and `Records` frames.
pub(crate) fn encode_chunks(frame: &Frame, max_frame_size: u32) -> Result<Vec<Bytes>, ClientError> {
    frame
        .encode_chunks(max_frame_size)
        .map_err(|e| ClientError::InvalidRecord(e.to_string()))
}

/// Writes one frame.
pub(crate) async fn write_frame(
    send: &mut quinn::SendStream,
    frame: &Frame,
    max_frame_size: u32,
) -> Result<(), ClientError> {
    let bytes = encode(frame, max_frame_size)?;
    send.write_all(&bytes)
        .await
        .map_err(|e| ClientError::from_write(&e))
}

/// What the reader side of a [`StreamIo`] reports.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A frame from the broker.
    Frame(Frame),
    /// The stream is over: `None` when the broker finished it cleanly,
    /// otherwise why it broke.
    End(Option<ClientError>),
}

/// What the writer task does next.
#[derive(Debug)]
enum Outgoing {
    /// One encoded frame, in chunks.
    Chunks(Vec<Bytes>),
    /// Write these bytes (an `Error` frame), then reset the stream with
    /// the code.
    Fail(Bytes, u16),
}

/// A bidirectional stream driven by a reader task and a writer task.
///
/// Dropping it aborts both tasks; the stream is then reset by quinn.
#[derive(Debug)]
pub(crate) struct StreamIo {
    out: Option<mpsc::UnboundedSender<Outgoing>>,
    pub(crate) inbound: mpsc::Receiver<Inbound>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl StreamIo {
    pub(crate) fn spawn(
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        max_frame_size: u32,
    ) -> Self {
        let (in_tx, inbound) = mpsc::channel(64);
        let (out, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
        let mut reader = FrameReader::new(recv, max_frame_size);
        // Why our send side failed, for the reader to report. A broker that
        // stops reading (shutting down, say) still answers what it read and
        // then finishes its side, so the stream ends when the *reader* ends,
        // after every answer has been delivered.
        let write_failed: Arc<Mutex<Option<ClientError>>> = Arc::default();
        let write_error = write_failed.clone();
        let reader = tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(Some(frame)) => {
                        if in_tx.send(Inbound::Frame(frame)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let stopped = write_error.lock().ok().and_then(|mut e| e.take());
                        let _ = in_tx.send(Inbound::End(stopped)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = in_tx.send(Inbound::End(Some(e))).await;
                        return;
                    }
                }
            }
        });
        let writer = tokio::spawn(async move {
            while let Some(outgoing) = out_rx.recv().await {
                let (mut chunks, reset) = match outgoing {
                    Outgoing::Chunks(chunks) => (chunks, None),
                    Outgoing::Fail(bytes, code) => (vec![bytes], Some(code)),
                };
                if let Err(e) = send.write_all_chunks(&mut chunks).await {
                    if let Ok(mut slot) = write_failed.lock() {
                        *slot = Some(ClientError::from_write(&e));
                    }
                    // Nothing more can be sent; drop what is queued (it is
                    // unanswered, so it is sent again on a new stream).
                    while out_rx.recv().await.is_some() {}
                    return;
                }
                if let Some(code) = reset {
                    let _ = send.reset(u32::from(code).into());
                    return;
                }
            }
            // Every sender is gone: finish our side of the stream.
            let _ = send.finish();
            // Keep the send half alive until the peer has read everything.
            let _ = send.stopped().await;
        });
        Self {
            out: Some(out),
            inbound,
            reader,
            writer,
        }
    }

    /// Queues an encoded frame, in chunks, for the writer task.
    pub(crate) fn send_chunks(&self, chunks: Vec<Bytes>) -> Result<(), ClientError> {
        match &self.out {
            Some(out) => out
                .send(Outgoing::Chunks(chunks))
                .map_err(|_| ClientError::ConnectionLost("the stream's writer stopped".into())),
            None => Err(ClientError::ConnectionLost(
                "the stream's send side is finished".into(),
            )),
        }
    }

    /// Encodes and queues a frame.
    pub(crate) fn send_frame(&self, frame: &Frame, max_frame_size: u32) -> Result<(), ClientError> {
        self.send_chunks(encode_chunks(frame, max_frame_size)?)
    }

    /// Tells the broker it broke the protocol: sends `violation` as an
    /// `Error` frame, then resets the stream with its code. Nothing more
    /// can be sent.
    pub(crate) fn fail(&mut self, violation: &Violation, max_frame_size: u32) {
        if let (Some(out), Ok(bytes)) = (
            self.out.take(),
            encode(&violation.to_frame(), max_frame_size),
        ) {
            let _ = out.send(Outgoing::Fail(bytes, violation.code.as_u16()));
        }
    }

    /// Finishes the send side once everything queued has been written.
    pub(crate) fn finish(&mut self) {
        self.out = None;
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        self.reader.abort();
        if self.out.is_some() {
            self.writer.abort();
        }
    }
}
