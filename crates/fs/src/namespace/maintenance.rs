//! The mount's maintenance: the heartbeat, which every few seconds (after refreshing the
//! mount's liveness, `lock.rs`) finishes or cleans up what operations left: data keys at paths
//! renames took away, creates a store error left unfinished and directory logs worth compacting
//! (kept here, in [`Maintenance`]), and the intent of an operation of this mount that failed
//! midway, failed file-lock releases and a namespace lock this mount may still hold (kept by
//! the namespace lock and the file locks).

use std::collections::BTreeSet;
use std::sync::Mutex;

use memfis_memcache::Store;

use crate::FsResult;
use crate::fs::MemFs;
use crate::namespace::unsettled::UnsettledCreates;
use crate::sync::lock;

/// What the heartbeat has to finish, filled by the operations that left it.
#[derive(Default)]
pub(crate) struct Maintenance {
    /// Data keys this mount wrote at paths a rename took away, whose deletion failed; they go
    /// once no name reaches them.
    pub(crate) stale_keys: Mutex<Vec<Vec<u8>>>,
    /// Creates a store error left unfinished.
    pub(crate) unsettled: UnsettledCreates,
    /// Directories whose logs a listing found worth compacting.
    pub(crate) compaction_wanted: Mutex<BTreeSet<u64>>,
}

impl<S: Store> MemFs<S> {
    /// Refreshes this mount's liveness key and checks that the store is still the one it
    /// mounted, then does the mount's background work (keys left behind, intents to
    /// complete, logs to compact). Call every few seconds (the session runs a thread for it).
    pub fn heartbeat(&self) -> FsResult<()> {
        self.refresh_liveness()?;
        self.background_work()
    }

    /// The background work of [`Self::heartbeat`].
    fn background_work(&self) -> FsResult<()> {
        // Data keys at paths renames took away, whose deletion failed.
        let stale = std::mem::take(&mut *lock(&self.maintenance.stale_keys));
        if !stale.is_empty() {
            self.delete_keys_outside_tree(&stale)?;
        }
        // Creates a store error left unfinished (their directory may have gone meanwhile);
        // the steps below do not wait for them.
        let unsettled = self.settle_unsettled();
        // An operation whose intent is kept here without the lock: take it again to complete it.
        let orphaned = lock(&self.ns.orphaned).clone();
        if let Some(intent) = orphaned {
            self.with_ns_lock(crate::store::batch::Batch::new(), |guard, _| {
                guard.intent = Some(intent.clone());
                self.complete(&intent)
            })?;
            *lock(&self.ns.orphaned) = None;
        }
        // File lock releases that failed (a lock must not stay held by a live mount).
        self.locks.retry_lock_releases();
        // Directory logs that listings found long.
        let compacted = self.compact_wanted();
        // Last, as the steps above may leave it: the lock this mount still holds after an
        // operation failed midway (or its release failed).
        let leftover = lock(&self.ns.leftover).clone();
        if !leftover.is_empty() {
            let _local = lock(&self.ns.serial);
            self.wait_quiet()?;
            // The lock was free at some point since: none of these holds it, and none takes
            // it again (every acquisition has a new owner; `reacquire` runs within an
            // operation, which holds `ns_local`).
            lock(&self.ns.leftover).retain(|o| !leftover.contains(o));
        }
        compacted.and(unsettled)
    }
}
