//! The runtime directory of `memfis up` (its mount point, configs, logs and socket): held by
//! one run at a time through an exclusive `flock` on its marker file, emptied only when nothing
//! is mounted under it, and never removed across a file system boundary: a second run must not
//! delete the files of a first one's live mount.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Marks a runtime directory as made by `memfis up` (only such a directory is ever emptied);
/// the run that uses the directory holds an exclusive `flock` on it.
const MARKER: &str = ".memfis-up";

/// A runtime directory this run holds: locked until dropped or [`RuntimeDir::remove`]d.
pub struct RuntimeDir {
    path: PathBuf,
    dev: u64,
    /// The marker, locked (`flock`, released when closed).
    lock: File,
}

impl RuntimeDir {
    /// Takes `path` for this run: made if missing; refused when it has files and was not made
    /// by `memfis up`, when another run holds it, or when anything is mounted under it (a run
    /// killed before it unmounted); then emptied but for the marker, and `mnt/` made.
    pub fn take(path: &Path) -> Result<RuntimeDir> {
        if let Ok(mut entries) = std::fs::read_dir(path) {
            let ours = std::fs::symlink_metadata(path.join(MARKER)).is_ok_and(|m| m.is_file());
            if entries.next().is_some() && !ours {
                bail!(
                    "--runtime-dir {} is not empty and was not made by memfis up: choose an \
                     empty or new directory (memfis up deletes its runtime directory when it \
                     stops)",
                    path.display()
                );
            }
        }
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("--runtime-dir {}", path.display()))?;
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.is_dir() {
            bail!("--runtime-dir {} is not a directory", path.display());
        }
        let lock = lock_marker(&path)?;
        let dir = RuntimeDir {
            dev: meta.dev(),
            path,
            lock,
        };
        let mounted = dir.mounts_under();
        if let Some(m) = mounted.first() {
            bail!(
                "{} is mounted, under the runtime directory {} (left by a `memfis up` that was \
                 killed?): unmount it (fusermount3 -u {}) or choose another --runtime-dir",
                m.display(),
                dir.path.display(),
                m.display()
            );
        }
        dir.empty()?;
        std::fs::create_dir(dir.path.join("mnt"))
            .with_context(|| format!("creating {}/mnt", dir.path.display()))?;
        // Rewritten only now: a run refused above changes nothing of the directory.
        dir.lock.set_len(0)?;
        std::io::Write::write_all(&mut &dir.lock, b"made by memfis up\n")?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Empties and removes the directory, still holding it; what is mounted under it (an
    /// unmount that failed) is left with everything on the way to it, and said.
    pub fn remove(self) {
        let result = self
            .empty()
            .and_then(|()| Ok(std::fs::remove_file(self.path.join(MARKER))?))
            .and_then(|()| Ok(std::fs::remove_dir(&self.path)?));
        if let Err(e) = result {
            eprintln!("memfis up: left {}: {e:#}", self.path.display());
        }
        drop(self.lock);
    }

    /// Mount points strictly under the directory.
    fn mounts_under(&self) -> Vec<PathBuf> {
        crate::fuse::proc_mounts::mounts()
            .into_iter()
            .map(|m| m.target)
            .filter(|t| t != &self.path && t.starts_with(&self.path))
            .collect()
    }

    /// Removes everything in the directory but the marker, never descending into a mount
    /// point or another file system.
    fn empty(&self) -> Result<()> {
        let mounts = self.mounts_under();
        let entries = std::fs::read_dir(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        for entry in entries {
            let p = entry?.path();
            if p.file_name() != Some(MARKER.as_ref()) {
                remove_within(&p, self.dev, &mounts)?;
            }
        }
        Ok(())
    }
}

/// Removes `p` (a directory with its contents) as long as it stays on file system `dev` and
/// holds no mount point; symlinks are removed, never followed.
fn remove_within(p: &Path, dev: u64, mounts: &[PathBuf]) -> Result<()> {
    let meta = std::fs::symlink_metadata(p).with_context(|| format!("{}", p.display()))?;
    if !meta.is_dir() {
        return std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()));
    }
    if meta.dev() != dev || mounts.iter().any(|m| m == p) {
        bail!("{} is a mount point: not removed", p.display());
    }
    for entry in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
        remove_within(&entry?.path(), dev, mounts)?;
    }
    std::fs::remove_dir(p).with_context(|| format!("removing {}", p.display()))
}

/// Opens and locks the marker of `dir`, refusing a directory another run holds.
fn lock_marker(dir: &Path) -> Result<File> {
    let marker = dir.join(MARKER);
    // A run that stops removes its marker: one opened just before that is not the lock any
    // more, so the lock counts only on the file still at the path.
    for _ in 0..10 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&marker)
            .with_context(|| format!("opening {}", marker.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "the runtime directory {} is in use by another `memfis up` (it holds the \
                     lock on {}): stop that one, or choose another directory with --runtime-dir",
                    dir.display(),
                    marker.display()
                );
            }
            return Err(err).with_context(|| format!("locking {}", marker.display()));
        }
        let held = file.metadata()?;
        if std::fs::symlink_metadata(&marker)
            .is_ok_and(|m| m.dev() == held.dev() && m.ino() == held.ino())
        {
            return Ok(file);
        }
    }
    bail!("cannot lock {}: it keeps being replaced", marker.display())
}
