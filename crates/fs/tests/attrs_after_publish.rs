//! An attribute change that rides with an open writer's next publish (a chmod or utimens
//! while this mount holds the file open for writing) must not write the size of the writer's
//! buffer into the record when the buffer was already published: another mount may have
//! published other bytes since, and the record would then count another size than its data
//! key holds (nginx serves the key's bytes, mounts read the record's size). The race soak
//! of real mounts found it now and then (`record size differs from its bytes`).

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, ROOT_INO, SetAttr, Time};
use memfis_memcache::Store;
use memfis_memcache::memory::MemoryStore;
use support::*;

fn settle(store: &MemoryStore, keys: &KeyLayout, reader: &Fs, ino: u64, path: &[u8]) {
    let served = store.get(&keys.data(path)).unwrap().unwrap().value;
    let attr = reader.getattr(ino).unwrap();
    assert_eq!(
        attr.size,
        served.len() as u64,
        "the record counts {} bytes, the served key holds {:?}",
        attr.size,
        String::from_utf8_lossy(&served)
    );
}

#[test]
fn a_pending_utimens_keeps_the_size_another_mount_published() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://attrs-after-publish").unwrap();
    let writer = open(&store, &keys);
    let other = open(&store, &keys);
    let f = write(&writer, ROOT_INO, "f", b"first");
    let fh = writer.open(f, libc::O_RDWR).unwrap();
    writer.write(fh, 0, b"short", false).unwrap();
    writer.flush(fh).unwrap(); // published; the handle stays open
    let wh = other.open(f, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    other.write(wh, 0, b"much longer bytes", false).unwrap();
    other.release(wh).unwrap();
    let set = SetAttr {
        mtime: Some(Time {
            s: 1_700_000_000,
            ns: 5,
        }),
        ..SetAttr::default()
    };
    writer.setattr(f, &set).unwrap();
    writer.release(fh).unwrap();
    let fresh = open(&store, &keys);
    settle(&store, &keys, &fresh, f, b"/f");
}

#[test]
fn a_pending_chmod_keeps_the_size_another_mount_published() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://attrs-after-publish").unwrap();
    let writer = open(&store, &keys);
    let other = open(&store, &keys);
    let f = write(&writer, ROOT_INO, "f", b"first");
    let fh = writer.open(f, libc::O_RDWR).unwrap();
    writer
        .write(fh, 0, b"a much longer first version", false)
        .unwrap();
    writer.flush(fh).unwrap();
    let wh = other.open(f, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    other.write(wh, 0, b"tiny", false).unwrap();
    other.release(wh).unwrap();
    let set = SetAttr {
        mode: Some(0o664),
        ..SetAttr::default()
    };
    writer.setattr(f, &set).unwrap();
    writer.release(fh).unwrap();
    let fresh = open(&store, &keys);
    settle(&store, &keys, &fresh, f, b"/f");
}

/// A chmod that serves the file moves its bytes to the served key at the writer's close: the
/// bytes the store holds, not the writer's buffer published before another mount's write.
#[test]
fn a_pending_chmod_that_serves_moves_the_stored_bytes() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://attrs-after-publish").unwrap();
    let writer = open(&store, &keys);
    let other = open(&store, &keys);
    let f = write(&writer, ROOT_INO, "f", b"first");
    let private = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    writer.setattr(f, &private).unwrap();
    let fh = writer.open(f, libc::O_RDWR).unwrap();
    writer.write(fh, 0, b"writer's", false).unwrap();
    writer.flush(fh).unwrap();
    let wh = other.open(f, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    other
        .write(wh, 0, b"the other mount's bytes", false)
        .unwrap();
    other.release(wh).unwrap();
    let public = SetAttr {
        mode: Some(0o644),
        ..SetAttr::default()
    };
    writer.setattr(f, &public).unwrap();
    writer.release(fh).unwrap();
    let fresh = open(&store, &keys);
    settle(&store, &keys, &fresh, f, b"/f");
    let served = store.get(&keys.data(b"/f")).unwrap().unwrap().value;
    assert_eq!(served, b"the other mount's bytes");
}
