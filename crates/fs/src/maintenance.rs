//! The mount's maintenance queues: what operations leave for the heartbeat
//! ([`crate::MemFs::heartbeat`]) to finish or clean up: data keys at paths renames or failed
//! publishes took away, creates a store error left unfinished, and directory logs worth
//! compacting; deleting a file's chunks, which leaves what fails to the heartbeat; and
//! refreshing this mount's liveness key (`PREFIX%alive.<id>`, which the namespace lock and
//! the file locks of every mount go by). (The intent of an operation of this mount that
//! failed midway, a namespace lock it may still hold and failed file-lock releases are kept
//! by the namespace lock and the file locks.)

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use memfis_memcache::{Command, Store, StoreOp};

use crate::layout::record::FormatRecord;
use crate::namespace::lock::ALIVE_SECS;
use crate::store::batch::{Batch, Stored};
use crate::{FsError, FsResult};

use crate::files::chunk_buffer::chunk_count;
use crate::layout::record::Inode;
use crate::namespace::unsettled::Unsettled;
use crate::sync::lock;
use crate::tree::Tree;

/// Chunks deleted per pipelined batch (as before this moved here: 4 x `chunked.rs`'s
/// CHUNK_BATCH).
const DELETE_BATCH: usize = 64;

/// What the heartbeat has to finish, filled by the operations that left it.
pub(crate) struct Maintenance<S: Store> {
    tree: Arc<Tree<S>>,
    /// Data keys this mount wrote at paths a rename took away, whose deletion failed; they go
    /// once no name reaches them.
    stale_keys: Mutex<Vec<Vec<u8>>>,
    /// Creates a store error left unfinished.
    unsettled: Mutex<Vec<Unsettled>>,
    /// Directories whose logs a listing found worth compacting.
    compaction_wanted: Mutex<BTreeSet<u64>>,
}

impl<S: Store> Maintenance<S> {
    pub(crate) fn new(tree: Arc<Tree<S>>) -> Maintenance<S> {
        Maintenance {
            tree,
            stale_keys: Mutex::default(),
            unsettled: Mutex::default(),
            compaction_wanted: Mutex::default(),
        }
    }

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

    /// Deletes chunks `from..until` of generation `generation` of a file. Chunks that could
    /// not be deleted are left to the heartbeat, which deletes them once no record uses them.
    pub(crate) fn delete_chunks(&self, ino: u64, generation: u64, from: u64, until: u64) {
        let keys: Vec<Vec<u8>> = (from..until)
            .map(|n| self.tree.keys.chunk(ino, generation, n))
            .collect();
        for (i, batch) in keys.chunks(DELETE_BATCH).enumerate() {
            let cmds = batch.iter().map(|k| Command::Delete(k.clone())).collect();
            if let Some(Err(e)) = self
                .tree
                .store
                .execute(cmds)
                .into_iter()
                .find(|r| r.is_err())
            {
                crate::limited_warn!(
                    format!("delete chunks: {e}"),
                    "could not delete chunks of a removed or shrunk file: inode {ino}: {e}"
                );
                let left = &keys[i * DELETE_BATCH..];
                self.leave_stale_keys(left.iter().cloned());
                return;
            }
        }
    }

    /// Deletes whole runs of a file's chunks, (generation, count) each: those of a removed
    /// file that no handle reads any more.
    pub(crate) fn delete_chunk_runs(&self, ino: u64, runs: Vec<(u64, u64)>) {
        for (generation, count) in runs {
            self.delete_chunks(ino, generation, 0, count);
        }
    }

    /// Deletes every chunk of a file in chunks as `rec` describes it.
    pub(crate) fn delete_record_chunks(&self, ino: u64, rec: &Inode) {
        if let Some(cs) = rec.chunk_size {
            self.delete_chunks(ino, rec.chunk_gen, 0, chunk_count(rec.size, cs));
        }
    }

    // ----- this mount's liveness -------------------------------------------------------

    /// Says that [`crate::MemFs::heartbeat`] now runs every few seconds: from then on, a thread
    /// holding the namespace lock stops sending once the last refresh is older than
    /// [`crate::FsConfig::stall_limit`] (`lock_lease`: a mount that stalled past its
    /// liveness may have lost the lock to another mount).
    pub(crate) fn arm_stall_fence(&self) {
        self.tree.store.lease.arm();
    }

    /// Only the liveness refresh and the store check of [`crate::MemFs::heartbeat`]: it never waits
    /// for the namespace lock, so a thread of its own keeps the mount alive while the
    /// background work waits behind a long operation of this mount (the lock's holder stops
    /// sending once the liveness is stale: `lock_lease`).
    pub(crate) fn refresh_liveness(&self, note_alive: impl FnOnce(bool)) -> FsResult<()> {
        let alive = self.tree.keys.alive(&self.tree.mount_id);
        let format = self.tree.keys.format();
        let sent = std::time::Instant::now();
        let mut batch = Batch::new();
        // Whether the key was still there: a lapse may have cost this mount's file locks.
        let touched = batch.touch(&alive, ALIVE_SECS);
        // Its value names the mount's server list (a refill waits while mounts differ).
        let value = self
            .tree
            .store
            .inner()
            .pool_id()
            .unwrap_or_else(|| "1".into());
        let refreshed = batch.push::<Stored>(Command::Store {
            op: StoreOp::Set,
            key: alive,
            value: std::sync::Arc::new(value.into_bytes()),
            flags: 0,
            exptime: ALIVE_SECS,
        });
        let format_read = batch.get(format);
        let mut results = batch.execute(self.tree.store.inner());
        let touched = matches!(results.take(touched), Ok(true));
        results.take(refreshed)?;
        note_alive(touched);
        self.tree.store.lease.refreshed(sent);
        let found = results.take(format_read)?;
        let same = found
            .and_then(|item| serde_json::from_slice::<FormatRecord>(&item.value).ok())
            .is_some_and(|rec| rec.store_id == self.tree.store_id);
        if !same {
            self.tree.store.mark_gone();
            return Err(FsError::StoreGone);
        }
        Ok(())
    }
}
