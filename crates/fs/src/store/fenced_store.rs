//! The store as a mount sees it: every command fails once the store was found emptied or
//! replaced, so a mount never acts on caches of a store that is gone; data keys are encoded
//! and decoded on the way ([`DataCodec`]: gzip of text files).
//!
//! The store is found gone by the heartbeat (every 2 s), and at once after a connection broke
//! or could not be made (a restarted memcached comes back empty): the next batch first reads
//! the format record and compares the store id, and a batch during which a connection broke
//! is only answered once that check passes. That costs one round trip per broken connection.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memfis_memcache::{Capacity, CmdResult, Command, Refusal, Store, StoreError};

use crate::layout::data_codec::DataCodec;
use crate::layout::record::FormatRecord;
use crate::store::lock_lease::LockLease;

pub struct FencedStore<S> {
    inner: S,
    codec: DataCodec,
    gone: AtomicBool,
    /// The format record's key and the store id it must hold, once the mount knows them.
    identity: OnceLock<(Vec<u8>, String)>,
    /// The store's interruption count when the identity was last confirmed.
    confirmed: AtomicU64,
    /// Whether the thread holding the namespace lock may still send ([`LockLease`]).
    pub(crate) lease: LockLease,
}

impl<S: Store> FencedStore<S> {
    pub fn new(inner: S, codec: DataCodec) -> FencedStore<S> {
        FencedStore::with_lease_limit(inner, codec, crate::fs::FsConfig::default().stall_limit)
    }

    /// A store whose lock holder stops sending once the liveness refresh is older than
    /// `stall_limit` ([`LockLease`]).
    pub fn with_lease_limit(
        inner: S,
        codec: DataCodec,
        stall_limit: std::time::Duration,
    ) -> FencedStore<S> {
        FencedStore {
            inner,
            codec,
            gone: AtomicBool::new(false),
            identity: OnceLock::new(),
            confirmed: AtomicU64::new(0),
            lease: LockLease::new(stall_limit),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// From now on, a broken connection makes the next batch confirm that the format record
    /// at `format_key` still holds `store_id`.
    pub(crate) fn watch_identity(&self, format_key: Vec<u8>, store_id: String) {
        self.confirmed
            .store(self.inner.interruptions(), Ordering::SeqCst);
        let _ = self.identity.set((format_key, store_id));
    }

    /// True once the store was found emptied or replaced: answers from caches must not stand.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Marks the store gone; the first call logs it (one line per mount).
    pub(crate) fn mark_gone(&self) {
        if !self.gone.swap(true, Ordering::SeqCst) {
            tracing::error!(
                "the store was emptied or replaced under this mount (memcached restarted?): every \
                 call now fails with EIO; unmount and mount again to start afresh, or reload the tree"
            );
        }
    }

    /// Whether the format record still names this mount's store (`Err` when it cannot be
    /// read); marks the store gone when not.
    fn confirm_identity(&self, (key, store_id): &(Vec<u8>, String)) -> Result<(), StoreError> {
        let seen = self.inner.interruptions();
        let item = self.inner.get(key)?;
        let same = item
            .and_then(|i| serde_json::from_slice::<FormatRecord>(&i.value).ok())
            .is_some_and(|rec| &rec.store_id == store_id);
        if !same {
            self.mark_gone();
            return Err(StoreError::Refused(Refusal::StoreGone));
        }
        self.confirmed.fetch_max(seen, Ordering::SeqCst);
        Ok(())
    }

    fn interrupted(&self) -> bool {
        self.inner.interruptions() != self.confirmed.load(Ordering::SeqCst)
    }
}

fn all_failed(len: usize, err: StoreError) -> Vec<CmdResult> {
    (0..len).map(|_| Err(err.clone())).collect()
}

impl<S: Store> Store for FencedStore<S> {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if self.gone.load(Ordering::Relaxed) {
            return all_failed(batch.len(), StoreError::Refused(Refusal::StoreGone));
        }
        if self.lease.refuses() {
            return all_failed(batch.len(), StoreError::Refused(Refusal::LeaseLapsed));
        }
        let identity = self.identity.get();
        if let Some(id) = identity
            && self.interrupted()
            && let Err(e) = self.confirm_identity(id)
        {
            return all_failed(batch.len(), e);
        }
        let len = batch.len();
        let traced = crate::store::store_trace::enabled().then(|| batch.clone());
        // Only reads of data keys may come back compressed: their keys are kept for the
        // replies, nothing is copied for the rest of the batch.
        let reads: Vec<Option<Vec<u8>>> = batch.iter().map(|c| self.codec.read_key(c)).collect();
        let batch = batch.into_iter().map(|c| self.codec.encode(c)).collect();
        let results = self.inner.execute(batch);
        // A connection broke meanwhile: the batch may have run on a server that restarted
        // empty. Its replies count only if the store is still this mount's.
        if let Some(id) = identity
            && self.interrupted()
            && let Err(e) = self.confirm_identity(id)
        {
            return all_failed(len, e);
        }
        let results: Vec<CmdResult> = reads
            .iter()
            .zip(results)
            .map(|(read, r)| match read {
                Some(key) => self.codec.decode(key, r),
                None => r,
            })
            .collect();
        if let Some(batch) = traced {
            crate::store::store_trace::log(&batch, &results);
        }
        results
    }

    fn capacity(&self) -> Option<Capacity> {
        self.inner.capacity()
    }

    fn item_size_max(&self) -> Option<u64> {
        self.inner.item_size_max()
    }

    fn list_keys(&self) -> Option<Result<Vec<Vec<u8>>, StoreError>> {
        self.inner.list_keys()
    }

    fn in_order(&self) -> bool {
        self.inner.in_order()
    }
}
