//! `memfis load`: makes a directory of the store equal to a local directory, the way `rsync
//! -a` does.
//!
//! It works through the filesystem's public operations, not by writing keys itself: the
//! records, log appends and publishes are exactly those of a mount, so live mounts may work
//! meanwhile and see the new tree within their cache TTL, and nginx never serves half a file
//! (each file is published whole). One thread walks the source and makes directories,
//! symlinks and removals in order; a pool of threads writes the files, the new files of a
//! directory in batches (`MemFs::create_files`), a file that exists one at a time (create and
//! publish). Hard links are made once their first name is written, directory modes and times
//! last (creating entries inside a directory changes its time).
//!
//! - `source`: the local side: the source directory, its metadata as the store's values
//! - `walk`: each source directory against the store's: what to make, skip or remove
//! - `entries`: everything but files' bytes: directories, symlinks, nodes, links, removals
//! - `writers`: the threads that write files, in batches of new files or one at a time
//! - `budget`: bounds the bytes the writers hold at once

mod budget;
mod entries;
mod source;
mod walk;
mod writers;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;

use anyhow::Result;
use memfis_fs::{FsError, MemFs};
use memfis_memcache::Store;

use crate::progress::Progress;
use budget::Budget;
pub use source::Source;
pub use writers::{BATCH_BYTES, BATCH_FILES};

/// What to do, from the command line.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The directory of the store to make equal to the source (made if missing).
    pub to: String,
    /// Remove what the source lacks.
    pub delete: bool,
    /// Compare bytes, not size and mtime, to find unchanged files.
    pub checksum: bool,
    /// Change nothing; report what would change.
    pub dry_run: bool,
    /// Files written at once.
    pub jobs: usize,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSummary {
    /// Files written (or that a dry run would write).
    pub files: u64,
    pub bytes: u64,
    /// Entries already as in the source.
    pub skipped: u64,
    /// Directories, symlinks, nodes and hard links made.
    pub other: u64,
    pub removed: u64,
    /// One line per path that could not go in (`path: why`).
    pub errors: Vec<String>,
    /// The store filled up: the load stopped there (what was written is whole).
    pub full: bool,
}

/// Makes `opts.to` in the store equal to `source`.
pub fn load<S: Store>(
    fs: &MemFs<S>,
    source: &Source,
    opts: &LoadOptions,
    progress: &dyn Progress,
) -> Result<LoadSummary> {
    let loader = Loader {
        fs,
        opts,
        progress,
        counts: Counts::default(),
        errors: Default::default(),
        full: AtomicBool::new(false),
        budget: Budget::new(budget::IN_FLIGHT_BYTES),
    };
    let dest = loader.dest_dir(&opts.to)?;
    loader.load_tree(source, dest);
    let c = &loader.counts;
    Ok(LoadSummary {
        files: c.files.load(Ordering::Relaxed),
        bytes: c.bytes.load(Ordering::Relaxed),
        skipped: c.skipped.load(Ordering::Relaxed),
        other: c.other.load(Ordering::Relaxed),
        removed: c.removed.load(Ordering::Relaxed),
        errors: loader.errors.into_lines(),
        full: loader.full.load(Ordering::Relaxed),
    })
}

#[derive(Default)]
struct Counts {
    files: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
    removed: AtomicU64,
    other: AtomicU64,
}

/// One load's state, shared by the walk and the writers.
struct Loader<'a, S: Store> {
    fs: &'a MemFs<S>,
    opts: &'a LoadOptions,
    progress: &'a dyn Progress,
    counts: Counts,
    errors: crate::progress::Errors,
    /// Set when the store is full: stop cleanly.
    full: AtomicBool,
    /// Bytes the writers may hold at once.
    budget: Budget,
}

impl<S: Store> Loader<'_, S> {
    fn error(&self, path: &Path, what: impl std::fmt::Display) {
        self.errors.note(self.progress, path, what);
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

    /// Walks the source (whose copy is directory `dest`) while the writers write its files,
    /// then makes hard links, then sets directory attributes.
    fn load_tree(&self, source: &Source, dest: u64) {
        let writers = self.opts.jobs.max(1);
        let (jobs, rx) = sync_channel(4 * writers);
        let rx = Mutex::new(rx);
        let mut walk = walk::Walk::new(source, dest);
        std::thread::scope(|scope| {
            for _ in 0..writers {
                scope.spawn(|| self.write_files(&rx));
            }
            walk.run(self, &jobs);
            drop(jobs);
        });
        for job in walk.links {
            if self.stopped() {
                break;
            }
            self.make_link(job);
        }
        // Deepest first: setting a directory's attributes does not touch its parent's.
        for (path, ino, meta) in walk.dirs.iter().rev() {
            if self.stopped() || self.opts.dry_run || *ino == 0 {
                continue;
            }
            self.set_dir_attrs(path, *ino, meta);
        }
    }
}
