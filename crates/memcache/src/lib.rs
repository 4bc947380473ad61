//! A memcached client for the ASCII text protocol, the dialect nginx and twemproxy speak.
//!
//! Why our own: no crate on crates.io combines ASCII-only (twemproxy-safe), pipelined batches with
//! a result per command, gets/cas, typed out-of-memory / too-large errors, and nginx's
//! `hash ... consistent` placement (see `docs/memcached-client.md`).
//!
//! Layers, bottom up: [`protocol`] (bytes on the wire), [`connection`] (one TCP stream with
//! timeouts), [`pool`] (per-server idle connections), [`ring`] (which server owns a key),
//! [`client`] (batches routed to servers). [`Store`] is the trait the filesystem talks to;
//! [`memory::MemoryStore`] implements it in memory for fast tests. With `--replicas N`,
//! [`replicas`] keeps every key on N servers; [`memory_pool`] is a pool of in-memory servers
//! for tests of it.

pub mod client;
pub mod command;
pub mod connection;
pub mod error;
pub mod latency;
pub mod memory;
pub mod memory_pool;
pub mod pool;
pub mod protocol;
pub mod replicas;
pub mod ring;

pub use client::{Client, ClientConfig};
pub use command::{Command, Item, MetaItem, Reply, StoreOp};
pub use error::{Refusal, StoreError};
pub use replicas::{ReplicaKeys, Replication, ResyncReport};

use std::ops::ControlFlow;

/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;

/// Result of one command in a batch.
pub type CmdResult = Result<Reply, StoreError>;

/// Used and total bytes of the store, for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub used_bytes: u64,
    pub limit_bytes: u64,
}

/// A memcached-protocol store. `execute` sends a batch pipelined (one round trip per server
/// involved) and returns one result per command, in order.
pub trait Store: Send + Sync {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult>;

    /// Used/total bytes summed over the servers, when the store can tell (not via twemproxy).
    fn capacity(&self) -> Option<Capacity> {
        None
    }

    /// The server's largest item (`item_size_max`), when the store can tell.
    fn item_size_max(&self) -> Option<u64> {
        None
    }

    /// True when a batch runs in the order of its commands: everything goes to one server
    /// over one connection (memcached executes a connection's commands in order). A pool splits
    /// a batch over servers, with no order between them.
    fn in_order(&self) -> bool {
        true
    }

    /// Every key the store holds, when it can list them (memcached's `lru_crawler
    /// metadump`; not through twemproxy). `None` when it cannot.
    fn list_keys(&self) -> Option<Result<Vec<Vec<u8>>, StoreError>> {
        None
    }

    /// How many connections broke or could not be made so far: a change means a server may
    /// have restarted, empty, in between. 0 for stores without connections.
    fn interruptions(&self) -> u64 {
        0
    }

    /// Copies kept of each key (`--replicas`); 1 for a store that keeps one.
    fn replicas(&self) -> usize {
        1
    }

    /// Keeps `copies` copies of every key from now on, with the tree's special keys `keys`
    /// (see `replicas`). Refused by stores that keep one copy.
    fn set_replicas(&self, copies: usize, _keys: &ReplicaKeys) -> Result<(), String> {
        if copies == 1 {
            Ok(())
        } else {
            Err(format!(
                "this store keeps one copy of each key, not {copies}"
            ))
        }
    }

    /// Writes the in-sync marker to every server (a new tree: every server holds all of it).
    fn mark_all_in_sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// `key` read from the first server on the ring that holds it, whatever the replicas
    /// set: how a tool finds a tree's format record before it knows how many copies it has.
    fn get_anywhere(&self, key: &[u8]) -> Result<Option<Item>, StoreError> {
        self.get(key)
    }

    /// Compares every copy of `keys` with its acting primary's and, with `repair`, refills
    /// the copies that differ; `pace` hears the progress after each group of keys and may
    /// stop the run (see [`replicas::resync`]). Nothing to do for a store that keeps one
    /// copy.
    fn resync(
        &self,
        _keys: &[Vec<u8>],
        _repair: bool,
        _pace: &mut dyn FnMut(&ResyncReport) -> ControlFlow<()>,
    ) -> ResyncReport {
        ResyncReport::default()
    }

    /// Servers that answer without their in-sync marker (back empty, or new to the pool):
    /// what a refill copies to. Empty for a store that keeps one copy.
    fn servers_to_refill(&self) -> Vec<String> {
        Vec::new()
    }

    /// Names this client's list of servers ([`ring::pool_id`]) when it has several; `None`
    /// for one server, or a store that is not a pool.
    fn pool_id(&self) -> Option<String> {
        None
    }

    /// Runs one command.
    fn run(&self, cmd: Command) -> CmdResult {
        self.execute(vec![cmd])
            .pop()
            .unwrap_or_else(|| Err(StoreError::protocol("-", "empty batch result")))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Item>, StoreError> {
        self.run(Command::Get(key.to_vec()))?.into_value()
    }

    fn gets(&self, key: &[u8]) -> Result<Option<Item>, StoreError> {
        self.run(Command::Gets(key.to_vec()))?.into_value()
    }

    /// Runs a store command (`set`, `add`, ...). `Ok(true)` when stored, `Ok(false)` when the
    /// server said NOT_STORED / EXISTS / NOT_FOUND.
    fn store(&self, op: StoreOp, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        Ok(self.run(Command::store(op, key, value))? == Reply::Stored)
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.run(Command::Delete(key.to_vec()))? == Reply::Deleted)
    }

    /// The size and flags of the item at `key` without its value (`mg KEY s f`); `Ok(None)` on
    /// a miss. An error when the server has no meta commands (before 1.6, twemproxy).
    fn meta_size(&self, key: &[u8]) -> Result<Option<MetaItem>, StoreError> {
        match self.run(Command::MetaSize(key.to_vec()))? {
            Reply::Meta(m) => Ok(m),
            other => Err(StoreError::protocol(
                "-",
                &format!("expected HD/EN, got {other:?}"),
            )),
        }
    }

    /// `incr`; `Ok(None)` when the key does not exist.
    fn incr(&self, key: &[u8], delta: u64) -> Result<Option<u64>, StoreError> {
        match self.run(Command::Incr {
            key: key.to_vec(),
            delta,
        })? {
            Reply::Number(n) => Ok(Some(n)),
            _ => Ok(None),
        }
    }
}

/// A store behind a pointer is the store: every method passes through. (A macro, so the two
/// pointer kinds cannot drift apart when the trait grows.)
macro_rules! forward_store {
    ($($target:ty),+) => {$(
        impl<S: Store + ?Sized> Store for $target {
            fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
                (**self).execute(batch)
            }
            fn capacity(&self) -> Option<Capacity> {
                (**self).capacity()
            }
            fn item_size_max(&self) -> Option<u64> {
                (**self).item_size_max()
            }
            fn list_keys(&self) -> Option<Result<Vec<Vec<u8>>, StoreError>> {
                (**self).list_keys()
            }
            fn in_order(&self) -> bool {
                (**self).in_order()
            }
            fn interruptions(&self) -> u64 {
                (**self).interruptions()
            }
            fn replicas(&self) -> usize {
                (**self).replicas()
            }
            fn set_replicas(&self, copies: usize, keys: &ReplicaKeys) -> Result<(), String> {
                (**self).set_replicas(copies, keys)
            }
            fn mark_all_in_sync(&self) -> Result<(), StoreError> {
                (**self).mark_all_in_sync()
            }
            fn get_anywhere(&self, key: &[u8]) -> Result<Option<Item>, StoreError> {
                (**self).get_anywhere(key)
            }
            fn resync(
                &self,
                keys: &[Vec<u8>],
                repair: bool,
                pace: &mut dyn FnMut(&ResyncReport) -> ControlFlow<()>,
            ) -> ResyncReport {
                (**self).resync(keys, repair, pace)
            }
            fn servers_to_refill(&self) -> Vec<String> {
                (**self).servers_to_refill()
            }
            fn pool_id(&self) -> Option<String> {
                (**self).pool_id()
            }
        }
    )+};
}

forward_store!(std::sync::Arc<S>, &S);
