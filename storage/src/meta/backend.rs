//! The metadata store's file through the storage engine's I/O backend.
//!
//! redb does its own file I/O through its `StorageBackend` trait. In
//! production the store uses redb's own file backend (which also takes the
//! file lock that keeps a second process out); [`IoBackend`] routes the
//! same reads, writes, `set_len` and `fdatasync` calls through a
//! [`StorageIo`](crate::io::StorageIo) file instead, so that the store can
//! live on a simulated file system ([`PowerLossIo`](crate::io::PowerLossIo))
//! next to the partition logs and lose exactly what a power cut would make
//! it lose. It takes no lock: a simulated file system belongs to one
//! process.

use std::io;
use std::sync::Arc;

use crate::io::IoFile;

/// A redb backend over an open [`IoFile`].
#[derive(Debug)]
pub(crate) struct IoBackend {
    file: Arc<dyn IoFile>,
}

impl IoBackend {
    pub(crate) fn new(file: Arc<dyn IoFile>) -> Self {
        Self { file }
    }
}

impl redb::StorageBackend for IoBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.file.write_all_at(data, offset)
    }
}
