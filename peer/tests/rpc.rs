//! Calls between real peer endpoints on 127.0.0.1: both directions, typed
//! calls, handler errors, bad frames, reconnection and timeouts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde::{Deserialize, Serialize};
use strongbox_peer::frame::{Frame, FrameHeader, FrameKind, HEADER_LEN};
use strongbox_peer::{ErrorCode, PeerConfig, PeerError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vote {
    term: u64,
    candidate: u64,
    log: Vec<u8>,
}

#[tokio::test]
async fn a_call_between_two_nodes_works_both_ways() {
    let ca = Ca::new("cluster CA");
    let members = Members::of(&[1, 2]);
    let one = start(node_tls(&ca, &ca.node(1)), members.clone(), test_config());
    let two = start(node_tls(&ca, &ca.node(2)), members.clone(), test_config());
    let book = Book::default();
    book.set(1, one.addr);
    book.set(2, two.addr);
    let from_one = one.endpoint.client(Arc::new(book.clone()));
    let from_two = two.endpoint.client(Arc::new(book));

    let echo = from_one
        .call_raw(2, ECHO, Bytes::from_static(b"ping"))
        .await
        .expect("1 -> 2");
    assert_eq!(&echo[..], b"ping");
    // The handler sees the verified sender.
    let who = from_one.call_raw(2, WHO, Bytes::new()).await.expect("who");
    assert_eq!(&who[..], b"1");
    let who = from_two
        .call_raw(1, WHO, Bytes::new())
        .await
        .expect("2 -> 1");
    assert_eq!(&who[..], b"2");

    let vote = Vote {
        term: 7,
        candidate: 1,
        log: vec![1, 2, 3],
    };
    let back: Vote = from_two.call(1, ECHO, &vote).await.expect("typed call");
    assert_eq!(back, vote);

    match from_one.call_raw(2, FAIL, Bytes::new()).await {
        Err(PeerError::Remote {
            node: 2,
            code,
            message,
        }) => {
            assert_eq!(code, ErrorCode::HandlerFailed.as_u16());
            assert!(message.contains("on purpose"), "{message}");
        }
        other => panic!("expected the handler's error, got {other:?}"),
    }
    let e = from_one
        .call_raw(2, 999, Bytes::new())
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::UnknownMethod), "{e}");
    // Still serving, on the same pooled connection.
    assert_eq!(
        &from_one
            .call_raw(2, WHO, Bytes::new())
            .await
            .expect("again")[..],
        b"1"
    );
    assert!(one.observer.all().is_empty() && two.observer.all().is_empty());
}

/// A connection of node 1 to node 2's listener, made by hand so that the
/// test can write any bytes.
async fn raw_member_connection(config: PeerConfig) -> (Ca, Node, Issued, quinn::Connection) {
    let ca = Ca::new("cluster CA");
    let two = start(node_tls(&ca, &ca.node(2)), Members::of(&[1, 2]), config);
    let one_cert = ca.node(1);
    let conn = raw_connect(&one_cert, two.addr).await;
    (ca, two, one_cert, conn)
}

/// The error frame `answer` must be, with `code`; returns its message.
fn expect_error(answer: Result<Vec<u8>, String>, code: ErrorCode, max: u32) -> String {
    let bytes = answer.expect("an error frame, not a lost connection");
    let frame = Frame::decode(&bytes, max).expect("a valid frame");
    let (got, message) = frame.error_parts().expect("an error frame");
    assert_eq!(got, code.as_u16(), "{message}");
    assert_eq!(frame.header.node, 2);
    message
}

/// The connection still serves a good request.
async fn still_served(conn: &quinn::Connection, max: u32) {
    let good = Frame::request(ECHO, 1, Bytes::from_static(b"fine"))
        .expect("frame")
        .encode();
    let answer =
        Frame::decode(&raw_exchange(conn, &good).await.expect("served"), max).expect("frame");
    assert_eq!(answer.header.kind, FrameKind::Response);
    assert_eq!(&answer.payload[..], b"fine");
    assert!(
        conn.close_reason().is_none(),
        "bad frames close streams, not the connection"
    );
}

/// [L7] A length above the receiver's maximum is answered
/// `payload_too_large` from the header alone; the connection goes on, and a
/// caller refuses to send such a payload.
#[tokio::test]
async fn oversized_frames_are_refused_from_the_header() {
    let max = 64 * 1024;
    let config = PeerConfig {
        max_payload: max,
        ..test_config()
    };
    let (ca, two, one_cert, conn) = raw_member_connection(config.clone()).await;

    let mut big = FrameHeader::request(ECHO, 1, max + 1).encode().to_vec();
    big.extend(std::iter::repeat_n(
        0u8,
        usize::try_from(max).expect("fits") + 1,
    ));
    let m = expect_error(
        raw_exchange(&conn, &big).await,
        ErrorCode::PayloadTooLarge,
        max,
    );
    assert!(m.contains("exceeds"), "{m}");
    // A header announcing u32::MAX bytes, with nothing behind it: refused
    // without waiting for (or allocating) the payload.
    let huge = FrameHeader::request(ECHO, 1, u32::MAX).encode();
    expect_error(
        raw_exchange(&conn, &huge).await,
        ErrorCode::PayloadTooLarge,
        max,
    );
    // Exactly the maximum is fine.
    let mut full = FrameHeader::request(ECHO, 1, max).encode().to_vec();
    full.extend(std::iter::repeat_n(
        7u8,
        usize::try_from(max).expect("fits"),
    ));
    let answer =
        Frame::decode(&raw_exchange(&conn, &full).await.expect("served"), max).expect("frame");
    assert_eq!(answer.payload.len(), usize::try_from(max).expect("fits"));
    still_served(&conn, max).await;

    // Other nodes are served too, and a caller is stopped before sending
    // anything too large.
    let one = start(node_tls(&ca, &one_cert), Members::of(&[1, 2]), config);
    let book = Book::default();
    book.set(2, two.addr);
    let client = one.endpoint.client(Arc::new(book));
    assert_eq!(
        &client.call_raw(2, WHO, Bytes::new()).await.expect("served")[..],
        b"1"
    );
    let e = client
        .call_raw(2, ECHO, Bytes::from(vec![0u8; 64 * 1024 + 1]))
        .await
        .expect_err("too large");
    assert!(
        matches!(
            e,
            PeerError::PayloadTooLarge {
                len: 65537,
                max: 65536
            }
        ),
        "{e}"
    );
    // Bad frames are not identity refusals.
    assert!(two.observer.all().is_empty(), "{:?}", two.observer.all());
}

/// [L8] A malformed request is answered `malformed_frame` on its stream;
/// the connection and its other calls go on.
#[tokio::test]
async fn malformed_frames_close_only_their_stream() {
    let max = 64 * 1024;
    let config = PeerConfig {
        max_payload: max,
        ..test_config()
    };
    let (_ca, two, _one_cert, conn) = raw_member_connection(config).await;
    let malformed = |answer| expect_error(answer, ErrorCode::MalformedFrame, max);

    // Unknown version.
    let mut bad = FrameHeader::request(ECHO, 1, 0).encode();
    bad[0] = 9;
    malformed(raw_exchange(&conn, &bad).await);
    // Unknown kind, and a response where a request belongs.
    let mut bad = FrameHeader::request(ECHO, 1, 0).encode();
    bad[1] = 0x7f;
    malformed(raw_exchange(&conn, &bad).await);
    let resp = Frame::response(ECHO, 1, Bytes::new())
        .expect("frame")
        .encode();
    malformed(raw_exchange(&conn, &resp).await);
    // A header cut short, and an empty stream.
    malformed(
        raw_exchange(
            &conn,
            &FrameHeader::request(ECHO, 1, 0).encode()[..HEADER_LEN - 3],
        )
        .await,
    );
    malformed(raw_exchange(&conn, &[]).await);
    // A payload shorter, then longer, than announced.
    let mut short = FrameHeader::request(ECHO, 1, 10).encode().to_vec();
    short.extend_from_slice(b"abc");
    malformed(raw_exchange(&conn, &short).await);
    let mut long = FrameHeader::request(ECHO, 1, 3).encode().to_vec();
    long.extend_from_slice(b"abcde");
    let m = malformed(raw_exchange(&conn, &long).await);
    assert!(m.contains("after the end"), "{m}");

    // Calls on the same connection go on, concurrently with a bad one.
    let ((), bad) = tokio::join!(still_served(&conn, max), raw_exchange(&conn, &short));
    malformed(bad);
    assert!(two.observer.all().is_empty(), "{:?}", two.observer.all());
}

#[tokio::test]
async fn a_lost_connection_is_dialed_again() {
    let ca = Ca::new("cluster CA");
    let members = Members::of(&[1, 2]);
    let one = start(node_tls(&ca, &ca.node(1)), members.clone(), test_config());
    let two_cert = ca.node(2);
    let two = start(node_tls(&ca, &two_cert), members.clone(), test_config());
    let book = Book::default();
    book.set(2, two.addr);
    let client = one.endpoint.client(Arc::new(book.clone()));
    assert_eq!(
        &client.call_raw(2, WHO, Bytes::new()).await.expect("first")[..],
        b"1"
    );

    // Node 2 goes away and comes back elsewhere.
    two.endpoint.close().await;
    let e = client
        .call_raw(2, WHO, Bytes::new())
        .await
        .expect_err("node 2 is down");
    assert!(
        matches!(
            e,
            PeerError::Refused { code: 7, .. }
                | PeerError::ConnectionLost { .. }
                | PeerError::Unreachable { .. }
                | PeerError::Timeout { .. }
        ),
        "{e}"
    );
    let again = start(node_tls(&ca, &two_cert), members, test_config());
    book.set(2, again.addr);
    assert_eq!(
        &client
            .call_raw(2, WHO, Bytes::new())
            .await
            .expect("reconnected")[..],
        b"1"
    );
}

#[tokio::test]
async fn unknown_and_silent_nodes_fail_clearly_and_in_time() {
    let ca = Ca::new("cluster CA");
    let config = PeerConfig {
        call_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let one = start(node_tls(&ca, &ca.node(1)), Members::of(&[1, 2]), config);
    // A UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let book = Book::default();
    book.set(2, silent.local_addr().expect("addr"));
    let client = one.endpoint.client(Arc::new(book));
    let e = client
        .call_raw(3, ECHO, Bytes::new())
        .await
        .expect_err("unknown");
    assert!(matches!(e, PeerError::UnknownNode(3)), "{e}");
    let short = Duration::from_millis(300);
    let e = client
        .call_raw_within(2, ECHO, Bytes::new(), short)
        .await
        .expect_err("silent");
    assert!(
        matches!(e, PeerError::Timeout { node: 2, after } if after == short),
        "{e}"
    );
    let e = client
        .call_raw(2, ECHO, Bytes::new())
        .await
        .expect_err("silent");
    assert!(matches!(e, PeerError::Timeout { node: 2, .. }), "{e}");
    assert!(e.to_string().contains("outcome is unknown"), "{e}");
}

#[tokio::test]
async fn connections_above_the_limit_are_refused_until_one_ends() {
    let ca = Ca::new("cluster CA");
    let members = Members::of(&[1, 2, 3]);
    let config = PeerConfig {
        max_connections: 1,
        ..test_config()
    };
    let two = start(node_tls(&ca, &ca.node(2)), members.clone(), config);
    let first = raw_connect(&ca.node(1), two.addr).await;
    let who = Frame::request(WHO, 1, Bytes::new())
        .expect("frame")
        .encode();
    raw_exchange(&first, &who)
        .await
        .expect("the first connection is served");

    let three = start(node_tls(&ca, &ca.node(3)), members, test_config());
    let book = Book::default();
    book.set(2, two.addr);
    let client = three.endpoint.client(Arc::new(book));
    let e = client
        .call_raw(2, WHO, Bytes::new())
        .await
        .expect_err("no slot left");
    assert!(matches!(e, PeerError::Unreachable { node: 2, .. }), "{e}");

    first.close(quinn::VarInt::from_u32(0), b"done");
    for _ in 0..100 {
        if let Ok(answer) = client.call_raw(2, WHO, Bytes::new()).await {
            assert_eq!(&answer[..], b"3");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the slot of a closed connection was never given back");
}

#[tokio::test]
async fn a_snapshot_sized_payload_goes_through_under_the_default_limit() {
    let ca = Ca::new("cluster CA");
    let members = Members::of(&[1, 2]);
    let one = start(
        node_tls(&ca, &ca.node(1)),
        members.clone(),
        PeerConfig::default(),
    );
    let two = start(node_tls(&ca, &ca.node(2)), members, PeerConfig::default());
    let book = Book::default();
    book.set(2, two.addr);
    let client = one.endpoint.client(Arc::new(book));
    let chunk: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect();
    let back = client
        .call_raw_within(2, ECHO, Bytes::from(chunk.clone()), Duration::from_secs(30))
        .await
        .expect("an 8 MiB chunk");
    assert!(back == chunk, "the chunk came back changed");
    #[derive(Serialize, Deserialize)]
    struct Chunk {
        offset: u64,
        data: Vec<u8>,
    }
    let typed: Chunk = client
        .call_within(
            2,
            ECHO,
            &Chunk {
                offset: 7,
                data: chunk[..1024 * 1024].to_vec(),
            },
            Duration::from_secs(30),
        )
        .await
        .expect("a typed chunk");
    assert_eq!(typed.offset, 7);
    assert!(typed.data[..] == chunk[..1024 * 1024]);
}
