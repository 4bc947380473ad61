//! What an open file holds of a file in chunks (`chunked.rs` reads, writes and publishes it):
//! plain state, so that `open_files.rs` can keep it without knowing the filesystem.

use std::collections::BTreeMap;
use std::sync::Arc;

/// An open file's view of a file in chunks.
#[derive(Debug, Default)]
pub struct ChunkedFile {
    pub chunk_size: u64,
    pub generation: u64,
    pub size: u64,
    /// Chunks changed since they were last written out, whole (up to `chunk_size` bytes;
    /// zeros after a shorter one).
    pub dirty: BTreeMap<u64, Vec<u8>>,
    /// Something to publish: chunks were written out, or the size changed.
    pub changed: bool,
    /// One past the highest chunk written out since the file was opened (what a failed
    /// publish may have left).
    pub written_until: u64,
    /// The last chunk read from the store.
    pub(crate) cached: Option<(u64, Arc<Vec<u8>>)>,
    /// This mount removed the file's last name: its record is gone, its chunks are kept for
    /// the open handles, and a missing one is a hole (elsewhere it means the file is gone).
    pub(crate) removed_here: bool,
}

impl ChunkedFile {
    pub fn new(chunk_size: u64, generation: u64, size: u64) -> ChunkedFile {
        ChunkedFile {
            chunk_size,
            generation,
            size,
            ..ChunkedFile::default()
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.changed || !self.dirty.is_empty()
    }

    pub(crate) fn dirty_bytes(&self) -> u64 {
        self.dirty.len() as u64 * self.chunk_size
    }
}

/// How many chunks hold a file of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}
