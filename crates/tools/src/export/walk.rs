//! The store's directories in order (breadth first): directories, symlinks and nodes made on
//! the way, files sent to the readers, hard links and directory metadata last.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{SyncSender, sync_channel};

use memfis_fs::{Attr, Kind};
use memfis_memcache::Store;

use super::local::{make_special, set_local_attrs};
use super::{Exporter, READERS};

/// A file for the readers: its inode, where it goes, its attributes.
pub(super) type FileJob = (u64, PathBuf, Attr);

/// What the walk gathers.
#[derive(Default)]
struct Walk {
    /// Every directory with its local copy and attributes, in the order visited.
    dirs: Vec<(u64, PathBuf, Attr)>,
    /// Hard links to make once the files are written: (first name, this name).
    links: Vec<(PathBuf, PathBuf)>,
    /// Where the first name of each multiply-linked file went.
    first_paths: HashMap<u64, PathBuf>,
}

impl<S: Store> Exporter<'_, S> {
    pub(super) fn export_tree(&self, top: u64, dest: &Path, top_attr: Attr) {
        let (jobs, rx) = sync_channel::<FileJob>(4 * READERS);
        let rx = Mutex::new(rx);
        let mut walk = Walk {
            dirs: vec![(top, dest.to_path_buf(), top_attr)],
            ..Walk::default()
        };
        std::thread::scope(|scope| {
            for _ in 0..READERS {
                scope.spawn(|| self.write_files(&rx));
            }
            let mut i = 0;
            while i < walk.dirs.len() {
                let (dir, path, _) = walk.dirs[i].clone();
                i += 1;
                if !self.dir(dir, &path, &mut walk, &jobs) {
                    break;
                }
            }
            drop(jobs);
        });
        for (first, local) in walk.links {
            let _ = std::fs::remove_file(&local);
            if let Err(e) = std::fs::hard_link(&first, &local) {
                self.error(&local, e);
            }
        }
        for (_, path, attr) in walk.dirs.iter().rev() {
            if let Err(e) = set_local_attrs(path, attr) {
                self.error(path, e);
            }
        }
    }

    /// One directory of the store. False when the readers are gone.
    fn dir(&self, dir: u64, path: &Path, walk: &mut Walk, jobs: &SyncSender<FileJob>) -> bool {
        let entries = match self.fs.readdir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.error(path, e);
                return true;
            }
        };
        let listed: Vec<_> = entries.iter().map(|e| (e.ino, e.kind)).collect();
        let attrs = match self.fs.getattr_many(&listed) {
            Ok(a) => a,
            Err(e) => {
                self.error(path, e);
                return true;
            }
        };
        for (entry, attr) in entries.into_iter().zip(attrs) {
            let local = path.join(std::ffi::OsStr::from_bytes(&entry.name));
            let Some(attr) = attr else {
                continue; // removed meanwhile
            };
            match attr.kind {
                Kind::Dir => {
                    if let Err(e) = std::fs::create_dir(&local)
                        && e.kind() != std::io::ErrorKind::AlreadyExists
                    {
                        self.error(&local, e);
                        continue;
                    }
                    walk.dirs.push((attr.ino, local, attr));
                }
                Kind::Symlink => self.symlink(&local, &attr),
                Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                    if let Err(e) = make_special(&local, &attr) {
                        self.error(&local, e);
                    }
                }
                Kind::File => {
                    if attr.nlink > 1 {
                        if let Some(first) = walk.first_paths.get(&attr.ino) {
                            walk.links.push((first.clone(), local));
                            continue;
                        }
                        walk.first_paths.insert(attr.ino, local.clone());
                    }
                    if jobs.send((attr.ino, local, attr)).is_err() {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn symlink(&self, local: &Path, attr: &Attr) {
        let target = match self.fs.readlink(attr.ino) {
            Ok(t) => t,
            Err(e) => return self.error(local, e),
        };
        let _ = std::fs::remove_file(local);
        let made = std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), local)
            .and_then(|()| set_local_attrs(local, attr));
        if let Err(e) = made {
            self.error(local, e);
        }
    }
}
