//! Both ends of each stream driven against each other in memory, on a
//! virtual clock, with every frame passed through the codec.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::ErrorCode;
use crate::frame::{DEFAULT_MAX_FRAME_SIZE, Decoded, Frame, decode_frame};
use crate::frames::admin::{AdminRequest, AdminResponse};
use crate::frames::control::{ErrorFrame, Hello, Pong};
use crate::frames::produce::ProduceAck;
use crate::frames::subscribe::{
    AssignedPartition, Assignment, OffsetBatch, PartitionError, Records, StartPosition, Subscribe,
    SubscriptionTarget,
};
use crate::session::admin::{AdminCall, BrokerAdminStream};
use crate::session::control::{
    BrokerControl, BrokerControlConfig, ClientControl, ClientControlConfig, ControlEvent,
};
use crate::session::produce::{
    BrokerProducerStream, ProduceOutcome, ProduceRequest, ProducerSession,
};
use crate::session::subscribe::{
    BrokerSubscription, CommitRefused, SubscriberEvent, SubscriberSession, SubscriptionRequest,
};

/// Encodes and decodes `frame`, as the wire would.
fn wire(frame: Frame) -> Frame {
    let bytes = frame.to_bytes(DEFAULT_MAX_FRAME_SIZE).expect("encodes");
    match decode_frame(&bytes, DEFAULT_MAX_FRAME_SIZE).expect("decodes") {
        Decoded::Frame(f, n) => {
            assert_eq!(n, bytes.len());
            f
        }
        Decoded::NeedMore(_) => panic!("whole frame"),
    }
}

fn client_config() -> ClientControlConfig {
    ClientControlConfig {
        versions: vec![1],
        client_name: "test".into(),
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        keepalive: Duration::from_secs(5),
    }
}

fn broker_config() -> BrokerControlConfig {
    BrokerControlConfig {
        versions: vec![1],
        broker_id: "b1".into(),
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        max_batch_size: 1 << 20,
        max_in_flight: 4,
        keepalive: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(2),
    }
}

fn established(now: Instant) -> (ClientControl, BrokerControl) {
    let mut client = ClientControl::new(client_config(), now);
    let mut broker = BrokerControl::new(broker_config(), "spiffe://test/alice", now);
    let hello = client.poll_transmit().expect("Hello queued");
    broker
        .handle_frame(wire(hello), now)
        .expect("Hello accepted");
    let welcome = broker.poll_transmit().expect("Welcome queued");
    client
        .handle_frame(wire(welcome), now)
        .expect("Welcome accepted");
    (client, broker)
}

#[test]
fn handshake_negotiates_version_and_principal() {
    let now = Instant::now();
    let (mut client, mut broker) = established(now);
    let Some(ControlEvent::Established(w)) = client.poll_event() else {
        panic!("client established");
    };
    assert_eq!(w.version, 1);
    assert_eq!(w.principal, "spiffe://test/alice");
    assert_eq!(w.max_in_flight, 4);
    assert!(matches!(
        broker.poll_event(),
        Some(ControlEvent::Established(_))
    ));
    assert_eq!(broker.version(), Some(1));
    assert_eq!(broker.peer_max_frame_size(), Some(DEFAULT_MAX_FRAME_SIZE));
}

#[test]
fn broker_picks_highest_common_version_and_refuses_none() {
    let now = Instant::now();
    let mut config = broker_config();
    config.versions = vec![1, 2];
    let mut broker = BrokerControl::new(config.clone(), "p", now);
    let hello = Hello {
        versions: vec![3, 2, 1],
        client_name: "x".into(),
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        features: 0,
    };
    broker
        .handle_frame(Frame::Hello(hello.clone()), now)
        .expect("accepted");
    assert_eq!(broker.version(), Some(2));

    let mut broker = BrokerControl::new(config, "p", now);
    let err = broker
        .handle_frame(
            Frame::Hello(Hello {
                versions: vec![7],
                ..hello
            }),
            now,
        )
        .expect_err("no common version");
    assert_eq!(err.code, ErrorCode::UnsupportedVersion);
    assert!(broker.is_closed());
}

#[test]
fn hello_with_out_of_range_frame_limit_is_a_violation() {
    let now = Instant::now();
    let mut broker = BrokerControl::new(broker_config(), "p", now);
    let err = broker
        .handle_frame(
            Frame::Hello(Hello {
                versions: vec![1],
                client_name: String::new(),
                max_frame_size: 10,
                features: 0,
            }),
            now,
        )
        .expect_err("too small");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
}

#[test]
fn frames_before_hello_violate_and_a_second_hello_is_unexpected() {
    let now = Instant::now();
    // Any first frame other than Hello, even one that belongs on a control
    // stream, is a protocol violation: one rule for every stream's start.
    for first in [
        Frame::Ping(crate::frames::control::Ping { nonce: 1 }),
        Frame::Pong(Pong { nonce: 1 }),
        Frame::Goodbye(crate::frames::control::Goodbye {
            code: 0,
            reason: String::new(),
        }),
    ] {
        let mut broker = BrokerControl::new(broker_config(), "p", now);
        let err = broker
            .handle_frame(first, now)
            .expect_err("not Hello first");
        assert_eq!(err.code, ErrorCode::ProtocolViolation);
    }

    let (mut client, mut broker) = established(now);
    let err = broker
        .handle_frame(
            Frame::Hello(Hello {
                versions: vec![1],
                client_name: String::new(),
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                features: 0,
            }),
            now,
        )
        .expect_err("second hello");
    assert_eq!(err.code, ErrorCode::UnexpectedFrame);
    let err = client
        .handle_frame(
            Frame::Produce(crate::frames::produce::Produce {
                correlation_id: 1,
                topic: "t".into(),
                partition: 0,
                batch: Bytes::new(),
            }),
            now,
        )
        .expect_err("produce on control");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
}

#[test]
fn broker_times_out_a_silent_client() {
    let now = Instant::now();
    let mut broker = BrokerControl::new(broker_config(), "p", now);
    let deadline = broker.poll_timeout().expect("deadline");
    assert_eq!(deadline, now + Duration::from_secs(2));
    broker
        .handle_timeout(now + Duration::from_secs(1))
        .expect("not yet");
    let err = broker.handle_timeout(deadline).expect_err("timed out");
    assert_eq!(err.code, ErrorCode::Timeout);
}

#[test]
fn keepalive_pings_when_idle_and_fails_after_three_silent_intervals() {
    let t0 = Instant::now();
    let (mut client, mut broker) = established(t0);
    // The client adopted the broker's 10 s interval from Welcome.
    let t1 = t0 + Duration::from_secs(10);
    assert!(client.poll_timeout().expect("timer") <= t1);
    client.handle_timeout(t1).expect("ping, not fail");
    let ping = client.poll_transmit().expect("ping queued");
    assert!(matches!(ping, Frame::Ping(_)));
    broker.handle_frame(wire(ping), t1).expect("broker answers");
    let pong = broker.poll_transmit().expect("pong queued");
    client.handle_frame(wire(pong), t1).expect("pong matches");

    // A pong nobody asked for is unexpected.
    let err = client
        .handle_frame(Frame::Pong(Pong { nonce: 999 }), t1)
        .expect_err("unsolicited pong");
    assert_eq!(err.code, ErrorCode::UnexpectedFrame);

    // The broker hears nothing more for 30 s.
    let err = broker
        .handle_timeout(t1 + Duration::from_secs(30))
        .expect_err("silent client");
    assert_eq!(err.code, ErrorCode::Timeout);
}

#[test]
fn goodbye_closes_both_ends() {
    let now = Instant::now();
    let (mut client, mut broker) = established(now);
    client.close("done");
    let bye = client.poll_transmit().expect("goodbye");
    broker
        .handle_frame(wire(bye), now)
        .expect("goodbye accepted");
    broker.poll_event();
    assert!(matches!(
        broker.poll_event(),
        Some(ControlEvent::Goodbye(_))
    ));
    assert!(broker.is_closed());
    assert!(client.is_closed());
    assert_eq!(broker.poll_timeout(), None);
}

#[test]
fn client_reports_a_refusal() {
    let now = Instant::now();
    let mut client = ClientControl::new(client_config(), now);
    client
        .handle_frame(
            Frame::Error(ErrorFrame::new(0, ErrorCode::UnsupportedVersion, "no")),
            now,
        )
        .expect("refusal is an event");
    assert!(matches!(
        client.poll_event(),
        Some(ControlEvent::Refused(_))
    ));
    assert!(client.is_closed());
}

fn batch() -> Bytes {
    let mut b = crate::batch::BatchBuilder::new(0);
    b.push(0, None, &[], b"v").expect("push");
    b.finish().expect("finish")
}

#[test]
fn produce_answers_flow_in_order() {
    let mut client = ProducerSession::new(2, 1 << 20);
    let mut broker = BrokerProducerStream::new(2, 1 << 20);
    let (c1, f1) = client.send("t", 0, batch()).expect("window");
    let (c2, f2) = client.send("t", 0, batch()).expect("window");
    assert!(client.send("t", 0, batch()).is_err(), "window of 2 is full");
    let ProduceRequest::Append(p1) = broker.handle_frame(wire(f1)).expect("ok") else {
        panic!("append");
    };
    let ProduceRequest::Append(p2) = broker.handle_frame(wire(f2)).expect("ok") else {
        panic!("append");
    };
    assert_eq!((p1.correlation_id, p2.correlation_id), (c1, c2));

    // Answering the second first is a broker bug the session refuses.
    let ack2 = ProduceOutcome::Acked(ProduceAck {
        correlation_id: c2,
        partition: 0,
        base_offset: 1,
        duplicate: false,
    });
    assert_eq!(
        broker.answer(ack2.clone()).expect_err("order").code,
        ErrorCode::Internal
    );

    let ack1 = ProduceOutcome::Acked(ProduceAck {
        correlation_id: c1,
        partition: 0,
        base_offset: 0,
        duplicate: false,
    });
    let f = broker.answer(ack1.clone()).expect("oldest");
    assert_eq!(client.handle_frame(wire(f)).expect("in order"), ack1);
    let f = broker.answer(ack2.clone()).expect("now oldest");
    assert_eq!(client.handle_frame(wire(f)).expect("in order"), ack2);
    assert_eq!(client.in_flight(), 0);
}

#[test]
fn produce_stream_violations() {
    let mut client = ProducerSession::new(4, 1 << 20);
    let (_, f1) = client.send("t", 0, batch()).expect("window");
    let mut broker = BrokerProducerStream::new(1, 1 << 20);
    broker.handle_frame(f1.clone()).expect("first");
    // Same correlation id again.
    assert_eq!(
        broker.handle_frame(f1).expect_err("not increasing").code,
        ErrorCode::ProtocolViolation
    );
    let mut broker = BrokerProducerStream::new(1, 1 << 20);
    let (_, a) = client.send("t", 0, batch()).expect("window");
    let (_, b) = client.send("t", 0, batch()).expect("window");
    broker.handle_frame(a).expect("first");
    assert_eq!(
        broker.handle_frame(b).expect_err("over the window").code,
        ErrorCode::LimitExceeded
    );
    let mut broker = BrokerProducerStream::new(1, 1 << 20);
    assert_eq!(
        broker
            .handle_frame(Frame::Request(AdminRequest::WhoAmI))
            .expect_err("foreign frame")
            .code,
        ErrorCode::ProtocolViolation
    );
    // An ack nobody waits for.
    let mut fresh = ProducerSession::new(4, 1 << 20);
    let err = fresh
        .handle_frame(Frame::ProduceAck(ProduceAck {
            correlation_id: 9,
            partition: 0,
            base_offset: 0,
            duplicate: false,
        }))
        .expect_err("nothing in flight");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
}

#[test]
fn oversized_batch_is_a_per_request_error() {
    let mut broker = BrokerProducerStream::new(4, 10);
    let mut client = ProducerSession::new(4, 1 << 20);
    let (c, f) = client
        .send("t", 0, batch())
        .expect("client limit is larger");
    let ProduceRequest::Reject(e) = broker.handle_frame(f).expect("not a violation") else {
        panic!("reject");
    };
    assert_eq!(e.correlation_id, c);
    assert_eq!(e.error_code(), Some(ErrorCode::FrameTooLarge));
    let f = broker.answer(ProduceOutcome::Failed(e)).expect("answer");
    assert!(matches!(
        client.handle_frame(f),
        Ok(ProduceOutcome::Failed(_))
    ));
    // The stream goes on.
    let (_, f) = client
        .send("t", 0, Bytes::from_static(b"tiny"))
        .expect("window");
    assert!(matches!(
        broker.handle_frame(f),
        Ok(ProduceRequest::Append(_))
    ));
}

fn subscribe(target: SubscriptionTarget, credit: u64) -> Subscribe {
    Subscribe {
        topic: "t".into(),
        target,
        start: StartPosition::Earliest,
        credit,
        skip_damaged: false,
    }
}

fn records(partition: u32, offsets: &[u64]) -> Records {
    Records {
        partition,
        high_watermark: 100,
        batches: offsets
            .iter()
            .map(|&o| OffsetBatch {
                base_offset: o,
                batch: batch(),
            })
            .collect(),
    }
}

fn open_subscription(
    target: SubscriptionTarget,
    credit: u64,
    partitions: &[u32],
) -> (SubscriberSession, BrokerSubscription) {
    open_subscription_with(subscribe(target, credit), partitions)
}

fn open_subscription_with(
    subscribe: Subscribe,
    partitions: &[u32],
) -> (SubscriberSession, BrokerSubscription) {
    let (mut client, first) = SubscriberSession::new(subscribe);
    let mut broker = BrokerSubscription::new();
    assert!(matches!(
        broker.handle_frame(wire(first)).expect("open"),
        SubscriptionRequest::Open(_)
    ));
    assert!(!broker.can_send(), "no records before the assignment");
    let f = broker
        .assign(Assignment {
            generation: 1,
            partitions: partitions
                .iter()
                .map(|&partition| AssignedPartition {
                    partition,
                    next_offset: 0,
                })
                .collect(),
        })
        .expect("assign");
    assert!(matches!(
        client.handle_frame(wire(f)).expect("assigned"),
        SubscriberEvent::Assigned(_)
    ));
    (client, broker)
}

#[test]
fn credit_allows_one_frame_of_overdraft_then_stops() {
    let (mut client, mut broker) = open_subscription(SubscriptionTarget::Partition(0), 1, &[0]);
    assert!(broker.can_send());
    let f = broker.records(records(0, &[0])).expect("credit 1 > 0");
    assert!(!broker.can_send(), "credit is now negative");
    assert!(broker.remaining_credit() < 0);
    assert!(matches!(
        client.handle_frame(wire(f)),
        Ok(SubscriberEvent::Records(_))
    ));
    assert_eq!(client.remaining_credit(), broker.remaining_credit());
    assert_eq!(
        broker
            .records(records(0, &[1]))
            .expect_err("no credit")
            .code,
        ErrorCode::Internal
    );
    // A broker that sends anyway is caught by the client.
    let err = client
        .handle_frame(Frame::Records(records(0, &[1])))
        .expect_err("over credit");
    assert_eq!(err.code, ErrorCode::CreditExceeded);
}

#[test]
fn credit_grants_resume_delivery_and_saturate() {
    let (mut client, mut broker) = open_subscription(SubscriptionTarget::Partition(0), 1, &[0]);
    let f = broker.records(records(0, &[0])).expect("send");
    client.handle_frame(f).expect("records");
    let grant = client.grant(10_000).expect("credit frame");
    assert!(matches!(
        broker.handle_frame(wire(grant)).expect("credit"),
        SubscriptionRequest::CreditAdded
    ));
    assert!(broker.can_send());
    assert_eq!(client.remaining_credit(), broker.remaining_credit());
    let grant = client.grant(u64::MAX).expect("credit frame");
    broker.handle_frame(grant).expect("credit");
    assert_eq!(broker.remaining_credit(), i64::MAX);
    assert_eq!(client.remaining_credit(), i64::MAX);
}

#[test]
fn records_rules_on_the_client() {
    let (mut client, _) = open_subscription(SubscriptionTarget::Partition(0), 1 << 20, &[0]);
    let err = client
        .handle_frame(Frame::Records(records(5, &[0])))
        .expect_err("unassigned");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);

    let (mut client, _) = open_subscription(SubscriptionTarget::Partition(0), 1 << 20, &[0]);
    client
        .handle_frame(Frame::Records(records(0, &[3, 7])))
        .expect("ok");
    let err = client
        .handle_frame(Frame::Records(records(0, &[7])))
        .expect_err("offsets must increase");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);

    let (mut client, _) = open_subscription(SubscriptionTarget::Partition(0), 1 << 20, &[0]);
    let err = client
        .handle_frame(Frame::Records(records(0, &[])))
        .expect_err("empty");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);

    let (mut client, _) = SubscriberSession::new(subscribe(SubscriptionTarget::Partition(0), 10));
    let err = client
        .handle_frame(Frame::Records(records(0, &[0])))
        .expect_err("before assignment");
    assert_eq!(err.code, ErrorCode::UnexpectedFrame);
}

fn damaged(partition: u32, first_offset: u64, end_offset: u64) -> PartitionError {
    PartitionError {
        partition,
        code: ErrorCode::DataDamaged.as_u16(),
        first_offset,
        end_offset,
        message: "frame at offset 4 fails authentication".into(),
    }
}

#[test]
fn a_partition_error_stops_only_its_partition() {
    let (mut client, mut broker) =
        open_subscription(SubscriptionTarget::Group("g".into()), 1 << 20, &[0, 1]);
    let f = broker.records(records(0, &[0, 2])).expect("records");
    client.handle_frame(wire(f)).expect("records");
    let (f, continues) = broker.partition_error(damaged(0, 4, 9)).expect("report");
    assert!(!continues, "without skip_damaged the partition stops");
    assert!(matches!(
        client.handle_frame(wire(f)).expect("reported"),
        SubscriberEvent::PartitionError(e) if e == damaged(0, 4, 9)
    ));
    // Nothing more for partition 0, on either side.
    assert_eq!(
        broker.records(records(0, &[9])).expect_err("stopped").code,
        ErrorCode::Internal
    );
    assert_eq!(
        broker
            .partition_error(damaged(0, 9, 12))
            .expect_err("stopped")
            .code,
        ErrorCode::Internal
    );
    let err = client
        .clone()
        .handle_frame(Frame::Records(records(0, &[9])))
        .expect_err("stopped");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
    // Partition 1 goes on.
    let f = broker.records(records(1, &[0])).expect("other partition");
    assert!(matches!(
        client.handle_frame(wire(f)).expect("records"),
        SubscriberEvent::Records(_)
    ));
}

#[test]
fn skip_damaged_resumes_at_the_end_of_the_range() {
    let subscribe = Subscribe {
        skip_damaged: true,
        ..subscribe(SubscriptionTarget::Partition(0), 1 << 20)
    };
    let (mut client, mut broker) = open_subscription_with(subscribe, &[0]);
    assert!(broker.skip_damaged());
    let (f, continues) = broker.partition_error(damaged(0, 0, 5)).expect("report");
    assert!(continues);
    client.handle_frame(wire(f)).expect("reported");
    assert_eq!(
        broker
            .records(records(0, &[4]))
            .expect_err("inside the range")
            .code,
        ErrorCode::Internal
    );
    let err = client
        .clone()
        .handle_frame(Frame::Records(records(0, &[4])))
        .expect_err("inside the range");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
    let f = broker.records(records(0, &[5])).expect("after the range");
    client.handle_frame(wire(f)).expect("records");
    // A range whose end is unknown stops the partition even when skipping.
    let (f, continues) = broker
        .partition_error(damaged(0, 8, PartitionError::END_UNKNOWN))
        .expect("report");
    assert!(!continues);
    client.handle_frame(wire(f)).expect("reported");
    let err = client
        .handle_frame(Frame::Records(records(0, &[20])))
        .expect_err("stopped");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
}

#[test]
fn partition_error_rules_on_the_client() {
    let check = |frame: Frame, code: ErrorCode| {
        let (mut client, _) = open_subscription(SubscriptionTarget::Partition(0), 1 << 20, &[0]);
        client
            .handle_frame(Frame::Records(records(0, &[3])))
            .expect("records");
        let err = client.handle_frame(frame.clone()).expect_err("refused");
        assert_eq!(err.code, code, "{frame:?}");
        assert!(client.is_ended());
    };
    check(
        Frame::PartitionError(damaged(5, 4, 9)),
        ErrorCode::ProtocolViolation,
    );
    check(
        Frame::PartitionError(damaged(0, 9, 9)),
        ErrorCode::ProtocolViolation,
    );
    check(
        Frame::PartitionError(damaged(0, 9, 4)),
        ErrorCode::ProtocolViolation,
    );
    check(
        Frame::PartitionError(damaged(0, 3, 9)),
        ErrorCode::ProtocolViolation,
    );
    check(
        Frame::PartitionError(PartitionError {
            code: 0,
            ..damaged(0, 4, 9)
        }),
        ErrorCode::ProtocolViolation,
    );
    let (mut client, _) = SubscriberSession::new(subscribe(SubscriptionTarget::Partition(0), 10));
    let err = client
        .handle_frame(Frame::PartitionError(damaged(0, 0, 1)))
        .expect_err("before assignment");
    assert_eq!(err.code, ErrorCode::UnexpectedFrame);
    // A new assignment starts over: the partition may be reported again.
    let (mut client, mut broker) =
        open_subscription(SubscriptionTarget::Group("g".into()), 1 << 20, &[0]);
    let (f, _) = broker.partition_error(damaged(0, 0, 9)).expect("report");
    client.handle_frame(f).expect("reported");
    let f = broker
        .assign(Assignment {
            generation: 2,
            partitions: vec![AssignedPartition {
                partition: 0,
                next_offset: 0,
            }],
        })
        .expect("rebalance");
    client.handle_frame(f).expect("assigned");
    let (f, _) = broker.partition_error(damaged(0, 0, 9)).expect("again");
    client.handle_frame(f).expect("reported again");
}

#[test]
fn commits_on_groups_only_and_answered_in_order() {
    let (mut client, _) = open_subscription(SubscriptionTarget::Partition(0), 100, &[0]);
    assert_eq!(client.commit(0, 5), Err(CommitRefused::NotAGroup));

    let (mut client, mut broker) =
        open_subscription(SubscriptionTarget::Group("g".into()), 100, &[0, 2]);
    assert_eq!(client.commit(1, 5), Err(CommitRefused::NotAssigned(1)));
    let f = client.commit(2, 5).expect("assigned");
    let SubscriptionRequest::Commit(c) = broker.handle_frame(wire(f)).expect("commit") else {
        panic!("commit request");
    };
    let ack = broker.commit_done(c, Ok(()));
    assert!(matches!(
        client.handle_frame(wire(ack)).expect("ack"),
        SubscriberEvent::Committed(_)
    ));
    // A refused commit is an event, not the end of the stream.
    let f = client.commit(0, 9).expect("assigned");
    let SubscriptionRequest::Commit(c) = broker.handle_frame(f).expect("commit") else {
        panic!("commit request");
    };
    let refused = broker.commit_done(c, Err(ErrorCode::PartitionUnavailable));
    assert!(matches!(
        client.handle_frame(refused).expect("refusal"),
        SubscriberEvent::CommitRefused(_)
    ));
    // The broker answers a commit for an unassigned partition itself.
    let forged = Frame::Commit(crate::frames::subscribe::Commit {
        partition: 9,
        offset: 1,
    });
    let SubscriptionRequest::Reply(Frame::CommitAck(ack)) =
        broker.handle_frame(forged).expect("reply")
    else {
        panic!("reply");
    };
    assert_eq!(ack.error_code(), Some(ErrorCode::NotAssigned));
}

#[test]
fn unsubscribe_ends_the_stream_and_later_frames_are_violations() {
    let (mut client, mut broker) = open_subscription(SubscriptionTarget::Partition(0), 100, &[0]);
    let f = client.unsubscribe().expect("unsubscribe frame");
    assert!(client.unsubscribe().is_none(), "only once");
    assert_eq!(
        broker.handle_frame(wire(f)).expect("unsubscribe"),
        SubscriptionRequest::Unsubscribe
    );
    assert!(!broker.can_send());
    let end = broker.end(None, "bye");
    let SubscriberEvent::Ended(end) = client.handle_frame(wire(end)).expect("end") else {
        panic!("ended");
    };
    assert_eq!(end.error_code(), None);
    assert!(client.is_ended());
    let err = client
        .handle_frame(Frame::Records(records(0, &[0])))
        .expect_err("after end");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
    let err = broker
        .handle_frame(Frame::Credit(crate::frames::subscribe::Credit { bytes: 1 }))
        .expect_err("after end");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
}

#[test]
fn broker_subscription_ordering_violations() {
    let mut broker = BrokerSubscription::new();
    let err = broker
        .handle_frame(Frame::Credit(crate::frames::subscribe::Credit { bytes: 1 }))
        .expect_err("credit first");
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
    let mut broker = BrokerSubscription::new();
    let s = Frame::Subscribe(subscribe(SubscriptionTarget::Partition(0), 1));
    broker.handle_frame(s.clone()).expect("open");
    assert_eq!(
        broker.handle_frame(s).expect_err("second subscribe").code,
        ErrorCode::UnexpectedFrame
    );
    let mut broker = BrokerSubscription::new();
    assert_eq!(
        broker
            .handle_frame(Frame::Ping(crate::frames::control::Ping { nonce: 1 }))
            .expect_err("foreign")
            .code,
        ErrorCode::ProtocolViolation
    );
}

#[test]
fn refused_subscription_reaches_the_client() {
    let (mut client, first) =
        SubscriberSession::new(subscribe(SubscriptionTarget::Partition(0), 1));
    let mut broker = BrokerSubscription::new();
    broker.handle_frame(first).expect("open");
    let f = broker.fail(
        ErrorCode::NotAuthorized,
        "not authorized: bob may not subscribe t",
    );
    let SubscriberEvent::Failed(e) = client.handle_frame(wire(f)).expect("failure event") else {
        panic!("failed");
    };
    assert_eq!(e.error_code(), Some(ErrorCode::NotAuthorized));
    assert!(client.is_ended());
}

#[test]
fn admin_stream_carries_one_request_and_one_answer() {
    let (mut call, req) = AdminCall::new(AdminRequest::WhoAmI);
    let mut broker = BrokerAdminStream::new();
    assert_eq!(
        broker.handle_frame(wire(req.clone())).expect("request"),
        AdminRequest::WhoAmI
    );
    assert_eq!(
        broker.handle_frame(req).expect_err("second request").code,
        ErrorCode::ProtocolViolation
    );
    let answer = broker.respond(Ok(AdminResponse::WhoAmI {
        principal: "p".into(),
        broker_id: "b".into(),
        superuser: false,
    }));
    assert!(call.handle_frame(wire(answer.clone())).is_ok());
    assert!(matches!(call.handle_frame(answer), Err(Err(_))));

    let (mut call, _) = AdminCall::new(AdminRequest::AuditHead);
    let refused = broker.respond(Err(ErrorFrame::new(0, ErrorCode::NotAuthorized, "no")));
    assert!(matches!(call.handle_frame(refused), Err(Ok(_))));
    let mut broker = BrokerAdminStream::new();
    assert_eq!(
        broker
            .handle_frame(Frame::Credit(crate::frames::subscribe::Credit { bytes: 1 }))
            .expect_err("not a request")
            .code,
        ErrorCode::ProtocolViolation
    );
}

#[test]
fn welcome_features_are_the_known_bits_both_sides_set() {
    let now = Instant::now();
    for (offered, expected) in [
        (0, 0),
        (crate::features::LEADER_HINTS, crate::features::LEADER_HINTS),
        (u64::MAX, crate::features::SUPPORTED),
        (!crate::features::LEADER_HINTS, 0),
    ] {
        let mut broker = BrokerControl::new(broker_config(), "p", now);
        broker
            .handle_frame(
                Frame::Hello(Hello {
                    versions: vec![1],
                    client_name: String::new(),
                    max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                    features: offered,
                }),
                now,
            )
            .expect("accepted");
        let welcome = broker.poll_transmit();
        assert!(
            matches!(&welcome, Some(Frame::Welcome(w)) if w.features == expected),
            "{offered:#x}: {welcome:?}"
        );
    }
    // The client offers every feature it implements.
    let config = ClientControlConfig {
        versions: vec![1],
        client_name: String::new(),
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        keepalive: Duration::from_secs(10),
    };
    let mut client = ClientControl::new(config, now);
    assert!(matches!(
        client.poll_transmit(),
        Some(Frame::Hello(h)) if h.features == crate::features::SUPPORTED
    ));
}
