//! The end-to-end envelope through the `ValueSealer` and `ValueOpener` seams: round trips
//! for both key sources, and authentication failures for every kind of
//! tampering.

use bytes::Bytes;
use proptest::prelude::*;
use strongbox_client::e2e::{
    E2eOpener, E2eSealer, ERROR_HEADER, HEADER, Identity, Keyring, Recipient, RecipientSet,
    UnreadablePolicy,
};
use strongbox_client::{
    ClientError, ConsumedRecord, Opened, ProducerRecord, ValueOpener, ValueSealer,
};

/// The record a consumer would read back for a produced one.
fn delivered(r: &ProducerRecord, offset: u64) -> ConsumedRecord {
    ConsumedRecord {
        topic: r.topic.as_str().into(),
        partition: 0,
        offset,
        timestamp: 1_769_850_000_000,
        key: r.key.clone(),
        headers: r.headers.clone(),
        value: r.value.clone(),
    }
}

/// A keyring sealer and an opener holding the same keys.
fn keyring_pair(policy: UnreadablePolicy) -> (E2eSealer, E2eOpener) {
    let keyring = Keyring::generate("orders-key").expect("keyring");
    let reader = keyring.export("orders-key", None).expect("export");
    (
        E2eSealer::keyring(keyring, None).expect("sealer"),
        E2eOpener::new(policy).with_keyring(reader),
    )
}

/// A recipients sealer for `topic` (bob and carol) and bob's opener.
fn recipients_pair(topic: &str, policy: UnreadablePolicy) -> (E2eSealer, E2eOpener) {
    let bob = Identity::generate(Some("bob")).expect("bob");
    let carol = Identity::generate(Some("carol")).expect("carol");
    let set = RecipientSet::from_trusted_keys(
        topic,
        [&bob, &carol]
            .iter()
            .map(|i| Recipient {
                id: i.recipient().expect("named").to_owned(),
                public_key: i.public_key(),
                expires_at: None,
            })
            .collect(),
    )
    .expect("set");
    (
        E2eSealer::recipients([set]).expect("sealer"),
        E2eOpener::new(policy).with_identity(bob),
    )
}

fn sample(topic: &str) -> ProducerRecord {
    ProducerRecord::new(topic, "card 4111 1111 1111 1111")
        .key("customer-7")
        .header("kind", "payment")
}

/// Opens under `fail` and returns the error text.
fn open_err(opener: &E2eOpener, record: &mut ConsumedRecord) -> String {
    match opener.open(record) {
        Err(ClientError::Transform(text)) => text,
        other => panic!("expected a per-record error, got {other:?}"),
    }
}

fn round_trip(
    sealer: &E2eSealer,
    opener: &E2eOpener,
    topic: &str,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    value: Vec<u8>,
) -> Result<(), TestCaseError> {
    let original = ProducerRecord {
        topic: topic.to_owned(),
        partition: None,
        key: key.map(Bytes::from),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n, Bytes::from(v)))
            .collect(),
        value: Bytes::from(value),
        timestamp: None,
    };
    let mut sealed = original.clone();
    sealer.seal(&mut sealed).expect("seals");
    prop_assert_eq!(sealed.value.len(), original.value.len() + 16);
    prop_assert_ne!(&sealed.value, &original.value);
    prop_assert_eq!(
        &sealed.headers[..original.headers.len()],
        &original.headers[..]
    );
    prop_assert_eq!(sealed.headers.last().map(|(n, _)| n.as_str()), Some(HEADER));
    let mut record = delivered(&sealed, 0);
    prop_assert_eq!(opener.open(&mut record).expect("opens"), Opened::Deliver);
    prop_assert_eq!(&record.value, &original.value);
    prop_assert_eq!(&record.headers, &original.headers);
    prop_assert_eq!(&record.key, &original.key);
    Ok(())
}

fn app_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(
        (
            "[a-z][a-z0-9-]{0,11}",
            prop::collection::vec(any::<u8>(), 0..40),
        ),
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn keyring_seal_then_open_returns_the_record(
        topic in "[a-z][a-z0-9._-]{0,30}",
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        headers in app_headers(),
        value in prop::collection::vec(any::<u8>(), 0..3000),
    ) {
        let (sealer, opener) = keyring_pair(UnreadablePolicy::Fail);
        round_trip(&sealer, &opener, &topic, key, headers, value)?;
    }

    #[test]
    fn recipients_seal_then_open_returns_the_record(
        topic in "[a-z][a-z0-9._-]{0,30}",
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        headers in app_headers(),
        value in prop::collection::vec(any::<u8>(), 0..3000),
    ) {
        let (sealer, opener) = recipients_pair(&topic, UnreadablePolicy::Fail);
        round_trip(&sealer, &opener, &topic, key, headers, value)?;
    }
}

#[test]
fn many_records_under_one_data_key_all_open() {
    let (sealer, opener) = keyring_pair(UnreadablePolicy::Fail);
    for i in 0..500u64 {
        let mut r = ProducerRecord::new("demo.x", format!("value {i}"));
        sealer.seal(&mut r).expect("seals");
        let mut c = delivered(&r, i);
        opener.open(&mut c).expect("opens");
        assert_eq!(c.value, format!("value {i}").as_bytes());
    }
}

/// Every way of changing a sealed record that must fail authentication,
/// for one sealer/opener pair.
fn assert_tampering_fails(sealer: &E2eSealer, opener: &E2eOpener) {
    let mut sealed = sample("demo.orders");
    sealer.seal(&mut sealed).expect("seals");
    let good = delivered(&sealed, 17);
    {
        let mut ok = good.clone();
        opener.open(&mut ok).expect("the untouched record opens");
    }
    let header_at = good
        .headers
        .iter()
        .position(|(n, _)| n == HEADER)
        .expect("e2e header");
    let header = good.headers[header_at].1.clone();

    // Every byte of the header.
    for i in 0..header.len() {
        let mut bytes = header.to_vec();
        bytes[i] ^= 0x40;
        let mut r = good.clone();
        r.headers[header_at].1 = Bytes::from(bytes);
        let text = open_err(opener, &mut r);
        assert!(text.starts_with("record demo.orders/0@17: "), "{text}");
    }
    // Truncated and extended headers.
    for bytes in [header.slice(..header.len() - 1), {
        let mut b = header.to_vec();
        b.push(0);
        Bytes::from(b)
    }] {
        let mut r = good.clone();
        r.headers[header_at].1 = bytes;
        assert!(open_err(opener, &mut r).contains("malformed strongbox-e2e header"));
    }
    // The ciphertext: first byte, last byte (the tag), a byte in between,
    // and a truncated value.
    let value = good.value.to_vec();
    for i in [0, value.len() / 2, value.len() - 1] {
        let mut bytes = value.clone();
        bytes[i] ^= 0x01;
        let mut r = good.clone();
        r.value = Bytes::from(bytes);
        let text = open_err(opener, &mut r);
        assert!(text.contains("failed authentication"), "{text}");
    }
    let mut r = good.clone();
    r.value = good.value.slice(..good.value.len() - 1);
    assert!(open_err(opener, &mut r).contains("failed authentication"));
    // Moved to another topic.
    let mut r = good.clone();
    r.topic = "demo.elsewhere".into();
    let text = open_err(opener, &mut r);
    assert!(text.contains("record demo.elsewhere/0@17"), "{text}");
    // Moved to another record key, or its key removed.
    for key in [Some(Bytes::from_static(b"customer-8")), None] {
        let mut r = good.clone();
        r.key = key;
        assert!(open_err(opener, &mut r).contains("failed authentication"));
    }
    // The header removed, or given twice.
    let mut r = good.clone();
    r.headers.remove(header_at);
    assert!(open_err(opener, &mut r).contains("not end-to-end encrypted"));
    let mut r = good.clone();
    r.headers.push((HEADER.into(), header.clone()));
    assert!(open_err(opener, &mut r).contains("more than one strongbox-e2e header"));
    // A header from another record of the same data key does not fit this
    // value (its nonce differs).
    let mut other = sample("demo.orders");
    sealer.seal(&mut other).expect("seals");
    let mut r = good.clone();
    r.headers[header_at].1 = other.headers.last().expect("header").1.clone();
    assert!(open_err(opener, &mut r).contains("failed authentication"));
}

#[test]
fn tampering_fails_authentication_with_a_keyring() {
    let (sealer, opener) = keyring_pair(UnreadablePolicy::Fail);
    assert_tampering_fails(&sealer, &opener);
}

#[test]
fn tampering_fails_authentication_with_recipients() {
    let (sealer, opener) = recipients_pair("demo.orders", UnreadablePolicy::Fail);
    assert_tampering_fails(&sealer, &opener);
}

#[test]
fn application_headers_are_carried_but_not_authenticated() {
    // Documented in docs/SECURITY.md: only the topic, the record key and
    // the strongbox-e2e header are bound.
    let (sealer, opener) = keyring_pair(UnreadablePolicy::Fail);
    let mut sealed = sample("demo.orders");
    sealer.seal(&mut sealed).expect("seals");
    let mut r = delivered(&sealed, 0);
    r.headers[0].1 = Bytes::from_static(b"refund");
    assert_eq!(opener.open(&mut r).expect("opens"), Opened::Deliver);
    assert_eq!(
        r.headers,
        vec![("kind".to_owned(), Bytes::from_static(b"refund"))]
    );
}

#[test]
fn unsealed_records_are_never_delivered_as_if_sealed() {
    let plain = delivered(&sample("demo.orders"), 3);
    let (_, fail) = keyring_pair(UnreadablePolicy::Fail);
    let text = open_err(&fail, &mut plain.clone());
    assert_eq!(
        text,
        "record demo.orders/0@3: record is not end-to-end encrypted \
         (it has no strongbox-e2e header)"
    );
    let (_, skip) = keyring_pair(UnreadablePolicy::Skip);
    assert_eq!(skip.open(&mut plain.clone()).expect("policy"), Opened::Skip);
    assert_eq!(skip.unreadable().get("not sealed"), Some(&1));
    let (_, deliver) = keyring_pair(UnreadablePolicy::DeliverCiphertext);
    let mut r = plain.clone();
    assert_eq!(deliver.open(&mut r).expect("policy"), Opened::Deliver);
    assert_eq!(r.value, plain.value);
    assert_eq!(
        r.header(ERROR_HEADER).map(|v| v.to_vec()),
        Some(b"record is not end-to-end encrypted (it has no strongbox-e2e header)".to_vec())
    );
}

#[test]
fn an_error_header_that_arrives_with_a_record_is_removed() {
    let (sealer, opener) = keyring_pair(UnreadablePolicy::DeliverCiphertext);
    let mut sealed = sample("demo.orders");
    sealer.seal(&mut sealed).expect("seals");
    let mut r = delivered(&sealed, 0);
    r.headers
        .insert(0, (ERROR_HEADER.into(), Bytes::from_static(b"forged")));
    assert_eq!(opener.open(&mut r).expect("opens"), Opened::Deliver);
    assert_eq!(r.header(ERROR_HEADER), None);
    assert_eq!(r.value, "card 4111 1111 1111 1111".as_bytes());
}

#[test]
fn reserved_header_names_are_refused() {
    // (An opener cannot be handed to a producer, nor a sealer to a
    // consumer: they implement one seam each.)
    let (sealer, _) = keyring_pair(UnreadablePolicy::Fail);
    for name in [HEADER, ERROR_HEADER, "strongbox-e2e-anything"] {
        let mut r = sample("demo.orders").header(name, "x");
        let err = sealer.seal(&mut r).expect_err("reserved");
        assert!(err.to_string().contains("reserved"), "{err}");
    }
}
