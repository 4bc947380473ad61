//! Creating many files of one directory in two pipelined batches (`memfis load`).
//!
//! The same steps as creates followed by their first publishes, for many names at once.
//! Batch 1, the creates, is the create of every file together (`namespace/claim.rs`): each file's
//! record `add`ed empty, its entry and its empty data key `add`ed; one log append (`incr` by
//! the count) lists them all; the directory's mtime and the inode count; the create's fence
//! read last. Batch 2, the publishes: every data key given its bytes (a served key
//! by `cas` on the token batch 1 read) and every record `cas`ed to its size, the fence read
//! again. About 7 commands a file (5 for a file others may not read) instead of ~15, and two
//! round trips for the lot (plus the reservations of inode numbers, one per 64). A crash
//! between the two leaves empty files, as a crash between a create and its publish does. A
//! name taken meanwhile is undone alone (EEXIST); after a namespace operation that ran during
//! a batch, the affected files are waited out and published again the one-file way, at the
//! names the operation left.

use memfis_memcache::command::Value;
use memfis_memcache::{Store, StoreOp};

use crate::files::Files;
use crate::layout::attr::SetAttr;
use crate::layout::names::{check_name, join};
use crate::layout::record::{Inode, Kind, Link};
use crate::namespace::claim::NewName;
use crate::store::batch::{Batch, CasOutcome};
use crate::store::retried;
use crate::{FsError, FsResult};

/// A file to create.
pub struct NewFile {
    pub name: Vec<u8>,
    /// Mode, owner, times and xattrs of the file; its kind, size and names are set here.
    pub record: Inode,
    pub bytes: Value,
}

/// A file created (empty), with what its first publish needs.
struct Planned {
    index: usize,
    ino: u64,
    /// As stored by the first batch (size 0).
    record: Inode,
    /// The record's cas token as the first batch made it.
    cas: u64,
    name: Vec<u8>,
    record_key: Vec<u8>,
    data_key: Vec<u8>,
    /// The served data key's cas token as batch 1 made it (`RecordVersion::key_tokens`); `None`
    /// for a private key.
    data_token: Option<u64>,
    bytes: Value,
}

impl<S: Store> Files<S> {
    /// Creates `files` in `parent`, each whole (bytes and attributes) or not at all. One
    /// result per file, in order: its inode, or why it was not created (EEXIST when the name
    /// is taken, EFBIG, ENAMETOOLONG, ENOENT when the directory went meanwhile, a store
    /// error ...). Fails as a whole when the directory cannot be found, or its path once the
    /// files are made (they are then made but empty).
    pub fn create_files(&self, parent: u64, files: Vec<NewFile>) -> FsResult<Vec<FsResult<u64>>> {
        let dir = self.names.dir_info(parent)?;
        let mut out: Vec<FsResult<u64>> = Vec::with_capacity(files.len());
        let mut names = Vec::new();
        let mut bytes = Vec::new();
        for (index, f) in files.into_iter().enumerate() {
            let mut rec = f.record;
            rec.kind = Kind::File;
            // Stored empty first; the size follows once the bytes are where they belong.
            rec.size = 0;
            rec.links = vec![Link::new(parent, &f.name)];
            if dir.mode & libc::S_ISGID != 0 {
                rec.gid = dir.gid;
            }
            let path = join(&dir.path, &f.name);
            let checked = check_name(&f.name)
                .and_then(|()| self.tree.check_fits_item(&path, f.bytes.len() as u64))
                .and_then(|()| {
                    let ino = self.names.alloc_ino()?;
                    self.names
                        .check_record_size(&self.tree.keys.inode(ino), rec.encode().len())?;
                    Ok(ino)
                });
            match checked {
                Ok(ino) => {
                    names.push(NewName {
                        name: f.name,
                        ino,
                        rec,
                    });
                    bytes.push((index, f.bytes));
                    out.push(Ok(ino));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        if names.is_empty() {
            return Ok(out);
        }
        let mut created = Vec::new();
        for (node, (index, bytes)) in self
            .names
            .claim_names(parent, &dir.path, names)
            .into_iter()
            .zip(bytes)
        {
            match node {
                Ok(n) => created.push(Planned {
                    index,
                    ino: n.ino,
                    record_key: self.tree.keys.inode(n.ino),
                    record: n.rec,
                    cas: n.cas,
                    name: n.name,
                    data_key: n.data_key,
                    data_token: n.data_token,
                    bytes,
                }),
                Err(e) => out[index] = Err(e),
            }
        }
        if created.is_empty() {
            return Ok(out);
        }
        let path_now = match retried(|| self.names.dir_path(parent)) {
            Ok(p) => p,
            Err(e) => {
                // The names are made (empty); keys left at a path the directory moved away
                // from go when the heartbeat finds no name at them.
                self.maintenance
                    .leave_stale_keys(created.iter().map(|p| p.data_key.clone()));
                return Err(e);
            }
        };
        for (index, e) in self.publish_created(&path_now, &created) {
            out[index] = Err(e);
        }
        Ok(out)
    }

    /// Batch 2: the bytes to every new name and the size to every record, fenced like a
    /// publish. A file whose record changed meanwhile, or all of them after a namespace
    /// operation ran, are published again the one-file way (which waits it out and writes at
    /// the names it left). Returns the files that could not be published.
    fn publish_created(&self, dir_path: &[u8], placed: &[Planned]) -> Vec<(usize, FsError)> {
        let generation_before = self.names.paths_generation();
        let mut batch = Batch::new();
        let mut keys = Vec::new();
        let mut failed = Vec::new();
        let mut sent = Vec::new();
        for p in placed {
            let key = self
                .tree
                .keys
                .file_bytes(p.ino, p.record.mode, &join(dir_path, &p.name));
            let write = if key == self.tree.keys.private_data(p.ino) {
                batch.store_shared(StoreOp::Set, &key, p.bytes.clone())
            } else {
                match p.data_token.filter(|_| key == p.data_key) {
                    // A served key only with the token batch 1 read (see `RecordVersion::key_tokens`).
                    Some(token) => batch.cas_write(&key, p.bytes.clone(), token),
                    // Moved with its directory meanwhile: the one-file way reads it first.
                    None => {
                        if let Err(e) = self.publish_again(p) {
                            failed.push((p.index, e));
                        }
                        continue;
                    }
                }
            };
            let mut rec = p.record.clone();
            rec.size = p.bytes.len() as u64;
            let record = batch.cas(&p.record_key, &rec.encode(), p.cas);
            keys.push(key);
            sent.push((p, write, record));
        }
        batch.fence();
        let lock = batch.get(self.tree.keys.ns_lock());
        let generation = batch.get(self.tree.keys.dir_generation());
        let mut results = batch.execute(&self.tree.store);
        let mut placed = Vec::with_capacity(sent.len());
        let mut outcomes = Vec::with_capacity(sent.len());
        for (p, write, record) in sent {
            outcomes.push((results.take(write), results.take(record)));
            placed.push(p);
        }
        let quiet = matches!(results.take(lock), Ok(None))
            && self.names.note_generation(results.take(generation)).is_ok()
            && self.names.paths_generation() == generation_before;
        let mut removed = Vec::new();
        for ((p, (set, cas)), key) in placed.iter().zip(outcomes).zip(keys) {
            match (set, cas) {
                (Ok(true), Ok(CasOutcome::Stored)) if quiet => {
                    self.tree.activity.published(p.bytes.len())
                }
                // Removed by another mount meanwhile: the bytes just set go where no name is.
                (_, Ok(CasOutcome::Gone)) => removed.push(key),
                _ => {
                    if let Err(e) = self.publish_again(p) {
                        failed.push((p.index, e));
                    }
                    // Set at a path a rename may have taken away: goes if no name is there.
                    removed.push(key);
                }
            }
        }
        if !removed.is_empty()
            && let Err(e) = self.names.delete_keys_outside_tree(&removed)
        {
            crate::limited_warn!(
                format!("delete stale keys: {}", e.kind()),
                "could not delete data keys no name has: {e}"
            );
        }
        failed
    }

    /// The one-file publish of a new file's bytes (after a namespace operation, or a record
    /// another mount changed): through an open handle, as a write would be.
    fn publish_again(&self, p: &Planned) -> FsResult<()> {
        let fh = match self.open(p.ino, libc::O_WRONLY | libc::O_TRUNC) {
            Ok(fh) => fh,
            Err(FsError::NotFound) => return Ok(()), // removed meanwhile
            Err(e) => return Err(e),
        };
        // The write makes the mtime "now"; the file keeps the times it was created with (a
        // load copies them from the source, and a whole batch comes here when its fence
        // found a namespace operation running, such as the heartbeat's compaction).
        let times = SetAttr {
            atime: Some(p.record.atime),
            mtime: Some(p.record.mtime),
            ..SetAttr::default()
        };
        let written = self
            .write(fh, 0, &p.bytes, false)
            .and_then(|_| self.setattr(p.ino, &times))
            .map(drop);
        let published = self.release(fh);
        written.and(published)
    }
}
