//! An intent that can never complete because the store is damaged where it works (a record
//! holding garbage, a key gone) must not keep the namespace lock: kept, it stopped every
//! unlink, rename, rmdir and link of every mount for good (EIO or EBUSY). The mount that
//! meets it logs the damage and releases the lock; `memfis check --repair` mends the rest.

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{Command, Store, StoreOp};
use support::*;

#[test]
fn a_dead_mounts_intent_over_a_damaged_record_does_not_keep_the_lock() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://damaged-intent").unwrap();
    let fs = open(&store, &keys);
    let f = write(&fs, ROOT_INO, "f", b"f");
    write(&fs, ROOT_INO, "g", b"g");
    // f's record holds garbage, and a mount that is gone (no liveness key) left the lock
    // with an unlink of f half done.
    let set = |key: Vec<u8>, value: &[u8]| {
        store
            .run(Command::store(StoreOp::Set, &key, value))
            .unwrap();
    };
    set(keys.inode(f), b"garbage, not a record");
    let lock = format!(
        r#"{{"owner":"0123456789abcdef/1","intent":{{"op":"unlink","parent":1,"name":"f","ino":{f},"kind":"file","data_keys":[]}}}}"#
    );
    set(keys.ns_lock(), lock.as_bytes());

    let other = open(&store, &keys);
    // The first namespace operation takes the lock over, cannot complete the intent, and
    // goes on; so do the ones after it, on every mount.
    other.unlink(ROOT_INO, b"g").unwrap();
    write(&fs, ROOT_INO, "h", b"h");
    fs.unlink(ROOT_INO, b"h").unwrap();
    assert!(
        store.get(&keys.ns_lock()).unwrap().is_none(),
        "the lock is free"
    );
}

/// A link of a file whose only name is in a directory that is gone (a create there about to
/// take itself back, as another mount removed the directory; the kernel still had the
/// inode number) answers ENOENT and changes nothing. It used to claim the new name and then
/// fail at every try to copy the bytes from the old one, keeping the lock (the kernel-like
/// harness hung on it).
#[test]
fn a_link_of_a_file_in_a_removed_directory_is_enoent_and_changes_nothing() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://link-gone-dir").unwrap();
    let fs = open(&store, &keys);
    let a = fs.mkdir(ROOT_INO, b"a", 0o755, 0, 0).unwrap().ino;
    let f = write(&fs, a, "f", b"f");
    store.delete(&keys.inode(a)).unwrap(); // the directory's record gone
    let linked = fs.link(f, ROOT_INO, b"c");
    assert!(
        matches!(linked, Err(memfis_fs::FsError::NotFound)),
        "{linked:?}"
    );
    assert!(
        store.get(&keys.ns_lock()).unwrap().is_none(),
        "the lock is free"
    );
    assert!(store.get(&keys.entry(ROOT_INO, b"c")).unwrap().is_none());
}
