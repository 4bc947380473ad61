//! Helpers the in-memory tests of the filesystem share: a mount with no caches over one
//! store, writing a file whole, and a directory's names.
#![allow(dead_code)] // each test file uses some of them

use std::sync::Arc;
use std::time::Duration;

use memfis_fs::{FsConfig, KeyLayout, MemFs};
use memfis_memcache::memory::MemoryStore;

pub type Fs = MemFs<Arc<MemoryStore>>;

/// A mount that trusts no cache, so every call sees what other mounts did.
pub fn uncached() -> FsConfig {
    FsConfig {
        cache_ttl: Duration::ZERO,
        ..FsConfig::default()
    }
}

/// Another mount of `store` under `keys`.
pub fn open(store: &Arc<MemoryStore>, keys: &KeyLayout) -> Fs {
    MemFs::new(store.clone(), keys.clone(), uncached()).unwrap()
}

/// Creates `name` in `parent` holding `bytes`; its inode number.
pub fn write<S: memfis_memcache::Store>(
    fs: &MemFs<S>,
    parent: u64,
    name: &str,
    bytes: &[u8],
) -> u64 {
    let (attr, fh) = fs
        .create(parent, name.as_bytes(), 0o644, libc::O_WRONLY, 0, 0)
        .unwrap();
    fs.write(fh, 0, bytes, false).unwrap();
    fs.release(fh).unwrap();
    attr.ino
}

/// The names `dir` lists, sorted, without `.` and `..`.
pub fn names(fs: &Fs, dir: u64) -> Vec<String> {
    let mut names: Vec<String> = fs
        .readdir(dir)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

/// The replies of a batch of `n` commands that ran but whose replies were lost (a timeout).
pub fn replies_lost(n: usize) -> Vec<memfis_memcache::CmdResult> {
    (0..n)
        .map(|_| {
            Err(memfis_memcache::StoreError::Timeout {
                server: "lost replies".into(),
            })
        })
        .collect()
}
