//! `setattr` (through an open file's buffer when this mount holds one), and the largest
//! file. (`getattr` and the attributes records make: `namespace/attrs.rs`; one item's
//! limit: `tree.rs`.)

use memfis_memcache::Store;
use tracing::warn;

use crate::files::Files;
use crate::layout::attr::{Attr, SetAttr};
use crate::layout::keys::is_public;
use crate::layout::record::{Inode, Kind};
use crate::namespace::chmod::changes_visibility;
use crate::sync::lock;
use crate::tree::MAX_FILE_SIZE;
use crate::{FsError, FsResult};

impl<S: Store> Files<S> {
    pub fn setattr(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        if let Some(of) = self.open_files.get(ino) {
            if set.size.is_some() && lock(&of).has_writers() {
                // Resized through the buffer below: its bytes loaded first, waiting out
                // namespace operations with the open file unlocked.
                drop(self.names.lock_loaded(ino, &of)?);
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
                    true => self.names.getattr(ino),
                    false => self.setattr(ino, &rest),
                };
            }
            if of.has_writers() {
                // Published with the data at flush: keeps `cp -a` at a few round trips a file
                // (a chmod that serves it too: its bytes go straight to the served key).
                if let Some(size) = set.size {
                    self.names.ensure_loaded(ino, &mut of)?;
                    self.check_size(ino, size)?;
                    if of.chunks().is_none() && size > self.tree.item_limit() {
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
                return Ok(self.names.open_attr(ino, &of));
            }
        }
        self.setattr_unbuffered(ino, set)
    }

    /// True when `set` takes read for others away from a file whose stored record grants
    /// it: its bytes are at a served key, and must leave it at once.
    fn withdraws_stored(stored: &Inode, set: &SetAttr) -> bool {
        set.mode.is_some() && changes_visibility(stored, set) && is_public(stored.mode)
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
            return self.names.getattr(ino);
        }
        // A chmod that serves or withdraws a file moves its bytes, under the namespace lock;
        // any other change is one cas (refused if a mode change elsewhere made it one).
        // (The flag says why the cas loop stopped; a `Contended` of its own is an error.)
        let moves_bytes = std::cell::Cell::new(false);
        let plain = self.names.update_inode(ino, |rec| {
            if changes_visibility(rec, set) {
                moves_bytes.set(true);
                return Err(FsError::Invalid("a mode change that moves bytes"));
            }
            set.apply_to(rec);
            Ok(())
        });
        let rec = match plain {
            Err(_) if moves_bytes.get() => {
                self.names.setattr_moving_bytes(ino, set)?;
                self.names.read_live_inode(ino)?.0
            }
            other => other?,
        };
        if rec.kind == Kind::Dir
            && let Some(t) = set.mtime
        {
            // The mtime key wins over the record for directories: they are kept in step.
            self.names.set_dir_mtime_unlocked(ino, t)?;
            return Ok(self
                .names
                .with_dir_links(self.names.attr_from(ino, &rec, Some(t))));
        }
        self.names.getattr(ino)
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
}
