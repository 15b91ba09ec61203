//! Node identities read from real certificates, and the parser's
//! robustness on arbitrary bytes, arbitrary URIs and real certificates
//! mutated with the shared fuzz mutations (fuzz/mutation.rs).
//!
//! `STRONGBOX_FUZZ_CASES` sets the number of cases per property.

mod common;

#[path = "../../fuzz/mutation.rs"]
mod mutation;

use common::*;
use mutation::{arb_mutation, fuzz_config, mutate_all};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use strongbox_peer::{IdentityError, NodeIdentity, claims_node_identity};

#[test]
fn a_node_certificate_names_its_node() {
    let ca = Ca::new("cluster CA");
    let cert = ca.node(42);
    let id = NodeIdentity::from_certificate(&cert.der).expect("node");
    assert_eq!((id.trust_domain(), id.node_id()), (TRUST_DOMAIN, 42));
    assert_eq!(
        NodeIdentity::from_certificate_in(&cert.der, TRUST_DOMAIN),
        Ok(id)
    );
    assert!(claims_node_identity(&cert.der));
    assert_eq!(
        NodeIdentity::from_certificate_in(&cert.der, "other.test"),
        Err(IdentityError::ForeignTrustDomain {
            expected: "other.test".into(),
            found: TRUST_DOMAIN.into(),
            id: 42
        })
    );
}

#[test]
fn certificates_that_are_not_exactly_one_node_are_refused() {
    let ca = Ca::new("cluster CA");
    let client = ca.issue(&["spiffe://cluster.test/ns/payments/sa/api"]);
    assert_eq!(
        NodeIdentity::from_certificate(&client.der),
        Err(IdentityError::NotANode)
    );
    assert!(!claims_node_identity(&client.der));
    let no_uri = ca.issue(&[]);
    assert_eq!(
        NodeIdentity::from_certificate(&no_uri.der),
        Err(IdentityError::NotANode)
    );
    let two_nodes = ca.issue(&[&node_uri(1), &node_uri(2)]);
    assert_eq!(
        NodeIdentity::from_certificate(&two_nodes.der),
        Err(IdentityError::Ambiguous { count: 2 })
    );
    let node_and_client = ca.issue(&["spiffe://cluster.test/ns/payments/sa/api", &node_uri(1)]);
    assert_eq!(
        NodeIdentity::from_certificate(&node_and_client.der),
        Err(IdentityError::Ambiguous { count: 2 })
    );
    assert!(claims_node_identity(&node_and_client.der));
    for bad in [
        "spiffe://cluster.test/strongbox/node/0",
        "spiffe://cluster.test/strongbox/node/01",
        "spiffe://cluster.test/strongbox/node/1/extra",
        "spiffe://cluster.test/strongbox/node/x",
    ] {
        let cert = ca.issue(&[bad]);
        assert!(
            matches!(
                NodeIdentity::from_certificate(&cert.der),
                Err(IdentityError::Malformed { .. })
            ),
            "{bad}"
        );
        assert!(claims_node_identity(&cert.der), "{bad} is a claim");
    }
}

fn real_certificates() -> Vec<Vec<u8>> {
    let ca = Ca::new("cluster CA");
    vec![
        ca.node(7).der.to_vec(),
        ca.issue(&["spiffe://cluster.test/ns/a/sa/b"]).der.to_vec(),
        ca.issue(&[&node_uri(1), &node_uri(2)]).der.to_vec(),
        ca.issue(&[&node_uri(1), "spiffe://cluster.test/ns/a/sa/b"])
            .der
            .to_vec(),
        ca.der.to_vec(),
    ]
}

thread_local! {
    // Made once per test thread: key generation and signing are slow next
    // to parsing.
    static CERTS: Vec<Vec<u8>> = real_certificates();
}

/// Whatever parses is a well-formed identity that also counts as a claim.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(id) = NodeIdentity::from_certificate(bytes) {
        prop_assert_eq!(NodeIdentity::parse_uri(&id.uri()), Ok(id.clone()));
        prop_assert!(id.node_id() != 0);
        prop_assert!(claims_node_identity(bytes));
    }
    Ok(())
}

const DEFAULT_CASES: u32 = 2000;

proptest! {
    #![proptest_config(fuzz_config(DEFAULT_CASES))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(NodeIdentity::from_certificate(&bytes).is_err());
        let _ = claims_node_identity(&bytes);
    }

    #[test]
    fn mutated_certificates_never_panic(
        which in any::<prop::sample::Index>(),
        donor in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(arb_mutation(), 1..6),
    ) {
        let (mut bytes, donor) = CERTS.with(|c| {
            (which.get(c).clone(), donor.get(c).clone())
        });
        mutate_all(&mut bytes, &donor, &mutations);
        check(&bytes)?;
    }

    #[test]
    fn uris_never_panic(text in ".{0,80}", tail in "[0-9/]{0,24}") {
        for uri in [text.clone(), format!("spiffe://{text}/strongbox/node/{tail}")] {
            if let Ok(id) = NodeIdentity::parse_uri(&uri) {
                prop_assert_eq!(id.uri(), uri);
                prop_assert!(id.node_id() != 0);
            }
        }
    }
}

#[test]
fn a_node_must_hold_a_node_certificate_of_its_trust_domain() {
    use strongbox_peer::{NodeTls, PeerError};
    use strongbox_tls::KeyExchange;
    let ca = Ca::new("cluster CA");
    let own = ca.node(5);
    let tls = NodeTls::from_own_certificate(
        vec![own.der.clone()],
        own.key(),
        ca.roots(),
        KeyExchange::PreferHybrid,
    )
    .expect("a node certificate");
    assert_eq!(tls.identity().node_id(), 5);
    assert_eq!(tls.identity().trust_domain(), TRUST_DOMAIN);
    let client = ca.issue(&["spiffe://cluster.test/ns/a/sa/b"]);
    let e = NodeTls::new(
        vec![client.der.clone()],
        client.key(),
        ca.roots(),
        TRUST_DOMAIN,
        KeyExchange::PreferHybrid,
    )
    .expect_err("a client certificate is no node's");
    assert!(
        matches!(e, PeerError::OwnIdentity(IdentityError::NotANode)),
        "{e}"
    );
    let e = NodeTls::new(
        vec![own.der.clone()],
        own.key(),
        ca.roots(),
        "other.test",
        KeyExchange::PreferHybrid,
    )
    .expect_err("another trust domain");
    assert!(
        matches!(
            e,
            PeerError::OwnIdentity(IdentityError::ForeignTrustDomain { .. })
        ),
        "{e}"
    );
    // A key that is not the certificate's.
    let other = ca.node(5);
    let e = NodeTls::new(
        vec![own.der.clone()],
        other.key(),
        ca.roots(),
        TRUST_DOMAIN,
        KeyExchange::PreferHybrid,
    )
    .expect_err("mismatched key");
    assert!(matches!(e, PeerError::Tls(_)), "{e}");
}
