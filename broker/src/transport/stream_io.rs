//! Frames over QUIC streams.
//!
//! [`FrameReader`] reads at most one chunk beyond what the decoder already
//! holds, so a peer can make the broker buffer at most one maximum frame
//! plus one chunk per stream, whatever it sends.

use bytes::BytesMut;
use quinn::{RecvStream, SendStream, VarInt};
use strongbox_protocol::frame::{Frame, FrameDecoder};
use strongbox_protocol::{DecodeError, EncodeError, ErrorCode};

/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

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

/// Why a stream could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer sent bytes that are not a valid frame.
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    /// A frame could not be encoded (too large for the peer).
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    /// Reading failed (connection lost, stream reset).
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed (connection lost, stream stopped).
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Finishing failed: the stream was already closed.
    #[error("stream already closed")]
    Closed,
}

impl StreamError {
    /// The code to report to the peer, when the peer caused the error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Decode(e) => Some(e.code()),
            Self::Truncated(_) => Some(ErrorCode::MalformedFrame),
            _ => None,
        }
    }
}

/// Decodes frames from a receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Reads frames of at most `max_frame_size` bytes.
    pub fn new(recv: RecvStream, max_frame_size: u32) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame_size),
        }
    }

    /// The next frame, or `None` when the peer finished the stream cleanly
    /// between frames.
    ///
    /// # Errors
    ///
    /// [`StreamError`] for a bad frame, a stream that ends inside a frame,
    /// or a transport failure.
    pub async fn next(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(read_size(&self.decoder), true).await? {
                Some(chunk) => self.decoder.extend(&chunk.bytes),
                None if self.decoder.buffered() == 0 => return Ok(None),
                None => return Err(StreamError::Truncated(self.decoder.buffered())),
            }
        }
    }

    /// Tells the peer to stop sending, with `code`.
    pub fn stop(&mut self, code: ErrorCode) {
        let _ = self.recv.stop(VarInt::from_u32(u32::from(code.as_u16())));
    }
}

/// Encodes frames onto a send stream.
#[derive(Debug)]
pub struct FrameWriter {
    send: SendStream,
    buf: BytesMut,
    /// Encoded frames waiting for [`FrameWriter::write_queued`].
    queued: BytesMut,
    max_frame_size: u32,
}

impl FrameWriter {
    /// Writes frames of at most `max_frame_size` bytes.
    pub fn new(send: SendStream, max_frame_size: u32) -> Self {
        Self {
            send,
            buf: BytesMut::with_capacity(16 * 1024),
            queued: BytesMut::new(),
            max_frame_size,
        }
    }

    /// The largest frame the peer accepts.
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Encodes `frame` behind what is already queued; nothing is written
    /// until [`FrameWriter::write_queued`].
    ///
    /// # Errors
    ///
    /// [`StreamError::Encode`] when the frame does not fit the peer's limit.
    pub fn queue(&mut self, frame: &Frame) -> Result<(), StreamError> {
        frame.encode(&mut self.queued, self.max_frame_size)?;
        Ok(())
    }

    /// True while queued bytes wait to be written.
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Writes as much of the queue as the stream takes now (at least one
    /// byte). Cancel-safe: when the future is dropped before it completes,
    /// nothing was written, so a caller may `select!` on it while it goes
    /// on reading (a peer that does not read cannot stop the broker from
    /// reading, and so from noticing what the peer sends meanwhile).
    ///
    /// # Errors
    ///
    /// A transport failure.
    pub async fn write_queued(&mut self) -> Result<(), StreamError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let written = self.send.write(&self.queued).await?;
        bytes::Buf::advance(&mut self.queued, written);
        Ok(())
    }

    /// Writes the whole queue.
    ///
    /// # Errors
    ///
    /// A transport failure.
    pub async fn flush_queued(&mut self) -> Result<(), StreamError> {
        while self.has_queued() {
            self.write_queued().await?;
        }
        Ok(())
    }

    /// Changes the limit (after the handshake).
    pub fn set_max_frame_size(&mut self, max: u32) {
        self.max_frame_size = max;
    }

    /// Writes one frame. The record batches of a `Records` frame go to
    /// quinn as chunks of their own, shared with the log's buffers rather
    /// than copied; small frames are encoded into a reused buffer.
    ///
    /// # Errors
    ///
    /// [`StreamError::Encode`] or a transport failure.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), StreamError> {
        if let Frame::Records(_) = frame {
            let mut chunks = frame.encode_chunks(self.max_frame_size)?;
            self.send.write_all_chunks(&mut chunks).await?;
            return Ok(());
        }
        self.buf.clear();
        frame.encode(&mut self.buf, self.max_frame_size)?;
        self.send.write_all(&self.buf).await?;
        Ok(())
    }

    /// Finishes the stream after everything written.
    ///
    /// # Errors
    ///
    /// [`StreamError::Closed`] when it was already finished or reset.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.send.finish().map_err(|_| StreamError::Closed)
    }

    /// Abandons the stream with `code`.
    pub fn reset(&mut self, code: ErrorCode) {
        let _ = self.send.reset(VarInt::from_u32(u32::from(code.as_u16())));
    }

    /// Finishes the stream and waits, at most `limit`, until the peer has
    /// received everything written (or stopped the stream). Closing the
    /// connection discards data not yet sent, so a handler whose last
    /// frames matter (acknowledgements and `SubscriptionEnd` on shutdown,
    /// the `Error` before a connection closes) waits here first.
    pub async fn finish_delivered(&mut self, limit: std::time::Duration) {
        if self.send.finish().is_ok() {
            let _ = tokio::time::timeout(limit, self.send.stopped()).await;
        }
    }
}

/// Ends a stream because of an error, the one way docs/PROTOCOL.md
/// ("Ending a stream with an error") specifies: `Error` with correlation id
/// 0 carrying `code`, then the broker finishes its send side, so the `Error`
/// is delivered reliably (a reset would let QUIC discard it), and stops the
/// client's send side with `code` (STOP_SENDING), so the client learns the
/// code even while it is only writing.
pub async fn end_with_error(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    code: ErrorCode,
    message: &str,
) {
    reader.stop(code);
    let frame = Frame::Error(strongbox_protocol::frames::control::ErrorFrame::new(
        0,
        code,
        message.to_owned(),
    ));
    let _ = writer.send(&frame).await;
    let _ = writer.finish();
}
