//! Bytes in flight, shared by the writers, so memory stays near the budget plus the largest
//! file whatever the tree.

use std::sync::{Condvar, Mutex};

/// File bytes held by the writers at once.
pub(super) const IN_FLIGHT_BYTES: u64 = 32 << 20;

/// A file larger than the whole budget waits until nothing else is held and then goes alone.
pub(super) struct Budget {
    limit: u64,
    held: Mutex<u64>,
    freed: Condvar,
}

/// Bytes taken from the budget, given back on drop.
pub(super) struct Held<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    pub(super) fn new(limit: u64) -> Self {
        Budget {
            limit,
            held: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits until `bytes` fit, and holds them.
    pub(super) fn take(&self, bytes: u64) -> Held<'_> {
        let bytes = bytes.min(self.limit);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held + bytes > self.limit {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        *held += bytes;
        Held {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.budget.held.lock().unwrap_or_else(|p| p.into_inner()) -= self.bytes;
        self.budget.freed.notify_all();
    }
}
