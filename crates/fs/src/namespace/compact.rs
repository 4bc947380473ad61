//! Compacting a directory's log: its live names written once as a snapshot, which replays
//! then start from instead of the chunks before it; those chunks go.
//!
//! Runs holding the namespace lock, so no name is removed or moved meanwhile; creates go on.
//! Steps, each safe to stop after:
//! 1. read the sequence `seq` and the base, replay the log: the live names, keeping only those
//!    whose entry key agrees (a create that lost its claim may not have taken its `+` back);
//! 2. write them as `+` records to the pieces of a snapshot of a fresh random generation
//!    (`PREFIX%c<dir>.<generation>.<k>`, `set`): keys nothing reads yet;
//! 3. `set` the base to `chunk(seq) generation pieces`: replays now read the snapshot, then the
//!    chunks from `chunk(seq)` on (that chunk's records are replayed twice: records are
//!    idempotent, and a record in it after the ones the snapshot saw comes after them);
//! 4. delete the old snapshot and the chunks below the new base.
//!
//! A crash before 3 leaves pieces nothing reads, after it chunks nothing reads: garbage that
//! `memfis check` reports and `--repair` deletes, never a listing that changed. Records no
//! replay reads any more are the danger: records appended below the new base after step 1.
//! Changes holding the lock cannot run meanwhile; an append of theirs that lands below the
//! base later is appended again above it (`finish_log`). A create's fence reads the lock,
//! then the base, after its append: if either says a compaction may have passed its chunk,
//! it appends its `+` again holding the lock, for names whose entry still names the inode
//! (`settle_create_fence`, `relog_if_compacted`), and a create's undo takes its `+` back
//! holding the lock, so the `-` cannot land in a chunk a compaction drops while the `+` is
//! in its snapshot.
//! Only on a store that runs a batch in order (one server): elsewhere logs are not compacted.

use std::collections::BTreeSet;

use memfis_memcache::{Command, Reply, Store, StoreOp};
use tracing::info;

use crate::layout::dirlog::{self, DirSeq, LogBase, Op};
use crate::layout::record::random_id;
use crate::namespace::Namespace;
use crate::store::batch::StoreAt;
use crate::store::retried;
use crate::{FsError, FsResult};

/// A log is compacted once it holds more than twice as many records as live names, plus a
/// chunk: a directory whose files are replaced over and over keeps a bounded log.
pub(crate) fn worth_compacting(records: usize, names: usize, per_chunk: u64) -> bool {
    records > 2 * names + per_chunk as usize
}

impl<S: Store> Namespace<S> {
    /// Notes that `dir`'s log may be worth compacting; the heartbeat looks and does it.
    pub(crate) fn want_compaction(&self, dir: u64) {
        if self.tree.store.in_order() {
            self.maintenance.want_compaction(dir);
        }
    }

    /// Compacts the logs noted as worth it (called by the heartbeat).
    pub(crate) fn compact_wanted(&self) -> FsResult<()> {
        let wanted: BTreeSet<u64> = self.maintenance.take_compaction_wanted();
        for dir in wanted {
            match self.compact_dir(dir, false) {
                Ok(_) | Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Compacts `dir`'s log (when worth it, or always with `force`). Returns the records
    /// dropped (0: nothing done, or a store that cannot run a batch in order).
    pub fn compact_dir(&self, dir: u64, force: bool) -> FsResult<usize> {
        if !self.tree.store.in_order() {
            return Ok(0);
        }
        self.with_ns_lock(crate::store::batch::Batch::new(), |_, _| {
            // 1. The live names.
            // No sequence: removed since it was noted (or lost: `memfis check` reports that).
            let DirSeq { seq, base, .. } = self.read_dir_seq(dir)?.ok_or(FsError::NotFound)?;
            let seq = seq.ok_or(FsError::NotFound)?; // being removed
            let (listing, records) = self
                .replay_once(dir, base, seq)?
                .map_err(|missing| FsError::missing(&missing))?;
            if !force
                && !worth_compacting(records, listing.len(), self.tree.keys.log_chunk_records())
            {
                return Ok(0);
            }
            let listing = self.with_entries_agreeing(dir, listing)?;
            // 2. The snapshot, 1,024 records a piece.
            let generation = u64::from_str_radix(&random_id(), 16).unwrap_or(0);
            let pieces = self.snapshot_pieces(&listing);
            let new_base = LogBase {
                chunk: seq / self.tree.keys.log_chunk_records(),
                snapshot: (!pieces.is_empty()).then_some((generation, pieces.len() as u64)),
            };
            let (written, stored) = self.store_snapshot(dir, generation, &pieces);
            // 3. Replays start at the snapshot.
            let base_key = self.tree.keys.dir_base(dir);
            let flipped = stored.and_then(|()| {
                self.tree
                    .store
                    .store_at(StoreOp::Set, &base_key, new_base.encode().as_bytes())
                    .map(|_| ())
            });
            // 4. What no replay reads any more goes (the new pieces, if the flip failed).
            let mut unread: Vec<Vec<u8>> = match flipped {
                Ok(_) => self.tree.keys.dir_log_keys(dir, base, seq),
                Err(_) => written,
            };
            if flipped.is_ok() {
                unread.retain(|k| *k != self.tree.keys.dir_log(dir, new_base.chunk));
            }
            let _ = retried(|| {
                let batch = unread.iter().map(|k| Command::Delete(k.clone())).collect();
                self.tree.store.execute_all(batch)
            });
            flipped?;
            self.meta.raise_seq_hint(dir, seq);
            info!(
                dir,
                records,
                names = listing.len(),
                "compacted a directory log"
            );
            Ok(records.saturating_sub(listing.len()))
        })
    }

    /// A listing as log records of additions, as many a piece as a log chunk holds.
    fn snapshot_pieces(&self, listing: &dirlog::Listing) -> Vec<Vec<u8>> {
        let names: Vec<_> = listing.iter().collect();
        names
            .chunks(self.tree.keys.log_chunk_records() as usize)
            .map(|piece| {
                let mut bytes = Vec::new();
                for (name, (ino, kind)) in piece {
                    bytes.extend(dirlog::encode(Op::Add, *kind, *ino, name));
                }
                bytes
            })
            .collect()
    }

    /// Stores a snapshot's pieces: the keys written (some may be, even on an error) and
    /// whether every piece was stored.
    fn store_snapshot(
        &self,
        dir: u64,
        generation: u64,
        pieces: &[Vec<u8>],
    ) -> (Vec<Vec<u8>>, FsResult<()>) {
        let written: Vec<Vec<u8>> = (0..pieces.len() as u64)
            .map(|k| self.tree.keys.dir_snapshot(dir, generation, k))
            .collect();
        let sets = written
            .iter()
            .zip(pieces)
            .map(|(key, bytes)| Command::store(StoreOp::Set, key, bytes))
            .collect();
        let stored = self
            .tree
            .store
            .execute(sets)
            .into_iter()
            .zip(&written)
            .try_for_each(|(r, key)| match r {
                Ok(Reply::Stored) => Ok(()),
                Ok(other) => Err(FsError::corrupt(key, format!("set answered {other:?}"))),
                Err(e) => Err(FsError::store(key, e)),
            });
        (written, stored)
    }

    /// Compacts every directory log of the tree worth it (`memfis check --repair`): returns
    /// (directory, its path, records dropped) for each one compacted.
    pub fn compact_all(&self) -> FsResult<Vec<(u64, Vec<u8>, usize)>> {
        let mut done = Vec::new();
        let mut dirs = vec![(crate::layout::keys::ROOT_INO, Vec::new())];
        while let Some((dir, path)) = dirs.pop() {
            let listing = match self.list_dir(dir) {
                Ok(listing) => listing,
                Err(FsError::NotFound) => continue, // removed meanwhile
                Err(e) => return Err(e),
            };
            for (name, (ino, kind)) in listing {
                if kind == crate::layout::record::Kind::Dir {
                    dirs.push((ino, crate::layout::names::join(&path, &name)));
                }
            }
            match self.compact_dir(dir, false) {
                Ok(0) | Err(FsError::NotFound) => {}
                Ok(dropped) => done.push((dir, path, dropped)),
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// The names of `listing` whose entry key names the listed inode.
    fn with_entries_agreeing(
        &self,
        dir: u64,
        listing: dirlog::Listing,
    ) -> FsResult<dirlog::Listing> {
        let mut batch = crate::store::batch::Batch::new();
        let entries: Vec<_> = listing
            .keys()
            .map(|name| batch.gets(self.tree.keys.entry(dir, name)))
            .collect();
        let mut replies = batch.execute(&self.tree.store);
        let mut kept = dirlog::Listing::new();
        for ((name, (ino, kind)), entry) in listing.into_iter().zip(entries) {
            if replies.entry(entry, &name)?.ino == Some(ino) {
                kept.insert(name, (ino, kind));
            }
        }
        Ok(kept)
    }
}
