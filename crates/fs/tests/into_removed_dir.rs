//! A rename or link into a directory whose log is gone (removed by another mount while the
//! kernel still names it, or a failed mkdir whose undo could not finish) answers ENOENT and
//! changes nothing. It used to store an intent that could never be completed, which held the
//! namespace lock for good: every namespace operation of every mount failed or waited.

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, ROOT_INO, RenameFlags};
use memfis_memcache::memory::MemoryStore;

#[test]
fn rename_and_link_into_a_removed_directory_are_enoent_and_leave_the_lock_free() {
    let store = Arc::new(MemoryStore::new(1 << 20, 64 << 20));
    let keys = KeyLayout::new("memfis://into-removed").unwrap();
    let a = support::open(&store, &keys);
    let b = support::open(&store, &keys);
    let dir = a.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let file = support::write(&a, ROOT_INO, "f", b"bytes");
    // What a failed mkdir whose undo was cut leaves: a record with no log.
    store.raw_delete(&keys.dir_seq(dir));

    let renamed = a.rename(ROOT_INO, b"f", dir, b"g", RenameFlags::default());
    assert_eq!(renamed.unwrap_err().errno(), libc::ENOENT);
    let linked = a.link(file, dir, b"h");
    assert_eq!(linked.unwrap_err().errno(), libc::ENOENT);

    // Nothing waits on a lock: both mounts go on, and the store is whole.
    use memfis_memcache::Store;
    assert!(
        store.get(&keys.ns_lock()).unwrap().is_none(),
        "namespace lock left held"
    );
    b.mkdir(ROOT_INO, b"e", 0o755, 0, 0).unwrap();
    b.rmdir(ROOT_INO, b"e").unwrap();
    a.rename(ROOT_INO, b"f", ROOT_INO, b"f2", RenameFlags::default())
        .unwrap();
    assert_eq!(support::names(&b, ROOT_INO), ["d", "f2"]);
}

/// A name still found in a directory whose log is gone: a create of another mount in a
/// directory removed meanwhile, between its entry's `add` and its undo. Unlink, rmdir and a
/// rename from there answer ENOENT, as for a removed directory; they used to store an intent
/// that failed (EIO naming the directory's sequence key) when it logged the removal.
#[test]
fn a_name_left_in_a_removed_directory_is_enoent_to_unlink_rmdir_and_rename() {
    let store = Arc::new(MemoryStore::new(1 << 20, 64 << 20));
    let keys = KeyLayout::new("memfis://name-in-removed").unwrap();
    let a = support::open(&store, &keys);
    let dir = a.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let file = support::write(&a, dir, "f", b"bytes");
    let sub = a.mkdir(dir, b"s", 0o755, 0, 0).unwrap().ino;
    // What an rmdir of another mount leaves if a create there is about to undo itself: the
    // directory's record and log are gone, the create's entry is still there.
    store.raw_delete(&keys.inode(dir));
    store.raw_delete(&keys.dir_seq(dir));

    use memfis_memcache::Store;
    let unlinked = a.unlink(dir, b"f");
    assert_eq!(unlinked.unwrap_err().errno(), libc::ENOENT);
    let removed = a.rmdir(dir, b"s");
    assert_eq!(removed.unwrap_err().errno(), libc::ENOENT);
    let renamed = a.rename(dir, b"f", ROOT_INO, b"g", RenameFlags::default());
    assert_eq!(renamed.unwrap_err().errno(), libc::ENOENT);
    assert!(
        store.get(&keys.ns_lock()).unwrap().is_none(),
        "namespace lock left held"
    );
    // Nothing of them changed.
    assert!(store.get(&keys.inode(file)).unwrap().is_some());
    assert!(store.get(&keys.dir_seq(sub)).unwrap().is_some());
    assert_eq!(support::names(&a, ROOT_INO), ["d"]);
}
