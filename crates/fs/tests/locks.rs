//! File locks between mounts of one in-memory store (`memfis_fs::locks`): exclusion, what a
//! dead mount's locks become, what a lock makes visible, and the round trips each step costs
//! (the figures docs/store-layout.md and docs/benchmarks.md give).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use memfis_fs::locks::{LockRequest, OFFSET_MAX};
use memfis_fs::{KeyLayout, MemFs, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store};
use support::*;

/// A store that counts the batches (round trips) sent to it.
struct Counting {
    inner: Arc<MemoryStore>,
    batches: AtomicU64,
}

impl Store for Counting {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.inner.execute(batch)
    }
}

type CFs = MemFs<Arc<Counting>>;

fn counted(store: &Arc<MemoryStore>, keys: &KeyLayout) -> (CFs, Arc<Counting>) {
    let c = Arc::new(Counting {
        inner: store.clone(),
        batches: AtomicU64::new(0),
    });
    (MemFs::new(c.clone(), keys.clone(), uncached()).unwrap(), c)
}

fn trips(c: &Counting, f: impl FnOnce()) -> u64 {
    let before = c.batches.load(Ordering::SeqCst);
    f();
    c.batches.load(Ordering::SeqCst) - before
}

fn whole(owner: u64, fh: u64, write: bool) -> LockRequest {
    LockRequest {
        owner,
        fh,
        pid: 100 + owner as u32,
        write,
        start: 0,
        end: OFFSET_MAX,
    }
}

fn setup() -> (Arc<MemoryStore>, KeyLayout, u64) {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://t").unwrap();
    let fs = open(&store, &keys);
    let ino = write(&fs, ROOT_INO, "f", b"old");
    (store, keys, ino)
}

#[test]
fn two_mounts_exclude_and_an_uncontended_lock_or_unlock_costs_one_round_trip() {
    let (store, keys, ino) = setup();
    let (a, ca) = counted(&store, &keys);
    let (b, cb) = counted(&store, &keys);
    let fa = a.open(ino, libc::O_RDWR).unwrap();
    let fb = b.open(ino, libc::O_RDWR).unwrap();

    // No list yet: the `add` takes it in one round trip.
    let n = trips(&ca, || {
        assert_eq!(a.try_lock(ino, &whole(1, fa, true)).unwrap(), Ok(false))
    });
    assert_eq!(n, 1);
    // B is refused; the holder is reported with its pid (same host) and range.
    let held = b.try_lock(ino, &whole(1, fb, false)).unwrap().unwrap_err();
    assert_eq!(
        (held.write, held.pid, held.start, held.end),
        (true, 101, 0, OFFSET_MAX)
    );
    // Once A's mount is known alive (for a second), a refusal costs one round trip.
    let n = trips(&cb, || {
        assert!(b.try_lock(ino, &whole(2, fb, true)).unwrap().is_err())
    });
    assert_eq!(n, 1);
    assert!(b.test_lock(ino, &whole(2, fb, false)).unwrap().is_some());
    // Bytes A does not hold are free to B.
    let mut tail = whole(2, fb, true);
    tail.start = 1 << 40;
    tail.end = 1 << 40;
    let mut a_head = whole(1, fa, true);
    a_head.end = 9;
    // A keeps only bytes 0..=9: the same lock again there, then an unlock of the rest.
    a.try_lock(ino, &a_head).unwrap().unwrap();
    a.unlock(fa, ino, 1, 10, OFFSET_MAX).unwrap();
    assert_eq!(b.try_lock(ino, &tail).unwrap(), Ok(false));
    assert!(b.try_lock(ino, &whole(2, fb, true)).unwrap().is_err());

    // An unlock after another mount changed the list: the `cas` on the list A last saw
    // fails, the `gets` after it gives the current one, the next `cas` lands (A's file holds
    // no writes to publish).
    let n = trips(&ca, || a.unlock(fa, ino, 1, 0, OFFSET_MAX).unwrap());
    assert_eq!(n, 2);
    b.unlock(fb, ino, 2, 0, OFFSET_MAX).unwrap();
    let n = trips(&ca, || {
        assert_eq!(a.try_lock(ino, &whole(1, fa, true)).unwrap(), Ok(false))
    });
    assert_eq!(n, 2);
    // Uncontended, each unlock and lock is one round trip: a `cas` on the list this mount
    // last saw (the list left empty stays, to expire, so no `add`).
    for _ in 0..3 {
        let n = trips(&ca, || a.unlock(fa, ino, 1, 0, OFFSET_MAX).unwrap());
        assert_eq!(n, 1);
        let n = trips(&ca, || {
            assert_eq!(a.try_lock(ino, &whole(1, fa, true)).unwrap(), Ok(false))
        });
        assert_eq!(n, 1);
    }
    // A close of a file by an owner that never locked it costs nothing.
    let n = trips(&cb, || b.release_locks(ino, 77).unwrap());
    assert_eq!(n, 0);
    // The owner's close releases it; B gets it then.
    a.release_locks(ino, 1).unwrap();
    assert_eq!(b.try_lock(ino, &whole(2, fb, true)).unwrap(), Ok(false));
}

#[test]
fn a_dead_mounts_locks_are_ignored_and_dropped() {
    let (store, keys, ino) = setup();
    let a = open(&store, &keys);
    let b = open(&store, &keys);
    let fa = a.open(ino, libc::O_RDWR).unwrap();
    let fb = b.open(ino, libc::O_RDWR).unwrap();
    a.try_lock(ino, &whole(1, fa, true)).unwrap().unwrap();
    assert!(b.try_lock(ino, &whole(2, fb, true)).unwrap().is_err());
    // A's liveness key expires (the mount died).
    store.raw_delete(&keys.alive(a.mount_id()));
    std::thread::sleep(Duration::from_millis(1100)); // past B's memory of A alive
    assert_eq!(b.try_lock(ino, &whole(2, fb, true)).unwrap(), Ok(false));
    let list = store.get(&keys.lock_table(ino)).unwrap().unwrap().value;
    let text = String::from_utf8(list).unwrap();
    assert!(!text.contains(a.mount_id()), "A's entry pruned: {text}");
    assert!(text.contains(b.mount_id()));
}

#[test]
fn a_granted_lock_sees_what_the_last_holder_wrote_and_an_unlock_publishes() {
    let (store, keys, ino) = setup();
    let a = open(&store, &keys);
    let b = open(&store, &keys);
    let fa = a.open(ino, libc::O_RDWR).unwrap();
    assert_eq!(a.read(fa, 0, 10).unwrap(), b"old");
    // B locks, writes without closing, and unlocks: the unlock publishes the bytes.
    let fb = b.open(ino, libc::O_RDWR).unwrap();
    b.try_lock(ino, &whole(2, fb, true)).unwrap().unwrap();
    b.write(fb, 0, b"newer", false).unwrap();
    b.unlock(fb, ino, 2, 0, OFFSET_MAX).unwrap();
    // A's open file read "old" before; its lock tells that the file changed and reads anew.
    assert_eq!(a.try_lock(ino, &whole(1, fa, true)).unwrap(), Ok(true));
    assert_eq!(a.read(fa, 0, 10).unwrap(), b"newer");
    // Nothing changed since: a lock says so.
    a.unlock(fa, ino, 1, 0, OFFSET_MAX).unwrap();
    assert_eq!(a.try_lock(ino, &whole(1, fa, true)).unwrap(), Ok(false));
}

#[test]
fn a_waiter_gets_the_lock_when_another_mount_lets_go() {
    let (store, keys, ino) = setup();
    let a = open(&store, &keys);
    let b = Arc::new(open(&store, &keys));
    let fa = a.open(ino, libc::O_RDWR).unwrap();
    let fb = b.open(ino, libc::O_RDWR).unwrap();
    a.try_lock(ino, &whole(1, fa, true)).unwrap().unwrap();
    let waiter = {
        let b = b.clone();
        // tid 0: no thread to watch for signals.
        std::thread::spawn(move || b.lock_wait(ino, &whole(2, fb, true), 0))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished());
    a.unlock(fa, ino, 1, 0, OFFSET_MAX).unwrap();
    assert!(waiter.join().unwrap().is_ok());
    assert!(a.try_lock(ino, &whole(1, fa, false)).unwrap().is_err());
}

#[test]
fn a_release_through_one_handle_keeps_the_owners_lock_taken_through_another() {
    // The kernel may hand a new open file the owner number of one whose RELEASE is still
    // on its way: that RELEASE must not take the new lock with it.
    let (store, keys, ino) = setup();
    let a = open(&store, &keys);
    let b = open(&store, &keys);
    let old = a.open(ino, libc::O_RDWR).unwrap();
    let new = a.open(ino, libc::O_RDWR).unwrap();
    let fb = b.open(ino, libc::O_RDWR).unwrap();
    a.try_lock(ino, &whole(9, old, true)).unwrap().unwrap();
    a.try_lock(ino, &whole(9, new, true)).unwrap().unwrap();
    a.release(old).unwrap();
    a.release_handle_locks(old, ino, Some(9)).unwrap();
    assert!(b.try_lock(ino, &whole(2, fb, true)).unwrap().is_err());
    a.release_handle_locks(new, ino, Some(9)).unwrap();
    assert_eq!(b.try_lock(ino, &whole(2, fb, true)).unwrap(), Ok(false));
}

/// A store whose next batch runs with every reply lost (`lose_next`), or whose next lone
/// read of a lock list stops at a gate after it ran (`pause_next_read`).
struct Faulty {
    inner: Arc<MemoryStore>,
    lose_next: std::sync::atomic::AtomicBool,
    pause_next_read:
        std::sync::Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
}

impl Store for Faulty {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if self.lose_next.swap(false, Ordering::SeqCst) {
            let n = batch.len();
            self.inner.execute(batch);
            return replies_lost(n);
        }
        let lone_list_read =
            matches!(&batch[..], [Command::Gets(k)] if k.windows(2).any(|w| w == b"%L"));
        let results = self.inner.execute(batch);
        if lone_list_read && let Some((reached, go)) = self.pause_next_read.lock().unwrap().take() {
            reached.send(()).unwrap();
            let _ = go.recv_timeout(Duration::from_secs(5));
        }
        results
    }
}

fn faulty(store: &Arc<MemoryStore>, keys: &KeyLayout) -> (MemFs<Arc<Faulty>>, Arc<Faulty>) {
    let f = Arc::new(Faulty {
        inner: store.clone(),
        lose_next: Default::default(),
        pause_next_read: Default::default(),
    });
    (MemFs::new(f.clone(), keys.clone(), uncached()).unwrap(), f)
}

/// A lock whose write ran with its reply lost may be held in the store: the caller got an
/// error, but the owner's close must still release it (it used to be forgotten, and every
/// other owner on every mount stayed locked out while the mount lived).
#[test]
fn a_lock_whose_reply_was_lost_is_released_at_close() {
    let (store, keys, ino) = setup();
    let (a, fault) = faulty(&store, &keys);
    let b = open(&store, &keys);
    let (fa, fb) = (
        a.open(ino, libc::O_RDWR).unwrap(),
        b.open(ino, libc::O_RDWR).unwrap(),
    );
    fault.lose_next.store(true, Ordering::SeqCst);
    assert!(a.try_lock(ino, &whole(1, fa, true)).is_err());
    assert!(
        b.try_lock(ino, &whole(2, fb, true)).unwrap().is_err(),
        "held in the store"
    );
    a.release_locks(ino, 1).unwrap(); // the close
    assert_eq!(b.try_lock(ino, &whole(2, fb, true)).unwrap(), Ok(false));
}

/// An `F_GETLK` whose read of the list is answered before a lock of the same mount is
/// written, but remembered after it, must not make the mount forget that lock: an unlock
/// trusted the remembered list, found nothing to change, and left the lock held for good.
#[test]
fn a_test_racing_a_lock_does_not_make_its_unlock_a_no_op() {
    let (store, keys, ino) = setup();
    let (a, fault) = faulty(&store, &keys);
    let b = open(&store, &keys);
    let (fa, fb) = (
        a.open(ino, libc::O_RDWR).unwrap(),
        b.open(ino, libc::O_RDWR).unwrap(),
    );
    let range = |owner, fh, start, end| LockRequest {
        start,
        end,
        ..whole(owner, fh, true)
    };
    // The other mount holds bytes 100-199: the list exists before.
    b.try_lock(ino, &range(2, fb, 100, 199)).unwrap().unwrap();
    let (reached_tx, reached) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    *fault.pause_next_read.lock().unwrap() = Some((reached_tx, go_rx));
    std::thread::scope(|s| {
        let tested = s.spawn(|| a.test_lock(ino, &range(3, fa, 0, 9)));
        reached.recv().unwrap(); // the list read (the other mount's lock), not yet remembered
        let locked = s.spawn(|| a.try_lock(ino, &range(1, fa, 0, 9)));
        std::thread::sleep(Duration::from_millis(100));
        go.send(()).unwrap();
        assert_eq!(tested.join().unwrap().unwrap(), None);
        assert_eq!(locked.join().unwrap().unwrap(), Ok(false));
    });
    a.unlock(fa, ino, 1, 0, 9).unwrap();
    assert_eq!(
        b.try_lock(ino, &range(4, fb, 0, 9)).unwrap(),
        Ok(false),
        "unlocked"
    );
}
