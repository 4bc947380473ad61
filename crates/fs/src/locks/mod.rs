//! Advisory file locks (flock, POSIX byte-range and OFD locks) held in the store, so that
//! they exclude each other across every mount of a store (`docs/store-layout.md`, "File
//! locks"):
//! - [`table`]: one inode's lock list and POSIX's rules on it (no store)
//! - `store`: the list's key, changed by `add` or `gets` + `cas`; liveness of holders'
//!   mounts; releasing on unlock and close; what a granted lock makes visible
//! - `wait`: blocking waits, with backoff and an end when the waiting thread is signalled
//!
//! What this mount remembers ([`LocalLocks`]) only saves round trips (a close of a file it
//! never locked costs nothing) and wakes its own waiters; the store's list is the truth.

mod store;
pub mod table;
mod wait;

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

pub use store::{Holder, LockRequest};
pub use table::OFFSET_MAX;
pub use wait::{FIRST_PAUSE, MAX_PAUSE};

/// Seconds an empty lock list stays in the store (it goes by itself after that).
pub const EMPTY_LIST_SECS: u32 = 5;

/// A mount's lock state kept locally.
pub(crate) struct LocalLocks {
    /// This host, as lock entries name it (for `F_GETLK`'s pid).
    host: String,
    /// Inode -> owners of this mount that may hold locks on it.
    held: Mutex<HashMap<u64, HashSet<u64>>>,
    /// File handle -> owners that locked through it (released with the handle).
    by_handle: Mutex<HashMap<u64, HashSet<u64>>>,
    /// Mounts seen alive lately, and when.
    alive_seen: Mutex<HashMap<String, Instant>>,
    /// Releases at close that failed: (inode, owner, handle or all), retried by the
    /// heartbeat and by the owner's next lock on the inode.
    failed_releases: Mutex<HashSet<(u64, u64, Option<u64>)>>,
    /// Counts this mount's releases; its waiters wake on a change.
    released: Mutex<u64>,
    release_signal: Condvar,
    /// The liveness key was seen by a heartbeat at least once.
    pub(crate) beat: std::sync::atomic::AtomicBool,
}

impl LocalLocks {
    pub(crate) fn new() -> LocalLocks {
        LocalLocks {
            host: host_id(),
            held: Mutex::default(),
            by_handle: Mutex::default(),
            alive_seen: Mutex::default(),
            failed_releases: Mutex::default(),
            released: Mutex::new(0),
            release_signal: Condvar::new(),
            beat: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The first 8 hex digits of the kernel's boot id: tells one host's lock holders from
/// another's (a pid means nothing on another host).
fn host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', "").chars().take(8).collect())
        .unwrap_or_else(|_| crate::record::random_id())
}
