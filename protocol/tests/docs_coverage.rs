//! docs/PROTOCOL.md is the specification other implementations are written
//! from; these tests fail when it falls behind the code. Its worked examples
//! are checked byte for byte in `golden.rs`.

mod common;

use std::path::Path;

use strongbox_protocol::batch::{BATCH_HEADER_LEN, BATCH_MAGIC, MAX_WIRE_BATCH_LEN};
use strongbox_protocol::frame::{
    ABSOLUTE_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE, FrameType, MIN_MAX_FRAME_SIZE,
};
use strongbox_protocol::frames::produce::PRODUCE_FRAMING;
use strongbox_protocol::frames::subscribe::RECORDS_FRAMING;
use strongbox_protocol::{ALPN, ErrorCode};

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
        ("RECORDS_FRAMING", RECORDS_FRAMING),
        ("PRODUCE_FRAMING", PRODUCE_FRAMING),
        ("MAX_WIRE_BATCH_LEN", MAX_WIRE_BATCH_LEN as u32),
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
