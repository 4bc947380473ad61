//! A mkdir whose batch ran with its replies lost undoes itself (it cannot tell what ran). By
//! then another mount may have found the new directory through its entry and made names in
//! it. The undo used to look only at the directory's record (unchanged: a directory's record
//! does not change when names are made in it) and deleted its keys under the new names: a
//! file reached by an entry, in a directory that no longer existed (the kernel-like harness
//! then hung on its heartbeat). A directory something was logged in is someone's now: left.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use memfis_fs::{KeyLayout, MemFs, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store, StoreOp};
use support::*;

/// Runs the first batch that appends to a log with every reply lost, then stops at a gate
/// before its next batch.
struct LoseThenPause {
    inner: Arc<MemoryStore>,
    lost: AtomicBool,
    gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl Store for LoseThenPause {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if self.lost.load(Ordering::SeqCst)
            && let Some((reached, go)) = self.gate.lock().unwrap().take()
        {
            reached.send(()).unwrap();
            go.recv().unwrap();
        }
        let appends = batch.iter().any(|c| {
            matches!(
                c,
                Command::Store {
                    op: StoreOp::Append,
                    ..
                }
            )
        });
        if !appends || self.lost.swap(true, Ordering::SeqCst) {
            return self.inner.execute(batch);
        }
        let n = batch.len();
        self.inner.execute(batch);
        replies_lost(n)
    }
}

#[test]
fn a_mkdir_undone_after_lost_replies_leaves_a_directory_others_made_names_in() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://undo-mkdir").unwrap();
    let (at, reached) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    let creator = MemFs::new(
        LoseThenPause {
            inner: store.clone(),
            lost: AtomicBool::new(false),
            gate: Mutex::new(Some((at, wait))),
        },
        keys.clone(),
        uncached(),
    )
    .unwrap();
    let other = open(&store, &keys);
    std::thread::scope(|s| {
        let made = s.spawn(|| creator.mkdir(ROOT_INO, b"d", 0o755, 0, 0));
        reached.recv().unwrap(); // the mkdir's batch ran, its replies lost
        let d = other.lookup(ROOT_INO, b"d").unwrap().ino;
        write(&other, d, "x", b"made in the new directory");
        go.send(()).unwrap();
        let _ = made.join().unwrap(); // EIO or success: either may be answered
    });
    let d = other
        .lookup(ROOT_INO, b"d")
        .expect("the directory stays")
        .ino;
    assert_eq!(names(&other, d), ["x"]);
    let x = other.lookup(d, b"x").unwrap().ino;
    let fh = other.open(x, libc::O_RDONLY).unwrap();
    assert_eq!(
        other.read(fh, 0, 100).unwrap(),
        b"made in the new directory"
    );
    other.release(fh).unwrap();
    let report = memfis_fs::check::check(&*store, &keys).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
