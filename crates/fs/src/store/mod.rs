//! Talking to the store: commands sent in typed batches, and the guards every call passes.
//!
//! - [`batch`]: pushing a command returns a handle typed by the reply it expects; replies
//!   are taken by handle, and a store error becomes an [`FsError`](crate::FsError) in one place
//! - `replies`: decoding the values metadata keys hold (entries, numbers)
//! - [`fenced_store`]: refuses every call once the store was emptied under the mount, and
//!   (with `lock_lease`) every batch of the lock holder once the mount's liveness is stale
//! - [`store_trace`]: every batch and its replies in the log when enabled, for diagnosing races

pub(crate) mod batch;
pub mod fenced_store;
pub(crate) mod lock_lease;
pub(crate) mod replies;
pub mod store_trace;
