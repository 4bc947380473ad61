//! Node ids: the numbers the kernel calls inodes by, and the inode each stands for.
//!
//! The kernel keeps one dentry per directory inode. When a lookup finds a directory it
//! already holds under another parent (another mount renamed it), the kernel must move that
//! dentry, which needs locks it only tries to take (the filesystem's rename lock, the old
//! parent's); when a rename holds them the lookup fails with ESTALE, and when the system
//! call's one retry meets the same, ESTALE reaches the caller, which a local filesystem
//! never answers.
//!
//! So a directory found under another parent than the one the kernel holds it in is given a
//! fresh node id (an alias) in the entry reply: to the kernel it is a new inode, there is no
//! dentry to move, and its `st_ino` stays the inode number (the reply's attributes carry it).
//! The old node id keeps working for whoever still holds it (a process whose working
//! directory it is) until the kernel forgets it. Node ids equal inode numbers otherwise;
//! aliases are numbered from [`FIRST_ALIAS`], far above any inode number.

use std::collections::HashMap;
use std::sync::Mutex;

/// The first alias node id: inode numbers are handed out from 2 upwards, 64 at a time, and
/// never come near it.
pub const FIRST_ALIAS: u64 = 1 << 62;

/// Most directories whose place is remembered; past it the places start over (a forgotten
/// place only means a later lookup may not see that a directory moved).
const MAX_PLACES: usize = 1 << 20;

#[derive(Default)]
pub struct NodeIds {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Alias node id -> (inode, lookups the kernel holds on it).
    aliases: HashMap<u64, (u64, u64)>,
    /// Inode -> the alias entry replies give it now (absent: the inode number).
    current: HashMap<u64, u64>,
    /// Directory node id -> (parent node id, name) the kernel was last told it is.
    placed: HashMap<u64, (u64, Vec<u8>)>,
    /// The same, the other way round (a rename of this mount finds what it moved).
    by_place: HashMap<(u64, Vec<u8>), u64>,
    /// The next alias to hand out, counted up from [`FIRST_ALIAS`].
    next_alias: u64,
}

impl NodeIds {
    pub fn new() -> NodeIds {
        NodeIds::default()
    }

    /// The inode a node id of the kernel's stands for.
    pub fn ino(&self, nodeid: u64) -> u64 {
        if nodeid < FIRST_ALIAS {
            return nodeid;
        }
        let inner = self.lock();
        // An alias forgotten already: a number no inode has, so the call finds nothing.
        inner.aliases.get(&nodeid).map_or(nodeid, |a| a.0)
    }

    /// The node id to give the kernel for directory `ino`, about to be told it is `name` in
    /// `parent` (a node id). Counts the lookup the reply gives the kernel on an alias.
    pub fn dir_entry(&self, ino: u64, parent: u64, name: &[u8]) -> u64 {
        let mut inner = self.lock();
        if inner.placed.len() >= MAX_PLACES {
            inner.placed.clear();
            inner.by_place.clear();
        }
        let now = inner.current.get(&ino).copied().unwrap_or(ino);
        let nodeid = match inner.placed.get(&now) {
            // Elsewhere: the kernel would have to move its dentry. Within one parent it
            // moves it without the locks that can fail.
            Some((held_in, _)) if *held_in != parent => inner.new_alias(ino),
            _ => now,
        };
        inner.place(nodeid, parent, name);
        if let Some(alias) = inner.aliases.get_mut(&nodeid) {
            alias.1 += 1;
        }
        nodeid
    }

    /// This mount renamed `name` in `parent` to `new_name` in `new_parent` (node ids): the
    /// kernel moved its dentry itself, so a directory there is now held in the new place (and
    /// with an exchange, the one that was there in the old place).
    pub fn renamed(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        exchange: bool,
    ) {
        let mut inner = self.lock();
        let moved = inner.by_place.get(&(parent, name.to_vec())).copied();
        let swapped = exchange
            .then(|| {
                inner
                    .by_place
                    .get(&(new_parent, new_name.to_vec()))
                    .copied()
            })
            .flatten();
        if let Some(nodeid) = moved {
            inner.place(nodeid, new_parent, new_name);
        }
        if let Some(nodeid) = swapped {
            inner.place(nodeid, parent, name);
        }
    }

    /// The kernel dropped `n` lookups of `nodeid` (all it had, for a node id that is an
    /// inode number: the kernel sends FORGET when it evicts the inode).
    pub fn forget(&self, nodeid: u64, n: u64) {
        let mut inner = self.lock();
        let gone = match inner.aliases.get_mut(&nodeid) {
            Some(alias) => {
                alias.1 = alias.1.saturating_sub(n);
                (alias.1 == 0).then_some(alias.0)
            }
            None => {
                inner.unplace(nodeid);
                return;
            }
        };
        if let Some(ino) = gone {
            inner.aliases.remove(&nodeid);
            inner.unplace(nodeid);
            if inner.current.get(&ino) == Some(&nodeid) {
                inner.current.remove(&ino);
            }
        }
    }

    /// An entry [`Self::dir_entry`] numbered was not sent after all: the kernel holds no
    /// lookup of it.
    pub fn not_given(&self, nodeid: u64) {
        if nodeid >= FIRST_ALIAS {
            self.forget(nodeid, 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Records that the kernel holds directory `nodeid` as `name` in `parent`.
    fn place(&mut self, nodeid: u64, parent: u64, name: &[u8]) {
        self.unplace(nodeid);
        self.placed.insert(nodeid, (parent, name.to_vec()));
        self.by_place.insert((parent, name.to_vec()), nodeid);
    }

    fn unplace(&mut self, nodeid: u64) {
        if let Some(at) = self.placed.remove(&nodeid)
            && self.by_place.get(&at) == Some(&nodeid)
        {
            self.by_place.remove(&at);
        }
    }

    fn new_alias(&mut self, ino: u64) -> u64 {
        let nodeid = FIRST_ALIAS + self.next_alias;
        self.next_alias += 1;
        self.aliases.insert(nodeid, (ino, 0));
        self.current.insert(ino, nodeid);
        nodeid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_found_under_another_parent_gets_an_alias_until_forgotten() {
        let ids = NodeIds::new();
        assert_eq!(ids.dir_entry(10, 1, b"a"), 10);
        // Found again where the kernel holds it, or renamed within its parent: same id.
        assert_eq!(ids.dir_entry(10, 1, b"a"), 10);
        assert_eq!(ids.dir_entry(10, 1, b"b"), 10);
        // Another mount moved it under directory 20.
        let alias = ids.dir_entry(10, 20, b"b");
        assert!(alias >= FIRST_ALIAS);
        assert_eq!(ids.ino(alias), 10);
        assert_eq!(ids.ino(10), 10);
        // Found there again: the same alias, one more lookup.
        assert_eq!(ids.dir_entry(10, 20, b"b"), alias);
        ids.forget(alias, 1);
        assert_eq!(ids.ino(alias), 10, "one lookup still held");
        ids.forget(alias, 1);
        assert_ne!(ids.ino(alias), 10, "forgotten");
        // The kernel still holds node id 10 under parent 1: found under 20, a new alias.
        let again = ids.dir_entry(10, 20, b"b");
        assert!(again >= FIRST_ALIAS && again != alias);
        // Once node id 10 is forgotten too, its place goes with it.
        ids.forget(10, 5);
        ids.forget(again, 1);
        assert_eq!(ids.dir_entry(10, 30, b"c"), 10);
    }

    #[test]
    fn a_rename_by_this_mount_moves_the_place_the_kernel_holds() {
        let ids = NodeIds::new();
        assert_eq!(ids.dir_entry(10, 1, b"a"), 10);
        assert_eq!(ids.dir_entry(11, 2, b"b"), 11);
        ids.renamed(1, b"a", 2, b"b", true);
        assert_eq!(ids.dir_entry(10, 2, b"b"), 10);
        assert_eq!(ids.dir_entry(11, 1, b"a"), 11);
        ids.renamed(2, b"b", 3, b"c", false);
        assert_eq!(ids.dir_entry(10, 3, b"c"), 10);
    }
}
