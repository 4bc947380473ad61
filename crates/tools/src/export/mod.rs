//! `memfis export`: the tree under a directory of the store, written back onto local disk with
//! its exact bytes and metadata (modes, owners, nanosecond times, symlinks, hard links, `user.*`
//! xattrs), through the filesystem's public operations like `load`. After a load then an
//! export, `diff -r` shows nothing.
//!
//! - `walk`: the store's directories in order; directories, symlinks and nodes made on the way
//! - `files`: the reader threads, each file's bytes and xattrs
//! - `local`: setting metadata on local files (owner, mode, nanosecond times)

mod files;
mod local;
mod walk;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use memfis_fs::{Kind, MemFs, ROOT_INO};
use memfis_memcache::Store;

use crate::progress::Progress;

/// Files read from the store at once.
const READERS: usize = 16;

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub files: u64,
    pub bytes: u64,
    /// One line per path that could not be written (`path: why`).
    pub errors: Vec<String>,
}

/// Writes the tree under `from` (a directory of the store) into `dest`, made if missing.
pub fn export<S: Store>(
    fs: &MemFs<S>,
    from: &str,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<ExportSummary> {
    let mut ino = ROOT_INO;
    for part in from.split('/').filter(|p| !p.is_empty()) {
        let a = fs
            .lookup(ino, part.as_bytes())
            .with_context(|| format!("--from {from}: cannot find {part} in the store"))?;
        if a.kind != Kind::Dir {
            bail!("--from {from}: {part} is not a directory");
        }
        ino = a.ino;
    }
    std::fs::create_dir_all(dest).with_context(|| format!("cannot make {}", dest.display()))?;
    let top_attr = fs.getattr(ino)?;
    let ex = Exporter {
        fs,
        progress,
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: Default::default(),
    };
    ex.export_tree(ino, dest, top_attr);
    Ok(ExportSummary {
        files: ex.files.load(Ordering::Relaxed),
        bytes: ex.bytes.load(Ordering::Relaxed),
        errors: ex.errors.into_lines(),
    })
}

/// One export's state, shared by the walk and the readers.
struct Exporter<'a, S: Store> {
    fs: &'a MemFs<S>,
    progress: &'a dyn Progress,
    files: AtomicU64,
    bytes: AtomicU64,
    errors: crate::progress::Errors,
}

impl<S: Store> Exporter<'_, S> {
    fn error(&self, path: &Path, what: impl std::fmt::Display) {
        self.errors.note(self.progress, path, what);
    }
}
