//! Loading an open file's bytes from the key its record names, fenced against namespace
//! operations (of any mount) that move them: renames, chmods, links and directory renames.
//! Here, with the names, because where a file's bytes are is a matter of its names (a served
//! key is a path), and an operation holding the namespace lock loads the bytes of files open
//! in this mount before their last key goes (`keep_bytes_for_open_handles`, in
//! `roll_forward.rs`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use memfis_memcache::command::Value;
use memfis_memcache::{Command, Item, Store, StoreOp};
use tracing::warn;

use crate::files::open_files::OpenFile;
use crate::layout::intent::Intent;
use crate::layout::record::{Inode, Kind, Link};
use crate::namespace::Namespace;
use crate::namespace::lock::LockValue;
use crate::store::batch::{Batch, Cas, CasOutcome, Got, Handle, Replies, StoreAt};
use crate::sync::lock;
use crate::{FsError, FsResult};

/// What one load of a file's bytes found ([`Namespace::load_bytes`]).
pub(crate) enum Load {
    Loaded,
    /// A namespace operation that may be moving the bytes is running (or the record kept
    /// changing): wait until the namespace is quiet, then load again.
    AfterNamespaceOp,
}

/// Looks at the bytes a load takes before it waits for the namespace to settle (each one
/// after the record or the paths changed under it).
const LOAD_LOOKS: usize = 16;
/// Namespace operations a read or write waits out before giving up (EBUSY).
const LOAD_WAITS: usize = 64;
/// Between the two looks at bytes of another size than the record's.
const MISMATCH_PAUSE: Duration = Duration::from_millis(10);

/// Where the replies to a load's fence reads are ([`Namespace::load_fence`]).
struct LoadFence {
    lock: Handle<Got>,
    generation: Handle<Got>,
    /// The record again, read where the fence runs after the data key's read.
    record: Option<Handle<Got>>,
}

/// What a load's fence read: the lock's value, the directory-rename count, the record.
type LoadFenceRead = (Option<Item>, FsResult<Option<Item>>, Option<Option<Item>>);

impl LoadFence {
    fn take(self, r: &mut Replies) -> FsResult<LoadFenceRead> {
        let held = r.take(self.lock)?;
        let generation = r.take(self.generation);
        let record = match self.record {
            Some(h) => Some(r.take(h)?),
            None => None,
        };
        Ok((held, generation, record))
    }
}

impl<S: Store> Namespace<S> {
    /// Where the bytes of a file's name `link` live (`KeyLayout::file_bytes`).
    pub(crate) fn bytes_key(&self, ino: u64, rec: &Inode, link: &Link) -> FsResult<Vec<u8>> {
        Ok(self
            .tree
            .keys
            .file_bytes(ino, rec.mode, &self.link_path(link)?))
    }

    /// Every key that holds a file's bytes: the data key of each served name, and its
    /// private key once if any name is not served. None for a file in chunks.
    pub(crate) fn bytes_keys(&self, ino: u64, rec: &Inode) -> FsResult<Vec<Vec<u8>>> {
        if rec.chunk_size.is_some() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(rec.links.len());
        for link in &rec.links {
            let key = self.bytes_key(ino, rec, link)?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Loads the file's bytes into the buffer if not there yet, for callers that hold the
    /// open file and cannot let go of it: a namespace operation moving the bytes is waited
    /// out passively, for a few seconds at most (EBUSY after that). Reads and writes use
    /// [`Self::lock_loaded`], which waits with the open file unlocked.
    pub(crate) fn ensure_loaded(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        for _ in 0..3 {
            match self.load_bytes(ino, of, false)? {
                Load::Loaded => return Ok(()),
                // Not `wait_quiet`: completing another mount's intent could need this open
                // file, whose lock the caller holds.
                Load::AfterNamespaceOp => self.wait_unlocked_passively(),
            }
        }
        Err(FsError::Contended)
    }

    /// [`Self::ensure_loaded`] for an operation of this mount that holds the namespace lock
    /// (the lock it finds is its own: nothing else moves names meanwhile).
    pub(crate) fn ensure_loaded_holding_lock(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        match self.load_bytes(ino, of, true)? {
            Load::Loaded => Ok(()),
            Load::AfterNamespaceOp => Err(FsError::Contended),
        }
    }

    /// Locks the open file with its bytes loaded. A namespace operation that may be moving
    /// them is waited out with the open file unlocked (completing another mount's operation
    /// may need it), then the bytes are looked up again.
    pub(crate) fn lock_loaded<'a>(
        &self,
        ino: u64,
        file: &'a Arc<Mutex<OpenFile>>,
    ) -> FsResult<MutexGuard<'a, OpenFile>> {
        for _ in 0..LOAD_WAITS {
            let mut of = lock(file);
            match self.load_bytes(ino, &mut of, false)? {
                Load::Loaded => return Ok(of),
                Load::AfterNamespaceOp => {
                    drop(of);
                    self.wait_quiet()?;
                }
            }
        }
        Err(FsError::Contended)
    }

    /// Looks up the file's bytes at the key its record names, with a fence read after it:
    /// the namespace lock, the directory-rename count and the record again. Other mounts'
    /// renames, chmods and directory renames move the bytes between keys, so what is found
    /// counts only if the record is still the version the key came from (its cas), no
    /// directory moved since the paths were worked out, and no namespace operation that can
    /// move this file's bytes is running. Otherwise the newer record is taken and the bytes
    /// looked up again (or the operation waited out): a key holding nothing or another file's
    /// bytes is never taken for this file's.
    ///
    /// Once all stood still: bytes of another size than the record's were left by a writer
    /// between its bytes and its record's cas (one that died there, or one a moment from its
    /// cas: looked at twice); the record takes their size by `cas` on the version checked. A
    /// key holding nothing (looked at twice) is damage: EIO naming path and key. A record
    /// gone is ENOENT.
    ///
    /// (Over 80 lines: each look is one batch whose replies decide together, and every
    /// branch's comment explains a race; split, the pieces would pass the whole look along.)
    pub(crate) fn load_bytes(&self, ino: u64, of: &mut OpenFile, own_lock: bool) -> FsResult<Load> {
        let ikey = self.tree.keys.inode(ino);
        let mut mismatch_seen = None;
        let mut missing_seen = false;
        for _ in 0..LOAD_LOOKS {
            if of.is_loaded() {
                return Ok(Load::Loaded); // (chunks are read as they are needed)
            }
            let Some(link) = of.record().links.first().cloned() else {
                return Err(FsError::NotFound); // every name removed by another mount
            };
            // Read before the paths are worked out (as a publish does).
            let generation_before = self.meta.generation();
            let key = self.bytes_key(ino, of.record(), &link)?;
            // One batch where it runs in order. On a pool the fence goes in a second round
            // trip, and only when the bytes do not fit the record: a load costs one round
            // trip there, as before (without the record read, no tokens are taken).
            let in_order = self.tree.store.in_order();
            let mut batch = Batch::new();
            let value = batch.gets(&key);
            let fence = self.load_fence(&mut batch, ino, in_order);
            let mut r = batch.execute(&self.tree.store);
            let value = r.take(value)?;
            let fits = value
                .as_ref()
                .is_some_and(|item| item.value.len() as u64 == of.record().size);
            let (held, generation, current) = if in_order || fits {
                fence.take(&mut r)?
            } else {
                let mut batch = Batch::new();
                let fence = self.load_fence(&mut batch, ino, true);
                fence.take(&mut batch.execute(&self.tree.store))?
            };
            self.note_generation(generation)?;
            let moved = self.meta.generation() != generation_before;
            let checked = current.is_some();
            match current {
                // Removed by another mount: as for a stale handle on a local filesystem.
                Some(None) => return Err(FsError::NotFound),
                Some(Some(item)) if item.cas.is_none() || item.cas != of.cas() => {
                    // The record changed (a rename, chmod, link, publish ...) or its version
                    // is unknown: look again where the current one says.
                    of.take_newer_record(Inode::decode(&ikey, &item.value)?, item.cas);
                    of.forget_bytes();
                    continue;
                }
                _ => {}
            }
            if moved {
                continue; // a directory moved: paths worked out again (the cache was dropped)
            }
            let running = !own_lock && held.is_some();
            let moving = running
                && held
                    .as_ref()
                    .is_none_or(|item| self.may_move_bytes_of(ino, &item.value));
            match value {
                Some(_) if moving => return Ok(Load::AfterNamespaceOp),
                Some(item) if fits => {
                    if checked && of.record().links.len() == 1 {
                        // The record read after the key is the version held: the key's token
                        // is this file's (`RecordVersion::key_tokens`).
                        of.take_key_tokens([(key, item.cas.unwrap_or(0))].into());
                    }
                    of.loaded(Arc::new(item.value));
                    return Ok(Load::Loaded);
                }
                Some(item) => {
                    // Another size than the record's, with record, paths and namespace
                    // standing still. A writer a moment from its record's cas has done it
                    // by the second look; one that died there has not.
                    let seen = (item.cas, of.cas());
                    if mismatch_seen != Some(seen) {
                        mismatch_seen = Some(seen);
                        std::thread::sleep(MISMATCH_PAUSE);
                        continue;
                    }
                    let size = item.value.len() as u64;
                    if !of.is_dirty() {
                        match self.adopt_served_size(ino, of, size)? {
                            CasOutcome::Stored => {}
                            CasOutcome::Changed => {
                                of.forget_version(); // look again over the newer record
                                continue;
                            }
                            CasOutcome::Gone => return Err(FsError::NotFound),
                        }
                    }
                    // (A dirty file's publish records the size, by cas on this version.)
                    of.loaded(Arc::new(item.value));
                    return Ok(Load::Loaded);
                }
                None if of.record().size == 0 => {
                    // An empty file's served key is missing only if its creator died before
                    // it could follow a directory rename: put it back, as nginx expects;
                    // unless the name was removed meanwhile (this record is older than that).
                    // A private key is made only by a publish: missing means empty.
                    if held.is_none()
                        && key != self.tree.keys.private_data(ino)
                        && self
                            .read_entry(link.parent, &link.name)
                            .is_ok_and(|slot| slot.ino == Some(ino))
                    {
                        let _ = self.tree.store.store(StoreOp::Add, &key, b"");
                    }
                    of.loaded(Value::default());
                    return Ok(Load::Loaded);
                }
                None if running => return Ok(Load::AfterNamespaceOp),
                None if !missing_seen => {
                    // The record names this key, nothing moves, and the bytes are not there:
                    // looked at once more before it counts as damage (a removal or a move by
                    // another mount between the looks shows in the record or the lock).
                    missing_seen = true;
                    std::thread::sleep(MISMATCH_PAUSE);
                    continue;
                }
                None => {
                    // Still: damage.
                    warn!(
                        ino,
                        path = %self.path_of(link.parent, &link.name),
                        key = %String::from_utf8_lossy(&key),
                        "file's data key is missing"
                    );
                    return Err(FsError::missing(&key));
                }
            }
        }
        // The record or the paths kept moving: let the namespace settle first.
        Ok(Load::AfterNamespaceOp)
    }

    /// Whether the namespace operation holding the lock (`value`, the lock's) may move the
    /// bytes of inode `ino` while it runs: one on this file, or one moving a directory (the
    /// file may be below it). One that stored no intent yet has changed nothing.
    pub(crate) fn may_move_bytes_of(&self, ino: u64, value: &[u8]) -> bool {
        let Ok(held) = serde_json::from_slice::<LockValue>(value) else {
            return true;
        };
        match held.intent {
            None | Some(Intent::Rmdir { .. }) => false,
            Some(Intent::Unlink { ino: i, .. })
            | Some(Intent::Link { ino: i, .. })
            | Some(Intent::Chmod { ino: i, .. }) => i == ino,
            Some(Intent::Rename(r)) => {
                r.ino == ino
                    || r.kind == Kind::Dir
                    || r.replaced
                        .is_some_and(|(b, kind)| b == ino || kind == Kind::Dir)
            }
        }
    }

    /// Pushes a load's fence reads: the namespace lock, the directory-rename count and,
    /// with `record`, the record again.
    fn load_fence(&self, batch: &mut Batch, ino: u64, record: bool) -> LoadFence {
        LoadFence {
            lock: batch.get(self.tree.keys.ns_lock()),
            generation: batch.get(self.tree.keys.dir_generation()),
            record: record.then(|| batch.gets(self.tree.keys.inode(ino))),
        }
    }

    /// The record takes the size of the bytes at the data key (see [`Self::load_bytes`]):
    /// by `cas` on the version whose key was read, so a record that changed meanwhile is
    /// left alone (and the bytes looked up again).
    fn adopt_served_size(&self, ino: u64, of: &mut OpenFile, size: u64) -> FsResult<CasOutcome> {
        let ikey = self.tree.keys.inode(ino);
        let mut rec = of.record().clone();
        rec.size = size;
        let value = rec.encode();
        self.check_record_size(&ikey, value.len())?;
        let cas = Command::cas(&ikey, &value, of.cas().unwrap_or(0));
        let outcome = self.tree.store.run_at::<Cas>(&ikey, cas)?;
        if outcome == CasOutcome::Stored {
            warn!(
                ino,
                recorded = of.record().size,
                served = size,
                "record size differs from the data key; taking the data key's (a writer died, or is slow, between its bytes and its record)"
            );
            of.adopt_record(rec);
        }
        Ok(outcome)
    }

    /// Polls until no namespace operation runs, for at most a few seconds.
    fn wait_unlocked_passively(&self) {
        for _ in 0..200 {
            if self.is_quiet().unwrap_or(true) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
