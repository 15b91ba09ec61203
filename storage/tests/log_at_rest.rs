//! No plaintext at rest: records carrying a marker are appended (in keys,
//! header values and values); no file under the data directory (logs,
//! envelopes, indexes, key files, the redb registry) contains the marker,
//! while the log still reads it back.

mod log_support;

use std::path::Path;

use std::sync::Arc;

use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
use strongbox_storage::keys::{FileKeyProvider, KeyManager};
use strongbox_storage::log::{Durability, PartitionLog};
use strongbox_storage::meta::MetaStore;

use log_support::config;

const MARKER: &[u8] = b"STRONGBOX-AT-REST-MARKER-5f1c9e";

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn assert_no_marker(root: &Path) -> usize {
    let mut files = Vec::new();
    files_under(root, &mut files);
    for f in &files {
        let data = std::fs::read(f).expect("read");
        assert!(
            !data.windows(MARKER.len()).any(|w| w == MARKER),
            "{} holds plaintext",
            f.display()
        );
        // A marker split across encodings would still show in its halves.
        let half = &MARKER[..MARKER.len() / 2];
        assert!(
            !data.windows(half.len()).any(|w| w == half),
            "{} holds part of the plaintext",
            f.display()
        );
    }
    files.len()
}

#[test]
fn no_file_holds_the_plaintext() {
    // The whole data directory as the broker lays it out: key files, the
    // key registry in redb, and the partition logs.
    let root = tempfile::tempdir().expect("tempdir");
    let provider = FileKeyProvider::open(root.path().join("keys")).expect("key provider");
    let meta = MetaStore::open(root.path().join("meta.redb")).expect("metadata store");
    let keys = Arc::new(KeyManager::new(Arc::new(provider), meta, 16));
    let mut written = Vec::new();
    for p in 0..2u32 {
        let log = PartitionLog::open(
            root.path().join(format!("p{p}")),
            config(p, 4096, Durability::Fsync),
            keys.clone(),
        )
        .expect("open");
        for i in 0..40i64 {
            let mut b = BatchBuilder::new(1_700_000_000_000 + i);
            let mut value = MARKER.to_vec();
            value.extend_from_slice(format!(" record {i}").as_bytes());
            b.push(
                1_700_000_000_000 + i,
                Some(MARKER),
                &[("note", MARKER)],
                &value,
            )
            .expect("push");
            b.push(1_700_000_000_000 + i, None, &[], MARKER)
                .expect("push");
            let batch = RecordBatch::parse(b.finish().expect("finish")).expect("parse");
            log.append(&batch)
                .expect("append")
                .durable
                .wait()
                .expect("durable");
            written.push(batch.as_bytes().clone());
        }
        // While open (active segment unsealed, everything fsynced) ...
        assert_no_marker(root.path());
        let read: Vec<_> = log
            .read(0, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        assert_eq!(
            read[..],
            written[written.len() - 40..],
            "the log holds the records"
        );
        assert!(
            read.iter()
                .all(|b| b.windows(MARKER.len()).any(|w| w == MARKER))
        );
        log.close().expect("close");
    }
    // ... and after closing (segments sealed, indexes and envelopes written,
    // the registry flushed).
    drop(keys);
    let files = assert_no_marker(root.path());
    assert!(
        files >= 2 * 3 * 2,
        "segments, indexes and envelopes were checked ({files})"
    );
}
