//! What a mount remembers of the namespace between operations. Every cache is one
//! [`Expiring`] map: bounded in entries, each entry stamped with the time it was read, so
//! staleness is decided in one place rather than at each call site.
//!
//! What is cached, and why it may be a little stale (the same staleness the kernel's own
//! attribute and entry caches allow, `cache_ttl`):
//! - directory paths, modes and groups: a create needs its parent's path for the data key;
//!   a path is also dropped as soon as the store's directory-rename count moves;
//! - directory attributes: the kernel drops its copy whenever an entry changes, and asking the
//!   store each time would cost `cp -a` a round trip a file;
//! - listings (names with their inodes) of directories this mount made or listed, kept in step
//!   with its own changes: a name not in a fresh listing is ENOENT without the store;
//! - the sequence number each directory log has reached: where the next record can go
//!   without asking first (a hint: a wrong one costs a retry, never a wrong answer).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::layout::attr::Attr;
use crate::layout::record::Kind;
use crate::layout::record::Time;
use crate::sync::lock;

/// Directories whose path, attributes or sequence hint a mount keeps.
const MAX_DIRS: usize = 65_536;
/// Directories whose whole listing a mount keeps (a listing holds every name).
const MAX_LISTINGS: usize = 1_024;

/// A map whose entries expire `ttl` after they were stamped, holding at most `capacity` of
/// them (when full, expired entries go first, then the oldest half).
pub(crate) struct Expiring<K, V> {
    map: HashMap<K, (V, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> Expiring<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Expiring {
            map: HashMap::new(),
            ttl,
            capacity,
        }
    }

    /// The entry, while it is fresh.
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map
            .get(k)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v)
    }

    /// The entry whatever its age: for guesses that the store confirms.
    pub fn peek(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    /// The entry whatever its age, to keep it in step with a change this mount made (its
    /// stamp stays: it says when the store was last read).
    pub fn peek_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|(v, _)| v)
    }

    /// Stores `v` as read from the store at `at`.
    pub fn insert_at(&mut self, k: K, v: V, at: Instant) {
        if self.map.len() >= self.capacity && !self.map.contains_key(&k) {
            self.make_room();
        }
        self.map.insert(k, (v, at));
    }

    pub fn insert(&mut self, k: K, v: V) {
        self.insert_at(k, v, Instant::now());
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    fn make_room(&mut self) {
        let ttl = self.ttl;
        self.map.retain(|_, (_, at)| at.elapsed() < ttl);
        if self.map.len() < self.capacity {
            return;
        }
        let mut stamps: Vec<Instant> = self.map.values().map(|(_, at)| *at).collect();
        let middle = stamps.len() / 2;
        let (_, cut, _) = stamps.select_nth_unstable(middle);
        let cut = *cut;
        self.map.retain(|_, (_, at)| *at > cut);
    }
}

/// What creating inside a directory needs of it.
#[derive(Debug, Clone)]
pub(crate) struct DirInfo {
    pub path: Vec<u8>,
    pub mode: u32,
    pub gid: u32,
    /// The directory-rename count the path was worked out under.
    generation: u64,
}

/// A directory's names, with their inodes and kinds.
pub(crate) type Names = HashMap<Vec<u8>, (u64, Kind)>;

/// The namespace caches of one mount.
pub(crate) struct MetaCache {
    /// The store's directory-rename count as last seen; paths from an older count are stale.
    generation: AtomicU64,
    dirs: Mutex<Expiring<u64, DirInfo>>,
    dir_attrs: Mutex<Expiring<u64, Attr>>,
    listings: Mutex<Expiring<u64, Names>>,
    /// Lowest sequence number each directory's log has reached, as last seen.
    seq_hints: Mutex<Expiring<u64, u64>>,
    /// The highest chunk of each directory's log this mount has seen exist (made, or found
    /// by an `add` that did not store): appends need not make it again.
    log_chunks: Mutex<Expiring<u64, u64>>,
    /// Questions answered from the caches, and those that had to go to the store.
    hits: AtomicU64,
    misses: AtomicU64,
}

impl MetaCache {
    pub fn new(ttl: Duration) -> Self {
        MetaCache {
            generation: AtomicU64::new(0),
            dirs: Mutex::new(Expiring::new(ttl, MAX_DIRS)),
            dir_attrs: Mutex::new(Expiring::new(ttl, MAX_DIRS)),
            listings: Mutex::new(Expiring::new(ttl, MAX_LISTINGS)),
            // Hints stay useful however old: only their number is bounded.
            seq_hints: Mutex::new(Expiring::new(Duration::MAX, MAX_DIRS)),
            log_chunks: Mutex::new(Expiring::new(Duration::MAX, MAX_DIRS)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// (hits, misses) of the directory and listing caches so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn counted<T>(&self, answer: Option<T>) -> Option<T> {
        let counter = if answer.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    // ----- directory-rename count ------------------------------------------------------------

    /// The directory-rename count as last seen.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Notes the count read in some batch: a change makes every cached path stale.
    pub fn observe_generation(&self, now: u64) {
        if self.generation.swap(now, Ordering::SeqCst) != now {
            lock(&self.dirs).clear();
        }
    }

    // ----- directories -----------------------------------------------------------------------

    pub fn dir_info(&self, dir: u64) -> Option<DirInfo> {
        let generation = self.generation();
        let found = lock(&self.dirs)
            .get(&dir)
            .filter(|info| info.generation == generation)
            .cloned();
        self.counted(found)
    }

    /// Caches what was read of `dir` under directory-rename count `generation`.
    pub fn put_dir_info(
        &self,
        dir: u64,
        path: Vec<u8>,
        mode: u32,
        gid: u32,
        generation: u64,
    ) -> DirInfo {
        let info = DirInfo {
            path,
            mode,
            gid,
            generation,
        };
        lock(&self.dirs).insert(dir, info.clone());
        info
    }

    pub fn dir_attr(&self, dir: u64) -> Option<Attr> {
        let found = lock(&self.dir_attrs).get(&dir).cloned();
        self.counted(found)
    }

    pub fn put_dir_attr(&self, dir: u64, attr: Attr) {
        lock(&self.dir_attrs).insert(dir, attr);
    }

    /// Keeps the cached attributes of `dir` in step with an mtime this mount just set.
    pub fn dir_touched(&self, dir: u64, now: Time) {
        if let Some(attr) = lock(&self.dir_attrs).peek_mut(&dir) {
            attr.mtime = now;
            attr.ctime = now;
        }
    }

    /// Drops what is cached of inode `ino`'s record (this mount changed it).
    pub fn forget_record(&self, ino: u64) {
        lock(&self.dir_attrs).remove(&ino);
        lock(&self.dirs).remove(&ino);
    }

    /// Drops everything cached about directory `ino` (it was removed or moved): with it go
    /// the paths of all directories, some of which may lie below it.
    pub fn forget_dir(&self, ino: u64) {
        lock(&self.dirs).clear();
        self.forget_removed_dir(ino);
    }

    /// Drops the attributes, listing, hint and known log chunks of directory `ino`, which
    /// is gone.
    pub fn forget_removed_dir(&self, ino: u64) {
        lock(&self.dir_attrs).remove(&ino);
        lock(&self.listings).remove(&ino);
        lock(&self.seq_hints).remove(&ino);
        lock(&self.log_chunks).remove(&ino);
    }

    // ----- listings --------------------------------------------------------------------------

    /// Caches the listing of `dir` as read from the store starting at `at`.
    pub fn put_listing(&self, dir: u64, names: Names, at: Instant) {
        lock(&self.listings).insert_at(dir, names, at);
    }

    /// Keeps a known listing in step with a change this mount made (`Some`: now there).
    pub fn note_name(&self, dir: u64, name: &[u8], now: Option<(u64, Kind)>) {
        if let Some(names) = lock(&self.listings).peek_mut(&dir) {
            match now {
                Some(entry) => names.insert(name.to_vec(), entry),
                None => names.remove(name),
            };
        }
    }

    /// The number of subdirectories of `dir`, from its listing while that is fresh.
    pub fn subdirs(&self, dir: u64) -> Option<u32> {
        let listings = lock(&self.listings);
        let names = listings.get(&dir)?;
        Some(names.values().filter(|(_, k)| *k == Kind::Dir).count() as u32)
    }

    /// True when `dir`'s listing is fresh and `name` is not in it.
    pub fn known_absent(&self, dir: u64, name: &[u8]) -> bool {
        let absent = lock(&self.listings)
            .get(&dir)
            .is_some_and(|names| !names.contains_key(name));
        self.counted(absent.then_some(())).is_some()
    }

    /// The inode last known at `name` in `dir`, however old: a guess the store confirms.
    pub fn known_child(&self, dir: u64, name: &[u8]) -> Option<u64> {
        lock(&self.listings)
            .peek(&dir)?
            .get(name)
            .map(|(ino, _)| *ino)
    }

    // ----- log sequence hints ----------------------------------------------------------------

    pub fn seq_hint(&self, dir: u64) -> u64 {
        lock(&self.seq_hints).peek(&dir).copied().unwrap_or(0)
    }

    /// Notes that `dir`'s log has reached `seq`.
    pub fn raise_seq_hint(&self, dir: u64, seq: u64) {
        let mut hints = lock(&self.seq_hints);
        let now = hints.peek(&dir).copied().unwrap_or(0).max(seq);
        hints.insert(dir, now);
    }

    /// Whether chunk `chunk` of `dir`'s log is known to exist (or to lie below the base of
    /// the log, where nothing reads it).
    pub fn log_chunk_exists(&self, dir: u64, chunk: u64) -> bool {
        lock(&self.log_chunks)
            .peek(&dir)
            .is_some_and(|&made| chunk <= made)
    }

    /// Notes that chunk `chunk` of `dir`'s log exists, and so every one before it that a
    /// replay reads (chunks are made in order, each with the append before it).
    pub fn note_log_chunk(&self, dir: u64, chunk: u64) {
        let mut chunks = lock(&self.log_chunks);
        let now = chunks.peek(&dir).copied().unwrap_or(0).max(chunk);
        chunks.insert(dir, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let mut m = Expiring::new(Duration::from_millis(20), 10);
        m.insert(1, "a");
        assert_eq!(m.get(&1), Some(&"a"));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(m.get(&1), None);
        assert_eq!(m.peek(&1), Some(&"a"));
    }

    #[test]
    fn stays_within_capacity() {
        let mut m = Expiring::new(Duration::from_secs(60), 100);
        for i in 0..1000 {
            m.insert(i, i);
            assert!(m.map.len() <= 100);
        }
        // The newest entries are the ones kept.
        assert_eq!(m.get(&999), Some(&999));
    }
}
