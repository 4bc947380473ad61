//! `memfis stats`: the figures of each server (reachable, version, evictions, item size limit,
//! memory, items, hit rate) and of the tree under the prefix (files, directories, bytes,
//! inodes, format, store id), gathered read-only. The binary renders them as text or JSON.

use memfis_fs::KeyLayout;
use memfis_fs::check::TreeCounts;
use memfis_fs::layout::record::FormatRecord;
use memfis_memcache::{Client, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ServerStats {
    pub server: String,
    pub reachable: bool,
    /// Why the server could not be read (unreachable, or `stats` not passed through).
    pub error: Option<String>,
    pub version: Option<String>,
    /// `Some(true)`: the server evicts items when full (memcached without `-M`).
    pub evictions_on: Option<bool>,
    pub item_size_max: Option<u64>,
    pub bytes_used: Option<u64>,
    pub bytes_limit: Option<u64>,
    pub items: Option<u64>,
    pub evictions: Option<u64>,
    pub get_hits: Option<u64>,
    pub get_misses: Option<u64>,
    /// Hits over gets since the server started, 0 to 1.
    pub get_hit_rate: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct TreeStats {
    pub prefix: String,
    pub format_version: Option<u32>,
    pub store_id: Option<String>,
    /// What the walk of the tree counted.
    #[serde(flatten)]
    pub counts: TreeCounts,
    /// The live-inode counter of the store (`statfs` reports it as files in use).
    pub inodes: Option<u64>,
    /// Problems one scan met (operations in flight included): run `memfis check`.
    pub problems: usize,
    pub error: Option<String>,
    /// The prefix holds no tree (`error` says so).
    #[serde(skip)]
    pub no_tree: bool,
    /// Every key the walk reached (for comparing copies).
    #[serde(skip)]
    pub tree_keys: Vec<Vec<u8>>,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub servers: Vec<ServerStats>,
    pub tree: TreeStats,
    /// Prefixes of every tree formatted on this store.
    pub trees: Vec<String>,
    /// Why that list could not be read.
    pub trees_error: Option<String>,
    /// With `--replicas N`: the copies of the tree's keys (under-replicated keys, servers out
    /// of sync).
    pub copies: Option<crate::replicas::ReplicaReport>,
    /// The background refill a mount runs now (its lease), with `--replicas N`.
    pub refill: Option<crate::refill::RefillLease>,
    /// Why the refill's lease could not be read.
    pub refill_error: Option<String>,
}

impl Stats {
    /// Every server answered and the tree could be read.
    pub fn healthy(&self) -> bool {
        self.servers.iter().all(|s| s.reachable)
            && self.tree.error.is_none()
            && self.copies.as_ref().is_none_or(|c| c.clean())
    }
}

/// The figures of the servers behind `client` and of the tree under `keys`' prefix.
pub fn gather(client: &Client, keys: &KeyLayout) -> Stats {
    // Reads go around a server down or back empty when the tree keeps copies (no tree, or
    // one that cannot be read: the errors below say so).
    let _ = memfis_fs::settle_replicas(client, keys, None);
    let mut tree = tree_stats(client, keys);
    let trees = memfis_fs::fs::listed_prefixes(client);
    if tree.no_tree {
        // Said as every command says it (FsError::NoTree), with the trees there.
        tree.error = Some(match &trees {
            Ok(trees) => format!(
                "{}. `memfis load` or `memfis mount --create` makes one",
                memfis_fs::FsError::NoTree {
                    prefix: keys.prefix().to_string(),
                    trees: trees.clone(),
                }
            ),
            Err(e) => format!(
                "no memfis tree under prefix {:?} (and the list of trees cannot be read: {e})",
                keys.prefix()
            ),
        });
    }
    let copies = match tree.error {
        None => crate::replicas::check_copies(client, keys, &tree.tree_keys, false)
            .ok()
            .flatten(),
        Some(_) => None,
    };
    let (refill, refill_error) = match (&copies, crate::refill::current(client, keys)) {
        (None, _) => (None, None),
        (Some(_), Ok(lease)) => (lease, None),
        (Some(_), Err(e)) => (None, Some(format!("{e:#}"))),
    };
    let (trees, trees_error) = match trees {
        Ok(t) => (t, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Stats {
        servers: server_stats(client),
        tree,
        trees,
        trees_error,
        copies,
        refill,
        refill_error,
    }
}

/// Each server's `stats`, `stats settings` and version.
pub fn server_stats(client: &Client) -> Vec<ServerStats> {
    let general = client.stats(None);
    let settings = client.stats(Some("settings"));
    let versions = client.versions();
    let mut out = Vec::new();
    for (((server, general), (_, settings)), (_, version)) in
        general.into_iter().zip(settings).zip(versions)
    {
        let reachable = version.is_ok();
        let error = match (&version, &general) {
            (Err(e), _) => Some(e.to_string()),
            (Ok(_), Err(e)) => Some(format!("no stats ({e}); twemproxy does not pass them")),
            _ => None,
        };
        let stat = |stats: &Result<Vec<(String, String)>, StoreError>, name: &str| {
            stats
                .as_ref()
                .ok()?
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let number = |stats, name| stat(stats, name).and_then(|v| v.parse::<u64>().ok());
        let (hits, misses) = (number(&general, "get_hits"), number(&general, "get_misses"));
        out.push(ServerStats {
            server,
            reachable,
            error,
            version: version.ok(),
            evictions_on: stat(&settings, "evictions").map(|v| v == "on"),
            item_size_max: number(&settings, "item_size_max"),
            bytes_used: number(&general, "bytes"),
            bytes_limit: number(&general, "limit_maxbytes"),
            items: number(&general, "curr_items"),
            evictions: number(&general, "evictions"),
            get_hits: hits,
            get_misses: misses,
            get_hit_rate: match (hits, misses) {
                (Some(h), Some(m)) if h + m > 0 => Some(h as f64 / (h + m) as f64),
                _ => None,
            },
        });
    }
    out
}

/// The tree's figures: its format record, inode counter and one read-only scan.
pub fn tree_stats<S: Store>(store: &S, keys: &KeyLayout) -> TreeStats {
    let mut tree = TreeStats {
        prefix: keys.prefix().to_string(),
        ..TreeStats::default()
    };
    match store.get(&keys.format()) {
        Ok(Some(item)) => {
            if let Ok(rec) = serde_json::from_slice::<FormatRecord>(&item.value) {
                tree.format_version = Some(rec.version);
                tree.store_id = Some(rec.store_id);
            }
        }
        Ok(None) => {
            tree.error = Some(format!("no memfis tree under prefix {:?}", keys.prefix()));
            tree.no_tree = true;
            return tree;
        }
        Err(e) => {
            tree.error = Some(format!("cannot read the format record: {e}"));
            return tree;
        }
    }
    tree.inodes = store
        .get(&keys.inode_count())
        .ok()
        .flatten()
        .and_then(|i| String::from_utf8_lossy(&i.value).trim().parse().ok());
    match memfis_fs::check::scan(store, keys) {
        Ok(report) => {
            tree.counts = report.counts;
            tree.problems = report.problems.len();
            tree.tree_keys = report.tree_keys;
        }
        Err(e) => tree.error = Some(e.to_string()),
    }
    tree
}
