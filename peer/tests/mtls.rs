//! The peer listener's mutual TLS matrix, with real QUIC on 127.0.0.1:
//! every refusal fails the caller and is observed with its reason.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use strongbox_peer::frame::Frame;
use strongbox_peer::{DenyReason, Direction, ErrorCode, PeerError};

/// A request on a connection whose certificate was refused fails.
async fn assert_refused(conn: &quinn::Connection) {
    let good = Frame::request(ECHO, 1, Bytes::from_static(b"x"))
        .expect("frame")
        .encode();
    let answer = raw_exchange(conn, &good).await;
    assert!(
        answer.is_err(),
        "served despite a refused certificate: {answer:?}"
    );
}

/// [L3] A certificate that names no node (a client's) is refused.
#[tokio::test]
async fn a_client_certificate_is_refused_on_the_peer_port() {
    let ca = Ca::new("cluster CA");
    let two = start(
        node_tls(&ca, &ca.node(2)),
        Members::of(&[1, 2]),
        test_config(),
    );
    let client = ca.issue(&["spiffe://cluster.test/ns/payments/sa/api"]);
    let conn = raw_connect(&client, two.addr).await;
    assert_refused(&conn).await;
    let d = two.observer.wait_for(DenyReason::ClientCertificate).await;
    assert_eq!(d.direction, Direction::Inbound);
    assert_eq!(d.identity, None);
    assert_eq!(d.remote.ip(), two.addr.ip());
}

/// [L4] A node certificate of another trust domain is refused.
#[tokio::test]
async fn a_node_certificate_of_another_trust_domain_is_refused() {
    let ca = Ca::new("cluster CA");
    let two = start(
        node_tls(&ca, &ca.node(2)),
        Members::of(&[1, 2]),
        test_config(),
    );
    let other = ca.issue(&["spiffe://elsewhere.test/strongbox/node/1"]);
    let conn = raw_connect(&other, two.addr).await;
    assert_refused(&conn).await;
    let d = two.observer.wait_for(DenyReason::BadIdentity).await;
    assert!(d.detail.contains("elsewhere.test"), "{}", d.detail);
}

/// [L1] A certificate that does not chain to the cluster CA is refused in
/// the handshake.
#[tokio::test]
async fn a_certificate_from_a_foreign_ca_is_refused() {
    let ca = Ca::new("cluster CA");
    let foreign = Ca::new("foreign CA");
    let two = start(
        node_tls(&ca, &ca.node(2)),
        Members::of(&[1, 2]),
        test_config(),
    );
    let conn = raw_connect(&foreign.node(1), two.addr).await;
    assert_refused(&conn).await;
    let d = two.observer.wait_for(DenyReason::ForeignCa).await;
    // What the certificate claimed, recorded though not trusted.
    assert_eq!(d.identity.map(|i| i.node_id()), Some(1));
}

/// [L2] An expired node certificate is refused in the handshake.
#[tokio::test]
async fn an_expired_node_certificate_is_refused() {
    let ca = Ca::new("cluster CA");
    let two = start(
        node_tls(&ca, &ca.node(2)),
        Members::of(&[1, 2]),
        test_config(),
    );
    let conn = raw_connect(&ca.expired_node(1), two.addr).await;
    assert_refused(&conn).await;
    two.observer.wait_for(DenyReason::Expired).await;
}

/// [L5] The certificate of a node that is not a member is refused.
#[tokio::test]
async fn a_node_that_is_not_a_member_is_refused_at_the_handshake() {
    let ca = Ca::new("cluster CA");
    let two = start(
        node_tls(&ca, &ca.node(2)),
        Members::of(&[1, 2]),
        test_config(),
    );
    let conn = raw_connect(&ca.node(3), two.addr).await;
    assert_refused(&conn).await;
    let d = two.observer.wait_for(DenyReason::NotAMember).await;
    assert_eq!(d.identity.map(|i| i.node_id()), Some(3));
}

/// [L9] A request whose claimed sender is not the certificate's node is
/// answered `identity_mismatch` and closes the connection.
#[tokio::test]
async fn a_request_claiming_another_node_id_is_refused_and_closes_the_connection() {
    let ca = Ca::new("cluster CA");
    let two = start(
        node_tls(&ca, &ca.node(2)),
        Members::of(&[1, 2, 3]),
        test_config(),
    );
    let conn = raw_connect(&ca.node(1), two.addr).await;
    // Node 1's certificate, node 3's name in the frame.
    let forged = Frame::request(WHO, 3, Bytes::new())
        .expect("frame")
        .encode();
    match raw_exchange(&conn, &forged).await {
        Ok(bytes) => {
            let f = Frame::decode(&bytes, 1024).expect("error frame");
            let (code, message) = f.error_parts().expect("an error frame");
            assert_eq!(code, ErrorCode::IdentityMismatch.as_u16(), "{message}");
        }
        // The close may overtake the error frame; it carries the code.
        Err(e) => assert!(e.contains("closed by peer: 4"), "{e}"),
    }
    let d = two.observer.wait_for(DenyReason::IdentityMismatch).await;
    assert_eq!(d.identity.map(|i| i.node_id()), Some(1));
    assert!(d.detail.contains("node 3"), "{}", d.detail);
    let reason = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed())
        .await
        .expect("the connection closes");
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(a) if a.error_code == ErrorCode::IdentityMismatch.as_varint()),
        "{reason:?}"
    );
    // The honest request on a new connection still works.
    let conn = raw_connect(&ca.node(1), two.addr).await;
    let honest = Frame::request(WHO, 1, Bytes::new())
        .expect("frame")
        .encode();
    let f =
        Frame::decode(&raw_exchange(&conn, &honest).await.expect("served"), 1024).expect("frame");
    assert_eq!(&f.payload[..], b"1");
}

/// [L10] Membership is asked on every request: a node removed while
/// connected is refused at its next request, and the connection closed.
#[tokio::test]
async fn a_node_removed_while_connected_is_refused_at_its_next_request() {
    let ca = Ca::new("cluster CA");
    let members_of_two = Members::of(&[1, 2]);
    let one = start(
        node_tls(&ca, &ca.node(1)),
        Members::of(&[1, 2]),
        test_config(),
    );
    let two = start(
        node_tls(&ca, &ca.node(2)),
        members_of_two.clone(),
        test_config(),
    );
    let book = Book::default();
    book.set(2, two.addr);
    let client = one.endpoint.client(Arc::new(book));
    assert_eq!(
        &client.call_raw(2, WHO, Bytes::new()).await.expect("member")[..],
        b"1"
    );

    members_of_two.remove(1);
    match client.call_raw(2, WHO, Bytes::new()).await {
        Err(PeerError::Refused { node: 2, code, .. }) => {
            assert_eq!(code, ErrorCode::NotAMember.as_u16());
        }
        other => panic!("expected a NotAMember refusal, got {other:?}"),
    }
    let d = two.observer.wait_for(DenyReason::NotAMember).await;
    assert_eq!(d.identity.map(|i| i.node_id()), Some(1));
    // The connection was closed: a later call dials again and is refused
    // at the handshake (one more call may still meet the closing
    // connection and get its close code).
    let mut handshake_refused = false;
    for _ in 0..3 {
        match client.call_raw(2, WHO, Bytes::new()).await {
            Err(PeerError::Handshake { node: 2, .. }) => {
                handshake_refused = true;
                break;
            }
            Err(PeerError::Refused {
                node: 2, code: 5, ..
            }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert!(
        handshake_refused,
        "a removed node was not refused at the handshake"
    );
    for _ in 0..200 {
        let n = two
            .observer
            .reasons()
            .into_iter()
            .filter(|r| *r == DenyReason::NotAMember)
            .count();
        if n >= 2 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!(
        "the handshake refusal was not observed: {:?}",
        two.observer.all()
    );
}

/// [L6] The dialer refuses a listener whose certificate names another node
/// than the one dialed.
#[tokio::test]
async fn dialing_a_node_that_answers_with_another_id_fails() {
    let ca = Ca::new("cluster CA");
    let members = Members::of(&[1, 2, 3]);
    let one = start(node_tls(&ca, &ca.node(1)), members.clone(), test_config());
    let three = start(node_tls(&ca, &ca.node(3)), members, test_config());
    // The address book says node 2 is where node 3 listens.
    let book = Book::default();
    book.set(2, three.addr);
    let client = one.endpoint.client(Arc::new(book));
    match client.call_raw(2, WHO, Bytes::new()).await {
        Err(PeerError::Handshake {
            node: 2, reason, ..
        }) => {
            assert!(
                reason.contains("wrong_node") && reason.contains("node 3"),
                "{reason}"
            );
        }
        other => panic!("expected a handshake failure, got {other:?}"),
    }
    let d = one.observer.wait_for(DenyReason::WrongNode).await;
    assert_eq!(d.direction, Direction::Outbound);
    assert_eq!(d.identity.map(|i| i.node_id()), Some(3));
}

#[tokio::test]
async fn a_node_with_a_foreign_ca_certificate_is_not_trusted_when_dialed() {
    let ca = Ca::new("cluster CA");
    let foreign = Ca::new("foreign CA");
    let one = start(
        node_tls(&ca, &ca.node(1)),
        Members::of(&[1, 2]),
        test_config(),
    );
    // An impostor for node 2: a node 2 certificate from another CA.
    let cert = foreign.node(2);
    let impostor = start(
        strongbox_peer::NodeTls::new(
            vec![cert.der.clone()],
            cert.key(),
            ca.roots(),
            TRUST_DOMAIN,
            strongbox_tls::KeyExchange::PreferHybrid,
        )
        .expect("tls"),
        Members::of(&[1, 2]),
        test_config(),
    );
    let book = Book::default();
    book.set(2, impostor.addr);
    let client = one.endpoint.client(Arc::new(book));
    let e = client
        .call_raw(2, WHO, Bytes::new())
        .await
        .expect_err("untrusted");
    assert!(matches!(e, PeerError::Handshake { node: 2, .. }), "{e}");
    let d = one.observer.wait_for(DenyReason::ForeignCa).await;
    assert_eq!(d.direction, Direction::Outbound);
}
