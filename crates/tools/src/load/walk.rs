//! The walk: each source directory, in the order found, against what the store has there.
//! Directories, symlinks, nodes and removals are made here in order; files go to the writers.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;

use memfis_fs::{Attr, FsError, Kind};
use memfis_memcache::Store;

use super::Loader;
use super::entries::LinkJob;
use super::source::Source;
use super::writers::{BATCH_BYTES, BATCH_FILES, FileJob, Job};
use crate::progress::Would;

/// What the walk gathers.
pub(super) struct Walk {
    /// Every source directory with its copy in the store (0: not made, a dry run) and its
    /// metadata, in the order visited.
    pub(super) dirs: Vec<(PathBuf, u64, std::fs::Metadata)>,
    /// Directories this run made: empty, so not listed.
    made: HashSet<u64>,
    /// Hard links to make once the files are written.
    pub(super) links: Vec<LinkJob>,
    /// Where the first name of each multiply-linked source file (device, inode) went.
    first_names: HashMap<(u64, u64), (u64, Vec<u8>)>,
}

/// New files of one directory waiting to go to the writers together.
#[derive(Default)]
struct Batch {
    files: Vec<FileJob>,
    bytes: u64,
}

/// A source entry: its name, path and metadata.
type Entry = (Vec<u8>, PathBuf, std::fs::Metadata);

impl Walk {
    pub(super) fn new(source: &Source, dest: u64) -> Walk {
        Walk {
            dirs: vec![(source.path.clone(), dest, source.meta.clone())],
            made: HashSet::new(),
            links: Vec::new(),
            first_names: HashMap::new(),
        }
    }

    /// Every directory, including those found on the way, until done or the store is full.
    pub(super) fn run<S: Store>(&mut self, ld: &Loader<'_, S>, jobs: &SyncSender<Job>) {
        let mut i = 0;
        while i < self.dirs.len() && !ld.stopped() {
            let (dir_src, dir_dest, _) = self.dirs[i].clone();
            self.dir(ld, &dir_src, dir_dest, jobs);
            i += 1;
        }
    }

    /// One source directory: its entries against the store's, files sent to the writers.
    fn dir<S: Store>(&mut self, ld: &Loader<'_, S>, src: &Path, dest: u64, jobs: &SyncSender<Job>) {
        let Some(found) = source_entries(ld, src) else {
            return;
        };
        // What the store has (a directory made by this run is empty: no need to ask).
        let mut existing: HashMap<Vec<u8>, Attr> = HashMap::new();
        if dest != 0 && !self.made.contains(&dest) {
            match ld.listing(dest) {
                Ok(l) => existing = l,
                Err(e) => return ld.failed(src, e),
            }
        }
        if ld.opts.delete {
            let keep: HashSet<&[u8]> = found.iter().map(|(n, _, _)| n.as_slice()).collect();
            for (name, attr) in &existing {
                if !keep.contains(name.as_slice()) {
                    let path = src.join(std::ffi::OsStr::from_bytes(name));
                    ld.remove(dest, name, attr, &path);
                }
            }
        }
        let mut batch = Batch::default();
        for entry in found {
            if ld.stopped() {
                return;
            }
            let have = existing.get(&entry.0).cloned();
            if !self.entry(ld, dest, entry, have, &mut batch, jobs) {
                return;
            }
        }
        if !batch.files.is_empty() {
            let _ = jobs.send(Job::New(batch.files));
        }
    }

    /// One entry of a directory. False when the writers are gone.
    fn entry<S: Store>(
        &mut self,
        ld: &Loader<'_, S>,
        dest: u64,
        (name, path, meta): Entry,
        mut have: Option<Attr>,
        batch: &mut Batch,
        jobs: &SyncSender<Job>,
    ) -> bool {
        let Some(wanted) = Kind::from_mode(meta.mode()) else {
            ld.error(&path, "a file of unknown type: skipped");
            return true;
        };
        if let Some(a) = &have
            && a.kind != wanted
        {
            ld.remove(dest, &name, a, &path);
            have = None;
        }
        match wanted {
            Kind::Dir => {
                let ino = match have {
                    Some(a) => a.ino,
                    None => match ld.mkdir(dest, &name, &path, &meta) {
                        Some(0) => 0,
                        Some(ino) => {
                            self.made.insert(ino);
                            ino
                        }
                        None => return true,
                    },
                };
                self.dirs.push((path, ino, meta));
                true
            }
            Kind::Symlink => {
                ld.symlink(dest, &name, have.as_ref(), &path, &meta);
                true
            }
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                ld.special(dest, &name, wanted, have.as_ref(), &path, &meta);
                true
            }
            Kind::File => self.file(ld, dest, (name, path, meta), have, batch, jobs),
        }
    }

    /// A file: a hard link to make later, unchanged, or bytes to write. False when the
    /// writers are gone.
    fn file<S: Store>(
        &mut self,
        ld: &Loader<'_, S>,
        dest: u64,
        (name, path, meta): Entry,
        have: Option<Attr>,
        batch: &mut Batch,
        jobs: &SyncSender<Job>,
    ) -> bool {
        if meta.nlink() > 1 {
            let id = (meta.dev(), meta.ino());
            if let Some(first) = self.first_names.get(&id) {
                self.links.push(LinkJob {
                    src: path,
                    parent: dest,
                    name,
                    first: first.clone(),
                });
                return true;
            }
            self.first_names.insert(id, (dest, name.clone()));
        }
        if let Some(a) = &have
            && ld.unchanged(a, &path, &meta)
        {
            ld.counts.skipped.fetch_add(1, Ordering::Relaxed);
            ld.progress.advanced(meta.len());
            return true;
        }
        if ld.opts.dry_run {
            ld.progress.would(&Would::Write(&path));
            ld.counts.files.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let job = FileJob {
            src: path,
            parent: dest,
            name,
            existing: have.map(|a| a.ino),
            meta,
        };
        let sent = if job.existing.is_some() {
            jobs.send(Job::Existing(Box::new(job)))
        } else {
            batch.bytes += job.meta.len();
            batch.files.push(job);
            if batch.files.len() < BATCH_FILES && batch.bytes < BATCH_BYTES {
                return true;
            }
            batch.bytes = 0;
            jobs.send(Job::New(std::mem::take(&mut batch.files)))
        };
        sent.is_ok()
    }
}

/// The entries of a source directory, sorted by name; `None` when it cannot be read.
fn source_entries<S: Store>(ld: &Loader<'_, S>, src: &Path) -> Option<Vec<Entry>> {
    let entries = match std::fs::read_dir(src) {
        Ok(rd) => rd,
        Err(e) => {
            ld.error(src, e);
            return None;
        }
    };
    let mut found = Vec::new();
    for e in entries {
        match e.and_then(|e| Ok((e.file_name(), e.path(), e.metadata()?))) {
            Ok((name, path, meta)) => found.push((name.as_bytes().to_vec(), path, meta)),
            Err(e) => ld.error(src, e),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Some(found)
}

impl<S: Store> Loader<'_, S> {
    /// The store's names in `dir` with their attributes (one listing, one batch of records).
    pub(super) fn listing(&self, dir: u64) -> Result<HashMap<Vec<u8>, Attr>, FsError> {
        let entries = self.fs.readdir(dir)?;
        let listed: Vec<_> = entries.iter().map(|e| (e.ino, e.kind)).collect();
        let attrs = self.fs.getattr_many(&listed)?;
        Ok(entries
            .into_iter()
            .zip(attrs)
            .filter_map(|(e, a)| Some((e.name, a?)))
            .collect())
    }

    /// Whether the store's file `a` already holds what `path` holds (size and mtime, or the
    /// bytes with --checksum), with the same mode and owner.
    fn unchanged(&self, a: &Attr, path: &Path, meta: &std::fs::Metadata) -> bool {
        // Attributes that differ mean a rewrite either way (the file is written whole).
        if a.size != meta.len() || !super::source::same_attrs(a, meta) {
            return false;
        }
        if !self.opts.checksum {
            return true;
        }
        let Ok(ours) = std::fs::read(path) else {
            return false;
        };
        let Ok(fh) = self.fs.open(a.ino, libc::O_RDONLY) else {
            return false;
        };
        let theirs = self.fs.read(fh, 0, ours.len().max(1) as u32);
        let _ = self.fs.release(fh);
        theirs.is_ok_and(|t| t == ours)
    }
}
