//! Attributes: `getattr`, and the attributes a record, a directory's mtime key and a file
//! open in this mount make (lookups, listings and creates answer with them).

use std::sync::{Arc, Mutex};

use memfis_memcache::Store;

use crate::files::open_files::OpenFile;
use crate::layout::attr::Attr;
use crate::layout::record::{Inode, Kind, Time};
use crate::namespace::Namespace;
use crate::store::batch::Batch;
use crate::sync::lock;
use crate::{FsError, FsResult};

impl<S: Store> Namespace<S> {
    pub(crate) fn open_file(&self, ino: u64) -> Option<Arc<Mutex<OpenFile>>> {
        self.open_files.get(ino)
    }

    // ----- attributes ----------------------------------------------------------------------

    pub(crate) fn attr_from(&self, ino: u64, rec: &Inode, dir_mtime: Option<Time>) -> Attr {
        let mut a = Attr {
            ino,
            kind: rec.kind,
            size: rec.size,
            mode: rec.mode,
            uid: rec.uid,
            gid: rec.gid,
            // A directory's 2 + subdirectories: see `with_dir_links`.
            nlink: match rec.kind {
                Kind::Dir => 2,
                _ => rec.links.len() as u32,
            },
            rdev: rec.rdev,
            atime: rec.atime,
            mtime: rec.mtime,
            ctime: rec.ctime,
        };
        if let Some(t) = dir_mtime {
            a.mtime = t;
            a.ctime = a.ctime.max(t);
        }
        a
    }

    /// A directory's link count as POSIX has it: 2 (its name and `.`) plus one `..` per
    /// subdirectory, counted from its listing (cached while fresh, else read from its log, so
    /// it is exact across mounts within the cache TTL). A listing that cannot be read leaves 2.
    pub(crate) fn with_dir_links(&self, mut attr: Attr) -> Attr {
        if attr.kind == Kind::Dir {
            let subdirs = self.meta.subdirs(attr.ino).or_else(|| {
                let listing = self.list_dir(attr.ino).ok()?;
                Some(listing.values().filter(|(_, k)| *k == Kind::Dir).count() as u32)
            });
            attr.nlink = 2 + subdirs.unwrap_or(0);
        }
        attr
    }

    /// Attributes of a file open in this mount: its record with the changes not yet
    /// published. A file whose last name is gone (held open only) has no links, as on a
    /// local filesystem; its record still lists the name it had.
    pub(crate) fn open_attr(&self, ino: u64, of: &OpenFile) -> Attr {
        let mut attr = self.attr_from(ino, &of.view(), None);
        if of.is_unlinked() {
            attr.nlink = 0;
        }
        attr
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        // The kernel names an inode another mount removed: ENOENT, like a stale handle.
        self.getattr_opt(ino)?.ok_or(FsError::NotFound)
    }

    /// Attributes of `ino`; `None` when its record is gone.
    pub(crate) fn getattr_opt(&self, ino: u64) -> FsResult<Option<Attr>> {
        if let Some(of) = self.open_file(ino) {
            return Ok(Some(self.open_attr(ino, &lock(&of))));
        }
        if self.tree.store.is_gone() {
            return Err(FsError::StoreGone);
        }
        if let Some(mut attr) = self.meta.dir_attr(ino) {
            // Kept in step with this mount's own mkdir/rmdir/rename through its listing.
            if let Some(subdirs) = self.meta.subdirs(ino) {
                attr.nlink = 2 + subdirs;
            }
            return Ok(Some(attr));
        }
        let key = self.tree.keys.inode(ino);
        let mkey = self.tree.keys.dir_mtime(ino);
        let mut batch = Batch::new();
        let (record, mtime) = (batch.get(&key), batch.get(mkey));
        let mut r = batch.execute(&self.tree.store);
        let Some(rec) = r.take(record)? else {
            return Ok(None);
        };
        let rec = Inode::decode(&key, &rec.value)?;
        let mtime = r.take(mtime)?.and_then(|i| Time::from_text(&i.value));
        let attr = self.attr_from(ino, &rec, mtime);
        if attr.kind == Kind::Dir {
            let attr = self.with_dir_links(attr);
            self.meta.put_dir_attr(ino, attr.clone());
            return Ok(Some(attr));
        }
        Ok(Some(attr))
    }
}
