//! rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE, under the namespace lock.
//!
//! Besides entries, logs and records, a rename moves data keys: a file's bytes to its new
//! path, and for a directory every file below it, so nginx serves the new paths and not the
//! old. Steps, in order (each idempotent, see [`RenameIntent`]): claim the destination entry
//! (the point of no return), update the records, move the data keys, point the source entry
//! at its new value, append the log records, bump the directory-rename count.

use std::collections::HashSet;

use memfis_memcache::{Command, Reply, Store, StoreOp};

use crate::layout::dirlog::Op;
use crate::layout::intent::{Intent, RenameIntent};
use crate::layout::keys::ROOT_INO;
use crate::layout::names::{check_name, join};
use crate::layout::record::{Inode, Kind, Link, Time};
use crate::namespace::Namespace;
use crate::namespace::lock::LockValue;
use crate::store::batch::{Batch, StoreAt};
use crate::store::replies::{EntrySlot, value_of};
use crate::tree::CAS_RETRIES;
use crate::{FsError, FsResult};
use tracing::warn;

/// Files whose bytes are copied per pipelined batch while moving a directory.
pub const MOVE_BATCH: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// A file a rename moves: its inode, and its path before and after.
struct MovedFile {
    ino: u64,
    old_path: Vec<u8>,
    new_path: Vec<u8>,
}

/// Where a moved file's bytes go (`KeyLayout::file_bytes` of its old and new path).
struct Move {
    old: Vec<u8>,
    new: Vec<u8>,
    /// The file is empty: a missing old key means an empty new one.
    empty: bool,
    /// The old key is the inode's private key, which another name may still use.
    keep_old: bool,
}

impl<S: Store> Namespace<S> {
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        check_name(name)?;
        check_name(newname)?;
        let skey = self.tree.keys.entry(parent, name);
        let dkey = self.tree.keys.entry(newparent, newname);
        let mut reads = Batch::new();
        let src = reads.gets(&skey);
        let dst = reads.gets(&dkey);
        let generation = reads.get(self.tree.keys.dir_generation());
        let parent_seqs = [parent, newparent].map(|dir| reads.get(self.tree.keys.dir_seq(dir)));
        self.with_ns_lock(reads, |guard, mut r| {
            let mut src = r.entry(src, name)?;
            let mut dst = r.entry(dst, newname)?;
            self.note_generation(r.take(generation))?;
            for (dir, seq) in [parent, newparent].into_iter().zip(parent_seqs) {
                self.require_live_dir(dir, r.take(seq)?)?;
            }
            for _ in 0..CAS_RETRIES {
                let Some(mut intent) =
                    self.plan_rename(parent, name, newparent, newname, flags, &src, &dst)?
                else {
                    return Ok(()); // two names of one inode: POSIX says do nothing
                };
                let value = self.tree.keys.entry_value(newparent, newname, intent.ino);
                let claim = match dst.cas {
                    None => Command::store(StoreOp::Add, &dkey, &value),
                    Some(cas) => Command::cas(&dkey, &value, cas),
                };
                // Replacing a directory: fence its log in the same batch, so no create lands
                // in it from now on (see `complete_rename` for a fence that fails).
                let fence = match intent.replaced {
                    Some((d, Kind::Dir)) if !intent.exchange => {
                        let (cmd, last_seq) = self.empty_dir_fence(d)?;
                        intent.replaced_last_seq = last_seq;
                        Some((d, cmd, last_seq))
                    }
                    _ => None,
                };
                let intent = Intent::Rename(Box::new(intent));
                let mut first = vec![claim];
                first.extend(fence.iter().map(|(_, cmd, _)| cmd.clone()));
                let begun = self.begin(guard, &intent, first)?;
                if begun[0] {
                    self.complete(&intent)?;
                    if begun.get(1) == Some(&false) {
                        return Err(FsError::NotEmpty); // `complete` undid the claim
                    }
                    return Ok(());
                }
                guard.intent = None;
                if let (Some((d, _, last_seq)), Some(true)) = (&fence, begun.get(1)) {
                    self.unfence(*d, *last_seq)?;
                }
                // A create took the destination name meanwhile: plan again over it.
                src = self.read_entry(parent, name)?;
                dst = self.read_entry(newparent, newname)?;
            }
            Err(FsError::Contended)
        })
    }

    /// Checks a rename as POSIX asks and works out what it will change; `None` when there is
    /// nothing to do. Changes nothing in the store.
    #[allow(clippy::too_many_arguments)]
    fn plan_rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
        src_slot: &EntrySlot,
        dst_slot: &EntrySlot,
    ) -> FsResult<Option<RenameIntent>> {
        let src = src_slot.ino.ok_or(FsError::NotFound)?;
        let (src_rec, _) = self.read_inode(src)?;
        if flags.noreplace && dst_slot.ino.is_some() {
            return Err(FsError::Exists);
        }
        if flags.exchange && dst_slot.ino.is_none() {
            return Err(FsError::NotFound);
        }
        if dst_slot.taken_by.is_some() {
            // Another long name holds the destination's hashed key: it stays as it is.
            return Err(self.name_collision(newparent, newname));
        }
        if dst_slot.ino == Some(src) {
            return Ok(None);
        }
        let dst = match dst_slot.ino {
            Some(d) => Some((d, self.read_inode(d)?.0)),
            None => None,
        };
        if src_rec.kind == Kind::Dir {
            self.check_not_below(src, newparent)?;
        }
        if let (Some((d, drec)), true) = (&dst, flags.exchange)
            && drec.kind == Kind::Dir
        {
            self.check_not_below(*d, parent)?;
        }
        if let (Some((d, drec)), false) = (&dst, flags.exchange) {
            match (src_rec.kind == Kind::Dir, drec.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.list_dir(*d)?.is_empty() => return Err(FsError::NotEmpty),
                // (checked again, with a fence against creates, when the rename begins)
                _ => {}
            }
        }
        let old_path = join(&self.dir_path(parent)?, name);
        let new_path = join(&self.dir_path(newparent)?, newname);
        // Everything that could refuse the rename is checked before its first change. (A
        // path too long for a served key is no refusal: those bytes go to a private key.)
        let mut grown = src_rec.clone();
        grown.replace_link(&Link::new(parent, name), Link::new(newparent, newname));
        self.check_record_size(&self.tree.keys.inode(src), grown.encode().len())?;
        Ok(Some(RenameIntent {
            src_parent: parent,
            src_name: name.to_vec(),
            dst_parent: newparent,
            dst_name: newname.to_vec(),
            ino: src,
            kind: src_rec.kind,
            replaced: dst.as_ref().map(|(d, r)| (*d, r.kind)),
            exchange: flags.exchange,
            old_path,
            new_path,
            data_done: false,
            replaced_last_seq: 0,
        }))
    }

    /// Finishes a rename from wherever it stopped (see the module comment for the steps).
    pub(crate) fn complete_rename(&self, r: &RenameIntent) -> FsResult<()> {
        if self.read_entry(r.dst_parent, &r.dst_name)?.ino != Some(r.ino) {
            return Ok(()); // the destination was never claimed: nothing happened
        }
        if let Some((d, Kind::Dir)) = r.replaced
            && !r.exchange
            && self.dir_seq_value(d)?.is_some()
        {
            // The replaced directory was not fenced (something was created in it after it
            // was found empty): the rename does not happen; give the name back.
            self.entry_swap(r.dst_parent, &r.dst_name, Some(r.ino), Some(d))?;
            return Ok(());
        }
        let src_link = Link::new(r.src_parent, &r.src_name);
        let dst_link = Link::new(r.dst_parent, &r.dst_name);
        // Once the source entry changed, the data step was done (and the old name may
        // already belong to a new file).
        let src_done = self.read_entry(r.src_parent, &r.src_name)?.ino != Some(r.ino);
        let dir_moved = r.kind == Kind::Dir
            || r.replaced
                .is_some_and(|(_, kind)| kind == Kind::Dir && r.exchange);
        if dir_moved && !src_done {
            // Before any byte moves, as well as at the end: a reader that finds a key moved
            // (a publish's token read, a load) reads the count after it and sees the change
            // even where its reads of the lock and the count are unordered (a pool).
            self.bump_dir_generation()?;
        }
        if let Some((b, Kind::File)) = r.replaced
            && !r.exchange
            && let Err(e) = self.keep_bytes_for_open_handles(b)
        {
            // A courtesy to this mount's open handles of the replaced file (as an unlink's).
            warn!(ino = b, error = %e, "rename: cannot keep the replaced file's bytes for this mount's open handles");
        }
        self.rename_records(r, &src_link, &dst_link)?;
        if !src_done {
            self.drop_replaced_bytes(r)?;
            self.move_data(r)?;
        }
        let src_now = match r.replaced {
            Some((b, _)) if r.exchange => Some(b),
            _ => None,
        };
        self.entry_swap(r.src_parent, &r.src_name, Some(r.ino), src_now)?;
        self.log_rename(r)?;
        if dir_moved {
            self.bump_dir_generation()?;
            self.meta.forget_dir(r.ino);
        }
        Ok(())
    }

    /// The records take the new names: the moved inode's, and a replaced inode's (its
    /// name swapped by an exchange, dropped otherwise).
    fn rename_records(&self, r: &RenameIntent, src_link: &Link, dst_link: &Link) -> FsResult<()> {
        let now = Time::now();
        self.update_record_if_present(r.ino, |rec| {
            if rec.links.contains(src_link) {
                rec.replace_link(src_link, dst_link.clone());
                rec.ctime = now;
            }
            Ok(())
        })?;
        match r.replaced {
            Some((b, _)) if r.exchange => {
                self.update_record_if_present(b, |rec| {
                    if rec.links.contains(dst_link) {
                        rec.replace_link(dst_link, src_link.clone());
                        rec.ctime = now;
                    }
                    Ok(())
                })?;
            }
            Some((b, _)) => self.drop_link(b, dst_link, r.replaced_last_seq)?,
            None => {}
        }
        Ok(())
    }

    /// The directories' logs: every (name, inode) pair that ends is removed, every one
    /// that starts is added.
    fn log_rename(&self, r: &RenameIntent) -> FsResult<()> {
        let (src_name, dst_name) = (r.src_name.as_slice(), r.dst_name.as_slice());
        let mut at_src = vec![(Op::Remove, r.kind, r.ino, src_name)];
        let mut at_dst = Vec::new();
        if let Some((b, bkind)) = r.replaced {
            at_dst.push((Op::Remove, bkind, b, dst_name));
            if r.exchange {
                at_src.push((Op::Add, bkind, b, src_name));
            }
        }
        at_dst.push((Op::Add, r.kind, r.ino, dst_name));
        if r.src_parent == r.dst_parent {
            at_src.extend(at_dst);
            self.log_dir_changes(r.src_parent, &at_src)?;
        } else {
            self.log_dir_changes(r.src_parent, &at_src)?;
            self.log_dir_changes(r.dst_parent, &at_dst)?;
        }
        Ok(())
    }

    /// A file the rename replaces keeps no bytes at the destination's data key when the
    /// source will not overwrite them there (a file not served there, or not a file).
    fn drop_replaced_bytes(&self, r: &RenameIntent) -> FsResult<()> {
        let served = self.tree.keys.data(&r.new_path);
        if r.exchange
            || !matches!(r.replaced, Some((_, Kind::File)))
            || served.len() > memfis_memcache::MAX_KEY_LEN
        {
            return Ok(());
        }
        let overwritten = match (r.kind, self.read_inode_opt(r.ino)?) {
            // (A file in chunks has no served key: nothing overwrites the destination's.)
            (Kind::File, Some((rec, _))) => {
                rec.chunk_size.is_none()
                    && self.tree.keys.file_bytes(r.ino, rec.mode, &r.new_path) == served
            }
            _ => false,
        };
        if !overwritten {
            self.tree.store.delete_at(&served)?;
        }
        Ok(())
    }

    /// Lifts the fence of directory `dir` (a rename that fenced it did not begin).
    fn unfence(&self, dir: u64, last_seq: u64) -> FsResult<()> {
        let key = self.tree.keys.dir_seq(dir);
        self.tree
            .store
            .store_at(StoreOp::Set, &key, last_seq.to_string().as_bytes())?;
        Ok(())
    }

    /// Moves the bytes of every file the rename moves to their new keys.
    fn move_data(&self, r: &RenameIntent) -> FsResult<()> {
        if !r.exchange {
            let files = self.data_moves(r.ino, r.kind, &r.old_path, &r.new_path)?;
            for chunk in files.chunks(MOVE_BATCH) {
                self.copy_values(&self.bytes_moves(chunk)?, true)?;
            }
            return Ok(());
        }
        if r.data_done {
            return Ok(());
        }
        // An exchange reads every value before writing any: the two sets of keys overlap.
        let (b, bkind) = r.replaced.expect("an exchange has a destination");
        let mut files = self.data_moves(r.ino, r.kind, &r.old_path, &r.new_path)?;
        files.extend(self.data_moves(b, bkind, &r.new_path, &r.old_path)?);
        let moves = self.bytes_moves(&files)?;
        self.copy_values(&moves, false)?;
        let new_keys: HashSet<&Vec<u8>> = moves.iter().map(|m| &m.new).collect();
        let stale: Vec<Command> = moves
            .iter()
            .filter(|m| !new_keys.contains(&m.old) && !m.keep_old)
            .map(|m| Command::Delete(m.old.clone()))
            .collect();
        self.tree.store.execute_all(stale)?;
        self.mark_exchange_data_done()
    }

    /// Counts a directory rename (`PREFIX%dirgen`): mounts drop their cached paths.
    fn bump_dir_generation(&self) -> FsResult<()> {
        let key = self.tree.keys.dir_generation();
        if self.tree.store.incr_at(&key, 1)?.is_none() {
            self.tree.store.store_at(StoreOp::Add, &key, b"1")?;
        }
        Ok(())
    }

    /// Records in the lock that an exchange's bytes were swapped (a second swap would undo it).
    fn mark_exchange_data_done(&self) -> FsResult<()> {
        let key = self.tree.keys.ns_lock();
        for _ in 0..CAS_RETRIES {
            let Some(item) = self.tree.store.gets_at(&key)? else {
                return Ok(());
            };
            let mut held: LockValue = serde_json::from_slice(&item.value)
                .map_err(|e| FsError::corrupt(&key, e.to_string()))?;
            if let Some(Intent::Rename(r)) = &mut held.intent {
                r.data_done = true;
            }
            let value = serde_json::to_vec(&held).expect("serializes");
            match self
                .tree
                .store
                .run(Command::cas(&key, &value, item.cas.unwrap_or(0)))
            {
                Ok(Reply::Stored) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(FsError::store(&key, e)),
            }
        }
        Err(FsError::Contended)
    }

    /// EINVAL if `dir` is `target` or one of its ancestors (a directory cannot move below itself).
    fn check_not_below(&self, dir: u64, target: u64) -> FsResult<()> {
        let mut cur = target;
        for _ in 0..4096 {
            if cur == dir {
                return Err(FsError::Invalid("cannot move a directory below itself"));
            }
            if cur == ROOT_INO {
                return Ok(());
            }
            // `target` comes from the kernel and may be gone (ENOENT); an ancestor of a
            // directory that exists cannot be, so a missing one is damage (EIO).
            let (rec, _) = match cur == target {
                true => self.read_live_inode(cur)?,
                false => self.read_inode(cur)?,
            };
            cur = rec.links.first().map(|l| l.parent).ok_or_else(|| {
                FsError::corrupt(&self.tree.keys.inode(cur), "directory without a parent")
            })?;
        }
        Err(FsError::corrupt(
            &self.tree.keys.inode(target),
            "directory nesting too deep: a cycle of directories",
        ))
    }

    /// Every file at or below `old_path` once it is `new_path`.
    fn data_moves(
        &self,
        ino: u64,
        kind: Kind,
        old_path: &[u8],
        new_path: &[u8],
    ) -> FsResult<Vec<MovedFile>> {
        let mut out = Vec::new();
        match kind {
            Kind::File => out.push(MovedFile {
                ino,
                old_path: old_path.to_vec(),
                new_path: new_path.to_vec(),
            }),
            Kind::Dir => self.walk_files(ino, old_path, new_path, &mut out)?,
            // No bytes in the store.
            Kind::Symlink | Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {}
        }
        Ok(out)
    }

    /// The files below directory `top`, walked with a stack of its own rather than by
    /// recursion, each directory once: a cycle of directories (damage that a race once made)
    /// used to recurse until the thread's stack overflowed and the mount died.
    fn walk_files(
        &self,
        top: u64,
        old: &[u8],
        new: &[u8],
        out: &mut Vec<MovedFile>,
    ) -> FsResult<()> {
        let mut seen = HashSet::from([top]);
        let mut todo = vec![(top, old.to_vec(), new.to_vec())];
        while let Some((dir, old, new)) = todo.pop() {
            let listing = match self.list_dir(dir) {
                // Listed but gone (record and log): a mkdir of another mount undoing itself,
                // whose undo waits for this lock. No files to move there; an error would
                // fail the intent at every try and keep the lock for good.
                Err(FsError::NotFound) if dir != top => continue,
                other => other?,
            };
            for (name, (ino, kind)) in listing {
                let (o, n) = (join(&old, &name), join(&new, &name));
                match kind {
                    Kind::File => out.push(MovedFile {
                        ino,
                        old_path: o,
                        new_path: n,
                    }),
                    Kind::Dir if seen.insert(ino) => todo.push((ino, o, n)),
                    Kind::Dir => {} // reached again: a cycle, or a stale second name
                    Kind::Symlink | Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {}
                }
            }
        }
        Ok(())
    }

    /// Where the bytes of `files` go (one batch of record reads): the files whose key
    /// changes. The mode decides whether a path is served, so the records are read; a
    /// chmod cannot change them meanwhile (it takes the namespace lock too).
    fn bytes_moves(&self, files: &[MovedFile]) -> FsResult<Vec<Move>> {
        let gets = files
            .iter()
            .map(|f| Command::Get(self.tree.keys.inode(f.ino)))
            .collect();
        let mut moves = Vec::new();
        for (f, r) in files.iter().zip(self.tree.store.execute(gets)) {
            let key = self.tree.keys.inode(f.ino);
            // A file without a record: `memfis check` reports it; its bytes stay where they are.
            let Some(item) = value_of(&key, r)? else {
                continue;
            };
            let rec = Inode::decode(&key, &item.value)?;
            if rec.chunk_size.is_some() {
                continue; // chunks are keyed by inode: nothing moves
            }
            let old = self.tree.keys.file_bytes(f.ino, rec.mode, &f.old_path);
            let new = self.tree.keys.file_bytes(f.ino, rec.mode, &f.new_path);
            if old != new {
                moves.push(Move {
                    keep_old: old == self.tree.keys.private_data(f.ino) && rec.links.len() > 1,
                    empty: rec.size == 0,
                    old,
                    new,
                });
            }
        }
        Ok(moves)
    }

    /// Reads the old keys of `moves` in one batch, then writes the new keys (and, with
    /// `delete_old`, deletes the old ones) in one batch. An old key already gone was moved
    /// by an earlier run (or, for an empty file, never made: its new key is made empty).
    fn copy_values(&self, moves: &[Move], delete_old: bool) -> FsResult<()> {
        let gets = moves.iter().map(|m| Command::Get(m.old.clone())).collect();
        let mut sets = Vec::new();
        let mut deletes = Vec::new();
        for (m, r) in moves.iter().zip(self.tree.store.execute(gets)) {
            match value_of(&m.old, r)? {
                Some(item) => {
                    sets.push(Command::store(StoreOp::Set, &m.new, &item.value));
                    if delete_old && !m.keep_old {
                        deletes.push(Command::Delete(m.old.clone()));
                    }
                }
                None if m.empty => sets.push(Command::store(StoreOp::Add, &m.new, b"")),
                None => {}
            }
        }
        // Sets before deletes: nginx finds every file at one of its paths throughout.
        let batch: Vec<Command> = sets.into_iter().chain(deletes).collect();
        self.tree.store.execute_all(batch)
    }
}
