//! The control stream: handshake, keep-alive and goodbye.
//!
//! ```text
//! client                                broker
//!   Hello{versions, limits}  ───────────▶
//!                            ◀─────────── Welcome{version, principal, limits}
//!   Ping / Pong / Goodbye    ◀──────────▶ Ping / Pong / Goodbye
//! ```
//!
//! Both sides send `Ping` after `keepalive` of silence on their send side
//! and fail with `timeout` after three keep-alive intervals without
//! receiving anything. The broker also bounds the wait for `Hello`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::ErrorCode;
use crate::frame::{ABSOLUTE_MAX_FRAME_SIZE, Frame, MIN_MAX_FRAME_SIZE};
use crate::frames::control::{ErrorFrame, Goodbye, Hello, Ping, Pong, Welcome};
use crate::frames::subscribe::RECORDS_FRAMING;
use crate::session::Violation;

/// Missed keep-alive intervals before the peer is considered gone.
pub const KEEPALIVE_MISSES: u32 = 3;

/// What the control stream tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// The handshake finished (client: `Welcome` received; broker:
    /// `Welcome` queued).
    Established(Welcome),
    /// The peer said goodbye; the connection is closing.
    Goodbye(Goodbye),
    /// The broker refused the connection (client side only).
    Refused(ErrorFrame),
}

/// Keep-alive bookkeeping shared by both sides.
#[derive(Debug)]
struct KeepAlive {
    interval: Duration,
    last_recv: Instant,
    last_send: Instant,
    outstanding: Option<u64>,
    next_nonce: u64,
}

impl KeepAlive {
    fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            last_recv: now,
            last_send: now,
            outstanding: None,
            next_nonce: 1,
        }
    }

    fn dead_after(&self) -> Duration {
        self.interval.saturating_mul(KEEPALIVE_MISSES)
    }

    /// When [`KeepAlive::on_timeout`] has something to do: send a `Ping`,
    /// or declare the peer gone. While a `Ping` is outstanding no other may
    /// be sent, so only the dead line counts: a ping time already passed
    /// must not be returned again, or the caller's timer would fire at once,
    /// over and over, until the peer is declared gone.
    fn next_deadline(&self) -> Instant {
        let dead_at = self.last_recv + self.dead_after();
        if self.outstanding.is_some() {
            return dead_at;
        }
        let ping_at = self.last_send + self.interval;
        ping_at.min(dead_at)
    }

    /// When the peer is declared gone if it stays silent.
    fn dead_at(&self) -> Instant {
        self.last_recv + self.dead_after()
    }

    /// Queues a `Ping` if the send side has been idle, or fails when the
    /// peer has been silent too long.
    fn on_timeout(&mut self, now: Instant, out: &mut VecDeque<Frame>) -> Result<(), Violation> {
        if now.saturating_duration_since(self.last_recv) >= self.dead_after() {
            return Err(Violation::new(
                ErrorCode::Timeout,
                format!(
                    "no frame from the peer for {} ms",
                    now.saturating_duration_since(self.last_recv).as_millis()
                ),
            ));
        }
        if now.saturating_duration_since(self.last_send) >= self.interval
            && self.outstanding.is_none()
        {
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            self.outstanding = Some(nonce);
            self.last_send = now;
            out.push_back(Frame::Ping(Ping { nonce }));
        }
        Ok(())
    }

    fn on_pong(&mut self, pong: Pong) -> Result<(), Violation> {
        if self.outstanding == Some(pong.nonce) {
            self.outstanding = None;
            Ok(())
        } else {
            Err(Violation::new(
                ErrorCode::UnexpectedFrame,
                format!("Pong {} answers no outstanding Ping", pong.nonce),
            ))
        }
    }
}

/// Settings of the client end of a control stream.
#[derive(Debug, Clone)]
pub struct ClientControlConfig {
    /// Versions the client speaks.
    pub versions: Vec<u16>,
    /// Name and version of the client software.
    pub client_name: String,
    /// Largest frame the client accepts.
    pub max_frame_size: u32,
    /// Keep-alive interval until the broker announces its own.
    pub keepalive: Duration,
}

#[derive(Debug)]
enum ClientState {
    AwaitingWelcome,
    Established(Welcome),
    Closed,
}

/// The client end of the control stream.
///
/// ```
/// use std::time::{Duration, Instant};
/// use strongbox_protocol::frame::Frame;
/// use strongbox_protocol::session::control::{ClientControl, ClientControlConfig, ControlEvent};
///
/// let now = Instant::now();
/// let mut control = ClientControl::new(
///     ClientControlConfig {
///         versions: vec![1],
///         client_name: "doc".into(),
///         max_frame_size: 1 << 20,
///         keepalive: Duration::from_secs(10),
///     },
///     now,
/// );
/// assert!(matches!(control.poll_transmit(), Some(Frame::Hello(_))));
/// ```
#[derive(Debug)]
pub struct ClientControl {
    config: ClientControlConfig,
    state: ClientState,
    keepalive: KeepAlive,
    out: VecDeque<Frame>,
    events: VecDeque<ControlEvent>,
}

impl ClientControl {
    /// Starts the handshake: a `Hello` is queued.
    pub fn new(config: ClientControlConfig, now: Instant) -> Self {
        let mut out = VecDeque::new();
        out.push_back(Frame::Hello(Hello {
            versions: config.versions.clone(),
            client_name: config.client_name.clone(),
            max_frame_size: config.max_frame_size,
            features: crate::features::SUPPORTED,
        }));
        Self {
            keepalive: KeepAlive::new(config.keepalive, now),
            config,
            state: ClientState::AwaitingWelcome,
            out,
            events: VecDeque::new(),
        }
    }

    /// The broker's `Welcome`, once received.
    pub fn welcome(&self) -> Option<&Welcome> {
        match &self.state {
            ClientState::Established(w) => Some(w),
            _ => None,
        }
    }

    /// True after a goodbye, a refusal or a violation.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, ClientState::Closed)
    }

    /// Processes a frame received on the control stream.
    ///
    /// # Errors
    ///
    /// A [`Violation`] when the broker breaks the protocol; the connection
    /// must be closed with its code.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) -> Result<(), Violation> {
        self.keepalive.last_recv = now;
        let result = self.dispatch(frame);
        if result.is_err() {
            self.state = ClientState::Closed;
        }
        result
    }

    fn dispatch(&mut self, frame: Frame) -> Result<(), Violation> {
        match (&self.state, frame) {
            (ClientState::Closed, frame) => Err(Violation::unexpected(&frame, "after close")),
            (ClientState::AwaitingWelcome, Frame::Welcome(welcome)) => {
                if !self.config.versions.contains(&welcome.version) {
                    return Err(Violation::new(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "broker chose version {}, which was not offered",
                            welcome.version
                        ),
                    ));
                }
                if !(MIN_MAX_FRAME_SIZE..=ABSOLUTE_MAX_FRAME_SIZE).contains(&welcome.max_frame_size)
                {
                    return Err(Violation::new(
                        ErrorCode::ProtocolViolation,
                        format!(
                            "broker max_frame_size {} out of range",
                            welcome.max_frame_size
                        ),
                    ));
                }
                if welcome.keepalive_ms > 0 {
                    self.keepalive.interval =
                        Duration::from_millis(u64::from(welcome.keepalive_ms));
                }
                self.events
                    .push_back(ControlEvent::Established(welcome.clone()));
                self.state = ClientState::Established(welcome);
                Ok(())
            }
            (ClientState::AwaitingWelcome, Frame::Error(error)) => {
                self.events.push_back(ControlEvent::Refused(error));
                self.state = ClientState::Closed;
                Ok(())
            }
            (ClientState::Established(_), Frame::Ping(ping)) => {
                self.out.push_back(Frame::Pong(Pong { nonce: ping.nonce }));
                Ok(())
            }
            (ClientState::Established(_), Frame::Pong(pong)) => self.keepalive.on_pong(pong),
            (_, Frame::Goodbye(goodbye)) => {
                self.events.push_back(ControlEvent::Goodbye(goodbye));
                self.state = ClientState::Closed;
                Ok(())
            }
            (ClientState::Established(_), Frame::Error(error)) => {
                // An error on an established control stream ends the connection.
                self.events.push_back(ControlEvent::Refused(error));
                self.state = ClientState::Closed;
                Ok(())
            }
            (ClientState::AwaitingWelcome, frame @ (Frame::Ping(_) | Frame::Pong(_))) => {
                Err(Violation::unexpected(&frame, "before Welcome"))
            }
            (_, frame @ (Frame::Hello(_) | Frame::Welcome(_))) => {
                Err(Violation::unexpected(&frame, "after the handshake"))
            }
            (_, frame) => Err(Violation::wrong_stream(&frame, "control")),
        }
    }

    /// Says goodbye; the caller closes the connection after sending it.
    pub fn close(&mut self, reason: impl Into<String>) {
        if !matches!(self.state, ClientState::Closed) {
            self.out.push_back(Frame::Goodbye(Goodbye {
                code: 0,
                reason: reason.into(),
            }));
            self.state = ClientState::Closed;
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.out.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ControlEvent> {
        self.events.pop_front()
    }

    /// When [`ClientControl::handle_timeout`] must next be called. Always
    /// later than the `now` of the last [`ClientControl::handle_timeout`]
    /// that returned `Ok`, so a timer armed with it never spins.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientState::Closed => None,
            // No `Ping` before `Welcome`: only the wait for it is bounded.
            ClientState::AwaitingWelcome => Some(self.keepalive.dead_at()),
            ClientState::Established(_) => Some(self.keepalive.next_deadline()),
        }
    }

    /// Sends a keep-alive `Ping` when due.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Timeout`] when the broker has been silent for
    /// [`KEEPALIVE_MISSES`] intervals (or has not answered `Hello`).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Violation> {
        match self.state {
            ClientState::Closed => Ok(()),
            ClientState::AwaitingWelcome => {
                if now.saturating_duration_since(self.keepalive.last_recv)
                    >= self.keepalive.dead_after()
                {
                    self.state = ClientState::Closed;
                    Err(Violation::new(
                        ErrorCode::Timeout,
                        "no Welcome from the broker",
                    ))
                } else {
                    Ok(())
                }
            }
            ClientState::Established(_) => {
                let r = self.keepalive.on_timeout(now, &mut self.out);
                if r.is_err() {
                    self.state = ClientState::Closed;
                }
                r
            }
        }
    }
}

/// Settings of the broker end of a control stream.
#[derive(Debug, Clone)]
pub struct BrokerControlConfig {
    /// Versions the broker speaks.
    pub versions: Vec<u16>,
    /// The broker's id, sent in `Welcome`.
    pub broker_id: String,
    /// Largest frame the broker accepts.
    pub max_frame_size: u32,
    /// Largest record batch the broker accepts.
    pub max_batch_size: u32,
    /// Unanswered `Produce` frames allowed per producer stream.
    pub max_in_flight: u32,
    /// Keep-alive interval announced to the client.
    pub keepalive: Duration,
    /// How long to wait for `Hello`.
    pub handshake_timeout: Duration,
}

#[derive(Debug)]
enum BrokerState {
    AwaitingHello {
        deadline: Instant,
    },
    Established {
        version: u16,
        peer_max_frame_size: u32,
    },
    Closed,
}

/// The broker end of the control stream.
#[derive(Debug)]
pub struct BrokerControl {
    config: BrokerControlConfig,
    principal: String,
    state: BrokerState,
    keepalive: KeepAlive,
    out: VecDeque<Frame>,
    events: VecDeque<ControlEvent>,
}

impl BrokerControl {
    /// Waits for `Hello` from a client authenticated as `principal`.
    pub fn new(config: BrokerControlConfig, principal: impl Into<String>, now: Instant) -> Self {
        Self {
            state: BrokerState::AwaitingHello {
                deadline: now + config.handshake_timeout,
            },
            keepalive: KeepAlive::new(config.keepalive, now),
            config,
            principal: principal.into(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The negotiated version, once established.
    pub fn version(&self) -> Option<u16> {
        match self.state {
            BrokerState::Established { version, .. } => Some(version),
            _ => None,
        }
    }

    /// The largest frame the client accepts, once established.
    pub fn peer_max_frame_size(&self) -> Option<u32> {
        match self.state {
            BrokerState::Established {
                peer_max_frame_size,
                ..
            } => Some(peer_max_frame_size),
            _ => None,
        }
    }

    /// True after a goodbye or a violation.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, BrokerState::Closed)
    }

    /// Processes a frame received on the control stream.
    ///
    /// # Errors
    ///
    /// A [`Violation`]; the broker sends it as `Error` and closes the
    /// connection.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) -> Result<(), Violation> {
        self.keepalive.last_recv = now;
        let result = self.dispatch(frame, now);
        if result.is_err() {
            self.state = BrokerState::Closed;
        }
        result
    }

    fn dispatch(&mut self, frame: Frame, now: Instant) -> Result<(), Violation> {
        match (&self.state, frame) {
            (BrokerState::Closed, frame) => Err(Violation::unexpected(&frame, "after close")),
            (BrokerState::AwaitingHello { .. }, Frame::Hello(hello)) => self.on_hello(hello, now),
            // One rule for every stream: a first frame that cannot open the
            // stream is a protocol violation, whatever it is.
            (BrokerState::AwaitingHello { .. }, frame) => Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "the control stream must start with Hello, not {}",
                    frame.frame_type().name()
                ),
            )),
            (BrokerState::Established { .. }, Frame::Ping(ping)) => {
                self.out.push_back(Frame::Pong(Pong { nonce: ping.nonce }));
                self.keepalive.last_send = now;
                Ok(())
            }
            (BrokerState::Established { .. }, Frame::Pong(pong)) => self.keepalive.on_pong(pong),
            (BrokerState::Established { .. }, Frame::Goodbye(goodbye)) => {
                self.events.push_back(ControlEvent::Goodbye(goodbye));
                self.state = BrokerState::Closed;
                Ok(())
            }
            (BrokerState::Established { .. }, frame @ (Frame::Hello(_) | Frame::Welcome(_))) => {
                Err(Violation::unexpected(&frame, "after the handshake"))
            }
            (BrokerState::Established { .. }, frame) => {
                Err(Violation::wrong_stream(&frame, "control"))
            }
        }
    }

    fn on_hello(&mut self, hello: Hello, now: Instant) -> Result<(), Violation> {
        let Some(version) = hello
            .versions
            .iter()
            .copied()
            .filter(|v| self.config.versions.contains(v))
            .max()
        else {
            return Err(Violation::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "client offers versions {:?}; this broker speaks {:?}",
                    hello.versions, self.config.versions
                ),
            ));
        };
        if !(MIN_MAX_FRAME_SIZE..=ABSOLUTE_MAX_FRAME_SIZE).contains(&hello.max_frame_size) {
            return Err(Violation::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "max_frame_size {} outside {MIN_MAX_FRAME_SIZE}..={ABSOLUTE_MAX_FRAME_SIZE}",
                    hello.max_frame_size
                ),
            ));
        }
        let needed = min_client_frame_size(self.config.max_batch_size);
        if hello.max_frame_size < needed {
            return Err(Violation::new(
                ErrorCode::FrameSizeTooSmall,
                format!(
                    "max_frame_size {} is smaller than {needed}, the largest frame this broker may send \
                     (a Records frame carrying one batch of max_batch_size {}); announce at least {needed}",
                    hello.max_frame_size, self.config.max_batch_size
                ),
            ));
        }
        let welcome = Welcome {
            version,
            broker_id: self.config.broker_id.clone(),
            principal: self.principal.clone(),
            max_frame_size: self.config.max_frame_size,
            max_batch_size: self.config.max_batch_size,
            max_in_flight: self.config.max_in_flight,
            keepalive_ms: u32::try_from(self.config.keepalive.as_millis()).unwrap_or(u32::MAX),
            // Bits this broker does not know are ignored (rule N1).
            features: hello.features & crate::features::SUPPORTED,
        };
        self.out.push_back(Frame::Welcome(welcome.clone()));
        self.keepalive.last_send = now;
        self.events.push_back(ControlEvent::Established(welcome));
        self.state = BrokerState::Established {
            version,
            peer_max_frame_size: hello.max_frame_size,
        };
        Ok(())
    }

    /// Says goodbye with `code` (`None` for a normal close).
    pub fn close(&mut self, code: Option<ErrorCode>, reason: impl Into<String>) {
        if !matches!(self.state, BrokerState::Closed) {
            self.out.push_back(Frame::Goodbye(Goodbye {
                code: code.map_or(0, ErrorCode::as_u16),
                reason: reason.into(),
            }));
            self.state = BrokerState::Closed;
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.out.pop_front()
    }

    /// The next event for the broker.
    pub fn poll_event(&mut self) -> Option<ControlEvent> {
        self.events.pop_front()
    }

    /// When [`BrokerControl::handle_timeout`] must next be called. Always
    /// later than the `now` of the last [`BrokerControl::handle_timeout`]
    /// that returned `Ok`, so a timer armed with it never spins.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            BrokerState::AwaitingHello { deadline } => Some(deadline),
            BrokerState::Established { .. } => Some(self.keepalive.next_deadline()),
            BrokerState::Closed => None,
        }
    }

    /// Enforces the handshake timeout and keep-alive.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Timeout`] when `Hello` is late or the client is silent.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Violation> {
        let result = match self.state {
            BrokerState::AwaitingHello { deadline } if now >= deadline => Err(Violation::new(
                ErrorCode::Timeout,
                "no Hello within the handshake timeout",
            )),
            BrokerState::Established { .. } => self.keepalive.on_timeout(now, &mut self.out),
            _ => Ok(()),
        };
        if result.is_err() {
            self.state = BrokerState::Closed;
        }
        result
    }
}

/// The smallest `Hello.max_frame_size` a broker whose `max_batch_size` is
/// `max_batch_size` accepts: a `Records` frame carrying one batch of that
/// size must fit, since a batch is never split (its CRC seals it).
pub fn min_client_frame_size(max_batch_size: u32) -> u32 {
    max_batch_size
        .saturating_add(RECORDS_FRAMING)
        .max(MIN_MAX_FRAME_SIZE)
}
