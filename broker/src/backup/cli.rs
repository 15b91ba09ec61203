//! `strongbox-broker backup --config FILE --to DIR`: asks the running broker
//! for a consistent snapshot over its control socket, copies the staged
//! files into DIR, writes `backup.json` last, and releases the snapshot.
//!
//! DIR is laid out as a data directory (`meta.redb`, `log/<topic id>/<n>/`)
//! plus `backup.json`; restoring is copying it into an empty data directory
//! of a broker that uses the same key provider (docs/OPERATIONS.md,
//! "Backup and restore").

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::control::{Request, Response};
use super::manifest::{MANIFEST_FILE, META_FILE, Manifest, is_contained};
use super::snapshot::{create_private_dir, sync_dir};
use super::{BackupError, socket_path};
use crate::config::BrokerConfig;

/// Largest response line read from the broker (a manifest lists every
/// file; a million files fit).
const MAX_RESPONSE: u64 = 256 * 1024 * 1024;
/// Time the broker gets to pin the snapshot.
const PIN_TIMEOUT: Duration = Duration::from_secs(600);

/// `strongbox-broker backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The configuration of the running broker: its broker.data_dir says
    /// where to find it.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// The backup directory to write: created if missing, refused if it
    /// holds anything.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
}

/// Runs the command: a summary on stdout, errors on stderr; exit 0 when
/// the backup is complete, 1 otherwise.
pub fn run_cli(args: &BackupArgs) -> ExitCode {
    crate::logging::init_cli("warn");
    let config = match BrokerConfig::load(&args.config).and_then(BrokerConfig::validate) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: config {}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    match backup(&config, &args.to) {
        Ok(m) => {
            let ready = m.partitions.iter().filter(|p| p.status == "ready").count();
            println!(
                "backed up broker {} at {} to {}: metadata store ({} entries), {} partition(s), \
                 {} file(s), {} bytes",
                m.broker_id,
                m.created_at,
                args.to.display(),
                m.metadata.entries,
                m.partitions.len(),
                m.file_count(),
                m.total_bytes()
            );
            let unavailable = m.partitions.len().saturating_sub(ready);
            if unavailable > 0 {
                println!(
                    "warning: {unavailable} partition(s) were unavailable on the broker; their \
                     files are copied as they were found (see backup.json)"
                );
            }
            println!(
                "restoring needs the same key provider ({}: {}); the backup holds no key material",
                m.key_provider.kind, m.key_provider.location
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Takes a backup of the broker that runs with `config` into `to`.
///
/// # Errors
///
/// [`BackupError`]: no broker runs, it refused, `to` is not empty, or a
/// copy failed (the partial copy is removed; a directory without
/// `backup.json` is never a complete backup).
pub fn backup(config: &BrokerConfig, to: &Path) -> Result<Manifest, BackupError> {
    prepare_target(to)?;
    let data_dir = &config.broker.data_dir;
    let socket = socket_path(data_dir);
    let stream = UnixStream::connect(&socket).map_err(|e| BackupError::NoBroker {
        data_dir: data_dir.clone(),
        socket: socket.clone(),
        reason: e.to_string(),
    })?;
    stream
        .set_read_timeout(Some(PIN_TIMEOUT))
        .map_err(|e| BackupError::Protocol(e.to_string()))?;
    let mut exchange = Exchange {
        reader: BufReader::new(
            stream
                .try_clone()
                .map_err(|e| BackupError::Protocol(e.to_string()))?,
        ),
        writer: stream,
    };
    exchange.send(&Request::Backup {})?;
    let answer = exchange.receive()?;
    if !answer.ok {
        return Err(BackupError::Refused(
            answer.error.unwrap_or_else(|| "no reason given".into()),
        ));
    }
    let (Some(staging), Some(manifest)) = (answer.staging, answer.manifest) else {
        return Err(BackupError::Protocol(
            "the answer names no staging directory or manifest".into(),
        ));
    };
    let copied = copy_all(Path::new(&staging), &manifest, to);
    // Whatever happened, let the broker drop the staging directory.
    let released = exchange.send(&Request::Release {
        copied: copied.is_ok(),
    });
    if let Err(e) = copied {
        clear(to);
        return Err(e);
    }
    released?;
    exchange.receive()?;
    Ok(*manifest)
}

struct Exchange {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Exchange {
    fn send(&mut self, request: &Request) -> Result<(), BackupError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| BackupError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| BackupError::Protocol(format!("sending the request: {e}")))
    }

    fn receive(&mut self) -> Result<Response, BackupError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_RESPONSE)
            .read_line(&mut line)
            .map_err(|e| BackupError::Protocol(format!("reading the answer: {e}")))?;
        if n == 0 || !line.ends_with('\n') {
            return Err(BackupError::Protocol(
                "the broker closed the connection without an answer (see its log)".into(),
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| BackupError::Protocol(format!("the answer does not parse: {e}")))
    }
}

/// `to` must be missing or an empty directory; it ends up an empty `0700`
/// directory.
fn prepare_target(to: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Target(format!(
                    "{} is not empty: give a new directory for each backup",
                    to.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_private_dir(to),
        Err(e) => Err(BackupError::io("opening the backup directory", to, e)),
    }
}

/// Removes what a failed copy left in `to` (it was empty before).
fn clear(to: &Path) {
    for name in [META_FILE, "log", MANIFEST_FILE] {
        let p = to.join(name);
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

fn copy_all(staging: &Path, manifest: &Manifest, to: &Path) -> Result<(), BackupError> {
    let bad = |p: &str| {
        BackupError::Protocol(format!(
            "the manifest names a path outside the backup: {p:?}"
        ))
    };
    if !is_contained(&manifest.metadata.file) {
        return Err(bad(&manifest.metadata.file));
    }
    let total = manifest.file_count();
    eprintln!(
        "copying the metadata store and {total} file(s), {} bytes, from {}",
        manifest.total_bytes(),
        staging.display()
    );
    copy_file(
        &staging.join(&manifest.metadata.file),
        &to.join(&manifest.metadata.file),
        manifest.metadata.bytes,
    )?;
    let mut done = 0usize;
    for partition in &manifest.partitions {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for file in &partition.files {
            if !is_contained(&file.path) {
                return Err(bad(&file.path));
            }
            let dest = to.join(&file.path);
            if let Some(parent) = dest.parent()
                && !dirs.iter().any(|d| d == parent)
            {
                create_private_dir(parent)?;
                dirs.push(parent.to_path_buf());
            }
            copy_file(&staging.join(&file.path), &dest, file.bytes)?;
            done = done.saturating_add(1);
        }
        // An empty partition is still a directory of the data directory.
        let dir = to
            .join("log")
            .join(&partition.topic_id)
            .join(partition.partition.to_string());
        if !is_contained(&partition.topic_id) {
            return Err(bad(&partition.topic_id));
        }
        create_private_dir(&dir)?;
        for d in dirs.iter().chain(std::iter::once(&dir)) {
            sync_dir(d)?;
        }
        eprintln!(
            "  {}/{}: {} file(s) ({done}/{total})",
            partition.topic,
            partition.partition,
            partition.files.len()
        );
    }
    sync_tree(&to.join("log"))?;
    write_manifest(to, manifest)
}

/// Copies the first `bytes` bytes of `from` to the new file `to` and
/// syncs it.
fn copy_file(from: &Path, to: &Path, bytes: u64) -> Result<(), BackupError> {
    let source = File::open(from).map_err(|e| BackupError::io("opening", from, e))?;
    let mut dest = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| BackupError::io("creating", to, e))?;
    let copied = std::io::copy(&mut source.take(bytes), &mut dest)
        .map_err(|e| BackupError::io("copying", from, e))?;
    if copied != bytes {
        return Err(BackupError::Target(format!(
            "{} holds {copied} bytes, the snapshot pinned {bytes}: it changed during the \
             backup (the broker restarted?); take the backup again",
            from.display()
        )));
    }
    dest.sync_all()
        .map_err(|e| BackupError::io("syncing", to, e))
}

/// Syncs every directory under `root` (and `root`), so that the names of
/// the copied files are durable.
fn sync_tree(root: &Path) -> Result<(), BackupError> {
    if !root.is_dir() {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| BackupError::io("reading", &dir, e))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        sync_dir(&dir)?;
    }
    Ok(())
}

/// Writes `backup.json` atomically, last: its presence marks a complete
/// backup.
fn write_manifest(to: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let text = serde_json::to_vec_pretty(manifest)
        .map_err(|e| BackupError::Protocol(format!("encoding the manifest: {e}")))?;
    let tmp = to.join(format!("{MANIFEST_FILE}.tmp"));
    let dest = to.join(MANIFEST_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| BackupError::io("creating", &tmp, e))?;
    f.write_all(&text)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| BackupError::io("writing", &tmp, e))?;
    strongbox_storage::io::durable::rename(&strongbox_storage::io::FileIo, &tmp, &dest)
        .map_err(|e| BackupError::io("renaming", &dest, e.into()))
}
