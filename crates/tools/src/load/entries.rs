//! Everything a load makes but files' bytes: the destination, directories and their
//! attributes, symlinks, FIFOs, sockets and device nodes, hard links, removals.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use memfis_fs::{Attr, FsError, Kind, ROOT_INO, SetAttr};
use memfis_memcache::Store;

use super::Loader;
use super::source::{atime, attrs_of, mtime, same_attrs};
use crate::progress::Would;

/// A name to make a hard link of an already written file.
pub(super) struct LinkJob {
    pub(super) src: PathBuf,
    pub(super) parent: u64,
    pub(super) name: Vec<u8>,
    /// Where the first name of the same source file went.
    pub(super) first: (u64, Vec<u8>),
}

impl<S: Store> Loader<'_, S> {
    /// The directory `--to` names, made (with its parents) if missing.
    pub(super) fn dest_dir(&self, to: &str) -> Result<u64> {
        let mut ino = ROOT_INO;
        for part in to.split('/').filter(|p| !p.is_empty()) {
            let name = part.as_bytes();
            ino = match self.fs.lookup(ino, name) {
                Ok(a) if a.kind == Kind::Dir => a.ino,
                Ok(_) => bail!("--to {to}: {part} is not a directory in the store"),
                Err(FsError::NotFound) if self.opts.dry_run => return Ok(0),
                Err(FsError::NotFound) => {
                    self.fs
                        .mkdir(ino, name, 0o755, 0, 0)
                        .with_context(|| format!("cannot make {to} in the store"))?
                        .ino
                }
                Err(e) => return Err(e).with_context(|| format!("cannot look up {to}")),
            };
        }
        Ok(ino)
    }

    /// A directory the store lacks: its inode (0 when not made: a dry run, or its parent
    /// was not made), or `None` when it could not be made. Made private to its owner; its
    /// mode and times come last (`set_dir_attrs`).
    pub(super) fn mkdir(
        &self,
        dir: u64,
        name: &[u8],
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> Option<u64> {
        if self.opts.dry_run || dir == 0 {
            return Some(0);
        }
        match self.fs.mkdir(dir, name, 0o700, meta.uid(), meta.gid()) {
            Ok(a) => {
                self.counts.other.fetch_add(1, Ordering::Relaxed);
                Some(a.ino)
            }
            Err(e) => {
                self.failed(path, e);
                None
            }
        }
    }

    /// Mode, owner and times of a directory, once everything in it is made.
    pub(super) fn set_dir_attrs(&self, path: &Path, ino: u64, meta: &std::fs::Metadata) {
        match self.fs.getattr(ino) {
            Ok(a) if same_attrs(&a, meta) => {}
            Ok(_) => {
                if let Err(e) = self.fs.setattr(ino, &attrs_of(meta)) {
                    self.failed(path, e);
                }
            }
            Err(e) => self.failed(path, e),
        }
    }

    /// A FIFO, socket or device node: made again unless one of the same kind, device number,
    /// mode, owner and mtime is there.
    pub(super) fn special(
        &self,
        dir: u64,
        name: &[u8],
        kind: Kind,
        have: Option<&Attr>,
        path: &Path,
        meta: &std::fs::Metadata,
    ) {
        if let Some(a) = have {
            if a.rdev == meta.rdev() && same_attrs(a, meta) {
                self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.remove(dir, name, a, path);
        }
        if self.opts.dry_run || dir == 0 {
            self.progress.would(&Would::Make(path));
            return;
        }
        let made = self.fs.mknod(
            dir,
            name,
            kind,
            meta.mode() & 0o7777,
            meta.rdev(),
            meta.uid(),
            meta.gid(),
        );
        match made.and_then(|a| self.fs.setattr(a.ino, &attrs_of(meta))) {
            Ok(_) => {
                self.counts.other.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed(path, e),
        }
    }

    /// A symlink: made again unless one with the same target is there.
    pub(super) fn symlink(
        &self,
        dir: u64,
        name: &[u8],
        have: Option<&Attr>,
        path: &Path,
        meta: &std::fs::Metadata,
    ) {
        let target = match std::fs::read_link(path) {
            Ok(t) => t,
            Err(e) => return self.error(path, e),
        };
        if let Some(a) = have {
            if self
                .fs
                .readlink(a.ino)
                .is_ok_and(|t| t == target.as_os_str().as_bytes())
            {
                self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.remove(dir, name, a, path);
        }
        if self.opts.dry_run || dir == 0 {
            self.progress.would(&Would::Symlink(path, &target));
            return;
        }
        let made = self.fs.symlink(
            dir,
            name,
            target.as_os_str().as_bytes(),
            meta.uid(),
            meta.gid(),
        );
        // The link's own times, as rsync -a keeps them.
        let times = SetAttr {
            atime: Some(atime(meta)),
            mtime: Some(mtime(meta)),
            ..SetAttr::default()
        };
        match made.and_then(|a| self.fs.setattr(a.ino, &times)) {
            Ok(_) => {
                self.counts.other.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed(path, e),
        }
    }

    /// Removes `name` from `dir` (a directory with everything below it).
    pub(super) fn remove(&self, dir: u64, name: &[u8], attr: &Attr, path: &Path) {
        if self.opts.dry_run {
            self.progress.would(&Would::Remove(path));
            self.counts.removed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if attr.kind == Kind::Dir {
            match self.listing(attr.ino) {
                Ok(children) => {
                    for (child, a) in &children {
                        let p = path.join(std::ffi::OsStr::from_bytes(child));
                        self.remove(attr.ino, child, a, &p);
                    }
                }
                Err(e) => return self.failed(path, e),
            }
        }
        let removed = match attr.kind {
            Kind::Dir => self.fs.rmdir(dir, name),
            _ => self.fs.unlink(dir, name),
        };
        match removed {
            Ok(()) | Err(FsError::NotFound) => {
                self.counts.removed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed(path, e),
        }
    }

    /// A hard link to a file already written, unless the name is that file already.
    pub(super) fn make_link(&self, job: LinkJob) {
        let (first_dir, first_name) = &job.first;
        let target = match self.fs.lookup(*first_dir, first_name) {
            Ok(a) => a,
            Err(e) => return self.failed(&job.src, e),
        };
        match self.fs.lookup(job.parent, &job.name) {
            Ok(a) if a.ino == target.ino => {
                self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(a) => self.remove(job.parent, &job.name, &a, &job.src),
            Err(FsError::NotFound) => {}
            Err(e) => return self.failed(&job.src, e),
        }
        if self.opts.dry_run {
            self.progress.would(&Would::Link(&job.src));
            return;
        }
        match self.fs.link(target.ino, job.parent, &job.name) {
            Ok(_) => {
                self.counts.other.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed(&job.src, e),
        }
    }
}
