//! Blocking lock waits (`F_SETLKW`, `flock` without `LOCK_NB`): tries again with a pause
//! doubling from 1 ms to 50 ms (and at once when this mount releases a lock), and ends with
//! EINTR once the waiting thread has a signal pending.
//!
//! fuser does not pass the kernel's FUSE_INTERRUPT on, and the kernel cannot end a request
//! the daemon holds, not even for SIGKILL: so the waiter looks at the thread's pending
//! signals itself (`/proc/<tid>/status`). The kernel turns the EINTR into a restart of the
//! call where the signal's handler asks for one, as for a local lock.

use std::time::Duration;

use memfis_memcache::Store;

use super::FileLocks;
use memfis_memcache::Item;

use super::store::LockRequest;
use crate::{FsError, FsResult};

/// The first pause of a waiter between tries; it doubles up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// The longest pause of a waiter between tries (each try costs a round trip or two).
pub const MAX_PAUSE: Duration = Duration::from_millis(50);

impl<S: Store> FileLocks<S> {
    /// Takes the lock, waiting as long as it takes while thread `tid` (the caller, as the
    /// kernel names it; 0: unknown) has no signal pending. Granted: as [`Self::try_lock`].
    pub(crate) fn lock_wait(
        &self,
        ino: u64,
        req: &LockRequest,
        tid: u32,
        after_grant: &dyn Fn(FsResult<Option<Item>>) -> bool,
    ) -> FsResult<bool> {
        let mut pause = FIRST_PAUSE;
        loop {
            let seen = self.releases();
            if let Ok(changed) = self.try_lock(ino, req, after_grant)? {
                return Ok(changed);
            }
            if tid != 0 && signal_pending(tid) {
                return Err(FsError::Interrupted);
            }
            self.wait_release(seen, pause);
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// True when thread `tid` has a signal pending that it does not block (or is gone).
pub(crate) fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    pending_in_status(&status)
}

fn pending_in_status(status: &str) -> bool {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    const SIGKILL: u64 = 1 << (libc::SIGKILL - 1);
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & (!mask("SigBlk:") | SIGKILL) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pending_signals_from_status() {
        let status = "Name:\tx\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000002\n\
                      SigBlk:\t0000000000000000\n";
        assert!(pending_in_status(status)); // SIGINT pending for the process
        let blocked = status.replace("SigBlk:\t0000000000000000", "SigBlk:\t0000000000000002");
        assert!(!pending_in_status(&blocked));
        let killed = "SigPnd:\t0000000000000100\nShdPnd:\t0\nSigBlk:\tffffffffffffffff\n";
        assert!(pending_in_status(killed)); // SIGKILL cannot be blocked
        assert!(!pending_in_status("SigPnd:\t0\nShdPnd:\t0\nSigBlk:\t0\n"));
        // This thread has nothing pending; a thread that does not exist is gone.
        assert!(!signal_pending(std::process::id()));
        assert!(signal_pending(u32::MAX - 1));
    }
}
