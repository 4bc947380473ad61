//! The plain values the filesystem hands out and takes in: attributes, attribute changes,
//! directory entries, filesystem statistics.

use crate::layout::record::{Inode, Kind, Time};

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

impl SetAttr {
    /// A setattr over the stored record `rec`: the set-ID bits a chown or a truncate drops
    /// (see [`Self::setid_cleared`]), the fields named, ctime now.
    pub(crate) fn apply_to(&self, rec: &mut Inode) {
        if let Some(m) = self.setid_cleared(rec) {
            rec.mode = m;
        }
        self.write_fields(rec);
        rec.ctime = Time::now();
    }

    /// Writes the fields named into `rec`, the one place a setattr's fields reach a record
    /// (through [`Self::apply_to`], or buffered in an open file until its publish): a mode
    /// keeps its permission bits only; a size sets mtime to now, which an mtime named wins
    /// over.
    pub(crate) fn write_fields(&self, rec: &mut Inode) {
        if let Some(m) = self.mode {
            rec.mode = m & 0o7777;
        }
        if let Some(u) = self.uid {
            rec.uid = u;
        }
        if let Some(g) = self.gid {
            rec.gid = g;
        }
        if let Some(s) = self.size {
            rec.size = s;
            rec.mtime = Time::now();
        }
        if let Some(t) = self.atime {
            rec.atime = t;
        }
        if let Some(t) = self.mtime {
            rec.mtime = t;
        }
    }

    /// chown of a non-directory drops the set-user-ID bit, and set-group-ID with group
    /// execute (chown(2) on Linux, for root too); so does truncating a file for a caller that
    /// may not keep them (`kill_suidgid`). `Some(new mode)` when `self` is such a change of
    /// `rec`.
    pub(crate) fn setid_cleared(&self, rec: &Inode) -> Option<u32> {
        let chown =
            self.uid.is_some_and(|u| u != rec.uid) || self.gid.is_some_and(|g| g != rec.gid);
        let truncate = self.size.is_some() && self.kill_suidgid;
        if !(chown || truncate) || self.mode.is_some() || rec.kind == Kind::Dir {
            return None;
        }
        let mut drop = libc::S_ISUID;
        if rec.mode & libc::S_IXGRP != 0 {
            drop |= libc::S_ISGID;
        }
        (rec.mode & drop != 0).then_some(rec.mode & !drop)
    }
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
