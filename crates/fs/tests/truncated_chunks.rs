//! A file in chunks truncated to one item, whose first publish round stored the record but
//! found its served key taken (`add` refused: bytes left there by another mount's round): the
//! round went again from the record just stored, which no longer named the chunks, and the
//! chunks stayed in the store for good (found by an attack with `dd` on one mount and `mv`
//! on another). The chunks now go as soon as the record stops naming them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use memfis_fs::{FsConfig, KeyLayout, MemFs, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{Command, Store, StoreOp};

#[test]
fn chunks_go_when_a_truncate_finds_its_served_key_taken() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://trunc").unwrap();
    let cfg = FsConfig {
        cache_ttl: Duration::ZERO,
        item_size_max: Some(1536),
        ..FsConfig::default()
    };
    let fs = MemFs::new(store.clone(), keys.clone(), cfg).unwrap();
    let ino = support::write(&fs, ROOT_INO, "big.html", &[7u8; 5000]);
    let chunk_prefix = keys.chunk_prefix();
    let chunks = || {
        store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(&chunk_prefix))
            .count()
    };
    assert!(chunks() > 1, "the file is in chunks");
    // Bytes another mount's round left at the served key (a file in chunks has none).
    let served = keys.data(b"/big.html");
    store.execute(vec![Command::store(StoreOp::Set, &served, b"stale")]);

    let fh = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    fs.release(fh).unwrap();

    assert_eq!(chunks(), 0, "chunks no record names");
    assert_eq!(fs.getattr(ino).unwrap().size, 0);
    let report = memfis_fs::check::check(&store, &keys).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}
