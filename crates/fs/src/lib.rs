//! memfis filesystem semantics over a memcached-protocol store. Knows nothing of FUSE: every
//! operation takes inode numbers and returns plain values or an [`FsError`] carrying an errno,
//! so it is testable without a kernel (see `tests/model.rs` and `tests/interleave.rs`).
//!
//! [`MemFs`] ([`fs`]) is the facade: each public operation is one call into the component
//! that owns it (file locks, the heartbeat and the liveness refresh combine two there). The
//! components, each with its own state:
//! - `tree` (`Tree`): what every component shares (the fenced store, the key
//!   layout, the configuration and limits, this mount's id) and opening a tree (the format record, the
//!   registry of prefixes)
//! - `maintenance` (`Maintenance`): the queues the heartbeat works off (stale keys, unsettled
//!   creates, logs to compact), deleting a file's chunks, this mount's liveness
//! - [`namespace`] (`Namespace`): names, that is records, entries, directory logs, the
//!   namespace lock, intents and roll-forward, inode numbers and the directory cache; the
//!   operations that change names (creates, renames, removals), `getattr`, and where a file's
//!   bytes are (loaded fenced against operations moving them)
//! - [`files`] (`Files`): open files and handles, reading, writing and publishing their bytes
//!   (whole or in chunks), `setattr`, xattrs, bulk creates; reaches names only through the
//!   namespace's methods
//! - [`locks`] (`FileLocks`): flock and POSIX byte-range locks held in the store, across mounts
//! - [`check`]: the read-only consistency check of a whole store, and repair (through the
//!   namespace)
//!
//! Below them: [`store`] (typed batches, the fences every call passes) and [`layout`] (what
//! the store holds, as values: keys, records, logs, intents). The facade's operations, by
//! where they are done:
//! - `lookup`, `path_of`: `namespace::records`; `getattr`: `namespace::attrs`;
//!   `getattr_many`, `list_dir`: [`namespace::listing`]; `mkdir`, `mknod`,
//!   `symlink`, `readlink`, `link`, `unlink`, `rmdir`: [`namespace::nodes`] (every create
//!   claims its name through `namespace::claim`); `rename`: [`namespace::rename`]; `readdir`:
//!   [`namespace::listing`]; `compact_dir`, `compact_all`: `namespace::compact`
//! - `create`, `open`, `read`, `write`, `flush`, `fsync`, `release`: [`files::io`];
//!   `setattr`: `files::setattr`; xattrs: [`files::xattr`]; `create_files`: [`files::bulk`]
//! - `setattr` that serves or withdraws a file (its bytes move under the namespace lock):
//!   `namespace::chmod`; deleting keys no name reaches (the heartbeat's stale keys):
//!   `namespace::unreached_keys`; an open file keeping its bytes when its last name goes:
//!   `namespace::roll_forward` (`keep_bytes_for_open_handles`)
//! - file locks: [`locks`], with `files::lock_grant` after a grant; `repair`:
//!   [`check::repair`]; `heartbeat`, `statfs`: [`fs`]
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
pub use files::bulk::NewFile;
pub use fs::{FsConfig, MemFs};
pub use layout::attr::{Attr, DirEntry, SetAttr, StatFs};
pub use layout::keys::{KeyLayout, ROOT_INO};
pub use layout::record::{Kind, Time};
pub use namespace::rename::RenameFlags;
pub use tree::settle_replicas;
