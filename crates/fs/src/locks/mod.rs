//! Advisory file locks (flock, POSIX byte-range and OFD locks) held in the store, so that
//! they exclude each other across every mount of a store (`docs/store-layout.md`, "File
//! locks"):
//! - [`table`]: one inode's lock list and POSIX's rules on it (no store)
//! - `store`: the list's key, changed by `add` or `gets` + `cas`; liveness of holders'
//!   mounts; releasing on unlock and close. (The facade, `MemFs::try_lock`, adds the open
//!   file's side: a flush before an unlock, and `files/lock_grant.rs` after a grant.)
//! - `wait`: blocking waits, with backoff and an end when the waiting thread is signalled
//!
//! What this mount remembers ([`FileLocks`]) only saves round trips (a close of a file it
//! never locked costs nothing) and wakes its own waiters; the store's list is the truth.

mod store;
pub mod table;
mod wait;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use memfis_memcache::Store;

use crate::tree::Tree;

pub use store::{Holder, LockRequest};
pub use table::OFFSET_MAX;
pub use wait::{FIRST_PAUSE, MAX_PAUSE};

/// Seconds an empty lock list stays in the store (it goes by itself after that).
pub const EMPTY_LIST_SECS: u32 = 5;

/// The file locks component: this mount's lock state, and the operations on the store's
/// lists (`store`, `wait`).
pub(crate) struct FileLocks<S: Store> {
    tree: Arc<Tree<S>>,
    /// This host, as lock entries name it (for `F_GETLK`'s pid).
    host: String,
    /// Inode -> owners of this mount that may hold locks on it.
    held: Mutex<HashMap<u64, HashSet<u64>>>,
    /// File handle -> owners that locked through it (released with the handle).
    by_handle: Mutex<HashMap<u64, HashSet<u64>>>,
    /// The last version of each inode's list this mount read or wrote (with its cas token):
    /// a lock or unlock `cas`es on it at once, one round trip, and reads again only when
    /// another mount changed it meanwhile. Never trusted to refuse a lock.
    seen: Mutex<HashMap<u64, memfis_memcache::Item>>,
    /// Mounts seen alive lately, and when.
    alive_seen: Mutex<HashMap<String, Instant>>,
    /// Releases at close that failed: (inode, owner, handle or all), retried by the
    /// heartbeat and by the owner's next lock on the inode.
    failed_releases: Mutex<HashSet<(u64, u64, Option<u64>)>>,
    /// A mount's changes of one inode's list run one at a time, each with its update of
    /// `held`: otherwise a release through an old handle could forget an owner that a
    /// lock through a new handle (the same owner number) just recorded.
    stripes: Vec<Mutex<()>>,
    /// Counts this mount's releases; its waiters wake on a change.
    released: Mutex<u64>,
    release_signal: Condvar,
    /// The liveness key was seen by a heartbeat at least once.
    pub(crate) beat: std::sync::atomic::AtomicBool,
}

impl<S: Store> FileLocks<S> {
    pub(crate) fn new(tree: Arc<Tree<S>>) -> FileLocks<S> {
        FileLocks {
            tree,
            host: host_id(),
            held: Mutex::default(),
            by_handle: Mutex::default(),
            seen: Mutex::default(),
            alive_seen: Mutex::default(),
            failed_releases: Mutex::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            released: Mutex::new(0),
            release_signal: Condvar::new(),
            beat: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Most lists [`FileLocks::seen`] keeps (past it, it starts over).
const SEEN_MAX: usize = 4096;

impl<S: Store> FileLocks<S> {
    pub(crate) fn seen(&self, ino: u64) -> Option<memfis_memcache::Item> {
        crate::sync::lock(&self.seen).get(&ino).cloned()
    }

    pub(crate) fn remember(&self, ino: u64, item: Option<memfis_memcache::Item>) {
        let mut seen = crate::sync::lock(&self.seen);
        match item {
            Some(item) => {
                if seen.len() >= SEEN_MAX && !seen.contains_key(&ino) {
                    seen.clear();
                }
                seen.insert(ino, item);
            }
            None => {
                seen.remove(&ino);
            }
        }
    }
}

/// Stripes of [`FileLocks::stripes`].
const STRIPES: usize = 64;

impl<S: Store> FileLocks<S> {
    /// Held while this mount changes `ino`'s list and what it remembers of it.
    pub(crate) fn stripe(&self, ino: u64) -> std::sync::MutexGuard<'_, ()> {
        crate::sync::lock(&self.stripes[(ino % STRIPES as u64) as usize])
    }
}

/// The first 8 hex digits of the kernel's boot id: tells one host's lock holders from
/// another's (a pid means nothing on another host).
fn host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', "").chars().take(8).collect())
        .unwrap_or_else(|_| crate::layout::record::random_id())
}
