//! Claiming new names: the one path every create takes (a file, a directory, a symlink, a
//! special file, or a whole directory's worth of files for `memfis load`).
//!
//! One batch, no lock: each node's record `add`ed, its own keys (a directory's before its
//! entry, so that a mount that lists the new entry finds them; a file's empty data key after
//! it, since at that path it may be the owner's), its entry claimed with `add`; one log append
//! lists them all; the directory's mtime and the inode count; then, after every write on the
//! server, the create's fence (the lock, the directory-rename count, the log's base and
//! sequence). A node whose claim failed is undone alone; then the fence is settled for the
//! rest (a namespace operation that ran meanwhile waited out, an rmdir that removed the
//! directory meanwhile undone, records a compaction missed appended again), and a file's
//! data key follows a directory rename that moved it meanwhile.

use std::collections::HashMap;
use std::time::Instant;

use memfis_memcache::{Command, Store, StoreOp};

use crate::layout::dirlog::Op;
use crate::layout::names::join;
use crate::layout::record::{Inode, Kind};
use crate::namespace::Namespace;
use crate::namespace::listing::{LogAppend, Logged};
use crate::namespace::nodes::{Settled, Undo};
use crate::namespace::unsettled::Unsettled;
use crate::store::batch::{Batch, Got, Handle, Replies, Stored};
use crate::store::retried;
use crate::{FsError, FsResult};

/// What takes a create back: what it made, and the own keys it sent.
pub(crate) type CreateUndo = (Undo, Vec<Command>);

/// A node to create: a new inode number and its record (whose links name the new entry).
pub(crate) struct NewName {
    pub name: Vec<u8>,
    pub ino: u64,
    pub rec: Inode,
}

/// An inode just created: named, its keys made.
pub(crate) struct NewNode {
    pub ino: u64,
    pub name: Vec<u8>,
    pub rec: Inode,
    pub cas: u64,
    /// Where a file's bytes live (`KeyLayout::file_bytes`, at its path when created).
    pub data_key: Vec<u8>,
    /// The cas token of a served `data_key` as created (`RecordVersion::key_tokens`).
    pub data_token: Option<u64>,
}

/// Where the replies to one node's commands are.
struct Sent {
    record_added: Handle<Stored>,
    record_read: Handle<Got>,
    own: Vec<Handle<Stored>>,
    entry_added: Handle<Stored>,
    /// A served data key's token, read after the record's.
    data_read: Option<Handle<Got>>,
}

/// A node sent in the batch, with what undoing it takes.
struct Sending {
    new: NewName,
    data_key: Vec<u8>,
    own_keys: Vec<Command>,
}

impl<S: Store> Namespace<S> {
    /// Creates `names` in `parent` (whose path is `dir_path`) in one batch: one result per
    /// name, in order, the node or why it is not there (EEXIST for a name taken meanwhile,
    /// ENOENT when the directory went, a store error). Whatever failed is undone before it
    /// is returned (or, if the store keeps failing, by the heartbeat).
    pub(crate) fn claim_names(
        &self,
        parent: u64,
        dir_path: &[u8],
        names: Vec<NewName>,
    ) -> Vec<FsResult<NewNode>> {
        let changes: Vec<_> = names
            .iter()
            .map(|n| (Op::Add, n.rec.kind, n.ino, n.name.as_slice()))
            .collect();
        let la = self.log_append(parent, &changes);
        let mut batch = Batch::new();
        let (sending, sent): (Vec<Sending>, Vec<Sent>) = names
            .into_iter()
            .map(|new| self.push_claim(parent, dir_path, new, &mut batch))
            .unzip();
        // The log's base is read once, by the fence below.
        let log = self.log_commands_base_read_later(&la, &mut batch);
        let (touch, now) = self.touch_dir_cmd(parent);
        let touched = batch.push::<Stored>(touch);
        // Statistics only: unread.
        let _inode_count = batch.incr(self.tree.keys.inode_count(), sending.len() as u64);
        let fence = self.create_fence_cmds(parent, &mut batch);
        // After the `+` records: whether each entry still names its inode.
        let entries_after: Vec<(Vec<u8>, u64, Handle<Got>)> = sending
            .iter()
            .map(|s| {
                let key = self.tree.keys.entry(parent, &s.new.name);
                (s.new.name.clone(), s.new.ino, batch.gets(key))
            })
            .collect();
        let mut results = batch.execute(&self.tree.store);
        let replies: Vec<_> = sent
            .into_iter()
            .map(|s| ClaimReplies::take(&mut results, s))
            .collect();
        let mut fence = self.read_create_fence(parent, &mut results, fence);
        let logged = self.finish_log_with_base(&la, &mut results, log, fence.base.clone());
        let touched = results.take(touched);
        let entries_after: Vec<(Vec<u8>, Option<u64>)> = entries_after
            .into_iter()
            .map(|(name, ino, read)| {
                let now = results.entry(read, &name).ok().and_then(|slot| slot.ino);
                (name, (now == Some(ino)).then_some(ino))
            })
            .collect();

        // Replies lost (the batch may have run): if the directory is gone, keys of it the batch
        // may have made again are taken back with the undo; if not, the `+` may have landed.
        let parent_gone = match &logged {
            Ok(Logged::DirGone) => true,
            Ok(Logged::Done) => false,
            Err(_) => matches!(self.dir_seq_value(parent), Ok(None)),
        };
        let (mut out, claimed) =
            self.judge_claims(parent, &la, sending, replies, &logged, parent_gone);
        if claimed.is_empty() {
            return out;
        }
        // Only the directory's time: tried once more, the nodes are made (so the directory
        // is there; a gone one must not get its mtime key back).
        if touched.is_ok() || self.set_dir_mtime_unlocked(parent, now).is_ok() {
            self.note_dir_touched(parent, now);
        }
        self.note_claimed(parent, &out);
        fence.names_moved = claimed.iter().any(|(undo, _)| {
            !entries_after
                .iter()
                .any(|(name, still)| *name == undo.name && *still == Some(undo.ino))
        });
        self.settle_claims(parent, &la, fence, claimed, &mut out);
        out
    }

    /// Whether each node's claim holds: its node, or its error once it is undone. Also the
    /// undo of every node claimed, for the fence's settling.
    fn judge_claims(
        &self,
        parent: u64,
        la: &LogAppend,
        sending: Vec<Sending>,
        replies: Vec<ClaimReplies>,
        logged: &FsResult<Logged>,
        parent_gone: bool,
    ) -> (Vec<FsResult<NewNode>>, Vec<CreateUndo>) {
        let mut claimed = Vec::new();
        let mut out: Vec<FsResult<NewNode>> = Vec::with_capacity(sending.len());
        for (s, r) in sending.into_iter().zip(replies) {
            let mut undo = Undo {
                ino: s.new.ino,
                kind: s.new.rec.kind,
                parent,
                name: s.new.name.clone(),
                entry: false,
                logged: false,
                parent_gone,
                parent_keys: self.parent_keys(parent, la),
                record_cas: r
                    .record_read
                    .as_ref()
                    .ok()
                    .and_then(|i| i.as_ref().and_then(|i| i.cas)),
            };
            match self.claim_outcome(parent, &s, r, logged, &mut undo) {
                Ok((cas, data_token)) => {
                    out.push(Ok(NewNode {
                        ino: s.new.ino,
                        name: s.new.name,
                        rec: s.new.rec,
                        cas,
                        data_key: s.data_key,
                        data_token,
                    }));
                    claimed.push((undo, s.own_keys));
                }
                Err(e) => {
                    // A batch whose replies were lost may still have run: take back what may
                    // be there (the entry only if it is this create's).
                    if !undo.entry {
                        undo.entry = self
                            .read_entry(parent, &undo.name)
                            .map_or(true, |slot| slot.ino == Some(undo.ino));
                    }
                    if logged.is_err() && !parent_gone {
                        // The `+` may have landed: a `-` takes it back (and changes nothing if
                        // it never did).
                        undo.logged = true;
                    }
                    self.undo_create(undo, s.own_keys);
                    out.push(Err(e));
                }
            }
        }
        (out, claimed)
    }

    /// Pushes one node's commands onto `batch`.
    fn push_claim(
        &self,
        parent: u64,
        dir_path: &[u8],
        new: NewName,
        batch: &mut Batch,
    ) -> (Sending, Sent) {
        let ikey = self.tree.keys.inode(new.ino);
        let data_key = self
            .tree
            .keys
            .file_bytes(new.ino, new.rec.mode, &join(dir_path, &new.name));
        let own_keys = self.own_keys(new.ino, &new.rec, &data_key);
        let own_first = new.rec.kind == Kind::Dir;
        let record_added = batch.add(&ikey, &new.rec.encode());
        let record_read = batch.gets(&ikey);
        let mut own = Vec::with_capacity(own_keys.len());
        if own_first {
            own.extend(own_keys.iter().map(|c| batch.push::<Stored>(c.clone())));
        }
        let entry_added = batch.add(
            &self.tree.keys.entry(parent, &new.name),
            &self.tree.keys.entry_value(parent, &new.name, new.ino),
        );
        if !own_first {
            own.extend(own_keys.iter().map(|c| batch.push::<Stored>(c.clone())));
        }
        let served = new.rec.kind == Kind::File && !own_keys.is_empty();
        let data_read = served.then(|| batch.gets(&data_key));
        let sending = Sending {
            new,
            data_key,
            own_keys,
        };
        let sent = Sent {
            record_added,
            record_read,
            own,
            entry_added,
            data_read,
        };
        (sending, sent)
    }

    /// Whether one node's claim holds: its record's cas and data key token, or why not (with
    /// `undo` saying what it made).
    fn claim_outcome(
        &self,
        parent: u64,
        s: &Sending,
        r: ClaimReplies,
        logged: &FsResult<Logged>,
        undo: &mut Undo,
    ) -> FsResult<(u64, Option<u64>)> {
        // The log record first: once appended it must be taken back on any failure.
        let logged = logged.clone()?;
        undo.logged = matches!(logged, Logged::Done);
        let ikey = self.tree.keys.inode(s.new.ino);
        if !r.record_added? {
            return Err(FsError::corrupt(
                &ikey,
                "inode number already in use: the next-ino counter is behind \
                 (run `memfis check --repair`)",
            ));
        }
        undo.entry = match r.entry_added? {
            true => true,
            // Taken, or a removed name an older version left as `-` (a key holding another
            // long name's entry is a `NameCollision`, never claimed).
            false => {
                self.entry_swap(parent, &s.new.name, None, Some(s.new.ino))? == Some(s.new.ino)
            }
        };
        if matches!(logged, Logged::DirGone) {
            undo.parent_gone = true;
            return Err(FsError::NotFound);
        }
        if !undo.entry {
            return Err(FsError::Exists);
        }
        for o in r.own {
            o?;
        }
        let cas = r.record_read?.ok_or_else(|| FsError::missing(&ikey))?.cas;
        Ok((cas.unwrap_or(0), r.data_token))
    }

    /// What this mount remembers of names it just made.
    fn note_claimed(&self, parent: u64, out: &[FsResult<NewNode>]) {
        for node in out.iter().flatten() {
            self.meta
                .note_name(parent, &node.name, Some((node.ino, node.rec.kind)));
            if node.rec.kind == Kind::Dir {
                // Nobody could list it before its entry existed: its (empty) listing is known.
                self.meta
                    .put_listing(node.ino, HashMap::new(), Instant::now());
                self.meta.raise_seq_hint(node.ino, 0);
                // Its first two log chunks came with it (`own_keys`).
                self.meta.note_log_chunk(node.ino, 1);
            }
        }
    }

    /// Settles the fence of the names claimed, then moves the data keys of files whose
    /// directory moved meanwhile. A name that fails here has its result in `out` replaced.
    fn settle_claims(
        &self,
        parent: u64,
        la: &LogAppend,
        fence: crate::namespace::nodes::CreateFence,
        mut claimed: Vec<CreateUndo>,
        out: &mut [FsResult<NewNode>],
    ) {
        let relog: Vec<_> = claimed
            .iter()
            .map(|(u, _)| (Op::Add, u.kind, u.ino, u.name.as_slice()))
            .collect();
        let settled = self.settle_create_fence(fence, parent, la.chunk, la.late.get(), &relog);
        drop(relog);
        // If the directory turns out removed, each entry is its create's and the `+` went
        // with the directory's log.
        for (undo, _) in &mut claimed {
            undo.entry = true;
            undo.logged = false;
            undo.parent_gone = true;
        }
        match settled {
            Ok(Settled::Done) => {}
            Ok(Settled::DirRemoved) => {
                for (undo, own_keys) in claimed {
                    self.undo_create(undo, own_keys);
                }
                out.iter_mut()
                    .filter(|r| r.is_ok())
                    .for_each(|r| *r = Err(FsError::NotFound));
                return;
            }
            Err(e) => {
                // Unknown whether the directory lives: the heartbeat settles it.
                self.maintenance.leave_unsettled(Unsettled::Settle {
                    parent,
                    chunk: la.chunk,
                    nodes: claimed,
                });
                out.iter_mut()
                    .filter(|r| r.is_ok())
                    .for_each(|r| *r = Err(e.clone()));
                return;
            }
        }
        for r in out.iter_mut() {
            let Ok(node) = r else { continue };
            if node.rec.kind != Kind::File {
                continue;
            }
            if let Err(e) = retried(|| self.move_created_data_key(parent, node)) {
                // The name is made; the empty key at the old path waits for the heartbeat.
                self.maintenance.leave_stale_keys([node.data_key.clone()]);
                *r = Err(e);
            }
        }
    }

    /// The parent's keys a create's batch may make again (mtime, the two log chunks).
    fn parent_keys(&self, parent: u64, la: &LogAppend) -> [Vec<u8>; 3] {
        let [log, next] = self.log_chunk_keys(la);
        [self.tree.keys.dir_mtime(parent), log, next]
    }

    /// After a directory rename moved the parent during the create: the empty data key
    /// belongs at the new path, if the name is still this file's (under the namespace lock,
    /// so no other mount removes or moves it meanwhile).
    fn move_created_data_key(&self, parent: u64, node: &mut NewNode) -> FsResult<()> {
        let path = join(&self.dir_path(parent)?, &node.name);
        if self.tree.keys.file_bytes(node.ino, node.rec.mode, &path) == node.data_key {
            return Ok(());
        }
        node.data_key =
            self.place_created_key_locked(parent, node.ino, &node.name, &node.data_key)?;
        node.data_token = None;
        Ok(())
    }

    /// [`Self::place_created_key`] under the namespace lock, with the directory-rename count
    /// read as it is taken.
    pub(crate) fn place_created_key_locked(
        &self,
        parent: u64,
        ino: u64,
        name: &[u8],
        key: &[u8],
    ) -> FsResult<Vec<u8>> {
        let mut reads = Batch::new();
        let generation = reads.get(self.tree.keys.dir_generation());
        self.with_ns_lock(reads, |_, mut results| {
            self.note_generation(results.take(generation))?;
            self.place_created_key(ino, parent, name, key)
        })
    }

    /// The keys a new node brings: a served file's empty data key (nginx serves an empty
    /// file; a private key is made by the first publish), a directory's log keys.
    pub(crate) fn own_keys(&self, ino: u64, rec: &Inode, data_key: &[u8]) -> Vec<Command> {
        match rec.kind {
            Kind::File if data_key == self.tree.keys.private_data(ino) => Vec::new(),
            Kind::File => vec![Command::store(StoreOp::Add, data_key, b"")],
            Kind::Dir => vec![
                Command::store(StoreOp::Add, &self.tree.keys.dir_seq(ino), b"0"),
                Command::store(StoreOp::Add, &self.tree.keys.dir_log(ino, 0), b""),
                Command::store(StoreOp::Add, &self.tree.keys.dir_log(ino, 1), b""),
                Command::store(
                    StoreOp::Add,
                    &self.tree.keys.dir_mtime(ino),
                    rec.mtime.to_text().as_bytes(),
                ),
            ],
            Kind::Symlink | Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                Vec::new()
            }
        }
    }
}

/// One node's replies, taken from the batch's.
struct ClaimReplies {
    record_added: FsResult<bool>,
    record_read: FsResult<Option<memfis_memcache::Item>>,
    own: Vec<FsResult<bool>>,
    entry_added: FsResult<bool>,
    data_token: Option<u64>,
}

impl ClaimReplies {
    fn take(results: &mut Replies, sent: Sent) -> ClaimReplies {
        ClaimReplies {
            record_added: results.take(sent.record_added),
            record_read: results.take(sent.record_read),
            own: sent.own.into_iter().map(|h| results.take(h)).collect(),
            entry_added: results.take(sent.entry_added),
            data_token: sent
                .data_read
                .and_then(|h| results.take(h).ok().flatten().and_then(|i| i.cas)),
        }
    }
}
