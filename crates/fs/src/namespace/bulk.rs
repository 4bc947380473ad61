//! Creating many files of one directory in two pipelined batches (`memfis load`).
//!
//! The same steps as creates followed by their first publishes (`nodes.rs`, `files/io.rs`),
//! for many names at once. Batch 1, the creates: each file's record `add`ed empty, its entry
//! and its empty data key `add`ed; one log append (`incr` by the count) lists them all; the
//! directory's mtime and the inode count; the lock and the directory-rename count read last,
//! as a create's fence. Batch 2, the publishes: every data key given its bytes (a served key
//! by `cas` on the token batch 1 read) and every record `cas`ed to its size, the fence read
//! again. About 7 commands a file (6 for a file others may not read) instead of ~15, and two
//! round trips for the lot (plus the reservations of inode numbers, one per 64). A crash
//! between the two leaves empty files, as a crash between a create and its publish does. A
//! name taken meanwhile is undone alone (EEXIST); after a namespace operation that ran during
//! a batch, the affected files are waited out and published again the one-file way, at the
//! names the operation left.

use memfis_memcache::command::Value;
use memfis_memcache::{Command, Store, StoreOp};

use crate::fs::{MemFs, check_name, join, retried};
use crate::layout::attr::SetAttr;
use crate::layout::dirlog::Op;
use crate::layout::record::{Inode, Kind, Link};
use crate::namespace::listing::Logged;
use crate::namespace::nodes::Undo;
use crate::store::batch::{Batch, CasOutcome, Got, Handle, Stored};
use crate::sync::lock;
use crate::{FsError, FsResult};

/// A file to create.
pub struct NewFile {
    pub name: Vec<u8>,
    /// Mode, owner, times and xattrs of the file; its kind, size and names are set here.
    pub record: Inode,
    pub bytes: Value,
}

/// A file that passed the checks, with its inode number and keys.
struct Planned {
    index: usize,
    ino: u64,
    /// As stored by the first batch (size 0).
    record: Inode,
    name: Vec<u8>,
    record_key: Vec<u8>,
    data_key: Vec<u8>,
    /// The served data key's cas token as batch 1 made it (`RecordVersion::key_tokens`); `None`
    /// for a private key.
    data_token: Option<u64>,
    bytes: Value,
}

/// Where the replies to a file's commands of batch 1 are.
struct Sent {
    record_added: Handle<Stored>,
    record_read: Handle<Got>,
    entry_added: Handle<Stored>,
    data_added: Handle<Stored>,
    /// A served data key's token, read after the record's.
    data_read: Option<Handle<Got>>,
}

impl<S: Store> MemFs<S> {
    /// Creates `files` in `parent`, each whole (bytes and attributes) or not at all. One
    /// result per file, in order: its inode, or why it was not created (EEXIST when the name
    /// is taken, EFBIG, ENAMETOOLONG ...). Fails as a whole when the directory cannot be
    /// written (gone, store down: nothing of the batch is left), or when a namespace
    /// operation ran meanwhile and the store failed while waiting for it (the files are then
    /// made but empty).
    pub fn create_files(&self, parent: u64, files: Vec<NewFile>) -> FsResult<Vec<FsResult<u64>>> {
        let dir = self.dir_info(parent)?;
        let mut out: Vec<FsResult<u64>> = Vec::with_capacity(files.len());
        let mut planned = Vec::new();
        let mut sent = Vec::new();
        let mut batch = Batch::new();
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
                .and_then(|()| self.check_fits_item(&path, f.bytes.len() as u64))
                .and_then(|()| {
                    let ino = self.alloc_ino()?;
                    let record_key = self.keys.inode(ino);
                    let value = rec.encode();
                    self.check_record_size(&record_key, value.len())?;
                    let key = self.keys.file_bytes(ino, rec.mode, &path);
                    Ok((key, ino, record_key, value, rec.clone()))
                });
            match checked {
                Ok((data_key, ino, record_key, value, record)) => {
                    let entry_key = self.keys.entry(parent, &f.name);
                    let served = data_key != self.keys.private_data(ino);
                    sent.push(Sent {
                        record_added: batch.add(&record_key, &value),
                        record_read: batch.gets(&record_key),
                        entry_added: batch
                            .add(&entry_key, &self.keys.entry_value(parent, &f.name, ino)),
                        data_added: batch.add(&data_key, b""),
                        // Read after the record's gets: the key is this file's.
                        data_read: served.then(|| batch.gets(&data_key)),
                    });
                    planned.push(Planned {
                        index,
                        ino,
                        record,
                        name: f.name,
                        record_key,
                        data_token: None,
                        data_key,
                        bytes: f.bytes,
                    });
                    out.push(Ok(ino));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        if planned.is_empty() {
            return Ok(out);
        }
        let changes: Vec<_> = planned
            .iter()
            .map(|p| (Op::Add, Kind::File, p.ino, p.name.as_slice()))
            .collect();
        let la = self.log_append(parent, &changes);
        let log = self.log_commands(&la, &mut batch);
        let (touch, now) = self.touch_dir_cmd(parent);
        let touched = batch.push::<Stored>(touch);
        // Statistics only: unread.
        let _inode_count = batch.incr(self.keys.inode_count(), planned.len() as u64);
        let fence = self.create_fence_cmds(parent, &mut batch);
        let mut results = batch.execute(&self.store);
        let per_file: Vec<_> = planned
            .iter_mut()
            .zip(sent)
            .map(|(p, sent)| {
                p.data_token = sent
                    .data_read
                    .and_then(|h| results.take(h).ok().flatten().and_then(|i| i.cas));
                (
                    results.take(sent.record_added),
                    results.take(sent.record_read),
                    results.take(sent.entry_added),
                    results.take(sent.data_added),
                )
            })
            .collect();
        let logged = self.finish_log(&la, &mut results, log);
        let touched = results.take(touched).is_ok();
        let fence = self.read_create_fence(parent, &mut results, fence);

        let logged_ok = matches!(logged, Ok(Logged::Done));
        // Replies lost (the batch may have run): if the directory is gone, its keys the batch
        // may have made again are taken back with the undo.
        let parent_gone = matches!(logged, Ok(Logged::DirGone))
            || logged.is_err() && matches!(self.dir_seq_value(parent), Ok(None));
        let mut created = Vec::new();
        for (p, (rec_added, rec_read, entry_added, data_added)) in planned.iter().zip(per_file) {
            let data_stored = matches!(data_added, Ok(true));
            let outcome = (|| -> FsResult<()> {
                if !logged_ok {
                    return Err(match &logged {
                        Err(e) => FsError::corrupt(&self.keys.dir_seq(parent), e.to_string()),
                        Ok(_) => FsError::NotFound, // the directory went meanwhile
                    });
                }
                if !rec_added? {
                    return Err(FsError::corrupt(
                        &p.record_key,
                        "inode number already in use: the next-ino counter is behind \
                         (run `memfis check --repair`)",
                    ));
                }
                let claimed = entry_added?
                    || self.entry_swap(parent, &p.name, None, Some(p.ino))? == Some(p.ino);
                if !claimed {
                    return Err(FsError::Exists);
                }
                // A key already at the path (left by a crash) is overwritten by the publish.
                data_added?;
                Ok(())
            })();
            let cas = rec_read.ok().flatten().and_then(|item| item.cas);
            match outcome {
                Ok(()) => created.push((p, cas)),
                Err(e) => {
                    let undo = Undo {
                        ino: p.ino,
                        kind: Kind::File,
                        parent,
                        name: p.name.clone(),
                        // Unknown: the undo's entry step only removes this file's own.
                        entry: self
                            .read_entry(parent, &p.name)
                            .map_or(true, |slot| slot.ino == Some(p.ino)),
                        // Replies lost: the `+` may have landed (perhaps past a chunk the
                        // batch could not make); a `-` under the lock takes it back and makes
                        // the chunks, as for a single create.
                        logged: logged_ok || (logged.is_err() && !parent_gone),
                        parent_gone,
                        parent_keys: [
                            self.keys.dir_mtime(parent),
                            self.log_chunk_keys(&la)[0].clone(),
                            self.log_chunk_keys(&la)[1].clone(),
                        ],
                        own_added: vec![data_stored],
                    };
                    let own = vec![Command::store(StoreOp::Add, &p.data_key, b"")];
                    self.undo_create(undo, own);
                    out[p.index] = Err(e);
                }
            }
        }
        if !touched && !created.is_empty() {
            // Only the directory's time: try once more, the files are made (so the directory
            // is there; a gone one must not get its mtime key back).
            let (touch, now) = self.touch_dir_cmd(parent);
            let _ = self.store.run(touch);
            self.note_dir_touched(parent, now);
        } else if touched {
            self.note_dir_touched(parent, now);
        }
        for (p, _) in &created {
            self.meta
                .note_name(parent, &p.name, Some((p.ino, Kind::File)));
        }
        // As a create's fence: wait out a namespace operation that ran meanwhile, then move
        // the data keys if the directory moved.
        let relog: Vec<_> = created
            .iter()
            .map(|(p, _)| (Op::Add, Kind::File, p.ino, p.name.as_slice()))
            .collect();
        // If the directory was removed meanwhile, each file made is taken back: its entry
        // is its own, its `+` went with the directory's log.
        let undos = || -> Vec<(Undo, Vec<Command>)> {
            created
                .iter()
                .map(|(p, _)| {
                    let undo = Undo {
                        ino: p.ino,
                        kind: Kind::File,
                        parent,
                        name: p.name.clone(),
                        entry: true,
                        logged: false,
                        parent_gone: true,
                        parent_keys: [
                            self.keys.dir_mtime(parent),
                            self.log_chunk_keys(&la)[0].clone(),
                            self.log_chunk_keys(&la)[1].clone(),
                        ],
                        own_added: vec![true],
                    };
                    (undo, vec![Command::store(StoreOp::Add, &p.data_key, b"")])
                })
                .collect()
        };
        let path_now =
            match self.settle_create_fence(fence, parent, la.chunk, la.late.get(), &relog) {
                Ok(crate::namespace::nodes::Settled::Done) => retried(|| self.dir_path(parent)),
                Ok(crate::namespace::nodes::Settled::DirRemoved) => {
                    for (undo, own_keys) in undos() {
                        self.undo_create(undo, own_keys);
                    }
                    return Err(FsError::NotFound);
                }
                Err(e) => {
                    // Unknown whether the directory lives: the heartbeat settles it.
                    self.unsettled
                        .push(crate::namespace::unsettled::Unsettled::Settle {
                            parent,
                            chunk: la.chunk,
                            nodes: undos(),
                        });
                    Err(e)
                }
            };
        let path_now = match path_now {
            Ok(p) => p,
            Err(e) => {
                // The names are made (empty); keys left at a path the directory moved away
                // from go when the heartbeat finds no name at them.
                lock(&self.stale_keys).extend(created.iter().map(|(p, _)| p.data_key.clone()));
                return Err(e);
            }
        };
        let mut placed = Vec::new();
        for (p, cas) in created {
            if path_now != dir.path
                && let Err(e) = retried(|| self.move_created_key(parent, p))
            {
                // The name is made (empty); the key at the old path waits for the heartbeat.
                lock(&self.stale_keys).push(p.data_key.clone());
                out[p.index] = Err(e);
                continue;
            }
            placed.push((p, cas));
        }
        for (index, e) in self.publish_created(&path_now, &placed) {
            out[index] = Err(e);
        }
        Ok(out)
    }

    /// Batch 2: the bytes to every new name and the size to every record, fenced like a
    /// publish. A file whose record changed meanwhile, or all of them after a namespace
    /// operation ran, are published again the one-file way (which waits it out and writes at
    /// the names it left). Returns the files that could not be published.
    fn publish_created(
        &self,
        dir_path: &[u8],
        placed: &[(&Planned, Option<u64>)],
    ) -> Vec<(usize, FsError)> {
        let generation_before = self.meta.generation();
        let mut batch = Batch::new();
        let mut keys = Vec::new();
        let mut failed = Vec::new();
        let mut sent = Vec::new();
        for (p, cas) in placed {
            let key = self
                .keys
                .file_bytes(p.ino, p.record.mode, &join(dir_path, &p.name));
            let write = if key == self.keys.private_data(p.ino) {
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
            let record = batch.cas(&p.record_key, &rec.encode(), cas.unwrap_or(0));
            keys.push(key);
            sent.push((*p, *cas, write, record));
        }
        batch.fence();
        let lock = batch.get(self.keys.ns_lock());
        let generation = batch.get(self.keys.dir_generation());
        let mut results = batch.execute(&self.store);
        let mut placed = Vec::with_capacity(sent.len());
        let mut outcomes = Vec::with_capacity(sent.len());
        for (p, cas, write, record) in sent {
            outcomes.push((results.take(write), results.take(record)));
            placed.push((p, cas));
        }
        let quiet = matches!(results.take(lock), Ok(None))
            && self.note_generation(results.take(generation)).is_ok()
            && self.meta.generation() == generation_before;
        let mut removed = Vec::new();
        for (((p, _), (set, cas)), key) in placed.iter().zip(outcomes).zip(keys) {
            match (set, cas) {
                (Ok(true), Ok(CasOutcome::Stored)) if quiet => {
                    self.activity.published(p.bytes.len())
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
            && let Err(e) = self.delete_keys_outside_tree(&removed)
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

    /// After the directory moved during batch 1: the (empty) data key belongs at the new path,
    /// if the name is still this file's (under the namespace lock, so nothing moves meanwhile).
    fn move_created_key(&self, parent: u64, p: &Planned) -> FsResult<()> {
        let mut reads = Batch::new();
        let generation = reads.get(self.keys.dir_generation());
        self.with_ns_lock(reads, |_, mut results| {
            self.note_generation(results.take(generation))?;
            self.place_created_key(p.ino, parent, &p.name, &p.data_key)
                .map(drop)
        })
    }
}
