//! Names: entries, directory logs, the namespace lock, and the operations that change them.
//!
//! - `records`: inode records and entries as every operation reads and changes them, paths,
//!   `lookup`
//! - `attrs`: `getattr`, the attributes records and open files make
//! - [`nodes`]: create, mkdir, symlink, mknod, link, unlink, rmdir
//! - `claim`: the one create path (one batch claiming new names, its fence settled)
//! - `chmod`: which key holds a file's bytes (served or private), a chmod moving them under
//!   the lock with an intent
//! - `file_bytes`: where a file's bytes are (the keys its names make) and loading an open
//!   file's bytes, fenced against operations of any mount that move them
//! - [`rename`]: rename, RENAME_EXCHANGE, moving every data key under a renamed directory
//! - [`listing`]: appending to and replaying directory logs, readdir
//! - `compact`: rewriting a directory's log as its live names (heartbeat, repair)
//! - [`lock`]: the namespace lock, other mounts' liveness, taking over from a gone mount
//! - `roll_forward`: completing the intent a gone mount left in the lock
//! - `unreached_keys`: deleting keys that hold no name's bytes any more
//! - `unsettled`: creates a store error left unfinished, finished by the heartbeat
//! - `meta_cache`: what a mount remembers of directories between operations

pub(crate) mod attrs;
pub(crate) mod chmod;
pub(crate) mod claim;
pub(crate) mod compact;
pub(crate) mod file_bytes;
pub mod listing;
pub mod lock;
pub(crate) mod meta_cache;
pub mod nodes;
pub(crate) mod records;
pub mod rename;
pub(crate) mod roll_forward;
pub(crate) mod unreached_keys;
pub(crate) mod unsettled;

use std::sync::{Arc, Mutex};

use memfis_memcache::Store;

use crate::files::open_files::OpenFiles;
use crate::layout::record::Kind;
use crate::maintenance::Maintenance;
use crate::tree::Tree;

/// The namespace component: names, records, directory logs, the namespace lock and the
/// operations that change them, with what this mount keeps of them.
pub(crate) struct Namespace<S: Store> {
    pub(crate) tree: Arc<Tree<S>>,
    pub(crate) maintenance: Arc<Maintenance<S>>,
    /// This mount's side of the namespace lock (`lock.rs`).
    ns: lock::LocalNsLock,
    /// Reserved inode numbers: next to hand out, end of the reserved range (exclusive).
    inos: Mutex<(u64, u64)>,
    /// What this mount remembers of directories between operations (bounded, expiring).
    meta: meta_cache::MetaCache,
    /// This mount's open files (the files component's): operations on names keep them in
    /// step (a name removed, a record changed) and, holding the lock, load their bytes before
    /// the last key holding them goes (`file_bytes.rs`).
    open_files: Arc<OpenFiles>,
}

impl<S: Store> Namespace<S> {
    pub(crate) fn new(
        tree: Arc<Tree<S>>,
        maintenance: Arc<Maintenance<S>>,
        open_files: Arc<OpenFiles>,
    ) -> Namespace<S> {
        Namespace {
            meta: meta_cache::MetaCache::new(tree.cfg.cache_ttl),
            tree,
            maintenance,
            ns: lock::LocalNsLock::default(),
            inos: Mutex::new((0, 0)),
            open_files,
        }
    }

    /// How many directory renames this mount has seen: paths worked out before it changed
    /// are stale (the cache of paths was dropped).
    pub(crate) fn paths_generation(&self) -> u64 {
        self.meta.generation()
    }

    /// Hits and misses of the directory cache, for metrics.
    pub(crate) fn cache_hits_and_misses(&self) -> (u64, u64) {
        self.meta.hits_and_misses()
    }

    /// Remembers that `parent` has `name` (a listing cached before the name was made would
    /// miss it).
    pub(crate) fn note_name(&self, parent: u64, name: &[u8], ino: u64, kind: Kind) {
        self.meta.note_name(parent, name, Some((ino, kind)));
    }

    /// The operations of gone mounts this mount completed since the last call, as (owner,
    /// what was done): repair reports them.
    pub(crate) fn take_rolled_forward(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *crate::sync::lock(&self.ns.rolled_forward))
    }
}
