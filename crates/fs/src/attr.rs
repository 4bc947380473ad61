//! The plain values the filesystem hands out and takes in: attributes, attribute changes,
//! directory entries, filesystem statistics.

use crate::record::{Kind, Time};

/// Attributes as `stat` shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    /// Device number of a device node (0 otherwise).
    pub rdev: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// Changes asked for by `setattr`; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    /// The caller may not keep set-ID bits (it lacks CAP_FSETID): a size change drops them,
    /// as a write by such a caller does.
    pub kill_suidgid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
}
