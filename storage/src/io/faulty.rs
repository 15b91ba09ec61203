//! [`FaultyIo`]: a [`StorageIo`] that makes chosen operations fail, for
//! tests of what the log does when the disk fills up or breaks.
//!
//! Each [`FaultRule`] names an operation, a path pattern, how many
//! matching calls to let through first and how many to fail. A fault is
//! what the kernel would return: `ENOSPC`, `EIO`, or a short write (part of
//! the buffer is written and reported; the next write to the same file
//! fails with `ENOSPC`, as when the disk fills during a write). Everything
//! else goes to the backend underneath (the real file system by default).
//!
//! It also watches one rule the log must keep: after a failed
//! `sync_data`/`sync_all`, that handle is never synced again
//! ([`FaultyIo::syncs_after_failure`] counts the violations).
//!
//! ```
//! use std::sync::Arc;
//! use strongbox_storage::io::{Fault, FaultRule, FaultyIo, IoOp, OpenMode, PathMatch, StorageIo};
//!
//! let dir = tempfile::tempdir()?;
//! let io = FaultyIo::new();
//! io.arm(FaultRule::new(IoOp::Write, PathMatch::Suffix(".log".into()), Fault::Enospc).times(1));
//! let f = io.open(&dir.path().join("0.log"), OpenMode::CreateNew)?;
//! assert!(f.write_all_at(b"x", 0).is_err(), "the first write fails");
//! f.write_all_at(b"x", 0)?; // the second goes through
//! assert_eq!(io.injected(), 1);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{EntryMeta, FileIo, IoFile, OpenMode, StorageIo};

/// `ENOSPC` on Linux (and the BSDs).
const ENOSPC: i32 = 28;
/// `EIO` on Linux (and the BSDs).
const EIO: i32 = 5;

/// An operation a rule can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Opening an existing file ([`OpenMode::Read`], [`OpenMode::ReadWrite`]).
    Open,
    /// Creating a file ([`OpenMode::CreateNew`], [`OpenMode::Truncate`]).
    Create,
    /// A positional read.
    Read,
    /// A positional write.
    Write,
    /// `set_len`.
    SetLen,
    /// `sync_data` or `sync_all` of a file.
    Sync,
    /// `sync_dir`.
    SyncDir,
    /// A rename (matched on its source path).
    Rename,
    /// Removing a file or a directory.
    Remove,
    /// Creating a directory.
    CreateDir,
    /// Listing a directory.
    List,
}

/// Which paths a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// This path exactly.
    Exact(PathBuf),
    /// Paths whose file name ends with this (`".log"`, `".key"`).
    Suffix(String),
    /// Paths inside this directory (at any depth).
    Under(PathBuf),
}

impl PathMatch {
    fn matches(&self, path: &Path) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(p) => p == path,
            Self::Suffix(s) => path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(s.as_str())),
            Self::Under(dir) => path.starts_with(dir) && path != dir,
        }
    }
}

/// What a failing call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `ENOSPC`: no space left on the device.
    Enospc,
    /// `EIO`: an I/O error.
    Eio,
    /// For writes: half the buffer (at least a byte) is written and
    /// reported, and the next write to the same file fails with `ENOSPC`.
    /// Other operations fail with `ENOSPC`.
    ShortWrite,
}

/// One armed fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// The operation.
    pub op: IoOp,
    /// The paths.
    pub path: PathMatch,
    /// Matching calls let through before the first failure.
    pub skip: u64,
    /// Matching calls to fail after those; `None` fails every one.
    pub times: Option<u64>,
    /// The failure.
    pub fault: Fault,
}

impl FaultRule {
    /// Fails every matching call from now on.
    pub fn new(op: IoOp, path: PathMatch, fault: Fault) -> Self {
        Self {
            op,
            path,
            skip: 0,
            times: None,
            fault,
        }
    }

    /// Lets `n` matching calls through first.
    #[must_use]
    pub fn after(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// Fails only `n` matching calls.
    #[must_use]
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }
}

/// The handle [`FaultyIo::arm`] returns, to disarm the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

#[derive(Debug)]
struct Armed {
    id: RuleId,
    rule: FaultRule,
    seen: u64,
    fired: u64,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Armed>,
    next_id: u64,
    calls: HashMap<IoOp, u64>,
    injected: u64,
    syncs_after_failure: u64,
}

/// A [`StorageIo`] that fails chosen operations; see the module docs.
#[derive(Clone)]
pub struct FaultyIo {
    inner: Arc<dyn StorageIo>,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultyIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyIo")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Default for FaultyIo {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultyIo {
    /// Over the real file system, with no rule armed.
    pub fn new() -> Self {
        Self::over(Arc::new(FileIo))
    }

    /// Over `inner`, with no rule armed.
    pub fn over(inner: Arc<dyn StorageIo>) -> Self {
        Self {
            inner,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Arms `rule`; it applies to calls from now on.
    pub fn arm(&self, rule: FaultRule) -> RuleId {
        let mut st = self.lock();
        st.next_id = st.next_id.wrapping_add(1);
        let id = RuleId(st.next_id);
        st.rules.push(Armed {
            id,
            rule,
            seen: 0,
            fired: 0,
        });
        id
    }

    /// Disarms one rule.
    pub fn disarm(&self, id: RuleId) {
        self.lock().rules.retain(|a| a.id != id);
    }

    /// Disarms every rule: the disk works again.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Calls of `op` so far (failed ones included).
    pub fn calls(&self, op: IoOp) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Syncs of a file handle whose earlier sync failed: each is a bug in
    /// the caller (the kernel may report success for pages it dropped).
    pub fn syncs_after_failure(&self) -> u64 {
        self.lock().syncs_after_failure
    }

    fn check(&self, op: IoOp, path: &Path) -> Option<Fault> {
        check(&self.state, op, path)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Counters and rules stay consistent under a panic elsewhere.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts the call and returns the fault of the first rule that fires.
fn check(state: &Mutex<State>, op: IoOp, path: &Path) -> Option<Fault> {
    let mut st = lock(state);
    *st.calls.entry(op).or_insert(0) += 1;
    let mut fired = None;
    for a in st.rules.iter_mut() {
        if a.rule.op != op || !a.rule.path.matches(path) {
            continue;
        }
        a.seen = a.seen.saturating_add(1);
        if a.seen <= a.rule.skip || a.rule.times.is_some_and(|t| a.fired >= t) {
            continue;
        }
        a.fired = a.fired.saturating_add(1);
        fired = Some(a.rule.fault);
        break;
    }
    if fired.is_some() {
        st.injected = st.injected.saturating_add(1);
    }
    fired
}

fn error(fault: Fault, op: IoOp, path: &Path) -> io::Error {
    let errno = match fault {
        Fault::Eio => EIO,
        Fault::Enospc | Fault::ShortWrite => ENOSPC,
    };
    let base = io::Error::from_raw_os_error(errno);
    io::Error::new(
        base.kind(),
        format!("{base} (injected into {op:?} of {})", path.display()),
    )
}

fn fail_with<T>(
    io: &FaultyIo,
    op: IoOp,
    path: &Path,
    f: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    match io.check(op, path) {
        Some(fault) => Err(error(fault, op, path)),
        None => f(),
    }
}

impl StorageIo for FaultyIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let op = match mode {
            OpenMode::Read | OpenMode::ReadWrite => IoOp::Open,
            OpenMode::CreateNew | OpenMode::Truncate => IoOp::Create,
        };
        let inner = fail_with(self, op, path, || self.inner.open(path, mode))?;
        Ok(Arc::new(FaultyFile {
            inner,
            path: path.to_path_buf(),
            state: Arc::clone(&self.state),
            sync_failed: AtomicBool::new(false),
            full: AtomicBool::new(false),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fail_with(self, IoOp::Rename, from, || self.inner.rename(from, to))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fail_with(self, IoOp::Remove, path, || self.inner.remove_file(path))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fail_with(self, IoOp::CreateDir, path, || self.inner.create_dir(path))
    }

    fn create_private_dir(&self, path: &Path) -> io::Result<()> {
        fail_with(self, IoOp::CreateDir, path, || {
            self.inner.create_private_dir(path)
        })
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fail_with(self, IoOp::Remove, path, || self.inner.remove_dir(path))
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        fail_with(self, IoOp::SyncDir, path, || self.inner.sync_dir(path))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        fail_with(self, IoOp::List, path, || self.inner.list_dir(path))
    }

    fn metadata(&self, path: &Path) -> io::Result<EntryMeta> {
        self.inner.metadata(path)
    }
}

/// A file opened through [`FaultyIo`].
struct FaultyFile {
    inner: Arc<dyn IoFile>,
    path: PathBuf,
    state: Arc<Mutex<State>>,
    /// A sync of this handle failed.
    sync_failed: AtomicBool,
    /// A short write left the disk "full": the next write fails.
    full: AtomicBool,
}

impl fmt::Debug for FaultyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FaultyFile {
    fn sync(&self, f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        if self.sync_failed.load(Ordering::Acquire) {
            let mut st = lock(&self.state);
            st.syncs_after_failure = st.syncs_after_failure.saturating_add(1);
        }
        let result = match check(&self.state, IoOp::Sync, &self.path) {
            Some(fault) => Err(error(fault, IoOp::Sync, &self.path)),
            None => f(),
        };
        if result.is_err() {
            self.sync_failed.store(true, Ordering::Release);
        }
        result
    }
}

impl IoFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        match check(&self.state, IoOp::Read, &self.path) {
            Some(fault) => Err(error(fault, IoOp::Read, &self.path)),
            None => self.inner.read_at(buf, pos),
        }
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        if self.full.swap(false, Ordering::AcqRel) {
            return Err(error(Fault::Enospc, IoOp::Write, &self.path));
        }
        match check(&self.state, IoOp::Write, &self.path) {
            Some(Fault::ShortWrite) if buf.len() > 1 => {
                let half = buf.get(..buf.len() / 2).unwrap_or_default();
                let n = self.inner.write_at(half, pos)?;
                self.full.store(true, Ordering::Release);
                Ok(n)
            }
            Some(fault) => Err(error(fault, IoOp::Write, &self.path)),
            None => self.inner.write_at(buf, pos),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        match check(&self.state, IoOp::SetLen, &self.path) {
            Some(fault) => Err(error(fault, IoOp::SetLen, &self.path)),
            None => self.inner.set_len(len),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync(|| self.inner.sync_data())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync(|| self.inner.sync_all())
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_skip_fire_and_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = FaultyIo::new();
        io.arm(
            FaultRule::new(IoOp::Write, PathMatch::Suffix(".log".into()), Fault::Eio)
                .after(1)
                .times(2),
        );
        let log = io
            .open(&dir.path().join("a.log"), OpenMode::CreateNew)
            .expect("create");
        let other = io
            .open(&dir.path().join("a.key"), OpenMode::CreateNew)
            .expect("create");
        log.write_all_at(b"1", 0).expect("let through");
        let e = log.write_all_at(b"2", 1).expect_err("fails");
        assert_eq!(e.raw_os_error(), None, "wrapped with a message");
        assert!(e.to_string().contains("a.log"), "{e}");
        other.write_all_at(b"k", 0).expect("other paths unaffected");
        assert!(log.write_all_at(b"3", 1).is_err());
        log.write_all_at(b"4", 1).expect("only twice");
        assert_eq!(io.injected(), 2);
        assert_eq!(io.calls(IoOp::Write), 5);
    }

    #[test]
    fn enospc_is_storage_full_and_short_writes_then_fill_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = FaultyIo::new();
        let f = io
            .open(&dir.path().join("s.log"), OpenMode::CreateNew)
            .expect("create");
        io.arm(FaultRule::new(IoOp::Write, PathMatch::Any, Fault::ShortWrite).times(1));
        assert_eq!(f.write_at(b"abcdef", 0).expect("short"), 3);
        let e = f.write_at(b"def", 3).expect_err("then full");
        assert!(super::super::is_storage_full(&e), "{e:?}");
        f.write_all_at(b"def", 3).expect("space again");
        assert_eq!(io.read(&dir.path().join("s.log")).expect("read"), b"abcdef");
    }

    #[test]
    fn a_sync_after_a_failed_sync_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = FaultyIo::new();
        let f = io
            .open(&dir.path().join("x"), OpenMode::CreateNew)
            .expect("create");
        io.arm(FaultRule::new(IoOp::Sync, PathMatch::Any, Fault::Eio).times(1));
        assert!(f.sync_data().is_err());
        assert_eq!(io.syncs_after_failure(), 0);
        f.sync_data().expect("the retry reports success");
        assert_eq!(io.syncs_after_failure(), 1, "and is counted as a bug");
        let fresh = io
            .open(&dir.path().join("x"), OpenMode::ReadWrite)
            .expect("reopen");
        fresh.sync_data().expect("a new handle may sync");
        assert_eq!(io.syncs_after_failure(), 1);
    }
}
