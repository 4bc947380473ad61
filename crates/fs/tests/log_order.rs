//! Records about one name stay in the order of the operations that wrote them, even when the
//! mount removing a name has never seen the directory's log grow (its idea of the sequence is
//! chunks behind the mount that created the name).

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, Kind, ROOT_INO, RenameFlags};
use memfis_memcache::memory::MemoryStore;
use support::{Fs, names, open};

/// Mount `busy` fills a directory past one log chunk and creates `x`; mount `fresh`, which
/// listed the directory when it was empty, removes `x` (or renames it away); a third mount must not list it.
fn remove_from_a_fresh_mount(remove: impl Fn(&Fs, u64)) {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://order").unwrap();
    let busy = open(&store, &keys);
    let dir = busy.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    // `fresh` knows the directory from when it was empty (the kernel keeps it cached).
    let fresh = open(&store, &keys);
    fresh.readdir(dir).unwrap();
    for i in 0..1100 {
        busy.mknod(dir, format!("n{i}").as_bytes(), Kind::Fifo, 0o644, 0, 0, 0)
            .unwrap();
    }
    busy.mknod(dir, b"x", Kind::Fifo, 0o644, 0, 0, 0).unwrap();
    fresh.lookup(dir, b"x").unwrap();
    remove(&fresh, dir);
    let listed = names(&open(&store, &keys), dir);
    assert!(
        !listed.contains(&"x".to_string()),
        "x listed after its removal"
    );
    assert_eq!(listed.len(), 1100);
}

#[test]
fn unlink_from_a_mount_behind_the_log() {
    remove_from_a_fresh_mount(|fs, dir| fs.unlink(dir, b"x").unwrap());
}

#[test]
fn rename_from_a_mount_behind_the_log() {
    remove_from_a_fresh_mount(|fs, dir| {
        fs.rename(dir, b"x", ROOT_INO, b"y", RenameFlags::default())
            .unwrap()
    });
}

/// The other order: `busy` renames x to y, then `fresh` (behind the log) renames it back.
#[test]
fn rename_back_from_a_mount_behind_the_log() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://order").unwrap();
    let busy = open(&store, &keys);
    let dir = busy.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    busy.mknod(dir, b"x", Kind::Fifo, 0o644, 0, 0, 0).unwrap();
    let fresh = open(&store, &keys);
    fresh.readdir(dir).unwrap();
    for i in 0..1100 {
        busy.mknod(dir, format!("n{i}").as_bytes(), Kind::Fifo, 0o644, 0, 0, 0)
            .unwrap();
    }
    busy.rename(dir, b"x", dir, b"y", RenameFlags::default())
        .unwrap();
    fresh.lookup(dir, b"y").unwrap();
    fresh
        .rename(dir, b"y", dir, b"x", RenameFlags::default())
        .unwrap();
    let listed = names(&open(&store, &keys), dir);
    assert!(
        listed.contains(&"x".to_string()),
        "x not listed after renaming it back"
    );
    assert!(
        !listed.contains(&"y".to_string()),
        "y listed after renaming it away"
    );
}

/// Logs of two records a chunk (as the interleaving harness uses): every operation works.
#[test]
fn small_chunks_work() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://order")
        .unwrap()
        .with_log_chunk_records(2);
    let fs = open(&store, &keys);
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    for i in 0..10 {
        fs.mknod(dir, format!("n{i}").as_bytes(), Kind::Fifo, 0o644, 0, 0, 0)
            .unwrap();
    }
    assert_eq!(names(&open(&store, &keys), dir).len(), 10);
}
