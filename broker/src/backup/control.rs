//! The broker's local control socket: `<data_dir>/control.sock`.
//!
//! Only processes of the broker's own user (or root) may use it: the socket
//! file is `0600` inside the `0700` data directory, and the peer's
//! credentials (`SO_PEERCRED`) are checked on every connection. It serves
//! one request, `backup`; a connection carries one exchange, one JSON
//! object per line:
//!
//! ```text
//! client: {"request":"backup"}
//! broker: {"ok":true,"staging":"/var/lib/strongbox/backup-staging/1740830400000","manifest":{...}}
//! client: (copies the staged files)
//! client: {"request":"release","copied":true}
//! broker: {"ok":true}
//! ```
//!
//! A refusal is `{"ok":false,"error":"..."}`. The staging directory lives
//! as long as the connection: the broker removes it when the client
//! releases it or disconnects, and at its next start if it stopped
//! meanwhile. One backup runs at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::manifest::Manifest;
use super::{BackupError, socket_path, staging_root};
use crate::services::BrokerState;

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 4096;
/// Time allowed for the request line to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handled at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 4;
/// Longest path a Unix socket address holds (Linux `sun_path`, less its
/// terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Pin a consistent copy and describe it. (A struct variant: serde
    /// refuses unknown fields only in those.)
    Backup {},
    /// The copy is over (`copied`: it succeeded); remove the staging
    /// directory.
    Release {
        /// Whether the client copied everything.
        copied: bool,
    },
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The staging directory (a `backup` answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<String>,
    /// What was pinned (a `backup` answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Box<Manifest>>,
}

impl Response {
    fn ok() -> Self {
        Self {
            ok: true,
            error: None,
            staging: None,
            manifest: None,
        }
    }

    fn refused(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            staging: None,
            manifest: None,
        }
    }
}

/// Backup metrics.
#[derive(Debug, Clone)]
pub struct BackupMetrics {
    /// Backups finished, by `result` (`success`, `failure`).
    results: IntCounterVec,
    /// When the last backup that the client reported copied finished.
    last_success: IntGauge,
}

impl BackupMetrics {
    /// Registers the families on `registry`.
    ///
    /// # Errors
    ///
    /// A name already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let results = IntCounterVec::new(
            Opts::new(
                "strongbox_backups_total",
                "Backups taken through the control socket, by result.",
            ),
            &["result"],
        )?;
        let last_success = IntGauge::new(
            "strongbox_backup_last_success_timestamp_seconds",
            "When the last successful backup finished, seconds since the Unix epoch (0: none since start).",
        )?;
        registry.register(Box::new(results.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        for r in ["success", "failure"] {
            results.with_label_values(&[r]);
        }
        Ok(Self {
            results,
            last_success,
        })
    }
}

/// The bound control socket.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Removes what a previous run left (its socket file, its staging
    /// directory) and binds `<data_dir>/control.sock`, mode 0600. Must run
    /// inside a tokio runtime, after the data directory is open (the
    /// metadata store's lock proves no other broker uses it).
    ///
    /// # Errors
    ///
    /// The path is too long for a socket address, a file that is not a
    /// socket is in the way, or binding fails.
    pub fn bind(data_dir: &Path) -> Result<Self, BackupError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let path = socket_path(data_dir);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(BackupError::Target(format!(
                "the control socket path {} is longer than a Unix socket address allows \
                 ({MAX_SOCKET_PATH} bytes): use a shorter broker.data_dir",
                path.display()
            )));
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)
                .map_err(|e| BackupError::io("removing the stale socket", &path, e))?,
            Ok(_) => {
                return Err(BackupError::Target(format!(
                    "{} exists and is not a socket: move it away",
                    path.display()
                )));
            }
            Err(_) => {}
        }
        let staging = staging_root(data_dir);
        if staging.exists() {
            // Links to log files left by a backup that was running when the
            // broker stopped; the data stays in place.
            std::fs::remove_dir_all(&staging).map_err(|e| {
                BackupError::io("removing the stale staging directory", &staging, e)
            })?;
        }
        let listener =
            UnixListener::bind(&path).map_err(|e| BackupError::io("binding", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| BackupError::io("restricting", &path, e))?;
        Ok(Self { listener, path })
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown` turns true, then removes the
    /// socket file.
    pub async fn serve(
        self,
        state: Arc<BrokerState>,
        metrics: BackupMetrics,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let busy = Arc::new(AtomicBool::new(false));
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = crate::shutdown::stopped(&mut shutdown) => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                a = self.listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                continue;
            };
            let conn = Connection {
                state: state.clone(),
                metrics: metrics.clone(),
                busy: busy.clone(),
                shutdown: shutdown.clone(),
            };
            tasks.spawn(async move {
                let _permit = permit;
                conn.serve(stream).await;
            });
        }
        // Handlers waiting for a release see the shutdown and finish; a
        // pin in progress is given a moment to end rather than abandoned.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tasks.shutdown().await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Connection {
    state: Arc<BrokerState>,
    metrics: BackupMetrics,
    busy: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(mut self, stream: UnixStream) {
        if let Err(why) = peer_allowed(&stream) {
            tracing::warn!(reason = %why, "control socket: connection refused");
            return;
        }
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut read)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(why)) => {
                let _ = send(&mut write, &Response::refused(why)).await;
                return;
            }
            Err(_) => return,
        };
        match request {
            Request::Backup {} => self.backup(&mut read, &mut write).await,
            Request::Release { .. } => {
                let _ = send(&mut write, &Response::refused("no backup to release")).await;
            }
        }
    }

    async fn backup(
        &mut self,
        read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
        write: &mut tokio::net::unix::OwnedWriteHalf,
    ) {
        if self.busy.swap(true, Ordering::AcqRel) {
            let _ = send(write, &Response::refused("a backup is already in progress")).await;
            return;
        }
        let _busy = ClearOnDrop(self.busy.clone());
        let staging = staging_root(&self.state.config.broker.data_dir)
            .join(strongbox_protocol::clock::now_ms().to_string());
        let pinned = {
            let _admin = self.state.admin_lock.lock().await;
            let state = self.state.clone();
            let dir = staging.clone();
            tokio::task::spawn_blocking(move || super::snapshot::pin(&state, &dir)).await
        };
        let manifest = match pinned {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "backup failed");
                self.finish(&staging, false).await;
                let _ = send(write, &Response::refused(e.to_string())).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "backup task failed");
                self.finish(&staging, false).await;
                let _ = send(write, &Response::refused("the backup task failed")).await;
                return;
            }
        };
        tracing::info!(
            staging = %staging.display(),
            partitions = manifest.partitions.len(),
            files = manifest.file_count(),
            bytes = manifest.total_bytes(),
            "backup pinned; waiting for the copy"
        );
        let answer = Response {
            ok: true,
            error: None,
            staging: Some(staging.display().to_string()),
            manifest: Some(Box::new(manifest)),
        };
        if send(write, &answer).await.is_err() {
            self.finish(&staging, false).await;
            return;
        }
        // The copy takes as long as it takes; the staging directory lives
        // until the client says it is done or goes away.
        let released = tokio::select! {
            r = read_request(read) => r,
            () = crate::shutdown::stopped(&mut self.shutdown) => Ok(None),
        };
        let copied = matches!(released, Ok(Some(Request::Release { copied: true })));
        self.finish(&staging, copied).await;
        if released.is_ok_and(|r| r.is_some()) {
            let _ = send(write, &Response::ok()).await;
        }
    }

    /// Removes the staging directory and counts the outcome.
    async fn finish(&self, staging: &Path, copied: bool) {
        let dir = staging.to_path_buf();
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(staging = %staging.display(), error = %e, "cannot remove the backup staging directory; it is removed at the next start");
        }
        let result = if copied { "success" } else { "failure" };
        self.metrics.results.with_label_values(&[result]).inc();
        if copied {
            self.metrics
                .last_success
                .set(strongbox_protocol::clock::now_ms() / 1000);
            tracing::info!("backup copied and released");
        } else {
            tracing::warn!("backup abandoned before the copy finished; nothing kept");
        }
    }
}

struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The peer runs as the broker's user, or as root.
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let creds = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if creds.uid() == me || creds.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "peer uid {} is neither the broker's ({me}) nor root",
            creds.uid()
        ))
    }
}

/// Reads one request line: `None` at a clean end of stream.
async fn read_request<R: AsyncBufRead + Unpin>(read: &mut R) -> Result<Option<Request>, String> {
    match read_line(read, MAX_REQUEST).await? {
        None => Ok(None),
        Some(line) => serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| format!("not a request: {e}")),
    }
}

/// Reads up to a newline, at most `max` bytes; `None` at end of stream
/// before any byte.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    read: &mut R,
    max: usize,
) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    loop {
        let buf = read.fill_buf().await.map_err(|e| e.to_string())?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err("the line ends without a newline".into())
            };
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i.saturating_add(1), true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(buf.get(..take).unwrap_or_default());
        read.consume(take);
        if line.len() > max {
            return Err(format!("a line is longer than {max} bytes"));
        }
        if done {
            line.pop();
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| "the line is not UTF-8".into());
        }
    }
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict() {
        let r: Request = serde_json::from_str(r#"{"request":"backup"}"#).expect("backup");
        assert_eq!(r, Request::Backup {});
        let r: Request =
            serde_json::from_str(r#"{"request":"release","copied":true}"#).expect("release");
        assert_eq!(r, Request::Release { copied: true });
        for bad in [
            r#"{"request":"shutdown"}"#,
            r#"{"request":"backup","to":"/tmp"}"#,
            r#"{"request":"release"}"#,
            "[]",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut ok = BufReader::new(&b"{\"request\":\"backup\"}\nrest"[..]);
        assert_eq!(
            read_request(&mut ok).await.expect("line"),
            Some(Request::Backup {})
        );
        let long = vec![b'x'; MAX_REQUEST + 10];
        let mut too_long = BufReader::new(&long[..]);
        assert!(read_line(&mut too_long, MAX_REQUEST).await.is_err());
        let mut empty = BufReader::new(&b""[..]);
        assert_eq!(read_line(&mut empty, 10).await.expect("eof"), None);
        let mut cut = BufReader::new(&b"{\"req"[..]);
        assert!(read_line(&mut cut, 100).await.is_err());
    }
}
