//! The tree one mount serves: the store (behind its fences), the key layout under the
//! prefix, the configuration (with the limits every component keeps to) and this mount's
//! identity. Every component holds it
//! (`Arc<Tree>`); opening a tree (the format record, the registry of prefixes) lives here too.

use std::time::Duration;

use memfis_memcache::command::Value;
use memfis_memcache::{Command, Store, StoreOp};

use crate::layout::data_codec::DataCodec;
use crate::layout::keys::{KeyLayout, PREFIX_REGISTRY_KEY, ROOT_INO, prefixes_nest};
use crate::layout::record::{FORMAT_VERSION, FormatRecord, Inode, Kind, Time, random_id};
use crate::store::batch::{Cas, StoreAt};
use crate::store::fenced_store::FencedStore;
use crate::store::replies::CasOutcome;
use crate::{FsError, FsResult};

/// Longest name of one directory entry (as on Linux filesystems).
pub const NAME_MAX: usize = 255;
/// Bytes of an item that are not the value: key (<= 250), header and CAS (memcached items.h).
pub(crate) const ITEM_OVERHEAD: u64 = 512;

/// memcached's default item size (`-I`), assumed when the servers do not say (twemproxy).
pub(crate) const DEFAULT_ITEM_SIZE_MAX: u64 = 1024 * 1024;

/// The largest file memfis stores (in chunks).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Retries of a gets/cas round lost to other writers before giving up (EBUSY).
pub(crate) const CAS_RETRIES: usize = 64;
/// Deepest directory nesting followed when working out a path (a cycle is EIO, not a crash).
pub(crate) const MAX_DEPTH: usize = 2048;

#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long cached directory paths are trusted (the same as the kernel's attribute TTL).
    pub cache_ttl: Duration,
    /// Largest file the store holds in one item; writes past it fail with EFBIG.
    pub item_size_max: Option<u64>,
    /// First pause while another mount holds the namespace lock (doubles up to 10 ms).
    pub lock_backoff: Duration,
    /// Store text files gzip-compressed (`--gzip`, [`crate::layout::data_codec`]); reads decompress
    /// either way.
    pub gzip: bool,
    /// How old this mount's last liveness refresh may be for a thread holding the namespace
    /// lock to go on sending (`crate::store::lock_lease`): below the key's 10 s expiry, after which
    /// other mounts take the lock over, less a second for memcached's clock, which ticks by
    /// seconds, and the store timeout of a batch in flight.
    pub stall_limit: Duration,
    /// Copies of each key the caller asked for (`--replicas`): a new tree keeps that many; an
    /// existing tree with another number is refused. `None`: the tree's own number.
    pub replicas: Option<usize>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            cache_ttl: Duration::from_secs(1),
            item_size_max: None,
            lock_backoff: Duration::from_micros(200),
            gzip: false,
            stall_limit: Duration::from_secs(7),
            replicas: None,
        }
    }
}

pub(crate) struct Tree<S: Store> {
    pub(crate) store: FencedStore<S>,
    pub(crate) keys: KeyLayout,
    pub(crate) cfg: FsConfig,
    /// This mount's id: its liveness key and the owner of the namespace locks it takes.
    pub(crate) mount_id: String,
    /// The id in the format record when this mount opened the store.
    pub(crate) store_id: String,
    /// What this mount has done, for metrics.
    pub(crate) activity: crate::activity::Activity,
}

/// The prefixes of every tree formatted on this store (`PREFIX_REGISTRY_KEY`), in the order
/// they were listed.
pub fn listed_prefixes<S: Store>(store: &S) -> FsResult<Vec<String>> {
    let key = PREFIX_REGISTRY_KEY;
    let item = store.get_at(key)?;
    Ok(parse_prefix_list(
        item.as_ref().map_or(&[][..], |i| &i.value[..]),
    ))
}

/// The prefixes of the registry's value, one a line, each once (in the order first listed).
fn parse_prefix_list(value: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in String::from_utf8_lossy(value).lines() {
        if !line.is_empty() && !out.iter().any(|p| p == line) {
            out.push(line.to_string());
        }
    }
    out
}

impl<S: Store> Tree<S> {
    /// The most bytes one item holds: files up to this size are one value (served), larger
    /// ones go in chunks (`chunked.rs`).
    pub(crate) fn item_limit(&self) -> u64 {
        // An item holds the key and a header besides the value.
        let item_max = self.cfg.item_size_max.unwrap_or(DEFAULT_ITEM_SIZE_MAX);
        item_max.saturating_sub(ITEM_OVERHEAD)
    }

    /// EFBIG for bytes that must be one item (`memfis load` writes whole files in one batch).
    pub(crate) fn check_fits_item(&self, key: &[u8], size: u64) -> FsResult<()> {
        if size > self.item_limit() {
            return Err(FsError::TooBig {
                key: String::from_utf8_lossy(key).into_owned(),
                limit: format!(
                    "one item of {} bytes (write larger files through the mount)",
                    self.item_limit()
                ),
            });
        }
        Ok(())
    }

    /// Replaces the value of every data key with `data` (one pipelined batch).
    pub(crate) fn write_data_keys(&self, keys: &[Vec<u8>], data: Value) -> FsResult<()> {
        let batch = keys
            .iter()
            .map(|k| Command::store_shared(StoreOp::Set, k, data.clone()))
            .collect();
        self.store.execute_all(batch)
    }

    /// Opens the tree under `keys`: see [`crate::MemFs::open_tree`].
    pub(crate) fn open(
        store: S,
        keys: KeyLayout,
        cfg: FsConfig,
        create: bool,
    ) -> FsResult<Tree<S>> {
        settle_replicas(&store, &keys, cfg.replicas)?;
        let mut tree = Tree {
            store: FencedStore::with_lease_limit(
                store,
                DataCodec::new(&keys, cfg.gzip),
                cfg.stall_limit,
            ),
            keys,
            cfg,
            mount_id: random_id(),
            store_id: String::new(),
            activity: Default::default(),
        };
        // Refuse a nesting prefix before anything is written under it.
        tree.refuse_nesting_prefix()?;
        tree.store_id = match tree.read_format()? {
            Some(id) => {
                // A tree made before the registry existed is listed now.
                tree.register_prefix()?;
                id
            }
            None if !create => {
                return Err(FsError::NoTree {
                    prefix: tree.keys.prefix().to_string(),
                    trees: tree.listed_prefixes()?,
                });
            }
            None => {
                // Listed first (refusing a nesting prefix listed meanwhile), then formatted.
                tree.register_prefix()?;
                tree.create_format()?
            }
        };
        tree.store
            .watch_identity(tree.keys.format(), tree.store_id.clone());
        Ok(tree)
    }

    /// The store id of the tree under this prefix; `None` when there is no tree. Refuses a
    /// format this build does not know.
    fn read_format(&self) -> FsResult<Option<String>> {
        let key = self.keys.format();
        let Some(item) = self.store.get_at(&key)? else {
            return Ok(None);
        };
        let rec: FormatRecord = serde_json::from_slice(&item.value)
            .map_err(|e| FsError::corrupt(&key, e.to_string()))?;
        if rec.format != "memfis" || rec.version != FORMAT_VERSION {
            return Err(FsError::unknown_format(&key, &rec));
        }
        Ok(Some(rec.store_id))
    }

    /// Formats an empty tree under this prefix (another process may be doing the same: the
    /// format record that got stored counts). Returns the store id.
    fn create_format(&self) -> FsResult<String> {
        let key = self.keys.format();
        tracing::info!(
            prefix = self.keys.prefix(),
            "no memfis format record in the store: formatting an empty tree"
        );
        // A fresh store: root first, format record last, so a half-made one is retried.
        let root = Inode::new(Kind::Dir, 0o755, current_uid(), current_gid(), Vec::new());
        let now = Time::now().to_text();
        let batch = vec![
            Command::store(StoreOp::Add, &self.keys.inode(ROOT_INO), &root.encode()),
            Command::store(StoreOp::Add, &self.keys.dir_seq(ROOT_INO), b"0"),
            Command::store(StoreOp::Add, &self.keys.dir_log(ROOT_INO, 0), b""),
            Command::store(StoreOp::Add, &self.keys.dir_log(ROOT_INO, 1), b""),
            Command::store(StoreOp::Add, &self.keys.dir_mtime(ROOT_INO), now.as_bytes()),
            Command::store(
                StoreOp::Add,
                &self.keys.next_ino(),
                ROOT_INO.to_string().as_bytes(),
            ),
            Command::store(StoreOp::Add, &self.keys.inode_count(), b"1"),
            Command::store(StoreOp::Add, &self.keys.dir_generation(), b"0"),
        ];
        self.store.execute_all(batch)?;
        let record = FormatRecord {
            replicas: self.store.inner().replicas(),
            ..FormatRecord::new(random_id())
        };
        let format = serde_json::to_vec(&record).expect("serializes");
        self.store.store_at(StoreOp::Add, &key, &format)?;
        // Every server holds its copy of the new tree.
        self.store
            .inner()
            .mark_all_in_sync()
            .map_err(|e| FsError::store(&self.keys.in_sync_marker(), e))?;
        // Two mounts may format at once: the one record that got stored counts.
        let item = self
            .store
            .get_at(&key)?
            .ok_or_else(|| FsError::missing(&key))?;
        let rec: FormatRecord = serde_json::from_slice(&item.value)
            .map_err(|e| FsError::corrupt(&key, e.to_string()))?;
        if rec.replicas != self.store.inner().replicas() {
            // Another process made the tree first, with another number of copies.
            return Err(FsError::Replicas(format!(
                "the tree under prefix {:?} was just made by another process with {} copies \
                 of each key, not {}: run the command again without --replicas",
                self.keys.prefix(),
                rec.replicas,
                self.store.inner().replicas()
            )));
        }
        Ok(rec.store_id)
    }

    fn listed_prefixes(&self) -> FsResult<Vec<String>> {
        listed_prefixes(&self.store)
    }

    /// An error when a prefix listed before this one nests with it.
    fn nesting_conflict(&self, listed: &[String]) -> FsResult<()> {
        let mine = self.keys.prefix();
        for other in listed.iter().take_while(|p| p.as_str() != mine) {
            if prefixes_nest(other, mine) {
                return Err(FsError::PrefixNests {
                    prefix: mine.to_string(),
                    other: other.clone(),
                });
            }
        }
        Ok(())
    }

    /// Refuses this prefix if it nests with one already listed (checked again once listed).
    fn refuse_nesting_prefix(&self) -> FsResult<()> {
        self.nesting_conflict(&self.listed_prefixes()?)
    }

    /// Adds this prefix to the store-wide list, refusing one that nests with a listed one
    /// (their data keys would overlap). The list is changed only by `add` (the first prefix)
    /// or `cas` on the value just read, so of two nesting prefixes registered at once the
    /// second to write saw the first and is refused, having written nothing. A prefix already
    /// listed stays, unless a nesting one was listed before it (the first listed wins).
    fn register_prefix(&self) -> FsResult<()> {
        let key = PREFIX_REGISTRY_KEY;
        let mine = self.keys.prefix();
        for _ in 0..CAS_RETRIES {
            let item = self.store.gets_at(key)?;
            let value = item.as_ref().map(|i| i.value.clone()).unwrap_or_default();
            let listed = parse_prefix_list(&value);
            self.nesting_conflict(&listed)?;
            if listed.iter().any(|p| p == mine) {
                return Ok(());
            }
            let mut new = value;
            if !new.is_empty() && !new.ends_with(b"\n") {
                new.push(b'\n');
            }
            new.extend_from_slice(format!("{mine}\n").as_bytes());
            let stored = match item {
                None => self.store.store_at(StoreOp::Add, key, &new)?,
                Some(item) => {
                    let cas = Command::cas(key, &new, item.cas.unwrap_or(0));
                    self.store.run_at::<Cas>(key, cas)? == CasOutcome::Stored
                }
            };
            if stored {
                // Another memfis (an older one appends without cas) may have listed a
                // nesting prefix meanwhile: the one listed first stays.
                return self.nesting_conflict(&self.listed_prefixes()?);
            }
        }
        Err(FsError::Contended)
    }
}

fn current_uid() -> u32 {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    unsafe { libc::getuid() }
}

fn current_gid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::getgid() }
}

/// Tells the store how many copies of each key the tree under `keys` keeps: the number in its
/// format record (found on whichever server holds it), or for a new tree the number asked
/// for (one if none). Refuses a number asked for that is not the tree's.
pub fn settle_replicas<S: Store>(
    store: &S,
    keys: &KeyLayout,
    asked: Option<usize>,
) -> FsResult<()> {
    let key = keys.format();
    let found = match store
        .get_anywhere(&key)
        .map_err(|e| FsError::store(&key, e))?
    {
        Some(item) => Some(
            serde_json::from_slice::<FormatRecord>(&item.value)
                .map_err(|e| FsError::corrupt(&key, e.to_string()))?
                .replicas,
        ),
        None => None,
    };
    let copies = match (found, asked) {
        (Some(has), Some(asked)) if has != asked => {
            return Err(FsError::Replicas(format!(
                "the tree under prefix {:?} keeps {has} cop{} of each key, not {asked}: \
                 give --replicas {has} (or none)",
                keys.prefix(),
                if has == 1 { "y" } else { "ies" },
            )));
        }
        (Some(has), _) => has,
        (None, asked) => asked.unwrap_or(1),
    };
    store
        .set_replicas(
            copies,
            &memfis_memcache::ReplicaKeys {
                marker: keys.in_sync_marker(),
                presence: keys.alive(""),
                expiring: vec![keys.refill_lease()],
            },
        )
        .map_err(FsError::Replicas)
}
