//! Admin streams: one request, one answer.

use crate::error::ErrorCode;
use crate::frame::Frame;
use crate::frames::admin::{AdminRequest, AdminResponse};
use crate::frames::control::ErrorFrame;
use crate::session::Violation;

/// The client end of an admin stream: one request in flight.
#[derive(Debug)]
pub struct AdminCall {
    answered: bool,
}

impl AdminCall {
    /// Starts a call; returns it and the request frame to send (then finish
    /// the send side of the stream).
    pub fn new(request: AdminRequest) -> (Self, Frame) {
        (Self { answered: false }, Frame::Request(request))
    }

    /// Processes the broker's answer.
    ///
    /// # Errors
    ///
    /// The broker's refusal as `Err(Ok(ErrorFrame))`; a [`Violation`] as
    /// `Err(Err(..))` for a second answer or a frame that is not an answer.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
    ) -> Result<AdminResponse, Result<ErrorFrame, Violation>> {
        if self.answered {
            return Err(Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!("{} after the answer", frame.frame_type().name()),
            )));
        }
        match frame {
            Frame::Response(response) => {
                self.answered = true;
                Ok(response)
            }
            Frame::Error(error) => {
                self.answered = true;
                Err(Ok(error))
            }
            frame => Err(Err(Violation::wrong_stream(&frame, "admin"))),
        }
    }
}

/// The broker end of an admin stream.
#[derive(Debug, Default)]
pub struct BrokerAdminStream {
    received: bool,
}

impl BrokerAdminStream {
    /// A stream waiting for its request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Processes a frame from the client.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::ProtocolViolation`] for a second request or a frame that
    /// is not an admin request.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<AdminRequest, Violation> {
        if self.received {
            return Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "{} after the request: an admin stream carries one request",
                    frame.frame_type().name()
                ),
            ));
        }
        match frame {
            Frame::Request(request) => {
                self.received = true;
                Ok(request)
            }
            frame => Err(Violation::wrong_stream(&frame, "admin")),
        }
    }

    /// The frame answering the request.
    pub fn respond(&mut self, answer: Result<AdminResponse, ErrorFrame>) -> Frame {
        match answer {
            Ok(response) => Frame::Response(response),
            Err(error) => Frame::Error(error),
        }
    }
}
