//! Interleaving harness: three `MemFs` (three mounts) over one store run random operation
//! lists on their own threads, and a scheduler chosen by proptest decides which mount's next
//! store batch runs, step by step. It also fails batches (no command applied, an I/O error)
//! and crashes mounts (every later batch fails and the mount's liveness key goes, as when
//! the daemon is killed between two batches). Afterwards a fresh mount opens the store
//! (completing what crashed mounts left), and the store must pass `memfis check` with every
//! file reading back what nginx would serve. Half the cases use logs of two records a chunk,
//! so that logs span many chunks and compactions move their base.
//!
//! A third of the runs use a pool of three servers keeping two copies of each key
//! (`--replicas 2`): the scheduler also kills a server, brings it back empty or as it was,
//! and cuts one mount off from one server (a partition), one fault at a time; afterwards the
//! copies are refilled as `memfis check --repair` does and must all agree.
//!
//! `cargo test` runs a fixed budget; `MEMFIS_SOAK=1` runs many more cases.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use memfis_fs::files::bulk::NewFile;
use memfis_fs::layout::record::Inode;
use memfis_fs::{FsConfig, KeyLayout, Kind, MemFs, ROOT_INO, RenameFlags, SetAttr, Time};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::memory_pool::{MemoryPool, PoolClient};
use memfis_memcache::{Capacity, CmdResult, Command, Item, ReplicaKeys, Store, StoreError};
use proptest::prelude::*;

const MOUNTS: usize = 3;
const DIRS: [&str; 3] = ["", "d1", "d2"];
// `.html`, so that in the cases run with `--gzip` the files are compressed in the store. The
// last is so long that its data key passes 250 bytes: its bytes live at a private key, and a
// rename to or from it moves them.
const NAMES: [&str; 3] = ["x.html", "y.html", LONG_NAME];
const LONG_NAME: &str = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\
zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\
zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.html";

/// What the scheduler does to the batch it lets go.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Run,
    Fail,
    Crash,
}

#[derive(Default)]
struct Slot {
    waiting: bool,
    granted: Option<Fate>,
    done: bool,
    crashed: bool,
    /// The waiting step is a command after the first of its batch (`Stepped::split`):
    /// faults come between batches only, as the harness's crashes always did.
    mid_batch: bool,
}

/// Shared by the mounts' stores and the scheduler.
struct Sched {
    slots: Mutex<Vec<Slot>>,
    cv: Condvar,
    /// Each mount's liveness key: a crash deletes it, as its expiry would.
    alive_keys: Mutex<Vec<Vec<u8>>>,
    /// With [`Batches::SplitCutMidway`]: faults may also come between two commands of a batch.
    faults_midway: bool,
    /// The pool of servers, when the case runs on one ([`Servers::Pool`]), with each mount's
    /// client of it and the one server fault in force.
    pool: Option<Arc<MemoryPool>>,
    clients: Vec<Arc<PoolClient>>,
    fault: Mutex<Option<ServerFault>>,
    replica_keys: ReplicaKeys,
}

/// What the store of a case is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Servers {
    /// One server.
    One,
    /// Three servers keeping two copies of each key, which the scheduler kills, brings back
    /// and cuts off from one mount.
    Pool,
}

/// A fault of the pool's servers, one at a time (two copies survive one).
#[derive(Debug, Clone, Copy, PartialEq)]
enum ServerFault {
    /// Server `0` answers no one.
    Down(usize),
    /// Mount `0` cannot reach server `1`.
    Cut(usize, usize),
}

impl Sched {
    /// Starts a fault, or ends the one in force (a server down comes back empty or as it
    /// was), as `choice` says.
    fn server_event(&self, choice: u16) {
        let Some(pool) = &self.pool else { return };
        let mut fault = self.fault.lock().unwrap();
        let server = (choice / 64) as usize % 3;
        let mount = (choice / 192) as usize % MOUNTS;
        *fault = match (*fault, choice % 2) {
            (None, 0) => {
                pool.kill(server);
                Some(ServerFault::Down(server))
            }
            (None, _) => {
                self.clients[mount].cut_off(server, true);
                Some(ServerFault::Cut(mount, server))
            }
            (Some(f), _) => {
                self.end_fault(f, choice % 4 < 2);
                None
            }
        };
        if std::env::var_os("MEMFIS_TRACE").is_some() {
            eprintln!("servers: {:?}", *fault);
        }
    }

    fn end_fault(&self, fault: ServerFault, empty: bool) {
        let pool = self.pool.as_ref().expect("a pool");
        match fault {
            ServerFault::Down(s) if empty => {
                pool.restart_empty(s);
                // As an operator does (`memfis check --repair`) before another server may
                // go: two copies survive the loss of one server, not of two in a row.
                let tool = pool.client();
                tool.set_replicas(2, &self.replica_keys).unwrap();
                let keys = tool.list_keys().unwrap().unwrap();
                let report = tool.resync(&keys, true, &mut |_| ControlFlow::Continue(()));
                assert!(report.failed.is_empty(), "resync: {:?}", report.failed);
            }
            ServerFault::Down(s) => pool.revive(s),
            ServerFault::Cut(m, s) => self.clients[m].cut_off(s, false),
        }
    }

    /// Ends the fault in force (a server down comes back empty: the worse case).
    fn heal(&self) {
        if let Some(f) = self.fault.lock().unwrap().take() {
            self.end_fault(f, true);
        }
    }
}

/// How a mount's batches meet the store.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Batches {
    /// Each batch is one step: no other mount's command runs in the middle of it.
    Whole,
    /// memcached runs one connection's commands in order, but other connections' commands
    /// may run between any two of them: each command is a step. Faults fail a whole batch.
    Split,
    /// As `Split`, and a fault may cut a batch midway (the connection dropped): the commands
    /// before it ran, those after it fail unapplied.
    SplitCutMidway,
}

/// Deletes a key from one server, as its expiry would.
type Deleter = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// One mount's view of the store: each batch waits for the scheduler's go.
struct Stepped {
    inner: Arc<dyn Store>,
    /// Every server the mount's liveness key is on, for a crash to take it away.
    servers: Vec<Deleter>,
    sched: Arc<Sched>,
    mount: usize,
    stepping: Arc<AtomicBool>,
    /// Whether it stands for one server (batches in order) or a pool (the filesystem then
    /// splits what must be ordered into separate batches).
    in_order: bool,
    /// Each command is a step of its own ([`Batches::Split`]).
    split: bool,
}

fn io_error() -> StoreError {
    StoreError::Io {
        server: "harness".into(),
        message: "injected failure".into(),
    }
}

impl Store for Stepped {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if !self.stepping.load(Ordering::SeqCst) {
            return self.inner.execute(batch);
        }
        if !self.split {
            return self.step(batch).0;
        }
        // One step per command (`Batches::Split`).
        let mut results = Vec::with_capacity(batch.len());
        let mut failed = false;
        for (i, cmd) in batch.into_iter().enumerate() {
            if failed {
                results.push(Err(io_error()));
                continue;
            }
            self.sched.slots.lock().unwrap()[self.mount].mid_batch = i > 0;
            let (mut r, fate) = self.step(vec![cmd]);
            failed = fate != Fate::Run;
            results.append(&mut r);
        }
        results
    }

    fn capacity(&self) -> Option<Capacity> {
        self.inner.capacity()
    }

    fn item_size_max(&self) -> Option<u64> {
        self.inner.item_size_max()
    }

    fn list_keys(&self) -> Option<Result<Vec<Vec<u8>>, StoreError>> {
        self.inner.list_keys()
    }

    fn in_order(&self) -> bool {
        self.in_order
    }

    fn interruptions(&self) -> u64 {
        self.inner.interruptions()
    }

    fn replicas(&self) -> usize {
        self.inner.replicas()
    }

    fn set_replicas(&self, copies: usize, keys: &ReplicaKeys) -> Result<(), String> {
        self.inner.set_replicas(copies, keys)
    }

    fn mark_all_in_sync(&self) -> Result<(), StoreError> {
        self.inner.mark_all_in_sync()
    }

    fn get_anywhere(&self, key: &[u8]) -> Result<Option<Item>, StoreError> {
        self.inner.get_anywhere(key)
    }
}

impl Stepped {
    /// Runs `batch` as one step once the scheduler lets it go, with the fate it chose.
    fn step(&self, batch: Vec<Command>) -> (Vec<CmdResult>, Fate) {
        let mut slots = self.sched.slots.lock().unwrap();
        if slots[self.mount].crashed {
            return (batch.iter().map(|_| Err(io_error())).collect(), Fate::Crash);
        }
        slots[self.mount].waiting = true;
        self.sched.cv.notify_all();
        let fate = loop {
            if let Some(f) = slots[self.mount].granted.take() {
                break f;
            }
            slots = self.sched.cv.wait(slots).unwrap();
        };
        slots[self.mount].waiting = false;
        if std::env::var_os("MEMFIS_TRACE").is_some() {
            let cmds: Vec<String> = batch
                .iter()
                .map(|c| {
                    let k = String::from_utf8_lossy(c.key()).into_owned();
                    let v = match c {
                        Command::Store { op, value, .. } => {
                            format!("{op:?} {}", String::from_utf8_lossy(value))
                        }
                        Command::Cas { value, .. } => {
                            format!("cas {}", String::from_utf8_lossy(value))
                        }
                        other => format!("{other:?}").chars().take(6).collect(),
                    };
                    format!("{v} {k}").chars().take(140).collect()
                })
                .collect();
            eprintln!("mount {} {fate:?}: {cmds:?}", self.mount);
        }
        let results = match fate {
            Fate::Run => {
                drop(slots);
                self.inner.execute(batch)
            }
            Fate::Fail => batch.iter().map(|_| Err(io_error())).collect(),
            Fate::Crash => {
                slots[self.mount].crashed = true;
                let alive = self.sched.alive_keys.lock().unwrap()[self.mount].clone();
                for delete in &self.servers {
                    delete(&alive);
                }
                batch.iter().map(|_| Err(io_error())).collect()
            }
        };
        (results, fate)
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// With mode 0644, 0600, or 0600 opened up to 0644 before the close (as `cp -a` does).
    Create(usize, Vec<u8>, u8),
    /// chmod 0644 (`true`: served) or 0600 (withdrawn).
    Chmod(usize, bool),
    Write(usize, Vec<u8>),
    Truncate(usize, u8),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Rename(usize, usize, u8),
    Link(usize, usize),
    /// Every name of one directory at once, in one batch (`memfis load`).
    CreateMany(usize, Vec<u8>),
    /// Rewrite a directory's log as its live names.
    Compact(usize),
    /// mkdir, rmdir and rename (0: plain, 1: RENAME_NOREPLACE, 2: RENAME_EXCHANGE) of the
    /// directory paths [`DIR_PATHS`], which nest.
    MkdirAt(usize),
    RmdirAt(usize),
    RenameDir(usize, usize, u8),
    /// utimens of a directory path [`DIR_PATHS`] (its mtime key is set outside the
    /// namespace lock).
    TouchDir(usize),
}

/// Directories two deep, for the directory operations.
const DIR_PATHS: [&str; 6] = ["d1", "d2", "d1/d1", "d1/d2", "d2/d1", "d2/d2"];

/// Paths: a name in one of the directories (`d1/x`, `y`, ...). Directories are the names
/// `d1`/`d2` at the root; files go anywhere.
fn path(i: usize) -> String {
    let dir = DIRS[i / NAMES.len() % DIRS.len()];
    let name = NAMES[i % NAMES.len()];
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

const PATHS: usize = DIRS.len() * NAMES.len();

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS;
    let d = 0..2usize;
    let bytes = proptest::collection::vec(any::<u8>(), 0..5);
    prop_oneof![
        3 => (p.clone(), bytes.clone(), 0..3u8).prop_map(|(a, b, m)| Op::Create(a, b, m)),
        1 => (p.clone(), any::<bool>()).prop_map(|(a, public)| Op::Chmod(a, public)),
        1 => (p.clone(), bytes).prop_map(|(a, b)| Op::Write(a, b)),
        1 => (p.clone(), 0..6u8).prop_map(|(a, s)| Op::Truncate(a, s)),
        2 => p.clone().prop_map(Op::Unlink),
        1 => d.clone().prop_map(Op::Mkdir),
        1 => d.prop_map(Op::Rmdir),
        3 => (p.clone(), p.clone(), 0..4u8).prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        1 => (p.clone(), p).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (0..DIRS.len(), proptest::collection::vec(any::<u8>(), 0..5))
            .prop_map(|(d, b)| Op::CreateMany(d, b)),
        1 => (0..DIRS.len()).prop_map(Op::Compact),
    ]
}

type Fs = MemFs<Stepped>;

fn resolve(fs: &Fs, path: &str) -> Option<u64> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs.lookup(ino, part.as_bytes()).ok()?.ino;
    }
    Some(ino)
}

fn split(fs: &Fs, path: &str) -> Option<(u64, Vec<u8>)> {
    Some(match path.rsplit_once('/') {
        Some((d, n)) => (resolve(fs, d)?, n.as_bytes().to_vec()),
        None => (ROOT_INO, path.as_bytes().to_vec()),
    })
}

/// Runs one operation; errors are expected (races, injected failures) and ignored: what
/// matters is the state the store is left in.
///
/// With `big`, written bytes are repeated past 1 KB, so `--gzip` compresses them.
fn run(fs: &Fs, op: &Op, big: bool) {
    if std::env::var_os("MEMFIS_TRACE").is_some() {
        eprintln!("{} starts {op:?}", fs.mount_id());
    }
    let bytes = |data: &Vec<u8>| -> Vec<u8> {
        match big {
            true => data.iter().copied().cycle().take(1500).collect(),
            false => data.clone(),
        }
    };
    let _ = (|| -> Option<()> {
        match op {
            Op::Create(i, data, mode) => {
                let (d, n) = split(fs, &path(*i))?;
                let created = if *mode == 0 { 0o644 } else { 0o600 };
                let (attr, fh) = fs.create(d, &n, created, libc::O_WRONLY, 0, 0).ok()?;
                let _ = fs.write(fh, 0, &bytes(data), false);
                if *mode == 2 {
                    let _ = fs.setattr(attr.ino, &mode_set(0o644));
                }
                let _ = fs.release(fh);
            }
            Op::Chmod(i, public) => {
                let ino = resolve(fs, &path(*i))?;
                let _ = fs.setattr(ino, &mode_set(if *public { 0o644 } else { 0o600 }));
            }
            Op::Write(i, data) => {
                let ino = resolve(fs, &path(*i))?;
                let fh = fs.open(ino, libc::O_RDWR).ok()?;
                let _ = fs.write(fh, 1, &bytes(data), false);
                let _ = fs.release(fh);
            }
            Op::Truncate(i, size) => {
                let ino = resolve(fs, &path(*i))?;
                let set = SetAttr {
                    size: Some(*size as u64),
                    ..SetAttr::default()
                };
                let _ = fs.setattr(ino, &set);
            }
            Op::Unlink(i) => {
                let (d, n) = split(fs, &path(*i))?;
                let _ = fs.unlink(d, &n);
            }
            Op::Mkdir(d) => {
                let _ = fs.mkdir(ROOT_INO, DIRS[d + 1].as_bytes(), 0o755, 0, 0);
            }
            Op::Rmdir(d) => {
                let _ = fs.rmdir(ROOT_INO, DIRS[d + 1].as_bytes());
            }
            Op::Rename(a, b, f) => {
                // f == 3: rename a directory (d1 <-> d2), the case that moves many keys.
                let (sd, sn, td, tn) = if *f == 3 {
                    (ROOT_INO, b"d1".to_vec(), ROOT_INO, b"d2".to_vec())
                } else {
                    let (sd, sn) = split(fs, &path(*a))?;
                    let (td, tn) = split(fs, &path(*b))?;
                    (sd, sn, td, tn)
                };
                let flags = RenameFlags {
                    noreplace: *f == 1,
                    exchange: *f == 2,
                };
                if (sd, &sn) != (td, &tn) {
                    let _ = fs.rename(sd, &sn, td, &tn, flags);
                }
            }
            Op::Link(a, b) => {
                let ino = resolve(fs, &path(*a))?;
                let (td, tn) = split(fs, &path(*b))?;
                let _ = fs.link(ino, td, &tn);
            }
            Op::CreateMany(d, data) => {
                let dir = resolve(fs, DIRS[*d])?;
                let files = NAMES
                    .iter()
                    .map(|n| NewFile {
                        name: n.as_bytes().to_vec(),
                        record: Inode::new(Kind::File, 0o644, 0, 0, Vec::new()),
                        bytes: Arc::new(bytes(data)),
                    })
                    .collect();
                let _ = fs.create_files(dir, files);
            }
            Op::Compact(d) => {
                let dir = resolve(fs, DIRS[*d])?;
                let _ = fs.compact_dir(dir, true);
            }
            Op::MkdirAt(i) => {
                let (d, n) = split(fs, DIR_PATHS[*i])?;
                let _ = fs.mkdir(d, &n, 0o755, 0, 0);
            }
            Op::RmdirAt(i) => {
                let (d, n) = split(fs, DIR_PATHS[*i])?;
                let _ = fs.rmdir(d, &n);
            }
            Op::RenameDir(a, b, f) => {
                let (sd, sn) = split(fs, DIR_PATHS[*a])?;
                let (td, tn) = split(fs, DIR_PATHS[*b])?;
                let flags = RenameFlags {
                    noreplace: *f == 1,
                    exchange: *f == 2,
                };
                let _ = fs.rename(sd, &sn, td, &tn, flags);
            }
            Op::TouchDir(i) => {
                let ino = resolve(fs, DIR_PATHS[*i])?;
                let set = SetAttr {
                    mtime: Some(Time::now()),
                    ..SetAttr::default()
                };
                let _ = fs.setattr(ino, &set);
            }
        }
        Some(())
    })();
}

fn mode_set(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    }
}

/// Lets the mounts' batches go in the order `choices` picks, with failures and crashes.
fn drive(sched: &Sched, choices: &[u16]) {
    let mut step = 0usize;
    loop {
        let mut slots = sched.slots.lock().unwrap();
        // Wait until every mount is either done or waiting with a batch not yet let go.
        while slots
            .iter()
            .any(|s| !s.done && (!s.waiting || s.granted.is_some()))
        {
            let (s, timeout) = sched
                .cv
                .wait_timeout(slots, Duration::from_secs(2))
                .unwrap();
            slots = s;
            if timeout.timed_out() {
                let state: Vec<_> = slots
                    .iter()
                    .map(|s| (s.waiting, s.granted, s.done, s.crashed))
                    .collect();
                eprintln!("scheduler stuck at step {step}: {state:?}");
            }
        }
        let ready: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].waiting).collect();
        if ready.is_empty() {
            return; // all done
        }
        let choice = choices.get(step).copied().unwrap_or(step as u16);
        let mount = ready[choice as usize % ready.len()];
        // Faults only within the chosen budget, so every case ends.
        let between_batches = !slots[mount].mid_batch || sched.faults_midway;
        let fate = match (step < choices.len() && between_batches, choice % 64) {
            (true, 0..=2) => Fate::Fail,
            (true, 3) => Fate::Crash,
            (true, 4..=6) => {
                sched.server_event(choice);
                Fate::Run
            }
            _ => Fate::Run,
        };
        if step == choices.len() {
            sched.heal(); // past the budget, so that every mount can finish
        }
        slots[mount].granted = Some(fate);
        sched.cv.notify_all();
        step += 1;
    }
}

fn run_case(lists: &[Vec<Op>], choices: &[u16]) -> Result<(), TestCaseError> {
    run_case_as(lists, choices, Batches::Whole)
}

/// [`run_case`], with batches meeting the store as `batches` says.
fn run_case_as(lists: &[Vec<Op>], choices: &[u16], batches: Batches) -> Result<(), TestCaseError> {
    run_case_on(lists, choices, batches, Servers::One)
}

/// [`run_case_as`] on the servers `servers` says.
fn run_case_on(
    lists: &[Vec<Op>],
    choices: &[u16],
    batches: Batches,
    servers: Servers,
) -> Result<(), TestCaseError> {
    let one = Arc::new(MemoryStore::default());
    let pool = (servers == Servers::Pool).then(|| MemoryPool::new(3));
    // The store as a tool sees it afterwards: the one server, or a client of the pool.
    let fresh_client = pool.as_ref().map(|p| Arc::new(p.client()));
    let store: Arc<dyn Store> = match &fresh_client {
        Some(c) => c.clone(),
        None => one.clone(),
    };
    // Half the cases with logs of two records a chunk: logs of many chunks, mounts whose idea
    // of a log is chunks behind, and compactions that move the base past chunks.
    let per_chunk = if choices.get(1).is_none_or(|c| c % 2 == 0) {
        2
    } else {
        memfis_fs::layout::keys::LOG_CHUNK_RECORDS
    };
    let keys = KeyLayout::new("memfis://interleave")
        .unwrap()
        .with_log_chunk_records(per_chunk);
    // Half the cases with --gzip and files of 1.5 KB: every data key a race or a crash
    // leaves must still read back (and serve) as the file's bytes.
    let gzip = choices.get(2).is_none_or(|c| c % 2 == 0);
    // Half of those with items of 1 KiB: the files go in chunks of 1 KiB (and back to one
    // item when truncated), and are not served.
    let small_items = gzip && choices.get(3).is_some_and(|c| c % 2 == 1);
    let cfg = FsConfig {
        cache_ttl: Duration::from_millis(0),
        item_size_max: small_items.then_some(1536),
        lock_backoff: Duration::ZERO,
        gzip,
        replicas: pool.is_some().then_some(2),
        ..FsConfig::default()
    };
    let clients: Vec<Arc<PoolClient>> = match &pool {
        Some(p) => (0..MOUNTS).map(|_| Arc::new(p.client())).collect(),
        None => Vec::new(),
    };
    let deleters: Vec<Deleter> = match &pool {
        Some(p) => (0..3)
            .map(|i| {
                let p = p.clone();
                Arc::new(move |k: &[u8]| p.server(i).raw_delete(k)) as Deleter
            })
            .collect(),
        None => {
            let one = one.clone();
            vec![Arc::new(move |k: &[u8]| one.raw_delete(k))]
        }
    };
    let sched = Arc::new(Sched {
        slots: Mutex::new((0..MOUNTS).map(|_| Slot::default()).collect()),
        cv: Condvar::new(),
        alive_keys: Mutex::new(Vec::new()),
        faults_midway: batches == Batches::SplitCutMidway,
        pool: pool.clone(),
        clients: clients.clone(),
        fault: Mutex::new(None),
        replica_keys: ReplicaKeys {
            marker: keys.in_sync_marker(),
            presence: keys.alive(""),
            expiring: vec![keys.refill_lease()],
        },
    });
    let stepping = Arc::new(AtomicBool::new(false));
    let mounts: Vec<Fs> = (0..MOUNTS)
        .map(|m| {
            let s = Stepped {
                inner: match clients.get(m) {
                    Some(c) => c.clone(),
                    None => one.clone(),
                },
                servers: deleters.clone(),
                sched: sched.clone(),
                mount: m,
                stepping: stepping.clone(),
                in_order: pool.is_none() && choices.first().is_none_or(|c| c % 2 == 0),
                split: batches != Batches::Whole,
            };
            MemFs::new(s, keys.clone(), cfg.clone()).unwrap()
        })
        .collect();
    *sched.alive_keys.lock().unwrap() = mounts.iter().map(|fs| keys.alive(fs.mount_id())).collect();
    mounts[0].mkdir(ROOT_INO, b"d1", 0o755, 0, 0).unwrap();
    stepping.store(true, Ordering::SeqCst);
    std::thread::scope(|scope| {
        for (m, fs) in mounts.iter().enumerate() {
            let ops = &lists[m];
            let sched = &sched;
            scope.spawn(move || {
                for op in ops {
                    run(fs, op, cfg.gzip);
                }
                // As the heartbeat thread of a mount does: finish an operation that failed
                // midway and still holds the lock.
                for _ in 0..1000 {
                    if fs.heartbeat().is_ok() || sched.slots.lock().unwrap()[m].crashed {
                        break;
                    }
                }
                let mut slots = sched.slots.lock().unwrap();
                slots[m].done = true;
                sched.cv.notify_all();
            });
        }
        drive(&sched, choices);
    });
    stepping.store(false, Ordering::SeqCst);
    sched.heal();
    // A live mount whose heartbeat went through keeps no lock (another mount would wait for
    // it until its liveness lapsed).
    if !sched.slots.lock().unwrap().iter().any(|s| s.crashed) {
        let held = store.execute(vec![Command::Get(keys.ns_lock())]).remove(0);
        prop_assert!(
            matches!(held, Ok(memfis_memcache::Reply::Value(None))),
            "lock left held: {held:?}"
        );
    }
    // A fresh mount completes what gone mounts left, and then the store must be sound.
    let fresh = MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap();
    let crashed = sched.slots.lock().unwrap().iter().any(|s| s.crashed);
    if let Some(client) = &fresh_client {
        // A server came back empty, or missed writes while down or cut off: repair as
        // `memfis check --repair` does (the tree, then every copy), and every copy agrees.
        let repaired = fresh.repair().unwrap();
        prop_assert!(
            repaired.after.problems.is_empty(),
            "left after repair: {:?}",
            repaired.after.problems
        );
        let all = store.list_keys().unwrap().unwrap();
        let resync = client.resync(&all, true, &mut |_| ControlFlow::Continue(()));
        prop_assert!(resync.failed.is_empty(), "resync: {:?}", resync.failed);
        let again = client.resync(&all, false, &mut |_| ControlFlow::Continue(()));
        prop_assert_eq!(again.under_replicated, 0, "copies differ after the resync");
    }
    if crashed {
        // Known limits a crash can leave (docs/store-layout.md): keys no name reaches (a
        // create racing an rmdir of its parent), and a publish racing a directory rename whose
        // redo never came (names of one file holding other bytes). `memfis check --repair`
        // must make every such store sound, and change no file when only garbage was left.
        let before_check = memfis_fs::check::check(&store, &keys).unwrap();
        let before_check = memfis_fs::check::Report {
            problems: if fresh_client.is_some() {
                Vec::new() // repaired above: the tree as it is now is the one to keep
            } else {
                before_check.problems
            },
            ..before_check
        };
        // Entry keys no listing has are names whose log record a crash lost: repair lists them
        // again, which is a change; any other garbage goes without changing a file.
        let only_garbage = before_check
            .problems
            .iter()
            .all(|p| p.unreachable && !p.key.contains("%e") && !p.key.contains("%h"));
        // A mount that died between taking a number in a log chunk no one had made yet (its
        // idea of the log was a chunk behind) and making it leaves the directory EIO until
        // repair (docs/store-layout.md): the one walk allowed to fail.
        let mut before = BTreeMap::new();
        let walked = try_walk(&fresh, ROOT_INO, "", &mut before);
        if let Err(e) = &walked {
            prop_assert!(
                matches!(e, memfis_fs::FsError::Missing { key } if key.contains("%l")),
                "walk before repair: {e:?}"
            );
        }
        let only_garbage = only_garbage && walked.is_ok();
        let repaired = fresh.repair().unwrap();
        prop_assert!(
            repaired.after.problems.is_empty(),
            "left after repair: {:?}; repaired {:#?}",
            repaired
                .after
                .problems
                .iter()
                .map(|p| (&p.path, &p.key, &p.problem))
                .collect::<Vec<_>>(),
            repaired.repaired
        );
        if only_garbage {
            let mut after = BTreeMap::new();
            walk(&fresh, ROOT_INO, "", &mut after);
            prop_assert_eq!(
                before,
                after,
                "repair changed the tree: {:#?}",
                repaired.repaired
            );
        }
    }
    // Every file reads back what nginx is served, and nginx serves nothing of a file others
    // may not read or whose key is too long (reading is also how a mount repairs the size of
    // a file whose writer died between its bytes and its record).
    let mut files = BTreeMap::new();
    walk(&fresh, ROOT_INO, "", &mut files);
    let codec = memfis_fs::layout::data_codec::DataCodec::new(&keys, false);
    for (p, ino) in files {
        let fh = fresh.open(ino, libc::O_RDONLY).unwrap();
        let read = fresh.read(fh, 0, 1 << 16).unwrap();
        fresh.release(fh).unwrap();
        // What nginx serves, unpacked as `gunzip` does for a client without gzip.
        let key = keys.data(format!("/{p}").as_bytes());
        let mode = fresh.getattr(ino).unwrap().mode;
        let chunked = small_items && read.len() > 1024;
        let servable = mode & 0o004 != 0 && key.len() <= memfis_memcache::MAX_KEY_LEN && !chunked;
        let served = match key.len() <= memfis_memcache::MAX_KEY_LEN {
            true => codec
                .decode(
                    &key,
                    store.execute(vec![Command::Get(key.clone())]).remove(0),
                )
                .unwrap()
                .into_value()
                .unwrap(),
            false => None, // no URI reaches it
        };
        let expected = servable.then_some(read);
        prop_assert_eq!(
            expected,
            served.map(|i| i.value),
            "file {} (mode {:o})",
            p,
            mode
        );
    }
    let report = memfis_fs::check::check(&store, &keys).unwrap();
    if std::env::var_os("MEMFIS_TRACE").is_some() && !report.problems.is_empty() {
        let mut all: Vec<_> = store.list_keys().unwrap().unwrap();
        all.sort();
        for k in all {
            let v = store.get(&k).unwrap().unwrap().value;
            eprintln!(
                "{} = {}",
                String::from_utf8_lossy(&k),
                String::from_utf8_lossy(&v)
            );
        }
    }
    prop_assert!(
        report.problems.is_empty(),
        "check found {:#?}",
        report.problems
    );
    Ok(())
}

fn walk<S: Store>(fs: &MemFs<S>, dir: u64, prefix: &str, out: &mut BTreeMap<String, u64>) {
    try_walk(fs, dir, prefix, out).unwrap()
}

fn try_walk<S: Store>(
    fs: &MemFs<S>,
    dir: u64,
    prefix: &str,
    out: &mut BTreeMap<String, u64>,
) -> memfis_fs::FsResult<()> {
    for e in fs.readdir(dir)? {
        let p = format!("{prefix}{}", String::from_utf8(e.name).unwrap());
        match e.kind {
            Kind::Dir => try_walk(fs, e.ino, &format!("{p}/"), out)?,
            Kind::File => {
                out.insert(p, e.ino);
            }
            _ => {} // the harness makes no symlinks or special files
        }
    }
    Ok(())
}

/// `cargo test`: a fixed budget from a fixed seed, so a run is repeatable (the scheduler
/// makes the interleaving a function of the case). `MEMFIS_SOAK=1`: many random cases.
fn config() -> ProptestConfig {
    if std::env::var_os("MEMFIS_SOAK").is_some() {
        ProptestConfig {
            cases: 3000,
            ..ProptestConfig::default()
        }
    } else {
        ProptestConfig {
            cases: 64,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d656d666973),
            ..ProptestConfig::default()
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn interleaved_mounts_with_failures_and_crashes_leave_a_sound_store(
        lists in proptest::collection::vec(proptest::collection::vec(op(), 1..7), MOUNTS),
        choices in proptest::collection::vec(any::<u16>(), 0..400),
    ) {
        run_case(&lists, &choices)?;
    }

    #[test]
    fn interleaved_mounts_on_a_pool_of_two_copies_losing_servers_leave_a_sound_store(
        lists in proptest::collection::vec(proptest::collection::vec(op(), 1..7), MOUNTS),
        choices in proptest::collection::vec(any::<u16>(), 0..400),
    ) {
        run_case_on(&lists, &choices, Batches::Whole, Servers::Pool)?;
    }
}

/// Directories made, removed, renamed, exchanged and replaced on three mounts at once (with
/// files in them), other mounts' commands running between those of a batch: every key a
/// directory brings is reached from the tree or goes with it.
///
/// Known open race this finds with `MEMFIS_SOAK=1` (not in the fixed budget): a create's
/// `incr` of its directory's sequence runs before an rmdir reads it and its `append` after
/// the rmdir replayed the log, so the rmdir fences a directory that is not empty and the
/// file is left in a removed directory (e.g. lists `[[Create(3)], [RenameDir(0, 2, 0),
/// RmdirAt(0)], [RmdirAt(4)]]`, choices `[2187, 1877, 54357, 9038, 3122, 326, 31436,
/// 15041, 912, 9962, 4681, 4469, 11960, 924, 1202, 9368, 137, 5360, 2624, 32681, 30799,
/// 637, 3716]`).
fn dir_op() -> impl Strategy<Value = Op> {
    let d = 0..DIR_PATHS.len();
    prop_oneof![
        3 => d.clone().prop_map(Op::MkdirAt),
        2 => d.clone().prop_map(Op::RmdirAt),
        3 => (d.clone(), d.clone(), 0..3u8).prop_map(|(a, b, f)| Op::RenameDir(a, b, f)),
        1 => d.prop_map(Op::TouchDir),
        1 => (0..PATHS, proptest::collection::vec(any::<u8>(), 0..3))
            .prop_map(|(a, b)| Op::Create(a, b, 0)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn interleaved_directory_operations_leave_no_keys_behind(
        lists in proptest::collection::vec(proptest::collection::vec(dir_op(), 1..8), MOUNTS),
        choices in proptest::collection::vec(any::<u16>(), 0..400),
    ) {
        run_case_as(&lists, &choices, Batches::Split)?;
    }
}

/// Issue 16: a mkdir whose batch was cut after its entry claim undid itself without the
/// namespace lock, while a rename holding it had read that entry and moved the new directory
/// (`d2` to `d1/d1`): the undo deleted the record under the rename, leaving `d1/d1` naming
/// no record (and, had the directory's own keys been made, those keys behind).
#[test]
fn a_create_undone_while_a_rename_moves_its_inode_leaves_the_inode_whole() {
    use Op::*;
    let lists = vec![
        vec![MkdirAt(1)],
        vec![RenameDir(1, 2, 0)],
        vec![Create(6, vec![], 0), RmdirAt(2)],
    ];
    let choices = [
        6428, 8108, 43595, 3560, 23840, 5093, 17849, 24374, 30719, 2820, 21843, 18446, 28788, 9164,
        25542, 10584, 4, 9407, 2, 4, 2372, 2, 4, 21841, 467, 13093, 14557, 2201, 20297, 15629,
        1028, 2, 9732,
    ];
    run_case_as(&lists, &choices, Batches::SplitCutMidway).unwrap();
}

/// A utimens of a directory sets its mtime key outside the namespace lock: when an rmdir by
/// another mount ran between the record's `cas` and that `set`, the key stayed behind with
/// no directory (`memfis check` found it after the real-mount race soak). Every point at
/// which the rmdir can run is tried.
#[test]
fn a_directory_touched_while_another_mount_removes_it_leaves_no_mtime_key() {
    let lists = vec![vec![Op::TouchDir(0)], vec![Op::RmdirAt(0)], Vec::new()];
    // Schedules: mount 0 (the touch) runs `t` batches, mount 1 (the rmdir) `r`, then the
    // rest in turn; 6 picks mount 0 of the three waiting at the start, 7 mount 1 (none
    // faults: every choice is 4 or more modulo 64).
    for t in 0..10 {
        for r in 0..16 {
            let choices: Vec<u16> = std::iter::repeat_n(6, t)
                .chain(std::iter::repeat_n(7, r))
                .chain(std::iter::repeat_n(4, 60))
                .collect();
            run_case(&lists, &choices).unwrap();
        }
    }
}

/// The shell reproducer from the issue, as operations: one mount loops `echo A > x; mv x y`
/// while another loops `mv y z`; afterwards every name is usable.
#[test]
fn rename_loops_on_two_mounts_leave_usable_names() {
    let ops_a: Vec<Op> = (0..6)
        .flat_map(|_| [Op::Create(0, b"A".to_vec(), 0), Op::Rename(0, 1, 0)])
        .collect();
    let ops_b: Vec<Op> = (0..6).map(|_| Op::Rename(1, 2, 0)).collect();
    for seed in 0..64u16 {
        let choices: Vec<u16> = (0..300u16)
            .map(|i| i.wrapping_mul(seed + 7) % 60 + 4) // no faults: races only
            .collect();
        run_case(&[ops_a.clone(), ops_b.clone(), Vec::new()], &choices).unwrap();
    }
}

/// A create whose fence read a lock held by an rmdir of its directory, and whose waits for
/// that lock then failed (store errors), returned without settling: its inode, its entry
/// in the removed directory and its own directory keys stayed behind. The heartbeat now
/// settles such creates.
#[test]
fn a_create_whose_fence_fails_while_its_directory_goes_is_taken_back_by_the_heartbeat() {
    use Op::*;
    let lists = vec![
        vec![MkdirAt(0), MkdirAt(2)],
        vec![MkdirAt(2)],
        vec![RmdirAt(4), RmdirAt(0)],
    ];
    let choices = [
        12096, 47328, 203, 6024, 1205, 45, 18438, 23171, 4274, 6111, 1542, 1988, 34709, 17651, 495,
        21, 6789, 11087, 19805, 55868, 32212, 5006, 47775, 54, 2074, 6614, 39044, 39389, 0, 43990,
        8221, 134, 8981, 256, 677, 9725, 17283, 1234, 7938, 21589, 202, 9646, 15391, 40868, 1948,
        5330, 1285, 5893, 10309, 8005, 12422, 755, 10037, 18989, 6981, 7964, 13319, 13445, 299,
        14348, 6302, 10524, 10692, 27077, 27962, 11867, 23622, 2190, 0, 8677, 3244, 46805, 3,
        36583, 11407, 10954, 42137, 0, 0, 0, 0, 25429, 45142, 32296, 1, 1, 30620, 63818, 60982,
        10720, 29768, 24892, 63676, 8624, 40916, 326, 10760, 3606, 30734, 3200, 21072, 15326,
        45846, 1994, 15258, 4801, 54606, 31681, 9104, 26732, 590, 22644, 3782, 12554, 44714, 5664,
        31680, 44736, 11456,
    ];
    run_case_as(&lists, &choices, Batches::Split).unwrap();
}

/// A publish in chunks whose record `cas` landed between an unlink's read of the record and
/// its delete (the unlink done by the fence's lock read): the chunks the `cas` named stayed
/// behind. The fence now reads the record after the lock.
#[test]
fn chunks_published_while_another_mount_unlinks_the_file_go_with_it() {
    use Op::*;
    let lists = vec![
        vec![Link(0, 0), Rmdir(0), Chmod(0, false), Unlink(6)],
        vec![Mkdir(0), Create(3, vec![0], 0)],
        vec![Rename(0, 0, 3), Create(0, vec![], 0)],
    ];
    let choices = [
        3773, 16223, 19000, 22769, 11478, 6033, 1743, 467, 56697, 2913, 41609, 46369, 8093, 12342,
        31438, 48903, 63693, 61647, 1148, 723, 7627, 332, 10314, 38769, 47001, 21188, 12740, 13321,
        60249, 1212, 48531, 17227, 19159, 43918, 3382, 24157, 26488, 849, 41049, 1090, 55387,
        61309, 43478, 12296, 1277, 35020, 6436, 21375, 19286, 32600, 13335, 16812, 20833, 6033,
        198, 57499, 16848, 36826, 60942, 34933, 55600, 14853, 35614, 33136, 2658, 16884, 4549,
        18859, 53601, 16791,
    ];
    run_case(&lists, &choices).unwrap();
}

/// A file in chunks (so not served) renamed over a served file: the replaced file's served
/// key stayed, and nginx served its (empty) bytes at the name of the file in chunks. A
/// rename now keeps the destination's served key only when the source's bytes overwrite it.
#[test]
fn a_file_in_chunks_renamed_over_a_served_file_leaves_nothing_served() {
    use Op::*;
    let lists = vec![
        vec![Create(6, vec![], 0), Create(5, vec![0], 2)],
        vec![Create(2, vec![0], 0), Rename(2, 1, 0)],
        vec![Chmod(3, false), Create(1, vec![], 0), Create(0, vec![], 0)],
    ];
    let choices = [
        23602, 4, 216, 9079, 2, 4, 4, 4, 83, 9287, 6476, 6614, 11507, 4, 4, 4, 0, 4, 4, 4, 4, 4,
        772, 4, 4, 4, 0,
    ];
    run_case(&lists, &choices).unwrap();
}

/// Found by the soak: `cp -a`'s create (0600, opened to 0644 at the close) published the file
/// to its served key between another mount's unlink reading the record (still private) and
/// deleting it: the unlink deleted only the private key, and the served key outlived the file
/// (nginx would have served bytes of a removed file). The last name's served key now goes
/// with the unlink whatever mode it read.
#[test]
fn a_publish_serving_a_file_while_another_mount_unlinks_it_leaves_no_served_key() {
    use Op::*;
    let lists = vec![
        vec![
            Create(0, vec![0], 0),
            Create(3, vec![], 0),
            Create(3, vec![], 2),
        ],
        vec![Compact(1), Chmod(3, false)],
        vec![Unlink(3), Unlink(3)],
    ];
    let choices = [
        15239, 1023, 8678, 60273, 8917, 47416, 2763, 375, 50391, 75, 50248, 7, 17881, 33016, 48378,
        18310, 7926, 351, 7174, 13788, 163, 18757, 13, 13423, 7813, 3421, 4134, 1164, 30985, 18884,
        580, 32322, 34053, 7375, 1478, 11036, 64130, 11570, 1220, 4073, 9919, 45828, 2087, 11502,
        22450, 13764, 825, 46752, 9641, 14624, 40891, 4183, 17579, 4, 4, 772,
    ];
    run_case(&lists, &choices).unwrap();
}
