//! The mount's maintenance queues: what operations leave for the heartbeat
//! ([`crate::MemFs::heartbeat`]) to finish or clean up: data keys at paths renames or failed
//! publishes took away, creates a store error left unfinished, and directory logs worth
//! compacting. (The intent of an operation of this mount that failed midway, a namespace lock
//! it may still hold and failed file-lock releases are kept by the namespace lock and the file
//! locks.)

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::namespace::unsettled::Unsettled;
use crate::sync::lock;

/// What the heartbeat has to finish, filled by the operations that left it.
#[derive(Default)]
pub(crate) struct Maintenance {
    /// Data keys this mount wrote at paths a rename took away, whose deletion failed; they go
    /// once no name reaches them.
    stale_keys: Mutex<Vec<Vec<u8>>>,
    /// Creates a store error left unfinished.
    unsettled: Mutex<Vec<Unsettled>>,
    /// Directories whose logs a listing found worth compacting.
    compaction_wanted: Mutex<BTreeSet<u64>>,
}

impl Maintenance {
    /// Data keys to delete once no name reaches them.
    pub(crate) fn leave_stale_keys(&self, keys: impl IntoIterator<Item = Vec<u8>>) {
        lock(&self.stale_keys).extend(keys);
    }

    pub(crate) fn take_stale_keys(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *lock(&self.stale_keys))
    }

    /// A create to finish (or undo) later.
    pub(crate) fn leave_unsettled(&self, u: Unsettled) {
        lock(&self.unsettled).push(u);
    }

    pub(crate) fn take_unsettled(&self) -> Vec<Unsettled> {
        std::mem::take(&mut *lock(&self.unsettled))
    }

    /// A directory whose log may be worth compacting.
    pub(crate) fn want_compaction(&self, dir: u64) {
        lock(&self.compaction_wanted).insert(dir);
    }

    pub(crate) fn take_compaction_wanted(&self) -> BTreeSet<u64> {
        std::mem::take(&mut *lock(&self.compaction_wanted))
    }
}
