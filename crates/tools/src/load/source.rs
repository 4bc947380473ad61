//! The local side of a load: the source directory, and its entries' metadata as the values
//! the store keeps.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use memfis_fs::{Attr, SetAttr, Time};

/// The directory a load copies from.
pub struct Source {
    pub path: PathBuf,
    pub meta: std::fs::Metadata,
}

impl Source {
    /// `path`, which must be a directory.
    pub fn new(path: &Path) -> Result<Source> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_dir() {
            bail!("{} is not a directory", path.display());
        }
        Ok(Source {
            path: path.to_path_buf(),
            meta,
        })
    }

    /// Files and bytes below the source, for a progress bar and the summary.
    pub fn totals(&self) -> (u64, u64) {
        let (mut files, mut bytes) = (0, 0);
        let mut stack = vec![self.path.clone()];
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
}

pub(super) fn time_of(secs: i64, nanos: i64) -> Time {
    Time {
        s: secs,
        ns: nanos as u32,
    }
}

pub(super) fn atime(meta: &std::fs::Metadata) -> Time {
    time_of(meta.atime(), meta.atime_nsec())
}

pub(super) fn mtime(meta: &std::fs::Metadata) -> Time {
    time_of(meta.mtime(), meta.mtime_nsec())
}

/// Mode, owner and times of a source entry, as a change to apply.
pub(super) fn attrs_of(meta: &std::fs::Metadata) -> SetAttr {
    SetAttr {
        mode: Some(meta.mode() & 0o7777),
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        atime: Some(atime(meta)),
        mtime: Some(mtime(meta)),
        ..SetAttr::default()
    }
}

/// True when `attr` already has the mode, owner and modification time of `meta`.
pub(super) fn same_attrs(attr: &Attr, meta: &std::fs::Metadata) -> bool {
    attr.mode & 0o7777 == meta.mode() & 0o7777
        && attr.uid == meta.uid()
        && attr.gid == meta.gid()
        && attr.mtime == mtime(meta)
}
