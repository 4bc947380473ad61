//! A publish by a mount whose cached directory paths are stale: another mount renamed the
//! file's directory away and made a new directory, with a file of the same name, at the old
//! path. Directory renames change no file record, so the publishing file's record is still
//! the version it holds; the tokens it reads at the stale path are the other file's. A cas
//! on them replaced the other file's bytes (the race soak of real mounts, traced: two files
//! taking turns at one served key). The token read now also reads the directory-rename
//! count, and works the paths out again when it moved.

mod support;

use std::sync::Arc;

use memfis_fs::{FsConfig, KeyLayout, MemFs, ROOT_INO, RenameFlags};
use memfis_memcache::Store;
use memfis_memcache::memory::MemoryStore;
use support::*;

#[test]
fn a_publish_at_a_stale_path_keeps_the_other_files_bytes() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://publish-dir-rename").unwrap();
    // The writer caches directory paths, as a real mount does.
    let writer = MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap();
    let other = open(&store, &keys);
    let d = writer.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let f = write(&writer, d, "f", b"old bytes of f");
    let fh = writer.open(f, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    writer.write(fh, 0, b"new bytes of f", false).unwrap();

    other
        .rename(ROOT_INO, b"d", ROOT_INO, b"e", RenameFlags::default())
        .unwrap();
    let d2 = other.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let g = write(&other, d2, "f", b"the other file, longer");

    writer.release(fh).unwrap();
    let get = |path: &[u8]| store.get(&keys.data(path)).unwrap().unwrap().value;
    assert_eq!(
        get(b"/d/f"),
        b"the other file, longer",
        "inode {g} lost its bytes to inode {f}'s publish"
    );
    assert_eq!(get(b"/e/f"), b"new bytes of f");
}
