//! A hard link made by a mount that holds the file open copies the bytes the store holds to
//! the new name, not the mount's buffer: the buffer of a handle opened before another mount
//! published the file holds older bytes, which the new name then served for good (every name
//! of a file must hold the same bytes, those its record's size counts).

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, ROOT_INO};
use memfis_memcache::Store;
use memfis_memcache::memory::MemoryStore;
use support::*;

#[test]
fn a_link_copies_the_stored_bytes_not_an_older_buffer() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://link-bytes").unwrap();
    let linker = open(&store, &keys);
    let other = open(&store, &keys);
    let f = write(&other, ROOT_INO, "f", b"version 1");
    // The linker reads f through a handle it keeps open...
    let fh = linker.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(linker.read(fh, 0, 100).unwrap(), b"version 1");
    // ...while another mount publishes new bytes.
    let wh = other.open(f, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    other.write(wh, 0, b"version two", false).unwrap();
    other.release(wh).unwrap();
    linker.link(f, ROOT_INO, b"g").unwrap();
    linker.release(fh).unwrap();
    let get = |path: &[u8]| store.get(&keys.data(path)).unwrap().unwrap().value;
    assert_eq!(get(b"/f"), b"version two");
    assert_eq!(get(b"/g"), b"version two", "the new name holds older bytes");
}
