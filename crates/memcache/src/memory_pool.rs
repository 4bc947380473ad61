//! A pool of in-memory servers shared by several clients, for fast tests of replication:
//! servers die, come back empty, or are cut off from one client only (a partition). Each
//! [`PoolClient`] is one mount's client, with its own idea of which servers are in sync.
//! Never the only test of a feature: tests/replicas.rs runs real memcached servers.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::memory::MemoryStore;
use crate::replicas::{self, ReplicaKeys, Replication, ResyncReport, Servers};
use crate::ring::Ring;
use crate::{CmdResult, Command, Item, Reply, Store, StoreError};

/// The servers, as every client of the pool reaches them.
pub struct MemoryPool {
    servers: Vec<MemoryStore>,
    names: Vec<String>,
    ring: Ring,
    /// Restarts of each server: a client sees its connections break.
    restarts: Vec<AtomicU64>,
}

impl MemoryPool {
    /// `count` empty servers, named `mem<i>:11211` on the ring.
    pub fn new(count: usize) -> Arc<MemoryPool> {
        let names: Vec<String> = (0..count).map(|i| format!("mem{i}:11211")).collect();
        Arc::new(MemoryPool {
            servers: (0..count).map(|_| MemoryStore::default()).collect(),
            ring: Ring::new(&names),
            names,
            restarts: (0..count).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub fn server(&self, index: usize) -> &MemoryStore {
        &self.servers[index]
    }

    /// The server stops answering (killed).
    pub fn kill(&self, index: usize) {
        self.servers[index].set_offline(true);
        self.restarts[index].fetch_add(1, Ordering::SeqCst);
    }

    /// The server answers again, holding nothing (restarted).
    pub fn restart_empty(&self, index: usize) {
        let s = &self.servers[index];
        for key in s.keys() {
            s.raw_delete(&key);
        }
        s.set_offline(false);
        self.restarts[index].fetch_add(1, Ordering::SeqCst);
    }

    /// The server answers again with what it held (it was only stalled or cut off).
    pub fn revive(&self, index: usize) {
        self.servers[index].set_offline(false);
    }

    /// A client of the pool (one mount's). It tries a failed server again at once (the
    /// servers here fail and return between two steps of a test, not seconds apart).
    pub fn client(self: &Arc<Self>) -> PoolClient {
        let repl = Replication::new(self.servers.len());
        repl.set_pauses(std::time::Duration::ZERO, std::time::Duration::ZERO);
        PoolClient {
            repl,
            pool: self.clone(),
            cut: Mutex::new(BTreeSet::new()),
        }
    }
}

/// One client of a [`MemoryPool`].
pub struct PoolClient {
    pool: Arc<MemoryPool>,
    repl: Replication,
    /// Servers this client cannot reach (a partition).
    cut: Mutex<BTreeSet<usize>>,
}

impl PoolClient {
    /// Cuts this client off from server `index` (`true`) or heals the cut.
    pub fn cut_off(&self, index: usize, cut: bool) {
        let mut set = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        if cut {
            set.insert(index);
        } else {
            set.remove(&index);
        }
    }

    pub fn pool(&self) -> &Arc<MemoryPool> {
        &self.pool
    }
}

impl Servers for PoolClient {
    fn send(&self, sends: Vec<(usize, Command)>) -> Vec<CmdResult> {
        let cut = self.cut.lock().unwrap_or_else(|p| p.into_inner()).clone();
        sends
            .into_iter()
            .map(|(s, cmd)| {
                if cut.contains(&s) {
                    return Err(StoreError::Io {
                        server: self.pool.names[s].clone(),
                        message: "cut off".into(),
                    });
                }
                self.pool.servers[s]
                    .execute(vec![cmd])
                    .pop()
                    .unwrap_or_else(|| Err(StoreError::protocol("-", "no reply")))
            })
            .collect()
    }

    fn count(&self) -> usize {
        self.pool.servers.len()
    }

    fn addr(&self, index: usize) -> String {
        self.pool.names[index].clone()
    }

    fn interruptions(&self, index: usize) -> u64 {
        self.pool.restarts[index].load(Ordering::SeqCst)
    }

    fn holders(&self, key: &[u8], n: usize) -> Vec<usize> {
        self.pool
            .ring
            .servers_for(&crate::protocol::percent_decode(key), n)
    }
}

impl Store for PoolClient {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if self.repl.copies() > 1 {
            return replicas::execute(self, &self.repl, batch);
        }
        let sends = batch
            .into_iter()
            .map(|c| (self.holders(c.key(), 1)[0], c))
            .collect();
        Servers::send(self, sends)
    }

    fn in_order(&self) -> bool {
        false
    }

    fn list_keys(&self) -> Option<Result<Vec<Vec<u8>>, StoreError>> {
        let mut all: Vec<Vec<u8>> = self.pool.servers.iter().flat_map(|s| s.keys()).collect();
        all.sort_unstable();
        all.dedup();
        Some(Ok(all))
    }

    fn interruptions(&self) -> u64 {
        (0..self.count())
            .map(|i| Servers::interruptions(self, i))
            .sum()
    }

    fn replicas(&self) -> usize {
        self.repl.copies()
    }

    fn set_replicas(&self, copies: usize, keys: &ReplicaKeys) -> Result<(), String> {
        if copies > 1 {
            self.repl.enable(copies, keys);
        }
        Ok(())
    }

    fn mark_all_in_sync(&self) -> Result<(), StoreError> {
        for s in 0..self.count() {
            replicas::mark_in_sync(self, &self.repl, s)?;
        }
        Ok(())
    }

    fn resync(
        &self,
        keys: &[Vec<u8>],
        repair: bool,
        pace: &mut dyn FnMut(&ResyncReport) -> ControlFlow<()>,
    ) -> ResyncReport {
        replicas::resync(self, &self.repl, keys, repair, pace)
    }

    fn pool_id(&self) -> Option<String> {
        Some(crate::ring::pool_id(&self.pool.names))
    }

    fn servers_to_refill(&self) -> Vec<String> {
        let refill = replicas::servers_to_refill(self, &self.repl);
        refill.into_iter().map(|s| self.addr(s)).collect()
    }

    fn get_anywhere(&self, key: &[u8]) -> Result<Option<Item>, StoreError> {
        for s in self.holders(key, self.count()) {
            if let Some(Ok(Reply::Value(Some(item)))) =
                Servers::send(self, vec![(s, Command::Get(key.to_vec()))]).pop()
            {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }
}
