//! rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE. Besides entries, logs and records,
//! a rename moves data keys: a file's bytes to its new path, and for a directory every file
//! below it, so nginx serves the new paths and not the old.

use std::collections::HashSet;

use memfis_memcache::{Command, Store, StoreOp};

use crate::dirlog::Op;
use crate::fs::{MemFs, check_name, join, value_of};
use crate::keys::ROOT_INO;
use crate::record::{Inode, Kind, Link, Time};
use crate::{FsError, FsResult};

/// Files whose bytes are copied per pipelined batch while moving a directory.
const MOVE_BATCH: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

impl<S: Store> MemFs<S> {
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
        let src_slot = self.read_entry(parent, name)?;
        let src = src_slot.ino.ok_or(FsError::NotFound)?;
        let dst_slot = self.read_entry(newparent, newname)?;
        // Log records owed by creates in this mount go first, so they precede this rename's.
        self.settle_created(|i, _| i == src || Some(i) == dst_slot.ino)?;
        let (src_rec, _) = self.read_inode(src)?;
        if flags.noreplace && dst_slot.ino.is_some() {
            return Err(FsError::Exists);
        }
        if flags.exchange && dst_slot.ino.is_none() {
            return Err(FsError::NotFound);
        }
        if dst_slot.ino == Some(src) {
            return Ok(()); // two names of one inode: POSIX says do nothing
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
                _ => {}
            }
        }
        // 1. Bytes: copy to the new keys first, so nginx never misses a file mid-rename.
        let old_path = join(&self.dir_path(parent)?, name);
        let new_path = join(&self.dir_path(newparent)?, newname);
        let mut moves = self.data_moves(src, &src_rec, &old_path, &new_path)?;
        if let (Some((d, drec)), true) = (&dst, flags.exchange) {
            moves.extend(self.data_moves(*d, drec, &new_path, &old_path)?);
        }
        for (_, new_key) in &moves {
            if new_key.len() > memfis_memcache::MAX_KEY_LEN {
                return Err(FsError::NameTooLong {
                    key: String::from_utf8_lossy(new_key).into_owned(),
                    len: new_key.len(),
                });
            }
        }
        // An exchange reads every value before writing any: the two sets of keys overlap.
        let batch = if flags.exchange {
            moves.len().max(1)
        } else {
            MOVE_BATCH
        };
        for chunk in moves.chunks(batch) {
            self.copy_values(chunk)?;
        }

        // 2. Entries.
        let new_entry = self.keys.entry(newparent, newname);
        match (dst_slot.ino, dst_slot.cas) {
            (Some(_), Some(cas)) => {
                if !self.set_entry_cas(&new_entry, src.to_string().as_bytes(), cas)? {
                    return Err(FsError::Busy);
                }
            }
            _ => {
                if !self.claim_entry(newparent, newname, src)? {
                    return Err(FsError::Busy);
                }
            }
        }
        let src_link = Link {
            parent,
            name: name.to_vec(),
        };
        let dst_link = Link {
            parent: newparent,
            name: newname.to_vec(),
        };
        match (&dst, flags.exchange) {
            (Some((d, _)), true) => {
                let old_entry = self.keys.entry(parent, name);
                let cas = src_slot.cas.unwrap_or(0);
                if !self.set_entry_cas(&old_entry, d.to_string().as_bytes(), cas)? {
                    return Err(FsError::Busy);
                }
            }
            _ => self.release_entry(parent, name, src, src_slot.cas)?,
        }

        // 3. Logs.
        let src_add = (Op::Add, src_rec.kind, src, newname);
        let old_dir_change = match (&dst, flags.exchange) {
            (Some((d, drec)), true) => (Op::Add, drec.kind, *d, name),
            _ => (Op::Remove, src_rec.kind, src, name),
        };
        if parent == newparent {
            self.log_dir_changes(parent, &[old_dir_change, src_add])?;
        } else {
            self.log_dir_changes(parent, &[old_dir_change])?;
            self.log_dir_changes(newparent, &[src_add])?;
        }

        // 4. Records.
        self.update_inode(src, |r| {
            r.replace_link(&src_link, dst_link.clone());
            r.ctime = Time::now();
            Ok(())
        })?;
        match (&dst, flags.exchange) {
            (Some((d, _)), true) => {
                self.update_inode(*d, |r| {
                    r.replace_link(&dst_link, src_link.clone());
                    r.ctime = Time::now();
                    Ok(())
                })?;
            }
            (Some((d, _)), false) => self.drop_link(*d, &dst_link)?,
            (None, _) => {}
        }

        // 5. Old keys that no name points at any more.
        let new_keys: HashSet<&Vec<u8>> = moves.iter().map(|m| &m.1).collect();
        let stale: Vec<Command> = moves
            .iter()
            .filter(|m| !new_keys.contains(&m.0))
            .map(|m| Command::Delete(m.0.clone()))
            .collect();
        for chunk in stale.chunks(MOVE_BATCH) {
            for r in self.store.execute(chunk.to_vec()) {
                r.map_err(|e| FsError::store(b"(rename cleanup)", e))?;
            }
        }
        if src_rec.kind == Kind::Dir || dst.as_ref().is_some_and(|(_, r)| r.kind == Kind::Dir) {
            self.forget_dir_paths();
        }
        Ok(())
    }

    /// EINVAL if `dir` is `target` or one of its ancestors (a directory cannot move below itself).
    fn check_not_below(&self, dir: u64, target: u64) -> FsResult<()> {
        let mut cur = target;
        loop {
            if cur == dir {
                return Err(FsError::Invalid("cannot move a directory below itself"));
            }
            if cur == ROOT_INO {
                return Ok(());
            }
            let (rec, _) = self.read_inode(cur)?;
            cur = rec.links.first().map(|l| l.parent).ok_or_else(|| {
                FsError::corrupt(&self.keys.inode(cur), "directory without a parent")
            })?;
        }
    }

    /// (old data key, new data key) of every file at or below `old_path` once it is `new_path`.
    fn data_moves(
        &self,
        ino: u64,
        rec: &Inode,
        old_path: &[u8],
        new_path: &[u8],
    ) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        match rec.kind {
            Kind::File => out.push((self.keys.data(old_path), self.keys.data(new_path))),
            Kind::Symlink => {}
            Kind::Dir => self.walk_files(ino, old_path, new_path, &mut out)?,
        }
        Ok(out)
    }

    fn walk_files(
        &self,
        dir: u64,
        old: &[u8],
        new: &[u8],
        out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> FsResult<()> {
        for (name, (ino, kind)) in self.list_dir(dir)? {
            let (o, n) = (join(old, &name), join(new, &name));
            match kind {
                Kind::File => out.push((self.keys.data(&o), self.keys.data(&n))),
                Kind::Dir => self.walk_files(ino, &o, &n, out)?,
                Kind::Symlink => {}
            }
        }
        Ok(())
    }

    /// Reads the old keys of `moves` in one batch, then writes the new keys in one batch.
    fn copy_values(&self, moves: &[(Vec<u8>, Vec<u8>)]) -> FsResult<()> {
        let gets = moves.iter().map(|m| Command::Get(m.0.clone())).collect();
        let mut sets = Vec::new();
        let mut targets = Vec::new();
        for ((old, new), r) in moves.iter().zip(self.store.execute(gets)) {
            if let Some(item) = value_of(old, r)? {
                sets.push(Command::store(StoreOp::Set, new, &item.value));
                targets.push(new.clone());
            }
        }
        for (key, r) in targets.iter().zip(self.store.execute(sets)) {
            r.map_err(|e| FsError::store(key, e))?;
        }
        Ok(())
    }
}
