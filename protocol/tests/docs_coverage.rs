//! docs/PROTOCOL.md is the specification other implementations are written
//! from; these tests fail when it falls behind the code.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use strongbox_protocol::batch::{BATCH_HEADER_LEN, BATCH_MAGIC, BatchBuilder, ProducerStamp};
use strongbox_protocol::frame::{
    ABSOLUTE_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE, Decoded, Frame, FrameType, MIN_MAX_FRAME_SIZE,
    decode_frame,
};
use strongbox_protocol::frames::control::{Hello, Ping};
use strongbox_protocol::frames::produce::{Produce, ProduceAck};
use strongbox_protocol::{ALPN, ErrorCode};

use common::{encode, unhex};

fn spec() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// True when `word` occurs in `line` not preceded or followed by an
/// identifier character (so `AclList` does not match `AclListResult`).
fn contains_word(line: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// The cells of every Markdown table row, trimmed, backticks removed.
fn table_rows(doc: &str) -> Vec<Vec<String>> {
    doc.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|') && l.ends_with('|') && l.len() > 1)
        .map(|l| {
            l[1..l.len() - 1]
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect()
}

#[test]
fn every_frame_type_is_documented_with_its_code() {
    let doc = spec();
    let missing: Vec<String> = FrameType::ALL
        .iter()
        .filter(|ty| {
            let upper = format!("0x{:04X}", ty.as_u16());
            let lower = format!("0x{:04x}", ty.as_u16());
            !doc.lines().any(|line| {
                (line.contains(&upper) || line.contains(&lower)) && contains_word(line, ty.name())
            })
        })
        .map(|ty| ty.to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "frame types missing from docs/PROTOCOL.md: {missing:?}"
    );
}

#[test]
fn every_frame_type_has_a_body_section() {
    let doc = spec();
    for ty in FrameType::ALL {
        let heading = format!("#### `0x{:04X}` {}", ty.as_u16(), ty.name());
        assert!(
            doc.lines().any(|l| l.trim() == heading),
            "docs/PROTOCOL.md has no section `{heading}`"
        );
    }
}

#[test]
fn every_error_code_is_documented_with_number_name_and_retriability() {
    let rows = table_rows(&spec());
    let mut missing = Vec::new();
    for code in ErrorCode::ALL {
        let number = code.as_u16().to_string();
        let row = rows
            .iter()
            .find(|cells| cells.len() >= 3 && cells[0] == number && cells[1] == code.name());
        match row {
            None => missing.push(code.to_string()),
            Some(cells) => {
                let documented = match cells[2].as_str() {
                    "yes" => true,
                    "no" => false,
                    other => panic!("{code}: retriable column says {other:?}"),
                };
                assert_eq!(
                    documented,
                    code.is_retriable(),
                    "{code}: retriable flag differs from the code"
                );
            }
        }
    }
    assert!(
        missing.is_empty(),
        "error codes missing from docs/PROTOCOL.md: {missing:?}"
    );
}

/// The reverse direction: the spec names no frame type or error code that
/// the code does not have (a stale or mistyped entry).
#[test]
fn the_spec_names_only_real_frame_types_and_error_codes() {
    let doc = spec();
    for cells in table_rows(&doc) {
        let first = cells[0].as_str();
        if let Some(hex) = first.strip_prefix("0x").filter(|h| h.len() == 4) {
            let code = u16::from_str_radix(hex, 16).expect("frame code in hex");
            let ty = FrameType::from_u16(code)
                .unwrap_or_else(|| panic!("spec lists unknown frame type {first}"));
            assert_eq!(cells[1], ty.name(), "spec names {first} differently");
        }
    }
    // Every numbered row of the error code table.
    let start = doc.find("\n## Error codes").expect("an error code section");
    let end = doc[start + 1..]
        .find("\n## ")
        .map_or(doc.len(), |e| start + 1 + e);
    let mut listed = 0;
    for cells in table_rows(&doc[start..end]) {
        let Ok(number) = cells[0].parse::<u16>() else {
            continue;
        };
        let code = ErrorCode::from_u16(number)
            .unwrap_or_else(|| panic!("spec lists unknown error code {number}"));
        assert_eq!(
            cells[1],
            code.name(),
            "spec names code {number} differently"
        );
        listed += 1;
    }
    assert_eq!(listed, ErrorCode::ALL.len(), "error code table rows");
    for line in doc.lines().filter(|l| l.starts_with("#### `0x")) {
        let code = &line["#### `0x".len().."#### `0x".len() + 4];
        let code = u16::from_str_radix(code, 16).expect("heading code in hex");
        assert!(FrameType::from_u16(code).is_some(), "stale heading {line}");
    }
}

#[test]
fn the_spec_states_the_codes_constants() {
    let doc = spec();
    let rows = table_rows(&doc);
    for (name, value) in [
        ("DEFAULT_MAX_FRAME_SIZE", DEFAULT_MAX_FRAME_SIZE),
        ("MIN_MAX_FRAME_SIZE", MIN_MAX_FRAME_SIZE),
        ("ABSOLUTE_MAX_FRAME_SIZE", ABSOLUTE_MAX_FRAME_SIZE),
    ] {
        let row = rows
            .iter()
            .find(|cells| cells[0] == name)
            .unwrap_or_else(|| panic!("no row for {name}"));
        assert!(
            row[1].replace(' ', "").contains(&value.to_string()),
            "{name}: spec says {:?}, code says {value}",
            row[1]
        );
    }
    let alpn = std::str::from_utf8(ALPN).unwrap();
    assert!(doc.contains(&format!("ALPN** `{alpn}`")), "ALPN {alpn}");
    assert!(
        doc.contains(&format!("`0x{BATCH_MAGIC:04X}`")),
        "batch magic"
    );
    assert!(
        doc.contains(&format!("### Header ({BATCH_HEADER_LEN} bytes)")),
        "batch header length"
    );
}

// ---- worked examples ------------------------------------------------------------

/// The hex of the example block after `<!-- example: NAME -->`, with the
/// `#` commentary removed.
fn examples(doc: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- example: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(lines.next().map(str::trim), Some("```text"), "{name}");
        let hex: String = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .map(|l| l.split('#').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" ");
        out.push((name.to_string(), unhex(&hex)));
    }
    out
}

fn example_frame(name: &str) -> Frame {
    match name {
        "ping" => Frame::Ping(Ping {
            nonce: 0x0102_0304_0506_0708,
        }),
        "hello" => Frame::Hello(Hello {
            versions: vec![1],
            client_name: "cli".into(),
            max_frame_size: 4 * 1024 * 1024,
            features: 0,
        }),
        "produce" => {
            let mut b = BatchBuilder::new(1_700_000_000_000);
            b.producer(ProducerStamp {
                producer_id: 7,
                epoch: 1,
                base_sequence: 0,
            });
            b.push(1_700_000_000_000, Some(b"k"), &[("h", b"v")], b"hi")
                .unwrap();
            b.push(1_700_000_000_005, None, &[], b"").unwrap();
            Frame::Produce(Produce {
                correlation_id: 1,
                topic: "orders".into(),
                partition: 0,
                batch: b.finish().unwrap(),
            })
        }
        "produce_ack" => Frame::ProduceAck(ProduceAck {
            correlation_id: 1,
            partition: 0,
            base_offset: 100,
            duplicate: false,
        }),
        other => panic!("docs/PROTOCOL.md has an example {other:?} that no test checks"),
    }
}

#[test]
fn worked_examples_decode_to_the_frames_they_describe() {
    let found = examples(&spec());
    let names: BTreeSet<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    let expected: BTreeSet<&str> = ["hello", "ping", "produce", "produce_ack"].into();
    assert_eq!(names, expected, "worked examples in docs/PROTOCOL.md");
    for (name, bytes) in found {
        let frame = example_frame(&name);
        assert_eq!(
            hex::encode(encode(&frame)),
            hex::encode(&bytes),
            "example {name}"
        );
        let bytes = Bytes::from(bytes);
        assert_eq!(
            decode_frame(&bytes, DEFAULT_MAX_FRAME_SIZE),
            Ok(Decoded::Frame(frame, bytes.len())),
            "example {name}"
        );
    }
}
