//! A create whose batch ran but whose replies were lost, on a store that then stays down: the
//! create fails, and its undo cannot run, so the mount keeps it for the heartbeat. Meanwhile
//! the name is live in the store, and another mount opens it and writes a file there. When the
//! store answers again, the heartbeat must not take back a create someone has written since.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use memfis_fs::{KeyLayout, MemFs, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store, StoreError, StoreOp};
use support::*;

const UP: u8 = 0;
/// The next batch with a log append runs, its replies are lost, and the store goes down.
const LOSE_NEXT_CREATE: u8 = 1;
const DOWN: u8 = 2;

struct Flaky {
    inner: Arc<MemoryStore>,
    mode: AtomicU8,
}

fn lost(batch: &[Command]) -> Vec<CmdResult> {
    let e = StoreError::Io {
        server: "test".into(),
        message: "connection reset".into(),
    };
    batch.iter().map(|_| Err(e.clone())).collect()
}

impl Store for Flaky {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        match self.mode.load(Ordering::SeqCst) {
            DOWN => lost(&batch),
            LOSE_NEXT_CREATE
                if batch.iter().any(|c| {
                    matches!(
                        c,
                        Command::Store {
                            op: StoreOp::Append,
                            ..
                        }
                    )
                }) =>
            {
                let answered = lost(&batch);
                self.inner.execute(batch);
                self.mode.store(DOWN, Ordering::SeqCst);
                answered
            }
            _ => self.inner.execute(batch),
        }
    }
}

#[test]
fn a_queued_undo_leaves_a_file_another_mount_wrote_since() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://unsettled").unwrap();
    let other = open(&store, &keys);
    let flaky = Arc::new(Flaky {
        inner: store.clone(),
        mode: AtomicU8::new(UP),
    });
    let fs = MemFs::new(flaky.clone(), keys.clone(), uncached()).unwrap();

    flaky.mode.store(LOSE_NEXT_CREATE, Ordering::SeqCst);
    assert!(
        fs.create(ROOT_INO, b"page.html", 0o644, libc::O_WRONLY, 0, 0)
            .is_err()
    );
    assert_eq!(flaky.mode.load(Ordering::SeqCst), DOWN, "the create ran");
    // The name is there; another mount writes the file.
    let ino = other.lookup(ROOT_INO, b"page.html").unwrap().ino;
    let fh = other.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    other.write(fh, 0, b"rendered", false).unwrap();
    other.release(fh).unwrap();

    // The store answers again: the heartbeat finishes what the create left.
    assert!(fs.heartbeat().is_err(), "the store is still down");
    flaky.mode.store(UP, Ordering::SeqCst);
    fs.heartbeat().unwrap();

    let fresh = open(&store, &keys);
    let ino = fresh.lookup(ROOT_INO, b"page.html").unwrap().ino;
    let fh = fresh.open(ino, libc::O_RDONLY).unwrap();
    assert_eq!(fresh.read(fh, 0, 100).unwrap(), b"rendered");
    fresh.release(fh).unwrap();
    let report = memfis_fs::check::check(&store, &keys).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[test]
fn a_queued_undo_takes_back_a_create_no_one_used_with_its_served_key() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://unsettled").unwrap();
    let flaky = Arc::new(Flaky {
        inner: store.clone(),
        mode: AtomicU8::new(UP),
    });
    let fs = MemFs::new(flaky.clone(), keys.clone(), uncached()).unwrap();
    flaky.mode.store(LOSE_NEXT_CREATE, Ordering::SeqCst);
    assert!(fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).is_err());
    flaky.mode.store(UP, Ordering::SeqCst);
    fs.heartbeat().unwrap();
    // A served file: its empty data key (whose `add` reply was lost) goes too, or nginx would
    // answer 200 for a name that does not exist.
    flaky.mode.store(LOSE_NEXT_CREATE, Ordering::SeqCst);
    assert!(
        fs.create(ROOT_INO, b"e.html", 0o644, libc::O_WRONLY, 0, 0)
            .is_err()
    );
    flaky.mode.store(UP, Ordering::SeqCst);
    fs.heartbeat().unwrap();
    let fresh = open(&store, &keys);
    assert!(names(&fresh, ROOT_INO).is_empty());
    assert!(store.get(b"memfis://unsettled/e.html").unwrap().is_none());
    let report = memfis_fs::check::check(&store, &keys).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}
