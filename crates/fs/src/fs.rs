//! Namespace operations: the part of the filesystem that works on inode records, directory
//! entries and directory logs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memfis_memcache::command::Value;
use memfis_memcache::{CmdResult, Command, Item, Reply, Store, StoreOp};
use tracing::warn;

use crate::dirlog::{self, Op};
use crate::files::{Handle, OpenFile};
use crate::keys::{KeyLayout, LOG_CHUNK_RECORDS, ROOT_INO};
use crate::record::{FORMAT_VERSION, FormatRecord, Inode, Kind, Link, Time};
use crate::{FsError, FsResult};

/// Longest name of one directory entry (as on Linux filesystems).
pub const NAME_MAX: usize = 255;
/// How many inode numbers one `incr` reserves for this mount.
const INO_BATCH: u64 = 64;
/// Bytes of an item that are not the value: key (<= 250), header and CAS (memcached items.h).
const ITEM_OVERHEAD: u64 = 512;
/// Retries of a gets/cas round lost to other writers before giving up with EIO.
const CAS_RETRIES: usize = 64;

#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long cached directory paths are trusted (the same as the kernel's attribute TTL).
    pub cache_ttl: Duration,
    /// Largest file the store holds in one item; writes past it fail with EFBIG.
    pub item_size_max: Option<u64>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            cache_ttl: Duration::from_secs(1),
            item_size_max: None,
        }
    }
}

/// Attributes as `stat` shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// Changes asked for by `setattr`; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
}

/// An inode just created by [`MemFs::claim_node`].
pub(crate) struct NewNode {
    pub ino: u64,
    pub rec: Inode,
    pub cas: u64,
    /// Sequence number of its record in the parent's log.
    pub seq: u64,
    pub data_key: Vec<u8>,
}

/// A directory entry as read from the store: the child's inode (or `None` once removed) and
/// the cas token to change it.
pub(crate) struct EntrySlot {
    pub ino: Option<u64>,
    pub cas: Option<u64>,
}

pub struct MemFs<S: Store> {
    pub(crate) store: S,
    pub(crate) keys: KeyLayout,
    pub(crate) cfg: FsConfig,
    /// Reserved inode numbers: next to hand out, end of the reserved range (exclusive).
    inos: Mutex<(u64, u64)>,
    /// Open files by inode, shared by every handle on them in this mount.
    pub(crate) files: Mutex<HashMap<u64, Arc<Mutex<OpenFile>>>>,
    pub(crate) handles: Mutex<HashMap<u64, Handle>>,
    pub(crate) next_fh: AtomicU64,
    /// Each directory met recently: its path (root is the empty path), mode and group.
    dir_paths: Mutex<HashMap<u64, DirInfo>>,
    /// Attributes of directories met recently: the kernel drops its copy whenever an entry
    /// changes, and asking the store again each time would cost `cp -a` a round trip a file.
    dir_attrs: Mutex<HashMap<u64, (Attr, Instant)>>,
    /// Names of directories whose full listing this mount knew at the given time (it made
    /// them, or listed them), kept up to date with its own changes. Within the cache TTL a
    /// name not in the set is answered ENOENT without the store: the same staleness the
    /// kernel's entry cache allows, and it saves `cp -a` the negative lookup of every file.
    known_names: Mutex<HashMap<u64, KnownNames>>,
}

/// What creating inside a directory needs of it, and when it was read.
#[derive(Debug, Clone)]
pub(crate) struct DirInfo {
    pub path: Vec<u8>,
    pub mode: u32,
    pub gid: u32,
    at: Instant,
}

/// A directory's names and when they were last read from the store.
type KnownNames = (HashSet<Vec<u8>>, Instant);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Maps a batch result to the value of a get, naming the key on failure.
pub(crate) fn value_of(key: &[u8], r: CmdResult) -> FsResult<Option<Item>> {
    match r {
        Ok(Reply::Value(v)) => Ok(v),
        Ok(other) => Err(FsError::corrupt(key, format!("unexpected reply {other:?}"))),
        Err(e) => Err(FsError::store(key, e)),
    }
}

/// Maps a batch result of a storage command: `Ok(true)` stored, `Ok(false)` refused.
pub(crate) fn stored(key: &[u8], r: CmdResult) -> FsResult<bool> {
    match r {
        Ok(Reply::Stored) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(FsError::store(key, e)),
    }
}

pub(crate) fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::Invalid("bad file name"));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong {
            key: String::from_utf8_lossy(name).into_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

impl<S: Store> MemFs<S> {
    /// Opens the filesystem under `keys`, creating the format record and root directory on an
    /// empty store. Refuses a store whose format version this build does not know.
    pub fn new(store: S, keys: KeyLayout, cfg: FsConfig) -> FsResult<MemFs<S>> {
        let fs = MemFs {
            store,
            keys,
            cfg,
            inos: Mutex::new((0, 0)),
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dir_paths: Mutex::new(HashMap::new()),
            dir_attrs: Mutex::new(HashMap::new()),
            known_names: Mutex::new(HashMap::new()),
        };
        fs.check_or_create_format()?;
        Ok(fs)
    }

    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    fn check_or_create_format(&self) -> FsResult<()> {
        let key = self.keys.format();
        if let Some(item) = self.store.get(&key).map_err(|e| FsError::store(&key, e))? {
            let rec: FormatRecord = serde_json::from_slice(&item.value)
                .map_err(|e| FsError::corrupt(&key, e.to_string()))?;
            if rec.format != "memfis" || rec.version != FORMAT_VERSION {
                return Err(FsError::UnknownFormat {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    found: format!("{} version {}", rec.format, rec.version),
                    supported: FORMAT_VERSION,
                });
            }
            return Ok(());
        }
        // A fresh store: root first, format record last, so a half-made one is retried.
        let root = Inode::new(Kind::Dir, 0o755, current_uid(), current_gid(), Vec::new());
        let now = Time::now().to_text();
        let batch = vec![
            Command::store(StoreOp::Add, &self.keys.inode(ROOT_INO), &root.encode()),
            Command::store(StoreOp::Add, &self.keys.dir_seq(ROOT_INO), b"0"),
            Command::store(StoreOp::Add, &self.keys.dir_mtime(ROOT_INO), now.as_bytes()),
            Command::store(
                StoreOp::Add,
                &self.keys.next_ino(),
                ROOT_INO.to_string().as_bytes(),
            ),
            Command::store(StoreOp::Add, &self.keys.inode_count(), b"1"),
        ];
        for r in self.store.execute(batch) {
            r.map_err(|e| FsError::store(&key, e))?;
        }
        let format = serde_json::to_vec(&FormatRecord::current()).expect("serializes");
        self.store
            .store(StoreOp::Add, &key, &format)
            .map_err(|e| FsError::store(&key, e))?;
        Ok(())
    }

    // ----- records -------------------------------------------------------------------------

    /// Reads an inode record with its cas token. A missing record is EIO naming the key.
    pub(crate) fn read_inode(&self, ino: u64) -> FsResult<(Inode, u64)> {
        let key = self.keys.inode(ino);
        let item = self
            .store
            .gets(&key)
            .map_err(|e| FsError::store(&key, e))?
            .ok_or_else(|| FsError::missing(&key))?;
        Ok((Inode::decode(&key, &item.value)?, item.cas.unwrap_or(0)))
    }

    /// Changes an inode record with gets + cas, retrying when another writer won the race.
    /// Keeps any open file of this mount in step with the new record.
    pub(crate) fn update_inode(
        &self,
        ino: u64,
        change: impl FnMut(&mut Inode) -> FsResult<()>,
    ) -> FsResult<Inode> {
        let rec = self.update_record(ino, change)?;
        if let Some(of) = self.open_file(ino) {
            lock(&of).adopt_record(rec.clone());
        }
        lock(&self.dir_attrs).remove(&ino);
        lock(&self.dir_paths).remove(&ino);
        Ok(rec)
    }

    /// The gets + cas loop of [`Self::update_inode`], touching no open-file state (for
    /// callers that hold an open file's lock).
    pub(crate) fn update_record(
        &self,
        ino: u64,
        mut change: impl FnMut(&mut Inode) -> FsResult<()>,
    ) -> FsResult<Inode> {
        let key = self.keys.inode(ino);
        for _ in 0..CAS_RETRIES {
            let (mut rec, cas) = self.read_inode(ino)?;
            change(&mut rec)?;
            match self.store.run(Command::cas(&key, &rec.encode(), cas)) {
                Ok(Reply::Stored) => return Ok(rec),
                Ok(Reply::Exists) => continue,
                Ok(Reply::NotFound) => return Err(FsError::missing(&key)),
                Ok(other) => return Err(FsError::corrupt(&key, format!("cas got {other:?}"))),
                Err(e) => return Err(FsError::store(&key, e)),
            }
        }
        Err(FsError::Store {
            key: String::from_utf8_lossy(&key).into_owned(),
            source: memfis_memcache::StoreError::Server("too many concurrent updates".into()),
        })
    }

    pub(crate) fn open_file(&self, ino: u64) -> Option<Arc<Mutex<OpenFile>>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// Reads a directory entry.
    pub(crate) fn read_entry(&self, dir: u64, name: &[u8]) -> FsResult<EntrySlot> {
        let key = self.keys.entry(dir, name);
        let item = self.store.gets(&key).map_err(|e| FsError::store(&key, e))?;
        Ok(match item {
            None => EntrySlot {
                ino: None,
                cas: None,
            },
            Some(item) => EntrySlot {
                ino: parse_entry(&key, &item.value)?,
                cas: item.cas,
            },
        })
    }

    /// Points entry `name` of `dir` at `ino` if it is free (absent or removed).
    /// `Ok(false)` when the name is taken.
    pub(crate) fn claim_entry(&self, dir: u64, name: &[u8], ino: u64) -> FsResult<bool> {
        let key = self.keys.entry(dir, name);
        let value = ino.to_string().into_bytes();
        for _ in 0..CAS_RETRIES {
            if self
                .store
                .store(StoreOp::Add, &key, &value)
                .map_err(|e| FsError::store(&key, e))?
            {
                return Ok(true);
            }
            let slot = self.read_entry(dir, name)?;
            match (slot.ino, slot.cas) {
                (Some(_), _) => return Ok(false),
                (None, None) => continue, // vanished between add and gets
                (None, Some(cas)) => {
                    if self.set_entry_cas(&key, &value, cas)? {
                        return Ok(true);
                    }
                }
            }
        }
        Err(FsError::corrupt(&key, "entry keeps changing"))
    }

    /// cas on an entry key: `Ok(false)` when someone changed it first.
    pub(crate) fn set_entry_cas(&self, key: &[u8], value: &[u8], cas: u64) -> FsResult<bool> {
        match self.store.run(Command::cas(key, value, cas)) {
            Ok(Reply::Stored) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(FsError::store(key, e)),
        }
    }

    /// Appends a record to a directory's log and bumps its mtime: O(1) store operations.
    pub(crate) fn log_dir_change(
        &self,
        dir: u64,
        op: Op,
        kind: Kind,
        ino: u64,
        name: &[u8],
    ) -> FsResult<()> {
        self.log_dir_changes(dir, &[(op, kind, ino, name)])
    }

    pub(crate) fn log_dir_changes(
        &self,
        dir: u64,
        changes: &[(Op, Kind, u64, &[u8])],
    ) -> FsResult<()> {
        let seq_key = self.keys.dir_seq(dir);
        let delta = changes.len() as u64;
        let last = self
            .store
            .incr(&seq_key, delta)
            .map_err(|e| FsError::store(&seq_key, e))?
            .ok_or_else(|| FsError::missing(&seq_key))?;
        self.append_log(dir, last, changes, Vec::new())?;
        Ok(())
    }

    /// Appends records numbered up to `last` to their chunks, sets the directory's mtime and
    /// runs `extra` in the same pipelined batch, returning the results of `extra`.
    pub(crate) fn append_log(
        &self,
        dir: u64,
        last: u64,
        changes: &[(Op, Kind, u64, &[u8])],
        extra: Vec<Command>,
    ) -> FsResult<Vec<CmdResult>> {
        let first = last + 1 - changes.len() as u64;
        let now_time = Time::now();
        let now = now_time.to_text();
        let mut keys = Vec::new();
        let mut batch = Vec::new();
        for (i, (op, kind, ino, name)) in changes.iter().enumerate() {
            let key = self
                .keys
                .dir_log(dir, (first + i as u64) / LOG_CHUNK_RECORDS);
            let record = dirlog::encode(*op, *kind, *ino, name);
            batch.push(Command::store(StoreOp::Append, &key, &record));
            keys.push((key, record));
        }
        let mtime_key = self.keys.dir_mtime(dir);
        batch.push(Command::store(StoreOp::Set, &mtime_key, now.as_bytes()));
        batch.extend(extra);
        let mut results = self.store.execute(batch).into_iter();
        for (key, record) in &keys {
            // NOT_STORED: the chunk does not exist yet.
            if !stored(key, results.next().expect("result"))? {
                self.append_or_add(key, record)?;
            }
        }
        results
            .next()
            .expect("result")
            .map_err(|e| FsError::store(&mtime_key, e))?;
        if let Some((attr, _)) = lock(&self.dir_attrs).get_mut(&dir) {
            attr.mtime = now_time;
            attr.ctime = now_time;
        }
        for (op, _, _, name) in changes {
            self.note_name(dir, name, *op == Op::Add);
        }
        Ok(results.collect())
    }

    /// Keeps a known listing in step with a change this mount made.
    pub(crate) fn note_name(&self, dir: u64, name: &[u8], present: bool) {
        if let Some((names, _)) = lock(&self.known_names).get_mut(&dir) {
            if present {
                names.insert(name.to_vec());
            } else {
                names.remove(name);
            }
        }
    }

    fn append_or_add(&self, key: &[u8], record: &[u8]) -> FsResult<()> {
        for _ in 0..CAS_RETRIES {
            if self
                .store
                .store(StoreOp::Append, key, record)
                .map_err(|e| FsError::store(key, e))?
            {
                return Ok(());
            }
            if self
                .store
                .store(StoreOp::Add, key, record)
                .map_err(|e| FsError::store(key, e))?
            {
                return Ok(());
            }
        }
        Err(FsError::corrupt(key, "cannot append to directory log"))
    }

    /// The listing of a directory, replayed from its log.
    pub fn list_dir(&self, dir: u64) -> FsResult<BTreeMap<Vec<u8>, (u64, Kind)>> {
        self.settle_created(|_, pe| pe.parent == dir)?;
        let started = Instant::now();
        let seq_key = self.keys.dir_seq(dir);
        let seq = self
            .store
            .get(&seq_key)
            .map_err(|e| FsError::store(&seq_key, e))?
            .ok_or_else(|| FsError::missing(&seq_key))?;
        let seq: u64 = std::str::from_utf8(&seq.value)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| FsError::corrupt(&seq_key, "not a number"))?;
        let keys: Vec<Vec<u8>> = (0..=seq / LOG_CHUNK_RECORDS)
            .map(|c| self.keys.dir_log(dir, c))
            .collect();
        let results = self
            .store
            .execute(keys.iter().map(|k| Command::Get(k.clone())).collect());
        let mut listing = BTreeMap::new();
        for (key, r) in keys.iter().zip(results) {
            // A chunk may be absent if a mount died between incr and append: nothing to replay.
            if let Some(item) = value_of(key, r)? {
                dirlog::replay(key, &item.value, &mut listing)?;
            }
        }
        let names = listing.keys().cloned().collect();
        lock(&self.known_names).insert(dir, (names, started));
        Ok(listing)
    }

    // ----- paths ---------------------------------------------------------------------------

    /// The absolute path of directory `dir` inside the mount ("" for the root).
    pub(crate) fn dir_path(&self, dir: u64) -> FsResult<Vec<u8>> {
        if dir == ROOT_INO {
            return Ok(Vec::new());
        }
        Ok(self.dir_info(dir)?.path)
    }

    /// Path, mode and group of directory `dir`, cached for the cache TTL.
    pub(crate) fn dir_info(&self, dir: u64) -> FsResult<DirInfo> {
        if let Some(info) = lock(&self.dir_paths).get(&dir)
            && info.at.elapsed() < self.cfg.cache_ttl
        {
            return Ok(info.clone());
        }
        let (rec, _) = self.read_inode(dir)?;
        if rec.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let path = match rec.links.first() {
            Some(link) => join(&self.dir_path(link.parent)?, &link.name),
            None if dir == ROOT_INO => Vec::new(),
            None => {
                return Err(FsError::corrupt(
                    &self.keys.inode(dir),
                    "directory without a parent",
                ));
            }
        };
        let info = DirInfo {
            path,
            mode: rec.mode,
            gid: rec.gid,
            at: Instant::now(),
        };
        lock(&self.dir_paths).insert(dir, info.clone());
        Ok(info)
    }

    /// The path of entry `name` of directory `dir`, for messages (best effort).
    pub fn path_of(&self, dir: u64, name: &[u8]) -> String {
        match self.dir_path(dir) {
            Ok(p) => String::from_utf8_lossy(&join(&p, name)).into_owned(),
            Err(_) => format!("<directory inode {dir}>/{}", String::from_utf8_lossy(name)),
        }
    }

    pub(crate) fn forget_dir_paths(&self) {
        lock(&self.dir_paths).clear();
    }

    pub(crate) fn link_path(&self, link: &Link) -> FsResult<Vec<u8>> {
        Ok(join(&self.dir_path(link.parent)?, &link.name))
    }

    /// Data keys of every name of a file.
    pub(crate) fn data_keys(&self, rec: &Inode) -> FsResult<Vec<Vec<u8>>> {
        rec.links
            .iter()
            .map(|l| Ok(self.keys.data(&self.link_path(l)?)))
            .collect()
    }

    // ----- attributes ----------------------------------------------------------------------

    pub(crate) fn attr_from(&self, ino: u64, rec: &Inode, dir_mtime: Option<Time>) -> Attr {
        let mut a = Attr {
            ino,
            kind: rec.kind,
            size: rec.size,
            mode: rec.mode,
            uid: rec.uid,
            gid: rec.gid,
            // Directories report 1 like btrfs: subdirectories are not counted.
            nlink: match rec.kind {
                Kind::Dir => 1,
                _ => rec.links.len() as u32,
            },
            atime: rec.atime,
            mtime: rec.mtime,
            ctime: rec.ctime,
        };
        if let Some(t) = dir_mtime {
            a.mtime = t;
            a.ctime = a.ctime.max(t);
        }
        a
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if let Some(of) = self.open_file(ino) {
            let of = lock(&of);
            return Ok(self.attr_from(ino, &of.view(), None));
        }
        if let Some((attr, at)) = lock(&self.dir_attrs).get(&ino)
            && at.elapsed() < self.cfg.cache_ttl
        {
            return Ok(attr.clone());
        }
        let key = self.keys.inode(ino);
        let mkey = self.keys.dir_mtime(ino);
        let mut r = self
            .store
            .execute(vec![Command::Get(key.clone()), Command::Get(mkey.clone())])
            .into_iter();
        let rec = value_of(&key, r.next().expect("two results"))?
            .ok_or_else(|| FsError::missing(&key))?;
        let rec = Inode::decode(&key, &rec.value)?;
        let mtime = value_of(&mkey, r.next().expect("two results"))?
            .and_then(|i| Time::from_text(&i.value));
        let attr = self.attr_from(ino, &rec, mtime);
        if attr.kind == Kind::Dir {
            lock(&self.dir_attrs).insert(ino, (attr.clone(), Instant::now()));
        }
        Ok(attr)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        check_name(name)?;
        if let Some((names, at)) = lock(&self.known_names).get(&parent)
            && at.elapsed() < self.cfg.cache_ttl
            && !names.contains(name)
        {
            return Err(FsError::NotFound);
        }
        match self.read_entry(parent, name)?.ino {
            Some(ino) => self.getattr(ino),
            None => Err(FsError::NotFound),
        }
    }

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        if let Some(of) = self.open_file(ino) {
            let mut of = lock(&of);
            if of.writers > 0 {
                // Published with the data at flush: keeps `cp -a` at a few round trips a file.
                if let Some(size) = set.size {
                    self.ensure_loaded(ino, &mut of)?;
                    self.check_size(ino, size)?;
                    of.resize(size);
                }
                let mut set = set.clone();
                let view = of.view();
                set.mode = set.mode.or(setid_cleared_by_chown(&view, &set));
                of.pending.apply(&set);
                return Ok(self.attr_from(ino, &of.view(), None));
            }
        }
        if let Some(size) = set.size {
            self.truncate_closed(ino, size)?;
        }
        let rec = self.update_inode(ino, |rec| {
            apply_setattr(rec, set);
            Ok(())
        })?;
        if rec.kind == Kind::Dir
            && let Some(t) = set.mtime
        {
            // The mtime key wins over the record for directories: keep them in step.
            let key = self.keys.dir_mtime(ino);
            self.store
                .store(StoreOp::Set, &key, t.to_text().as_bytes())
                .map_err(|e| FsError::store(&key, e))?;
            return Ok(self.attr_from(ino, &rec, Some(t)));
        }
        self.getattr(ino)
    }

    /// Truncates a file no handle of this mount is writing: rewrite its data keys.
    fn truncate_closed(&self, ino: u64, size: u64) -> FsResult<()> {
        self.check_size(ino, size)?;
        let (rec, _) = self.read_inode(ino)?;
        match rec.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::Invalid("truncate of a symlink")),
        }
        let keys = self.data_keys(&rec)?;
        let mut data = match keys.first() {
            Some(k) => self.read_data(k, rec.size)?,
            None => Vec::new(),
        };
        data.resize(size as usize, 0);
        self.write_data_keys(&keys, Arc::new(data))?;
        if let Some(of) = self.open_file(ino) {
            lock(&of).data = None; // readers of this mount reload the new bytes
        }
        Ok(())
    }

    pub(crate) fn check_size(&self, ino: u64, size: u64) -> FsResult<()> {
        if let Some(item_max) = self.cfg.item_size_max {
            // An item holds the key and a header besides the value.
            let limit = item_max.saturating_sub(ITEM_OVERHEAD);
            if size > limit {
                warn!(
                    ino,
                    size,
                    "file would exceed the store's item_size_max ({item_max} bytes, of which \
                     {ITEM_OVERHEAD} are kept for the key and item header)"
                );
                return Err(FsError::TooBig {
                    key: format!("inode {ino}"),
                    limit: format!("item_size_max {item_max} bytes"),
                });
            }
        }
        Ok(())
    }

    /// Reads a file's bytes from one of its data keys. A missing key is fine only for an
    /// empty file.
    pub(crate) fn read_data(&self, key: &[u8], size: u64) -> FsResult<Vec<u8>> {
        match self.store.get(key).map_err(|e| FsError::store(key, e))? {
            Some(item) => Ok(item.value),
            None if size == 0 => Ok(Vec::new()),
            None => Err(FsError::missing(key)),
        }
    }

    /// Replaces the value of every data key with `data` (one pipelined batch).
    pub(crate) fn write_data_keys(&self, keys: &[Vec<u8>], data: Value) -> FsResult<()> {
        let batch = keys
            .iter()
            .map(|k| Command::store_shared(StoreOp::Set, k, data.clone()))
            .collect();
        for (k, r) in keys.iter().zip(self.store.execute(batch)) {
            r.map_err(|e| FsError::store(k, e))?;
        }
        Ok(())
    }

    // ----- creating ------------------------------------------------------------------------

    fn alloc_ino(&self) -> FsResult<u64> {
        let mut inos = lock(&self.inos);
        if inos.0 >= inos.1 {
            let key = self.keys.next_ino();
            let top = self
                .store
                .incr(&key, INO_BATCH)
                .map_err(|e| FsError::store(&key, e))?
                .ok_or_else(|| FsError::missing(&key))?;
            *inos = (top + 1 - INO_BATCH, top + 1);
        }
        let ino = inos.0;
        inos.0 += 1;
        Ok(ino)
    }

    /// Creates a node: inode record, entry, log record (and an empty data key for a file, a
    /// sequence and mtime key for a directory). Returns the record and its cas token.
    ///
    /// Two round trips in the common case: [add inode, gets inode, add entry, incr seq], then
    /// [append log, set dir mtime, add data]. A sequence number taken by a create that loses
    /// the entry race is simply left unused.
    pub(crate) fn create_node(
        &self,
        parent: u64,
        name: &[u8],
        rec: Inode,
    ) -> FsResult<(u64, Inode, u64)> {
        let node = self.claim_node(parent, name, rec)?;
        let mut extra = Vec::new();
        if node.rec.kind == Kind::File {
            // `add`: bytes left at this path by a crashed mount are overwritten at flush.
            extra.push(Command::store(StoreOp::Add, &node.data_key, b""));
        }
        let record = [(Op::Add, node.rec.kind, node.ino, name)];
        for r in self.append_log(parent, node.seq, &record, extra)? {
            r.map_err(|e| FsError::store(&node.data_key, e))?;
        }
        Ok((node.ino, node.rec, node.cas))
    }

    /// The first round trip of a create: a new inode record and the entry pointing at it.
    /// The name is taken once this returns; its log record (sequence number `seq`) is still
    /// to be appended.
    pub(crate) fn claim_node(&self, parent: u64, name: &[u8], mut rec: Inode) -> FsResult<NewNode> {
        check_name(name)?;
        let dir = self.dir_info(parent)?;
        if dir.mode & libc::S_ISGID != 0 {
            // A set-group-ID directory passes its group on, and the bit to subdirectories.
            rec.gid = dir.gid;
            if rec.kind == Kind::Dir {
                rec.mode |= libc::S_ISGID;
            }
        }
        let path = join(&dir.path, name);
        let data_key = self.keys.data_checked(&path)?;
        let ino = self.alloc_ino()?;
        let ikey = self.keys.inode(ino);
        let ekey = self.keys.entry(parent, name);
        let seq_key = self.keys.dir_seq(parent);
        let mut batch = vec![
            Command::store(StoreOp::Add, &ikey, &rec.encode()),
            Command::Gets(ikey.clone()),
            Command::store(StoreOp::Add, &ekey, ino.to_string().as_bytes()),
            Command::Incr {
                key: seq_key.clone(),
                delta: 1,
            },
            Command::Incr {
                key: self.keys.inode_count(),
                delta: 1,
            },
        ];
        if rec.kind == Kind::Dir {
            batch.push(Command::store(StoreOp::Set, &self.keys.dir_seq(ino), b"0"));
            let now = rec.mtime.to_text();
            batch.push(Command::store(
                StoreOp::Set,
                &self.keys.dir_mtime(ino),
                now.as_bytes(),
            ));
        }
        let mut results = self.store.execute(batch).into_iter();
        let mut next = || results.next().expect("one result per command");
        let inode_added = stored(&ikey, next());
        let cas = value_of(&ikey, next());
        let entry_added = stored(&ekey, next());
        let seq = next();
        let _inode_count = next(); // statistics only: a lost increment is harmless
        let extra: Vec<_> = std::iter::from_fn(|| results.next()).collect();
        let fail = |e: FsError| {
            self.discard_inode(ino, rec.kind);
            let _ = self.store.run(Command::Decr {
                key: self.keys.inode_count(),
                delta: 1,
            });
            Err(e)
        };
        match inode_added {
            Ok(true) => {}
            Ok(false) => return Err(FsError::corrupt(&ikey, "inode number already in use")),
            Err(e) => return fail(e),
        }
        let cas = match cas {
            Ok(Some(item)) => item.cas.unwrap_or(0),
            Ok(None) => return fail(FsError::missing(&ikey)),
            Err(e) => return fail(e),
        };
        if let Some(e) = extra.into_iter().find_map(|r| r.err()) {
            return fail(FsError::store(&ikey, e));
        }
        let claimed = match entry_added {
            Ok(true) => Ok(true),
            Ok(false) => self.claim_entry(parent, name, ino), // a removed name: reuse it
            Err(e) => Err(e),
        };
        match claimed {
            Ok(true) => {}
            Ok(false) => return fail(FsError::Exists),
            Err(e) => return fail(e),
        }
        self.note_name(parent, name, true);
        if rec.kind == Kind::Dir {
            // Nobody could list it before its entry existed: its (empty) listing is known.
            lock(&self.known_names).insert(ino, (HashSet::new(), Instant::now()));
        }
        let seq = match seq {
            Ok(Reply::Number(n)) => n,
            Ok(_) => return Err(FsError::missing(&seq_key)),
            Err(e) => return Err(FsError::store(&seq_key, e)),
        };
        Ok(NewNode {
            ino,
            rec,
            cas,
            seq,
            data_key,
        })
    }

    /// Removes the records of an inode that never got a name.
    fn discard_inode(&self, ino: u64, kind: Kind) {
        let mut batch = vec![Command::Delete(self.keys.inode(ino))];
        if kind == Kind::Dir {
            batch.push(Command::Delete(self.keys.dir_seq(ino)));
            batch.push(Command::Delete(self.keys.dir_mtime(ino)));
        }
        let _ = self.store.execute(batch);
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32) -> FsResult<Attr> {
        let rec = Inode::new(
            Kind::Dir,
            mode,
            uid,
            gid,
            vec![Link {
                parent,
                name: name.to_vec(),
            }],
        );
        let (ino, rec, _) = self.create_node(parent, name, rec)?;
        Ok(self.attr_from(ino, &rec, None))
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let mut rec = Inode::new(
            Kind::Symlink,
            0o777,
            uid,
            gid,
            vec![Link {
                parent,
                name: name.to_vec(),
            }],
        );
        rec.size = target.len() as u64;
        rec.target = Some(target.to_vec());
        let (ino, rec, _) = self.create_node(parent, name, rec)?;
        Ok(self.attr_from(ino, &rec, None))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let (rec, _) = self.read_inode(ino)?;
        rec.target.ok_or(FsError::Invalid("not a symlink"))
    }

    /// A new name for a file: entry, link in the record, and its bytes at the new data key.
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        check_name(newname)?;
        self.settle_created(|i, _| i == ino)?;
        let new_path = join(&self.dir_path(newparent)?, newname);
        let new_key = self.keys.data_checked(&new_path)?;
        let (rec, _) = self.read_inode(ino)?;
        match rec.kind {
            Kind::Dir => return Err(FsError::NotPermitted("hard link to a directory")),
            Kind::Symlink | Kind::File => {}
        }
        if !self.claim_entry(newparent, newname, ino)? {
            return Err(FsError::Exists);
        }
        let link = Link {
            parent: newparent,
            name: newname.to_vec(),
        };
        let rec = self.update_inode(ino, |r| {
            r.links.push(link.clone());
            r.ctime = Time::now();
            Ok(())
        })?;
        if rec.kind == Kind::File {
            let data = self.current_bytes(ino, &rec)?;
            self.write_data_keys(&[new_key], data)?;
        }
        self.log_dir_change(newparent, Op::Add, rec.kind, ino, newname)?;
        self.getattr(ino)
    }

    /// The bytes of a file: this mount's buffer if it holds one, else the store's.
    pub(crate) fn current_bytes(&self, ino: u64, rec: &Inode) -> FsResult<Value> {
        if let Some(of) = self.open_file(ino)
            && let Some(data) = &lock(&of).data
        {
            return Ok(data.clone());
        }
        let Some(link) = rec.links.first() else {
            return Ok(Value::default());
        };
        Ok(Arc::new(self.read_data(
            &self.keys.data(&self.link_path(link)?),
            rec.size,
        )?))
    }

    // ----- removing ------------------------------------------------------------------------

    /// Marks entry `name` of `dir` removed if it still points at `ino`.
    pub(crate) fn release_entry(
        &self,
        dir: u64,
        name: &[u8],
        ino: u64,
        mut cas: Option<u64>,
    ) -> FsResult<()> {
        let key = self.keys.entry(dir, name);
        for _ in 0..CAS_RETRIES {
            let token = match cas.take() {
                Some(c) => c,
                None => {
                    let slot = self.read_entry(dir, name)?;
                    match (slot.ino, slot.cas) {
                        (Some(i), Some(c)) if i == ino => c,
                        _ => return Ok(()), // someone else already moved it on
                    }
                }
            };
            if self.set_entry_cas(&key, b"-", token)? {
                return Ok(());
            }
        }
        Err(FsError::corrupt(&key, "entry keeps changing"))
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let slot = self.read_entry(parent, name)?;
        let ino = slot.ino.ok_or(FsError::NotFound)?;
        self.settle_created(|i, _| i == ino)?;
        let (rec, _) = self.read_inode(ino)?;
        if rec.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let link = Link {
            parent,
            name: name.to_vec(),
        };
        let path = self.link_path(&link)?;
        // Holders of an open handle keep reading: take the bytes before the key goes.
        if let Some(of) = self.open_file(ino) {
            let mut of = lock(&of);
            self.ensure_loaded(ino, &mut of)?;
        }
        self.release_entry(parent, name, ino, slot.cas)?;
        self.log_dir_change(parent, Op::Remove, rec.kind, ino, name)?;
        self.drop_link(ino, &link)?;
        if rec.kind == Kind::File {
            let key = self.keys.data(&path);
            self.store
                .delete(&key)
                .map_err(|e| FsError::store(&key, e))?;
        }
        Ok(())
    }

    /// Removes one name from an inode record, deleting the record with its last name.
    pub(crate) fn drop_link(&self, ino: u64, link: &Link) -> FsResult<()> {
        let rec = self.update_inode(ino, |r| {
            r.remove_link(link);
            r.ctime = Time::now();
            Ok(())
        })?;
        if rec.links.is_empty() {
            self.delete_inode(ino, rec.kind)?;
        }
        Ok(())
    }

    pub(crate) fn delete_inode(&self, ino: u64, kind: Kind) -> FsResult<()> {
        let key = self.keys.inode(ino);
        let mut batch = vec![
            Command::Delete(key.clone()),
            Command::Decr {
                key: self.keys.inode_count(),
                delta: 1,
            },
        ];
        if kind == Kind::Dir {
            let seq = self.list_seq(ino).unwrap_or(0);
            batch.push(Command::Delete(self.keys.dir_seq(ino)));
            batch.push(Command::Delete(self.keys.dir_mtime(ino)));
            for c in 0..=seq / LOG_CHUNK_RECORDS {
                batch.push(Command::Delete(self.keys.dir_log(ino, c)));
            }
        }
        for r in self.store.execute(batch) {
            r.map_err(|e| FsError::store(&key, e))?;
        }
        lock(&self.dir_attrs).remove(&ino);
        lock(&self.known_names).remove(&ino);
        if let Some(of) = self.open_file(ino) {
            lock(&of).unlinked = true;
        }
        Ok(())
    }

    fn list_seq(&self, dir: u64) -> Option<u64> {
        let item = self.store.get(&self.keys.dir_seq(dir)).ok()??;
        std::str::from_utf8(&item.value).ok()?.trim().parse().ok()
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let slot = self.read_entry(parent, name)?;
        let ino = slot.ino.ok_or(FsError::NotFound)?;
        let (rec, _) = self.read_inode(ino)?;
        if rec.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.list_dir(ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.release_entry(parent, name, ino, slot.cas)?;
        self.log_dir_change(parent, Op::Remove, Kind::Dir, ino, name)?;
        self.delete_inode(ino, Kind::Dir)?;
        self.forget_dir_paths();
        Ok(())
    }

    // ----- listing -------------------------------------------------------------------------

    pub fn readdir(&self, dir: u64) -> FsResult<Vec<DirEntry>> {
        let (rec, _) = self.read_inode(dir)?;
        if rec.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(self
            .list_dir(dir)?
            .into_iter()
            .map(|(name, (ino, kind))| DirEntry { name, ino, kind })
            .collect())
    }

    /// Attributes of many inodes in one pipelined batch; `None` for a vanished one.
    pub fn getattr_many(&self, inos: &[u64]) -> FsResult<Vec<Option<Attr>>> {
        let keys: Vec<Vec<u8>> = inos.iter().map(|&i| self.keys.inode(i)).collect();
        let results = self
            .store
            .execute(keys.iter().map(|k| Command::Get(k.clone())).collect());
        let mut out = Vec::with_capacity(inos.len());
        for ((ino, key), r) in inos.iter().zip(&keys).zip(results) {
            if let Some(of) = self.open_file(*ino) {
                out.push(Some(self.attr_from(*ino, &lock(&of).view(), None)));
                continue;
            }
            out.push(match value_of(key, r)? {
                Some(item) => Some(self.attr_from(*ino, &Inode::decode(key, &item.value)?, None)),
                None => None,
            });
        }
        Ok(out)
    }

    // ----- whole filesystem ----------------------------------------------------------------

    pub fn statfs(&self) -> FsResult<StatFs> {
        const BLOCK: u64 = 4096;
        let key = self.keys.inode_count();
        let files = self
            .store
            .get(&key)
            .map_err(|e| FsError::store(&key, e))?
            .and_then(|i| std::str::from_utf8(&i.value).ok()?.trim().parse().ok())
            .unwrap_or(0u64);
        let (blocks, free) = match self.store.capacity() {
            Some(c) => (
                c.limit_bytes / BLOCK,
                c.limit_bytes.saturating_sub(c.used_bytes) / BLOCK,
            ),
            None => (0, 0),
        };
        Ok(StatFs {
            block_size: BLOCK as u32,
            blocks,
            blocks_free: free,
            files,
            files_free: free.max(1_000_000),
        })
    }
}

/// chown of a non-directory drops the set-user-ID bit, and set-group-ID with group execute
/// (chown(2) on Linux, for root too). `Some(new mode)` when `set` is such a chown.
fn setid_cleared_by_chown(rec: &Inode, set: &SetAttr) -> Option<u32> {
    let chown = set.uid.is_some_and(|u| u != rec.uid) || set.gid.is_some_and(|g| g != rec.gid);
    if !chown || set.mode.is_some() || rec.kind == Kind::Dir {
        return None;
    }
    let mut drop = libc::S_ISUID;
    if rec.mode & libc::S_IXGRP != 0 {
        drop |= libc::S_ISGID;
    }
    (rec.mode & drop != 0).then_some(rec.mode & !drop)
}

pub(crate) fn apply_setattr(rec: &mut Inode, set: &SetAttr) {
    if let Some(m) = setid_cleared_by_chown(rec, set) {
        rec.mode = m;
    }
    if let Some(m) = set.mode {
        rec.mode = m & 0o7777;
    }
    if let Some(u) = set.uid {
        rec.uid = u;
    }
    if let Some(g) = set.gid {
        rec.gid = g;
    }
    if let Some(s) = set.size {
        rec.size = s;
        rec.mtime = Time::now();
    }
    if let Some(t) = set.atime {
        rec.atime = t;
    }
    if let Some(t) = set.mtime {
        rec.mtime = t;
    }
    rec.ctime = Time::now();
}

fn parse_entry(key: &[u8], value: &[u8]) -> FsResult<Option<u64>> {
    if value == b"-" {
        return Ok(None);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| FsError::corrupt(key, "directory entry is not an inode number"))
}

fn current_uid() -> u32 {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    unsafe { libc::getuid() }
}

fn current_gid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::getgid() }
}
