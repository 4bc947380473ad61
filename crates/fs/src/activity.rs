//! What a mount has done so far, for its metrics: bytes and files published, how often its
//! namespace caches answered without the store, what it holds open. Counted with relaxed
//! atomics: figures for a dashboard, not for decisions.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters a mount bumps as it works.
#[derive(Default)]
pub(crate) struct Activity {
    pub files_published: AtomicU64,
    pub bytes_published: AtomicU64,
}

impl Activity {
    /// A file's bytes reached the store (once per file, whatever its number of names).
    pub fn published(&self, bytes: usize) {
        self.files_published.fetch_add(1, Ordering::Relaxed);
        self.bytes_published
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// A mount's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivitySnapshot {
    pub files_published: u64,
    pub bytes_published: u64,
    /// Namespace questions the caches answered / had to ask the store.
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub open_files: u64,
    pub open_handles: u64,
    pub store_id: String,
}
