//! An unlink of a file's last name releases the namespace lock in its last batch. When that
//! batch's replies are lost after its commands ran, the lock is free, and another mount may
//! take it before the unlink finds out. The unlink used to store its intent in the lock again
//! with a plain `set`, taking the lock from the other mount (two mounts then changed names at
//! once); now it takes the lock back with `add`, waiting for the other mount's operation, and
//! only keeps it without a write when the lock still names it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use memfis_fs::{KeyLayout, MemFs, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store, StoreOp};
use support::*;

/// Runs the first batch that deletes the namespace lock, then, as another mount would,
/// takes the lock for `other_owner`, and answers the batch with every reply lost.
struct LoseReleaseReplies {
    inner: Arc<MemoryStore>,
    lock_key: Vec<u8>,
    other_lock: Vec<u8>,
    done: AtomicBool,
    /// Told once the other mount holds the lock.
    taken: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl Store for LoseReleaseReplies {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        let releases = batch
            .iter()
            .any(|c| matches!(c, Command::Delete(k) if *k == self.lock_key));
        if !releases || batch.len() < 2 || self.done.swap(true, Ordering::SeqCst) {
            return self.inner.execute(batch);
        }
        let n = batch.len();
        self.inner.execute(batch);
        self.inner
            .run(Command::store(
                StoreOp::Add,
                &self.lock_key,
                &self.other_lock,
            ))
            .unwrap();
        if let Some(taken) = self.taken.lock().unwrap().take() {
            taken.send(()).unwrap();
        }
        replies_lost(n)
    }
}

#[test]
fn an_unlink_whose_release_reply_is_lost_does_not_take_the_lock_from_another_mount() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://release-lost").unwrap();
    let setup = open(&store, &keys);
    write(&setup, ROOT_INO, "f", b"f");
    // The other mount is alive (its liveness key is there): its lock is waited for.
    let other = open(&store, &keys);
    let other_lock = format!(r#"{{"owner":"{}/op"}}"#, other.mount_id());
    let (taken_tx, taken) = std::sync::mpsc::channel();
    let unlinker = MemFs::new(
        LoseReleaseReplies {
            inner: store.clone(),
            lock_key: keys.ns_lock(),
            other_lock: other_lock.clone().into_bytes(),
            done: AtomicBool::new(false),
            taken: std::sync::Mutex::new(Some(taken_tx)),
        },
        keys.clone(),
        uncached(),
    )
    .unwrap();
    std::thread::scope(|s| {
        let unlinked = s.spawn(|| unlinker.unlink(ROOT_INO, b"f"));
        // While the other mount's operation runs, its lock stays its own.
        taken.recv().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let held = store.get(&keys.ns_lock()).unwrap().map(|i| i.value);
        assert_eq!(
            held.as_deref(),
            Some(other_lock.as_bytes()),
            "the lock another mount took"
        );
        store.delete(&keys.ns_lock()).unwrap(); // its operation ends
        let _ = unlinked.join().unwrap();
    });
    assert!(
        store.get(&keys.ns_lock()).unwrap().is_none(),
        "the lock is free"
    );
    assert!(names(&setup, ROOT_INO).is_empty());
    let report = memfis_fs::check::check(&*store, &keys).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
