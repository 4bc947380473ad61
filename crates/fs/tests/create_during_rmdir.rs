//! A create racing an rmdir of its directory on another mount, the two interleaved command
//! by command (memcached runs one connection's pipeline in order, but other connections'
//! commands run in between): the create's `incr` of the log sequence lands before the rmdir
//! reads it, its `+` record after the rmdir replayed the (empty) log. The rmdir fences the
//! sequence and removes the directory; the create, which saw the lock held in its batch,
//! waited for the rmdir and then answered success with its entry and record in a directory
//! that no longer exists (found by the interleaving soak). Now a create that waited for a
//! namespace operation checks that its directory is still there, and takes itself back.
//! The last test cuts a mkdir the same way while another mount removes the new directory
//! itself.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use memfis_fs::{FsError, KeyLayout, MemFs, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store, StoreOp};
use support::*;

type Gate = Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>;

fn wait_at(gate: &Gate) {
    if let Some((reached, go)) = gate.lock().unwrap().take() {
        reached.send(()).unwrap();
        go.recv().unwrap();
    }
}

/// The creating mount's store: its first batch with an `append` runs up to the append,
/// stops at the gate, then runs the rest.
struct SplitAtAppend {
    inner: Arc<MemoryStore>,
    gate: Gate,
    /// Set once the split batch ran if the mount dies there: every later command fails.
    dies_after_split: bool,
    /// The batch runs whole, and the gate comes after it (before the mount's next batch).
    pause_after_batch: bool,
    dead: AtomicBool,
}

impl Store for SplitAtAppend {
    fn execute(&self, mut batch: Vec<Command>) -> Vec<CmdResult> {
        if self.dead.load(Ordering::SeqCst) {
            let gone = || memfis_memcache::StoreError::Io {
                server: "killed mount".into(),
                message: "the process is gone".into(),
            };
            return batch.iter().map(|_| Err(gone())).collect();
        }
        let at = batch.iter().position(|c| {
            matches!(
                c,
                Command::Store {
                    op: StoreOp::Append,
                    ..
                }
            )
        });
        match at {
            Some(_) if self.pause_after_batch && self.gate.lock().unwrap().is_some() => {
                let results = self.inner.execute(batch);
                wait_at(&self.gate);
                results
            }
            Some(at) if self.gate.lock().unwrap().is_some() => {
                let rest = batch.split_off(at);
                let mut results = self.inner.execute(batch);
                wait_at(&self.gate);
                results.extend(self.inner.execute(rest));
                if self.dies_after_split {
                    self.dead.store(true, Ordering::SeqCst);
                }
                results
            }
            _ => self.inner.execute(batch),
        }
    }
}

/// A mount whose first batch with an `append` stops there (`SplitAtAppend`): the mount, the
/// receiver told when it stops, the sender that lets it go on.
fn split_creator(
    store: &Arc<MemoryStore>,
    keys: &KeyLayout,
) -> (MemFs<SplitAtAppend>, mpsc::Receiver<()>, mpsc::Sender<()>) {
    split_creator_dying(store, keys, false)
}

/// A mount whose first batch with an `append` runs whole, then stops before the next batch.
fn pausing_creator(
    store: &Arc<MemoryStore>,
    keys: &KeyLayout,
) -> (MemFs<SplitAtAppend>, mpsc::Receiver<()>, mpsc::Sender<()>) {
    creator_store(store, keys, false, true)
}

/// [`split_creator`], whose mount dies right after the split batch if `dies` (every later
/// command fails, as for a killed process).
fn split_creator_dying(
    store: &Arc<MemoryStore>,
    keys: &KeyLayout,
    dies: bool,
) -> (MemFs<SplitAtAppend>, mpsc::Receiver<()>, mpsc::Sender<()>) {
    creator_store(store, keys, dies, false)
}

fn creator_store(
    store: &Arc<MemoryStore>,
    keys: &KeyLayout,
    dies: bool,
    pause_after_batch: bool,
) -> (MemFs<SplitAtAppend>, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (at, reached) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    let split = SplitAtAppend {
        inner: store.clone(),
        gate: Mutex::new(Some((at, wait))),
        dies_after_split: dies,
        pause_after_batch,
        dead: AtomicBool::new(false),
    };
    let fs = MemFs::new(split, keys.clone(), uncached()).unwrap();
    (fs, reached, go)
}

fn assert_store_sound(store: &Arc<MemoryStore>, keys: &KeyLayout) {
    let report = memfis_fs::check::check(&**store, keys).unwrap();
    assert!(
        report.problems.is_empty(),
        "the store after the race: {:?}",
        report.problems
    );
}

/// The removing mount's store: stops at the gate before the first batch after the one that
/// fenced the directory's sequence (`cas` to `removed`).
struct PauseAfterFence {
    inner: Arc<MemoryStore>,
    fenced: AtomicBool,
    gate: Gate,
}

impl Store for PauseAfterFence {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if self.fenced.load(Ordering::SeqCst) {
            wait_at(&self.gate);
        }
        let fence = batch
            .iter()
            .any(|c| matches!(c, Command::Cas { value, .. } if value.as_slice() == b"removed"));
        let results = self.inner.execute(batch);
        if fence {
            self.fenced.store(true, Ordering::SeqCst);
        }
        results
    }
}

#[test]
fn a_create_whose_directory_is_removed_meanwhile_takes_itself_back() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://create-rmdir").unwrap();
    let setup = open(&store, &keys);
    let d = setup.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;

    let (creator, create_reached, create_go) = split_creator(&store, &keys);
    let (rmdir_at, rmdir_reached) = mpsc::channel();
    let (rmdir_go, rmdir_wait) = mpsc::channel();
    let remover = MemFs::new(
        PauseAfterFence {
            inner: store.clone(),
            fenced: AtomicBool::new(false),
            gate: Mutex::new(Some((rmdir_at, rmdir_wait))),
        },
        keys.clone(),
        uncached(),
    )
    .unwrap();

    std::thread::scope(|s| {
        let create = s.spawn(|| creator.create(d, b"f", 0o644, libc::O_WRONLY, 0, 0));
        create_reached.recv().unwrap(); // its sequence taken, its `+` not yet appended
        let rmdir = s.spawn(|| remover.rmdir(ROOT_INO, b"d"));
        rmdir_reached.recv().unwrap(); // the log replayed empty, the sequence fenced
        create_go.send(()).unwrap(); // the `+` lands; the create finds the lock held
        std::thread::sleep(std::time::Duration::from_millis(100));
        rmdir_go.send(()).unwrap();
        rmdir.join().unwrap().unwrap();
        match create.join().unwrap() {
            Err(FsError::NotFound) => {}
            Ok((attr, fh)) => {
                let _ = creator.release(fh);
                panic!(
                    "the create succeeded (inode {}) in a removed directory",
                    attr.ino
                );
            }
            Err(e) => panic!("create: {e}"),
        }
    });
    assert_store_sound(&store, &keys);
}

/// The same race, the rmdir done (its keys deleted, the lock free) before the rest of the
/// create's batch runs: the create finds the lock free, and its read of the directory's
/// sequence, after the lock read, shows the directory gone.
#[test]
fn a_create_whose_directory_was_removed_before_its_fence_takes_itself_back() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://create-rmdir-done").unwrap();
    let setup = open(&store, &keys);
    let d = setup.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let (creator, create_reached, create_go) = split_creator(&store, &keys);
    let remover = open(&store, &keys);
    std::thread::scope(|s| {
        let create = s.spawn(|| creator.create(d, b"f", 0o644, libc::O_WRONLY, 0, 0));
        create_reached.recv().unwrap();
        let removed = remover.rmdir(ROOT_INO, b"d");
        create_go.send(()).unwrap();
        removed.unwrap();
        match create.join().unwrap() {
            Err(FsError::NotFound) => {}
            Ok((attr, fh)) => {
                let _ = creator.release(fh);
                panic!(
                    "the create succeeded (inode {}) in a removed directory",
                    attr.ino
                );
            }
            Err(e) => panic!("create: {e}"),
        }
    });
    assert_store_sound(&store, &keys);
}

/// A mkdir cut the same way, and another mount removes the new directory itself in between:
/// its entry is there before the mkdir's `+` record, so the rmdir finds it empty and logs
/// its `-` first. The `+` landing after it listed a directory whose keys were gone, and a
/// rename of the parent then failed at every try, holding the namespace lock (the
/// kernel-like harness found it). Now the create sees its entry gone after its batch and
/// takes the `+` back.
#[test]
fn a_directory_removed_between_its_entry_and_its_log_record_is_not_listed() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://mkdir-rmdir").unwrap();
    let setup = open(&store, &keys);
    let d = setup.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let (creator, create_reached, create_go) = split_creator(&store, &keys);
    let remover = open(&store, &keys);
    std::thread::scope(|s| {
        let made = s.spawn(|| creator.mkdir(d, b"s", 0o755, 0, 0));
        create_reached.recv().unwrap(); // the entry made, its `+` not yet appended
        let removed = remover.rmdir(d, b"s");
        create_go.send(()).unwrap();
        removed.unwrap();
        made.join().unwrap().unwrap(); // made, then removed: both happened
    });
    assert!(names(&remover, d).is_empty(), "{:?}", names(&remover, d));
    remover
        .rename(
            ROOT_INO,
            b"d",
            ROOT_INO,
            b"e",
            memfis_fs::RenameFlags::default(),
        )
        .unwrap();
    assert_store_sound(&store, &keys);
}

/// The create cut the same way while another mount renames a file onto the new name: the
/// rename logs the new file's `-` and its own `+` before the create's late `+`. The name lists
/// the renamed file once the create takes its `+` back.
#[test]
fn a_file_renamed_onto_a_name_being_created_stays_listed() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://create-rename-onto").unwrap();
    let setup = open(&store, &keys);
    let d = setup.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let y = write(&setup, d, "y", b"bytes of y");
    let (creator, create_reached, create_go) = split_creator(&store, &keys);
    let renamer = open(&store, &keys);
    std::thread::scope(|s| {
        let made = s.spawn(|| creator.create(d, b"a", 0o644, libc::O_WRONLY, 0, 0));
        create_reached.recv().unwrap(); // the entry made, its `+` not yet appended
        let renamed = renamer.rename(d, b"y", d, b"a", memfis_fs::RenameFlags::default());
        create_go.send(()).unwrap();
        renamed.unwrap();
        let (_, fh) = made.join().unwrap().unwrap(); // made, then replaced: both happened
        let _ = creator.release(fh);
    });
    assert_eq!(names(&renamer, d), ["a"]);
    assert_eq!(renamer.lookup(d, b"a").unwrap().ino, y);
    assert_store_sound(&store, &keys);
}

/// The create cut the same way while another mount removes the new file, and the creating
/// mount dies right after its batch, before it can take its late `+` back: the name stays
/// listed with no entry behind it. rmdir of the directory, under the namespace lock, drops
/// such names instead of answering ENOTEMPTY until a repair.
#[test]
fn rmdir_drops_a_name_a_dead_creator_left_listed_without_an_entry() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://create-dies").unwrap();
    let setup = open(&store, &keys);
    let d = setup.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let (creator, create_reached, create_go) = split_creator_dying(&store, &keys, true);
    let remover = open(&store, &keys);
    std::thread::scope(|s| {
        let made = s.spawn(|| creator.create(d, b"f", 0o644, libc::O_WRONLY, 0, 0));
        create_reached.recv().unwrap(); // the entry made, its `+` not yet appended
        remover.unlink(d, b"f").unwrap();
        create_go.send(()).unwrap();
        let _ = made.join().unwrap(); // whatever a dying mount answered
    });
    // The dead mount's liveness key goes as its expiry would.
    store.execute(vec![Command::Delete(keys.alive(creator.mount_id()))]);
    remover.rmdir(ROOT_INO, b"d").unwrap();
    assert!(names(&remover, ROOT_INO).is_empty());
    assert_store_sound(&store, &keys);
}

/// A live create whose entry `add` failed (the key held a removed name's `-` marker, as
/// older versions left) backs its `+` with the entry a round trip later: in between, its
/// name is listed with no entry behind it. An rmdir then must not take it for a dead
/// creator's leftover: the new file's record lists the name, so the directory is not empty.
#[test]
fn rmdir_keeps_a_name_a_live_create_is_about_to_back() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://create-backs-late").unwrap();
    let setup = open(&store, &keys);
    let d = setup.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    store
        .run(Command::store(StoreOp::Set, &keys.entry(d, b"f"), b"-"))
        .unwrap();
    let (creator, create_reached, create_go) = pausing_creator(&store, &keys);
    let other = open(&store, &keys);
    std::thread::scope(|s| {
        let made = s.spawn(|| creator.create(d, b"f", 0o644, libc::O_WRONLY, 0, 0));
        create_reached.recv().unwrap(); // its batch ran: entry `add` refused, `+` appended
        let removed = other.rmdir(ROOT_INO, b"d");
        create_go.send(()).unwrap();
        let (_, fh) = made.join().unwrap().unwrap();
        creator.release(fh).unwrap();
        assert!(matches!(removed, Err(FsError::NotEmpty)), "{removed:?}");
    });
    assert_eq!(names(&other, d), ["f"]);
    assert_store_sound(&store, &keys);
}

/// The creating mount's store for the next test: stops before its first batch with an
/// `append` (gate 1) and again right after it (gate 2).
struct AroundAppend {
    inner: Arc<MemoryStore>,
    before: Gate,
    after: Gate,
}

impl Store for AroundAppend {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        let appends = batch.iter().any(|c| {
            matches!(
                c,
                Command::Store {
                    op: StoreOp::Append,
                    ..
                }
            )
        });
        if !appends {
            return self.inner.execute(batch);
        }
        wait_at(&self.before);
        let results = self.inner.execute(batch);
        wait_at(&self.after);
        results
    }
}

/// A create whose entry `add` is refused (another mount made the name between the create's
/// look and its batch) claims the entry a round trip after its `+`. Another mount unlinks
/// the name's holder and removes the directory in between: the name was listed twice (the
/// old file's pair removed, the create's not backed yet), replay settled it by the empty
/// entry, so the directory looked empty. The create must then find its directory gone and
/// take itself back, not answer success with a name in a removed directory (found by
/// review).
#[test]
fn a_create_claiming_late_in_a_directory_removed_meanwhile_takes_itself_back() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://late-claim").unwrap();
    let setup = open(&store, &keys);
    let d = setup.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let (before_at, before_reached) = mpsc::channel();
    let (before_go, before_wait) = mpsc::channel();
    let (after_at, after_reached) = mpsc::channel();
    let (after_go, after_wait) = mpsc::channel();
    let creator = MemFs::new(
        AroundAppend {
            inner: store.clone(),
            before: Mutex::new(Some((before_at, before_wait))),
            after: Mutex::new(Some((after_at, after_wait))),
        },
        keys.clone(),
        uncached(),
    )
    .unwrap();
    let other = open(&store, &keys);
    std::thread::scope(|s| {
        let made = s.spawn(|| creator.create(d, b"n", 0o644, libc::O_WRONLY, 0, 0));
        before_reached.recv().unwrap(); // the name looked up free, the batch not sent
        write(&other, d, "n", b"another mount's file");
        before_go.send(()).unwrap();
        after_reached.recv().unwrap(); // entry `add` refused, `+` appended
        other.unlink(d, b"n").unwrap();
        let removed = other.rmdir(ROOT_INO, b"d");
        after_go.send(()).unwrap();
        let made = made.join().unwrap();
        if let Ok((_, fh)) = &made {
            let _ = creator.release(*fh);
        }
        match removed {
            // The directory went: the create must not have made anything in it.
            Ok(()) => assert!(matches!(made, Err(FsError::NotFound)), "{made:?}"),
            Err(e) => assert!(matches!(e, FsError::NotEmpty), "{e:?}"),
        }
    });
    assert_store_sound(&store, &keys);
}
