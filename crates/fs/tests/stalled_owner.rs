//! A mount that stalls past its liveness while it holds the namespace lock (stopped,
//! swapped out, a paused VM) and then resumes. Another mount took the lock over meanwhile
//! and completed the operation, and a third holds the lock now. The resumed mount used to go
//! on: its remaining batches ran beside the new owner's, and its release deleted the lock
//! that mount held. Now the thread holding the lock sends nothing once the mount's last
//! liveness refresh is older than the stall limit; the mount's heartbeat completes the
//! operation later under a lock taken afresh.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memfis_fs::{FsConfig, KeyLayout, MemFs, ROOT_INO, RenameFlags};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store};
use support::*;

type Gate = Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>;

/// Picks the batch after which a mount stops.
type Picker = Box<dyn Fn(&[Command], &[CmdResult]) -> bool + Send + Sync>;

/// A mount's store that stops at the gate before the first batch after one that `after`
/// picks.
struct PauseAfter {
    inner: Arc<MemoryStore>,
    after: Picker,
    armed: std::sync::atomic::AtomicBool,
    gate: Gate,
}

impl Store for PauseAfter {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
            && let Some((reached, go)) = self.gate.lock().unwrap().take()
        {
            reached.send(()).unwrap();
            go.recv().unwrap();
        }
        let results = self.inner.execute(batch.clone());
        if self.gate.lock().unwrap().is_some() && (self.after)(&batch, &results) {
            self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        results
    }
}

fn pausing(
    store: &Arc<MemoryStore>,
    after: impl Fn(&[Command], &[CmdResult]) -> bool + Send + Sync + 'static,
) -> (PauseAfter, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (reached_tx, reached_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let store = PauseAfter {
        inner: store.clone(),
        after: Box::new(after),
        armed: Default::default(),
        gate: Mutex::new(Some((reached_tx, go_rx))),
    };
    (store, reached_rx, go_tx)
}

#[test]
fn a_lock_owner_that_stalled_past_its_liveness_sends_nothing_when_it_resumes() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://stalled-owner").unwrap();
    let setup = open(&store, &keys);
    write(&setup, ROOT_INO, "f", b"bytes of f");
    write(&setup, ROOT_INO, "h", b"h");
    write(&setup, ROOT_INO, "x", b"x");

    let lock_key = keys.ns_lock();
    // A: pauses once its rename stored its intent in the lock.
    let intent_stored = {
        let lock_key = lock_key.clone();
        move |batch: &[Command], _: &[CmdResult]| {
            batch.iter().any(|c| {
                matches!(c, Command::Store { key, value, .. }
                    if *key == lock_key && value.windows(6).any(|w| w == b"intent"))
            })
        }
    };
    let (a_store, a_reached, a_go) = pausing(&store, intent_stored);
    let stall_limit = Duration::from_millis(300);
    let cfg = FsConfig {
        stall_limit,
        ..uncached()
    };
    let a = MemFs::new(a_store, keys.clone(), cfg).unwrap();
    a.arm_stall_fence();
    // C: pauses once it took the lock.
    let took_lock = {
        let lock_key = lock_key.clone();
        move |batch: &[Command], results: &[CmdResult]| {
            matches!(batch.first(), Some(Command::Store { key, .. }) if *key == lock_key)
                && matches!(results.first(), Some(Ok(memfis_memcache::Reply::Stored)))
        }
    };
    let (c_store, c_reached, c_go) = pausing(&store, took_lock);
    let c = MemFs::new(c_store, keys.clone(), uncached()).unwrap();
    let b = open(&store, &keys);

    std::thread::scope(|s| {
        a.heartbeat().unwrap();
        let renamed = s.spawn(|| a.rename(ROOT_INO, b"f", ROOT_INO, b"g", RenameFlags::default()));
        a_reached.recv().unwrap(); // A holds the lock, its intent stored: it stalls
        // Its liveness key expires; B takes the lock over, completes the rename, goes on.
        store.delete(&keys.alive(a.mount_id())).unwrap();
        b.unlink(ROOT_INO, b"x").unwrap();
        // C takes the lock and holds it.
        let unlinked = s.spawn(|| c.unlink(ROOT_INO, b"h"));
        c_reached.recv().unwrap();
        std::thread::sleep(stall_limit + Duration::from_millis(100));
        // A resumes.
        a_go.send(()).unwrap();
        let renamed = renamed.join().unwrap();
        let held = store.get(&lock_key).unwrap().map(|i| i.value);
        // (C goes on before anything is asserted: a failed assertion must not leave it
        // waiting.)
        c_go.send(()).unwrap();
        unlinked.join().unwrap().unwrap();
        assert!(renamed.is_err(), "the stalled rename went on");
        let owner = format!("\"{}/", c.mount_id());
        let held = held.map(|v| String::from_utf8_lossy(&v).into_owned());
        assert!(
            held.as_ref().is_some_and(|v| v.contains(&owner)),
            "the lock C held when A resumed: {held:?}"
        );
    });
    // A's heartbeat finishes what it left, under a lock taken afresh.
    a.heartbeat().unwrap();
    assert!(store.get(&lock_key).unwrap().is_none(), "the lock is free");
    let fresh = open(&store, &keys);
    assert_eq!(names(&fresh, ROOT_INO), ["g"]);
    let report = memfis_fs::check::check(&*store, &keys).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
