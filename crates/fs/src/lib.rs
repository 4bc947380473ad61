//! memfis filesystem semantics over a memcached-protocol store. Knows nothing of FUSE: every
//! operation takes inode numbers and returns plain values or an [`FsError`] carrying an errno,
//! so it is testable without a kernel (see `tests/model.rs` and `tests/interleave.rs`).
//!
//! Layers, each a folder:
//! - [`store`]: talking to the store (typed batches, the fences every call passes)
//! - [`layout`]: what the store holds, as values (keys, records, logs, intents)
//! - [`namespace`]: names, that is entries, directory logs, the namespace lock and the
//!   operations that change names (creates, renames, removals; roll-forward, the heartbeat)
//! - [`files`]: file bytes (open files, reading, writing and publishing them)
//! - [`locks`]: flock and POSIX byte-range locks held in the store, across mounts
//! - [`check`]: the read-only consistency check of a whole store, and repair
//!
//! [`MemFs`] ([`fs`]) is the facade: the type, statfs, and the small helpers every layer
//! shares (names, paths, retries). `tree` holds what every component shares (the fenced
//! store, the key layout, the configuration, this mount's id) and opens a tree (the format
//! record, the registry of prefixes). Each operation of the
//! facade is defined in the folder of its layer:
//! - `statfs`: [`fs`]; `lookup`: `namespace::records`; `getattr`: `namespace::attrs`; `setattr`: `files::setattr`
//! - `mkdir`, `mknod`, `symlink`, `readlink`, `link`, `unlink`, `rmdir`: [`namespace::nodes`]
//!   (every create claims its name through `namespace::claim`)
//! - `create_files`: [`files::bulk`]; `rename`: [`namespace::rename`]; `readdir`:
//!   [`namespace::listing`]; `compact_dir`, `compact_all`: `namespace::compact`
//! - `create`, `open`, `read`, `write`, `flush`, `fsync`, `release`: [`files::io`]; xattrs:
//!   [`files::xattr`]
//! - file locks: [`locks`]; `heartbeat`: [`fs`] (its queues: `maintenance`); `repair`: [`check::repair`]
//!
//! Values in and out: [`layout::attr`] (attributes, changes, entries, statfs), [`error`].
//! Warnings that repeat (a store outage fails every call alike) go through [`log_limit`].

mod activity;
pub mod check;
pub mod error;
pub mod files;
pub mod fs;
pub mod layout;
pub mod locks;
pub mod log_limit;
mod maintenance;
pub mod namespace;
pub mod store;
mod sync;
mod tree;

pub use activity::ActivitySnapshot;
pub use error::{FsError, FsResult};
pub use fs::{FsConfig, MemFs};
pub use layout::attr::{Attr, DirEntry, SetAttr, StatFs};
pub use layout::keys::{KeyLayout, ROOT_INO};
pub use layout::record::{Kind, Time};
pub use namespace::rename::RenameFlags;
