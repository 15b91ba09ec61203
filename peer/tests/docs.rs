//! docs/PROTOCOL.md's "Peer protocol" section states what the code does:
//! the ALPN, the header size, the default maximum, and every error code
//! with its number and name.

use strongbox_peer::ErrorCode;
use strongbox_peer::frame::{ALPN, DEFAULT_MAX_PAYLOAD, HEADER_LEN, MAX_ERROR_MESSAGE};

fn peer_section() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md");
    let start = doc
        .find("\n## Peer protocol")
        .expect("a Peer protocol section");
    let rest = &doc[start + 1..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

fn rows(section: &str) -> Vec<Vec<String>> {
    section
        .lines()
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
fn the_peer_section_matches_the_code() {
    let section = peer_section();
    let alpn = std::str::from_utf8(ALPN).expect("ascii");
    assert!(section.contains(&format!("`{alpn}`")), "ALPN {alpn}");
    assert!(section.contains(&format!("header ({HEADER_LEN} bytes)")));
    assert!(section.contains(&format!("{DEFAULT_MAX_PAYLOAD} bytes")));
    assert!(section.contains(&format!("{MAX_ERROR_MESSAGE} bytes")));
    let rows = rows(&section);
    for code in ErrorCode::ALL {
        let number = code.as_u16().to_string();
        assert!(
            rows.iter()
                .any(|r| r.len() >= 3 && r[0] == number && r[1] == code.name()),
            "peer error code {number} {} is not documented",
            code.name()
        );
    }
    let listed = rows
        .iter()
        .filter(|r| r.len() >= 3 && r[0].parse::<u16>().is_ok() && r[1].contains('_'))
        .count();
    assert_eq!(listed, ErrorCode::ALL.len(), "stale peer error code rows");
}
