//! `memfis load SRC [--to /DIR] [--delete] [--checksum] [--dry-run]`: makes the tree at DIR in
//! the store equal to SRC, the way `rsync -a` does, without FUSE.
//!
//! It works through the filesystem layer (`MemFs`), not by writing keys itself: the records,
//! log appends and publishes are exactly those of a mount, so live mounts may work meanwhile
//! and see the new tree within their cache TTL, and nginx never serves half a file (each file
//! is published whole). One thread walks SRC and makes directories, symlinks and removals in
//! order; a pool of threads writes the files, each one create and one publish (two round
//! trips), many at once. Hard links are made once their first name is written, directory
//! modes and times last (creating entries inside a directory changes its time).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use memfis_fs::bulk::NewFile;
use memfis_fs::record::{Inode, pct_encode};
use memfis_fs::{Attr, FsError, Kind, MemFs, ROOT_INO, SetAttr, Time};
use memfis_memcache::Client;

use crate::cli::LoadArgs;

type Fs = MemFs<Arc<Client>>;

/// File bytes held by the writers at once (memory stays near this plus the largest file).
const IN_FLIGHT_BYTES: u64 = 32 << 20;

/// One file to write.
#[derive(Clone)]
struct FileJob {
    src: PathBuf,
    parent: u64,
    name: Vec<u8>,
    /// The file already at that name, rewritten in place.
    existing: Option<u64>,
    meta: std::fs::Metadata,
}

/// Files to write: new files of one directory, created in one batch, or one file that
/// exists already (rewritten in place).
enum Job {
    New(Vec<FileJob>),
    Existing(Box<FileJob>),
}

/// New files of one directory go to the store together up to these bounds.
const BATCH_FILES: usize = 256;
const BATCH_BYTES: u64 = 4 << 20;

/// A name to make a hard link of an already written file.
struct LinkJob {
    src: PathBuf,
    parent: u64,
    name: Vec<u8>,
    /// Where the first name of the same source file went.
    first: (u64, Vec<u8>),
}

/// What the walk of the source gathers.
#[derive(Default)]
struct Walk {
    /// Every source directory with its copy in the store (0: not made, a dry run) and its
    /// metadata, in the order visited.
    dirs: Vec<(PathBuf, u64, std::fs::Metadata)>,
    /// Directories this run made: empty, so not listed.
    made: std::collections::HashSet<u64>,
    /// Hard links to make once the files are written.
    links: Vec<LinkJob>,
    /// Where the first name of each multiply-linked source file (device, inode) went.
    first_names: HashMap<(u64, u64), (u64, Vec<u8>)>,
}

#[derive(Default)]
struct Counts {
    files: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
    removed: AtomicU64,
    other: AtomicU64,
}

struct Loader {
    fs: Arc<Fs>,
    delete: bool,
    checksum: bool,
    dry_run: bool,
    counts: Counts,
    errors: Mutex<Vec<String>>,
    /// Set when the store is full: stop cleanly.
    full: AtomicBool,
    bar: ProgressBar,
    /// Files written at once.
    writers: usize,
    /// Bytes the writers may hold at once.
    budget: Budget,
}

/// Bytes in flight, shared by the writers. A file larger than the whole budget waits until
/// nothing else is held and then goes alone.
struct Budget {
    limit: u64,
    held: Mutex<u64>,
    freed: Condvar,
}

struct Held<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Budget {
            limit,
            held: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn take(&self, bytes: u64) -> Held<'_> {
        let bytes = bytes.min(self.limit);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held + bytes > self.limit {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        *held += bytes;
        Held {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.budget.held.lock().unwrap_or_else(|p| p.into_inner()) -= self.bytes;
        self.budget.freed.notify_all();
    }
}

pub fn run(args: LoadArgs) -> Result<i32> {
    crate::malloc::limit_caching();
    let src = args.src.clone();
    let meta = std::fs::metadata(&src).with_context(|| format!("cannot read {}", src.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", src.display());
    }
    // Loading into a new prefix makes its tree (and says so); a dry run changes nothing.
    let create = if args.dry_run {
        crate::mount::Create::No
    } else {
        crate::mount::Create::ByIntent
    };
    let fs = crate::mount::open_for_tool(&args.store, create)?;
    let started = Instant::now();
    let (files, bytes) = source_totals(&src);
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) && !args.dry_run {
        ProgressBar::new(bytes).with_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
            )
            .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let loader = Arc::new(Loader {
        fs,
        delete: args.delete,
        checksum: args.checksum,
        dry_run: args.dry_run,
        counts: Counts::default(),
        errors: Mutex::new(Vec::new()),
        full: AtomicBool::new(false),
        bar,
        writers: args.jobs.max(1),
        budget: Budget::new(IN_FLIGHT_BYTES),
    });
    let dest = loader.dest_dir(&args.to)?;
    loader.load_tree(&src, dest, &meta);
    loader.bar.finish_and_clear();
    let c = &loader.counts;
    let secs = started.elapsed().as_secs_f64();
    let written = c.files.load(Ordering::Relaxed);
    let errors = loader.errors.lock().unwrap_or_else(|p| p.into_inner());
    for e in errors.iter() {
        eprintln!("memfis load: {e}");
    }
    println!(
        "{}{} files written ({:.1} MB), {} unchanged, {} other entries made, {} removed, {} errors of {files} files in {}; {:.1} s, {:.0} files/s",
        if args.dry_run { "dry run: " } else { "" },
        written,
        c.bytes.load(Ordering::Relaxed) as f64 / 1e6,
        c.skipped.load(Ordering::Relaxed),
        c.other.load(Ordering::Relaxed),
        c.removed.load(Ordering::Relaxed),
        errors.len(),
        src.display(),
        secs,
        (written + c.skipped.load(Ordering::Relaxed)) as f64 / secs.max(1e-9),
    );
    if loader.full.load(Ordering::Relaxed) {
        eprintln!(
            "memfis load: the store is full: stopped after {written} files; what was written \
             is complete, give memcached more memory (-m) and load again to finish"
        );
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}

/// Files and bytes below `src`, for the progress bar and the summary.
fn source_totals(src: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => {
                    files += 1;
                    bytes += m.len();
                }
                _ => {}
            }
        }
    }
    (files, bytes)
}

fn time_of(secs: i64, nanos: i64) -> Time {
    Time {
        s: secs,
        ns: nanos as u32,
    }
}

/// Mode, owner and times of a source entry, as a change to apply.
fn attrs_of(meta: &std::fs::Metadata) -> SetAttr {
    SetAttr {
        mode: Some(meta.mode() & 0o7777),
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        atime: Some(time_of(meta.atime(), meta.atime_nsec())),
        mtime: Some(time_of(meta.mtime(), meta.mtime_nsec())),
        ..SetAttr::default()
    }
}

/// True when `attr` already has the mode, owner and modification time of `meta`.
fn same_attrs(attr: &Attr, meta: &std::fs::Metadata) -> bool {
    attr.mode & 0o7777 == meta.mode() & 0o7777
        && attr.uid == meta.uid()
        && attr.gid == meta.gid()
        && attr.mtime == time_of(meta.mtime(), meta.mtime_nsec())
}

impl Loader {
    fn error(&self, path: &Path, what: impl std::fmt::Display) {
        let line = format!("{}: {what}", path.display());
        self.bar.println(format!("memfis load: {line}"));
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }

    /// Notes a failed store call: a full store stops the load.
    fn failed(&self, path: &Path, e: FsError) {
        if matches!(e, FsError::NoSpace { .. }) {
            self.full.store(true, Ordering::Relaxed);
        }
        self.error(path, e);
    }

    fn stopped(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// The directory `--to` names, made (with its parents) if missing.
    fn dest_dir(&self, to: &str) -> Result<u64> {
        let mut ino = ROOT_INO;
        for part in to.split('/').filter(|p| !p.is_empty()) {
            let name = part.as_bytes();
            ino = match self.fs.lookup(ino, name) {
                Ok(a) if a.kind == Kind::Dir => a.ino,
                Ok(_) => bail!("--to {to}: {part} is not a directory in the store"),
                Err(FsError::NotFound) if self.dry_run => return Ok(0),
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

    /// Walks `src` (whose copy is directory `dest`), then writes files in parallel, then
    /// makes hard links, then sets directory attributes.
    fn load_tree(self: &Arc<Self>, src: &Path, dest: u64, meta: &std::fs::Metadata) {
        let (jobs, rx) = sync_channel::<Job>(4 * self.writers);
        let rx = Arc::new(Mutex::new(rx));
        let mut walk = Walk {
            dirs: vec![(src.to_path_buf(), dest, meta.clone())],
            ..Walk::default()
        };
        std::thread::scope(|scope| {
            for _ in 0..self.writers {
                let rx = rx.clone();
                let me = self.clone();
                scope.spawn(move || me.write_files(&rx));
            }
            let mut i = 0;
            while i < walk.dirs.len() && !self.stopped() {
                let (dir_src, dir_dest, _) = walk.dirs[i].clone();
                self.load_dir(&dir_src, dir_dest, &jobs, &mut walk);
                i += 1;
            }
            drop(jobs);
        });
        let Walk { dirs, links, .. } = walk;
        for job in links {
            if self.stopped() {
                break;
            }
            self.make_link(job);
        }
        // Deepest first: setting a directory's attributes does not touch its parent's.
        for (path, ino, meta) in dirs.iter().rev() {
            if self.stopped() || self.dry_run || *ino == 0 {
                continue;
            }
            match self.fs.getattr(*ino) {
                Ok(a) if same_attrs(&a, meta) => {}
                Ok(_) => {
                    if let Err(e) = self.fs.setattr(*ino, &attrs_of(meta)) {
                        self.failed(path, e);
                    }
                }
                Err(e) => self.failed(path, e),
            }
        }
    }

    /// One source directory: its entries against the store's, files sent to the writers.
    fn load_dir(
        &self,
        src: &Path,
        dest: u64,
        jobs: &std::sync::mpsc::SyncSender<Job>,
        walk: &mut Walk,
    ) {
        let entries = match std::fs::read_dir(src) {
            Ok(rd) => rd,
            Err(e) => return self.error(src, e),
        };
        let mut found: Vec<(Vec<u8>, PathBuf, std::fs::Metadata)> = Vec::new();
        for e in entries {
            match e.and_then(|e| Ok((e.file_name(), e.path(), e.metadata()?))) {
                Ok((name, path, meta)) => found.push((name.as_bytes().to_vec(), path, meta)),
                Err(e) => self.error(src, e),
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        // What the store has (a directory made by this run is empty: no need to ask).
        let mut existing: HashMap<Vec<u8>, Attr> = HashMap::new();
        if dest != 0 && !walk.made.contains(&dest) {
            match self.listing(dest) {
                Ok(l) => existing = l,
                Err(e) => return self.failed(src, e),
            }
        }
        if self.delete {
            let keep: std::collections::HashSet<&[u8]> =
                found.iter().map(|(n, _, _)| n.as_slice()).collect();
            for (name, attr) in &existing {
                if !keep.contains(name.as_slice()) {
                    self.remove(
                        dest,
                        name,
                        attr,
                        &src.join(std::ffi::OsStr::from_bytes(name)),
                    );
                }
            }
        }
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for (name, path, meta) in found {
            if self.stopped() {
                return;
            }
            let mut have = existing.get(&name).cloned();
            let Some(wanted) = Kind::from_mode(meta.mode()) else {
                self.error(&path, "a file of unknown type: skipped");
                continue;
            };
            if let Some(a) = &have
                && a.kind != wanted
            {
                self.remove(dest, &name, a, &path);
                have = None;
            }
            match wanted {
                Kind::Dir => {
                    let ino = match have {
                        Some(a) => a.ino,
                        None if self.dry_run || dest == 0 => 0,
                        None => match self.fs.mkdir(dest, &name, 0o700, meta.uid(), meta.gid()) {
                            Ok(a) => {
                                self.counts.other.fetch_add(1, Ordering::Relaxed);
                                walk.made.insert(a.ino);
                                a.ino
                            }
                            Err(e) => {
                                self.failed(&path, e);
                                continue;
                            }
                        },
                    };
                    walk.dirs.push((path, ino, meta));
                }
                Kind::Symlink => self.symlink(dest, &name, have.as_ref(), &path, &meta),
                Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                    self.special(dest, &name, wanted, have.as_ref(), &path, &meta)
                }
                Kind::File => {
                    if meta.nlink() > 1 {
                        let id = (meta.dev(), meta.ino());
                        if let Some(first) = walk.first_names.get(&id) {
                            walk.links.push(LinkJob {
                                src: path,
                                parent: dest,
                                name,
                                first: first.clone(),
                            });
                            continue;
                        }
                        walk.first_names.insert(id, (dest, name.clone()));
                    }
                    if let Some(a) = &have
                        && self.unchanged(a, &path, &meta)
                    {
                        self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                        self.bar.inc(meta.len());
                        continue;
                    }
                    if self.dry_run {
                        println!("would write {}", path.display());
                        self.counts.files.fetch_add(1, Ordering::Relaxed);
                        continue;
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
                        batch_bytes += job.meta.len();
                        batch.push(job);
                        if batch.len() < BATCH_FILES && batch_bytes < BATCH_BYTES {
                            continue;
                        }
                        batch_bytes = 0;
                        jobs.send(Job::New(std::mem::take(&mut batch)))
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            }
        }
        if !batch.is_empty() {
            let _ = jobs.send(Job::New(batch));
        }
    }

    /// The store's names in `dir` with their attributes (one listing, one batch of records).
    fn listing(&self, dir: u64) -> Result<HashMap<Vec<u8>, Attr>, FsError> {
        let entries = self.fs.readdir(dir)?;
        let inos: Vec<u64> = entries.iter().map(|e| e.ino).collect();
        let attrs = self.fs.getattr_many(&inos)?;
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
        if a.size != meta.len() || !same_attrs(a, meta) {
            return false;
        }
        if !self.checksum {
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

    /// A FIFO, socket or device node: made again unless one of the same kind, device number,
    /// mode, owner and mtime is there.
    fn special(
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
        if self.dry_run || dir == 0 {
            println!("would make {}", path.display());
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

    fn symlink(
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
        if self.dry_run || dir == 0 {
            println!("would link {} -> {}", path.display(), target.display());
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
            atime: Some(time_of(meta.atime(), meta.atime_nsec())),
            mtime: Some(time_of(meta.mtime(), meta.mtime_nsec())),
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
    fn remove(&self, dir: u64, name: &[u8], attr: &Attr, path: &Path) {
        if self.dry_run {
            println!("would remove {}", path.display());
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

    /// A writer thread: takes files until the walk is over.
    fn write_files(&self, jobs: &Mutex<Receiver<Job>>) {
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
        self.bar.inc(len);
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
                    self.bar.inc(job.meta.len());
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
            copy_xattrs(&self.fs, ino, &job.src)
        })();
        let published = self.fs.release(fh);
        written.and(published)
    }

    fn make_link(&self, job: LinkJob) {
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
        if self.dry_run {
            println!("would link {}", job.src.display());
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

/// The record of a new file: the source's mode, owner, times and `user.*` xattrs.
fn new_record(job: &FileJob) -> Inode {
    let m = &job.meta;
    let mut rec = Inode::new(Kind::File, m.mode() & 0o7777, m.uid(), m.gid(), Vec::new());
    rec.atime = time_of(m.atime(), m.atime_nsec());
    rec.mtime = time_of(m.mtime(), m.mtime_nsec());
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
fn copy_xattrs(fs: &Fs, ino: u64, src: &Path) -> Result<(), FsError> {
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
