//! The copies of a tree's keys on a pool with `--replicas N`: which keys have fewer than N
//! equal copies, and refilling them from each key's acting primary (`memfis check`,
//! `memfis check --repair`). The protocol: docs/store-layout.md, "Replicas".

use std::ops::ControlFlow;

use anyhow::{Context, Result, bail};
use memfis_fs::KeyLayout;
use memfis_fs::layout::keys::{PREFIX_REGISTRY_KEY, escape};
use memfis_memcache::replicas::ResyncReport;
use memfis_memcache::{Client, Store};

/// What the copies of a tree look like.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaReport {
    /// Copies kept of each key.
    pub replicas: usize,
    /// Keys of the tree compared.
    pub keys: usize,
    /// Keys with a copy missing or holding other bytes than the acting primary's (before a
    /// repair, when one ran).
    pub under_replicated: usize,
    /// Copies set to the primary's value by a repair.
    pub copied: usize,
    /// Servers without their in-sync marker (restarted empty, or never refilled) after the
    /// run.
    pub out_of_sync: Vec<String>,
    /// Copies that could not be read or set: "key: error".
    pub failed: Vec<String>,
}

impl ReplicaReport {
    /// True when every key has all its copies and every server is in sync.
    pub fn clean(&self) -> bool {
        self.failed.is_empty()
            && self.out_of_sync.is_empty()
            && (self.under_replicated == 0 || self.copied >= self.under_replicated)
    }
}

/// Compares every copy of every key of the tree under `keys` and, with `repair`, refills
/// the copies that lack a key or hold other bytes; `None` when the store keeps one copy.
/// The keys: [`keys_to_compare`].
pub fn check_copies(
    client: &Client,
    keys: &KeyLayout,
    tree_keys: &[Vec<u8>],
    repair: bool,
) -> Result<Option<ReplicaReport>> {
    if client.replicas() < 2 {
        return Ok(None);
    }
    if repair {
        refuse_mixed_lists(client, keys)?;
    }
    let mine = keys_to_compare(client, keys, tree_keys)?;
    let ResyncReport {
        keys: compared,
        under_replicated,
        copied,
        failed,
        stopped: _,
    } = client.resync(&mine, repair, &mut |_| ControlFlow::Continue(()));
    let repl = client.replication();
    Ok(Some(ReplicaReport {
        replicas: client.replicas(),
        keys: compared,
        under_replicated,
        copied,
        out_of_sync: (0..client.server_count())
            .filter(|&s| !repl.in_sync(s))
            .map(|s| client.server_addr(s).to_string())
            .collect(),
        failed: failed
            .into_iter()
            .map(|(k, e)| format!("{}: {e}", String::from_utf8_lossy(&k)))
            .collect(),
    }))
}

/// The keys of the tree under `keys` whose copies a resync compares: those a walk of the
/// tree reached (`tree_keys`: every name's keys and the tree's own) and those the store lists
/// (`lru_crawler metadump`, not through twemproxy: keys of writes in progress, keys no name
/// reaches), which alone may miss keys memcached moves between its LRU lists while it lists
/// them. Sorted, each once.
pub fn keys_to_compare<S: Store>(
    store: &S,
    keys: &KeyLayout,
    tree_keys: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>> {
    // Listed twice: a key memcached moves between its lists during one listing is seldom
    // moving during the next.
    let mut listed = Vec::new();
    for _ in 0..2 {
        let Some(keys) = store.list_keys() else {
            bail!("the store cannot list its keys: copies cannot be compared");
        };
        listed.extend(keys.context("cannot list the store's keys to compare their copies")?);
    }
    let mut mine: Vec<Vec<u8>> = listed
        .into_iter()
        .filter(|k| belongs_to(keys, k))
        .chain(tree_keys.iter().cloned())
        .chain([PREFIX_REGISTRY_KEY.to_vec()])
        .collect();
    mine.sort_unstable();
    mine.dedup();
    Ok(mine)
}

/// An error while a live mount of the tree uses another list of servers than `store`'s.
pub fn refuse_mixed_lists<S: Store>(store: &S, keys: &KeyLayout) -> Result<()> {
    let others = mounts_on_other_lists(store, keys)?;
    if others.is_empty() {
        return Ok(());
    }
    bail!(
        "mount{} {} of this tree use{} another list of servers than this one ({}): copies are \
         refilled once every mount uses the same list (remount them with it)",
        if others.len() > 1 { "s" } else { "" },
        others.join(", "),
        if others.len() > 1 { "" } else { "s" },
        store.pool_id().unwrap_or_default()
    )
}

/// Live mounts of the tree under `keys` whose liveness key names another list of servers
/// than `store`'s (their ids): each places keys on its own ring, so a server the other list
/// adds does not get their writes, and must not be marked in sync while they run. Mounts of
/// a memfis that does not name its list are not told apart.
pub fn mounts_on_other_lists<S: Store>(store: &S, keys: &KeyLayout) -> Result<Vec<String>> {
    let Some(mine) = store.pool_id() else {
        return Ok(Vec::new());
    };
    let Some(listed) = store.list_keys() else {
        return Ok(Vec::new());
    };
    let listed = listed.context("cannot list the store's keys to find the live mounts")?;
    let alive = keys.alive("");
    let mut others = Vec::new();
    for key in listed {
        let Some(id) = key.strip_prefix(alive.as_slice()) else {
            continue;
        };
        // Wherever the other mount's ring put it.
        let item = store
            .get_anywhere(&key)
            .with_context(|| format!("cannot read {}", String::from_utf8_lossy(&key)))?;
        if let Some(item) = item
            && item.value.starts_with(b"pool=")
            && item.value != mine.as_bytes()
        {
            others.push(String::from_utf8_lossy(id).into_owned());
        }
    }
    Ok(others)
}

/// Whether `key` is one of the tree's: a data key (`escape(PREFIX)/...`), a metadata key
/// (`PREFIX%...`), or the store's list of prefixes.
fn belongs_to(keys: &KeyLayout, key: &[u8]) -> bool {
    let data = escape(keys.prefix().as_bytes());
    let meta = keys.prefix().as_bytes();
    key == PREFIX_REGISTRY_KEY
        || key
            .strip_prefix(data.as_slice())
            .is_some_and(|r| r.starts_with(b"/"))
        || key.strip_prefix(meta).is_some_and(|r| r.starts_with(b"%"))
}
