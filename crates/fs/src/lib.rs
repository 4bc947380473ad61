//! memfis filesystem semantics over a memcached-protocol store. Knows nothing of FUSE: every
//! operation takes inode numbers and returns plain values or an [`FsError`] carrying an errno,
//! so it is testable without a kernel (see `tests/model.rs`).
//!
//! - [`keys`]: where each record lives (data keys nginx reads, metadata keys it cannot reach)
//! - [`record`]: the inode and format records
//! - [`dirlog`]: directory listings as append-only logs
//! - [`fs`]: namespace operations (lookup, create, unlink, ...)
//! - [`files`]: open files: buffers, reads, writes, publishing at flush
//! - [`rename`]: rename, including moving every data key under a renamed directory
//! - [`xattr`]: `user.*` extended attributes

pub mod dirlog;
pub mod error;
pub mod files;
pub mod fs;
pub mod keys;
pub mod record;
pub mod rename;
pub mod xattr;

pub use error::{FsError, FsResult};
pub use fs::{Attr, DirEntry, FsConfig, MemFs, SetAttr, StatFs};
pub use keys::{KeyLayout, ROOT_INO};
pub use record::{Kind, Time};
pub use rename::RenameFlags;
