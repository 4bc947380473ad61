//! A publish by a mount whose copy of the record is stale: another mount renamed the file away
//! and moved another file to the old name before the publish's batch. The publish writes served
//! data keys only with `cas` on tokens read while the name was the file's (`RecordVersion::key_tokens`),
//! so the other file's bytes stay; the publish is redone at the file's new name. (Before tokens,
//! the `set` replaced the other file's bytes: the interleaving harness found it, a bulk create's
//! second batch racing a RENAME_EXCHANGE.)

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, ROOT_INO, RenameFlags};
use memfis_memcache::Store;
use memfis_memcache::memory::MemoryStore;
use support::*;

#[test]
fn a_stale_publish_does_not_overwrite_another_files_bytes() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://stale").unwrap();
    let writer = open(&store, &keys);
    let other = open(&store, &keys);
    write(&writer, ROOT_INO, "f", b"old f");
    let g = write(&other, ROOT_INO, "g", b"bytes of g");
    // The writer opens f (its record as of now), then another mount moves f away and g in.
    let f = writer.lookup(ROOT_INO, b"f").unwrap().ino;
    let fh = writer.open(f, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    writer.write(fh, 0, b"new f", false).unwrap();
    let none = RenameFlags::default();
    other.rename(ROOT_INO, b"f", ROOT_INO, b"f2", none).unwrap();
    other.rename(ROOT_INO, b"g", ROOT_INO, b"f", none).unwrap();
    writer.release(fh).unwrap();
    let served = store.get(&keys.data(b"/f")).unwrap().unwrap().value;
    assert_eq!(
        served, b"bytes of g",
        "g (inode {g}) lost its bytes to f's publish"
    );
    assert_eq!(
        store.get(&keys.data(b"/f2")).unwrap().unwrap().value,
        b"new f"
    );
}
