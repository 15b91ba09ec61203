//! Where checkpoints go besides `_audit`: a directory outside the data
//! directory, and standard output.
//!
//! In `checkpoints.export_dir`, each checkpoint is appended as one line to
//! `<broker id>.checkpoints.jsonl` (fdatasync'd: the history) and replaces
//! `<broker id>.latest.json` (temporary file, fsync, rename, directory
//! fsync: never a torn file under the name). The directory is created with
//! storage's durable helper (each new level's parent fsynced), and the
//! directory fsync after the rename also makes a new history file's name
//! durable. Either file is what
//! `verify --checkpoint` takes; it checks the last line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use strongbox_storage::io::{FileIo, durable};

/// The history file of `broker_id` in `dir`.
pub(crate) fn history_path(dir: &Path, broker_id: &str) -> PathBuf {
    dir.join(format!("{broker_id}.checkpoints.jsonl"))
}

/// The newest-checkpoint file of `broker_id` in `dir`.
pub(crate) fn latest_path(dir: &Path, broker_id: &str) -> PathBuf {
    dir.join(format!("{broker_id}.latest.json"))
}

/// Writes `line` to both files.
///
/// # Errors
///
/// The directory cannot be created, or a write or sync fails.
pub(crate) fn write(dir: &Path, broker_id: &str, line: &str) -> io::Result<()> {
    durable::create_private_dir_all(&FileIo, dir)?;
    let mut history = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(history_path(dir, broker_id))?;
    history.write_all(format!("{line}\n").as_bytes())?;
    history.sync_data()?;

    let latest = latest_path(dir, broker_id);
    let tmp = dir.join(format!(
        ".{broker_id}.latest.json.{}.tmp",
        std::process::id()
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &latest)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Prints `line` on standard output, whole, for log shipping.
pub(crate) fn print(line: &str) {
    let mut out = io::stdout().lock();
    // A closed stdout must not stop the broker.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_history_and_replaces_latest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("checkpoints");
        write(&out, "b1", "{\"n\":1}").expect("first");
        write(&out, "b1", "{\"n\":2}").expect("second");
        assert_eq!(
            fs::read_to_string(history_path(&out, "b1")).expect("history"),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        assert_eq!(
            fs::read_to_string(latest_path(&out, "b1")).expect("latest"),
            "{\"n\":2}\n"
        );
        let names: Vec<String> = fs::read_dir(&out)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }
}
