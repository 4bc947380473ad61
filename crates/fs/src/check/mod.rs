//! The read-only consistency check of a whole store (`memfis check`): every invariant of
//! docs/store-layout.md, walked from the root.
//!
//! It works on the store directly (not through a [`crate::MemFs`], which would format an empty
//! store): it never writes. Mounts working meanwhile can show it a state between two steps of
//! an operation, so a problem is reported only if a second scan, a moment later, finds it too.

pub mod repair;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use memfis_memcache::{Command, Item, Reply, Store, StoreError};
use serde::Serialize;

use crate::layout::data_codec::{self, DataCodec, GZIP_FLAG};
use crate::layout::dirlog::{self, LogBase};
use crate::layout::keys::{KeyLayout, ROOT_INO};
use crate::layout::names::join;
use crate::layout::record::{FORMAT_VERSION, FormatRecord, Inode, Kind, Link};
use crate::namespace::lock::LockValue;
use crate::store::batch::{Batch, StoreAt};
use crate::store::fenced_store::FencedStore;
use crate::store::replies::EntrySlot;
use crate::store::replies::{entry_slot, parse_number, value_of};
use crate::{FsError, FsResult};

/// Commands per pipelined batch while scanning.
const BATCH: usize = 256;

/// One thing wrong, with the path it concerns and the key that shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Problem {
    pub path: String,
    pub key: String,
    pub problem: String,
    /// Only a key no name reaches (garbage a crash left; the tree itself is sound).
    pub unreachable: bool,
    /// What `memfis check --repair` works on.
    #[serde(skip)]
    pub fault: Fault,
}

/// What is wrong, as repair needs to know it (`repair.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Nothing to repair automatically (reported only).
    Manual,
    /// An operation left unfinished in the namespace lock.
    UnfinishedOp,
    /// A name whose entry, log record and inode record disagree.
    Name { dir: u64, name: Vec<u8> },
    /// A directory's own record is missing or is not a directory's (`parent` 0: the root).
    DirRecord {
        dir: u64,
        parent: u64,
        name: Vec<u8>,
    },
    /// A directory's mtime key is missing.
    DirMtime { dir: u64 },
    /// A directory's log cannot be read: its sequence key is missing or fenced, a chunk is
    /// missing or malformed.
    DirLog { dir: u64 },
    /// A file's data key is missing or holds another number of bytes than its record says.
    Data { dir: u64, name: Vec<u8>, ino: u64 },
    /// The inode counter is missing or behind inode `max_ino`.
    InodeCounter { max_ino: u64 },
    /// The directory-rename counter is missing.
    DirGeneration,
    /// A key under the prefix that no name reaches.
    Unreached { key: Vec<u8> },
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub problems: Vec<Problem>,
    #[serde(flatten)]
    pub counts: TreeCounts,
    /// Whether the store could list its keys, so that keys outside the tree were looked for.
    pub keys_listed: bool,
    /// Every key the tree accounts for, sorted (what a resync of replicas copies besides the
    /// keys the store lists, since memcached's listing may miss keys in use).
    #[serde(skip)]
    pub tree_keys: Vec<Vec<u8>>,
}

/// What a walk of the tree counts (`memfis check` and `memfis stats` show them).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TreeCounts {
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    /// FIFOs, sockets and device nodes.
    pub specials: u64,
    pub bytes: u64,
    /// Names of files nginx does not serve: the file's mode does not let others read it.
    pub private_names: u64,
    /// Names of files nginx cannot serve: the path makes a data key over 250 bytes.
    pub long_names: u64,
    /// Files larger than one item, in chunks (not served).
    pub chunked_files: u64,
}

/// What a check looks at beyond the invariants it always checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Read every data key's bytes (`memfis check --verify`): every name of a file, and its
    /// private key, must hold the same bytes. Without it, sizes are compared (`mg KEY s`
    /// where the server knows it, so no file's bytes travel).
    pub verify: bool,
}

/// Checks the tree under `keys`' prefix. Errors only when the store cannot be read at all.
pub fn check<S: Store>(store: &S, keys: &KeyLayout) -> FsResult<Report> {
    check_as(store, keys, None, CheckOptions::default())
}

/// As [`check`], with `options`.
pub fn check_with<S: Store>(
    store: &S,
    keys: &KeyLayout,
    options: CheckOptions,
) -> FsResult<Report> {
    check_as(store, keys, None, options)
}

/// One scan, without the second look that filters out operations in flight: the totals of
/// a tree (`memfis stats`).
pub fn scan<S: Store>(store: &S, keys: &KeyLayout) -> FsResult<Report> {
    let store = decoded(store, keys);
    Scan::new(&store, keys, None, CheckOptions::default()).run()
}

/// The store with gzip-compressed data keys read as their plain bytes.
fn decoded<'a, S: Store>(store: &'a S, keys: &KeyLayout) -> FencedStore<&'a S> {
    FencedStore::new(store, DataCodec::new(keys, false))
}

/// As [`check`], for the holder of the namespace lock (repair): that lock is not a problem.
pub(crate) fn check_as<S: Store>(
    store: &S,
    keys: &KeyLayout,
    holder: Option<&str>,
    options: CheckOptions,
) -> FsResult<Report> {
    let store = &decoded(store, keys);
    let first = Scan::new(store, keys, holder, options).run()?;
    if first.problems.is_empty() {
        return Ok(first);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut second = Scan::new(store, keys, holder, options).run()?;
    let seen: HashSet<&Problem> = first.problems.iter().collect();
    second.problems.retain(|p| seen.contains(p));
    Ok(second)
}

struct Scan<'a, S: Store> {
    store: &'a S,
    keys: &'a KeyLayout,
    report: Report,
    /// Every key the tree accounts for.
    expected: HashSet<Vec<u8>>,
    /// Files in the tree, with the chunks their records name (generation, count; `None` for
    /// a file in one item): other chunks of them may be a write in progress, or a leak.
    file_inos: HashMap<u64, Option<(u64, u64)>>,
    max_ino: u64,
    /// Owner string of a namespace lock this check runs under.
    holder: Option<&'a str>,
    options: CheckOptions,
    /// Whether the store answered meta commands so far (not through twemproxy).
    meta: bool,
    /// With `verify`: per file, its record's names in order, and each name's bytes key.
    verify: HashMap<u64, FileKeys>,
}

/// The keys holding a file's bytes, for `--verify`.
struct FileKeys {
    links: Vec<Link>,
    size: u64,
    names: Vec<NameKey>,
}

struct NameKey {
    link: Link,
    path: Vec<u8>,
    key: Vec<u8>,
}

/// What the walk goes on with after a listed name.
enum Reached {
    /// A directory to walk; `recorded` when its record was read (a second path to it is
    /// then a cycle).
    Dir {
        child: Child,
        recorded: bool,
    },
    File(DataCheck),
    Nothing,
}

/// A listed name's inode record as the walk found it.
enum ChildRecord {
    Found(Inode),
    Missing,
    Unreadable,
}

/// A name a directory's listing holds, as the walk checks it.
struct Child {
    dir: u64,
    name: Vec<u8>,
    ino: u64,
    /// As the listing says.
    kind: Kind,
    path: Vec<u8>,
}

impl Child {
    fn name_fault(&self) -> Fault {
        Fault::Name {
            dir: self.dir,
            name: self.name.clone(),
        }
    }
}

/// A name's data key and the size its record says it holds.
#[derive(Clone)]
struct DataCheck {
    fault: Fault,
    path: Vec<u8>,
    key: Vec<u8>,
    size: u64,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl<'a, S: Store> Scan<'a, S> {
    fn new(
        store: &'a S,
        keys: &'a KeyLayout,
        holder: Option<&'a str>,
        options: CheckOptions,
    ) -> Self {
        Scan {
            store,
            keys,
            report: Report::default(),
            expected: HashSet::new(),
            file_inos: HashMap::new(),
            max_ino: ROOT_INO,
            holder,
            options,
            meta: true,
            verify: HashMap::new(),
        }
    }

    fn problem(&mut self, fault: Fault, path: &[u8], key: &[u8], what: impl Into<String>) {
        let path = if path.is_empty() { b"/" } else { path };
        self.report.problems.push(Problem {
            path: text(path),
            key: text(key),
            problem: what.into(),
            unreachable: matches!(fault, Fault::Unreached { .. }),
            fault,
        });
    }

    fn get(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        Ok(self.store.get_at(key)?.map(|i| i.value))
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> FsResult<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            let results = self
                .store
                .execute(chunk.iter().map(|k| Command::Get(k.clone())).collect());
            for (k, r) in chunk.iter().zip(results) {
                out.push(value_of(k, r)?.map(|i| i.value));
            }
        }
        Ok(out)
    }

    fn run(mut self) -> FsResult<Report> {
        let format_key = self.keys.format();
        let Some(format) = self.get(&format_key)? else {
            self.problem(
                Fault::Manual,
                b"",
                &format_key,
                "no format record: nothing was ever mounted under this prefix, or the store was emptied",
            );
            return Ok(self.report);
        };
        let rec: FormatRecord = serde_json::from_slice(&format)
            .map_err(|e| FsError::corrupt(&format_key, e.to_string()))?;
        if rec.format != "memfis" || rec.version != FORMAT_VERSION {
            return Err(FsError::unknown_format(&format_key, &rec));
        }
        self.check_lock()?;
        self.walk()?;
        if self.options.verify {
            self.verify_names()?;
        }
        self.check_counters()?;
        self.check_unreached_keys();
        let mut tree_keys: Vec<Vec<u8>> = std::mem::take(&mut self.expected).into_iter().collect();
        tree_keys.sort_unstable();
        self.report.tree_keys = tree_keys;
        Ok(self.report)
    }

    /// A lock held by a live mount is an operation in progress: wait for it. One left by a
    /// gone mount is an unfinished operation (the next mount completes it).
    fn check_lock(&mut self) -> FsResult<()> {
        let key = self.keys.ns_lock();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(value) = self.get(&key)? {
            let held: LockValue = match serde_json::from_slice(&value) {
                Ok(v) => v,
                Err(e) => {
                    let what = format!("unreadable namespace lock: {e}");
                    self.problem(Fault::UnfinishedOp, b"", &key, what);
                    return Ok(());
                }
            };
            if self.holder == Some(held.owner.as_str()) {
                return Ok(());
            }
            let mount = held.owner.split('/').next().unwrap_or_default().to_string();
            let alive = self.get(&self.keys.alive(&mount))?.is_some();
            if !alive || Instant::now() > deadline {
                let what = match &held.intent {
                    Some(intent) => format!(
                        "unfinished operation of mount {mount} ({}): {intent:?}; the next mount to \
                         touch the tree completes it",
                        if alive { "still running" } else { "gone" }
                    ),
                    None => format!("namespace lock held by mount {mount}, no intent stored yet"),
                };
                self.problem(Fault::UnfinishedOp, b"", &key, what);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn walk(&mut self) -> FsResult<()> {
        let mut queue = VecDeque::from([(ROOT_INO, Vec::new(), 0, Vec::new())]);
        let mut seen_dirs = HashSet::from([ROOT_INO]);
        while let Some((dir, path, parent, dir_name)) = queue.pop_front() {
            let Some(listing) = self.check_dir(dir, &path, parent, &dir_name)? else {
                continue;
            };
            self.report.counts.directories += 1;
            let names: Vec<(&Vec<u8>, &(u64, Kind))> = listing.iter().collect();
            let mut batch = Batch::new();
            let sent: Vec<_> = names
                .iter()
                .map(|(name, (ino, _))| {
                    let entry = batch.gets(self.keys.entry(dir, name));
                    (entry, batch.get(self.keys.inode(*ino)))
                })
                .collect();
            let mut results = batch.execute_in_pieces(&self.store, BATCH);
            let mut data_checks: Vec<DataCheck> = Vec::new();
            for ((name, (ino, kind)), (entry, record)) in names.into_iter().zip(sent) {
                let child = Child {
                    dir,
                    name: name.clone(),
                    ino: *ino,
                    kind: *kind,
                    path: join(&path, name),
                };
                let entry = results.entry(entry, name);
                let rec = results.take(record)?;
                match self.check_child(child, entry, rec) {
                    Reached::Dir { child, recorded } => {
                        if seen_dirs.insert(child.ino) {
                            queue.push_back((child.ino, child.path, dir, child.name));
                        } else if recorded {
                            let what = "directory reached twice (a cycle)";
                            let key = self.keys.inode(child.ino);
                            self.problem(Fault::Manual, &child.path, &key, what);
                        }
                    }
                    Reached::File(check) => data_checks.push(check),
                    Reached::Nothing => {}
                }
            }
            self.check_data(data_checks)?;
        }
        Ok(())
    }

    /// One listed name: its entry and record, and what the walk goes on with (a directory
    /// to walk, even one whose record is missing since its contents may all be there; a
    /// file's data to check).
    fn check_child(
        &mut self,
        child: Child,
        entry: FsResult<EntrySlot>,
        rec: Option<Item>,
    ) -> Reached {
        self.expected
            .insert(self.keys.entry(child.dir, &child.name));
        self.expected.insert(self.keys.inode(child.ino));
        // Mostly absent; a resync compares it all the same (see `check_counters`).
        self.expected.insert(self.keys.lock_table(child.ino));
        self.max_ino = self.max_ino.max(child.ino);
        self.check_entry(&child, entry);
        let rec = match self.child_record(&child, rec) {
            ChildRecord::Found(rec) => rec,
            ChildRecord::Missing if child.kind == Kind::Dir => {
                return Reached::Dir {
                    child,
                    recorded: false,
                };
            }
            ChildRecord::Missing | ChildRecord::Unreadable => return Reached::Nothing,
        };
        match rec.kind {
            Kind::Dir => Reached::Dir {
                child,
                recorded: true,
            },
            Kind::File => self
                .check_file(&child, &rec)
                .map_or(Reached::Nothing, Reached::File),
            Kind::Symlink => {
                self.report.counts.symlinks += 1;
                if rec.target.is_none() {
                    let key = self.keys.inode(child.ino);
                    self.problem(Fault::Manual, &child.path, &key, "symlink without a target");
                }
                Reached::Nothing
            }
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                self.report.counts.specials += 1;
                Reached::Nothing
            }
        }
    }

    /// Whether a listed name's entry key names the inode the listing says.
    fn check_entry(&mut self, child: &Child, entry: FsResult<EntrySlot>) {
        let ekey = self.keys.entry(child.dir, &child.name);
        let ino = child.ino;
        match entry {
            Ok(slot) if slot.ino == Some(ino) => {}
            Ok(slot) if slot.taken_by.is_some() => self.problem(
                child.name_fault(),
                &child.path,
                &ekey,
                format!(
                    "listed as inode {ino} but its hashed entry key holds the entry of \
                     another name ({})",
                    String::from_utf8_lossy(slot.taken_by.as_deref().unwrap_or_default())
                ),
            ),
            Ok(slot) => self.problem(
                child.name_fault(),
                &child.path,
                &ekey,
                format!("listed as inode {ino} but its entry says {:?}", slot.ino),
            ),
            Err(e) => self.problem(child.name_fault(), &child.path, &ekey, e.to_string()),
        }
    }

    /// A listed name's inode record, decoded and held against the listing (kind, the name
    /// among its links, a directory's single name); missing or unreadable ones reported.
    fn child_record(&mut self, child: &Child, rec: Option<Item>) -> ChildRecord {
        let ikey = self.keys.inode(child.ino);
        let Some(rec) = rec else {
            let what = "entry points at a missing inode record";
            let fault = match child.kind {
                Kind::Dir => Fault::DirRecord {
                    dir: child.ino,
                    parent: child.dir,
                    name: child.name.clone(),
                },
                _ => child.name_fault(),
            };
            self.problem(fault, &child.path, &ikey, what);
            return ChildRecord::Missing;
        };
        let rec = match Inode::decode(&ikey, &rec.value) {
            Ok(r) => r,
            Err(e) => {
                self.problem(Fault::Manual, &child.path, &ikey, e.to_string());
                return ChildRecord::Unreadable;
            }
        };
        if rec.kind != child.kind {
            self.problem(
                child.name_fault(),
                &child.path,
                &ikey,
                format!(
                    "listed as {:?} but the record is {:?}",
                    child.kind, rec.kind
                ),
            );
        }
        if !rec.links.contains(&Link::new(child.dir, &child.name)) {
            let what = "the inode record does not list this name";
            self.problem(child.name_fault(), &child.path, &ikey, what);
        }
        if rec.kind == Kind::Dir && rec.links.len() != 1 {
            let what = "a directory with more than one name";
            self.problem(Fault::Manual, &child.path, &ikey, what);
        }
        ChildRecord::Found(rec)
    }

    /// A file's keys: its chunks, or the data key its name serves (and the private key it
    /// may share); the data check of its bytes, when there are bytes to check.
    fn check_file(&mut self, child: &Child, rec: &Inode) -> Option<DataCheck> {
        let ino = child.ino;
        let named = rec.chunk_size.map(|cs| {
            let count = crate::files::chunk_buffer::chunk_count(rec.size, cs.max(1));
            (rec.chunk_gen, count)
        });
        self.file_inos.insert(ino, named);
        self.report.counts.files += 1;
        self.report.counts.bytes += rec.size;
        if let Some((generation, count)) = named {
            self.report.counts.chunked_files += 1;
            // Chunks may be missing (sparse): only the keys are known.
            for n in 0..count {
                self.expected.insert(self.keys.chunk(ino, generation, n));
            }
            return None;
        }
        let key = self.keys.file_bytes(ino, rec.mode, &child.path);
        let private = self.keys.private_data(ino);
        if key == private {
            match crate::layout::keys::is_public(rec.mode) {
                true => self.report.counts.long_names += 1,
                false => self.report.counts.private_names += 1,
            }
        }
        self.expected.insert(key.clone());
        if rec.links.len() > 1 {
            // A name removed or moved may leave the shared private key behind until the
            // file goes: not worth a report.
            self.expected.insert(private.clone());
        }
        // A private key is made by the first publish: an empty file may have none.
        if key == private && rec.size == 0 {
            return None;
        }
        if self.options.verify {
            let names = self.verify.entry(ino).or_insert_with(|| FileKeys {
                links: rec.links.clone(),
                size: rec.size,
                names: Vec::new(),
            });
            if !names.names.iter().any(|n| n.key == key) {
                names.names.push(NameKey {
                    link: Link::new(child.dir, &child.name),
                    path: child.path.clone(),
                    key: key.clone(),
                });
            }
        }
        Some(DataCheck {
            fault: Fault::Data {
                dir: child.dir,
                name: child.name.clone(),
                ino,
            },
            path: child.path.clone(),
            key,
            size: rec.size,
        })
    }

    /// A directory's own keys; its listing if they can be read.
    fn check_dir(
        &mut self,
        dir: u64,
        path: &[u8],
        parent: u64,
        name: &[u8],
    ) -> FsResult<Option<dirlog::Listing>> {
        let Some((base, seq)) = self.check_dir_keys(dir, path, parent, name)? else {
            return Ok(None);
        };
        self.replay_dir_log(dir, path, base, seq)
    }

    /// A directory's record, mtime, sequence and base keys: where its log starts and how
    /// many records it holds, if the log can be read.
    fn check_dir_keys(
        &mut self,
        dir: u64,
        path: &[u8],
        parent: u64,
        name: &[u8],
    ) -> FsResult<Option<(LogBase, u64)>> {
        let record_fault = Fault::DirRecord {
            dir,
            parent,
            name: name.to_vec(),
        };
        let log_fault = Fault::DirLog { dir };
        let ikey = self.keys.inode(dir);
        let seq_key = self.keys.dir_seq(dir);
        let mtime_key = self.keys.dir_mtime(dir);
        let base_key = self.keys.dir_base(dir);
        let own_keys = [
            ikey.clone(),
            seq_key.clone(),
            mtime_key.clone(),
            base_key.clone(),
        ];
        let mut own = self.get_many(&own_keys)?.into_iter();
        let (rec, seq, mtime, base) = (
            own.next().flatten(),
            own.next().flatten(),
            own.next().flatten(),
            own.next().flatten(),
        );
        self.expected.extend(own_keys);
        let base = match LogBase::decode(&base_key, base.as_deref()) {
            Ok(base) => base,
            Err(e) => {
                self.problem(log_fault, path, &base_key, e.to_string());
                return Ok(None);
            }
        };
        match rec.map(|r| Inode::decode(&ikey, &r)) {
            None => self.problem(record_fault, path, &ikey, "directory record is missing"),
            Some(Err(e)) => self.problem(record_fault, path, &ikey, e.to_string()),
            Some(Ok(r)) if r.kind != Kind::Dir => {
                self.problem(Fault::Manual, path, &ikey, "not a directory record")
            }
            Some(Ok(_)) => {}
        }
        if mtime.is_none() {
            let what = "directory mtime key is missing";
            self.problem(Fault::DirMtime { dir }, path, &mtime_key, what);
        }
        let Some(seq) = seq else {
            let what = "directory log sequence is missing";
            self.problem(log_fault, path, &seq_key, what);
            return Ok(None);
        };
        let Some(seq) = parse_number(&seq) else {
            self.problem(
                log_fault,
                path,
                &seq_key,
                "directory log sequence is fenced: an rmdir did not finish",
            );
            return Ok(None);
        };
        Ok(Some((base, seq)))
    }

    /// A directory's listing, replayed from its log's chunks (`seq` records from `base`);
    /// names the log leaves ambiguous are settled by their entry keys.
    fn replay_dir_log(
        &mut self,
        dir: u64,
        path: &[u8],
        base: LogBase,
        seq: u64,
    ) -> FsResult<Option<dirlog::Listing>> {
        let log_fault = Fault::DirLog { dir };
        let chunk_keys = self.keys.dir_log_keys(dir, base, seq);
        self.expected.extend(chunk_keys.iter().cloned());
        self.expected.insert(
            self.keys
                .dir_log(dir, seq / self.keys.log_chunk_records() + 1),
        );
        let mut state = dirlog::Replay::default();
        let mut broken = false;
        for (key, chunk) in chunk_keys.iter().zip(self.get_many(&chunk_keys)?) {
            match chunk {
                Some(c) => {
                    if let Err(e) = dirlog::replay(key, &c, &mut state) {
                        self.problem(log_fault.clone(), path, key, e.to_string());
                        broken = true;
                    }
                }
                None => {
                    let what = "directory log chunk is missing";
                    self.problem(log_fault.clone(), path, key, what);
                    broken = true;
                }
            }
        }
        if broken {
            return Ok(None);
        }
        let (mut listing, ambiguous) = state.finish();
        let mut entries = Vec::new();
        for (name, _) in &ambiguous {
            let key = self.keys.entry(dir, name);
            let slot = entry_slot(&key, name, self.store.run(Command::Gets(key.clone())))?;
            entries.push(slot.ino);
        }
        dirlog::settle(&mut listing, ambiguous, &entries);
        Ok(Some(listing))
    }

    /// Each served file's data key holds as many bytes as its record says. The sizes come
    /// from `mg KEY s f`, without the values; a gzip-flagged item's stored size is its
    /// compressed size, so those values are read (and decompressed), as every value is where
    /// the store has no meta commands (twemproxy, memcached before 1.6) or with `--verify`
    /// (which compares the bytes themselves afterwards).
    fn check_data(&mut self, files: Vec<DataCheck>) -> FsResult<()> {
        let mut read = Vec::new();
        let mut files = files.into_iter().peekable();
        while self.meta && !self.options.verify && files.peek().is_some() {
            let chunk: Vec<DataCheck> = files.by_ref().take(BATCH).collect();
            let batch = chunk
                .iter()
                .map(|f| Command::MetaSize(f.key.clone()))
                .collect();
            let results = self.store.execute(batch);
            if results.iter().any(|r| !matches!(r, Ok(Reply::Meta(_)))) {
                // No meta commands here (twemproxy closes the connection, old memcached says
                // ERROR): read values from now on.
                self.meta = false;
                read.extend(chunk);
                break;
            }
            for (f, r) in chunk.into_iter().zip(results) {
                match r {
                    Ok(Reply::Meta(None)) => self.data_missing(f),
                    Ok(Reply::Meta(Some(m))) if m.flags & GZIP_FLAG != 0 => read.push(f),
                    Ok(Reply::Meta(Some(m))) => self.data_size(f, m.size),
                    _ => unreachable!("every reply is a meta reply"),
                }
            }
        }
        read.extend(files);
        for chunk in read.chunks(BATCH) {
            let batch = chunk.iter().map(|f| Command::Get(f.key.clone())).collect();
            let results = self.store.execute(batch);
            for (f, r) in chunk.iter().zip(results) {
                match value_bytes(&f.key, r)? {
                    Value::Missing => self.data_missing(f.clone()),
                    Value::Bytes(v) => self.data_size(f.clone(), v.len() as u64),
                    Value::Undecodable(e) => self.problem(
                        f.fault.clone(),
                        &f.path,
                        &f.key,
                        format!("data key is flagged gzip but does not decompress ({e})"),
                    ),
                }
            }
        }
        Ok(())
    }

    fn data_missing(&mut self, f: DataCheck) {
        let what = "data key is missing (nginx cannot serve it)";
        self.problem(f.fault, &f.path, &f.key, what)
    }

    fn data_size(&mut self, f: DataCheck, held: u64) {
        if held != f.size {
            let what = format!("data key holds {held} bytes, the record says {}", f.size);
            self.problem(f.fault, &f.path, &f.key, what);
        }
    }

    /// `--verify`: every name of a file (and its private key) holds the same bytes: those of
    /// the first name, in the record's order, that holds the record's size (what repair
    /// copies to the others).
    fn verify_names(&mut self) -> FsResult<()> {
        let mut files: Vec<(u64, FileKeys)> = std::mem::take(&mut self.verify)
            .into_iter()
            .filter(|(_, f)| f.names.len() > 1)
            .collect();
        files.sort_by_key(|(ino, _)| *ino);
        for (ino, mut file) in files {
            let order = |n: &NameKey| file.links.iter().position(|l| *l == n.link);
            file.names.sort_by_key(order);
            let keys: Vec<Vec<u8>> = file.names.iter().map(|n| n.key.clone()).collect();
            let results = self
                .store
                .execute(keys.iter().cloned().map(Command::Get).collect());
            let mut held = Vec::with_capacity(keys.len());
            for (key, r) in keys.iter().zip(results) {
                held.push(match value_bytes(key, r)? {
                    Value::Bytes(v) => Some(v),
                    _ => None, // reported by the size check
                });
            }
            let Some(canonical) = held
                .iter()
                .position(|h| h.as_ref().is_some_and(|v| v.len() as u64 == file.size))
            else {
                continue; // no name holds the record's size: the size check reported them
            };
            for (n, h) in file.names.iter().zip(&held) {
                let Some(bytes) = h else { continue };
                if bytes.len() as u64 == file.size && Some(bytes) != held[canonical].as_ref() {
                    let what = format!(
                        "data key holds other bytes than {} (same size)",
                        text(&file.names[canonical].path)
                    );
                    let fault = Fault::Data {
                        dir: n.link.parent,
                        name: n.link.name.clone(),
                        ino,
                    };
                    self.problem(fault, &n.path, &n.key, what);
                }
            }
        }
        Ok(())
    }

    fn check_counters(&mut self) -> FsResult<()> {
        // The tree's own keys no name reaches: a resync of replicas must not count on the
        // store's listing for them (it misses keys memcached moves while it lists).
        self.expected.extend([
            self.keys.format(),
            self.keys.next_ino(),
            self.keys.inode_count(),
            self.keys.dir_generation(),
            self.keys.ns_lock(),
            self.keys.lock_table(ROOT_INO),
        ]);
        let next = self.keys.next_ino();
        let fault = Fault::InodeCounter {
            max_ino: self.max_ino,
        };
        match self.get(&next)?.as_deref().and_then(parse_number) {
            None => self.problem(
                fault,
                b"",
                &next,
                "inode counter is missing or not a number",
            ),
            Some(n) if n < self.max_ino => self.problem(
                fault,
                b"",
                &next,
                format!("inode counter {n} is behind inode {}", self.max_ino),
            ),
            Some(_) => {}
        }
        let generation = self.keys.dir_generation();
        if self
            .get(&generation)?
            .as_deref()
            .and_then(parse_number)
            .is_none()
        {
            let what = "directory-rename counter is missing";
            self.problem(Fault::DirGeneration, b"", &generation, what);
        }
        Ok(())
    }

    /// With a store that lists its keys: every key under the prefix the walk did not reach.
    fn check_unreached_keys(&mut self) {
        let Some(Ok(all)) = self.store.list_keys() else {
            return;
        };
        self.report.keys_listed = true;
        let prefix = self.keys.prefix().as_bytes();
        let alive_prefix = self.keys.alive("");
        let mut others_alive = None;
        let mut unreached: Vec<Vec<u8>> = Vec::new();
        let mut mounts = Vec::new();
        for k in all {
            if let Some(id) = k.strip_prefix(alive_prefix.as_slice()) {
                mounts.push(text(id));
            }
            if k.starts_with(prefix) && !self.expected.contains(&k) {
                unreached.push(k);
            }
        }
        unreached.sort();
        for key in unreached {
            let rest = &key[prefix.len()..];
            let numbered = rest.get(2).is_some_and(u8::is_ascii_digit);
            let what = match rest.first() {
                Some(b'/') => {
                    "data key outside the tree or of a file others may not read \
                     (nginx serves it, no served name has it)"
                }
                Some(b'%') if numbered => match rest.get(1) {
                    Some(b'i') => "inode record no entry reaches",
                    Some(b'd') => "private bytes of an inode no name keeps there",
                    Some(b'k') => {
                        let mut parts = rest[2..].split(|&b| b == b'.');
                        let ino = parts.next().and_then(parse_number);
                        match ino.and_then(|i| self.file_inos.get(&i)) {
                            None => "chunk of a file that is gone",
                            // A file in the tree: a chunk its record does not name (another
                            // generation, or past its size) is either a write in progress
                            // (chunks go out before the record takes them, at close) or left
                            // by a writer that died. Only with no other mount alive can no
                            // write be in progress.
                            Some(_) => {
                                let alive =
                                    *others_alive.get_or_insert_with(|| self.others_alive(&mounts));
                                if alive {
                                    continue;
                                }
                                "chunk its file's record does not name (a write cut short; no \
                                 other mount is alive to be writing it)"
                            }
                        }
                    }
                    Some(b'e' | b'h') => "directory entry its directory does not list",
                    Some(b's' | b'l' | b'm' | b'b' | b'c') => {
                        "directory key of a directory not in the tree, or log no replay reads \
                         (below the base, or a compaction's unused snapshot)"
                    }
                    _ => continue,
                },
                Some(b'%') => continue, // format, counters, lock, liveness keys
                _ => continue,          // another prefix that starts like this one
            };
            let path = crate::layout::keys::unescape(rest);
            let path = if rest.first() == Some(&b'/') {
                path
            } else {
                Vec::new()
            };
            self.problem(Fault::Unreached { key: key.clone() }, &path, &key, what);
        }
    }

    /// Whether a mount other than the one this check runs for (repair's) is alive: its
    /// liveness key, listed, is still there when read after the listing (a listing may show
    /// an expired item). A read that fails counts as alive.
    fn others_alive(&self, mounts: &[String]) -> bool {
        let own = self.holder.and_then(|h| h.split('/').next());
        mounts
            .iter()
            .filter(|m| Some(m.as_str()) != own)
            .any(|m| !matches!(self.get(&self.keys.alive(m)), Ok(None)))
    }
}

/// A data key's value as read through the codec.
enum Value {
    Missing,
    Bytes(Vec<u8>),
    /// Flagged gzip but not a gzip stream: nginx would send garbage as `Content-Encoding: gzip`.
    Undecodable(StoreError),
}

fn value_bytes(key: &[u8], r: memfis_memcache::CmdResult) -> FsResult<Value> {
    match r {
        Err(e) if data_codec::is_undecodable(&e) => Ok(Value::Undecodable(e)),
        r => Ok(match value_of(key, r)? {
            Some(item) => Value::Bytes(item.value),
            None => Value::Missing,
        }),
    }
}
