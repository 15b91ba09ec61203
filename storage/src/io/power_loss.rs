//! [`PowerLossIo`]: an in-memory file system that knows what was made
//! durable, and can cut the power.
//!
//! A killed process cannot show a missing `fsync`: the page cache outlives
//! it. This backend keeps, for every file and directory, two states: what
//! the running system sees (*live*) and what is on the simulated disk
//! (*durable*), and moves the second only when POSIX says it moves:
//!
//! - a file's data and length, on `sync_data` / `sync_all` of that file;
//! - a directory's entries (names created, renamed, removed in it), on
//!   `sync_dir` of that directory. A new directory is reachable after a
//!   power cut only if its name is durable in its parent, and so on up to
//!   the root: nothing inside a directory whose name was never synced
//!   survives, whatever was synced inside it.
//!
//! [`PowerLossIo::cut_after`] turns the power off after a number of
//! operations that change something (creates, writes, `set_len`, syncs,
//! renames, removals, new directories): the disk image is frozen at that
//! instant. The system goes on running against the live state (a real
//! machine would be dead; nothing it does afterwards reaches the disk), so
//! a test checks [`PowerLossIo::is_powered`] to know whether an
//! acknowledgement came before the cut. [`PowerLossIo::restart`] builds
//! the file system a reboot would find: the durable image, walked from the
//! root through durable entries. Optionally (`restart(Some(seed))`) it also
//! keeps a random prefix of what was written but not synced (the writes of
//! each file, and the entry changes of each directory, reach the disk in
//! order and stop at a random point, the last write possibly torn
//! halfway), as a disk that wrote back part of its cache would.
//! POSIX orders none of a directory's unsynced entry changes (only a
//! `sync_dir` between two changes puts the first on the disk before the
//! second), and two more restarts find them out of order:
//! [`PowerLossIo::restart_reordered`] keeps any subset or a suffix of them,
//! [`PowerLossIo::restart_newest_change_only`] the newest one alone, and
//! [`PowerLossIo::restart_oldest_change_only`] the oldest one alone.
//!
//! Paths are absolute; `/` always exists and is durable.
//!
//! ```
//! use std::path::Path;
//! use strongbox_storage::io::{OpenMode, PowerLossIo, StorageIo};
//!
//! let io = PowerLossIo::new();
//! io.create_dir(Path::new("/d"))?;
//! let f = io.open(Path::new("/d/f"), OpenMode::CreateNew)?;
//! f.write_all_at(b"data", 0)?;
//! f.sync_data()?;
//! // The file's data is durable, but not its name, nor its directory's.
//! let after = io.restart(None);
//! assert!(after.metadata(Path::new("/d")).is_err());
//!
//! io.sync_dir(Path::new("/d"))?;
//! io.sync_dir(Path::new("/"))?;
//! assert_eq!(io.restart(None).read(Path::new("/d/f"))?, b"data");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{EntryKind, EntryMeta, IoFile, OpenMode, StorageIo};

type Ino = usize;

/// The root directory's inode.
const ROOT: Ino = 0;

/// A change to a file's data not yet synced.
#[derive(Debug, Clone)]
enum DataOp {
    Write { pos: u64, bytes: Vec<u8> },
    SetLen(u64),
}

/// A change to a directory's entries not yet synced.
#[derive(Debug, Clone)]
enum EntryOp {
    Link(OsString, Ino),
    Unlink(OsString),
    /// A rename inside one directory: atomic even when torn.
    Rename(OsString, OsString, Ino),
}

/// What the disk holds for one inode, and what has not reached it.
#[derive(Debug, Clone)]
enum Disk {
    File {
        data: Vec<u8>,
        pending: Vec<DataOp>,
    },
    Dir {
        entries: BTreeMap<OsString, Ino>,
        pending: Vec<EntryOp>,
    },
}

/// What the running system sees of one inode.
#[derive(Debug, Clone)]
enum Live {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, Ino>),
}

#[derive(Debug, Clone)]
struct Node {
    live: Live,
    disk: Disk,
}

impl Node {
    fn dir(entries: BTreeMap<OsString, Ino>) -> Self {
        Self {
            live: Live::Dir(entries.clone()),
            disk: Disk::Dir {
                entries,
                pending: Vec::new(),
            },
        }
    }

    fn file(data: Vec<u8>) -> Self {
        Self {
            live: Live::File(data.clone()),
            disk: Disk::File {
                data,
                pending: Vec::new(),
            },
        }
    }

    fn kind(&self) -> EntryKind {
        match self.live {
            Live::File(_) => EntryKind::File,
            Live::Dir(_) => EntryKind::Dir,
        }
    }
}

#[derive(Debug)]
struct Sim {
    nodes: Vec<Node>,
    /// Operations that changed something, so far.
    ops: u64,
    /// The power goes off when `ops` reaches this.
    cut_at: Option<u64>,
    /// The disk as it was when the power went off.
    frozen: Option<Vec<Disk>>,
}

/// An in-memory [`StorageIo`] that simulates power loss; see the module
/// docs. Cheap to clone; clones share the file system.
#[derive(Clone)]
pub struct PowerLossIo {
    sim: Arc<Mutex<Sim>>,
}

impl fmt::Debug for PowerLossIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sim = self.lock();
        f.debug_struct("PowerLossIo")
            .field("inodes", &sim.nodes.len())
            .field("ops", &sim.ops)
            .field("powered", &sim.frozen.is_none())
            .finish()
    }
}

impl Default for PowerLossIo {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerLossIo {
    /// An empty file system: only `/`, powered on.
    pub fn new() -> Self {
        Self::from_nodes(vec![Node::dir(BTreeMap::new())])
    }

    fn from_nodes(nodes: Vec<Node>) -> Self {
        Self {
            sim: Arc::new(Mutex::new(Sim {
                nodes,
                ops: 0,
                cut_at: None,
                frozen: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sim> {
        // Every operation leaves the state consistent before it can panic.
        self.sim.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Operations that changed something so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Turns the power off once `n` more operations that change something
    /// have run (at once for `n == 0`): the disk image is frozen there.
    pub fn cut_after(&self, n: u64) {
        let mut sim = self.lock();
        let at = sim.ops.saturating_add(n);
        sim.cut_at = Some(at);
        sim.tick_check();
    }

    /// Whether the power is still on: an operation that returned while it
    /// was reached the disk as the POSIX rules say.
    pub fn is_powered(&self) -> bool {
        self.lock().frozen.is_none()
    }

    /// The file system a reboot finds: what was durable when the power went
    /// off (now, if it is still on), powered on again, with no file open.
    /// With `Some(seed)`, each file also keeps a random prefix of its
    /// unsynced writes (the last one possibly torn) and each directory a
    /// random prefix of its unsynced entry changes, drawn from `seed`.
    pub fn restart(&self, torn: Option<u64>) -> PowerLossIo {
        self.rebuild(torn.map(SplitMix::new), Entries::Prefix)
    }

    /// [`restart`](Self::restart) with a torn image whose directories keep
    /// their unsynced entry changes out of order: each one any subset of
    /// them, or a suffix (the newer changes without the older ones), drawn
    /// from `seed`. The kept changes apply in the order they were made.
    pub fn restart_reordered(&self, seed: u64) -> PowerLossIo {
        self.rebuild(Some(SplitMix::new(seed)), Entries::AnyOrder)
    }

    /// The file system a reboot finds when, of each directory, only the
    /// newest entry change since its last sync reached the disk (and of
    /// each file, only its synced data). POSIX allows it, and it is the
    /// order that most directly breaks a rule "this name goes before that
    /// one" kept without a `sync_dir` in between: a test that cuts the
    /// power at every operation finds each such rule with it.
    pub fn restart_newest_change_only(&self) -> PowerLossIo {
        self.rebuild(None, Entries::NewestOnly)
    }

    /// The file system a reboot finds when, of each directory, only the
    /// oldest entry change since its last sync reached the disk (and of
    /// each file, only its synced data). POSIX allows it too, and it breaks
    /// the converse rule most directly: "this new name must not be durable
    /// before that later removal is", such as a file created and an older
    /// one removed after it, with data made durable in the new file before
    /// the directory is synced.
    pub fn restart_oldest_change_only(&self) -> PowerLossIo {
        self.rebuild(None, Entries::OldestOnly)
    }

    fn rebuild(&self, rng: Option<SplitMix>, entries: Entries) -> PowerLossIo {
        let disks: Vec<Disk> = {
            let sim = self.lock();
            match &sim.frozen {
                Some(d) => d.clone(),
                None => sim.nodes.iter().map(|n| n.disk.clone()).collect(),
            }
        };
        let mut rebuild = Rebuild {
            disks: &disks,
            rng,
            entries,
            map: HashMap::new(),
            nodes: Vec::new(),
        };
        rebuild.node(ROOT);
        Self::from_nodes(rebuild.nodes)
    }

    /// Every path in the live tree with its kind and length, sorted (for
    /// messages of failing tests).
    pub fn tree(&self) -> Vec<(PathBuf, EntryKind, u64)> {
        let sim = self.lock();
        let mut out = Vec::new();
        let mut stack = vec![(PathBuf::from("/"), ROOT)];
        while let Some((path, ino)) = stack.pop() {
            if let Some(Live::Dir(entries)) = sim.nodes.get(ino).map(|n| &n.live) {
                for (name, child) in entries {
                    let p = path.join(name);
                    match sim.nodes.get(*child).map(|n| &n.live) {
                        Some(Live::Dir(_)) => {
                            out.push((p.clone(), EntryKind::Dir, 0));
                            stack.push((p, *child));
                        }
                        Some(Live::File(d)) => out.push((p, EntryKind::File, d.len() as u64)),
                        None => {}
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Which unsynced entry changes of a directory a restart keeps.
#[derive(Debug, Clone, Copy)]
enum Entries {
    /// A random prefix (with a torn image; none without).
    Prefix,
    /// A random subset or suffix.
    AnyOrder,
    /// The newest one alone.
    NewestOnly,
    /// The oldest one alone.
    OldestOnly,
}

/// Builds the nodes of a restarted file system from a disk image.
struct Rebuild<'a> {
    disks: &'a [Disk],
    rng: Option<SplitMix>,
    entries: Entries,
    /// Old inode → new inode.
    map: HashMap<Ino, Ino>,
    nodes: Vec<Node>,
}

impl Rebuild<'_> {
    fn node(&mut self, old: Ino) -> Ino {
        if let Some(new) = self.map.get(&old) {
            return *new;
        }
        let new = self.nodes.len();
        self.map.insert(old, new);
        match self.disks.get(old) {
            Some(Disk::File { data, pending }) => {
                let mut data = data.clone();
                if let Some(rng) = self.rng.as_mut() {
                    let keep = rng.below(pending.len() + 1);
                    for op in pending.iter().take(keep) {
                        apply_data(&mut data, op);
                    }
                    if let Some(DataOp::Write { pos, bytes }) = pending.get(keep)
                        && rng.below(2) == 0
                    {
                        let part = rng.below(bytes.len());
                        let torn = DataOp::Write {
                            pos: *pos,
                            bytes: bytes.get(..part).unwrap_or_default().to_vec(),
                        };
                        apply_data(&mut data, &torn);
                    }
                }
                self.nodes.push(Node::file(data));
            }
            Some(Disk::Dir { entries, pending }) => {
                self.nodes.push(Node::dir(BTreeMap::new()));
                let mut entries = entries.clone();
                let kept: Vec<&EntryOp> = match (self.entries, self.rng.as_mut()) {
                    (Entries::NewestOnly, _) => pending.last().into_iter().collect(),
                    (Entries::OldestOnly, _) => pending.first().into_iter().collect(),
                    (Entries::Prefix, Some(rng)) => {
                        let keep = rng.below(pending.len() + 1);
                        pending.iter().take(keep).collect()
                    }
                    (Entries::AnyOrder, Some(rng)) => out_of_order(rng, pending),
                    (_, None) => Vec::new(),
                };
                for op in kept {
                    apply_entry(&mut entries, op);
                }
                let mapped: BTreeMap<OsString, Ino> = entries
                    .into_iter()
                    .map(|(name, child)| (name, self.node(child)))
                    .collect();
                if let Some(n) = self.nodes.get_mut(new) {
                    *n = Node::dir(mapped);
                }
            }
            // An inode the image does not know: an empty directory keeps
            // the numbering valid (cannot happen for images made here).
            None => self.nodes.push(Node::dir(BTreeMap::new())),
        }
        new
    }
}

/// Unsynced entry changes of one directory that reached the disk out of
/// order, drawn from `rng`: any subset of them (no order at all), or a
/// suffix (the newer ones without the older, the order that breaks a
/// "remove this before that" rule most directly).
fn out_of_order<'a>(rng: &mut SplitMix, pending: &'a [EntryOp]) -> Vec<&'a EntryOp> {
    if rng.below(2) == 0 {
        pending.iter().filter(|_| rng.below(2) == 0).collect()
    } else {
        let skip = rng.below(pending.len() + 1);
        pending.iter().skip(skip).collect()
    }
}

fn apply_data(data: &mut Vec<u8>, op: &DataOp) {
    match op {
        DataOp::Write { pos, bytes } => write_into(data, *pos, bytes),
        DataOp::SetLen(len) => data.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
    }
}

fn write_into(data: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let pos = usize::try_from(pos).unwrap_or(usize::MAX);
    let end = pos.saturating_add(bytes.len());
    if data.len() < end {
        data.resize(end, 0);
    }
    if let Some(dst) = data.get_mut(pos..end) {
        dst.copy_from_slice(bytes);
    }
}

fn apply_entry(entries: &mut BTreeMap<OsString, Ino>, op: &EntryOp) {
    match op {
        EntryOp::Link(name, ino) => {
            entries.insert(name.clone(), *ino);
        }
        EntryOp::Unlink(name) => {
            entries.remove(name);
        }
        EntryOp::Rename(from, to, ino) => {
            entries.remove(from);
            entries.insert(to.clone(), *ino);
        }
    }
}

/// A small deterministic generator (SplitMix64) for torn images.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        match u64::try_from(n) {
            Ok(0) | Err(_) => 0,
            Ok(m) => usize::try_from(self.next() % m).unwrap_or(0),
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn error(kind: io::ErrorKind, what: &str, path: &Path) -> io::Error {
    io::Error::new(kind, format!("{}: {what}", path.display()))
}

/// The names of an absolute path.
fn names(path: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    let mut absolute = false;
    for c in path.components() {
        match c {
            Component::RootDir => absolute = true,
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(error(
                    io::ErrorKind::InvalidInput,
                    "the simulated file system takes plain absolute paths",
                    path,
                ));
            }
        }
    }
    if !absolute {
        return Err(error(
            io::ErrorKind::InvalidInput,
            "the simulated file system takes absolute paths",
            path,
        ));
    }
    Ok(out)
}

impl Sim {
    /// Freezes the disk if the power goes off at this operation.
    fn tick_check(&mut self) {
        if self.frozen.is_none() && self.cut_at.is_some_and(|at| self.ops >= at) {
            self.frozen = Some(self.nodes.iter().map(|n| n.disk.clone()).collect());
        }
    }

    /// Counts an operation that changes something.
    fn tick(&mut self) {
        self.tick_check();
        self.ops = self.ops.saturating_add(1);
    }

    fn entries(&self, ino: Ino, path: &Path) -> io::Result<&BTreeMap<OsString, Ino>> {
        match self.nodes.get(ino).map(|n| &n.live) {
            Some(Live::Dir(e)) => Ok(e),
            _ => Err(error(io::ErrorKind::NotADirectory, "not a directory", path)),
        }
    }

    fn resolve(&self, path: &Path) -> io::Result<Ino> {
        let mut ino = ROOT;
        for name in names(path)? {
            ino = *self
                .entries(ino, path)?
                .get(name)
                .ok_or_else(|| not_found(path))?;
        }
        Ok(ino)
    }

    /// The directory that holds `path`'s name, and the name.
    fn resolve_parent(&self, path: &Path) -> io::Result<(Ino, OsString)> {
        let mut all = names(path)?;
        let name = all
            .pop()
            .ok_or_else(|| error(io::ErrorKind::InvalidInput, "the root has no parent", path))?;
        let mut ino = ROOT;
        for n in all {
            ino = *self
                .entries(ino, path)?
                .get(n)
                .ok_or_else(|| not_found(path))?;
        }
        self.entries(ino, path)?;
        Ok((ino, name.to_os_string()))
    }

    fn node_mut(&mut self, ino: Ino) -> io::Result<&mut Node> {
        self.nodes
            .get_mut(ino)
            .ok_or_else(|| io::Error::other("the simulated inode is gone"))
    }

    /// Changes an entry of directory `dir`, live, and records it as not
    /// yet durable.
    fn change_entries(&mut self, dir: Ino, op: EntryOp) -> io::Result<()> {
        let node = self.node_mut(dir)?;
        if let Live::Dir(live) = &mut node.live {
            apply_entry(live, &op);
        }
        if let Disk::Dir { pending, .. } = &mut node.disk {
            pending.push(op);
        }
        Ok(())
    }

    fn change_data(&mut self, ino: Ino, op: DataOp) -> io::Result<()> {
        let node = self.node_mut(ino)?;
        if let Live::File(live) = &mut node.live {
            apply_data(live, &op);
        }
        if let Disk::File { pending, .. } = &mut node.disk {
            pending.push(op);
        }
        Ok(())
    }

    fn add_node(&mut self, dir: Ino, name: OsString, node: Node) -> io::Result<Ino> {
        let ino = self.nodes.len();
        self.nodes.push(node);
        self.change_entries(dir, EntryOp::Link(name, ino))?;
        Ok(ino)
    }

    fn sync_file(&mut self, ino: Ino) -> io::Result<()> {
        let node = self.node_mut(ino)?;
        if let (Live::File(live), Disk::File { data, pending }) = (&node.live, &mut node.disk) {
            data.clone_from(live);
            pending.clear();
        }
        Ok(())
    }

    fn kind_of(&self, ino: Ino) -> Option<EntryKind> {
        self.nodes.get(ino).map(Node::kind)
    }
}

impl StorageIo for PowerLossIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let mut sim = self.lock();
        let ino = match mode {
            OpenMode::Read | OpenMode::ReadWrite => sim.resolve(path)?,
            OpenMode::CreateNew | OpenMode::Truncate => {
                let (dir, name) = sim.resolve_parent(path)?;
                match sim.entries(dir, path)?.get(&name).copied() {
                    Some(_) if mode == OpenMode::CreateNew => {
                        return Err(error(io::ErrorKind::AlreadyExists, "exists", path));
                    }
                    Some(ino) => {
                        if sim.kind_of(ino) != Some(EntryKind::File) {
                            return Err(error(io::ErrorKind::IsADirectory, "is a directory", path));
                        }
                        sim.tick();
                        sim.change_data(ino, DataOp::SetLen(0))?;
                        ino
                    }
                    None => {
                        sim.tick();
                        sim.add_node(dir, name, Node::file(Vec::new()))?
                    }
                }
            }
        };
        if sim.kind_of(ino) != Some(EntryKind::File) {
            return Err(error(io::ErrorKind::IsADirectory, "is a directory", path));
        }
        Ok(Arc::new(SimFile {
            sim: Arc::clone(&self.sim),
            ino,
            path: path.to_path_buf(),
            writable: mode != OpenMode::Read,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut sim = self.lock();
        let (src, from_name) = sim.resolve_parent(from)?;
        let ino = *sim
            .entries(src, from)?
            .get(&from_name)
            .ok_or_else(|| not_found(from))?;
        let (dst, to_name) = sim.resolve_parent(to)?;
        if src == dst && from_name == to_name {
            return Ok(());
        }
        if let Some(existing) = sim.entries(dst, to)?.get(&to_name).copied() {
            match (sim.kind_of(ino), sim.kind_of(existing)) {
                (Some(EntryKind::File), Some(EntryKind::Dir)) => {
                    return Err(error(io::ErrorKind::IsADirectory, "is a directory", to));
                }
                (Some(EntryKind::Dir), Some(EntryKind::File)) => {
                    return Err(error(io::ErrorKind::NotADirectory, "not a directory", to));
                }
                (Some(EntryKind::Dir), Some(EntryKind::Dir))
                    if !sim.entries(existing, to)?.is_empty() =>
                {
                    return Err(error(
                        io::ErrorKind::DirectoryNotEmpty,
                        "directory not empty",
                        to,
                    ));
                }
                _ => {}
            }
        }
        sim.tick();
        if src == dst {
            sim.change_entries(src, EntryOp::Rename(from_name, to_name, ino))
        } else {
            sim.change_entries(src, EntryOp::Unlink(from_name))?;
            sim.change_entries(dst, EntryOp::Link(to_name, ino))
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut sim = self.lock();
        let (dir, name) = sim.resolve_parent(path)?;
        let ino = *sim
            .entries(dir, path)?
            .get(&name)
            .ok_or_else(|| not_found(path))?;
        if sim.kind_of(ino) != Some(EntryKind::File) {
            return Err(error(io::ErrorKind::IsADirectory, "is a directory", path));
        }
        sim.tick();
        sim.change_entries(dir, EntryOp::Unlink(name))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut sim = self.lock();
        let (dir, name) = sim.resolve_parent(path)?;
        if sim.entries(dir, path)?.contains_key(&name) {
            return Err(error(io::ErrorKind::AlreadyExists, "exists", path));
        }
        sim.tick();
        sim.add_node(dir, name, Node::dir(BTreeMap::new()))
            .map(|_| ())
    }

    fn create_private_dir(&self, path: &Path) -> io::Result<()> {
        // Modes are not simulated.
        self.create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut sim = self.lock();
        let (dir, name) = sim.resolve_parent(path)?;
        let ino = *sim
            .entries(dir, path)?
            .get(&name)
            .ok_or_else(|| not_found(path))?;
        if !sim.entries(ino, path)?.is_empty() {
            return Err(error(
                io::ErrorKind::DirectoryNotEmpty,
                "directory not empty",
                path,
            ));
        }
        sim.tick();
        sim.change_entries(dir, EntryOp::Unlink(name))
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut sim = self.lock();
        let ino = sim.resolve(path)?;
        sim.entries(ino, path)?;
        sim.tick();
        let node = sim.node_mut(ino)?;
        if let (Live::Dir(live), Disk::Dir { entries, pending }) = (&node.live, &mut node.disk) {
            entries.clone_from(live);
            pending.clear();
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let sim = self.lock();
        let ino = sim.resolve(path)?;
        Ok(sim.entries(ino, path)?.keys().cloned().collect())
    }

    fn metadata(&self, path: &Path) -> io::Result<EntryMeta> {
        let sim = self.lock();
        let ino = sim.resolve(path)?;
        match sim.nodes.get(ino).map(|n| &n.live) {
            Some(Live::File(d)) => Ok(EntryMeta {
                kind: EntryKind::File,
                len: d.len() as u64,
            }),
            Some(Live::Dir(_)) => Ok(EntryMeta {
                kind: EntryKind::Dir,
                len: 0,
            }),
            None => Err(not_found(path)),
        }
    }
}

/// A file open on a [`PowerLossIo`]. It refers to its inode, as a file
/// descriptor does: a rename or unlink of its name does not affect it.
struct SimFile {
    sim: Arc<Mutex<Sim>>,
    ino: Ino,
    path: PathBuf,
    writable: bool,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("path", &self.path)
            .field("ino", &self.ino)
            .finish()
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(error(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
                &self.path,
            ))
        }
    }
}

impl IoFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let sim = self.lock();
        let Some(Live::File(data)) = sim.nodes.get(self.ino).map(|n| &n.live) else {
            return Err(error(
                io::ErrorKind::IsADirectory,
                "is a directory",
                &self.path,
            ));
        };
        let start = usize::try_from(pos).unwrap_or(usize::MAX).min(data.len());
        let src = data.get(start..).unwrap_or_default();
        let n = src.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        self.check_writable()?;
        let mut sim = self.lock();
        sim.tick();
        sim.change_data(
            self.ino,
            DataOp::Write {
                pos,
                bytes: buf.to_vec(),
            },
        )?;
        Ok(buf.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut sim = self.lock();
        sim.tick();
        sim.change_data(self.ino, DataOp::SetLen(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut sim = self.lock();
        sim.tick();
        sim.sync_file(self.ino)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        let sim = self.lock();
        match sim.nodes.get(self.ino).map(|n| &n.live) {
            Some(Live::File(d)) => Ok(d.len() as u64),
            _ => Err(error(
                io::ErrorKind::IsADirectory,
                "is a directory",
                &self.path,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn unsynced_data_and_names_are_lost() {
        let io = PowerLossIo::new();
        io.create_dir(p("/d")).expect("mkdir");
        io.sync_dir(p("/")).expect("sync root");
        let f = io.open(p("/d/f"), OpenMode::CreateNew).expect("create");
        f.write_all_at(b"one", 0).expect("write");
        f.sync_data().expect("sync");
        f.write_all_at(b"two", 3).expect("write");

        // The name of f was never synced.
        let after = io.restart(None);
        assert!(after.list_dir(p("/d")).expect("d is durable").is_empty());

        io.sync_dir(p("/d")).expect("sync d");
        let after = io.restart(None);
        assert_eq!(
            after.read(p("/d/f")).expect("read"),
            b"one",
            "unsynced tail lost"
        );
    }

    #[test]
    fn a_directory_whose_name_is_not_durable_takes_its_contents_along() {
        let io = PowerLossIo::new();
        io.create_dir(p("/a")).expect("mkdir");
        io.create_dir(p("/a/b")).expect("mkdir");
        let f = io.open(p("/a/b/f"), OpenMode::CreateNew).expect("create");
        f.write_all_at(b"x", 0).expect("write");
        f.sync_data().expect("sync");
        io.sync_dir(p("/a/b")).expect("sync b");
        io.sync_dir(p("/a")).expect("sync a");
        // `/` never synced: `a` is not durable, nor anything under it.
        assert!(io.restart(None).list_dir(p("/")).expect("root").is_empty());
        io.sync_dir(p("/")).expect("sync root");
        assert_eq!(io.restart(None).read(p("/a/b/f")).expect("read"), b"x");
    }

    #[test]
    fn removals_and_renames_need_their_directory_synced() {
        let io = PowerLossIo::new();
        let f = io.open(p("/f"), OpenMode::CreateNew).expect("create");
        f.write_all_at(b"data", 0).expect("write");
        f.sync_all().expect("sync");
        io.sync_dir(p("/")).expect("sync");
        io.rename(p("/f"), p("/g")).expect("rename");
        io.open(p("/h"), OpenMode::CreateNew).expect("h");
        io.remove_file(p("/h")).expect("remove h");
        let after = io.restart(None);
        assert_eq!(after.list_dir(p("/")).expect("root"), vec!["f"]);
        io.sync_dir(p("/")).expect("sync");
        let after = io.restart(None);
        assert_eq!(after.list_dir(p("/")).expect("root"), vec!["g"]);
        assert_eq!(after.read(p("/g")).expect("read"), b"data");
        // A handle follows its inode, not its name.
        f.write_all_at(b"DATA", 0)
            .expect("write through the old handle");
        f.sync_data().expect("sync");
        assert_eq!(io.restart(None).read(p("/g")).expect("read"), b"DATA");
    }

    #[test]
    fn the_cut_freezes_the_disk_while_the_system_runs_on() {
        let io = PowerLossIo::new();
        let f = io.open(p("/f"), OpenMode::CreateNew).expect("create");
        io.sync_dir(p("/")).expect("sync");
        io.cut_after(2);
        f.write_all_at(b"a", 0).expect("write");
        f.sync_data().expect("sync");
        assert!(io.is_powered(), "two operations ran");
        f.write_all_at(b"b", 1).expect("write after the cut");
        f.sync_data().expect("a sync that reaches no disk");
        assert!(!io.is_powered());
        assert_eq!(io.read(p("/f")).expect("live"), b"ab");
        assert_eq!(io.restart(None).read(p("/f")).expect("read"), b"a");
    }

    #[test]
    fn torn_restarts_keep_a_prefix_of_unsynced_writes() {
        let io = PowerLossIo::new();
        let f = io.open(p("/f"), OpenMode::CreateNew).expect("create");
        io.sync_dir(p("/")).expect("sync");
        f.write_all_at(b"0123", 0).expect("write");
        f.sync_data().expect("sync");
        f.write_all_at(b"4567", 4).expect("write");
        f.write_all_at(b"89", 8).expect("write");
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let data = io.restart(Some(seed)).read(p("/f")).expect("read");
            assert!(data.starts_with(b"0123"), "synced bytes always kept");
            assert!(b"0123456789".starts_with(&data), "a prefix: {data:?}");
            seen.insert(data.len());
        }
        assert!(seen.len() > 4, "prefixes of many lengths: {seen:?}");
    }

    #[test]
    fn unsynced_directory_changes_reach_the_disk_in_any_order() {
        let io = PowerLossIo::new();
        io.create_dir(p("/d")).expect("dir");
        for name in ["a", "b"] {
            drop(
                io.open(&p("/d").join(name), OpenMode::CreateNew)
                    .expect("create"),
            );
        }
        io.sync_dir(p("/d")).expect("sync");
        io.sync_dir(p("/")).expect("sync");
        io.remove_file(p("/d/a")).expect("remove a");
        io.remove_file(p("/d/b")).expect("remove b");
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let prefix = io.restart(Some(seed)).list_dir(p("/d")).expect("list");
            assert_ne!(
                prefix,
                vec![OsString::from("a")],
                "a prefix keeps the order"
            );
            seen.insert(prefix);
            seen.insert(io.restart_reordered(seed).list_dir(p("/d")).expect("list"));
        }
        let names = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(seen.contains(&names(&["a", "b"])), "neither: {seen:?}");
        assert!(seen.contains(&names(&["b"])), "the first only: {seen:?}");
        assert!(seen.contains(&names(&[])), "both: {seen:?}");
        assert!(
            seen.contains(&names(&["a"])),
            "the second only, though it was made after the first: {seen:?}"
        );
        assert_eq!(
            io.restart_newest_change_only()
                .list_dir(p("/d"))
                .expect("list"),
            names(&["a"])
        );
        assert_eq!(
            io.restart_oldest_change_only()
                .list_dir(p("/d"))
                .expect("list"),
            names(&["b"])
        );
        io.sync_dir(p("/d")).expect("sync");
        assert!(
            io.restart_reordered(7)
                .list_dir(p("/d"))
                .expect("list")
                .is_empty()
        );
    }

    #[test]
    fn errors_match_the_real_file_system() {
        let io = PowerLossIo::new();
        let kind = |r: io::Result<Arc<dyn IoFile>>| r.map(|_| ()).expect_err("error").kind();
        assert_eq!(
            kind(io.open(p("/x"), OpenMode::Read)),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            kind(io.open(p("/no/x"), OpenMode::CreateNew)),
            io::ErrorKind::NotFound
        );
        io.create_dir(p("/d")).expect("mkdir");
        assert_eq!(
            io.create_dir(p("/d")).expect_err("exists").kind(),
            io::ErrorKind::AlreadyExists
        );
        io.open(p("/d/f"), OpenMode::CreateNew).expect("create");
        assert_eq!(
            kind(io.open(p("/d/f"), OpenMode::CreateNew)),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            io.remove_dir(p("/d")).expect_err("not empty").kind(),
            io::ErrorKind::DirectoryNotEmpty
        );
        let r = io.open(p("/d/f"), OpenMode::Read).expect("open");
        assert!(r.write_at(b"x", 0).is_err(), "read-only handle");
        assert_eq!(
            io.metadata(p("relative")).expect_err("relative").kind(),
            io::ErrorKind::InvalidInput
        );
        let t = io.open(p("/d/f"), OpenMode::Truncate).expect("truncate");
        t.write_all_at(b"xy", 0).expect("write");
        t.set_len(4).expect("extend");
        assert_eq!(io.read(p("/d/f")).expect("read"), b"xy\0\0");
        assert_eq!(
            io.tree(),
            vec![
                (PathBuf::from("/d"), EntryKind::Dir, 0),
                (PathBuf::from("/d/f"), EntryKind::File, 4)
            ]
        );
    }
}
