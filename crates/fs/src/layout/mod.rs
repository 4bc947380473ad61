//! What the store holds, as values (`docs/store-layout.md`): no store access here.
//!
//! - [`keys`]: where each record lives (data keys nginx reads, metadata keys it cannot reach)
//! - [`record`]: the inode and format records
//! - [`dirlog`]: directory logs, their chunks and base
//! - [`intent`]: what a locked operation will change, kept in the namespace lock
//! - [`data_codec`]: how a data key holds a file's bytes (gzip flag)
//! - `names`: checking a file name, joining paths
//! - [`attr`]: attributes, changes, directory entries and statfs, as the filesystem answers

pub mod attr;
pub mod data_codec;
pub mod dirlog;
pub mod intent;
pub mod keys;
pub(crate) mod names;
pub mod record;
