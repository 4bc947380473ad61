//! A hard link to a file whose bytes are missing from the store (evicted, or lost to a bug)
//! must not leave the namespace lock held for good: the link's intent copies the bytes to
//! the new name, and an intent that can never complete used to keep every mount's unlink,
//! rename, rmdir and link waiting (EIO for all of them). The race soak of real mounts found
//! it. Now the link completes, the new name has no bytes either (reads are EIO naming the
//! key, as for the old name), and other mounts go on.

mod support;

use std::sync::Arc;

use memfis_fs::{FsError, KeyLayout, ROOT_INO, SetAttr};
use memfis_memcache::Store;
use memfis_memcache::memory::MemoryStore;
use support::*;

fn lose_bytes_then_link(mode: u32, lost_key: &dyn Fn(&KeyLayout, u64) -> Vec<u8>) {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://link-lost").unwrap();
    let linker = open(&store, &keys);
    let other = open(&store, &keys);
    let f = write(&linker, ROOT_INO, "f", b"bytes soon lost");
    let set = SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    };
    linker.setattr(f, &set).unwrap();
    let key = lost_key(&keys, f);
    assert!(
        store.get(&key).unwrap().is_some(),
        "the bytes are at {key:?}"
    );
    store.delete(&key).unwrap();
    linker.link(f, ROOT_INO, b"g").unwrap();
    // The lock is free: another mount's namespace operations go on.
    write(&other, ROOT_INO, "h", b"h");
    other.unlink(ROOT_INO, b"h").unwrap();
    // Reading either name is an error naming the key, never other bytes.
    let g = other.lookup(ROOT_INO, b"g").unwrap().ino;
    let fh = other.open(g, libc::O_RDONLY).unwrap();
    match other.read(fh, 0, 100) {
        Err(FsError::Missing { .. }) => {}
        other => panic!("read of a file whose bytes are lost: {other:?}"),
    }
    other.release(fh).unwrap();
}

#[test]
fn a_link_to_a_served_file_whose_bytes_are_lost_releases_the_lock() {
    lose_bytes_then_link(0o644, &|keys, _| keys.data(b"/f"));
}

#[test]
fn a_link_to_a_private_file_whose_bytes_are_lost_releases_the_lock() {
    lose_bytes_then_link(0o600, &|keys, ino| keys.private_data(ino));
}
