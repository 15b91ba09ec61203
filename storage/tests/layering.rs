//! Storage depends on the protocol crate for the record batch format, the
//! domain model and the byte reader, never for the wire's frames or
//! sessions: a change to a frame must not change what storage does. This
//! test reads the crate's sources and fails on any such import.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn storage_never_imports_the_wire_frames() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    assert!(files.len() > 10, "found only {files:?}");
    let forbidden = [
        "strongbox_protocol::frame::",
        "strongbox_protocol::frame;",
        "strongbox_protocol::frames",
        "strongbox_protocol::session",
        "strongbox_protocol::Frame",
    ];
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "storage imports the wire:\n{}",
        found.join("\n")
    );
}
