//! A dead mount left the namespace lock with a rename's intent in it, and several threads of
//! one live mount meet it at once (the kernel sends many requests at a time). One of them
//! takes the lock over and completes the intent. The others used to find that thread's new
//! owner among the mount's own leftover owners and take the lock over again, each running the
//! same completion beside the first: two walks over a moved tree at once left directories
//! that no name reached (the kernel-like harness found it). Now one thread of a mount takes
//! over at a time, and the others wait for it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use memfis_fs::{KeyLayout, MemFs, ROOT_INO, RenameFlags};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Reply, Store, StoreError};
use support::*;

/// A mount's store that dies (every batch fails) right after the batch that stored an intent
/// in the namespace lock.
struct DiesAfterIntent {
    inner: Arc<MemoryStore>,
    lock_key: Vec<u8>,
    dead: AtomicBool,
}

impl Store for DiesAfterIntent {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if self.dead.load(Ordering::SeqCst) {
            return batch
                .iter()
                .map(|_| {
                    Err(StoreError::Io {
                        server: "test".into(),
                        message: "the mount died".into(),
                    })
                })
                .collect();
        }
        let stores_intent = batch.iter().any(|c| {
            matches!(c, Command::Store { key, value, .. }
                if *key == self.lock_key && value.windows(6).any(|w| w == b"intent"))
        });
        let results = self.inner.execute(batch);
        if stores_intent {
            self.dead.store(true, Ordering::SeqCst);
        }
        results
    }
}

/// A slow store (every batch waits a little, so that completions overlap) that counts the
/// `cas` commands that took the namespace lock over.
struct SlowCountingTakeovers {
    inner: Arc<MemoryStore>,
    lock_key: Vec<u8>,
    takeovers: AtomicUsize,
}

impl Store for SlowCountingTakeovers {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        std::thread::sleep(Duration::from_millis(2));
        let cas_on_lock: Vec<bool> = batch
            .iter()
            .map(|c| matches!(c, Command::Cas { key, .. } if *key == self.lock_key))
            .collect();
        let results = self.inner.execute(batch);
        for (is_cas, r) in cas_on_lock.iter().zip(&results) {
            if *is_cas && matches!(r, Ok(Reply::Stored)) {
                self.takeovers.fetch_add(1, Ordering::SeqCst);
            }
        }
        results
    }
}

#[test]
fn threads_of_one_mount_meeting_a_dead_mounts_lock_take_it_over_once() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://one-taker").unwrap();
    let setup = open(&store, &keys);
    // A tree whose move takes many batches to complete.
    let top = setup.mkdir(ROOT_INO, b"top", 0o755, 0, 0).unwrap().ino;
    for d in 0..6 {
        let dir = setup
            .mkdir(top, format!("d{d}").as_bytes(), 0o755, 0, 0)
            .unwrap()
            .ino;
        for f in 0..3 {
            write(&setup, dir, &format!("f{f}"), b"bytes");
        }
    }

    let lock_key = keys.ns_lock();
    // B mounts first: a mount completes what it finds in the lock when it starts.
    let slow = SlowCountingTakeovers {
        inner: store.clone(),
        lock_key: lock_key.clone(),
        takeovers: AtomicUsize::new(0),
    };
    let b = MemFs::new(slow, keys.clone(), uncached()).unwrap();
    let dying = DiesAfterIntent {
        inner: store.clone(),
        lock_key: lock_key.clone(),
        dead: AtomicBool::new(false),
    };
    let a = MemFs::new(dying, keys.clone(), uncached()).unwrap();
    let moved = a.rename(ROOT_INO, b"top", ROOT_INO, b"moved", RenameFlags::default());
    assert!(moved.is_err(), "the dying mount's rename went through");
    store.delete(&keys.alive(a.mount_id())).unwrap(); // A is gone
    assert!(store.get(&lock_key).unwrap().is_some(), "A left the lock");

    std::thread::scope(|s| {
        for t in 0..4 {
            let b = &b;
            s.spawn(move || write(b, ROOT_INO, &format!("new{t}"), b"new"));
        }
    });

    assert_eq!(
        b.store().takeovers.load(Ordering::SeqCst),
        1,
        "the lock was taken over more than once"
    );
    assert!(store.get(&lock_key).unwrap().is_none(), "the lock is free");
    let fresh = open(&store, &keys);
    assert_eq!(
        names(&fresh, ROOT_INO),
        ["moved", "new0", "new1", "new2", "new3"]
    );
    let report = memfis_fs::check::check(&*store, &keys).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
