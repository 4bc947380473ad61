//! A known race, kept as a failing test (ignored) until the publish protocol closes it: a mount
//! publishing a file whose name another mount has meanwhile given to a different file.
//!
//! A publish writes the data keys of the names its copy of the record lists, then `cas`es the
//! record. If another mount renamed the file away and moved another file to the old name before
//! the publish's batch, the `cas` fails (the record changed) and the publish is redone at the new
//! name, but its first `set` already replaced the other file's bytes at that key, and the cleanup
//! keeps the key (it is a name's key). The interleaving harness found it (a bulk create's second
//! batch racing a RENAME_EXCHANGE). Closing it needs a data-key write that cannot land once the
//! name moved (a `cas` on the data key, or the record checked before the bytes go).

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, ROOT_INO, RenameFlags};
use memfis_memcache::Store;
use memfis_memcache::memory::MemoryStore;
use support::*;

#[test]
#[ignore = "known race between a publish and a rename by another mount (see the module comment)"]
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
