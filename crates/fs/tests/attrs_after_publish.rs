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

/// `mode` set first (if any); a writer mount publishes `mine` and keeps its handle open;
/// another mount publishes `theirs`; the writer then makes attribute change `set` (waiting
/// for its close) and closes. The record must count the bytes at the served key, which are
/// returned.
fn race(mode: Option<u32>, mine: &[u8], theirs: &[u8], set: SetAttr) -> Vec<u8> {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://attrs-after-publish").unwrap();
    let writer = open(&store, &keys);
    let other = open(&store, &keys);
    let f = write(&writer, ROOT_INO, "f", b"first");
    if let Some(mode) = mode {
        let first = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        writer.setattr(f, &first).unwrap();
    }
    let fh = writer.open(f, libc::O_RDWR).unwrap();
    writer.write(fh, 0, mine, false).unwrap();
    writer.flush(fh).unwrap(); // published; the handle stays open
    let wh = other.open(f, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    other.write(wh, 0, theirs, false).unwrap();
    other.release(wh).unwrap();
    writer.setattr(f, &set).unwrap();
    writer.release(fh).unwrap();
    let served = store.get(&keys.data(b"/f")).unwrap().unwrap().value;
    let attr = open(&store, &keys).getattr(f).unwrap();
    assert_eq!(
        attr.size,
        served.len() as u64,
        "the record counts {} bytes, the served key holds {:?}",
        attr.size,
        String::from_utf8_lossy(&served)
    );
    served
}

#[test]
fn a_pending_utimens_keeps_the_size_another_mount_published() {
    let set = SetAttr {
        mtime: Some(Time {
            s: 1_700_000_000,
            ns: 5,
        }),
        ..SetAttr::default()
    };
    race(None, b"short", b"much longer bytes", set);
}

#[test]
fn a_pending_chmod_keeps_the_size_another_mount_published() {
    let set = SetAttr {
        mode: Some(0o664),
        ..SetAttr::default()
    };
    race(None, b"a much longer first version", b"tiny", set);
}

/// A chmod that serves the file moves its bytes to the served key at the writer's close: the
/// bytes the store holds, not the writer's buffer published before another mount's write.
#[test]
fn a_pending_chmod_that_serves_moves_the_stored_bytes() {
    let set = SetAttr {
        mode: Some(0o644),
        ..SetAttr::default()
    };
    let served = race(Some(0o600), b"writer's", b"the other mount's bytes", set);
    assert_eq!(served, b"the other mount's bytes");
}
