//! `memfis load` creates files in batches with the source's times. When a batch's publish
//! finds a namespace operation ran meanwhile (another mount's rename, the heartbeat's
//! compaction), its files are published again one by one; they must keep those times, not
//! take the time of the load.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memfis_fs::files::bulk::NewFile;
use memfis_fs::layout::record::{Inode, Kind, Time};
use memfis_fs::{KeyLayout, MemFs, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store};

/// Shows the publish batch (record cas + lock read) a lock held by another operation, once.
struct LockDuringPublish {
    inner: Arc<MemoryStore>,
    lock_key: Vec<u8>,
    done: AtomicBool,
}

impl Store for LockDuringPublish {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        let publish = batch.iter().any(|c| matches!(c, Command::Cas { .. }))
            && batch.iter().any(|c| c.key() == self.lock_key.as_slice());
        if publish && !self.done.swap(true, Ordering::SeqCst) {
            let held = br#"{"owner":"other-mount/1"}"#;
            self.inner.raw_set(&self.lock_key, held);
            let out = self.inner.execute(batch);
            self.inner.raw_delete(&self.lock_key); // the operation ends
            return out;
        }
        self.inner.execute(batch)
    }
}

#[test]
fn files_published_again_keep_their_times() {
    let inner = Arc::new(MemoryStore::new(1 << 20, 64 << 20));
    let keys = KeyLayout::new("memfis://times").unwrap();
    let store = LockDuringPublish {
        inner: inner.clone(),
        lock_key: keys.ns_lock(),
        done: AtomicBool::new(false),
    };
    let fs = MemFs::new(store, keys, support::uncached()).unwrap();
    let old = Time {
        s: 1_600_000_000,
        ns: 123_456_789,
    };
    let files = (0..5)
        .map(|i| {
            let mut record = Inode::new(Kind::File, 0o644, 0, 0, Vec::new());
            record.mtime = old;
            record.atime = old;
            NewFile {
                name: format!("f{i}").into_bytes(),
                record,
                bytes: Arc::new(vec![b'x'; 100 + i]),
            }
        })
        .collect();
    let results = fs.create_files(ROOT_INO, files).unwrap();
    for (i, r) in results.into_iter().enumerate() {
        let ino = r.unwrap();
        let a = fs.getattr(ino).unwrap();
        assert_eq!(
            (a.size, a.mtime, a.atime),
            (100 + i as u64, old, old),
            "f{i}"
        );
    }
    assert!(
        memfis_fs::check::check(&*inner, fs.keys())
            .unwrap()
            .problems
            .is_empty()
    );
}
