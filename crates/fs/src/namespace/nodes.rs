//! Namespace operations other than rename: create, mkdir, symlink, link, unlink, rmdir.
//!
//! Creates take no lock: one batch adds the inode record, claims the entry with `add`,
//! appends the log record and adds the empty data key, and reads the namespace lock and the
//! directory-rename count to learn whether a directory rename ran meanwhile. Removing and
//! linking hold the namespace lock (`lock.rs`) and store an [`Intent`] before their first
//! change, so that a crash at any point is completed by the next mount.

use std::sync::Arc;

use memfis_memcache::command::Value;
use memfis_memcache::{Command, Item, Store, StoreOp};

use crate::files::chunk_buffer::chunk_count;
use crate::layout::attr::Attr;
use crate::layout::dirlog::{DirSeq, LogBase, Op};
use crate::layout::intent::Intent;
use crate::layout::keys::ROOT_INO;
use crate::layout::names::{check_name, join};
use crate::layout::record::{Inode, Kind, Link, Time};
use crate::namespace::Namespace;
use crate::namespace::claim::{NewName, NewNode};
use crate::namespace::listing::{LogChange, Logged};
use crate::namespace::unsettled::Unsettled;
use crate::store::batch::{
    Batch, Cas, CasOutcome, Counted, Deleted, Got, Handle, Replies, StoreAt, Stored,
};
use crate::store::replies::parse_number;
use crate::store::retried;
use crate::sync::lock;
use crate::{FsError, FsResult};

/// How many inode numbers one `incr` reserves for this mount.
const INO_BATCH: u64 = 64;

impl<S: Store> Namespace<S> {
    pub(crate) fn alloc_ino(&self) -> FsResult<u64> {
        let mut inos = lock(&self.inos);
        if inos.0 >= inos.1 {
            let key = self.tree.keys.next_ino();
            let top = self
                .tree
                .store
                .incr_at(&key, INO_BATCH)?
                .ok_or_else(|| FsError::missing(&key))?;
            *inos = (top + 1 - INO_BATCH, top + 1);
        }
        let ino = inos.0;
        inos.0 += 1;
        Ok(ino)
    }

    /// Creates a node in one round trip (`claim.rs`): record, entry, log record, and the
    /// node's own keys (an empty data key for a file; sequence, first log chunks and mtime
    /// for a directory). Anything that fails is undone before the error is returned (or, if
    /// the store keeps failing, by the heartbeat).
    pub(crate) fn create_node(
        &self,
        parent: u64,
        name: &[u8],
        mut rec: Inode,
    ) -> FsResult<NewNode> {
        check_name(name)?;
        let dir = self.dir_info(parent)?;
        if dir.mode & libc::S_ISGID != 0 {
            // A set-group-ID directory passes its group on, and the bit to subdirectories.
            rec.gid = dir.gid;
            if rec.kind == Kind::Dir {
                rec.mode |= libc::S_ISGID;
            }
        }
        // The batch logs the name before it knows whether its claim wins, and a claim that
        // loses must take the log record back in the next batch. Unless this mount listed
        // the directory within the TTL and the name was not there (`cp -a`), ask first, so
        // a taken name costs no such round.
        if !self.meta.known_absent(parent, name) {
            let slot = self.read_entry(parent, name)?;
            if slot.ino.is_some() {
                return Err(FsError::Exists);
            }
            if slot.taken_by.is_some() {
                return Err(self.name_collision(parent, name));
            }
        }
        let new = NewName {
            name: name.to_vec(),
            ino: self.alloc_ino()?,
            rec,
        };
        let claimed = self.claim_names(parent, &dir.path, vec![new]);
        claimed.into_iter().next().expect("one result a name")
    }

    /// What a create reads after every write of its batch (sent last, across the batch's
    /// fence): the namespace lock, the directory-rename count, its directory's log base and
    /// sequence.
    pub(crate) fn create_fence_cmds(&self, parent: u64, batch: &mut Batch) -> FenceReads {
        batch.fence();
        FenceReads {
            lock: batch.get(self.tree.keys.ns_lock()),
            generation: batch.get(self.tree.keys.dir_generation()),
            base: batch.get(self.tree.keys.dir_base(parent)),
            // After the lock: an rmdir that replayed the log before this create's records
            // landed and was done by the time of the lock read has fenced or deleted it.
            seq: batch.get(self.tree.keys.dir_seq(parent)),
        }
    }

    /// Takes the replies to [`Self::create_fence_cmds`] from `results`.
    pub(crate) fn read_create_fence(
        &self,
        parent: u64,
        results: &mut Replies,
        sent: FenceReads,
    ) -> CreateFence {
        let lock_held = results.take(sent.lock).map(|v| v.is_some());
        let generation = results.take(sent.generation);
        let base_key = self.tree.keys.dir_base(parent);
        let base = results
            .take(sent.base)
            .and_then(|item| LogBase::decode(&base_key, item.as_ref().map(|i| &i.value[..])));
        // (A read that failed says nothing: the lock read, which then counts as held, has
        // the directory looked at again.)
        let dir_removed = results
            .take(sent.seq)
            .is_ok_and(|item| item.is_none_or(|i| parse_number(&i.value).is_none()));
        CreateFence {
            lock_held,
            generation,
            base,
            dir_removed,
            names_moved: false,
        }
    }

    /// Settles a create's fence: if a namespace operation ran meanwhile, wait it out (retried
    /// a few times rather than leave the create half done) and note the rename count it
    /// left. If it may have been a compaction that moved the log's base past `chunk`, where
    /// the create appended `relog`, those records go again above the base.
    ///
    /// Why this catches every compaction that could miss the records: a compaction holds the
    /// lock from before it reads the log until after it moves the base. The records were
    /// appended before the fence's reads; if the lock read finds it free, a compaction either
    /// starts later (and reads the records) or has moved the base already, which the base
    /// read (last) then shows. Records that went in after the batch (`late`) are checked
    /// once the lock is free after them, for the same reason.
    ///
    /// An rmdir of `parent` may have replayed its log before the records landed (the `incr`
    /// before its read of the sequence, the append after its replay). It held the lock
    /// from before that read to its end: if the lock read here (after the append) found it
    /// held, the directory is looked at again once it is free; if it found it free, the
    /// rmdir was done by then, and the sequence read after it shows the fence (or nothing).
    /// On a pool the two reads go to different servers unordered: there a window remains.
    pub(crate) fn settle_create_fence(
        &self,
        fence: CreateFence,
        parent: u64,
        chunk: u64,
        late: bool,
        relog: &[crate::namespace::listing::LogChange<'_>],
    ) -> FsResult<Settled> {
        let CreateFence {
            lock_held,
            generation,
            base,
            dir_removed,
            names_moved,
        } = fence;
        if dir_removed {
            return Ok(Settled::DirRemoved);
        }
        let mut fenced = match lock_held {
            Ok(false) => self.note_generation(generation),
            _ => Err(FsError::Contended), // a namespace operation ran: wait it out first
        };
        for _ in 0..5 {
            if fenced.is_ok() {
                break;
            }
            fenced = self.wait_quiet().and_then(|()| {
                let key = self.tree.keys.dir_generation();
                self.observe_generation(self.tree.store.run(Command::Get(key)))
            });
        }
        fenced?;
        if !matches!(lock_held, Ok(false)) && self.dir_seq_value(parent)?.is_none() {
            return Ok(Settled::DirRemoved);
        }
        // A claim whose entry `add` was refused takes the entry a round trip after its `+`
        // (`claim.rs`); another mount's unlink of the name's old holder in between leaves
        // the name listed twice, which replay and compaction settle by the entry, then
        // empty: an rmdir could remove the directory before the entry lands, a compaction
        // drop the name. Looked at under the lock, after it (no rmdir or compaction runs
        // meanwhile); the name is logged again below if a compaction ran.
        if names_moved && self.dir_removed_under_lock(parent)? {
            return Ok(Settled::DirRemoved);
        }
        let maybe_compacted = late
            || names_moved
            || !matches!(lock_held, Ok(false))
            || base.map_or(true, |b| b.chunk > chunk);
        if maybe_compacted && !relog.is_empty() {
            if late {
                self.wait_quiet()?;
            }
            retried(|| self.relog_if_compacted(parent, chunk, relog))?;
        }
        // (On a pool an unlink's entry delete and its `-` may land on different servers in
        // either order: the entry read may come too early. A lock seen held looks again.)
        if (late || names_moved || !matches!(lock_held, Ok(false))) && !relog.is_empty() {
            // The create itself happened: a failure here leaves a name listed that no entry
            // backs (readdir shows it, lookup answers ENOENT, `memfis check --repair` drops
            // it), not a failed create.
            if let Err(e) = self.take_back_stale_adds(parent, relog) {
                tracing::warn!(parent, error = %e, "a create could not take back the log records of names another mount took meanwhile (run `memfis check`)");
            }
        }
        Ok(Settled::Done)
    }

    /// Whether directory `dir` is gone (or being removed), looked at holding the lock.
    fn dir_removed_under_lock(&self, dir: u64) -> FsResult<bool> {
        self.with_ns_lock(Batch::new(), |_, _| Ok(self.dir_seq_value(dir)?.is_none()))
    }

    /// After a namespace operation ran during a create's batch. A pipeline is not atomic: an
    /// unlink, rmdir or rename of another mount may have found the new entry between the
    /// batch's `add` of it and its `+` record, and logged the name's `-` before that `+`,
    /// which then lists a name that is gone (or an inode twice). Under the lock (nothing
    /// moves the inode back meanwhile), a `-` goes after each `+` whose entry no longer
    /// names its inode; if the `+` came first after all, a `-` of a pair not listed does
    /// nothing.
    fn take_back_stale_adds(
        &self,
        parent: u64,
        adds: &[crate::namespace::listing::LogChange<'_>],
    ) -> FsResult<()> {
        let moved = self.adds_no_entry_backs(parent, adds)?;
        if moved.is_empty() {
            return Ok(());
        }
        self.with_ns_lock(Batch::new(), |_, _| {
            if self.dir_seq_value(parent)?.is_none() {
                return Ok(()); // the directory went, its log with it
            }
            let still = self.adds_no_entry_backs(parent, &moved)?;
            if still.is_empty() {
                return Ok(());
            }
            // (A rename of another mount onto the name logged its inode's `+` before the late
            // one: replay keeps it under the name once the late pair is removed.)
            let records: Vec<_> = still
                .iter()
                .map(|&(_, kind, ino, name)| (Op::Remove, kind, ino, name))
                .collect();
            self.log_dir_changes(parent, &records)
        })
    }

    /// The records of `adds` whose entry no longer names their inode (one batch of reads).
    fn adds_no_entry_backs<'a>(
        &self,
        parent: u64,
        adds: &[crate::namespace::listing::LogChange<'a>],
    ) -> FsResult<Vec<crate::namespace::listing::LogChange<'a>>> {
        let mut batch = Batch::new();
        let reads: Vec<_> = adds
            .iter()
            .map(|change| batch.gets(self.tree.keys.entry(parent, change.3)))
            .collect();
        let mut results = batch.execute(&self.tree.store);
        let mut moved = Vec::new();
        for (change, read) in adds.iter().zip(reads) {
            if results.entry(read, change.3)?.ino != Some(change.2) {
                moved.push(*change);
            }
        }
        Ok(moved)
    }

    /// Under the namespace lock, after a directory rename moved a file just created: its
    /// empty served key at the name's path now (as its record says now: a chmod may have
    /// run too), if the name is still its; the key at `old_key` goes unless a name holds
    /// bytes there. Returns where the file's bytes live now.
    pub(crate) fn place_created_key(
        &self,
        ino: u64,
        parent: u64,
        name: &[u8],
        old_key: &[u8],
    ) -> FsResult<Vec<u8>> {
        let path = join(&self.dir_path(parent)?, name);
        let key = match self.read_inode_opt(ino)? {
            Some((rec, _)) if self.read_entry(parent, name)?.ino == Some(ino) => {
                let key = self.tree.keys.file_bytes(ino, rec.mode, &path);
                let served = key != self.tree.keys.private_data(ino) && rec.chunk_size.is_none();
                if served && key != old_key {
                    self.tree.store.store_at(StoreOp::Add, &key, b"")?;
                }
                key
            }
            _ => old_key.to_vec(),
        };
        self.delete_unreached(&[old_key.to_vec()])?;
        Ok(key)
    }

    /// Undoes a create that failed after its batch, retrying each step a few times (a
    /// store that stays down leaves unreachable keys, which `memfis check` reports).
    ///
    /// Holding the namespace lock: once its entry was claimed, other mounts could reach the
    /// new inode, and an operation holding the lock may have moved it (rename), given it
    /// another name (link) or removed it (rmdir, unlink) meanwhile. Undone without the lock,
    /// the entry and record went under a rename that had read them (leaving the new name
    /// pointing at no record), or the record went while the directory's own keys stayed.
    /// So: an inode whose record lists other names than the create's lives on there and is
    /// left alone; otherwise its entry, `+`, record and every key it brought go, the record
    /// gone or not (a removal may have run between the batch's commands, before its own
    /// keys were added).
    pub(crate) fn undo_create(&self, undo: Undo, own_keys: Vec<Command>) {
        if let Err(e) = self.undo_create_now(&undo, &own_keys) {
            crate::limited_warn!(
                "cannot undo a failed create",
                "cannot undo the failed create of inode {} yet (the heartbeat tries again): {e}",
                undo.ino
            );
            self.maintenance
                .leave_unsettled(Unsettled::Undo { undo, own_keys });
        }
    }

    /// [`Self::undo_create`], retried a few times, the error returned.
    pub(crate) fn undo_create_now(&self, undo: &Undo, own_keys: &[Command]) -> FsResult<()> {
        let link = Link::new(undo.parent, &undo.name);
        retried(|| {
            self.with_ns_lock(crate::store::batch::Batch::new(), |_, _| {
                let rec = self.read_inode_opt(undo.ino)?;
                let someones = rec.as_ref().is_some_and(|(r, cas)| {
                    let written = match undo.record_cas {
                        Some(made) => *cas != made,
                        None => r.size != 0 || r.chunk_size.is_some(),
                    };
                    // In a directory that is gone, a write (another mount touched the new
                    // inode through its entry) keeps nothing reachable: only a rename out does.
                    r.links != [link.clone()] || (written && !undo.parent_gone)
                });
                if someones {
                    return Ok(()); // moved, linked or written meanwhile: someone's now
                }
                if undo.kind == Kind::Dir && rec.is_some() && self.logged_in(undo.ino)? {
                    return Ok(()); // names made or moved in it meanwhile: someone's now
                }
                self.undo_create_locked(undo, own_keys, rec.is_some())
            })
        })
    }

    /// Whether anything was logged in directory `dir` since it was made (its sequence past
    /// 0), or an rmdir fenced it (which then removes it): a directory's record does not
    /// change when names are made in it, so only its log tells that others use it.
    fn logged_in(&self, dir: u64) -> FsResult<bool> {
        Ok(match self.read_dir_seq(dir)? {
            None => false, // its keys never made (or gone already)
            Some(DirSeq { seq, .. }) => seq != Some(0),
        })
    }

    /// [`Self::undo_create`] for a caller that holds the lock; `rec_there`: the inode's
    /// record is still there (with the create's name only).
    fn undo_create_locked(
        &self,
        undo: &Undo,
        own_keys: &[Command],
        rec_there: bool,
    ) -> FsResult<()> {
        if undo.entry {
            self.entry_swap(undo.parent, &undo.name, Some(undo.ino), None)?;
        }
        if undo.logged {
            // Holding the lock, so no compaction runs meanwhile: its snapshot could keep
            // the `+` while this `-` lands in a chunk it drops.
            let changes = [(Op::Remove, undo.kind, undo.ino, undo.name.as_slice())];
            if let Err(e) = self.log_dir_changes(undo.parent, &changes)
                && self.dir_seq_value(undo.parent)?.is_some()
            {
                return Err(e); // (a gone directory lists nothing)
            }
        }
        let mut batch = vec![Command::Delete(self.tree.keys.inode(undo.ino))];
        if rec_there {
            batch.push(Command::Decr {
                key: self.tree.keys.inode_count(),
                delta: 1,
            });
        }
        let private = self.tree.keys.private_data(undo.ino);
        let mut maybe_theirs = Vec::new();
        for cmd in own_keys {
            // A directory's keys and the private key are this inode's alone: they go even if
            // their `add` was not seen to succeed (its reply may have been lost). A file's
            // served key is at the name's path, and goes only if no name reaches it (checked
            // under the lock), even when this create's `add` made it and the entry was this
            // create's: the name may have gone to another inode, or the directory may have
            // been replaced by a rename, whose copy put another file's bytes at that path.
            let alone = undo.kind != Kind::File || cmd.key() == private;
            match alone {
                true => batch.push(Command::Delete(cmd.key().to_vec())),
                false => maybe_theirs.push(cmd.key().to_vec()),
            }
        }
        // Only if the parent is still gone: a rename that fenced it and then did not happen
        // (its claim failed) lifted the fence again, and the directory lives.
        if undo.parent_gone && self.dir_seq_value(undo.parent)?.is_none() {
            batch.extend(undo.parent_keys.iter().map(|k| Command::Delete(k.clone())));
        }
        self.tree.store.execute_all(batch)?;
        self.delete_unreached(&maybe_theirs)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32) -> FsResult<Attr> {
        let rec = Inode::new(Kind::Dir, mode, uid, gid, vec![Link::new(parent, name)]);
        let node = self.create_node(parent, name, rec)?;
        Ok(self.attr_from(node.ino, &node.rec, None))
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let mut rec = Inode::new(
            Kind::Symlink,
            0o777,
            uid,
            gid,
            vec![Link::new(parent, name)],
        );
        rec.size = target.len() as u64;
        rec.target = Some(target.to_vec());
        let node = self.create_node(parent, name, rec)?;
        Ok(self.attr_from(node.ino, &node.rec, None))
    }

    /// mknod(2) of a FIFO, socket or device node: an inode with no bytes in the store.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        if !kind.is_special() {
            return Err(FsError::Invalid("mknod of a kind that is not special"));
        }
        let mut rec = Inode::new(kind, mode, uid, gid, vec![Link::new(parent, name)]);
        if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            rec.rdev = rdev;
        }
        let node = self.create_node(parent, name, rec)?;
        Ok(self.attr_from(node.ino, &node.rec, None))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let (rec, _) = self.read_live_inode(ino)?;
        rec.target.ok_or(FsError::Invalid("not a symlink"))
    }

    /// A new name for a file: entry, link in the record, its bytes at the new data key.
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        check_name(newname)?;
        let ekey = self.tree.keys.entry(newparent, newname);
        let mut reads = Batch::new();
        let entry = reads.gets(&ekey);
        let record = reads.gets(self.tree.keys.inode(ino));
        let generation = reads.get(self.tree.keys.dir_generation());
        let parent_seq = reads.get(self.tree.keys.dir_seq(newparent));
        self.with_ns_lock(reads, |guard, mut r| {
            let entry = r.entry(entry, newname)?;
            let rec_key = self.tree.keys.inode(ino);
            let rec = r.take(record)?.ok_or(FsError::NotFound)?;
            let mut rec = Inode::decode(&rec_key, &rec.value)?;
            self.note_generation(r.take(generation))?;
            if rec.kind == Kind::Dir {
                return Err(FsError::NotPermitted("hard link to a directory"));
            }
            if entry.ino.is_some() {
                return Err(FsError::Exists);
            }
            if entry.taken_by.is_some() {
                return Err(self.name_collision(newparent, newname));
            }
            // A directory another mount removed: its intent could never be completed.
            self.require_live_dir(newparent, r.take(parent_seq)?)?;
            let path = join(&self.dir_path(newparent)?, newname);
            // Each name the file has must be in a live directory (its bytes are copied from
            // one): one whose names are all in a directory another mount removed is a create
            // about to take itself back, or damage. ENOENT, as for a stale handle, before
            // anything changes: its completion could never find the bytes.
            for link in &rec.links {
                self.link_path(link)?;
            }
            rec.links.push(Link::new(newparent, newname));
            self.check_record_size(&rec_key, rec.encode().len())?;
            let intent = Intent::Link {
                ino,
                kind: rec.kind,
                parent: newparent,
                name: newname.to_vec(),
                path,
            };
            // The claim is the point of no return; a create may take the name first.
            let value = self.tree.keys.entry_value(newparent, newname, ino);
            let claim = match entry.cas {
                None => Command::store(StoreOp::Add, &ekey, &value),
                Some(cas) => Command::cas(&ekey, &value, cas),
            };
            if !self.begin(guard, &intent, vec![claim])?[0] {
                guard.intent = None;
                return Err(FsError::Exists);
            }
            self.complete(&intent)
        })?;
        self.getattr(ino)
    }

    /// The bytes of a file from a name other than `except` (which may not hold them yet), as
    /// the store holds them: what the record's size counts. (Not this mount's buffer: a
    /// handle opened before another mount published the file holds older bytes, and a dirty
    /// buffer is published to every name, the new one too, when it is flushed.) Called under
    /// the namespace lock, perhaps completing a gone mount's link: the directory-rename
    /// count is read first, so the other name's path is current. None when that name keeps
    /// its bytes at `target` already (names of a private file share its private key).
    pub(crate) fn current_bytes_except(
        &self,
        ino: u64,
        rec: &Inode,
        except: &Link,
        target: &[u8],
    ) -> FsResult<Option<Value>> {
        let Some(link) = rec.links.iter().find(|l| *l != except) else {
            return Ok(Some(Value::default()));
        };
        let generation = self.tree.keys.dir_generation();
        self.observe_generation(self.tree.store.run(Command::Get(generation)))?;
        let key = self.bytes_key(ino, rec, link)?;
        if key == target {
            return Ok(None);
        }
        match self.tree.store.get_at(&key)? {
            Some(item) => Ok(Some(Arc::new(item.value))),
            None if rec.size == 0 => Ok(Some(Value::default())),
            None => Err(FsError::missing(&key)),
        }
    }

    // ----- removing ------------------------------------------------------------------------

    /// unlink(2): two round trips, one to take the lock and read the entry and record, one
    /// that stores the intent, makes every change and releases the lock.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let ekey = self.tree.keys.entry(parent, name);
        let guess = self.meta.known_child(parent, name);
        let mut reads = Batch::new();
        let entry = reads.gets(&ekey);
        let generation = reads.get(self.tree.keys.dir_generation());
        let parent_seq = reads.get(self.tree.keys.dir_seq(parent));
        let guessed = guess.map(|ino| (ino, reads.gets(self.tree.keys.inode(ino))));
        self.with_ns_lock(reads, |guard, mut r| {
            let entry = r.entry(entry, name)?;
            self.note_generation(r.take(generation))?;
            self.require_live_dir(parent, r.take(parent_seq)?)?;
            let ino = entry.ino.ok_or(FsError::NotFound)?;
            let rec_key = self.tree.keys.inode(ino);
            let (rec, rec_cas) = match guessed {
                Some((g, record)) if g == ino => {
                    let item = r.required(record)?;
                    (Inode::decode(&rec_key, &item.value)?, item.cas.unwrap_or(0))
                }
                _ => self.read_inode(ino)?,
            };
            if rec.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            let link = Link::new(parent, name);
            let mut rest = rec.clone();
            rest.remove_link(&link);
            rest.ctime = Time::now();
            let last_link = rest.links.is_empty();
            let data_keys = self.keys_freed_by_unlink(ino, &rec, &rest, &link)?;
            let intent = Intent::Unlink {
                parent,
                name: name.to_vec(),
                ino,
                kind: rec.kind,
                data_keys: data_keys.clone(),
            };
            let Unlinked { all_done, now } =
                self.unlink_batch(guard, &intent, &rest, rec_cas, last_link)?;
            self.note_dir_touched(parent, now);
            if last_link {
                self.last_name_gone(ino, &rec);
            } else {
                self.adopt_removed_link(ino, &link);
            }
            if !all_done {
                // Something in the batch failed or raced (a publish changed the record):
                // finish from where it stopped, holding the lock (again, if the batch
                // released it).
                // (Its reply lost, the release may have run: then another mount may hold
                // the lock by now, and storing the intent over it would take it from them.)
                if last_link {
                    self.reacquire(guard)?;
                }
                guard.released = false;
                self.store_intent(guard)?;
                self.complete(&intent)?;
            }
            Ok(())
        })
    }

    /// The data keys an unlink frees: the bytes this name holds, unless another name shares
    /// the key (a private key); with the last name, the private key too (a name removed
    /// earlier may have left bytes there) and the name's served key (a publish racing the
    /// unlink may have made it). None for a file in chunks (its chunks go with the record).
    fn keys_freed_by_unlink(
        &self,
        ino: u64,
        rec: &Inode,
        rest: &Inode,
        link: &Link,
    ) -> FsResult<Vec<Vec<u8>>> {
        let mut data_keys = Vec::new();
        if rec.kind == Kind::File && rec.chunk_size.is_none() {
            self.keep_bytes_for_open_handles(ino)?;
            let key = self.bytes_key(ino, rec, link)?;
            if !self.bytes_keys(ino, rest)?.contains(&key) {
                data_keys.push(key);
            }
            let private = self.tree.keys.private_data(ino);
            if rest.links.is_empty() && !data_keys.contains(&private) {
                data_keys.push(private);
            }
            // A publish of another mount may open the file to others between the record read
            // above and this unlink's batch (`cp -a` creates 0600 and chmods at the close):
            // the served key it adds at this name's path would outlive the file. Under the
            // lock the name is this file's, so that key holds nothing else.
            if rest.links.is_empty() {
                let served = self
                    .tree
                    .keys
                    .file_bytes(ino, 0o644, &self.link_path(link)?);
                if !data_keys.contains(&served) {
                    data_keys.push(served);
                }
            }
        }
        Ok(data_keys)
    }

    /// An unlink's one batch, holding the lock: the intent, the entry's delete, the log's `-`,
    /// the directory's mtime, the record deleted with the last name (else `cas`ed without it),
    /// the freed data keys, and with the last name the lock's release. Whether all of it ran.
    fn unlink_batch(
        &self,
        guard: &mut crate::namespace::lock::NsLock<'_>,
        intent: &Intent,
        rest: &Inode,
        rec_cas: u64,
        last_link: bool,
    ) -> FsResult<Unlinked> {
        let Intent::Unlink {
            parent,
            name,
            ino,
            kind,
            data_keys,
        } = intent
        else {
            unreachable!("an unlink's intent")
        };
        let (parent, ino, rec_key) = (*parent, *ino, self.tree.keys.inode(*ino));
        let mut batch = Batch::new();
        let intent_stored = batch.push::<Stored>(self.intent_cmd(guard, intent.clone()));
        let entry_deleted = batch.delete(self.tree.keys.entry(parent, name));
        let la = self.log_append_locked(parent, &[(Op::Remove, *kind, ino, name)]);
        let log = self.log_commands(&la, &mut batch);
        let (touch, now) = self.touch_dir_cmd(parent);
        let touched = batch.push::<Stored>(touch);
        let record = if last_link {
            RecordChange::Removed(
                batch.delete(&rec_key),
                batch.decr(self.tree.keys.inode_count(), 1),
            )
        } else {
            RecordChange::Updated(batch.cas(&rec_key, &rest.encode(), rec_cas))
        };
        let data_deleted: Vec<_> = data_keys.iter().map(|k| batch.delete(k)).collect();
        // (With nothing after it the fence still sends an empty second batch on a pool.)
        batch.fence();
        let release = last_link.then(|| batch.push::<Deleted>(self.unlock_cmd(guard)));
        let mut results = batch.execute(&self.tree.store);
        // The lock's delete, last in the batch, ran only if the batch got that far.
        let unlocked = release.is_some_and(|h| results.take(h).is_ok());
        if unlocked {
            self.lock_released_by_batch();
        }
        let mut all_done = results.take(intent_stored).is_ok();
        all_done &= results.take(entry_deleted).is_ok();
        all_done &= matches!(self.finish_log(&la, &mut results, log), Ok(Logged::Done));
        all_done &= matches!(results.take(touched), Ok(true));
        all_done &= match record {
            RecordChange::Removed(deleted, counted) => {
                results.take(deleted).is_ok() & results.take(counted).is_ok()
            }
            // Gone meanwhile counts as done; changed (a publish) does not.
            RecordChange::Updated(cas) => {
                matches!(results.take(cas), Ok(CasOutcome::Stored | CasOutcome::Gone))
            }
        };
        for deleted in data_deleted {
            all_done &= results.take(deleted).is_ok();
        }
        all_done &= !last_link || unlocked;
        Ok(Unlinked { all_done, now })
    }

    /// The last name of file `ino` is gone with its record `rec`. A file open in this mount
    /// keeps its bytes for its handles, as on a local filesystem: it is marked removed and
    /// its chunks go with its last handle; otherwise they go now.
    pub(crate) fn last_name_gone(&self, ino: u64, rec: &Inode) {
        let record_chunks = rec
            .chunk_size
            .map(|cs| (rec.chunk_gen, chunk_count(rec.size, cs)));
        let free_now = match self.open_file(ino) {
            Some(of) => lock(&of).remove_last_name(record_chunks),
            None => record_chunks.into_iter().collect(),
        };
        self.maintenance.delete_chunk_runs(ino, free_now);
    }

    /// Keeps an open file of this mount in step with a name removed from its record.
    fn adopt_removed_link(&self, ino: u64, link: &Link) {
        if let Some(of) = self.open_file(ino) {
            lock(&of).lose_link(link);
        }
    }

    /// Removes one name from an inode record, deleting the record with its last name (and a
    /// directory's log chunks up to `last_seq`, or up to its sequence if that is still there).
    pub(crate) fn drop_link(&self, ino: u64, link: &Link, last_seq: u64) -> FsResult<()> {
        let rec = self.update_record_if_present(ino, |r| {
            r.remove_link(link);
            r.ctime = Time::now();
            Ok(())
        })?;
        match rec {
            Some(rec) if rec.links.is_empty() => {
                self.last_name_gone(ino, &rec);
                let last_seq = match rec.kind {
                    Kind::Dir => self.dir_seq_value(ino)?.unwrap_or(0).max(last_seq),
                    _ => 0,
                };
                self.delete_inode_keys(ino, rec.kind, last_seq)
            }
            _ => Ok(()),
        }
    }

    /// Appends `changes` again above the log's base if a compaction moved it past `chunk`,
    /// where they were first written (no reader looks there any more).
    ///
    /// Under the namespace lock: a compaction that started after the base was read would
    /// otherwise replay without the new records and move the base past them again, and an
    /// unlink of one of the names meanwhile must not be undone by a late `+`. Only names whose
    /// entry still names the inode go again. A base not past `chunk` needs nothing: every
    /// compaction that starts later replays from at most `chunk` (bases only grow) and after
    /// the first write, so it keeps the records.
    pub(crate) fn relog_if_compacted(
        &self,
        dir: u64,
        chunk: u64,
        changes: &[crate::namespace::listing::LogChange<'_>],
    ) -> FsResult<()> {
        let passed = |now: Option<DirSeq>| now.filter(|n| n.base.chunk > chunk && n.seq.is_some());
        if passed(self.read_dir_seq(dir)?).is_none() {
            return Ok(());
        }
        self.with_ns_lock(crate::store::batch::Batch::new(), |_, _| {
            let Some(now) = passed(self.read_dir_seq(dir)?) else {
                return Ok(()); // the directory is gone (or being removed)
            };
            let mut still = Vec::new();
            for change in changes {
                if self.read_entry(dir, change.3)?.ino == Some(change.2) {
                    still.push(*change);
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            self.meta
                .raise_seq_hint(dir, now.base.chunk * self.tree.keys.log_chunk_records());
            self.log_dir_changes(dir, &still)
        })
    }

    /// ENOENT unless directory `dir`'s sequence key, `seq` as read under the namespace lock,
    /// says it is live. The kernel may name a directory another mount removed, and a name
    /// may still be found there (a create of another mount about to undo itself): an intent
    /// changing it could never complete (the log is gone) and would hold the lock for good.
    /// Under the lock a live directory stays live, so one look suffices. The root is never
    /// removed: its sequence missing is damage (EIO naming the key).
    pub(crate) fn require_live_dir(&self, dir: u64, seq: Option<Item>) -> FsResult<()> {
        if seq.is_some_and(|item| parse_number(&item.value).is_some()) {
            return Ok(());
        }
        match dir {
            ROOT_INO => Err(FsError::missing(&self.tree.keys.dir_seq(dir))),
            _ => Err(FsError::NotFound),
        }
    }

    /// A directory's sequence number; `None` when missing or fenced.
    pub(crate) fn dir_seq_value(&self, dir: u64) -> FsResult<Option<u64>> {
        Ok(self.read_dir_seq(dir)?.and_then(|d| d.seq))
    }

    /// A directory's sequence key with its cas token, and its log's base chunk, read together:
    /// `None` when the sequence is missing.
    pub(crate) fn read_dir_seq(&self, dir: u64) -> FsResult<Option<DirSeq>> {
        let key = self.tree.keys.dir_seq(dir);
        let base_key = self.tree.keys.dir_base(dir);
        let mut batch = Batch::new();
        let (seq, base) = (batch.gets(key), batch.get(&base_key));
        let mut r = batch.execute(&self.tree.store);
        let seq = r.take(seq)?;
        let base = r.take(base)?;
        let base = LogBase::decode(&base_key, base.as_ref().map(|b| &b.value[..]))?;
        Ok(seq.map(|i| DirSeq {
            seq: parse_number(&i.value),
            cas: i.cas.unwrap_or(0),
            base,
        }))
    }

    /// Deletes an inode's record and, for a directory, its log keys.
    pub(crate) fn delete_inode_keys(&self, ino: u64, kind: Kind, last_seq: u64) -> FsResult<()> {
        let mut batch = Batch::new();
        let record = batch.delete(self.tree.keys.inode(ino));
        let counted = batch.decr(self.tree.keys.inode_count(), 1);
        let mut deleted = Vec::new();
        if kind == Kind::File {
            deleted.push(batch.delete(self.tree.keys.private_data(ino)));
        }
        if kind == Kind::Dir {
            // The log from its base: its snapshot and chunks (the base key goes with them).
            let base_key = self.tree.keys.dir_base(ino);
            let item = self.tree.store.get_at(&base_key)?;
            let base =
                LogBase::decode(&base_key, item.as_ref().map(|b| &b.value[..])).unwrap_or_default();
            deleted.push(batch.delete(self.tree.keys.dir_seq(ino)));
            deleted.push(batch.delete(self.tree.keys.dir_mtime(ino)));
            for key in self.tree.keys.dir_log_keys(
                ino,
                base,
                last_seq + self.tree.keys.log_chunk_records(),
            ) {
                deleted.push(batch.delete(key));
            }
            deleted.push(batch.delete(base_key));
        }
        let mut results = batch.execute(&self.tree.store);
        results.take(record)?;
        results.take(counted)?;
        for key in deleted {
            results.take(key)?;
        }
        self.meta.forget_removed_dir(ino);
        if let Some(of) = self.open_file(ino) {
            lock(&of).mark_unlinked();
        }
        Ok(())
    }

    /// rmdir(2): the directory's sequence key is fenced (made non-numeric by `cas`, so no
    /// create can log into it any more) only if nothing was logged since its listing was
    /// read empty; then every key goes.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let ekey = self.tree.keys.entry(parent, name);
        let mut reads = Batch::new();
        let entry = reads.gets(&ekey);
        let parent_seq = reads.get(self.tree.keys.dir_seq(parent));
        self.with_ns_lock(reads, |guard, mut results| {
            let entry = results.entry(entry, name)?;
            self.require_live_dir(parent, results.take(parent_seq)?)?;
            let ino = entry.ino.ok_or(FsError::NotFound)?;
            let (rec, _) = self.read_inode(ino)?;
            if rec.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let (fence, last_seq) = self.empty_dir_fence(ino)?;
            let intent = Intent::Rmdir {
                parent,
                name: name.to_vec(),
                ino,
                last_seq,
            };
            if !self.begin(guard, &intent, vec![fence])?[0] {
                guard.intent = None;
                return Err(FsError::NotEmpty); // something was created inside meanwhile
            }
            self.complete(&intent)
        })
    }

    /// Checks that directory `dir` is empty; returns the `cas` that fences its log sequence
    /// (made non-numeric, so every later create in it fails its `incr` and undoes itself),
    /// valid only if nothing was logged since, and the sequence's value.
    ///
    /// Under the namespace lock. Names listed with no entry behind them are dropped first (a
    /// `-` each): a create whose `+` landed after another mount removed its entry takes the
    /// `+` back itself, unless its mount died first; the directory is then empty. Not while
    /// the name's record still lists it (a live create backs its `+` a round trip later when
    /// its entry `add` failed: `claim.rs`). Only where the store runs a batch in order: on
    /// a pool a create's `+` may land before its entry (another server), and such a name is
    /// left for `memfis check --repair`.
    pub(crate) fn empty_dir_fence(&self, dir: u64) -> FsResult<(Command, u64)> {
        let seq_key = self.tree.keys.dir_seq(dir);
        let mut dropped_unbacked = false;
        loop {
            let DirSeq { seq, cas, base } = self
                .read_dir_seq(dir)?
                .ok_or_else(|| FsError::missing(&seq_key))?;
            let last_seq = seq.ok_or(FsError::NotFound)?; // already being removed
            let listing = self.replay_log(dir, base, last_seq)?;
            if listing.is_empty() {
                let fence = Command::cas(&seq_key, b"removed", cas);
                return Ok((fence, last_seq));
            }
            if dropped_unbacked || !self.tree.store.in_order() {
                return Err(FsError::NotEmpty);
            }
            let listed: Vec<LogChange<'_>> = listing
                .iter()
                .map(|(name, &(ino, kind))| (Op::Add, kind, ino, name.as_slice()))
                .collect();
            let unbacked = self.adds_no_entry_backs(dir, &listed)?;
            if unbacked.len() < listed.len() || self.any_record_names(dir, &unbacked)? {
                return Err(FsError::NotEmpty);
            }
            // (A `-` of a pair only matches that pair: a name listed again meanwhile stays.)
            let removals: Vec<LogChange<'_>> = unbacked
                .iter()
                .map(|&(_, kind, ino, name)| (Op::Remove, kind, ino, name))
                .collect();
            tracing::warn!(
                dir,
                names = removals.len(),
                "rmdir drops names listed with no entry behind them (a create cut short)"
            );
            self.log_dir_changes(dir, &removals)?;
            dropped_unbacked = true;
        }
    }

    /// Whether the record of any of `listed` (names of `dir`) still lists its name: a live
    /// create whose entry `add` failed (the name was taken, or held a removed name's marker)
    /// backs its `+` with the entry a round trip later. A creator that died there left a
    /// record no entry reaches, or none (an unlink of the name deleted it).
    fn any_record_names(&self, dir: u64, listed: &[LogChange<'_>]) -> FsResult<bool> {
        let mut batch = Batch::new();
        let reads: Vec<_> = listed
            .iter()
            .map(|&(_, _, ino, _)| batch.get(self.tree.keys.inode(ino)))
            .collect();
        let mut results = batch.execute(&self.tree.store);
        for (&(_, _, ino, name), read) in listed.iter().zip(reads) {
            let key = self.tree.keys.inode(ino);
            if let Some(item) = results.take(read)? {
                let rec = Inode::decode(&key, &item.value)?;
                if rec.links.iter().any(|l| l.parent == dir && l.name == name) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Follows `path` (`/a/b`) from the root through entries, without caches.
    pub(crate) fn resolve_path(&self, path: &[u8]) -> FsResult<Option<u64>> {
        let mut ino = ROOT_INO;
        for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            match self.read_entry(ino, part)?.ino {
                Some(child) => ino = child,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }
}

/// What an unlink's batch did ([`Namespace::unlink_batch`]).
struct Unlinked {
    /// Every command ran as meant.
    all_done: bool,
    /// The directory's new mtime.
    now: Time,
}

/// How an unlink changes the inode's record: deleted with the last name (and the inode
/// count lowered), or `cas`ed without the name.
enum RecordChange {
    Removed(Handle<Deleted>, Handle<Counted>),
    Updated(Handle<Cas>),
}

/// How a create's fence settled ([`Namespace::settle_create_fence`]).
pub(crate) enum Settled {
    Done,
    /// The directory was removed while the create's batch ran: the create is taken back.
    DirRemoved,
}

/// Where the replies to [`Namespace::create_fence_cmds`] are.
pub(crate) struct FenceReads {
    lock: Handle<Got>,
    generation: Handle<Got>,
    base: Handle<Got>,
    seq: Handle<Got>,
}

/// What a create read after its writes ([`Namespace::create_fence_cmds`]).
pub(crate) struct CreateFence {
    lock_held: FsResult<bool>,
    generation: FsResult<Option<Item>>,
    pub(crate) base: FsResult<LogBase>,
    /// The directory's sequence, read last, was fenced (`removed`) or gone.
    dir_removed: bool,
    /// A name the create claimed no longer named its inode after the batch (or its read
    /// failed): another mount's unlink, rmdir or rename took it meanwhile
    /// (`take_back_stale_adds`). Set by the caller, which knows the names.
    pub(crate) names_moved: bool,
}

impl CreateFence {
    /// A fence whose reads were lost: settling it waits for the lock, then looks at the
    /// directory and its log again.
    pub(crate) fn unknown() -> CreateFence {
        CreateFence {
            lock_held: Ok(true),
            generation: Ok(None),
            base: Ok(LogBase::default()),
            dir_removed: false,
            names_moved: true,
        }
    }
}

/// What a failed create must undo.
pub(crate) struct Undo {
    pub ino: u64,
    pub kind: Kind,
    pub parent: u64,
    pub name: Vec<u8>,
    pub entry: bool,
    pub logged: bool,
    /// The parent was removed meanwhile: the batch may have recreated some of its keys.
    pub parent_gone: bool,
    pub parent_keys: [Vec<u8>; 3],
    /// The record's cas token as the create made it (`None`: its read failed). A record at
    /// another version was written since (the name was live: another mount may have opened
    /// and published it), and the inode is left alone.
    pub record_cas: Option<u64>,
}
