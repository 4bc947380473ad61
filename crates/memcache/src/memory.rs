//! An in-memory store with memcached's semantics, for fast unit and property tests of the
//! filesystem logic. Never the only test of a feature: integration tests use real memcached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::protocol::validate_key;
use crate::{Capacity, CmdResult, Command, Item, MetaItem, Reply, Store, StoreError, StoreOp};

/// key -> (value, flags, cas)
type Items = HashMap<Vec<u8>, (Vec<u8>, u32, u64)>;

pub struct MemoryStore {
    items: Mutex<Items>,
    next_cas: AtomicU64,
    /// Largest value accepted (memcached `-I`).
    pub item_size_max: usize,
    /// Total bytes before `SERVER_ERROR out of memory` (memcached `-m` with `-M`).
    pub limit_bytes: usize,
    offline: AtomicBool,
    /// Answers meta commands as a server without them does (twemproxy, memcached < 1.6).
    no_meta: AtomicBool,
    /// Commands executed, for round-trip accounting in tests.
    pub commands: AtomicU64,
    pub batches: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(1 << 20, usize::MAX)
    }
}

impl MemoryStore {
    pub fn new(item_size_max: usize, limit_bytes: usize) -> MemoryStore {
        MemoryStore {
            items: Mutex::new(HashMap::new()),
            next_cas: AtomicU64::new(1),
            item_size_max,
            limit_bytes,
            offline: AtomicBool::new(false),
            no_meta: AtomicBool::new(false),
            commands: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }

    /// Simulates a dead server: every command fails with an I/O error.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    /// Refuses meta commands (`mg`) as twemproxy and memcached before 1.6 do.
    pub fn set_meta_commands(&self, known: bool) {
        self.no_meta.store(!known, Ordering::SeqCst);
    }

    /// Sets `key` with item `flags` (a value stored by another client, e.g. gzip-flagged).
    pub fn raw_set_flags(&self, key: &[u8], value: &[u8], flags: u32) {
        let cas = self.next_cas.fetch_add(1, Ordering::SeqCst);
        self.items
            .lock()
            .unwrap()
            .insert(key.to_vec(), (value.to_vec(), flags, cas));
    }

    /// Direct access for tests that corrupt or inspect records.
    pub fn raw_set(&self, key: &[u8], value: &[u8]) {
        let cas = self.next_cas.fetch_add(1, Ordering::SeqCst);
        self.items
            .lock()
            .unwrap()
            .insert(key.to_vec(), (value.to_vec(), 0, cas));
    }

    pub fn raw_delete(&self, key: &[u8]) {
        self.items.lock().unwrap().remove(key);
    }

    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.items.lock().unwrap().keys().cloned().collect()
    }

    fn used(items: &Items) -> usize {
        items.iter().map(|(k, v)| k.len() + v.0.len() + 48).sum()
    }

    // (Over 80 lines: one arm per command, each as memcached answers it; split, the arms
    // would pass the locked map and the size check along.)
    fn apply(&self, cmd: Command) -> CmdResult {
        validate_key(cmd.key())?;
        let mut items = self.items.lock().unwrap();
        let cas = self.next_cas.fetch_add(1, Ordering::SeqCst);
        let check_size = |items: &HashMap<_, _>, key: &[u8], len: usize| {
            if len > self.item_size_max {
                return Err(StoreError::TooLarge("object too large for cache".into()));
            }
            if Self::used(items) + len + key.len() > self.limit_bytes {
                return Err(StoreError::OutOfMemory(
                    "out of memory storing object".into(),
                ));
            }
            Ok(())
        };
        match cmd {
            Command::Get(k) => Ok(Reply::Value(items.get(&k).map(|(v, f, _)| Item {
                value: v.clone(),
                flags: *f,
                cas: None,
            }))),
            Command::Gets(k) => Ok(Reply::Value(items.get(&k).map(|(v, f, c)| Item {
                value: v.clone(),
                flags: *f,
                cas: Some(*c),
            }))),
            Command::Store {
                op,
                key,
                value,
                flags,
                ..
            } => {
                let exists = items.contains_key(&key);
                let value = std::sync::Arc::unwrap_or_clone(value);
                let new_value = match op {
                    StoreOp::Set => value,
                    StoreOp::Add if exists => return Ok(Reply::NotStored),
                    StoreOp::Add => value,
                    StoreOp::Replace | StoreOp::Append | StoreOp::Prepend if !exists => {
                        return Ok(Reply::NotStored);
                    }
                    StoreOp::Replace => value,
                    StoreOp::Append => [items[&key].0.clone(), value].concat(),
                    StoreOp::Prepend => [value, items[&key].0.clone()].concat(),
                };
                if let Err(e) = check_size(&items, &key, new_value.len()) {
                    if op == StoreOp::Set {
                        items.remove(&key); // memcached drops the old item on a failed set
                    }
                    return Err(e);
                }
                let flags = match op {
                    StoreOp::Append | StoreOp::Prepend => items[&key].1,
                    _ => flags,
                };
                items.insert(key, (new_value, flags, cas));
                Ok(Reply::Stored)
            }
            Command::Cas {
                key,
                value,
                flags,
                cas: expected,
                ..
            } => match items.get(&key) {
                None => Ok(Reply::NotFound),
                Some((_, _, c)) if *c != expected => Ok(Reply::Exists),
                Some(_) => {
                    check_size(&items, &key, value.len())?;
                    items.insert(key, (std::sync::Arc::unwrap_or_clone(value), flags, cas));
                    Ok(Reply::Stored)
                }
            },
            Command::Incr { key, delta } => {
                Self::delta(&mut items, key, cas, |n| n.wrapping_add(delta))
            }
            Command::Decr { key, delta } => {
                Self::delta(&mut items, key, cas, |n| n.saturating_sub(delta))
            }
            Command::Delete(k) => Ok(match items.remove(&k) {
                Some(_) => Reply::Deleted,
                None => Reply::NotFound,
            }),
            Command::MetaSize(k) if self.no_meta.load(Ordering::SeqCst) => {
                Err(StoreError::Client(format!(
                    "memory answered ERROR to mg {}",
                    String::from_utf8_lossy(&k)
                )))
            }
            Command::MetaSize(k) => Ok(Reply::Meta(items.get(&k).map(|(v, f, _)| MetaItem {
                size: v.len() as u64,
                flags: *f,
            }))),
            Command::Touch { key, .. } => Ok(if items.contains_key(&key) {
                Reply::Touched
            } else {
                Reply::NotFound
            }),
        }
    }

    fn delta(items: &mut Items, key: Vec<u8>, cas: u64, f: impl Fn(u64) -> u64) -> CmdResult {
        let Some(entry) = items.get_mut(&key) else {
            return Ok(Reply::NotFound);
        };
        let n: u64 = std::str::from_utf8(&entry.0)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                StoreError::Client("cannot increment or decrement non-numeric value".into())
            })?;
        let n = f(n);
        *entry = (n.to_string().into_bytes(), entry.1, cas);
        Ok(Reply::Number(n))
    }
}

impl Store for MemoryStore {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commands
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if self.offline.load(Ordering::SeqCst) {
            let err = StoreError::Io {
                server: "memory".into(),
                message: "connection refused".into(),
            };
            return batch.iter().map(|_| Err(err.clone())).collect();
        }
        batch.into_iter().map(|c| self.apply(c)).collect()
    }

    fn capacity(&self) -> Option<Capacity> {
        let items = self.items.lock().unwrap();
        Some(Capacity {
            used_bytes: Self::used(&items) as u64,
            limit_bytes: self.limit_bytes.min(1 << 40) as u64,
        })
    }

    fn item_size_max(&self) -> Option<u64> {
        Some(self.item_size_max as u64)
    }

    fn list_keys(&self) -> Option<Result<Vec<Vec<u8>>, StoreError>> {
        Some(Ok(self.keys()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_size_tells_size_and_flags_or_refuses_like_twemproxy() {
        let m = MemoryStore::default();
        m.raw_set_flags(b"k", b"hello", 2);
        assert_eq!(m.meta_size(b"k"), Ok(Some(MetaItem { size: 5, flags: 2 })));
        assert_eq!(m.meta_size(b"missing"), Ok(None));
        m.set_meta_commands(false);
        assert!(matches!(m.meta_size(b"k"), Err(StoreError::Client(_))));
    }
}
