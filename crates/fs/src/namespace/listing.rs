//! Directory listings: appending to a directory's log and replaying it (the record format is
//! in `dirlog.rs`).
//!
//! A change takes its sequence number with `incr` and appends its record in the same batch,
//! before it knows the number. The record goes to the chunk of the lowest number it can get
//! (one more than the highest this mount has seen): chunks are replayed in order up to the
//! one of the current sequence number, so a record in an earlier chunk than its number is
//! still replayed. The same batch creates the next chunk (`add` of an empty value), so every
//! chunk up to the current number exists: a missing one is an error, never an empty listing.
//! Once this mount has seen that next chunk exist, its appends leave the `add` out, and make
//! the chunk again only when a number reaches it: a chunk made ahead can still be lost (a
//! server of a pool restarted empty, a repair that read the sequence before it was made), and
//! the append whose number falls in it makes it again (a listing that reads the sequence in
//! between finds the chunk missing and tries once more, as with any chunk still to be made).
//!
//! Records about one (name, inode) pair must be replayed in the order of the operations that
//! wrote them: a `-` replayed before the `+` it removes would leave the name listed. A create
//! only adds a pair no record names yet, so where its `+` lands does not matter as long as it
//! is before every later record about the pair. Every other change (unlink, rename, link,
//! roll forward, repair) holds the namespace lock, so no other operation touches its pairs
//! meanwhile: if its records landed in an earlier chunk than their numbers (this mount's idea
//! of the log was behind: another mount appended a chunk since), it appends them again to the
//! chunk of their numbers, which is at or after the chunk of every record written before it.

use std::time::{Duration, Instant};

use memfis_memcache::{Command, Store, StoreError, StoreOp};
use tracing::warn;

use crate::layout::attr::{Attr, DirEntry};
use crate::layout::dirlog::{self, DirSeq, LogBase, Op};
use crate::layout::record::{Inode, Kind, Time};
use crate::namespace::Namespace;
use crate::store::batch::{Batch, Counted, Got, Handle, Replies, StoreAt, Stored};
use crate::store::replies::value_of;
use crate::sync::lock;
use crate::{FsError, FsResult};

/// One change to a directory's log.
pub(crate) type LogChange<'a> = (Op, Kind, u64, &'a [u8]);

/// Records on their way into a directory's log, sent as [`LogAppend::commands`].
pub(crate) struct LogAppend {
    dir: u64,
    pub(crate) chunk: u64,
    records: Vec<u8>,
    count: u64,
    changes: Vec<(Op, Vec<u8>, u64, Kind)>,
    /// Appended holding the namespace lock: the records are appended again if they landed
    /// in an earlier chunk than their numbers (see the module comment).
    under_lock: bool,
    /// Set when the records went in after the batch (its append failed): a create's fence,
    /// read in the batch, then says nothing about them ([`Namespace::settle_create_fence`]).
    pub(crate) late: std::cell::Cell<bool>,
}

/// Where the replies to [`Namespace::log_commands`] are.
pub(crate) struct LogReplies {
    incr: Handle<Counted>,
    append: Handle<Stored>,
    /// None when this mount knows the chunk after the append's exists already.
    precreate: Option<Handle<Stored>>,
    /// None when the caller reads the base later in the batch (a create's fence) and hands
    /// it to [`Namespace::finish_log_with_base`].
    base: Option<Handle<Got>>,
}

/// What a directory's log said to an append.
#[derive(Clone, Copy)]
pub(crate) enum Logged {
    /// The records were appended.
    Done,
    /// The directory is gone or being removed (its sequence key is missing or fenced).
    DirGone,
}

impl<S: Store> Namespace<S> {
    /// Builds the commands that append a create's `+` records (new inodes only, no lock held)
    /// to `dir`'s log in one batch.
    pub(crate) fn log_append(&self, dir: u64, changes: &[LogChange<'_>]) -> LogAppend {
        self.log_append_as(dir, changes, false)
    }

    /// Builds the commands that append `changes` of an operation holding the namespace lock.
    pub(crate) fn log_append_locked(&self, dir: u64, changes: &[LogChange<'_>]) -> LogAppend {
        self.log_append_as(dir, changes, true)
    }

    fn log_append_as(&self, dir: u64, changes: &[LogChange<'_>], under_lock: bool) -> LogAppend {
        let hint = self.meta.seq_hint(dir);
        let mut records = Vec::new();
        for (op, kind, ino, name) in changes {
            records.extend(dirlog::encode(*op, *kind, *ino, name));
        }
        LogAppend {
            dir,
            chunk: (hint + 1) / self.tree.keys.log_chunk_records(),
            records,
            count: changes.len() as u64,
            changes: changes
                .iter()
                .map(|(op, kind, ino, name)| (*op, name.to_vec(), *ino, *kind))
                .collect(),
            under_lock,
            late: std::cell::Cell::new(false),
        }
    }

    /// Pushes the commands of `la` onto `batch`; their replies go to [`Self::finish_log`].
    pub(crate) fn log_commands(&self, la: &LogAppend, batch: &mut Batch) -> LogReplies {
        let mut sent = self.log_commands_base_read_later(la, batch);
        // Read after the append and the chunk made ahead: what landed below a base a
        // compaction moved goes again above it (records) or away (the chunk).
        sent.base = Some(batch.get(self.tree.keys.dir_base(la.dir)));
        sent
    }

    /// [`Self::log_commands`] without the read of the log's base: the caller reads it later
    /// in the same batch (after these commands) and passes it to
    /// [`Self::finish_log_with_base`]. A later read of the base serves as well: bases only
    /// grow, and every use of it here is "at least this far".
    pub(crate) fn log_commands_base_read_later(
        &self,
        la: &LogAppend,
        batch: &mut Batch,
    ) -> LogReplies {
        let next = la.chunk + 1;
        LogReplies {
            incr: batch.incr(self.tree.keys.dir_seq(la.dir), la.count),
            append: batch.store(
                StoreOp::Append,
                &self.tree.keys.dir_log(la.dir, la.chunk),
                &la.records,
            ),
            precreate: (!self.meta.log_chunk_exists(la.dir, next))
                .then(|| batch.add(&self.tree.keys.dir_log(la.dir, next), b"")),
            base: None,
        }
    }

    /// The chunk keys an append may create (for cleaning up after a removed directory).
    pub(crate) fn log_chunk_keys(&self, la: &LogAppend) -> [Vec<u8>; 2] {
        [
            self.tree.keys.dir_log(la.dir, la.chunk),
            self.tree.keys.dir_log(la.dir, la.chunk + 1),
        ]
    }

    /// Checks the replies to [`Self::log_commands`] (taken from `results`), finishing what
    /// the batch could not do (a chunk too full or not there yet, records that landed in an
    /// earlier chunk than their numbers or below the log's base).
    pub(crate) fn finish_log(
        &self,
        la: &LogAppend,
        results: &mut Replies,
        mut sent: LogReplies,
    ) -> FsResult<Logged> {
        let base_key = self.tree.keys.dir_base(la.dir);
        let read = sent.base.take().expect("log_commands reads the base");
        let base = results
            .take(read)
            .and_then(|item| LogBase::decode(&base_key, item.as_ref().map(|i| &i.value[..])));
        self.finish_log_with_base(la, results, sent, base)
    }

    /// [`Self::finish_log`] for commands from [`Self::log_commands_base_read_later`], with
    /// the log's base as read later in the batch.
    pub(crate) fn finish_log_with_base(
        &self,
        la: &LogAppend,
        results: &mut Replies,
        sent: LogReplies,
        base: FsResult<LogBase>,
    ) -> FsResult<Logged> {
        let incr = results.take(sent.incr);
        let append = results.take(sent.append);
        // None: not sent, this mount has seen the chunk made.
        let precreate = sent.precreate.map(|h| results.take(h));
        let last = match incr {
            Ok(Some(n)) => n,
            // No sequence, or one fenced by an rmdir (not a number).
            Ok(None)
            | Err(FsError::Store {
                source: StoreError::Client(_),
                ..
            }) => return Ok(Logged::DirGone),
            Err(e) => return Err(e),
        };
        let base = base?.chunk;
        if let Some(Ok(_)) = precreate {
            // Made now or found there. (Even below the base, where it goes just below:
            // appends to chunks that low are sent again above the base anyway.)
            self.meta.note_log_chunk(la.dir, la.chunk + 1);
        }
        if matches!(precreate, Some(Ok(true))) && la.chunk + 1 < base {
            // Made below the base by this mount's old idea of the log: nothing reads it.
            self.delete_stray_chunks(la.dir, la.chunk + 1..base);
        }
        let per_chunk = self.tree.keys.log_chunk_records();
        let chunk_now = (last / per_chunk).max(base);
        // The batch made `la.chunk` (by appending to it) and the one after, if its `add`
        // answered; one only known made, or whose `add` lost its reply, is made again below if
        // this number reached it.
        let made_up_to = match (&append, &precreate) {
            (Ok(true), Some(Ok(_))) => la.chunk + 1,
            (Ok(true), _) => la.chunk,
            _ => la.chunk.saturating_sub(1),
        };
        match append {
            // Below the base (a compaction moved it: nobody reads that chunk), or possibly
            // before a record about the same pair in a later chunk: again, in the chunk of
            // this number, after it. A create's records go again only under the lock, by
            // its fence (`settle_create_fence`).
            Ok(true) if la.under_lock && la.chunk < chunk_now => {
                self.append_or_add(&self.tree.keys.dir_log(la.dir, chunk_now), &la.records)?
            }
            Ok(true) => {}
            // Not there yet, or full (the item size limit).
            Ok(false) | Err(FsError::TooBig { .. }) => {
                la.late.set(true);
                self.append_or_add(&self.tree.keys.dir_log(la.dir, chunk_now), &la.records)?
            }
            Err(e) => return Err(e),
        }
        if chunk_now > made_up_to {
            self.make_chunks_up_to(la.dir, (made_up_to + 1).max(base), chunk_now)?;
        }
        self.meta.raise_seq_hint(la.dir, last.max(base * per_chunk));
        if last / per_chunk != (last - la.count) / per_chunk {
            // The log grew by a chunk: the heartbeat looks whether it is worth compacting.
            self.want_compaction(la.dir);
        }
        for (op, name, ino, kind) in &la.changes {
            self.meta
                .note_name(la.dir, name, (*op == Op::Add).then_some((*ino, *kind)));
        }
        Ok(Logged::Done)
    }

    /// This mount's idea of a log's sequence was behind (or its chunk was not there yet):
    /// makes sure every chunk from `from` up to the one after `chunk_now` exists, as every
    /// reader expects (the base is read after: chunks made below a base moved meanwhile go
    /// again).
    fn make_chunks_up_to(&self, dir: u64, from: u64, chunk_now: u64) -> FsResult<()> {
        let base_key = self.tree.keys.dir_base(dir);
        crate::store::retried(|| {
            let mut batch = Batch::new();
            let made: Vec<_> = (from..=chunk_now + 1)
                .map(|c| batch.add(&self.tree.keys.dir_log(dir, c), b""))
                .collect();
            let base_read = batch.get(&base_key);
            let mut r = batch.execute(&self.tree.store);
            for chunk in made {
                r.take(chunk)?;
            }
            let item = r.take(base_read)?;
            let base = LogBase::decode(&base_key, item.as_ref().map(|i| &i.value[..]))?;
            if from < base.chunk {
                self.delete_stray_chunks(dir, from..base.chunk.min(chunk_now + 2));
            }
            self.meta.note_log_chunk(dir, chunk_now + 1);
            Ok(())
        })
    }

    /// Deletes chunks of `dir`'s log made below its base by a mount whose idea of the log was
    /// from before a compaction. Best effort: left behind, they are garbage that
    /// `memfis check --repair` deletes.
    pub(crate) fn delete_stray_chunks(&self, dir: u64, chunks: std::ops::Range<u64>) {
        let batch: Vec<Command> = chunks
            .map(|c| Command::Delete(self.tree.keys.dir_log(dir, c)))
            .collect();
        let _ = crate::store::retried(|| self.tree.store.execute_all(batch.clone()));
    }

    /// The command that sets a directory's mtime (sent with every log append).
    pub(crate) fn touch_dir_cmd(&self, dir: u64) -> (Command, Time) {
        let now = Time::now();
        let cmd = Command::store(
            StoreOp::Set,
            &self.tree.keys.dir_mtime(dir),
            now.to_text().as_bytes(),
        );
        (cmd, now)
    }

    /// Sets a directory's mtime key outside the namespace lock. An rmdir by another mount
    /// may have deleted the directory's keys meanwhile: the `set` would then leave a key of
    /// no directory. So its sequence is read after the `set`: still numeric, any rmdir fences
    /// it later and deletes the key itself; missing or fenced, the key is taken back. (A fence
    /// is lifted again only by a rename whose claim failed, under the namespace lock: it is
    /// looked at again under that lock before the key goes.)
    pub(crate) fn set_dir_mtime_unlocked(&self, dir: u64, t: Time) -> FsResult<()> {
        let key = self.tree.keys.dir_mtime(dir);
        self.tree
            .store
            .store_at(StoreOp::Set, &key, t.to_text().as_bytes())?;
        if crate::store::retried(|| self.dir_seq_value(dir))?.is_some() {
            return Ok(());
        }
        self.with_ns_lock(Batch::new(), |_, _| {
            if self.dir_seq_value(dir)?.is_none() {
                self.tree.store.delete_at(&key)?;
            }
            Ok(())
        })
    }

    /// Keeps this mount's cached attributes of `dir` in step with an mtime it just set.
    pub(crate) fn note_dir_touched(&self, dir: u64, now: Time) {
        self.meta.dir_touched(dir, now);
    }

    /// Appends records to a directory's log and bumps its mtime: one round trip. Only while
    /// holding the namespace lock.
    pub(crate) fn log_dir_changes(&self, dir: u64, changes: &[LogChange<'_>]) -> FsResult<()> {
        let la = self.log_append_locked(dir, changes);
        let mut batch = Batch::new();
        let log = self.log_commands(&la, &mut batch);
        let (touch, now) = self.touch_dir_cmd(dir);
        let touched = batch.push::<Stored>(touch);
        let mut results = batch.execute(&self.tree.store);
        match self.finish_log(&la, &mut results, log)? {
            Logged::Done => {}
            Logged::DirGone => {
                // The batch's `set` of the mtime and `add` of the next chunk may have made
                // keys of a directory that is gone: taken back (the lock is held, so no
                // operation makes them meanwhile).
                let made = [
                    self.tree.keys.dir_mtime(dir),
                    self.tree.keys.dir_log(dir, la.chunk + 1),
                ];
                let _ = crate::store::retried(|| {
                    let mut batch = Batch::new();
                    let deleted: Vec<_> = made.iter().map(|k| batch.delete(k)).collect();
                    let mut r = batch.execute(&self.tree.store);
                    for key in deleted {
                        r.take(key)?;
                    }
                    Ok(())
                });
                return Err(FsError::missing(&self.tree.keys.dir_seq(dir)));
            }
        }
        results.take(touched)?;
        self.note_dir_touched(dir, now);
        Ok(())
    }

    pub(crate) fn append_or_add(&self, key: &[u8], record: &[u8]) -> FsResult<()> {
        for _ in 0..crate::tree::CAS_RETRIES {
            if self.tree.store.store_at(StoreOp::Append, key, record)? {
                return Ok(());
            }
            if self.tree.store.store_at(StoreOp::Add, key, record)? {
                return Ok(());
            }
        }
        Err(FsError::Contended)
    }

    /// The listing of a directory, replayed from its log.
    pub fn list_dir(&self, dir: u64) -> FsResult<dirlog::Listing> {
        let started = Instant::now();
        let Some(DirSeq { seq, base, .. }) = self.read_dir_seq(dir)? else {
            // An rmdir deletes the record before the sequence: both gone is a directory
            // removed meanwhile (ENOENT); a sequence lost under a live record is EIO.
            return match self.read_inode_opt(dir)? {
                None => Err(FsError::NotFound),
                Some(_) => Err(FsError::missing(&self.tree.keys.dir_seq(dir))),
            };
        };
        let seq = seq.ok_or(FsError::NotFound)?; // fenced: being removed
        let listing = self.replay_log(dir, base, seq)?;
        let names = listing
            .iter()
            .map(|(n, (i, k))| (n.clone(), (*i, *k)))
            .collect();
        self.meta.put_listing(dir, names, started);
        self.meta.raise_seq_hint(dir, seq);
        Ok(listing)
    }

    /// Replays `dir`'s log from `base` (its snapshot, then chunks `base.chunk ..= seq /
    /// log_chunk_records()`). A missing piece is EIO after one retry, which reads the sequence
    /// and base again: its creator may be a moment behind the sequence number, or a
    /// compaction may have moved the base. Never an empty listing: an rmdir must not take a
    /// lost chunk for an empty directory.
    pub(crate) fn replay_log(
        &self,
        dir: u64,
        base: LogBase,
        seq: u64,
    ) -> FsResult<dirlog::Listing> {
        let (mut base, mut seq) = (base, seq);
        for attempt in 0..2 {
            let key = match self.replay_once(dir, base, seq)? {
                Ok((listing, records)) => {
                    let per_chunk = self.tree.keys.log_chunk_records();
                    if crate::namespace::compact::worth_compacting(
                        records,
                        listing.len(),
                        per_chunk,
                    ) {
                        self.want_compaction(dir);
                    }
                    return Ok(listing);
                }
                Err(missing) => missing,
            };
            if attempt == 1 {
                warn!(dir, key = %String::from_utf8_lossy(&key), "directory log is missing a piece");
                return Err(FsError::missing(&key));
            }
            std::thread::sleep(Duration::from_millis(20));
            match self.read_dir_seq(dir)? {
                Some(now) => match now.seq {
                    Some(s) => (base, seq) = (now.base, s.max(seq)),
                    // Fenced: an rmdir (or a rename over it) removed the directory while it
                    // was read, deleting its chunks: ENOENT, as for any directory another
                    // mount removed, not EIO for a lost chunk.
                    None => return Err(FsError::NotFound),
                },
                // Sequence and record both gone: removed meanwhile, as above. A sequence
                // lost under a live record stays EIO.
                None if self.read_inode_opt(dir)?.is_none() => return Err(FsError::NotFound),
                None => {}
            }
        }
        unreachable!("the loop returns")
    }

    /// One replay from `base`: the listing (ambiguous names settled by their entries) with the
    /// number of records read, or the key of a missing piece.
    pub(crate) fn replay_once(
        &self,
        dir: u64,
        base: LogBase,
        seq: u64,
    ) -> FsResult<Result<(dirlog::Listing, usize), Vec<u8>>> {
        let keys = self.tree.keys.dir_log_keys(dir, base, seq);
        let results = self
            .tree
            .store
            .execute(keys.iter().map(|k| Command::Get(k.clone())).collect());
        let mut state = dirlog::Replay::default();
        for (key, r) in keys.iter().zip(results) {
            match value_of(key, r)? {
                Some(item) => dirlog::replay(key, &item.value, &mut state)?,
                None => return Ok(Err(key.clone())),
            }
        }
        let records = state.records();
        let (mut listing, ambiguous) = state.finish();
        if !ambiguous.is_empty() {
            let entries = ambiguous
                .iter()
                .map(|(name, _)| Ok(self.read_entry(dir, name)?.ino))
                .collect::<FsResult<Vec<_>>>()?;
            dirlog::settle(&mut listing, ambiguous, &entries);
        }
        Ok(Ok((listing, records)))
    }

    pub fn readdir(&self, dir: u64) -> FsResult<Vec<DirEntry>> {
        let (rec, _) = self.read_live_inode(dir)?;
        if rec.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(self
            .list_dir(dir)?
            .into_iter()
            .map(|(name, (ino, kind))| DirEntry { name, ino, kind })
            .collect())
    }

    /// Attributes of many inodes, each with the kind a listing gave it, in one pipelined
    /// batch; `None` for a vanished one.
    pub fn getattr_many(&self, listed: &[(u64, Kind)]) -> FsResult<Vec<Option<Attr>>> {
        let keys: Vec<Vec<u8>> = listed
            .iter()
            .map(|&(i, _)| self.tree.keys.inode(i))
            .collect();
        // Each record, and a directory's mtime key, as getattr reads them (a directory's
        // mtime lives apart from its record). An inode never changes kind, so the listing's
        // says which ones are directories.
        let mut cmds = Vec::with_capacity(listed.len());
        for (&(ino, kind), key) in listed.iter().zip(&keys) {
            cmds.push(Command::Get(key.clone()));
            if kind == Kind::Dir {
                cmds.push(Command::Get(self.tree.keys.dir_mtime(ino)));
            }
        }
        let mut results = self.tree.store.execute(cmds).into_iter();
        let mut out = Vec::with_capacity(listed.len());
        for (&(ino, kind), key) in listed.iter().zip(&keys) {
            let record = results.next();
            let mtime = if kind == Kind::Dir {
                results.next()
            } else {
                None
            };
            if let Some(of) = self.open_file(ino) {
                out.push(Some(self.open_attr(ino, &lock(&of))));
                continue;
            }
            let record = record.expect("one reply a command");
            out.push(match value_of(key, record)? {
                Some(item) => {
                    let rec = Inode::decode(key, &item.value)?;
                    let mkey = self.tree.keys.dir_mtime(ino);
                    let mtime = match (rec.kind, mtime) {
                        (Kind::Dir, Some(read)) => {
                            value_of(&mkey, read)?.and_then(|i| Time::from_text(&i.value))
                        }
                        // Listed as another kind (a damaged log): as getattr would read it.
                        (Kind::Dir, None) => self
                            .tree
                            .store
                            .get_at(&mkey)?
                            .and_then(|i| Time::from_text(&i.value)),
                        _ => None,
                    };
                    Some(self.with_dir_links(self.attr_from(ino, &rec, mtime)))
                }
                None => None,
            });
        }
        Ok(out)
    }
}
