//! The writer threads: new files of one directory created in one batch
//! (`MemFs::create_files`), a file that exists (or whose name was taken meanwhile) rewritten
//! the one-file way, each published whole.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use memfis_fs::files::bulk::NewFile;
use memfis_fs::layout::record::{Inode, pct_encode};
use memfis_fs::{FsError, Kind, MemFs};
use memfis_memcache::Store;

use super::Loader;
use super::source::{atime, attrs_of, mtime};

/// New files of one directory go to the store together up to these bounds (one
/// `create_files` call: two round trips for the lot).
pub const BATCH_FILES: usize = 256;
pub const BATCH_BYTES: u64 = 4 << 20;

/// One file to write.
#[derive(Clone)]
pub(super) struct FileJob {
    pub(super) src: PathBuf,
    pub(super) parent: u64,
    pub(super) name: Vec<u8>,
    /// The file already at that name, rewritten in place.
    pub(super) existing: Option<u64>,
    pub(super) meta: std::fs::Metadata,
}

/// Files to write: new files of one directory, created in one batch, or one file that
/// exists already (rewritten in place).
pub(super) enum Job {
    New(Vec<FileJob>),
    Existing(Box<FileJob>),
}

impl<S: Store> Loader<'_, S> {
    /// A writer thread: takes files until the walk is over.
    pub(super) fn write_files(&self, jobs: &Mutex<Receiver<Job>>) {
        loop {
            let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            if self.stopped() {
                continue; // drain
            }
            match job {
                Job::Existing(job) => self.write_one(&job),
                Job::New(files) => self.write_new(files),
            }
        }
    }

    /// Reads a source file, or reports why it cannot.
    fn read_source(&self, job: &FileJob) -> Option<Vec<u8>> {
        match std::fs::read(&job.src) {
            Ok(b) => Some(b),
            Err(e) => {
                self.error(&job.src, format!("cannot read it: {e}"));
                None
            }
        }
    }

    fn written(&self, job: &FileJob, result: Result<(), FsError>) {
        let len = job.meta.len();
        match result {
            Ok(()) => {
                self.counts.files.fetch_add(1, Ordering::Relaxed);
                self.counts.bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => self.failed(&job.src, e),
        }
        self.progress.advanced(len);
    }

    fn write_one(&self, job: &FileJob) {
        // A file's bytes are held about twice (read buffer, open-file buffer) until its
        // publish: the budget keeps memory bounded by it, not by the tree.
        let _held = self.budget.take(job.meta.len().saturating_mul(2));
        if let Some(bytes) = self.read_source(job) {
            let result = self.write_file(job, &bytes);
            self.written(job, result);
        }
    }

    /// New files of one directory, created in one batch; a name taken meanwhile (another
    /// mount) is written the one-file way.
    fn write_new(&self, jobs: Vec<FileJob>) {
        let total: u64 = jobs.iter().map(|j| j.meta.len()).sum();
        let _held = self.budget.take(total.saturating_mul(2));
        let mut files = Vec::new();
        let mut sent = Vec::new();
        for job in &jobs {
            let Some(bytes) = self.read_source(job) else {
                continue;
            };
            files.push(NewFile {
                name: job.name.clone(),
                record: new_record(job),
                bytes: Arc::new(bytes),
            });
            sent.push(job);
        }
        let Some(parent) = sent.first().map(|j| j.parent) else {
            return;
        };
        let results = match self.fs.create_files(parent, files) {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, FsError::NoSpace { .. }) {
                    self.full.store(true, Ordering::Relaxed);
                }
                for job in &sent {
                    self.error(&job.src, &e);
                    self.progress.advanced(job.meta.len());
                }
                return;
            }
        };
        for (job, result) in sent.into_iter().zip(results) {
            match result {
                Err(FsError::Exists) => match self.fs.lookup(job.parent, &job.name) {
                    Ok(a) if a.kind == Kind::File => {
                        let mut again = job.clone();
                        again.existing = Some(a.ino);
                        self.write_one(&again);
                    }
                    Ok(_) => self.failed(&job.src, FsError::Exists),
                    Err(e) => self.failed(&job.src, e),
                },
                other => self.written(job, other.map(drop)),
            }
        }
    }

    /// One file, published whole: create (or truncate), write, attributes, xattrs, close.
    fn write_file(&self, job: &FileJob, bytes: &[u8]) -> Result<(), FsError> {
        let flags = libc::O_WRONLY | libc::O_TRUNC;
        let (ino, fh) = match job.existing {
            Some(ino) => (ino, self.fs.open(ino, flags)?),
            None => {
                let m = &job.meta;
                let (a, fh) = self.fs.create(
                    job.parent,
                    &job.name,
                    m.mode() & 0o7777,
                    flags,
                    m.uid(),
                    m.gid(),
                )?;
                (a.ino, fh)
            }
        };
        let written = (|| {
            if !bytes.is_empty() {
                self.fs.write(fh, 0, bytes, false)?;
            }
            self.fs.setattr(ino, &attrs_of(&job.meta))?;
            copy_xattrs(self.fs, ino, &job.src)
        })();
        let published = self.fs.release(fh);
        written.and(published)
    }
}

/// The record of a new file: the source's mode, owner, times and `user.*` xattrs.
fn new_record(job: &FileJob) -> Inode {
    let m = &job.meta;
    let mut rec = Inode::new(Kind::File, m.mode() & 0o7777, m.uid(), m.gid(), Vec::new());
    rec.atime = atime(m);
    rec.mtime = mtime(m);
    if let Ok(names) = xattr::list(&job.src) {
        for name in names {
            let raw = name.as_bytes();
            if raw.starts_with(b"user.")
                && let Ok(Some(value)) = xattr::get(&job.src, &name)
            {
                rec.xattrs.insert(pct_encode(raw), pct_encode(&value));
            }
        }
    }
    rec
}

/// Copies the `user.*` extended attributes of `src` (the only namespace the store keeps).
fn copy_xattrs<S: Store>(fs: &MemFs<S>, ino: u64, src: &Path) -> Result<(), FsError> {
    let Ok(names) = xattr::list(src) else {
        return Ok(()); // a source filesystem without xattrs
    };
    for name in names {
        let name = name.as_bytes();
        if !name.starts_with(b"user.") {
            continue;
        }
        if let Ok(Some(value)) = xattr::get(src, std::ffi::OsStr::from_bytes(name)) {
            fs.setxattr(ino, name, &value, 0)?;
        }
    }
    Ok(())
}
