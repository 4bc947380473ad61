//! Talking to the store: commands sent in typed batches, and the guards every call passes.
//!
//! - [`batch`]: pushing a command returns a handle typed by the reply it expects; replies
//!   are taken by handle, and a store error becomes an [`FsError`](crate::FsError) in one place
//! - `replies`: decoding the values metadata keys hold (entries, numbers)
//! - [`fenced_store`]: refuses every call once the store was emptied under the mount, and
//!   (with `lock_lease`) every batch of the lock holder once the mount's liveness is stale
//! - `retried`: a cleanup step run again on a failed round trip
//! - [`store_trace`]: every batch and its replies in the log when enabled, for diagnosing races

pub(crate) mod batch;
pub mod fenced_store;
pub(crate) mod lock_lease;
pub(crate) mod replies;
pub mod store_trace;

use crate::FsResult;

/// Runs a cleanup step up to a few times: a step that makes the store consistent again
/// should not be given up on the first failed round trip.
pub(crate) fn retried<T>(mut step: impl FnMut() -> FsResult<T>) -> FsResult<T> {
    let mut last = step();
    for _ in 0..4 {
        if last.is_ok() {
            break;
        }
        last = step();
    }
    last
}
