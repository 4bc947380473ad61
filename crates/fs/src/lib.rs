//! memfis filesystem semantics over a memcached-protocol store. Knows nothing of FUSE: every
//! operation takes inode numbers and returns plain values or an [`FsError`] carrying an errno,
//! so it is testable without a kernel (see `tests/model.rs` and `tests/interleave.rs`).
//!
//! Store layout (`docs/store-layout.md`):
//! - [`keys`]: where each record lives (data keys nginx reads, metadata keys it cannot reach)
//! - [`record`]: the inode and format records
//! - [`dirlog`]: the format of directory logs
//! - `replies`: reading a batch's replies as what each command was for (value, entry, cas)
//!
//! Protocol (how several mounts change the tree safely):
//! - [`nslock`]: the namespace lock, mount liveness, taking over from a gone mount
//! - [`intent`]: what a locked operation will change; `roll_forward` completes it after a crash
//! - [`fenced_store`]: refuses every call once the store was emptied under the mount
//!
//! State a mount keeps: `meta_cache` (bounded, expiring namespace caches), `open_files`
//! (handles and buffers of open files).
//!
//! Operations on [`MemFs`]:
//! - [`fs`]: the type, opening a store, reading and changing records and entries, paths,
//!   attributes
//! - [`namespace`]: create, mkdir, symlink, link, unlink, rmdir
//! - [`bulk`]: creating many files of one directory in one batch (`memfis load`)
//! - [`rename`]: rename, moving every data key under a renamed directory
//! - `compact`: rewriting a directory's log as its live names (heartbeat, repair)
//! - [`listing`]: appending to and replaying directory logs, readdir
//! - [`files`]: reading, writing and publishing open files
//! - `chunked`: files larger than one item, in chunks (`chunk_buffer`: what an open one holds)
//! - `placement`: which key holds a file's bytes (served or private), chmod moving them
//! - [`xattr`]: `user.*` extended attributes
//! - [`locks`]: flock and POSIX byte-range locks held in the store, across mounts
//! - [`check`]: the read-only consistency check of a whole store
//! - [`repair`]: fixing what the check finds, under the namespace lock
//!
//! Values in and out: [`attr`] (attributes, changes, entries, statfs), [`error`].
//! Warnings that repeat (a store outage fails every call alike) go through [`log_limit`].
//! `store_trace` logs every store batch and its replies when enabled, for diagnosing races.

mod activity;
pub mod attr;
mod batch;
pub mod bulk;
pub mod check;
mod chunk_buffer;
mod chunked;
mod compact;
pub mod data_codec;
pub mod dirlog;
pub mod error;
pub mod fenced_store;
pub mod files;
pub mod fs;
pub mod intent;
pub mod keys;
pub mod listing;
mod lock_lease;
pub mod locks;
pub mod log_limit;
mod meta_cache;
pub mod namespace;
pub mod nslock;
mod open_files;
mod placement;
mod publish_plan;
pub mod record;
pub mod rename;
pub mod repair;
mod replies;
mod roll_forward;
mod store_trace;
mod sync;
mod unsettled;
pub mod xattr;

pub use activity::ActivitySnapshot;
pub use attr::{Attr, DirEntry, SetAttr, StatFs};
pub use error::{FsError, FsResult};
pub use fs::{FsConfig, MemFs};
pub use keys::{KeyLayout, ROOT_INO};
pub use record::{Kind, Time};
pub use rename::RenameFlags;
