//! File bytes: open files, reading, writing and publishing them to their data keys.
//!
//! - `setattr`: `setattr` (through an open file's buffer), the largest file
//! - [`bulk`]: creating many files of one directory with their bytes in few batches (`memfis
//!   load`): the names claimed together (`namespace::claim`), then their bytes published
//! - [`io`]: open, read, write, flush, release; publishing an open file (rounds of a plan,
//!   its batch, its replies)
//! - `open_files`: what a mount holds of an open file (a state machine over its bytes and
//!   the record version they belong to)
//! - `publish_plan`: the keys and record one publish round writes, worked out without a store
//! - `chunked`: files larger than one item, in chunks (`chunk_buffer`: what an open one holds)
//! - `lock_grant`: an open file adopting what another mount published before a lock granted
//! - [`xattr`]: `user.*` extended attributes

pub mod bulk;
pub(crate) mod chunk_buffer;
pub(crate) mod chunked;
pub mod io;
pub(crate) mod lock_grant;
pub(crate) mod open_files;
pub(crate) mod publish_plan;
pub(crate) mod setattr;
pub mod xattr;

use std::sync::Arc;

use memfis_memcache::Store;

use crate::maintenance::Maintenance;
use crate::namespace::Namespace;
use crate::tree::Tree;
use open_files::OpenFiles;

/// The files component: this mount's open files and handles, their bytes, and publishing
/// them. Reaches names through the namespace component.
pub(crate) struct Files<S: Store> {
    pub(crate) tree: Arc<Tree<S>>,
    pub(crate) maintenance: Arc<Maintenance<S>>,
    pub(crate) names: Arc<Namespace<S>>,
    /// Open files and handles of this mount (the namespace keeps them in step with names).
    pub(crate) open_files: Arc<OpenFiles>,
}

impl<S: Store> Files<S> {
    pub(crate) fn new(
        tree: Arc<Tree<S>>,
        maintenance: Arc<Maintenance<S>>,
        names: Arc<Namespace<S>>,
        open_files: Arc<OpenFiles>,
    ) -> Files<S> {
        Files {
            tree,
            maintenance,
            names,
            open_files,
        }
    }
}
