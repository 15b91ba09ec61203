//! Property tests of the session state machines.
//!
//! Each machine is fed arbitrary sequences of frames (and, for the control
//! stream, of clock ticks) and must never panic. Next to it runs a small
//! reference model written from the stream rules of docs/PROTOCOL.md; every
//! step's outcome, and the error code of every violation, must be the one
//! the model predicts. Honest peers driven against each other through the
//! codec must never see a violation and must agree on the subscription
//! credit.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::{
    ABSOLUTE_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE, Decoded, Frame, MIN_MAX_FRAME_SIZE,
    decode_frame,
};
use strongbox_protocol::frames::admin::AdminResponse;
use strongbox_protocol::frames::control::{ErrorFrame, Goodbye, Hello, Ping, Pong, Welcome};
use strongbox_protocol::frames::produce::{Produce, ProduceAck};
use strongbox_protocol::frames::subscribe::{
    AssignedPartition, Assignment, Commit, CommitAck, Credit, OffsetBatch, PartitionError, Records,
    StartPosition, Subscribe, SubscriptionEnd, SubscriptionTarget, Unsubscribe,
};
use strongbox_protocol::session::Violation;
use strongbox_protocol::session::admin::{AdminCall, BrokerAdminStream};
use strongbox_protocol::session::control::{
    BrokerControl, BrokerControlConfig, ClientControl, ClientControlConfig, ControlEvent,
    KEEPALIVE_MISSES, min_client_frame_size,
};

/// docs/PROTOCOL.md: a side that receives nothing for 3 × `keepalive_ms`
/// times out.
const MISSES: u32 = 3;
use strongbox_protocol::session::produce::{
    BrokerProducerStream, ProduceOutcome, ProduceRefused, ProduceRequest, ProducerSession,
};
use strongbox_protocol::session::subscribe::{
    BrokerSubscription, CommitRefused, SubscriberEvent, SubscriberSession, SubscriptionRequest,
};

use common::{arb_admin_request, arb_admin_response, arb_frame, arb_string};

/// Sends `frame` through the codec, as the wire would.
fn wire(frame: Frame) -> Frame {
    let bytes = frame.to_bytes(DEFAULT_MAX_FRAME_SIZE).expect("encodes");
    match decode_frame(&bytes, DEFAULT_MAX_FRAME_SIZE) {
        Ok(Decoded::Frame(f, n)) if n == bytes.len() => f,
        other => panic!("frame did not survive the codec: {other:?}"),
    }
}

fn code_of<T: std::fmt::Debug>(r: &Result<T, Violation>) -> Option<ErrorCode> {
    r.as_ref().err().map(|v| v.code)
}

fn is_control_frame(f: &Frame) -> bool {
    matches!(
        f,
        Frame::Hello(_)
            | Frame::Welcome(_)
            | Frame::Ping(_)
            | Frame::Pong(_)
            | Frame::Goodbye(_)
            | Frame::Error(_)
    )
}

// =================================================================================
// control stream

const KEEPALIVE_MS: u32 = 1000;
const HANDSHAKE_MS: u64 = 2000;

fn client_config() -> ClientControlConfig {
    ClientControlConfig {
        versions: vec![1],
        client_name: "props".into(),
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        keepalive: Duration::from_millis(u64::from(KEEPALIVE_MS)),
    }
}

fn broker_config(versions: Vec<u16>) -> BrokerControlConfig {
    BrokerControlConfig {
        versions,
        broker_id: "b1".into(),
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        max_batch_size: 1 << 20,
        max_in_flight: 4,
        keepalive: Duration::from_millis(u64::from(KEEPALIVE_MS)),
        handshake_timeout: Duration::from_millis(HANDSHAKE_MS),
    }
}

/// Frames a control stream sees, biased toward the interesting ones:
/// nonces and versions from small ranges so that they often match.
fn arb_control_frame() -> impl Strategy<Value = Frame> {
    let max_frame = prop_oneof![
        Just(DEFAULT_MAX_FRAME_SIZE),
        Just(MIN_MAX_FRAME_SIZE),
        Just(ABSOLUTE_MAX_FRAME_SIZE),
        Just(MIN_MAX_FRAME_SIZE - 1),
        Just(ABSOLUTE_MAX_FRAME_SIZE + 1),
        Just(min_client_frame_size(1 << 20)),
        Just(min_client_frame_size(1 << 20) - 1),
    ];
    prop_oneof![
        3 => (vec(0u16..4, 0..3), max_frame.clone()).prop_map(|(versions, max_frame_size)| {
            Frame::Hello(Hello {
                versions,
                client_name: "c".into(),
                max_frame_size,
                features: 0,
            })
        }),
        3 => (0u16..3, max_frame, 0u32..3000).prop_map(|(version, max_frame_size, keepalive_ms)| {
            Frame::Welcome(Welcome {
                version,
                broker_id: "b".into(),
                principal: "p".into(),
                max_frame_size,
                max_batch_size: 1 << 20,
                max_in_flight: 4,
                keepalive_ms,
                features: 0,
            })
        }),
        3 => (0u64..4).prop_map(|nonce| Frame::Ping(Ping { nonce })),
        3 => (0u64..4).prop_map(|nonce| Frame::Pong(Pong { nonce })),
        1 => (0u16..10, arb_string()).prop_map(|(code, reason)| Frame::Goodbye(Goodbye { code, reason })),
        1 => Just(Frame::Error(ErrorFrame::new(0, ErrorCode::Internal, "x"))),
        2 => arb_frame(),
    ]
}

#[derive(Debug, Clone)]
enum ControlOp {
    Receive(Frame),
    /// Advance the clock by this many milliseconds and run the timer.
    Tick(u64),
    Close,
}

fn arb_control_ops() -> impl Strategy<Value = Vec<ControlOp>> {
    vec(
        prop_oneof![
            6 => arb_control_frame().prop_map(ControlOp::Receive),
            3 => prop_oneof![3 => 0u64..600, 2 => 600u64..1200, 1 => 1200u64..3500]
                .prop_map(ControlOp::Tick),
            1 => Just(ControlOp::Close),
        ],
        0..24,
    )
}

/// What the control stream rules of docs/PROTOCOL.md say about a frame
/// received in an established state, given the outstanding Ping.
fn established_control_rule(frame: &Frame, outstanding: Option<u64>) -> Result<(), ErrorCode> {
    match frame {
        Frame::Ping(_) | Frame::Goodbye(_) => Ok(()),
        Frame::Pong(p) if outstanding == Some(p.nonce) => Ok(()),
        Frame::Pong(_) | Frame::Hello(_) | Frame::Welcome(_) => Err(ErrorCode::UnexpectedFrame),
        _ => Err(ErrorCode::ProtocolViolation),
    }
}

#[derive(Debug, PartialEq)]
enum Phase {
    Handshake,
    Established,
    Closed,
}

/// The broker end against arbitrary input and clock ticks.
fn run_broker_control(ops: &[ControlOp], versions: &[u16]) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let mut now = start;
    let mut broker = BrokerControl::new(broker_config(versions.to_vec()), "alice", now);
    let mut phase = Phase::Handshake;
    let keepalive = Duration::from_millis(u64::from(KEEPALIVE_MS));
    let mut last_recv = now;
    let mut last_send = now;
    let mut outstanding: Option<u64> = None;

    for op in ops {
        match op {
            ControlOp::Receive(frame) => {
                let result = broker.handle_frame(frame.clone(), now);
                last_recv = now;
                let expected = match phase {
                    Phase::Closed => Err(ErrorCode::UnexpectedFrame),
                    Phase::Handshake => match frame {
                        Frame::Hello(h) => {
                            if !h.versions.iter().any(|v| versions.contains(v)) {
                                Err(ErrorCode::UnsupportedVersion)
                            } else if !(MIN_MAX_FRAME_SIZE..=ABSOLUTE_MAX_FRAME_SIZE)
                                .contains(&h.max_frame_size)
                            {
                                Err(ErrorCode::ProtocolViolation)
                            } else if h.max_frame_size < min_client_frame_size(1 << 20) {
                                // Too small for a Records frame with one
                                // batch of max_batch_size.
                                Err(ErrorCode::FrameSizeTooSmall)
                            } else {
                                Ok(())
                            }
                        }
                        // One rule for every stream's first frame.
                        _ => Err(ErrorCode::ProtocolViolation),
                    },
                    Phase::Established => established_control_rule(frame, outstanding),
                };
                prop_assert_eq!(
                    code_of(&result),
                    expected.err(),
                    "{:?} in {:?}",
                    frame,
                    phase
                );
                match (&phase, frame, &result) {
                    (_, _, Err(_)) => phase = Phase::Closed,
                    (Phase::Handshake, Frame::Hello(h), Ok(())) => {
                        let best = h
                            .versions
                            .iter()
                            .copied()
                            .filter(|v| versions.contains(v))
                            .max();
                        prop_assert_eq!(broker.version(), best);
                        let Some(Frame::Welcome(w)) = broker.poll_transmit() else {
                            return Err(TestCaseError::fail("no Welcome queued"));
                        };
                        prop_assert_eq!(Some(w.version), best);
                        prop_assert_eq!(&w.principal, "alice");
                        prop_assert_eq!(broker.poll_event(), Some(ControlEvent::Established(w)));
                        prop_assert_eq!(broker.peer_max_frame_size(), Some(h.max_frame_size));
                        phase = Phase::Established;
                        last_send = now;
                    }
                    (Phase::Established, Frame::Goodbye(g), Ok(())) => {
                        prop_assert_eq!(
                            broker.poll_event(),
                            Some(ControlEvent::Goodbye(g.clone()))
                        );
                        phase = Phase::Closed;
                    }
                    (Phase::Established, Frame::Ping(p), Ok(())) => {
                        prop_assert_eq!(
                            broker.poll_transmit(),
                            Some(Frame::Pong(Pong { nonce: p.nonce }))
                        );
                        last_send = now;
                    }
                    (Phase::Established, Frame::Pong(_), Ok(())) => outstanding = None,
                    _ => {}
                }
            }
            ControlOp::Tick(ms) => {
                now += Duration::from_millis(*ms);
                let result = broker.handle_timeout(now);
                let expected = match phase {
                    Phase::Handshake if now - start >= Duration::from_millis(HANDSHAKE_MS) => {
                        Err(ErrorCode::Timeout)
                    }
                    Phase::Established if now - last_recv >= keepalive * MISSES => {
                        Err(ErrorCode::Timeout)
                    }
                    _ => Ok(()),
                };
                prop_assert_eq!(
                    code_of(&result),
                    expected.err(),
                    "tick to {:?}",
                    now - start
                );
                if result.is_ok()
                    && let Some(next) = broker.poll_timeout()
                {
                    // The next wake-up is in the future: a timer armed with a
                    // deadline already passed fires at once, for ever (a spin).
                    prop_assert!(next > now, "timer re-armed {:?} in the past", now - next);
                }
                if result.is_err() {
                    phase = Phase::Closed;
                } else if phase == Phase::Established
                    && now - last_send >= keepalive
                    && outstanding.is_none()
                {
                    // Idle for a keep-alive interval: a Ping is due.
                    match broker.poll_transmit() {
                        Some(Frame::Ping(p)) => {
                            outstanding = Some(p.nonce);
                            last_send = now;
                        }
                        other => prop_assert!(false, "expected a Ping, got {:?}", other),
                    }
                } else {
                    prop_assert_eq!(broker.poll_transmit(), None, "no Ping is due");
                }
            }
            ControlOp::Close => {
                broker.close(None, "bye");
                if phase != Phase::Closed {
                    let goodbye = Frame::Goodbye(Goodbye {
                        code: 0,
                        reason: "bye".into(),
                    });
                    prop_assert_eq!(broker.poll_transmit(), Some(goodbye));
                }
                phase = Phase::Closed;
            }
        }
        prop_assert_eq!(broker.is_closed(), phase == Phase::Closed);
        while let Some(frame) = broker.poll_transmit() {
            prop_assert!(is_control_frame(&frame), "broker sent {:?}", frame);
            if let Frame::Ping(p) = &frame {
                outstanding = Some(p.nonce);
            }
            let _ = wire(frame);
        }
        if phase == Phase::Closed {
            prop_assert_eq!(broker.poll_timeout(), None);
        }
    }
    Ok(())
}

/// The client end against arbitrary input and clock ticks.
fn run_client_control(ops: &[ControlOp]) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let mut now = start;
    let mut client = ClientControl::new(client_config(), now);
    prop_assert!(matches!(client.poll_transmit(), Some(Frame::Hello(_))));
    let mut phase = Phase::Handshake;
    let mut keepalive = Duration::from_millis(u64::from(KEEPALIVE_MS));
    let mut last_recv = now;
    let mut last_send = now;
    let mut outstanding: Option<u64> = None;

    for op in ops {
        match op {
            ControlOp::Receive(frame) => {
                let result = client.handle_frame(frame.clone(), now);
                last_recv = now;
                let expected = match (&phase, frame) {
                    (Phase::Closed, _) => Err(ErrorCode::UnexpectedFrame),
                    (_, Frame::Goodbye(_)) => Ok(()),
                    (Phase::Handshake, Frame::Welcome(w)) => {
                        if w.version != 1 {
                            Err(ErrorCode::UnsupportedVersion)
                        } else if !(MIN_MAX_FRAME_SIZE..=ABSOLUTE_MAX_FRAME_SIZE)
                            .contains(&w.max_frame_size)
                        {
                            Err(ErrorCode::ProtocolViolation)
                        } else {
                            Ok(())
                        }
                    }
                    (Phase::Handshake, Frame::Error(_)) => Ok(()),
                    (Phase::Handshake, Frame::Ping(_) | Frame::Pong(_) | Frame::Hello(_)) => {
                        Err(ErrorCode::UnexpectedFrame)
                    }
                    (Phase::Handshake, _) => Err(ErrorCode::ProtocolViolation),
                    (Phase::Established, Frame::Error(_)) => Ok(()),
                    (Phase::Established, f) => established_control_rule(f, outstanding),
                };
                prop_assert_eq!(
                    code_of(&result),
                    expected.err(),
                    "{:?} in {:?}",
                    frame,
                    phase
                );
                match (&phase, frame, &result) {
                    (_, _, Err(_)) => phase = Phase::Closed,
                    (_, Frame::Goodbye(g), Ok(())) => {
                        prop_assert_eq!(
                            client.poll_event(),
                            Some(ControlEvent::Goodbye(g.clone()))
                        );
                        phase = Phase::Closed;
                    }
                    (_, Frame::Error(e), Ok(())) => {
                        prop_assert_eq!(
                            client.poll_event(),
                            Some(ControlEvent::Refused(e.clone()))
                        );
                        phase = Phase::Closed;
                    }
                    (Phase::Handshake, Frame::Welcome(w), Ok(())) => {
                        prop_assert_eq!(
                            client.poll_event(),
                            Some(ControlEvent::Established(w.clone()))
                        );
                        prop_assert_eq!(client.welcome(), Some(w));
                        if w.keepalive_ms > 0 {
                            keepalive = Duration::from_millis(u64::from(w.keepalive_ms));
                        }
                        phase = Phase::Established;
                    }
                    (Phase::Established, Frame::Ping(p), Ok(())) => {
                        prop_assert_eq!(
                            client.poll_transmit(),
                            Some(Frame::Pong(Pong { nonce: p.nonce }))
                        );
                    }
                    (Phase::Established, Frame::Pong(_), Ok(())) => outstanding = None,
                    _ => {}
                }
            }
            ControlOp::Tick(ms) => {
                now += Duration::from_millis(*ms);
                let result = client.handle_timeout(now);
                let silent = now - last_recv >= keepalive * MISSES;
                let expected = match phase {
                    Phase::Handshake | Phase::Established if silent => Err(ErrorCode::Timeout),
                    _ => Ok(()),
                };
                prop_assert_eq!(
                    code_of(&result),
                    expected.err(),
                    "tick to {:?}",
                    now - start
                );
                if result.is_ok()
                    && let Some(next) = client.poll_timeout()
                {
                    // The next wake-up is in the future: a timer armed with a
                    // deadline already passed fires at once, for ever (a spin).
                    prop_assert!(next > now, "timer re-armed {:?} in the past", now - next);
                }
                if result.is_err() {
                    phase = Phase::Closed;
                } else if phase == Phase::Established
                    && now - last_send >= keepalive
                    && outstanding.is_none()
                {
                    match client.poll_transmit() {
                        Some(Frame::Ping(p)) => {
                            outstanding = Some(p.nonce);
                            last_send = now;
                        }
                        other => prop_assert!(false, "expected a Ping, got {:?}", other),
                    }
                } else {
                    prop_assert_eq!(client.poll_transmit(), None, "no Ping is due");
                }
            }
            ControlOp::Close => {
                client.close("bye");
                if phase != Phase::Closed {
                    let goodbye = Frame::Goodbye(Goodbye {
                        code: 0,
                        reason: "bye".into(),
                    });
                    prop_assert_eq!(client.poll_transmit(), Some(goodbye));
                }
                phase = Phase::Closed;
            }
        }
        prop_assert_eq!(client.is_closed(), phase == Phase::Closed);
        while let Some(frame) = client.poll_transmit() {
            prop_assert!(is_control_frame(&frame), "client sent {:?}", frame);
            if let Frame::Ping(p) = &frame {
                outstanding = Some(p.nonce);
            }
            let _ = wire(frame);
        }
    }
    Ok(())
}

#[test]
fn keepalive_misses_are_as_documented() {
    assert_eq!(KEEPALIVE_MISSES, MISSES);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn broker_control_follows_the_rules(
        ops in arb_control_ops(),
        versions in prop_oneof![Just(vec![1u16]), Just(vec![1, 2])],
    ) {
        run_broker_control(&ops, &versions)?;
    }

    /// The same, starting from an established connection so that the
    /// keep-alive and post-handshake rules get most of the steps.
    #[test]
    fn established_broker_control_follows_the_rules(ops in arb_control_ops()) {
        let hello = Frame::Hello(Hello {
            versions: vec![1],
            client_name: "c".into(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            features: 0,
        });
        let mut all = vec![ControlOp::Receive(hello)];
        all.extend(ops);
        run_broker_control(&all, &[1])?;
    }

    #[test]
    fn client_control_follows_the_rules(ops in arb_control_ops()) {
        run_client_control(&ops)?;
    }

    #[test]
    fn established_client_control_follows_the_rules(
        ops in arb_control_ops(),
        keepalive_ms in prop_oneof![Just(0u32), 100u32..3000],
    ) {
        let welcome = Frame::Welcome(Welcome {
            version: 1,
            broker_id: "b".into(),
            principal: "p".into(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_batch_size: 1 << 20,
            max_in_flight: 4,
            keepalive_ms,
            features: 0,
        });
        let mut all = vec![ControlOp::Receive(welcome)];
        all.extend(ops);
        run_client_control(&all)?;
    }

    /// Honest ends over the codec: the handshake succeeds and pings are
    /// answered, whatever the timing within the keep-alive bound.
    #[test]
    fn honest_control_ends_stay_connected(ticks in vec(1u64..900, 1..30)) {
        let mut now = Instant::now();
        let mut client = ClientControl::new(client_config(), now);
        let mut broker = BrokerControl::new(broker_config(vec![1]), "alice", now);
        for tick in ticks {
            while let Some(f) = client.poll_transmit() {
                broker.handle_frame(wire(f), now).map_err(|v| TestCaseError::fail(v.to_string()))?;
            }
            while let Some(f) = broker.poll_transmit() {
                client.handle_frame(wire(f), now).map_err(|v| TestCaseError::fail(v.to_string()))?;
            }
            now += Duration::from_millis(tick);
            client.handle_timeout(now).map_err(|v| TestCaseError::fail(v.to_string()))?;
            broker.handle_timeout(now).map_err(|v| TestCaseError::fail(v.to_string()))?;
        }
        prop_assert!(client.welcome().is_some());
        prop_assert_eq!(broker.version(), Some(1));
        prop_assert!(!client.is_closed() && !broker.is_closed());
    }
}

// =================================================================================
// producer stream

const MAX_IN_FLIGHT: u32 = 3;
const MAX_BATCH: u32 = 16;

fn produce(correlation_id: u64, batch_len: usize) -> Frame {
    Frame::Produce(Produce {
        correlation_id,
        topic: "t".into(),
        partition: 0,
        batch: Bytes::from(vec![0u8; batch_len]),
    })
}

#[derive(Debug, Clone)]
enum BrokerProduceOp {
    Receive(Frame),
    /// Answer the oldest request (ack or error).
    AnswerOldest(bool),
    /// Answer a request that may not be the oldest.
    AnswerId(u64),
}

fn arb_broker_produce_ops() -> impl Strategy<Value = Vec<BrokerProduceOp>> {
    vec(
        prop_oneof![
            6 => (0u64..12, prop_oneof![0usize..=16, 17usize..24])
                .prop_map(|(id, len)| BrokerProduceOp::Receive(produce(id, len))),
            1 => arb_frame().prop_map(BrokerProduceOp::Receive),
            3 => any::<bool>().prop_map(BrokerProduceOp::AnswerOldest),
            1 => (0u64..12).prop_map(BrokerProduceOp::AnswerId),
        ],
        0..30,
    )
}

#[derive(Debug, Clone)]
enum ClientProduceOp {
    Send(usize),
    Ack(u64),
    Fail(u64, u16),
    Receive(Frame),
}

fn arb_client_produce_ops() -> impl Strategy<Value = Vec<ClientProduceOp>> {
    vec(
        prop_oneof![
            4 => prop_oneof![0usize..=16, 17usize..20].prop_map(ClientProduceOp::Send),
            3 => (0u64..6).prop_map(ClientProduceOp::Ack),
            2 => (0u64..6, prop_oneof![Just(48u16), Just(113), Just(2), Just(999)])
                .prop_map(|(id, code)| ClientProduceOp::Fail(id, code)),
            1 => arb_frame().prop_map(ClientProduceOp::Receive),
        ],
        0..30,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn broker_producer_stream_follows_the_rules(ops in arb_broker_produce_ops()) {
        let mut stream = BrokerProducerStream::new(MAX_IN_FLIGHT, MAX_BATCH);
        let mut last: Option<u64> = None;
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        for op in ops {
            match op {
                BrokerProduceOp::Receive(frame) => {
                    let result = stream.handle_frame(frame.clone());
                    let expected = match &frame {
                        Frame::Produce(p)
                            if p.correlation_id == 0
                                || last.is_some_and(|l| p.correlation_id <= l) =>
                        {
                            Err(ErrorCode::ProtocolViolation)
                        }
                        Frame::Produce(_) if in_flight.len() >= MAX_IN_FLIGHT as usize => {
                            Err(ErrorCode::LimitExceeded)
                        }
                        Frame::Produce(_) => Ok(()),
                        _ => Err(ErrorCode::ProtocolViolation),
                    };
                    prop_assert_eq!(code_of(&result), expected.err(), "{:?}", frame);
                    let Ok(request) = result else {
                        // A stream-level violation: the stream is reset.
                        break;
                    };
                    let Frame::Produce(p) = frame else { unreachable!() };
                    last = Some(p.correlation_id);
                    in_flight.push_back(p.correlation_id);
                    match request {
                        ProduceRequest::Append(got) => {
                            prop_assert!(p.batch.len() <= MAX_BATCH as usize);
                            prop_assert_eq!(got, p);
                        }
                        ProduceRequest::Reject(e) => {
                            // A per-request error: the stream goes on.
                            prop_assert!(p.batch.len() > MAX_BATCH as usize);
                            prop_assert_eq!(e.correlation_id, p.correlation_id);
                            prop_assert_eq!(e.error_code(), Some(ErrorCode::FrameTooLarge));
                        }
                    }
                }
                BrokerProduceOp::AnswerOldest(ack) => {
                    let Some(&oldest) = in_flight.front() else { continue };
                    let outcome = if ack {
                        ProduceOutcome::Acked(ProduceAck {
                            correlation_id: oldest,
                            partition: 0,
                            base_offset: 7,
                            duplicate: false,
                        })
                    } else {
                        ProduceOutcome::Failed(ErrorFrame::new(oldest, ErrorCode::NotAuthorized, "no"))
                    };
                    let frame = stream.answer(outcome).map_err(|v| TestCaseError::fail(v.to_string()))?;
                    in_flight.pop_front();
                    match wire(frame) {
                        Frame::ProduceAck(a) => prop_assert_eq!(a.correlation_id, oldest),
                        Frame::Error(e) => prop_assert_eq!(e.correlation_id, oldest),
                        other => prop_assert!(false, "answer {:?}", other),
                    }
                }
                BrokerProduceOp::AnswerId(id) => {
                    let result = stream.answer(ProduceOutcome::Failed(ErrorFrame::new(id, ErrorCode::Internal, "x")));
                    if in_flight.front() == Some(&id) {
                        prop_assert!(result.is_ok());
                        in_flight.pop_front();
                    } else {
                        // Answers never leave out of order.
                        prop_assert_eq!(code_of(&result), Some(ErrorCode::Internal));
                    }
                }
            }
            prop_assert_eq!(stream.in_flight(), in_flight.len());
        }
    }

    #[test]
    fn producer_session_follows_the_rules(ops in arb_client_produce_ops()) {
        let mut session = ProducerSession::new(MAX_IN_FLIGHT, MAX_BATCH);
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut next_id = 1;
        for op in ops {
            let frame = match op {
                ClientProduceOp::Send(len) => {
                    let result = session.send("t", 0, Bytes::from(vec![1u8; len]));
                    if in_flight.len() >= MAX_IN_FLIGHT as usize {
                        prop_assert_eq!(result, Err(ProduceRefused::WindowFull(MAX_IN_FLIGHT)));
                    } else if len > MAX_BATCH as usize {
                        prop_assert_eq!(result, Err(ProduceRefused::TooLarge { len, max: MAX_BATCH }));
                    } else {
                        let (id, frame) = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        // Correlation ids start at 1 and strictly increase.
                        prop_assert_eq!(id, next_id);
                        next_id += 1;
                        in_flight.push_back(id);
                        let Frame::Produce(p) = wire(frame) else { unreachable!() };
                        prop_assert_eq!(p.correlation_id, id);
                    }
                    prop_assert_eq!(session.has_window(), in_flight.len() < MAX_IN_FLIGHT as usize);
                    continue;
                }
                ClientProduceOp::Ack(id) => Frame::ProduceAck(ProduceAck {
                    correlation_id: id,
                    partition: 0,
                    base_offset: 1,
                    duplicate: false,
                }),
                ClientProduceOp::Fail(id, code) => Frame::Error(ErrorFrame {
                    correlation_id: id,
                    code,
                    message: "m".into(),
                    leader_hint: None,
                }),
                ClientProduceOp::Receive(frame) => frame,
            };
            let result = session.handle_frame(frame.clone());
            let expected = match &frame {
                Frame::Error(e) if e.correlation_id == 0 => {
                    // A stream-level error ends the stream with the broker's code.
                    Err(e.error_code().unwrap_or(ErrorCode::ProtocolViolation))
                }
                Frame::ProduceAck(ProduceAck { correlation_id: id, .. })
                | Frame::Error(ErrorFrame { correlation_id: id, .. }) => {
                    if in_flight.front() == Some(id) {
                        Ok(())
                    } else {
                        Err(ErrorCode::ProtocolViolation)
                    }
                }
                _ => Err(ErrorCode::ProtocolViolation),
            };
            prop_assert_eq!(code_of(&result), expected.err(), "{:?}", frame);
            match result {
                Ok(outcome) => {
                    prop_assert_eq!(Some(outcome.correlation_id()), in_flight.pop_front());
                    match (&outcome, &frame) {
                        (ProduceOutcome::Acked(a), Frame::ProduceAck(f)) => prop_assert_eq!(a, f),
                        (ProduceOutcome::Failed(e), Frame::Error(f)) => prop_assert_eq!(e, f),
                        _ => prop_assert!(false, "{:?} from {:?}", outcome, frame),
                    }
                }
                Err(_) => break,
            }
            prop_assert_eq!(session.in_flight(), in_flight.len());
        }
    }

    /// Honest ends through the codec: every batch is answered, in order,
    /// whatever the interleaving of sends and answers.
    #[test]
    fn honest_producer_ends_answer_in_order(
        steps in vec((any::<bool>(), 0usize..24), 1..40),
    ) {
        let mut client = ProducerSession::new(MAX_IN_FLIGHT, 64);
        let mut broker = BrokerProducerStream::new(MAX_IN_FLIGHT, MAX_BATCH);
        let mut pending: VecDeque<ProduceRequest> = VecDeque::new();
        let mut sent = Vec::new();
        let mut answered = Vec::new();
        for (send, len) in steps {
            if send && client.has_window() {
                let (id, frame) = client.send("t", 0, Bytes::from(vec![2u8; len])).unwrap();
                sent.push(id);
                let request = broker.handle_frame(wire(frame)).map_err(|v| TestCaseError::fail(v.to_string()))?;
                pending.push_back(request);
            } else if let Some(request) = pending.pop_front() {
                let outcome = match request {
                    ProduceRequest::Append(p) => ProduceOutcome::Acked(ProduceAck {
                        correlation_id: p.correlation_id,
                        partition: p.partition,
                        base_offset: p.correlation_id * 10,
                        duplicate: false,
                    }),
                    ProduceRequest::Reject(e) => ProduceOutcome::Failed(e),
                };
                let frame = broker.answer(outcome).map_err(|v| TestCaseError::fail(v.to_string()))?;
                let outcome = client.handle_frame(wire(frame)).map_err(|v| TestCaseError::fail(v.to_string()))?;
                if let ProduceOutcome::Failed(e) = &outcome {
                    prop_assert_eq!(e.error_code(), Some(ErrorCode::FrameTooLarge));
                }
                answered.push(outcome.correlation_id());
            }
        }
        prop_assert_eq!(&answered[..], &sent[..answered.len()]);
    }
}

// =================================================================================
// subscription stream

fn records_frame(partition: u32, batches: &[(u64, usize)]) -> Records {
    Records {
        partition,
        high_watermark: 100,
        batches: batches
            .iter()
            .map(|&(base_offset, len)| OffsetBatch {
                base_offset,
                batch: Bytes::from(vec![3u8; len]),
            })
            .collect(),
    }
}

fn arb_records_frame() -> impl Strategy<Value = Records> {
    (0u32..3, vec((0u64..10, 0usize..200), 0..3))
        .prop_map(|(partition, batches)| records_frame(partition, &batches))
}

fn arb_assignment() -> impl Strategy<Value = Assignment> {
    (
        0u32..4,
        proptest::sample::subsequence(vec![0u32, 1, 2], 0..=3),
    )
        .prop_map(|(generation, partitions)| Assignment {
            generation,
            partitions: partitions
                .into_iter()
                .map(|partition| AssignedPartition {
                    partition,
                    next_offset: 0,
                })
                .collect(),
        })
}

/// Frames a subscriber receives, biased toward its own stream's frames.
fn arb_to_subscriber() -> impl Strategy<Value = Frame> {
    prop_oneof![
        3 => arb_assignment().prop_map(Frame::Assignment),
        6 => arb_records_frame().prop_map(Frame::Records),
        2 => (0u32..3, 0u64..4, prop_oneof![Just(0u16), Just(65), Just(97)])
            .prop_map(|(partition, offset, code)| Frame::CommitAck(CommitAck { partition, offset, code })),
        1 => (prop_oneof![Just(0u16), Just(112)], arb_string())
            .prop_map(|(code, reason)| Frame::SubscriptionEnd(SubscriptionEnd { code, reason })),
        1 => Just(Frame::Error(ErrorFrame::new(0, ErrorCode::UnknownTopic, "gone"))),
        2 => arb_partition_error_frame().prop_map(Frame::PartitionError),
        1 => arb_frame(),
    ]
}

/// `PartitionError`s near the offsets the other frames use: some valid,
/// some empty, without a code, or behind what was delivered.
fn arb_partition_error_frame() -> impl Strategy<Value = PartitionError> {
    (
        0u32..3,
        prop_oneof![4 => Just(86u16), 1 => Just(0u16), 1 => Just(82u16)],
        0u64..12,
        prop_oneof![3 => 0u64..14, 1 => Just(PartitionError::END_UNKNOWN)],
    )
        .prop_map(
            |(partition, code, first_offset, end_offset)| PartitionError {
                partition,
                code,
                first_offset,
                end_offset,
                message: "damaged".into(),
            },
        )
}

/// One assigned partition in the model: the last base offset, the end of
/// a skipped range, and whether a `PartitionError` stopped it.
#[derive(Debug, Clone, Copy, Default)]
struct ModelPartition {
    last: Option<u64>,
    resume: u64,
    halted: bool,
}

#[derive(Debug, Clone)]
enum SubscriberOp {
    Receive(Frame),
    Grant(u64),
    Commit(u32, u64),
    Unsubscribe,
}

fn arb_subscriber_ops() -> impl Strategy<Value = Vec<SubscriberOp>> {
    vec(
        prop_oneof![
            6 => arb_to_subscriber().prop_map(SubscriberOp::Receive),
            2 => prop_oneof![Just(0u64), 1u64..500, Just(u64::MAX)].prop_map(SubscriberOp::Grant),
            2 => (0u32..3, 0u64..4).prop_map(|(p, o)| SubscriberOp::Commit(p, o)),
            1 => Just(SubscriberOp::Unsubscribe),
        ],
        0..30,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    AwaitingAssignment,
    Active,
    Unsubscribing,
    Ended,
}

/// The client-side subscription rules of docs/PROTOCOL.md, as a model.
#[derive(Debug)]
struct SubscriberModel {
    state: SubState,
    group: bool,
    skip_damaged: bool,
    credit: i64,
    generation: u32,
    last: BTreeMap<u32, ModelPartition>,
    pending: VecDeque<(u32, u64)>,
}

fn saturating_credit(credit: i64, add: u64) -> i64 {
    credit.saturating_add(i64::try_from(add).unwrap_or(i64::MAX))
}

impl SubscriberModel {
    /// The documented outcome of receiving `frame`.
    fn receive(&mut self, frame: &Frame) -> Result<(), ErrorCode> {
        use SubState::*;
        let result = match (self.state, frame) {
            (Ended, _) => Err(ErrorCode::ProtocolViolation),
            (_, Frame::Assignment(a)) => {
                if self.state != AwaitingAssignment && a.generation <= self.generation {
                    Err(ErrorCode::ProtocolViolation)
                } else {
                    self.generation = a.generation;
                    self.last = a
                        .partitions
                        .iter()
                        .map(|p| (p.partition, ModelPartition::default()))
                        .collect();
                    if self.state == AwaitingAssignment {
                        self.state = Active;
                    }
                    Ok(())
                }
            }
            (_, Frame::Error(_)) => {
                self.state = Ended;
                Ok(())
            }
            (
                AwaitingAssignment,
                Frame::Records(_)
                | Frame::CommitAck(_)
                | Frame::SubscriptionEnd(_)
                | Frame::PartitionError(_),
            ) => Err(ErrorCode::UnexpectedFrame),
            (_, Frame::PartitionError(e)) => match self.last.get_mut(&e.partition) {
                Some(p) => {
                    let floor = p.last.map_or(p.resume, |l| (l + 1).max(p.resume));
                    if e.code == 0
                        || p.halted
                        || e.first_offset >= e.end_offset
                        || e.first_offset < floor
                    {
                        Err(ErrorCode::ProtocolViolation)
                    } else {
                        if self.skip_damaged && e.end_offset != PartitionError::END_UNKNOWN {
                            p.resume = e.end_offset;
                        } else {
                            p.halted = true;
                        }
                        Ok(())
                    }
                }
                None => Err(ErrorCode::ProtocolViolation),
            },
            (_, Frame::Records(r)) => {
                if self.credit <= 0 {
                    Err(ErrorCode::CreditExceeded)
                } else if let Some(p) = self.last.get_mut(&r.partition) {
                    let mut prev = p.last;
                    let increasing = !p.halted
                        && !r.batches.is_empty()
                        && r.batches.iter().all(|b| {
                            let ok =
                                prev.is_none_or(|x| b.base_offset > x) && b.base_offset >= p.resume;
                            prev = Some(b.base_offset);
                            ok
                        });
                    if increasing {
                        p.last = prev;
                        self.credit = self.credit.saturating_sub(r.credit_cost() as i64);
                        Ok(())
                    } else {
                        Err(ErrorCode::ProtocolViolation)
                    }
                } else {
                    Err(ErrorCode::ProtocolViolation)
                }
            }
            (_, Frame::CommitAck(ack)) => {
                if self.pending.front() == Some(&(ack.partition, ack.offset)) {
                    self.pending.pop_front();
                    Ok(())
                } else {
                    Err(ErrorCode::UnexpectedFrame)
                }
            }
            (_, Frame::SubscriptionEnd(_)) => {
                self.state = Ended;
                Ok(())
            }
            _ => Err(ErrorCode::ProtocolViolation),
        };
        if result.is_err() {
            self.state = Ended;
        }
        result
    }
}

fn check_subscriber_event(frame: &Frame, event: &SubscriberEvent) -> Result<(), TestCaseError> {
    match (frame, event) {
        (Frame::Assignment(a), SubscriberEvent::Assigned(b)) => prop_assert_eq!(a, b),
        (Frame::Records(a), SubscriberEvent::Records(b)) => prop_assert_eq!(a, b),
        (Frame::CommitAck(a), SubscriberEvent::Committed(b)) => {
            prop_assert_eq!(a.code, 0);
            prop_assert_eq!(a, b);
        }
        (Frame::CommitAck(a), SubscriberEvent::CommitRefused(b)) => {
            prop_assert_ne!(a.code, 0);
            prop_assert_eq!(a, b);
        }
        (Frame::SubscriptionEnd(a), SubscriberEvent::Ended(b)) => prop_assert_eq!(a, b),
        (Frame::Error(a), SubscriberEvent::Failed(b)) => prop_assert_eq!(a, b),
        (Frame::PartitionError(a), SubscriberEvent::PartitionError(b)) => prop_assert_eq!(a, b),
        _ => prop_assert!(false, "{:?} gave {:?}", frame, event),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn subscriber_session_follows_the_rules(
        group in any::<bool>(),
        skip_damaged in any::<bool>(),
        initial in prop_oneof![Just(0u64), 1u64..400, Just(u64::MAX)],
        ops in arb_subscriber_ops(),
    ) {
        let target = if group {
            SubscriptionTarget::Group("g".into())
        } else {
            SubscriptionTarget::Partition(0)
        };
        let subscribe = Subscribe {
            topic: "t".into(),
            target,
            start: StartPosition::Earliest,
            credit: initial,
            skip_damaged,
        };
        let (mut session, first) = SubscriberSession::new(subscribe.clone());
        prop_assert_eq!(wire(first), Frame::Subscribe(subscribe));
        let mut model = SubscriberModel {
            state: SubState::AwaitingAssignment,
            group,
            skip_damaged,
            credit: saturating_credit(0, initial),
            generation: 0,
            last: BTreeMap::new(),
            pending: VecDeque::new(),
        };
        for op in ops {
            match op {
                SubscriberOp::Receive(frame) => {
                    let credit_before = session.remaining_credit();
                    let result = session.handle_frame(frame.clone());
                    let expected = model.receive(&frame);
                    prop_assert_eq!(code_of(&result), expected.err(), "{:?}", frame);
                    if let Ok(event) = &result {
                        check_subscriber_event(&frame, event)?;
                        if let Frame::Records(r) = &frame {
                            // Records only arrive with credit, and overdraw by at most one frame.
                            prop_assert!(credit_before > 0);
                            prop_assert!(session.remaining_credit() > -(r.credit_cost() as i64));
                        }
                    }
                }
                SubscriberOp::Grant(bytes) => {
                    let frame = session.grant(bytes);
                    if bytes == 0 || matches!(model.state, SubState::Ended | SubState::Unsubscribing) {
                        prop_assert_eq!(frame, None);
                    } else {
                        prop_assert_eq!(frame.map(wire), Some(Frame::Credit(Credit { bytes })));
                        model.credit = saturating_credit(model.credit, bytes);
                    }
                }
                SubscriberOp::Commit(partition, offset) => {
                    let result = session.commit(partition, offset);
                    if !model.group {
                        prop_assert_eq!(result, Err(CommitRefused::NotAGroup));
                    } else if model.state != SubState::Active {
                        prop_assert_eq!(result, Err(CommitRefused::NotActive));
                    } else if !model.last.contains_key(&partition) {
                        prop_assert_eq!(result, Err(CommitRefused::NotAssigned(partition)));
                    } else {
                        prop_assert_eq!(result.map(wire), Ok(Frame::Commit(Commit { partition, offset })));
                        model.pending.push_back((partition, offset));
                    }
                }
                SubscriberOp::Unsubscribe => {
                    let frame = session.unsubscribe();
                    if matches!(model.state, SubState::AwaitingAssignment | SubState::Active) {
                        prop_assert_eq!(frame.map(wire), Some(Frame::Unsubscribe(Unsubscribe)));
                        model.state = SubState::Unsubscribing;
                    } else {
                        prop_assert_eq!(frame, None);
                    }
                }
            }
            prop_assert_eq!(session.remaining_credit(), model.credit);
            prop_assert_eq!(session.is_ended(), model.state == SubState::Ended);
            let assigned: BTreeSet<u32> = session.assigned().collect();
            let expected: BTreeSet<u32> = model.last.keys().copied().collect();
            prop_assert_eq!(assigned, expected);
        }
    }
}

/// Frames a broker receives on a subscription stream.
fn arb_to_broker_subscription() -> impl Strategy<Value = Frame> {
    let subscribe = prop_oneof![
        (0u32..3).prop_map(SubscriptionTarget::Partition),
        Just(SubscriptionTarget::Group("g".into())),
    ]
    .prop_flat_map(|target| {
        (
            prop_oneof![Just(0u64), 1u64..400, Just(u64::MAX)],
            any::<bool>(),
        )
            .prop_map(move |(credit, skip_damaged)| {
                Frame::Subscribe(Subscribe {
                    topic: "t".into(),
                    target: target.clone(),
                    start: StartPosition::Latest,
                    credit,
                    skip_damaged,
                })
            })
    });
    prop_oneof![
        2 => subscribe,
        3 => prop_oneof![Just(0u64), 1u64..400, Just(u64::MAX)].prop_map(|bytes| Frame::Credit(Credit { bytes })),
        3 => (0u32..3, 0u64..4).prop_map(|(partition, offset)| Frame::Commit(Commit { partition, offset })),
        1 => Just(Frame::Unsubscribe(Unsubscribe)),
        1 => arb_frame(),
    ]
}

#[derive(Debug, Clone)]
enum BrokerSubOp {
    Receive(Frame),
    Assign(Assignment),
    Send(Records),
    Damage(PartitionError),
    End,
    /// The client finished its send side.
    ClientFinished,
}

fn arb_broker_sub_ops() -> impl Strategy<Value = Vec<BrokerSubOp>> {
    vec(
        prop_oneof![
            5 => arb_to_broker_subscription().prop_map(BrokerSubOp::Receive),
            2 => arb_assignment().prop_map(BrokerSubOp::Assign),
            3 => arb_records_frame().prop_map(BrokerSubOp::Send),
            2 => arb_partition_error_frame().prop_map(BrokerSubOp::Damage),
            1 => Just(BrokerSubOp::End),
            1 => Just(BrokerSubOp::ClientFinished),
        ],
        0..30,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerSubState {
    AwaitingSubscribe,
    Opening,
    Active,
    Unsubscribed,
    Ended,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn broker_subscription_follows_the_rules(ops in arb_broker_sub_ops()) {
        use BrokerSubState::*;
        let mut sub = BrokerSubscription::new();
        let mut state = AwaitingSubscribe;
        let mut group = false;
        let mut credit: i64 = 0;
        let mut generation: Option<u32> = None;
        let mut skip_damaged = false;
        let mut last: BTreeMap<u32, ModelPartition> = BTreeMap::new();
        for op in ops {
            match op {
                BrokerSubOp::Receive(frame) => {
                    let result = sub.handle_frame(frame.clone());
                    let expected = match (state, &frame) {
                        (Ended | Unsubscribed, _) => Err(ErrorCode::ProtocolViolation),
                        (AwaitingSubscribe, Frame::Subscribe(_)) => Ok(()),
                        (AwaitingSubscribe, _) => Err(ErrorCode::ProtocolViolation),
                        (Opening | Active, Frame::Subscribe(_)) => Err(ErrorCode::UnexpectedFrame),
                        (Opening, Frame::Commit(_)) => Err(ErrorCode::UnexpectedFrame),
                        (Opening | Active, Frame::Credit(_) | Frame::Commit(_) | Frame::Unsubscribe(_)) => Ok(()),
                        _ => Err(ErrorCode::ProtocolViolation),
                    };
                    prop_assert_eq!(code_of(&result), expected.err(), "{:?} in {:?}", frame, state);
                    let Ok(request) = result else {
                        state = Ended;
                        continue;
                    };
                    match (&frame, request) {
                        (Frame::Subscribe(s), SubscriptionRequest::Open(got)) => {
                            prop_assert_eq!(&got, s);
                            group = matches!(s.target, SubscriptionTarget::Group(_));
                            skip_damaged = s.skip_damaged;
                            credit = saturating_credit(0, s.credit);
                            state = Opening;
                        }
                        (Frame::Credit(c), SubscriptionRequest::CreditAdded) => {
                            credit = saturating_credit(credit, c.bytes);
                        }
                        (Frame::Commit(c), request) => {
                            // Per-request refusals answer with a CommitAck and the stream goes on.
                            let refusal = if !group {
                                Some(ErrorCode::InvalidRequest)
                            } else if !last.contains_key(&c.partition) {
                                Some(ErrorCode::NotAssigned)
                            } else {
                                None
                            };
                            match (refusal, request) {
                                (Some(code), SubscriptionRequest::Reply(reply)) => {
                                    let expected = Frame::CommitAck(CommitAck {
                                        partition: c.partition,
                                        offset: c.offset,
                                        code: code.as_u16(),
                                    });
                                    prop_assert_eq!(wire(reply), expected);
                                }
                                (None, SubscriptionRequest::Commit(got)) => {
                                    prop_assert_eq!(&got, c);
                                    let ack = sub.commit_done(got, Ok(()));
                                    prop_assert_eq!(
                                        wire(ack),
                                        Frame::CommitAck(CommitAck { partition: c.partition, offset: c.offset, code: 0 })
                                    );
                                }
                                (refusal, request) => {
                                    prop_assert!(false, "{:?}: expected {:?}, got {:?}", c, refusal, request);
                                }
                            }
                        }
                        (Frame::Unsubscribe(_), SubscriptionRequest::Unsubscribe) => {
                            // Nothing more is sent until the client finishes its side.
                            state = Unsubscribed;
                            prop_assert!(sub.is_unsubscribed());
                            prop_assert!(!sub.can_send());
                        }
                        (frame, request) => prop_assert!(false, "{:?} gave {:?}", frame, request),
                    }
                }
                BrokerSubOp::Assign(a) => {
                    let result = sub.assign(a.clone());
                    let valid = matches!(state, Opening | Active)
                        && generation.is_none_or(|g| a.generation > g);
                    if valid {
                        prop_assert_eq!(result.map(wire), Ok(Frame::Assignment(a.clone())));
                        generation = Some(a.generation);
                        last = a
                            .partitions
                            .iter()
                            .map(|p| (p.partition, ModelPartition::default()))
                            .collect();
                        state = Active;
                    } else {
                        prop_assert_eq!(code_of(&result), Some(ErrorCode::Internal));
                    }
                }
                BrokerSubOp::Send(r) => {
                    prop_assert_eq!(sub.can_send(), state == Active && credit > 0);
                    let result = sub.records(r.clone());
                    let allowed = state == Active
                        && credit > 0
                        && last.get(&r.partition).is_some_and(|p| {
                            let mut prev = p.last;
                            !p.halted
                                && !r.batches.is_empty()
                                && r.batches.iter().all(|b| {
                                    let ok = prev.is_none_or(|x| b.base_offset > x)
                                        && b.base_offset >= p.resume;
                                    prev = Some(b.base_offset);
                                    ok
                                })
                        });
                    if allowed {
                        prop_assert_eq!(result.map(wire), Ok(Frame::Records(r.clone())));
                        if let Some(p) = last.get_mut(&r.partition) {
                            p.last = r.batches.last().map(|b| b.base_offset);
                        }
                        credit = credit.saturating_sub(r.credit_cost() as i64);
                    } else {
                        // The broker's own mistakes are caught before they reach the wire.
                        prop_assert_eq!(code_of(&result), Some(ErrorCode::Internal));
                    }
                }
                BrokerSubOp::ClientFinished => {
                    // A finish with or without Unsubscribe before it ends the
                    // subscription normally.
                    let end = sub.client_finished();
                    if state == Ended {
                        prop_assert_eq!(end, None);
                    } else {
                        prop_assert_eq!(
                            end.map(wire),
                            Some(Frame::SubscriptionEnd(SubscriptionEnd { code: 0, reason: "unsubscribed".into() }))
                        );
                        state = Ended;
                    }
                }
                BrokerSubOp::Damage(e) => {
                    let result = sub.partition_error(e.clone());
                    let valid = state == Active
                        && last.get(&e.partition).is_some_and(|p| {
                            let floor = p.last.map_or(p.resume, |l| (l + 1).max(p.resume));
                            e.code != 0 && !p.halted && e.first_offset < e.end_offset && e.first_offset >= floor
                        });
                    if valid {
                        let continues = skip_damaged && e.end_offset != PartitionError::END_UNKNOWN;
                        prop_assert_eq!(
                            result.map(|(f, c)| (wire(f), c)),
                            Ok((Frame::PartitionError(e.clone()), continues))
                        );
                        if let Some(p) = last.get_mut(&e.partition) {
                            if continues {
                                p.resume = e.end_offset;
                            } else {
                                p.halted = true;
                            }
                        }
                    } else {
                        prop_assert_eq!(code_of(&result), Some(ErrorCode::Internal));
                    }
                }
                BrokerSubOp::End => {
                    let end = sub.end(Some(ErrorCode::ShuttingDown), "stop");
                    prop_assert_eq!(
                        wire(end),
                        Frame::SubscriptionEnd(SubscriptionEnd { code: 112, reason: "stop".into() })
                    );
                    state = Ended;
                }
            }
            prop_assert_eq!(sub.remaining_credit(), credit);
            prop_assert_eq!(sub.is_ended(), state == Ended);
        }
    }

    /// Honest ends through the codec: the broker sends whenever it may, the
    /// client grants credit as it likes; no violation ever occurs and both
    /// ends agree on the remaining credit after every frame.
    #[test]
    fn honest_subscription_ends_agree_on_credit(
        initial in 0u64..300,
        skip_damaged in any::<bool>(),
        steps in vec((0u8..6, 0usize..250, 0u64..400), 1..60),
    ) {
        let subscribe = Subscribe {
            topic: "t".into(),
            target: SubscriptionTarget::Group("g".into()),
            start: StartPosition::Earliest,
            credit: initial,
            skip_damaged,
        };
        let (mut client, first) = SubscriberSession::new(subscribe);
        let mut broker = BrokerSubscription::new();
        let fail = |v: Violation| TestCaseError::fail(v.to_string());
        broker.handle_frame(wire(first)).map_err(fail)?;
        let assignment = Assignment {
            generation: 1,
            partitions: vec![AssignedPartition { partition: 0, next_offset: 0 }, AssignedPartition { partition: 1, next_offset: 0 }],
        };
        client.handle_frame(wire(broker.assign(assignment).map_err(fail)?)).map_err(fail)?;
        let mut next_offset = [0u64; 2];
        let mut stopped = [false; 2];
        for (action, len, grant) in steps {
            match action {
                0 | 1 if broker.can_send() && !stopped[usize::from(action)] => {
                    let p = usize::from(action);
                    let r = records_frame(p as u32, &[(next_offset[p], len)]);
                    next_offset[p] += 1;
                    let frame = broker.records(r).map_err(fail)?;
                    client.handle_frame(wire(frame)).map_err(fail)?;
                }
                2 => {
                    if let Some(frame) = client.grant(grant) {
                        broker.handle_frame(wire(frame)).map_err(fail)?;
                    }
                }
                3 => {
                    let frame = client.commit(0, next_offset[0]).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let SubscriptionRequest::Commit(c) = broker.handle_frame(wire(frame)).map_err(fail)? else {
                        return Err(TestCaseError::fail("commit not passed on"));
                    };
                    let ack = broker.commit_done(c, Ok(()));
                    let event = client.handle_frame(wire(ack)).map_err(fail)?;
                    prop_assert!(matches!(event, SubscriberEvent::Committed(_)));
                }
                // A damaged range of partition 1: reported (outside the
                // credit), then skipped or the partition stops.
                4 | 5 if !stopped[1] => {
                    let first = next_offset[1] + grant % 3;
                    let end = if action == 4 { first + 1 + len as u64 } else { PartitionError::END_UNKNOWN };
                    let (frame, continues) = broker
                        .partition_error(PartitionError {
                            partition: 1,
                            code: ErrorCode::DataDamaged.as_u16(),
                            first_offset: first,
                            end_offset: end,
                            message: "damaged".into(),
                        })
                        .map_err(fail)?;
                    prop_assert_eq!(continues, skip_damaged && action == 4);
                    let event = client.handle_frame(wire(frame)).map_err(fail)?;
                    prop_assert!(matches!(event, SubscriberEvent::PartitionError(_)));
                    if continues {
                        next_offset[1] = end;
                    } else {
                        stopped[1] = true;
                    }
                }
                _ => {}
            }
            prop_assert_eq!(client.remaining_credit(), broker.remaining_credit());
        }
        let bye = client.unsubscribe().expect("active");
        prop_assert_eq!(broker.handle_frame(wire(bye)).map_err(fail)?, SubscriptionRequest::Unsubscribe);
        let end = broker.end(None, "done");
        prop_assert!(matches!(client.handle_frame(wire(end)).map_err(fail)?, SubscriberEvent::Ended(_)));
        prop_assert!(client.is_ended() && broker.is_ended());
    }
}

// =================================================================================
// admin stream

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn broker_admin_stream_takes_one_request(frames in vec(
        prop_oneof![2 => arb_admin_request().prop_map(Frame::Request), 1 => arb_frame()],
        1..5,
    )) {
        let mut stream = BrokerAdminStream::new();
        for (i, frame) in frames.iter().enumerate() {
            let result = stream.handle_frame(frame.clone());
            match (i, frame) {
                (0, Frame::Request(r)) => prop_assert_eq!(result, Ok(r.clone())),
                _ => {
                    prop_assert_eq!(code_of(&result), Some(ErrorCode::ProtocolViolation), "{:?}", frame);
                    break;
                }
            }
        }
    }

    #[test]
    fn admin_call_takes_one_answer(
        request in arb_admin_request(),
        frames in vec(
            prop_oneof![
                2 => arb_admin_response().prop_map(Frame::Response),
                1 => Just(Frame::Error(ErrorFrame::new(0, ErrorCode::NotAuthorized, "no"))),
                1 => arb_frame(),
            ],
            1..4,
        ),
    ) {
        let (mut call, first) = AdminCall::new(request.clone());
        prop_assert_eq!(wire(first), Frame::Request(request));
        let mut answered = false;
        for frame in frames {
            let result = call.handle_frame(frame.clone());
            match (&frame, result) {
                (Frame::Response(r), Ok(got)) if !answered => {
                    prop_assert_eq!(&got, r);
                    answered = true;
                }
                (Frame::Error(e), Err(Ok(got))) if !answered => {
                    prop_assert_eq!(&got, e);
                    answered = true;
                }
                (_, Err(Err(v))) => {
                    // A second answer, or a frame that is no answer.
                    prop_assert_eq!(v.code, ErrorCode::ProtocolViolation);
                    break;
                }
                (frame, other) => prop_assert!(false, "{:?} gave {:?}", frame, other),
            }
        }
    }

    /// An honest broker answers what the call asked.
    #[test]
    fn honest_admin_ends(request in arb_admin_request(), response in arb_admin_response()) {
        let (mut call, first) = AdminCall::new(request.clone());
        let mut stream = BrokerAdminStream::new();
        prop_assert_eq!(stream.handle_frame(wire(first)), Ok(request));
        let answer = stream.respond(Ok(response.clone()));
        prop_assert_eq!(call.handle_frame(wire(answer)), Ok::<AdminResponse, Result<ErrorFrame, Violation>>(response));
    }
}
