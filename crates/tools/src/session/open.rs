//! Connecting to the servers, and every check that can fail before a command changes the
//! tree: the servers answer, they do not evict, the tree opens.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use memfis_fs::{FsConfig, KeyLayout, MemFs};
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

/// Connects and opens the filesystem, with no heartbeat: what a mount checks before it
/// detaches (no thread may run across the fork). Commands open a [`super::Session`].
pub fn open_fs(cfg: &StoreConfig, progress: &dyn Progress) -> Result<MemFs<Arc<Client>>> {
    let prefix = &cfg.prefix;
    let keys = KeyLayout::new(prefix).map_err(anyhow::Error::msg)?;
    let client = connect(cfg)?;
    for (server, version) in client.versions() {
        version.with_context(|| format!("cannot reach memcached at {server}"))?;
    }
    guard_against_evictions(&client, cfg.allow_evictions)?;
    let fs_cfg = FsConfig {
        cache_ttl: cfg.cache_ttl,
        item_size_max: client.item_size_max(),
        gzip: cfg.gzip,
        ..FsConfig::default()
    };
    if client.get(&keys.format())?.is_none() {
        // A mistyped prefix would otherwise start an empty tree without a word.
        let trees = memfis_fs::fs::listed_prefixes(&client).unwrap_or_default();
        progress.new_tree(prefix, &trees);
    }
    MemFs::new(client, keys, fs_cfg)
        .with_context(|| format!("cannot open the memfis store under prefix {prefix:?}"))
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
