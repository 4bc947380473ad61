//! The store as a mount sees it: every command fails once the heartbeat found the store
//! emptied or replaced, so a mount never acts on caches of a store that is gone; data keys are
//! encoded and decoded on the way ([`DataCodec`]: gzip of text files).

use std::sync::atomic::{AtomicBool, Ordering};

use memfis_memcache::{Capacity, CmdResult, Command, Store, StoreError};

use crate::data_codec::DataCodec;

/// The server error every command gets once the store is gone ([`crate::FsError::StoreGone`]).
pub const STORE_GONE: &str = "the store was emptied or replaced under this mount; remount it";

pub struct FencedStore<S> {
    inner: S,
    codec: DataCodec,
    pub(crate) gone: AtomicBool,
}

impl<S: Store> FencedStore<S> {
    pub fn new(inner: S, codec: DataCodec) -> FencedStore<S> {
        FencedStore {
            inner,
            codec,
            gone: AtomicBool::new(false),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Store for FencedStore<S> {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if self.gone.load(Ordering::Relaxed) {
            let err = StoreError::Server(STORE_GONE.into());
            return batch.iter().map(|_| Err(err.clone())).collect();
        }
        // Only reads of data keys may come back compressed: their keys are kept for the
        // replies, nothing is copied for the rest of the batch.
        let reads: Vec<Option<Vec<u8>>> = batch.iter().map(|c| self.codec.read_key(c)).collect();
        let batch = batch.into_iter().map(|c| self.codec.encode(c)).collect();
        let results = self.inner.execute(batch);
        reads
            .iter()
            .zip(results)
            .map(|(read, r)| match read {
                Some(key) => self.codec.decode(key, r),
                None => r,
            })
            .collect()
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
