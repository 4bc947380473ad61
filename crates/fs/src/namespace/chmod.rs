//! Moving a file's bytes when a chmod changes whether others may read it (where they live:
//! `file_bytes.rs`).
//!
//! A name of a file is served (its bytes at its data key, `PREFIX + path`, which nginx reads)
//! while the file's mode grants read to others and the key fits memcached's 250 bytes; the
//! bytes of every other name sit at the inode's private key (`PREFIX%d<ino>`), which no URI
//! reaches (`KeyLayout::file_bytes`). A chmod that adds or removes o+r moves them, under the
//! namespace lock with an intent, so a crash or another mount can finish the move: first the
//! record takes the new mode (the point of no return), then the bytes are copied from where
//! the old mode kept them to where the new one does, then the old keys are deleted.
//!
//! A chmod that serves a file this mount holds open for writing (`cp -a` creates files
//! unreadable by others and opens them up before closing) rides with the publish instead,
//! which writes the new keys and deletes the old ones like keys a rename took away
//! (`files/io.rs`). One that withdraws a served file never waits for the writer
//! (`files/setattr.rs`).

use memfis_memcache::{Command, Store, StoreOp};

use crate::layout::attr::SetAttr;
use crate::layout::intent::Intent;
use crate::layout::keys::is_public;
use crate::layout::record::{Inode, Kind};
use crate::namespace::Namespace;
use crate::store::batch::{Batch, Cas, StoreAt};
use crate::store::replies::{CasOutcome, value_of};
use crate::tree::CAS_RETRIES;
use crate::{FsError, FsResult};

/// True when `set` would serve or withdraw the file `rec` (its bytes must move).
pub(crate) fn changes_visibility(rec: &Inode, set: &SetAttr) -> bool {
    let mut after = rec.clone();
    set.apply_to(&mut after);
    rec.kind == Kind::File && is_public(after.mode) != is_public(rec.mode)
}

impl<S: Store> Namespace<S> {
    /// setattr of a file whose bytes may move (see the module comment).
    pub(crate) fn setattr_moving_bytes(&self, ino: u64, set: &SetAttr) -> FsResult<()> {
        let key = self.tree.keys.inode(ino);
        self.with_ns_lock(crate::store::batch::Batch::new(), |guard, _| {
            for _ in 0..CAS_RETRIES {
                let (old, cas) = self.read_live_inode(ino)?;
                let mut rec = old.clone();
                set.apply_to(&mut rec);
                let value = rec.encode();
                self.check_record_size(&key, value.len())?;
                let first = Command::cas(&key, &value, cas);
                if !changes_visibility(&old, set) {
                    // Another mount changed the mode meanwhile: nothing moves after all.
                    match self.tree.store.run_at::<Cas>(&key, first)? {
                        CasOutcome::Stored => {
                            self.adopt(ino, &rec);
                            return Ok(());
                        }
                        CasOutcome::Changed => continue,
                        CasOutcome::Gone => return Err(FsError::NotFound),
                    }
                }
                let intent = Intent::Chmod {
                    ino,
                    public: is_public(rec.mode),
                };
                if self.begin(guard, &intent, vec![first])?[0] {
                    self.complete(&intent)?;
                    self.adopt(ino, &rec);
                    return Ok(());
                }
                guard.intent = None; // the record changed meanwhile: read it again
            }
            Err(FsError::Contended)
        })
    }

    /// [`Namespace::bytes_keys`] without the names whose directory is gone (a create undone
    /// after an rmdir fenced its directory can leave such a name in a record a moment): an
    /// intent must finish whatever it finds.
    fn reachable_bytes_keys(&self, ino: u64, rec: &Inode) -> FsResult<Vec<Vec<u8>>> {
        let mut reachable = rec.clone();
        reachable.links.clear();
        for link in &rec.links {
            match self.link_path(link) {
                Ok(_) => reachable.links.push(link.clone()),
                Err(FsError::NotFound | FsError::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.bytes_keys(ino, &reachable)
    }

    /// Finishes a chmod that served (`public`) or withdrew a file: copies its bytes from the
    /// keys the other mode kept them at to the keys the record's mode keeps them at, then
    /// deletes the old keys. Does nothing when the record's mode does not say `public` (the
    /// change never happened, or a later one undid it).
    pub(crate) fn complete_chmod(&self, ino: u64, public: bool) -> FsResult<()> {
        // The paths of the file's names come from this mount's cache of directory paths,
        // which a directory rename by another mount (finished before this one took the lock)
        // made stale unless this mount has seen the rename count since: read it with the
        // record. (Keys at stale paths hold nothing: the bytes would stay served, and the
        // private key would never be written.)
        let ikey = self.tree.keys.inode(ino);
        let mut reads = Batch::new();
        let generation = reads.get(self.tree.keys.dir_generation());
        let record = reads.gets(&ikey);
        let mut r = reads.execute(&self.tree.store);
        self.note_generation(r.take(generation))?;
        let Some(item) = r.take(record)? else {
            return Ok(()); // removed meanwhile, with its keys
        };
        let rec = Inode::decode(&ikey, &item.value)?;
        if is_public(rec.mode) != public || rec.kind != Kind::File {
            return Ok(());
        }
        let mut before = rec.clone();
        before.mode ^= libc::S_IROTH;
        let old_keys = self.reachable_bytes_keys(ino, &before)?;
        let new_keys = self.reachable_bytes_keys(ino, &rec)?;
        let gets = old_keys.iter().map(|k| Command::Get(k.clone())).collect();
        let mut bytes = None;
        for (key, r) in old_keys.iter().zip(self.tree.store.execute(gets)) {
            if let Some(item) = value_of(key, r)? {
                bytes.get_or_insert(item.value);
            }
        }
        let mut batch: Vec<Command> = match bytes {
            Some(bytes) => new_keys
                .iter()
                .filter(|k| !old_keys.contains(k))
                .map(|k| Command::store(StoreOp::Set, k, &bytes))
                .collect(),
            // Moved by an earlier run (the old keys are deleted last), or an empty file with
            // no private key yet: nginx serves an empty file from an empty key.
            None if rec.size == 0 && public => new_keys
                .iter()
                .map(|k| Command::store(StoreOp::Add, k, b""))
                .collect(),
            None => Vec::new(),
        };
        // Sets before deletes: readers find the bytes at one key or the other throughout.
        batch.extend(
            old_keys
                .iter()
                .filter(|k| !new_keys.contains(k))
                .map(|k| Command::Delete(k.clone())),
        );
        // (An `add` that found its key: an earlier run made it.)
        self.tree.store.execute_all(batch)
    }
}
