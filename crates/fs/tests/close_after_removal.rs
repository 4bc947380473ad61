//! A file open for writing on one mount while another mount removes it and then its
//! directory. On a local filesystem the writer's close (and fsync) succeed: the bytes go
//! with the unlinked file. The publish at close used to fail with ENOENT (the directory's
//! path could not be worked out), so close answered an error (found by an attack on real
//! mounts).

mod support;

use memfis_fs::ROOT_INO;
use memfis_memcache::memory::MemoryStore;
use std::sync::Arc;
use support::*;

#[test]
fn close_succeeds_after_another_mount_removed_the_file_and_its_directory() {
    let store = Arc::new(MemoryStore::default());
    let keys = memfis_fs::KeyLayout::new("memfis://close-after-removal").unwrap();
    let writer = open(&store, &keys);
    let other = open(&store, &keys);
    let d = writer.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let (_, fh) = writer.create(d, b"f", 0o644, libc::O_WRONLY, 0, 0).unwrap();
    writer.write(fh, 0, &[b'x'; 100], false).unwrap();
    other.unlink(d, b"f").unwrap();
    other.rmdir(ROOT_INO, b"d").unwrap();
    writer.fsync(fh).unwrap();
    writer.write(fh, 100, b"more", false).unwrap();
    writer.release(fh).unwrap();
    assert!(other.lookup(ROOT_INO, b"d").is_err());
    let report = memfis_fs::check::check(&*store, &keys).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
