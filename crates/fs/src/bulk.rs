//! Creating many files of one directory in one pipelined batch (`memfis load`).
//!
//! The same steps as a create followed by its first publish (`namespace.rs`, `files.rs`), for
//! many names at once: each file's record is `add`ed with its final size, its entry `add`ed
//! and its data key `add`ed with its bytes; one log append (`incr` by the count) lists them
//! all; the directory's mtime and the inode count follow; the lock and the directory-rename
//! count are read last, as a create's fence. About 3 commands a file instead of ~15, and one
//! round trip for the lot. A file whose name (or data key) was taken meanwhile is undone alone
//! and reported; after a namespace operation that ran during the batch, the files are waited
//! out and moved to their directory's new path, as a single create would be.

use memfis_memcache::command::Value;
use memfis_memcache::{Command, Store, StoreOp};

use crate::dirlog::Op;
use crate::fs::{MemFs, check_name, join, retried};
use crate::listing::Logged;
use crate::namespace::Undo;
use crate::record::{Inode, Kind, Link};
use crate::replies::{CasOutcome, Replies};
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
    entry_key: Vec<u8>,
    data_key: Vec<u8>,
    bytes: Value,
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
        let mut batch = Vec::new();
        for (index, f) in files.into_iter().enumerate() {
            let mut rec = f.record;
            rec.kind = Kind::File;
            // Stored empty first; the size follows once the bytes are where they belong.
            rec.size = 0;
            rec.links = vec![Link::new(parent, &f.name)];
            if dir.mode & libc::S_ISGID != 0 {
                rec.gid = dir.gid;
            }
            let checked = check_name(&f.name)
                .and_then(|()| self.keys.data_checked(&join(&dir.path, &f.name)))
                .and_then(|key| match self.check_size(0, f.bytes.len() as u64) {
                    Err(FsError::TooBig { limit, .. }) => Err(FsError::TooBig {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        limit,
                    }),
                    other => other.map(|()| key),
                })
                .and_then(|key| {
                    let ino = self.alloc_ino()?;
                    let record_key = self.keys.inode(ino);
                    let value = rec.encode();
                    self.check_record_size(&record_key, value.len())?;
                    Ok((key, ino, record_key, value, rec.clone()))
                });
            match checked {
                Ok((data_key, ino, record_key, value, record)) => {
                    let entry_key = self.keys.entry(parent, &f.name);
                    batch.push(Command::store(StoreOp::Add, &record_key, &value));
                    batch.push(Command::Gets(record_key.clone()));
                    batch.push(Command::store(
                        StoreOp::Add,
                        &entry_key,
                        ino.to_string().as_bytes(),
                    ));
                    batch.push(Command::store_shared(
                        StoreOp::Add,
                        &data_key,
                        f.bytes.clone(),
                    ));
                    planned.push(Planned {
                        index,
                        ino,
                        record,
                        name: f.name,
                        record_key,
                        entry_key,
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
        batch.extend(self.log_commands(&la));
        let (touch, now) = self.touch_dir_cmd(parent);
        batch.push(touch);
        batch.push(Command::Incr {
            key: self.keys.inode_count(),
            delta: planned.len() as u64,
        });
        let fence = vec![
            Command::Get(self.keys.ns_lock()),
            Command::Get(self.keys.dir_generation()),
        ];
        let mut results = Replies::new(self.execute_in_order(batch, fence));
        let per_file: Vec<_> = planned
            .iter()
            .map(|p| {
                (
                    results.stored(&p.record_key),
                    results.value(&p.record_key),
                    results.stored(&p.entry_key),
                    results.stored(&p.data_key),
                )
            })
            .collect();
        let logged = self.finish_log(&la, &mut results);
        let touched = results.reply();
        let _inode_count = results.reply(); // statistics only
        let lock_held = results.value(&self.keys.ns_lock()).map(|v| v.is_some());
        let generation = results.reply();

        let logged_ok = matches!(logged, Ok(Logged::Done));
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
                if !data_added? {
                    // A key left at the path by a crash: the name is this file's now.
                    self.write_data_keys(std::slice::from_ref(&p.data_key), p.bytes.clone())?;
                }
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
                        name: &p.name,
                        // Unknown: the undo's entry step only removes this file's own.
                        entry: self
                            .read_entry(parent, &p.name)
                            .map_or(true, |slot| slot.ino == Some(p.ino)),
                        logged: logged_ok,
                        parent_gone: matches!(logged, Ok(Logged::DirGone)),
                        parent_keys: [
                            self.keys.dir_mtime(parent),
                            self.log_chunk_keys(&la)[0].clone(),
                            self.log_chunk_keys(&la)[1].clone(),
                        ],
                        own_added: vec![data_stored],
                    };
                    let own = [Command::store(StoreOp::Add, &p.data_key, b"")];
                    self.undo_create(&undo, &own);
                    out[p.index] = Err(e);
                }
            }
        }
        if touched.is_err() {
            // Only the directory's time: try once more, the files are made.
            let (touch, now) = self.touch_dir_cmd(parent);
            let _ = self.store.run(touch);
            self.note_dir_touched(parent, now);
        } else {
            self.note_dir_touched(parent, now);
        }
        for (p, _) in &created {
            self.meta.note_name(parent, &p.name, Some(p.ino));
        }
        // As a create's fence: wait out a namespace operation that ran meanwhile, then move
        // the data keys if the directory moved.
        let mut fenced = match lock_held {
            Ok(false) => self.observe_generation(generation),
            _ => Err(FsError::Contended),
        };
        for _ in 0..5 {
            if fenced.is_ok() {
                break;
            }
            fenced = self.wait_quiet().and_then(|()| {
                let key = self.keys.dir_generation();
                self.observe_generation(self.store.run(Command::Get(key)))
            });
        }
        let path_now = fenced.and_then(|()| retried(|| self.dir_path(parent)));
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
                && let Err(e) = retried(|| self.move_bulk_data_key(parent, p, &path_now))
            {
                // The name is made (empty); the key at the old path waits for the heartbeat.
                lock(&self.stale_keys).push(p.data_key.clone());
                out[p.index] = Err(e);
                continue;
            }
            placed.push((p, cas));
        }
        for (index, e) in self.set_sizes(&placed) {
            out[index] = Err(e);
        }
        Ok(out)
    }

    /// The second step: each record takes its size, now that its bytes are at its name. Until
    /// then a crash leaves an empty file (the bytes, if at an old path, are garbage no name
    /// reaches), never a record promising bytes that are not there. A record another mount
    /// changed meanwhile (it wrote or removed the file) is left as that mount made it.
    /// Returns the files whose size could not be set.
    fn set_sizes(&self, placed: &[(&Planned, Option<u64>)]) -> Vec<(usize, FsError)> {
        let sized = |p: &Planned| {
            let mut rec = p.record.clone();
            rec.size = p.bytes.len() as u64;
            rec
        };
        let batch: Vec<Command> = placed
            .iter()
            .map(|(p, cas)| Command::cas(&p.record_key, &sized(p).encode(), cas.unwrap_or(0)))
            .collect();
        let mut results = Replies::new(self.store.execute(batch));
        let mut failed = Vec::new();
        for (p, _) in placed {
            match results.cas(&p.record_key) {
                Ok(CasOutcome::Stored | CasOutcome::Gone) => {}
                // Changed by another mount, or the token was never read: set the size only
                // if the record is still as this batch made it.
                Ok(CasOutcome::Changed) | Err(_) => {
                    let unchanged = |r: &Inode| r.size == 0 && r.mtime == p.record.mtime;
                    let set = retried(|| {
                        self.update_record_if_present(p.ino, |r| {
                            if unchanged(r) {
                                r.size = p.bytes.len() as u64;
                            }
                            Ok(())
                        })
                    });
                    if let Err(e) = set {
                        failed.push((p.index, e));
                    }
                }
            }
        }
        failed
    }

    /// After the directory moved during the batch: the bytes belong at the new path, if the
    /// name is still this file's (under the namespace lock, so nothing moves meanwhile).
    fn move_bulk_data_key(&self, parent: u64, p: &Planned, dir_path: &[u8]) -> FsResult<()> {
        let key = self.keys.data_checked(&join(dir_path, &p.name))?;
        let reads = vec![Command::Get(self.keys.dir_generation())];
        self.with_ns_lock(reads, |_, mut results| {
            self.observe_generation(results.reply())?;
            let key = self
                .keys
                .data_checked(&join(&self.dir_path(parent)?, &p.name))
                .unwrap_or(key);
            if self.read_entry(parent, &p.name)?.ino == Some(p.ino) {
                self.write_data_keys(std::slice::from_ref(&key), p.bytes.clone())?;
            }
            self.delete_unreached(std::slice::from_ref(&p.data_key))
        })
    }
}
