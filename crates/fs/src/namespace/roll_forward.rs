//! Finishing an intent (see `intent.rs`) from wherever its operation stopped.
//!
//! [`Namespace::complete`] is idempotent: it checks each step against the store before doing it,
//! so it can run from any point, any number of times. Each intent's first change in the
//! store is its point of no return; `complete` undoes nothing and finds "not started" from
//! that first change being absent.

use memfis_memcache::Store;

use crate::layout::dirlog::Op;
use crate::layout::intent::Intent;
use crate::layout::record::{Kind, Link};
use crate::namespace::Namespace;
use crate::store::batch::StoreAt;
use crate::sync::lock;
use crate::{FsError, FsResult};
use tracing::warn;

impl<S: Store> Namespace<S> {
    /// [`Self::complete`], looked at twice when it meets damage (a key missing, a value that
    /// does not parse), 200 ms apart: a key another mount's failed write dropped for a moment
    /// is back by then; damage is not, and the caller releases the lock rather than keep it
    /// for good (`lock.rs`).
    pub(crate) fn complete_unless_damaged(&self, intent: &Intent) -> FsResult<()> {
        match self.complete(intent) {
            Err(e) if e.is_damage() => {
                std::thread::sleep(std::time::Duration::from_millis(200));
                self.complete(intent)
            }
            other => other,
        }
    }

    /// Finishes `intent` from wherever it stopped.
    pub(crate) fn complete(&self, intent: &Intent) -> FsResult<()> {
        match intent {
            Intent::Unlink {
                parent,
                name,
                ino,
                kind,
                data_keys,
            } => self.complete_unlink(*parent, name, *ino, *kind, data_keys),
            Intent::Rmdir {
                parent,
                name,
                ino,
                last_seq,
            } => self.complete_rmdir(*parent, name, *ino, *last_seq),
            Intent::Link {
                ino,
                kind,
                parent,
                name,
                path,
            } => self.complete_link(*ino, *kind, *parent, name, path),
            Intent::Rename(r) => self.complete_rename(r),
            Intent::Chmod { ino, public } => self.complete_chmod(*ino, *public),
        }
    }

    /// An unlink: entry, log record and the record's name go, with the data keys no other
    /// name keeps.
    fn complete_unlink(
        &self,
        parent: u64,
        name: &[u8],
        ino: u64,
        kind: Kind,
        data_keys: &[Vec<u8>],
    ) -> FsResult<()> {
        self.entry_swap(parent, name, Some(ino), None)?;
        self.log_dir_changes(parent, &[(Op::Remove, kind, ino, name)])?;
        let link = Link::new(parent, name);
        if kind == Kind::File {
            // A courtesy to this mount's open handles: a key missing for a moment (a
            // failed publish elsewhere) must not stop the removal half done.
            if let Err(e) = self.keep_bytes_for_open_handles(ino) {
                warn!(ino, error = %e, "unlink: cannot keep the file's bytes for this mount's open handles");
            }
            self.delete_data_if_unowned(parent, name, data_keys)?;
        }
        self.drop_link(ino, &link, 0)
    }

    /// An rmdir whose fence was set: the name and every key of the directory go.
    fn complete_rmdir(&self, parent: u64, name: &[u8], ino: u64, last_seq: u64) -> FsResult<()> {
        if self.dir_seq_value(ino)?.is_some() {
            return Ok(()); // the fence was never set: nothing happened
        }
        self.entry_swap(parent, name, Some(ino), None)?;
        self.log_dir_changes(parent, &[(Op::Remove, Kind::Dir, ino, name)])?;
        self.delete_inode_keys(ino, Kind::Dir, last_seq)?;
        self.meta.forget_dir(ino);
        Ok(())
    }

    /// A link whose entry was claimed: the record gains the name, the new name's data key
    /// the file's bytes, the log the name.
    fn complete_link(
        &self,
        ino: u64,
        kind: Kind,
        parent: u64,
        name: &[u8],
        path: &[u8],
    ) -> FsResult<()> {
        if self.read_entry(parent, name)?.ino != Some(ino) {
            return Ok(()); // the entry was never claimed: nothing happened
        }
        let link = Link::new(parent, name);
        let rec = self.update_record_if_present(ino, |r| {
            if !r.links.contains(&link) {
                r.links.push(link.clone());
                r.ctime = crate::layout::record::Time::now();
            }
            Ok(())
        })?;
        if let Some(rec) = rec
            && kind == Kind::File
            && rec.chunk_size.is_none()
        {
            let key = self.tree.keys.file_bytes(ino, rec.mode, path);
            match self.current_bytes_except(ino, &rec, &link, &key) {
                Ok(Some(bytes)) => self.tree.write_data_keys(&[key], bytes)?,
                Ok(None) => {} // the names share the key (a private key)
                // Damage, not a fault of this operation: the new name reads as the
                // others do (EIO naming the key) until `memfis check --repair`. An
                // intent that could never complete would hold the lock for good.
                Err(FsError::Missing { key: lost }) => warn!(
                    ino,
                    key = %lost,
                    "link: the file's bytes are missing from the store; the new name has none either (run `memfis check`)"
                ),
                Err(e) => return Err(e),
            }
        }
        self.log_dir_changes(parent, &[(Op::Add, kind, ino, name)])
    }

    /// Before a file's last data key goes: this mount's open handles keep reading its bytes.
    pub(crate) fn keep_bytes_for_open_handles(&self, ino: u64) -> FsResult<()> {
        if let Some(of) = self.open_file(ino) {
            let mut of = lock(&of);
            if !of.is_loaded() && !of.is_unlinked() {
                match self.ensure_loaded_holding_lock(ino, &mut of) {
                    Ok(()) | Err(FsError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Deletes the keys that held the bytes of the removed name `name` of `parent`: its
    /// served data key unless that name now belongs to another file, whose bytes it holds;
    /// a private key (its inode's alone) in any case.
    pub(crate) fn delete_data_if_unowned(
        &self,
        parent: u64,
        name: &[u8],
        keys: &[Vec<u8>],
    ) -> FsResult<()> {
        let private = self.tree.keys.private_data_prefix();
        let name_taken = self.read_entry(parent, name)?.ino.is_some();
        for key in keys {
            if name_taken && !key.starts_with(&private) {
                continue;
            }
            self.tree.store.delete_at(key)?;
        }
        Ok(())
    }
}
