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
