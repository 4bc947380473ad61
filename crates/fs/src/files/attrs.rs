//! Attributes: `getattr` and `setattr` (through an open file's buffer when this mount holds
//! one), the attributes a record, a directory's mtime key and an open file make, and the size
//! limits of a file (one item, chunks, the largest file).

use std::sync::{Arc, Mutex};

use memfis_memcache::command::Value;
use memfis_memcache::{Command, Store, StoreOp};
use tracing::warn;

use crate::files::open_files::OpenFile;
use crate::fs::{DEFAULT_ITEM_SIZE_MAX, ITEM_OVERHEAD, MAX_FILE_SIZE, MemFs};
use crate::layout::attr::{Attr, SetAttr};
use crate::layout::keys::is_public;
use crate::layout::record::{Inode, Kind, Time};
use crate::store::batch::{Batch, StoreAt};
use crate::sync::lock;
use crate::{FsError, FsResult};

impl<S: Store> MemFs<S> {
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

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        if let Some(of) = self.open_file(ino) {
            if set.size.is_some() && lock(&of).has_writers() {
                // Resized through the buffer below: its bytes loaded first, waiting out
                // namespace operations with the open file unlocked.
                drop(self.lock_loaded(ino, &of)?);
            }
            let mut of = lock(&of);
            if of.has_writers() && !of.is_unlinked() && Self::withdraws_stored(of.record(), set) {
                // A chmod that withdraws served bytes (of a file that still has a name) does
                // not wait for the writer's close: it runs now, as without a writer. It
                // supersedes any mode still pending (cleared first, so a publish meanwhile
                // cannot serve the file again).
                of.drop_pending_mode();
                drop(of);
                let chmod = SetAttr {
                    mode: set.mode,
                    ..SetAttr::default()
                };
                self.setattr_unbuffered(ino, &chmod)?;
                let rest = SetAttr {
                    mode: None,
                    ..set.clone()
                };
                let nothing_else = rest.uid.is_none()
                    && rest.gid.is_none()
                    && rest.size.is_none()
                    && rest.atime.is_none()
                    && rest.mtime.is_none();
                return match nothing_else {
                    true => self.getattr(ino),
                    false => self.setattr(ino, &rest),
                };
            }
            if of.has_writers() {
                // Published with the data at flush: keeps `cp -a` at a few round trips a file
                // (a chmod that serves it too: its bytes go straight to the served key).
                if let Some(size) = set.size {
                    self.ensure_loaded(ino, &mut of)?;
                    self.check_size(ino, size)?;
                    if of.chunks().is_none() && size > self.item_limit() {
                        self.start_chunking(ino, &mut of)?;
                    }
                    match of.chunks_mut() {
                        Some(c) => {
                            self.resize_chunked(ino, c, size)?;
                            of.touch_mtime();
                        }
                        None => of.resize(size),
                    }
                }
                let mut set = set.clone();
                let view = of.view();
                set.mode = set.mode.or(set.setid_cleared(&view));
                of.buffer_attrs(&set);
                return Ok(self.open_attr(ino, &of));
            }
        }
        self.setattr_unbuffered(ino, set)
    }

    /// True when `set` takes read for others away from a file whose stored record grants
    /// it: its bytes are at a served key, and must leave it at once.
    fn withdraws_stored(stored: &Inode, set: &SetAttr) -> bool {
        set.mode.is_some() && Self::changes_visibility(stored, set) && is_public(stored.mode)
    }

    /// setattr straight to the store (no writer of this mount buffers the change).
    fn setattr_unbuffered(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        if set.size.is_some() {
            // Through a handle of its own, so the new size is published like any write
            // (whole, with the record, fenced against namespace operations).
            let fh = self.open(ino, libc::O_WRONLY)?;
            let changed = self.setattr(ino, set);
            let published = self.release(fh);
            changed?;
            published?;
            return self.getattr(ino);
        }
        // A chmod that serves or withdraws a file moves its bytes, under the namespace lock;
        // any other change is one cas (refused if a mode change elsewhere made it one).
        // (The flag says why the cas loop stopped; a `Contended` of its own is an error.)
        let moves_bytes = std::cell::Cell::new(false);
        let plain = self.update_inode(ino, |rec| {
            if Self::changes_visibility(rec, set) {
                moves_bytes.set(true);
                return Err(FsError::Invalid("a mode change that moves bytes"));
            }
            set.apply_to(rec);
            Ok(())
        });
        let rec = match plain {
            Err(_) if moves_bytes.get() => {
                self.setattr_moving_bytes(ino, set)?;
                self.read_live_inode(ino)?.0
            }
            other => other?,
        };
        if rec.kind == Kind::Dir
            && let Some(t) = set.mtime
        {
            // The mtime key wins over the record for directories: they are kept in step.
            self.set_dir_mtime_unlocked(ino, t)?;
            return Ok(self.with_dir_links(self.attr_from(ino, &rec, Some(t))));
        }
        self.getattr(ino)
    }

    /// EFBIG for a file size past [`MAX_FILE_SIZE`]; files larger than one item go in chunks.
    pub(crate) fn check_size(&self, ino: u64, size: u64) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            warn!(
                ino,
                size, "file would exceed the largest size memfis stores ({MAX_FILE_SIZE} bytes)"
            );
            return Err(FsError::TooBig {
                key: format!("inode {ino}"),
                limit: format!("{MAX_FILE_SIZE} bytes"),
            });
        }
        Ok(())
    }

    /// The most bytes one item holds: files up to this size are one value (served), larger
    /// ones go in chunks (`chunked.rs`).
    pub(crate) fn item_limit(&self) -> u64 {
        // An item holds the key and a header besides the value.
        let item_max = self.tree.cfg.item_size_max.unwrap_or(DEFAULT_ITEM_SIZE_MAX);
        item_max.saturating_sub(ITEM_OVERHEAD)
    }

    /// EFBIG for bytes that must be one item (`memfis load` writes whole files in one batch).
    pub(crate) fn check_fits_item(&self, key: &[u8], size: u64) -> FsResult<()> {
        if size > self.item_limit() {
            return Err(FsError::TooBig {
                key: String::from_utf8_lossy(key).into_owned(),
                limit: format!(
                    "one item of {} bytes (write larger files through the mount)",
                    self.item_limit()
                ),
            });
        }
        Ok(())
    }

    /// Replaces the value of every data key with `data` (one pipelined batch).
    pub(crate) fn write_data_keys(&self, keys: &[Vec<u8>], data: Value) -> FsResult<()> {
        let batch = keys
            .iter()
            .map(|k| Command::store_shared(StoreOp::Set, k, data.clone()))
            .collect();
        self.tree.store.execute_all(batch)
    }
}
