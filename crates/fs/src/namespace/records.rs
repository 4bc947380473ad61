//! Inode records and directory entries as every operation reads and changes them: records by
//! `gets`/`cas`, entries by `add`/`cas`, directory paths and the keys a file's bytes live at,
//! the directory-rename count, and `lookup`.

use memfis_memcache::{CmdResult, Command, Item, Store, StoreOp};
use tracing::warn;

use crate::layout::attr::Attr;
use crate::layout::keys::ROOT_INO;
use crate::layout::names::{check_name, join};
use crate::layout::record::{Inode, Kind, Link};
use crate::namespace::Namespace;
use crate::namespace::meta_cache::DirInfo;
use crate::store::batch::{Cas, StoreAt};
use crate::store::replies::{CasOutcome, EntrySlot, entry_slot, parse_number, value_of};
use crate::sync::lock;
use crate::tree::{CAS_RETRIES, ITEM_OVERHEAD, MAX_DEPTH};
use crate::{FsError, FsResult};

impl<S: Store> Namespace<S> {
    // ----- records -------------------------------------------------------------------------

    /// Reads an inode record with its cas token. A missing record is EIO naming the key.
    pub(crate) fn read_inode(&self, ino: u64) -> FsResult<(Inode, u64)> {
        self.read_inode_opt(ino)?
            .ok_or_else(|| FsError::missing(&self.tree.keys.inode(ino)))
    }

    /// Reads an inode record with its cas token; `None` when there is none.
    pub(crate) fn read_inode_opt(&self, ino: u64) -> FsResult<Option<(Inode, u64)>> {
        let key = self.tree.keys.inode(ino);
        let Some(item) = self.tree.store.gets_at(&key)? else {
            return Ok(None);
        };
        Ok(Some((
            Inode::decode(&key, &item.value)?,
            item.cas.unwrap_or(0),
        )))
    }

    /// The record of an inode the kernel names by number. Gone means another mount removed
    /// it: ENOENT, as for a stale handle on a local filesystem.
    pub(crate) fn read_live_inode(&self, ino: u64) -> FsResult<(Inode, u64)> {
        self.read_inode_opt(ino)?.ok_or(FsError::NotFound)
    }

    /// Changes an inode record with gets + cas, retrying when another writer won the race.
    /// Keeps any open file of this mount in step with the new record.
    pub(crate) fn update_inode(
        &self,
        ino: u64,
        change: impl FnMut(&mut Inode) -> FsResult<()>,
    ) -> FsResult<Inode> {
        let rec = match self.update_record(ino, change) {
            Ok(rec) => rec,
            // The kernel names inodes it looked up earlier: one another mount removed
            // meanwhile is ENOENT, as for a stale handle on a local filesystem.
            Err(FsError::Missing { key }) if key.as_bytes() == self.tree.keys.inode(ino) => {
                return Err(FsError::NotFound);
            }
            Err(e) => return Err(e),
        };
        self.adopt(ino, &rec);
        Ok(rec)
    }

    /// As [`Self::update_inode`], but a missing record is `None` (a step of an intent that
    /// may have run already).
    pub(crate) fn update_record_if_present(
        &self,
        ino: u64,
        change: impl FnMut(&mut Inode) -> FsResult<()>,
    ) -> FsResult<Option<Inode>> {
        match self.update_record(ino, change) {
            Ok(rec) => {
                self.adopt(ino, &rec);
                Ok(Some(rec))
            }
            Err(FsError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn adopt(&self, ino: u64, rec: &Inode) {
        if let Some(of) = self.open_file(ino) {
            lock(&of).adopt_record(rec.clone());
        }
        self.meta.forget_record(ino);
    }

    /// The gets + cas loop of [`Self::update_inode`], touching no open-file state (for
    /// callers that hold an open file's lock). Refuses a record that would not fit an item.
    pub(crate) fn update_record(
        &self,
        ino: u64,
        mut change: impl FnMut(&mut Inode) -> FsResult<()>,
    ) -> FsResult<Inode> {
        let key = self.tree.keys.inode(ino);
        for _ in 0..CAS_RETRIES {
            let (mut rec, cas) = self.read_inode(ino)?;
            change(&mut rec)?;
            let value = rec.encode();
            self.check_record_size(&key, value.len())?;
            match self
                .tree
                .store
                .run_at::<Cas>(&key, Command::cas(&key, &value, cas))?
            {
                CasOutcome::Stored => return Ok(rec),
                CasOutcome::Changed => continue,
                CasOutcome::Gone => return Err(FsError::missing(&key)),
            }
        }
        Err(FsError::Contended)
    }

    /// EFBIG before a record grows past the store's item size (checked before an operation
    /// changes anything, so it fails whole).
    pub(crate) fn check_record_size(&self, key: &[u8], len: usize) -> FsResult<()> {
        if let Some(max) = self.tree.cfg.item_size_max
            && len as u64 + ITEM_OVERHEAD > max
        {
            return Err(FsError::TooBig {
                key: String::from_utf8_lossy(key).into_owned(),
                limit: format!("item_size_max {max} bytes"),
            });
        }
        Ok(())
    }

    // ----- entries -------------------------------------------------------------------------

    /// Reads a directory entry. A hashed key holding another name's entry reads as no entry
    /// (`EntrySlot::taken_by`).
    pub(crate) fn read_entry(&self, dir: u64, name: &[u8]) -> FsResult<EntrySlot> {
        let key = self.tree.keys.entry(dir, name);
        entry_slot(&key, name, self.tree.store.run(Command::Gets(key.clone())))
    }

    /// The error for a name whose hashed entry key holds another name (ENAMETOOLONG): the
    /// name cannot be made there, and the other name's entry stays as it is.
    pub(crate) fn name_collision(&self, dir: u64, name: &[u8]) -> FsError {
        let key = self.tree.keys.entry(dir, name);
        warn!(
            path = %self.path_of(dir, name),
            key = %String::from_utf8_lossy(&key),
            "a long name's hashed entry key holds another name: refused"
        );
        FsError::NameCollision {
            key: String::from_utf8_lossy(&key).into_owned(),
        }
    }

    /// Moves entry `name` of `dir` from `from` to `to` (`None`: no entry) if it is at `from`.
    /// Returns the entry's value afterwards: `to` once done (now or before), else what
    /// another operation left there. A key that holds another name's entry is never
    /// changed: making the name there is a [`FsError::NameCollision`].
    pub(crate) fn entry_swap(
        &self,
        dir: u64,
        name: &[u8],
        from: Option<u64>,
        to: Option<u64>,
    ) -> FsResult<Option<u64>> {
        let key = self.tree.keys.entry(dir, name);
        for _ in 0..CAS_RETRIES {
            let slot = self.read_entry(dir, name)?;
            if slot.ino == to || slot.ino != from {
                return Ok(slot.ino);
            }
            if slot.taken_by.is_some() {
                return Err(self.name_collision(dir, name));
            }
            let done = match (to, slot.cas) {
                (None, _) => {
                    self.tree.store.delete_at(&key)?;
                    true
                }
                (Some(ino), None) => self.tree.store.store_at(
                    StoreOp::Add,
                    &key,
                    &self.tree.keys.entry_value(dir, name, ino),
                )?,
                (Some(ino), Some(cas)) => {
                    let value = self.tree.keys.entry_value(dir, name, ino);
                    let cas = Command::cas(&key, &value, cas);
                    self.tree.store.run_at::<Cas>(&key, cas)? == CasOutcome::Stored
                }
            };
            if done {
                return Ok(to);
            }
        }
        Err(FsError::Contended)
    }

    // ----- paths ---------------------------------------------------------------------------

    /// Notes the store's directory-rename count read in some batch: a change since the last
    /// one makes every cached path stale.
    pub(crate) fn observe_generation(&self, r: CmdResult) -> FsResult<()> {
        self.note_generation(value_of(&self.tree.keys.dir_generation(), r))
    }

    /// As [`Self::observe_generation`], from a read of the count taken by its handle.
    pub(crate) fn note_generation(&self, got: FsResult<Option<Item>>) -> FsResult<()> {
        let key = self.tree.keys.dir_generation();
        let Some(item) = got? else {
            return Err(FsError::missing(&key));
        };
        let gen_now =
            parse_number(&item.value).ok_or_else(|| FsError::corrupt(&key, "not a number"))?;
        self.meta.observe_generation(gen_now);
        Ok(())
    }

    /// The absolute path of directory `dir` inside the mount ("" for the root).
    pub(crate) fn dir_path(&self, dir: u64) -> FsResult<Vec<u8>> {
        if dir == ROOT_INO {
            return Ok(Vec::new());
        }
        Ok(self.dir_info(dir)?.path)
    }

    /// Path, mode and group of directory `dir`, cached for the cache TTL and while no
    /// directory was renamed.
    pub(crate) fn dir_info(&self, dir: u64) -> FsResult<DirInfo> {
        self.dir_info_at(dir)
    }

    /// Walks up from `dir` to the root or a directory whose path is cached, then works the
    /// paths out downwards, caching each. A loop of its own, not recursion: over a cycle of
    /// directories (damage) the walk stops at `MAX_DEPTH` with an error naming the key,
    /// where recursion could run out of stack first.
    fn dir_info_at(&self, dir: u64) -> FsResult<DirInfo> {
        let generation = self.meta.generation();
        // Directories whose paths are not known yet, from `dir` up: (ino, record, name).
        let mut unknown: Vec<(u64, Inode, Vec<u8>)> = Vec::new();
        let mut at = dir;
        let mut path = loop {
            if let Some(info) = self.meta.dir_info(at) {
                if unknown.is_empty() {
                    return Ok(info);
                }
                break info.path;
            }
            if unknown.len() > MAX_DEPTH {
                return Err(FsError::corrupt(
                    &self.tree.keys.inode(dir),
                    "directory nesting too deep: a cycle of directories",
                ));
            }
            let (rec, _) = self.read_live_inode(at)?;
            if rec.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let (parent, name) = match rec.links.first() {
                Some(link) => (Some(link.parent), link.name.clone()),
                None if at == ROOT_INO => (None, Vec::new()),
                // A directory's record loses its name before it is deleted, in separate
                // batches (rmdir, a rename over it): one without a name is being removed. A
                // create in it that got here without the lock (mkdir in a directory a rename
                // replaces) is ENOENT, as on a local filesystem, not EIO.
                None => return Err(FsError::NotFound),
            };
            unknown.push((at, rec, name));
            match parent {
                Some(ROOT_INO) | None => break Vec::new(),
                Some(parent) => at = parent,
            }
        };
        let mut info = None;
        while let Some((ino, rec, name)) = unknown.pop() {
            if ino != ROOT_INO {
                path = join(&path, &name);
            }
            let here = self
                .meta
                .put_dir_info(ino, path.clone(), rec.mode, rec.gid, generation);
            info = Some(here);
        }
        Ok(info.expect("at least one directory was looked up"))
    }

    /// The path of entry `name` of directory `dir`, for messages (best effort).
    pub fn path_of(&self, dir: u64, name: &[u8]) -> String {
        match self.dir_path(dir) {
            Ok(p) => String::from_utf8_lossy(&join(&p, name)).into_owned(),
            Err(_) => format!("<directory inode {dir}>/{}", String::from_utf8_lossy(name)),
        }
    }

    pub(crate) fn link_path(&self, link: &Link) -> FsResult<Vec<u8>> {
        Ok(join(&self.dir_path(link.parent)?, &link.name))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        check_name(name)?;
        if self.meta.known_absent(parent, name) {
            // A cached listing of a store that is gone answers nothing.
            return Err(match self.tree.store.is_gone() {
                true => FsError::StoreGone,
                false => FsError::NotFound,
            });
        }
        for _ in 0..CAS_RETRIES {
            let ino = self
                .read_entry(parent, name)?
                .ino
                .ok_or(FsError::NotFound)?;
            if let Some(attr) = self.getattr_opt(ino)? {
                return Ok(attr);
            }
            // The entry named a record that is gone: removed or moved by another mount
            // meanwhile (ENOENT or the new inode), or lost (EIO).
            if self.read_entry(parent, name)?.ino == Some(ino) && self.is_quiet()? {
                let key = self.tree.keys.inode(ino);
                warn!(path = %self.path_of(parent, name), key = %String::from_utf8_lossy(&key), "entry points at a missing inode record");
                return Err(FsError::missing(&key));
            }
            self.wait_quiet()?;
        }
        Err(FsError::Contended)
    }
}
