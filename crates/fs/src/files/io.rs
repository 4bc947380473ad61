//! Reading, writing and publishing open files. All handles of one inode in this mount share
//! one open file (`open_files.rs`): a buffer of the whole file (or its chunks, `chunked.rs`)
//! plus attribute changes not yet published. The buffer is published whole to every data key
//! of the file at flush/fsync/release (docs/store-layout.md), so readers (nginx, other mounts)
//! see the old bytes or the new, never a mix.

use std::sync::{Arc, Mutex};

use memfis_memcache::{Command, Item, Store, StoreOp};

use crate::files::Files;
use crate::files::chunk_buffer::ChunkedFile;
use crate::files::open_files::OpenFile;
use crate::files::publish_plan::{
    Before, KeyWrite, PublishPlan, RoundKeys, before_round, plan_round,
};
use crate::layout::attr::Attr;
use crate::layout::record::{Inode, Kind, Link};
use crate::namespace::file_bytes::Load;
use crate::store::batch::{Batch, CasOutcome, Handle, Stored};
use crate::sync::lock;
use crate::{FsError, FsResult};

/// What one publish attempt found.
pub(crate) enum Published {
    /// Published; these keys it wrote earlier are no name of the file any more (deleted
    /// under the namespace lock, with the open file unlocked).
    Done(Vec<Vec<u8>>),
    /// A namespace operation ran while the bytes went out: wait for it (without holding the
    /// open file) and publish again at the names it left.
    AfterNamespaceOp,
    /// A file in chunks is small enough for one item again: its bytes are in the buffer, to
    /// publish the usual way.
    Unchunked,
}

/// What a read of the tokens of a file's data keys found ([`Files::read_key_tokens`]).
enum Tokens {
    /// The keys hold this file's bytes: their tokens are kept.
    Taken,
    /// The record changed (or went): the newer one is taken, the round worked out again.
    RecordChanged,
    /// An operation that may move this file's bytes runs: publish once it is done.
    NamespaceBusy,
    /// A directory was renamed since the paths were worked out: work them out again.
    PathsMoved,
}

/// The replies to a publish round ([`Files::send_round`]), in the plan's order.
struct RoundReplies {
    /// Per planned write: stored, refused, or the store's error.
    writes: Vec<FsResult<bool>>,
    /// The record's `cas`.
    record: FsResult<CasOutcome>,
    /// The namespace lock, read after the writes.
    lock: FsResult<Option<Item>>,
    /// The directory-rename count, read after the writes.
    generation: FsResult<Option<Item>>,
}

/// How a publish round ended ([`Files::apply_round`]).
enum RoundEnd {
    Settled(Published),
    /// Work a round out again (over a record read afresh).
    Again,
}

/// Rewrites by other mounts a read or write of a file in chunks follows before it gives up
/// (ESTALE).
const REWRITES_FOLLOWED: usize = 4;

impl<S: Store> Files<S> {
    /// Creates and opens a regular file: O_EXCL semantics come from the atomic entry claim.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, u64)> {
        let mut tries = 0;
        let node = loop {
            let rec = Inode::new(Kind::File, mode, uid, gid, vec![Link::new(parent, name)]);
            let exists = match self.names.create_node(parent, name, rec) {
                Ok(node) => break node,
                Err(FsError::Exists) if flags & libc::O_EXCL == 0 => FsError::Exists,
                Err(e) => return Err(e),
            };
            // O_CREAT without O_EXCL on a name that exists (perhaps made by another mount a
            // moment ago): open what is there. Removed again meanwhile: create it after all,
            // as a local filesystem would have.
            tries += 1;
            if tries > crate::tree::CAS_RETRIES {
                return Err(exists);
            }
            let Some(ino) = self.names.read_entry(parent, name)?.ino else {
                continue;
            };
            let kind = self.names.getattr(ino).map(|a| a.kind);
            if let Ok(kind) = kind {
                // A cached listing that missed the name would answer the retry's lookup.
                self.names.note_name(parent, name, ino, kind);
            }
            match kind {
                Ok(Kind::File) => {}
                Ok(Kind::Dir) => return Err(FsError::IsDir),
                // A symlink, FIFO or device another mount put there: the kernel, not a
                // create, follows or opens those; ESTALE makes it look the name up afresh
                // and retry the open.
                Ok(_) => return Err(FsError::Stale),
                Err(FsError::NotFound) => continue,
                Err(e) => return Err(e),
            }
            match self
                .open(ino, flags)
                .and_then(|fh| Ok((self.names.getattr(ino)?, fh)))
            {
                Err(FsError::NotFound) => continue,
                opened => return opened,
            }
        };
        let ino = node.ino;
        let data_token = node.data_token.map(|token| (node.data_key, token));
        let of = OpenFile::created(node.rec, node.cas, data_token);
        let attr = self.names.attr_from(ino, &of.view(), None);
        let of = self.open_files.insert_created(ino, of);
        Ok((attr, self.open_files.new_handle(ino, of, flags)))
    }

    pub fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let of = match self.open_files.join(ino) {
            Some(of) => {
                let mut g = lock(&of);
                if !g.is_dirty() && !g.has_writers() && !g.is_unlinked() {
                    // Close-to-open: a new open sees what other mounts closed since.
                    match self.names.read_live_inode(ino) {
                        Ok((rec, cas)) => g.reopen(rec, cas),
                        Err(e) => {
                            drop(g);
                            self.drop_handle(ino, &of, false);
                            return Err(e);
                        }
                    }
                }
                drop(g);
                of
            }
            None => {
                let (rec, cas) = self.names.read_live_inode(ino)?;
                match rec.kind {
                    Kind::Dir => return Err(FsError::IsDir),
                    Kind::Symlink => return Err(FsError::Invalid("open of a symlink")),
                    // The kernel opens pipes and devices itself; nothing of them is stored.
                    Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                        return Err(FsError::Invalid("open of a FIFO, socket or device node"));
                    }
                    Kind::File => {}
                }
                self.open_files
                    .join_or_insert(ino, OpenFile::new(rec, Some(cas)))
            }
        };
        let writable = matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR);
        if writable && flags & libc::O_TRUNC != 0 {
            lock(&of).truncate();
        }
        Ok(self.open_files.new_handle(ino, of, flags))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.open_files.handle(fh)?;
        for _ in 0..REWRITES_FOLLOWED {
            let mut of = self.names.lock_loaded(h.ino, &h.file)?;
            let Some(c) = of.chunks_mut() else {
                let data: &[u8] = of.buffer().map_or(&[], |d| d);
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                return Ok(data[start..end].to_vec());
            };
            match self.read_chunked(h.ino, c, offset, size) {
                Err(FsError::Stale) => self.take_rewritten_record(h.ino, &mut of)?,
                read => return read,
            }
        }
        Err(FsError::Stale)
    }

    /// A file in chunks another mount rewrote since this open file read its record (its
    /// chunks gone or another generation): the open file, holding no writes of its own,
    /// takes the record as stored now and reads from it (close-to-open, as a file of one
    /// item does when its record changes under it).
    fn take_rewritten_record(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        let (rec, cas) = self.names.read_live_inode(ino)?;
        of.take_newer_record(rec, Some(cas));
        of.forget_bytes();
        Ok(())
    }

    /// Writes at `offset` (at the end for O_APPEND). `kill_suidgid`: the kernel asks us to drop
    /// set-user/group-ID bits, as for a write by an unprivileged user (FUSE_HANDLE_KILLPRIV_V2).
    pub fn write(&self, fh: u64, offset: u64, bytes: &[u8], kill_suidgid: bool) -> FsResult<u32> {
        let h = self.open_files.handle(fh)?;
        if !h.write {
            return Err(FsError::BadHandle);
        }
        for _ in 0..REWRITES_FOLLOWED {
            let mut of = self.names.lock_loaded(h.ino, &h.file)?;
            let offset = if h.append { of.view().size } else { offset };
            let end = offset + bytes.len() as u64;
            self.check_size(h.ino, end)?;
            if of.chunks().is_none() && end > self.tree.item_limit() {
                self.start_chunking(h.ino, &mut of)?;
            }
            match of.chunks_mut() {
                Some(c) => match self.write_chunked(h.ino, c, offset, bytes) {
                    // (Only a write's first chunk read can find the file rewritten: nothing
                    // of the write is in the open file yet.)
                    Err(FsError::Stale) => {
                        self.take_rewritten_record(h.ino, &mut of)?;
                        continue;
                    }
                    written => written?,
                },
                None => of.write_buffer(offset as usize, bytes),
            }
            of.touch_mtime();
            if kill_suidgid {
                of.kill_suidgid();
            }
            return Ok(bytes.len() as u32);
        }
        Err(FsError::Stale)
    }

    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.open_files.handle(fh)?;
        self.publish_file(h.ino, &h.file)
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = self.open_files.take_handle(fh)?;
        let result = self.publish_file(h.ino, &h.file);
        self.drop_handle(h.ino, &h.file, h.write);
        result
    }

    /// Counts a handle closed; the last one of a file this mount removed takes its chunks.
    fn drop_handle(&self, ino: u64, file: &Arc<Mutex<OpenFile>>, writer: bool) {
        self.maintenance
            .delete_chunk_runs(ino, self.open_files.drop_handle_count(ino, file, writer));
    }

    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush(fh)
    }

    /// Publishes an open file, waiting out namespace operations that ran meanwhile (with
    /// the open file unlocked, since completing one may need it).
    pub(crate) fn publish_file(&self, ino: u64, file: &Arc<Mutex<OpenFile>>) -> FsResult<()> {
        let mut waited = Ok(());
        for _ in 0..crate::tree::CAS_RETRIES {
            // The open file is unlocked before waiting: completing another mount's intent
            // may need it.
            let published = self.publish(ino, &mut lock(file)); // (the open file unlocked again)
            let outcome = match published {
                // Every name removed by another mount (its directory too, so the paths
                // cannot be worked out): as on a local filesystem, the bytes of an unlinked
                // file go with it, and close and fsync succeed.
                Err(FsError::NotFound) if self.names.read_inode_opt(ino)?.is_none() => {
                    let written = {
                        let mut of = lock(file);
                        of.mark_unlinked();
                        of.take_written()
                    };
                    // (Keys a first round wrote at the gone paths go once no name is there.)
                    self.maintenance.leave_stale_keys(written);
                    return Ok(());
                }
                outcome => outcome,
            };
            if outcome.is_err() {
                // Keys written at paths a rename took away go once no name is at them.
                self.maintenance.leave_stale_keys(lock(file).take_written());
            }
            let outcome = outcome?;
            match outcome {
                Published::Done(stale) if stale.is_empty() => return Ok(()),
                Published::Done(stale) => return self.names.delete_keys_outside_tree(&stale),
                // A store error while waiting: the bytes are still to publish; try again.
                Published::AfterNamespaceOp => waited = self.names.wait_quiet(),
                // (Handled inside `publish`; publishing again is right in any case.)
                Published::Unchunked => {}
            }
        }
        waited.and(Err(FsError::Contended))
    }

    /// One publish: the buffer to every data key and the record with cas, pipelined in one
    /// round trip with a read of the namespace lock and the directory-rename count. Those
    /// reads run after the `set`s on the server, so if no namespace operation ran and no
    /// directory moved, the keys written were the file's names and any later rename copies
    /// these bytes. Otherwise the file is published again once the namespace is quiet.
    fn publish(&self, ino: u64, of: &mut OpenFile) -> FsResult<Published> {
        if of.is_unlinked() || !of.is_dirty() {
            return Ok(Published::Done(Vec::new()));
        }
        // Chunks unchanged (only attributes pending): the record's size and chunks stay as
        // stored, which another mount may have changed since this one wrote them.
        if of.chunks().is_some_and(ChunkedFile::is_dirty) {
            match self.publish_chunked(ino, of) {
                Ok(Published::Unchunked) => {} // published below, as one item
                Ok(other) => return Ok(other),
                Err(e) => {
                    crate::limited_warn!(
                        format!("publish: {}", e.kind()),
                        "publishing a file in chunks failed: inode {ino}: {e}"
                    );
                    self.after_failed_chunked_publish(ino, of);
                    return Err(e);
                }
            }
        }
        let outcome = self.publish_rounds(ino, of);
        if let Err(e) = &outcome
            && !of.written().is_empty()
        {
            // Some names may hold the new bytes and others (or the record) the old: make the
            // file consistent (empty) rather than leave nginx and mounts disagreeing.
            crate::limited_warn!(
                format!("publish: {}", e.kind()),
                "publishing file failed after its first batch: inode {ino}: {e}"
            );
            self.after_failed_publish(ino, of);
        }
        outcome
    }

    /// Publish rounds until one settles: each works out the record and the keys over the
    /// record as stored ([`publish_plan`](crate::files::publish_plan)), sends them with a fence
    /// ([`Self::send_round`]) and applies the replies ([`Self::apply_round`]).
    fn publish_rounds(&self, ino: u64, of: &mut OpenFile) -> FsResult<Published> {
        // The record version whose bytes were loaded to move with a mode change: they are
        // the store's, not a writer's, and go stale with the version.
        let mut moving_at = None;
        for _ in 0..crate::tree::CAS_RETRIES {
            if !self.refresh_record(ino, of)? {
                return self.after_removed(of);
            }
            if moving_at.is_some_and(|at| at != of.cas()) {
                // Another mount changed the file since: load its bytes again rather than
                // publish older ones over them.
                of.forget_bytes();
                moving_at = None;
            }
            let rec = of.record_to_publish();
            // Read before the paths are worked out: another thread of this mount may see a
            // directory rename (and count it) between the two.
            let generation_before = self.names.paths_generation();
            let keys = RoundKeys {
                stored: self.names.bytes_keys(ino, of.record())?,
                publish: self.names.bytes_keys(ino, &rec)?,
                private: self.tree.keys.private_data(ino),
            };
            match before_round(of, &keys) {
                None => {}
                Some(Before::MoveBytes) => {
                    // A mode change that serves or withdraws the file: its bytes move with
                    // it, as the store holds them now (a buffer published already may be
                    // older). (Loading may read the record again: work the round out afresh.)
                    of.forget_bytes();
                    if let Load::AfterNamespaceOp = self.names.load_bytes(ino, of, false)? {
                        return Ok(Published::AfterNamespaceOp);
                    }
                    of.mark_buffer_dirty();
                    moving_at = Some(of.cas());
                    continue;
                }
                Some(Before::ReadTokens(served)) => {
                    match self.read_key_tokens(ino, of, &served, generation_before)? {
                        Tokens::Taken => {}
                        // The record changed, or the paths: work the round out again.
                        Tokens::RecordChanged | Tokens::PathsMoved => continue,
                        Tokens::NamespaceBusy => return Ok(Published::AfterNamespaceOp),
                    }
                }
            }
            let plan = plan_round(of, rec, &keys);
            let replies = self.send_round(ino, &plan)?;
            match self.apply_round(ino, of, plan, replies, generation_before)? {
                RoundEnd::Settled(published) => return Ok(published),
                RoundEnd::Again => {}
            }
        }
        Err(FsError::Contended)
    }

    /// Sends a round: the bytes to every key planned, the record's `cas`, then (after them
    /// on the server) the namespace lock and the directory-rename count.
    fn send_round(&self, ino: u64, plan: &PublishPlan) -> FsResult<RoundReplies> {
        let ikey = self.tree.keys.inode(ino);
        let data = plan.bytes.clone().unwrap_or_default();
        let mut batch = Batch::new();
        let writes: Vec<Handle<Stored>> = plan
            .writes
            .iter()
            .map(|(k, write)| match write {
                KeyWrite::Private => batch.store_shared(StoreOp::Set, k, data.clone()),
                KeyWrite::Add => batch.store_shared(StoreOp::Add, k, data.clone()),
                KeyWrite::Cas(token) => batch.cas_write(k, data.clone(), *token),
            })
            .collect();
        let value = plan.record.encode();
        self.names.check_record_size(&ikey, value.len())?;
        let record = batch.cas(&ikey, &value, plan.cas);
        batch.fence();
        let lock = batch.get(self.tree.keys.ns_lock());
        let generation = batch.get(self.tree.keys.dir_generation());
        let mut results = batch.execute(&self.tree.store);
        Ok(RoundReplies {
            writes: writes.into_iter().map(|h| results.take(h)).collect(),
            record: results.take(record),
            lock: results.take(lock),
            generation: results.take(generation),
        })
    }

    /// Applies a round's replies to the open file: the keys written, the record stored (or
    /// changed meanwhile, or gone), and whether a namespace operation ran meanwhile.
    fn apply_round(
        &self,
        ino: u64,
        of: &mut OpenFile,
        plan: PublishPlan,
        replies: RoundReplies,
        generation_before: u64,
    ) -> FsResult<RoundEnd> {
        let PublishPlan {
            bytes,
            writes,
            record,
            left,
            ..
        } = plan;
        let refused = match note_round_writes(of, &writes, replies.writes) {
            Ok(refused) => refused,
            Err(e) => {
                crate::limited_warn!(
                    format!("publish: {}", e.kind()),
                    "publishing file failed: inode {ino}: {e}"
                );
                self.after_failed_publish(ino, of);
                return Err(e);
            }
        };
        // A fence read that failed counts as a namespace operation: publish again once
        // quiet (the cas may have gone through, and what it left must be settled).
        let lock_held = replies.lock.map_or(true, |v| v.is_some());
        let moved = self.names.note_generation(replies.generation).is_err()
            || self.names.paths_generation() != generation_before;
        match replies.record? {
            CasOutcome::Stored => {
                // Where the bytes were and no longer are (the mode changed): those keys go
                // like keys a rename took away, once no name holds bytes there.
                for k in &left {
                    of.note_written(k);
                }
                if record.chunk_size.is_none() {
                    // It was in chunks until now: they go (before the round below, which
                    // starts from the record stored, no longer naming them).
                    self.maintenance.delete_record_chunks(ino, of.record());
                }
                if refused {
                    // The record took the new size but a name did not take the bytes: read
                    // the tokens again and publish again.
                    of.record_published(record);
                    return Ok(RoundEnd::Again);
                }
                if let Some(bytes) = &bytes {
                    self.tree.activity.published(bytes.len());
                }
                of.record_published(record);
                if (lock_held || moved) && bytes.is_some() {
                    // Publish the same bytes again at the names the operation left.
                    return Ok(RoundEnd::Settled(Published::AfterNamespaceOp));
                }
                of.mark_buffer_clean();
                let stale: Vec<Vec<u8>> = of
                    .take_written()
                    .into_iter()
                    .filter(|k| !writes.iter().any(|(current, _)| current == k))
                    .collect();
                Ok(RoundEnd::Settled(Published::Done(stale)))
            }
            CasOutcome::Changed => {
                of.forget_version(); // re-read, merge our changes onto it, try again
                match lock_held {
                    true => Ok(RoundEnd::Settled(Published::AfterNamespaceOp)),
                    false => Ok(RoundEnd::Again),
                }
            }
            CasOutcome::Gone => self.after_removed(of).map(RoundEnd::Settled),
        }
    }

    /// Before a publish round: reads the record again if its cas token is unknown (another
    /// writer changed it, or this mount's last publish did). False when the file is gone.
    pub(crate) fn refresh_record(&self, ino: u64, of: &mut OpenFile) -> FsResult<bool> {
        if of.cas().is_some() {
            return Ok(true);
        }
        match self.names.read_inode_opt(ino)? {
            Some((rec, cas)) => {
                // Another mount may have written the private key since this one made the file.
                of.take_newer_record(rec, Some(cas));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Reads the tokens of `served` (data keys of the file's names), then the record and the
    /// namespace lock: if the record is still the version held, no name moved before the keys
    /// were read; if besides no operation that may move this file's bytes runs, the keys
    /// hold this file's bytes, so the tokens are this file's. (A rename or exchange changes
    /// the records before it moves the bytes: in between, the record already names a key
    /// that still holds another file's bytes, which a cas on its token would replace.)
    /// An operation that finished after the keys were read wrote them, so their tokens no
    /// longer match. A directory renamed since the paths were worked out (directory-rename
    /// count `generation`) changes no record but the paths: keys at the old paths may hold
    /// other files' bytes by now.
    fn read_key_tokens(
        &self,
        ino: u64,
        of: &mut OpenFile,
        served: &[Vec<u8>],
        generation: u64,
    ) -> FsResult<Tokens> {
        let ikey = self.tree.keys.inode(ino);
        let mut batch = Batch::new();
        let reads: Vec<_> = served.iter().map(|k| batch.gets(k)).collect();
        batch.fence();
        let record = batch.gets(&ikey);
        let held = batch.get(self.tree.keys.ns_lock());
        let dirgen = batch.get(self.tree.keys.dir_generation());
        let mut r = batch.execute(&self.tree.store);
        let mut tokens = std::collections::HashMap::new();
        for (k, read) in served.iter().zip(reads) {
            let token = r.take(read)?.map_or(0, |item| item.cas.unwrap_or(0));
            tokens.insert(k.clone(), token);
        }
        let record = r.take(record)?;
        let held = r.take(held)?;
        self.names.note_generation(r.take(dirgen))?;
        let Some(item) = record else {
            of.forget_version(); // removed: the next round finds it gone
            return Ok(Tokens::RecordChanged);
        };
        if item.cas.is_none() || item.cas != of.cas() {
            of.take_newer_record(Inode::decode(&ikey, &item.value)?, item.cas);
            return Ok(Tokens::RecordChanged);
        }
        if held.is_some_and(|lock| self.names.may_move_bytes_of(ino, &lock.value)) {
            return Ok(Tokens::NamespaceBusy);
        }
        if self.names.paths_generation() != generation {
            return Ok(Tokens::PathsMoved); // (the path cache was dropped)
        }
        of.take_key_tokens(tokens);
        Ok(Tokens::Taken)
    }

    /// The file was removed by another mount while open here: take back the bytes this
    /// publish put where no name is.
    fn after_removed(&self, of: &mut OpenFile) -> FsResult<Published> {
        of.mark_unlinked();
        Ok(Published::Done(of.take_written()))
    }

    /// A failed `set` leaves no old bytes either (memcached drops the item), so the file is
    /// made empty everywhere rather than left half-visible; the buffer is dropped.
    fn after_failed_publish(&self, ino: u64, of: &mut OpenFile) {
        of.drop_buffer();
        of.drop_pending();
        // Keys written at paths a rename took away meanwhile go when the heartbeat finds no
        // name at them (the file's own stay).
        self.maintenance.leave_stale_keys(of.take_written());
        // (A file in chunks becomes one empty item; its chunks go.)
        let mut chunked = None;
        let emptied = self.names.update_record(ino, |r| {
            chunked = Some(r.clone()).filter(|r| r.chunk_size.is_some());
            r.size = 0;
            r.chunk_size = None;
            r.chunk_gen = 0;
            Ok(())
        });
        if let Ok(rec) = &emptied {
            of.adopt_record(rec.clone());
            of.forget_bytes();
            if let Some(was) = &chunked {
                self.maintenance.delete_record_chunks(ino, was);
            }
        }
        if let Ok(rec) = emptied
            && let Ok(keys) = self.names.bytes_keys(ino, &rec)
        {
            let _ = self.tree.store.execute(
                keys.iter()
                    .map(|k| Command::store(StoreOp::Set, k, b""))
                    .collect(),
            );
            // Another mount may have removed or moved the file meanwhile: the heartbeat
            // deletes these again if no name is at them.
            self.maintenance.leave_stale_keys(keys);
        }
    }
}

/// Notes in the open file the keys a round's writes stored (every one, even when another
/// failed). True when a served key was refused: it changed since its token was read (another
/// mount's rename gave it to another file, or this file's bytes were published there by
/// another mount): not written. The first store error, if any.
fn note_round_writes(
    of: &mut OpenFile,
    writes: &[(Vec<u8>, KeyWrite)],
    replies: Vec<FsResult<bool>>,
) -> FsResult<bool> {
    let mut failure = None;
    let mut refused = false;
    for ((k, write), r) in writes.iter().zip(replies) {
        match r {
            Ok(true) => {
                of.note_written(k);
                if *write == KeyWrite::Private {
                    of.private_key_used();
                }
            }
            Ok(false) => refused = true,
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    failure.map_or(Ok(refused), Err)
}
