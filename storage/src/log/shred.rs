//! Removing a whole partition directory for good (its topic is deleted),
//! key envelopes first.

use std::path::Path;

use crate::io::{StorageIo, durable};

use super::error::LogError;
use super::files;
use super::format::{LogFile, parse_file_name};

/// Deletes the partition directory `dir` and everything in it, durably and
/// in the order that shreds it: the key envelopes (and any envelope being
/// written, `*.tmp`) go first and the directory is synced, so from there on
/// the data cannot be decrypted even from a copy of the disk; then every
/// other file and the directory itself, and the directory's parent is
/// synced. The log must be closed. A directory that is already gone is not
/// an error (returns `false`).
///
/// # Errors
///
/// A listing, removal or sync failed; calling again finishes the job.
pub fn remove_partition_dir(io: &dyn StorageIo, dir: &Path) -> Result<bool, LogError> {
    let names = match io.list_dir(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(files::io_err("listing", dir)(e)),
    };
    let mut shredded = false;
    for name in names {
        let keyish = name
            .to_str()
            .and_then(parse_file_name)
            .is_some_and(|f| matches!(f, LogFile::Key(_) | LogFile::Temporary));
        if keyish {
            shredded |= files::remove_if_exists(io, &dir.join(&name))?;
        }
    }
    if shredded {
        files::sync_dir(io, dir)?;
    }
    durable::remove_dir_all(io, dir).map_err(files::step_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{OpenMode, PowerLossIo};

    #[test]
    fn envelopes_are_gone_before_anything_else_is_removed() {
        let io = PowerLossIo::new();
        let dir = Path::new("/data/log/t/0");
        durable::create_dir_all(&io, dir).expect("dir");
        for name in [
            "00000000000000000000.log",
            "00000000000000000000.key",
            "00000000000000000005.key.tmp",
        ] {
            durable::create_file(&io, &dir.join(name)).expect("file");
        }
        // Power off right after the envelopes' removal was made durable
        // (two removals and one directory sync).
        io.cut_after(3);
        assert!(remove_partition_dir(&io, dir).expect("remove"));
        let after = io.restart(None);
        assert_eq!(
            after.list_dir(dir).expect("still there"),
            vec!["00000000000000000000.log"],
            "only the data, which cannot be decrypted any more"
        );
        assert!(remove_partition_dir(&after, dir).expect("finish"));
        assert!(!remove_partition_dir(&after, dir).expect("gone"));
        let again = after.restart(None);
        assert!(
            again
                .list_dir(Path::new("/data/log/t"))
                .expect("t")
                .is_empty()
        );
        assert!(again.open(&dir.join("x"), OpenMode::Read).is_err());
    }
}
