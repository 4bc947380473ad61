//! Whether this mount may still act as the namespace lock's owner.
//!
//! Other mounts take the lock over once the owner's liveness key has expired (10 s after
//! its last refresh, by memcached's clock). A mount that stalled that long (stopped,
//! swapped out, a paused VM) and resumes must not go on with the operation it held the
//! lock for: another mount completed it meanwhile and may hold the lock now, and the
//! resumed batches (its intent, its changes, its release, which deletes the lock
//! whoever holds it) would run beside that owner's. So the thread that holds the lock
//! sends nothing once the mount's last liveness refresh is older than a limit below
//! the expiry (the key may expire a second early: memcached's clock ticks by seconds):
//! its batches fail (EIO). The mount then completes nothing from its own copy of the
//! intent (other mounts may have completed it and gone on since): only if the lock
//! still names it, from the intent stored there, as any mount would. A takeover of a
//! gone mount's lock is fenced the same way. A stall that begins after the check and
//! before the server runs the batch (a reconnect, a send to each server of a pool) is
//! not caught.
//!
//! Armed once something refreshes the liveness every few seconds
//! ([`MemFs::arm_stall_fence`]: the session of a mount or a tool starts its heartbeat). A
//! filesystem nobody keeps alive (in-memory tests) never refuses.
//!
//! [`MemFs::arm_stall_fence`]: crate::MemFs::arm_stall_fence

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::sync::lock;

pub(crate) struct LockLease {
    /// Set once a heartbeat keeps the liveness fresh.
    armed: AtomicBool,
    /// The thread of this mount that holds the namespace lock (one at a time).
    holder: Mutex<Option<ThreadId>>,
    /// When the last liveness refresh that succeeded was sent.
    refreshed: Mutex<Option<Instant>>,
    /// How old that refresh may be for the holder to go on.
    limit: Duration,
}

impl LockLease {
    pub(crate) fn new(limit: Duration) -> LockLease {
        LockLease {
            armed: AtomicBool::new(false),
            holder: Mutex::new(None),
            refreshed: Mutex::new(None),
            limit,
        }
    }

    /// From now on a heartbeat refreshes the liveness every few seconds.
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// A liveness refresh sent at `at` succeeded.
    pub(crate) fn refreshed(&self, at: Instant) {
        *lock(&self.refreshed) = Some(at);
    }

    /// The calling thread took the namespace lock.
    pub(crate) fn taken(&self) {
        *lock(&self.holder) = Some(std::thread::current().id());
    }

    /// The calling thread took the lock over from a gone mount, for as long as the returned
    /// value lives (a thread that holds the lock already keeps it after).
    pub(crate) fn taken_over(&self) -> TakenOver<'_> {
        let me = std::thread::current().id();
        let already = *lock(&self.holder) == Some(me);
        *lock(&self.holder) = Some(me);
        TakenOver {
            lease: self,
            already,
        }
    }

    /// The calling thread no longer holds the namespace lock.
    pub(crate) fn given_up(&self) {
        let mut holder = lock(&self.holder);
        if *holder == Some(std::thread::current().id()) {
            *holder = None;
        }
    }

    /// True when the calling thread holds the lock and the mount's liveness may have
    /// lapsed: its batches must not go out. (Also what a failed operation asks before
    /// completing its intent.)
    pub(crate) fn refuses(&self) -> bool {
        if !self.armed.load(Ordering::SeqCst) {
            return false;
        }
        if *lock(&self.holder) != Some(std::thread::current().id()) {
            return false;
        }
        lock(&self.refreshed).is_none_or(|at| at.elapsed() > self.limit)
    }
}

/// A takeover in progress ([`LockLease::taken_over`]).
pub(crate) struct TakenOver<'a> {
    lease: &'a LockLease,
    already: bool,
}

impl Drop for TakenOver<'_> {
    fn drop(&mut self) {
        if !self.already {
            self.lease.given_up();
        }
    }
}
