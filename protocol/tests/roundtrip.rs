//! Property tests: every frame and every record batch survives
//! encode → decode unchanged.

mod common;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use strongbox_protocol::batch::{BATCH_HEADER_LEN, BatchBuilder, RecordBatch, parse_header};
use strongbox_protocol::error::EncodeError;
use strongbox_protocol::frame::{
    DEFAULT_MAX_FRAME_SIZE, Decoded, FRAME_HEADER_LEN, Frame, FrameDecoder, decode_frame,
};

use common::{
    BatchSpec, arb_admin_request, arb_admin_response, arb_batch_spec, arb_frame, arb_records,
    build_batch, encode,
};

/// Encodes `frame`, decodes it both ways and checks every view agrees.
fn assert_round_trip(frame: &Frame) -> Result<(), TestCaseError> {
    let wire = encode(frame);
    // The length prefix counts everything after itself.
    let len = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize;
    prop_assert_eq!(len + FRAME_HEADER_LEN, wire.len());
    prop_assert_eq!(
        u16::from_be_bytes([wire[4], wire[5]]),
        frame.frame_type().as_u16()
    );
    prop_assert_eq!(
        decode_frame(&wire, DEFAULT_MAX_FRAME_SIZE),
        Ok(Decoded::Frame(frame.clone(), wire.len()))
    );
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    decoder.extend(&wire);
    prop_assert_eq!(decoder.next_frame(), Ok(Some(frame.clone())));
    prop_assert_eq!(decoder.next_frame(), Ok(None));
    // Encoding is deterministic, and appends after existing bytes.
    let mut buf = BytesMut::from(&b"xyz"[..]);
    frame.encode(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap();
    prop_assert_eq!(&buf[..3], b"xyz");
    prop_assert_eq!(&buf[3..], &wire[..]);
    Ok(())
}

/// Checks that `RecordBatch::parse` returns exactly the records of `spec`.
fn assert_batch_matches(spec: &BatchSpec, bytes: Bytes) -> Result<(), TestCaseError> {
    let batch =
        RecordBatch::parse(bytes.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let header = batch.header();
    prop_assert_eq!(header.producer, spec.producer);
    prop_assert_eq!(header.base_timestamp, spec.base_timestamp);
    prop_assert_eq!(header.record_count as usize, spec.records.len());
    prop_assert_eq!(header.body_length as usize, bytes.len() - BATCH_HEADER_LEN);
    prop_assert_eq!(parse_header(&bytes), Ok(*header));
    prop_assert_eq!(batch.len(), bytes.len());
    prop_assert_eq!(batch.as_bytes(), &bytes);
    let expected_last = spec
        .producer
        .map(|p| p.base_sequence + spec.records.len() as u32 - 1);
    prop_assert_eq!(header.last_sequence(), expected_last);
    let max_ts = (0..spec.records.len()).map(|i| spec.timestamp(i)).max();
    prop_assert_eq!(Some(batch.max_timestamp()), max_ts);

    let records: Vec<_> = batch.records().collect();
    prop_assert_eq!(records.len(), spec.records.len());
    for (i, (got, want)) in records.iter().zip(&spec.records).enumerate() {
        prop_assert_eq!(got.index as usize, i);
        prop_assert_eq!(got.timestamp, spec.timestamp(i));
        prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
        prop_assert_eq!(&got.value[..], &want.value[..]);
        prop_assert_eq!(got.headers.len(), want.headers.len());
        prop_assert_eq!(got.headers.is_empty(), want.headers.is_empty());
        let headers: Vec<(String, Vec<u8>)> =
            got.headers.iter().map(|(n, v)| (n, v.to_vec())).collect();
        prop_assert_eq!(&headers, &want.headers);
        for (name, _) in &want.headers {
            // `get` finds the first header of that name.
            let first = want
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone());
            let found = got.headers.get(name).map(|b| b.to_vec());
            prop_assert_eq!(found, first);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_frame_round_trips(frame in arb_frame()) {
        assert_round_trip(&frame)?;
    }

    #[test]
    fn admin_requests_round_trip(request in arb_admin_request()) {
        assert_round_trip(&Frame::Request(request))?;
    }

    #[test]
    fn admin_responses_round_trip(response in arb_admin_response()) {
        assert_round_trip(&Frame::Response(response))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn records_credit_cost_equals_encoded_length(records in arb_records()) {
        let wire = encode(&Frame::Records(records.clone()));
        prop_assert_eq!(records.credit_cost(), wire.len() as u64);
    }

    #[test]
    fn batches_round_trip_record_by_record(spec in arb_batch_spec()) {
        let bytes = build_batch(&spec);
        assert_batch_matches(&spec, bytes)?;
    }

    #[test]
    fn builder_lengths_are_exact(spec in arb_batch_spec()) {
        let mut builder = BatchBuilder::new(spec.base_timestamp);
        if let Some(p) = spec.producer {
            builder.producer(p);
        }
        prop_assert!(builder.is_empty());
        let mut expected = BATCH_HEADER_LEN;
        for (i, r) in spec.records.iter().enumerate() {
            let headers: Vec<(&str, &[u8])> =
                r.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
            expected += BatchBuilder::record_len(r.key.as_deref(), &headers, &r.value);
            builder.push(spec.timestamp(i), r.key.as_deref(), &headers, &r.value).unwrap();
            prop_assert_eq!(builder.encoded_len(), expected);
            prop_assert_eq!(builder.len() as usize, i + 1);
        }
        let bytes = builder.finish().unwrap();
        prop_assert_eq!(bytes.len(), expected);
        prop_assert_eq!(bytes, build_batch(&spec));
    }

    /// A frame that does not fit the limit is refused and leaves the
    /// buffer as it was.
    #[test]
    fn oversized_frames_are_refused_on_encode(frame in arb_frame(), extra in 1u32..64) {
        let wire = encode(&frame);
        let body_len = (wire.len() - FRAME_HEADER_LEN) as u32;
        prop_assume!(body_len > extra);
        let max = body_len - extra;
        let mut buf = BytesMut::from(&b"ab"[..]);
        let result = frame.encode(&mut buf, max);
        let refused = matches!(result, Err(EncodeError::FrameTooLarge { len, max: m })
            if len == body_len as usize && m == max as usize);
        prop_assert!(refused, "unexpected {:?}", result);
        prop_assert_eq!(&buf[..], b"ab");
        // Exactly at the limit it fits.
        prop_assert_eq!(frame.to_bytes(body_len), Ok(wire));
    }
}

#[test]
fn batch_with_many_headers_and_empty_values_round_trips() {
    let spec = BatchSpec {
        base_timestamp: 42,
        producer: None,
        records: (0..3)
            .map(|i| common::RecordSpec {
                delta: i,
                key: if i == 1 { Some(vec![]) } else { None },
                headers: (0..500)
                    .map(|h| {
                        (
                            format!("h{h}"),
                            if h % 2 == 0 { vec![] } else { vec![h as u8] },
                        )
                    })
                    .collect(),
                value: vec![],
            })
            .collect(),
    };
    let bytes = build_batch(&spec);
    assert_batch_matches(&spec, bytes).unwrap();
}

#[test]
fn empty_key_and_missing_key_are_distinct() {
    let mut b = BatchBuilder::new(0);
    b.push(0, Some(b""), &[], b"v").unwrap();
    b.push(0, None, &[], b"v").unwrap();
    let batch = RecordBatch::parse(b.finish().unwrap()).unwrap();
    let keys: Vec<_> = batch.records().map(|r| r.key).collect();
    assert_eq!(keys, vec![Some(Bytes::new()), None]);
}
