//! A file this mount holds open keeps its bytes when a process of this mount removes its last
//! name, as on a local filesystem: by unlink, for a file in chunks as for one of one item, and
//! by a rename over it. (Found by reading the code: the chunks of a file in chunks went at
//! once, so the open handle read zeros; a rename over a file opened but not read yet deleted
//! its bytes, so the handle's first read failed.)

mod support;

use std::sync::Arc;
use std::time::Duration;

use memfis_fs::{FsConfig, KeyLayout, MemFs, ROOT_INO, RenameFlags};
use memfis_memcache::memory::MemoryStore;

/// Items of 1536 bytes: a file of a few KB goes in chunks.
fn small_items_cfg() -> FsConfig {
    FsConfig {
        cache_ttl: Duration::ZERO,
        item_size_max: Some(1536),
        ..FsConfig::default()
    }
}

fn small_items(prefix: &str) -> (Arc<MemoryStore>, KeyLayout, MemFs<Arc<MemoryStore>>) {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new(prefix).unwrap();
    let fs = MemFs::new(store.clone(), keys.clone(), small_items_cfg()).unwrap();
    (store, keys, fs)
}

fn chunk_keys(store: &MemoryStore, keys: &KeyLayout) -> usize {
    let prefix = keys.chunk_prefix();
    store
        .keys()
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .count()
}

fn assert_clean(store: &Arc<MemoryStore>, keys: &KeyLayout) {
    let report = memfis_fs::check::check(store, keys).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 + 1).collect()
}

#[test]
fn an_open_file_in_chunks_keeps_its_bytes_after_its_unlink() {
    let (store, keys, fs) = small_items("memfis://unlink-chunks");
    let want = bytes(5000);
    let ino = support::write(&fs, ROOT_INO, "big.bin", &want);
    assert!(chunk_keys(&store, &keys) > 1, "in chunks");
    let fh = fs.open(ino, libc::O_RDONLY).unwrap();

    fs.unlink(ROOT_INO, b"big.bin").unwrap();

    assert!(
        fs.read(fh, 0, 8192).unwrap() == want,
        "the open handle reads the bytes"
    );
    fs.release(fh).unwrap();
    assert_eq!(
        chunk_keys(&store, &keys),
        0,
        "the chunks go with the last handle"
    );
    assert_clean(&store, &keys);
}

#[test]
fn an_open_file_keeps_its_bytes_after_a_rename_over_it() {
    let (store, keys, fs) = small_items("memfis://rename-over-open");
    let old = b"the old page".to_vec();
    let ino = support::write(&fs, ROOT_INO, "page.html", &old);
    support::write(&fs, ROOT_INO, "new.html", b"the new page");
    let fh = fs.open(ino, libc::O_RDONLY).unwrap(); // not read yet

    fs.rename(
        ROOT_INO,
        b"new.html",
        ROOT_INO,
        b"page.html",
        RenameFlags::default(),
    )
    .unwrap();

    assert_eq!(fs.read(fh, 0, 100).unwrap(), old);
    fs.release(fh).unwrap();
    assert_clean(&store, &keys);
}

#[test]
fn an_open_file_in_chunks_keeps_its_bytes_after_a_rename_over_it() {
    let (store, keys, fs) = small_items("memfis://rename-over-chunks");
    let old = bytes(5000);
    let ino = support::write(&fs, ROOT_INO, "big.bin", &old);
    support::write(&fs, ROOT_INO, "new.bin", b"small");
    let fh = fs.open(ino, libc::O_RDONLY).unwrap();

    fs.rename(
        ROOT_INO,
        b"new.bin",
        ROOT_INO,
        b"big.bin",
        RenameFlags::default(),
    )
    .unwrap();

    assert!(
        fs.read(fh, 0, 8192).unwrap() == old,
        "the open handle reads the old bytes"
    );
    fs.release(fh).unwrap();
    assert_eq!(
        chunk_keys(&store, &keys),
        0,
        "the chunks go with the last handle"
    );
    assert_clean(&store, &keys);
}

/// Another mount's handle cannot keep bytes this mount deleted (README: it answers ENOENT
/// for bytes it has not read), but it must never read zeros for them: a chunk found missing
/// while the record is gone is ENOENT, not a hole.
#[test]
fn a_chunk_another_mount_removed_is_enoent_not_zeros() {
    let (store, keys, a) = small_items("memfis://chunks-elsewhere");
    let b = MemFs::new(store.clone(), keys.clone(), small_items_cfg()).unwrap();
    let want = bytes(5000);
    let ino = support::write(&a, ROOT_INO, "big.bin", &want);
    let fh = b.open(ino, libc::O_RDONLY).unwrap();
    let first = b.read(fh, 0, 1000).unwrap();
    assert!(first == want[..1000], "the first bytes read");

    a.unlink(ROOT_INO, b"big.bin").unwrap();

    match b.read(fh, 3000, 1000) {
        Err(memfis_fs::FsError::NotFound) => {}
        Ok(got) => assert!(got == want[3000..4000], "old bytes, or ENOENT: never zeros"),
        Err(e) => panic!("unexpected {e:?}"),
    }
    b.release(fh).unwrap();
}

/// A hole of a sparse file this mount removed while open reads as zeros still (its record
/// is gone, but the chunks this mount keeps are the file's).
#[test]
fn a_hole_of_a_sparse_file_removed_here_reads_as_zeros() {
    let (_store, _keys, fs) = small_items("memfis://sparse-removed");
    let (attr, fh) = fs
        .create(ROOT_INO, b"sparse.bin", 0o644, libc::O_RDWR, 0, 0)
        .unwrap();
    fs.write(fh, 4000, b"tail", false).unwrap();
    fs.release(fh).unwrap();
    let fh = fs.open(attr.ino, libc::O_RDONLY).unwrap();

    fs.unlink(ROOT_INO, b"sparse.bin").unwrap();

    assert!(
        fs.read(fh, 0, 1000).unwrap() == vec![0u8; 1000],
        "the hole reads zeros"
    );
    assert_eq!(fs.read(fh, 4000, 4).unwrap(), b"tail");
    fs.release(fh).unwrap();
}

/// Another mount rewrites a file in chunks this mount holds open (and has read part of): the
/// handle reads the old bytes or the new ones (it takes the record as stored now, as a
/// file of one item does), never zeros; past a shrink, nothing.
#[test]
fn a_file_in_chunks_another_mount_rewrote_reads_old_or_new_bytes_never_zeros() {
    let (store, keys, a) = small_items("memfis://chunks-rewritten");
    let b = MemFs::new(store.clone(), keys.clone(), small_items_cfg()).unwrap();
    let old = bytes(5000);
    let new: Vec<u8> = old.iter().map(|x| x.wrapping_add(7) | 1).collect();
    let ino = support::write(&a, ROOT_INO, "big.bin", &old);
    let fh = b.open(ino, libc::O_RDONLY).unwrap();
    assert!(b.read(fh, 0, 1000).unwrap() == old[..1000]);

    let w = a.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    a.write(w, 0, &new, false).unwrap();
    a.release(w).unwrap();

    let got = b.read(fh, 3000, 1000).unwrap();
    assert!(
        got == old[3000..4000] || got == new[3000..4000],
        "old or new bytes, not {} zeros",
        got.iter().filter(|&&x| x == 0).count()
    );

    let w = a.open(ino, libc::O_WRONLY).unwrap();
    a.setattr(
        ino,
        &memfis_fs::SetAttr {
            size: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    a.release(w).unwrap();
    let got = b.read(fh, 4000, 1000).unwrap();
    assert!(
        got.is_empty() || got == old[4000..] || got == new[4000..],
        "nothing past the shrink (or bytes the file had), not {} zeros",
        got.iter().filter(|&&x| x == 0).count()
    );
    b.release(fh).unwrap();
    assert_clean(&store, &keys);
}

/// A publish that finds the record gone (another mount removed the file, or an unlink of this
/// mount landed between the publish's batches) keeps the chunks this mount wrote for its
/// handles, which read them back (they went at once, so an unlink of this mount waiting for
/// the open file kept chunks that were gone, and its handles read zeros: a reviewer's find).
#[test]
fn chunks_written_here_stay_for_the_handles_when_a_publish_finds_the_file_removed() {
    let (store, keys, a) = small_items("memfis://publish-removed");
    let b = MemFs::new(store.clone(), keys.clone(), small_items_cfg()).unwrap();
    let (attr, w) = a
        .create(ROOT_INO, b"big.bin", 0o644, libc::O_RDWR, 0, 0)
        .unwrap();
    a.write(w, 0, b"first", false).unwrap();
    a.flush(w).unwrap();
    let want = bytes(5000);
    a.write(w, 0, &want, false).unwrap(); // in chunks now, not published

    b.unlink(ROOT_INO, b"big.bin").unwrap();
    a.flush(w).unwrap(); // finds the record gone

    assert!(
        a.read(w, 0, 8192).unwrap() == want,
        "the handle reads what it wrote"
    );
    a.release(w).unwrap();
    assert_eq!(
        chunk_keys(&store, &keys),
        0,
        "the chunks go with the last handle"
    );
    assert!(a.getattr(attr.ino).is_err());
    assert_clean(&store, &keys);
}
