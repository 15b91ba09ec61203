//! [`FileIo`]: the real file system, through `std::fs`.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::{EntryKind, EntryMeta, IoFile, OpenMode, StorageIo};

/// The real file system. Each call is one system call (two for
/// `sync_dir`: open and fsync of the directory).
#[derive(Debug, Clone, Copy, Default)]
pub struct FileIo;

impl IoFile for File {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, pos)
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        FileExt::write_at(self, buf, pos)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn len(&self) -> io::Result<u64> {
        self.metadata().map(|m| m.len())
    }

    // The std loops are the same, without a virtual call per step.
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, pos)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, pos)
    }
}

impl StorageIo for FileIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
            OpenMode::Truncate => options.read(true).write(true).create(true).truncate(true),
        };
        Ok(Arc::new(options.open(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn create_private_dir(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn metadata(&self, path: &Path) -> io::Result<EntryMeta> {
        let m = std::fs::metadata(path)?;
        let kind = if m.is_file() {
            EntryKind::File
        } else if m.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::Other
        };
        Ok(EntryMeta { kind, len: m.len() })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_create_truncate_and_refuse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = FileIo;
        let p = dir.path().join("a");
        assert_eq!(
            io.open(&p, OpenMode::Read).expect_err("missing").kind(),
            io::ErrorKind::NotFound
        );
        let f = io.open(&p, OpenMode::CreateNew).expect("create");
        f.write_all_at(b"abcdef", 0).expect("write");
        assert_eq!(f.len().expect("len"), 6);
        assert_eq!(
            io.open(&p, OpenMode::CreateNew).expect_err("exists").kind(),
            io::ErrorKind::AlreadyExists
        );
        let t = io.open(&p, OpenMode::Truncate).expect("truncate");
        assert_eq!(t.len().expect("len"), 0);
        t.write_all_at(b"xy", 0).expect("write");
        t.set_len(5).expect("extend");
        assert_eq!(io.read(&p).expect("read"), b"xy\0\0\0");
        let nested = dir.path().join("b/c/d");
        assert!(super::super::durable::create_dir_all(&io, &nested).expect("mkdir -p"));
        assert!(!super::super::durable::create_dir_all(&io, &nested).expect("again"));
        assert_eq!(io.metadata(&nested).expect("meta").kind, EntryKind::Dir);
        io.sync_dir(&nested).expect("sync dir");
        let private = dir.path().join("private");
        io.create_private_dir(&private).expect("private");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        io.remove_dir(&private).expect("rmdir");
        let mut names = io.list_dir(dir.path()).expect("list");
        names.sort();
        assert_eq!(names, vec![OsString::from("a"), OsString::from("b")]);
        io.rename(&p, &dir.path().join("z")).expect("rename");
        io.remove_file(&dir.path().join("z")).expect("remove");
        io.remove_dir(&nested).expect("rmdir");
    }
}
