//! Names: entries, directory logs, the namespace lock, and the operations that change them.
//!
//! - `records`: inode records and entries as every operation reads and changes them, paths,
//!   `lookup`
//! - `attrs`: `getattr`, the attributes records and open files make
//! - [`nodes`]: create, mkdir, symlink, mknod, link, unlink, rmdir
//! - `claim`: the one create path (one batch claiming new names, its fence settled)
//! - `chmod`: which key holds a file's bytes (served or private), a chmod moving them under
//!   the lock with an intent
//! - `file_bytes`: where a file's bytes are (the keys its names make) and loading an open
//!   file's bytes, fenced against operations of any mount that move them
//! - [`rename`]: rename, RENAME_EXCHANGE, moving every data key under a renamed directory
//! - [`listing`]: appending to and replaying directory logs, readdir
//! - `compact`: rewriting a directory's log as its live names (heartbeat, repair)
//! - [`lock`]: the namespace lock, other mounts' liveness, taking over from a gone mount
//! - `roll_forward`: completing the intent a gone mount left in the lock
//! - `unreached_keys`: deleting keys that hold no name's bytes any more
//! - `unsettled`: creates a store error left unfinished, finished by the heartbeat
//! - `meta_cache`: what a mount remembers of directories between operations

pub(crate) mod attrs;
pub(crate) mod chmod;
pub(crate) mod claim;
pub(crate) mod compact;
pub(crate) mod file_bytes;
pub mod listing;
pub mod lock;
pub(crate) mod meta_cache;
pub mod nodes;
pub(crate) mod records;
pub mod rename;
pub(crate) mod roll_forward;
pub(crate) mod unreached_keys;
pub(crate) mod unsettled;
