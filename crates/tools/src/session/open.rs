//! Connecting to the servers, and every check that can fail before a command changes the
//! tree: the servers answer, they do not evict, the tree is there (or is made on purpose) and
//! opens.

use std::sync::Arc;

use anyhow::{Result, bail};
use memfis_fs::layout::record::FormatRecord;
use memfis_fs::{FsConfig, FsError, KeyLayout, MemFs};
use memfis_memcache::{Client, ClientConfig, Store};

use super::StoreConfig;
use crate::progress::Progress;

/// A client for the servers of `cfg` (connections are made on first use).
pub fn connect(cfg: &StoreConfig) -> Result<Arc<Client>> {
    let mut client = ClientConfig::new(cfg.servers.clone());
    client.connect_timeout = cfg.timeout;
    client.io_timeout = cfg.timeout;
    Ok(Arc::new(Client::new(&client).map_err(anyhow::Error::msg)?))
}

/// What opening a prefix that holds no tree does. Trees are made only on purpose: a mistyped
/// prefix, or a store emptied by a memcached restart, must not silently become a new, empty
/// tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfNoTree {
    /// Refuse it with [`FsError::NoTree`] (naming the trees the store holds), having written
    /// nothing to the store.
    Refuse,
    /// Make a new, empty tree, announced through [`Progress::new_tree`]. The prefix is listed
    /// in the store's registry before anything is written under it, so a prefix nesting with
    /// one created at the same moment is refused ([`FsError::PrefixNests`]).
    Create,
}

/// Whether the prefix of `keys` holds a tree (its format record), reading only: `Ok` when it
/// does, [`FsError::NoTree`] naming the trees the store holds when it does not.
pub fn require_tree<S: Store>(store: &S, keys: &KeyLayout) -> Result<(), FsError> {
    let format = keys.format();
    // On whichever server holds it: the number of copies is not known yet.
    if store
        .get_anywhere(&format)
        .map_err(|e| FsError::store(&format, e))?
        .is_some()
    {
        return Ok(());
    }
    // A registry that cannot be read is that error, not "trees here: none".
    Err(FsError::NoTree {
        prefix: keys.prefix().to_string(),
        trees: memfis_fs::fs::listed_prefixes(store)?,
    })
}

/// The refusal of a prefix with no tree in an error a command got, if it is one: the prefix
/// and the trees the store holds, for the command to say what to do about it.
pub fn no_tree(err: &anyhow::Error) -> Option<(&str, &[String])> {
    match err.downcast_ref::<FsError>() {
        Some(FsError::NoTree { prefix, trees }) => Some((prefix, trees)),
        _ => None,
    }
}

/// Opens the filesystem under `keys` on `store`, making the tree only as `if_no_tree` says.
/// A refusal is returned as the [`FsError::NoTree`] itself (see [`no_tree`]).
pub fn open_tree<S: Store>(
    store: S,
    keys: KeyLayout,
    fs_cfg: FsConfig,
    if_no_tree: IfNoTree,
    progress: &dyn Progress,
) -> Result<MemFs<S>> {
    let prefix = keys.prefix().to_string();
    let create = if_no_tree == IfNoTree::Create;
    // The trees there before, when this open may make one. (An error reading the store comes
    // back from the open below.)
    let missing = match require_tree(&store, &keys) {
        Err(FsError::NoTree { trees, .. }) if create => Some(trees),
        _ => None,
    };
    match MemFs::open_tree(store, keys, fs_cfg, create) {
        Ok(fs) => {
            if let Some(trees) = missing {
                // Said every time, once made (a nesting prefix is refused before), so a
                // mistyped prefix is seen at once.
                progress.new_tree(&prefix, &trees);
            }
            Ok(fs)
        }
        Err(e @ FsError::NoTree { .. }) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot open the memfis store under prefix {prefix:?}"
        ))),
    }
}

/// Connects and opens the filesystem, with no heartbeat: what a mount checks before it
/// detaches (no thread may run across the fork). Commands open a [`super::Session`].
pub fn open_fs(
    cfg: &StoreConfig,
    if_no_tree: IfNoTree,
    progress: &dyn Progress,
) -> Result<MemFs<Arc<Client>>> {
    let keys = KeyLayout::new(&cfg.prefix).map_err(anyhow::Error::msg)?;
    let client = connect(cfg)?;
    // A pool keeping several copies of each key opens with a server down (its copies answer);
    // one keeping one copy does not (that server's share of the tree is out of reach).
    let mut unreachable = None;
    for (server, version) in client.versions() {
        if let Err(e) = version {
            unreachable.get_or_insert(
                anyhow::Error::new(e).context(format!("cannot reach memcached at {server}")),
            );
        }
    }
    // A tree keeping one copy of each key cannot open with a server down: say so at once,
    // not after its calls time out.
    if let Some(e) = unreachable.take() {
        let copies = client
            .get_anywhere(&keys.format())
            .ok()
            .flatten()
            .and_then(|item| serde_json::from_slice::<FormatRecord>(&item.value).ok())
            .map(|rec| rec.replicas);
        if client.server_count() == 1 || copies.unwrap_or(cfg.replicas.unwrap_or(1)) < 2 {
            return Err(e);
        }
        unreachable = Some(e);
    }
    guard_against_evictions(&client, cfg.allow_evictions)?;
    let fs_cfg = FsConfig {
        cache_ttl: cfg.cache_ttl,
        item_size_max: client.item_size_max(),
        gzip: cfg.gzip,
        replicas: cfg.replicas,
        ..FsConfig::default()
    };
    let fs = open_tree(client.clone(), keys, fs_cfg, if_no_tree, progress);
    if let Some(e) = unreachable {
        let fs = fs.map_err(|open| open.context(format!("{e:#}")))?;
        if client.replicas() < 2 {
            return Err(e);
        }
        tracing::warn!(
            "{e:#}: its keys are read from their other copies; their writes fail until it is back"
        );
        return Ok(fs);
    }
    fs
}

/// Refuses servers that evict items when full (memcached's default): an evicted inode record
/// or log chunk silently breaks the tree. Through twemproxy `stats` does not pass: warn.
fn guard_against_evictions(client: &Client, allowed: bool) -> Result<()> {
    for (server, settings) in client.stats(Some("settings")) {
        let evictions = match settings {
            Ok(stats) => stats
                .iter()
                .find(|(k, _)| k == "evictions")
                .map(|(_, v)| v.clone()),
            Err(e) => {
                tracing::warn!(
                    "cannot read `stats settings` of {server} ({e}; through twemproxy it does not \
                     pass): make sure every memcached behind it runs with -M"
                );
                continue;
            }
        };
        if evictions.as_deref() == Some("on") {
            if allowed {
                tracing::warn!(
                    "{server} evicts items when full (started without -M): an evicted record \
                     breaks the tree; accepted by --allow-evictions"
                );
            } else {
                bail!(
                    "memcached at {server} evicts items when it is full (it runs without -M), \
                     which would silently lose files and directories. Restart it with -M (and -m \
                     large enough for the tree, -I at least the largest file), or pass \
                     --allow-evictions to accept the risk"
                );
            }
        }
    }
    Ok(())
}
