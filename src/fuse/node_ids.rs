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
//! directory it is) until the kernel forgets it; such a process's `getcwd` names the old path
//! (or fails once the kernel drops the old entry), as over NFS. Node ids equal inode numbers otherwise;
//! aliases are numbered from [`FIRST_ALIAS`], far above any inode number.
//!
//! The table holds the directories the kernel holds, counted as the kernel counts them
//! (one lookup per entry reply: lookup, mkdir, readdirplus; FORGET gives them back), so it
//! is as large as the kernel's cache of directories and no larger.

use std::collections::HashMap;
use std::sync::Mutex;

/// The first alias node id: inode numbers are handed out from 2 upwards, 64 at a time, and
/// never come near it.
pub const FIRST_ALIAS: u64 = 1 << 62;

#[derive(Default)]
pub struct NodeIds {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Directory node id -> what the kernel holds of it.
    held: HashMap<u64, Held>,
    /// (parent node id, name) -> the directory node id the kernel holds there.
    by_place: HashMap<(u64, Vec<u8>), u64>,
    /// Inode -> the alias entry replies give it now (absent: the inode number).
    current: HashMap<u64, u64>,
    /// Aliases handed out so far (the next is [`FIRST_ALIAS`] plus this).
    aliases_made: u64,
}

/// A directory node id the kernel holds.
struct Held {
    ino: u64,
    /// Lookups the kernel holds on it.
    lookups: u64,
    /// (parent node id, name) the kernel was last told it is.
    place: (u64, Vec<u8>),
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
        // An alias forgotten already: a number no inode has, so the call finds nothing.
        self.lock().held.get(&nodeid).map_or(nodeid, |h| h.ino)
    }

    /// The node id to give the kernel for directory `ino`, about to be told it is `name` in
    /// `parent` (a node id), counted as a lookup the kernel holds.
    pub fn dir_entry(&self, ino: u64, parent: u64, name: &[u8]) -> u64 {
        let nodeid = self.choose(ino, parent, name);
        self.given(nodeid, ino, parent, name);
        nodeid
    }

    /// The node id [`Self::dir_entry`] would give, without counting it: for a reply that may
    /// not carry the entry after all (a full readdirplus buffer). [`Self::given`] counts it.
    pub fn choose(&self, ino: u64, parent: u64, name: &[u8]) -> u64 {
        let mut inner = self.lock();
        let place = (parent, name.to_vec());
        if let Some(&there) = inner.by_place.get(&place)
            && inner.held.get(&there).is_some_and(|h| h.ino == ino)
        {
            return there; // the kernel holds it right there
        }
        let now = inner.current.get(&ino).copied().unwrap_or(ino);
        match inner.held.get(&now) {
            // Elsewhere: the kernel would have to move its dentry. Within one parent it
            // moves it without the locks that can fail.
            Some(h) if h.place.0 != parent => {
                let alias = FIRST_ALIAS + inner.aliases_made;
                inner.aliases_made += 1;
                alias
            }
            _ => now,
        }
    }

    /// The kernel was given `nodeid` for directory `ino` as `name` in `parent`: one lookup
    /// more on it, held there.
    pub fn given(&self, nodeid: u64, ino: u64, parent: u64, name: &[u8]) {
        let mut inner = self.lock();
        let held = inner.held.entry(nodeid).or_insert(Held {
            ino,
            lookups: 0,
            place: (parent, name.to_vec()),
        });
        held.lookups += 1;
        inner.place(nodeid, parent, name);
        if nodeid == ino {
            inner.current.remove(&ino);
        } else {
            inner.current.insert(ino, nodeid);
        }
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

    /// The kernel gave back `n` lookups of `nodeid` (FORGET).
    pub fn forget(&self, nodeid: u64, n: u64) {
        let mut inner = self.lock();
        let Some(held) = inner.held.get_mut(&nodeid) else {
            return; // not a directory
        };
        held.lookups = held.lookups.saturating_sub(n);
        if held.lookups > 0 {
            return;
        }
        let ino = held.ino;
        inner.unplace(nodeid);
        inner.held.remove(&nodeid);
        if inner.current.get(&ino) == Some(&nodeid) {
            inner.current.remove(&ino);
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
        let place = (parent, name.to_vec());
        if let Some(held) = self.held.get_mut(&nodeid) {
            held.place = place.clone();
        }
        self.by_place.insert(place, nodeid);
    }

    /// Forgets where `nodeid` is held (the place may already name another node id).
    fn unplace(&mut self, nodeid: u64) {
        if let Some(held) = self.held.get(&nodeid)
            && self.by_place.get(&held.place) == Some(&nodeid)
        {
            self.by_place.remove(&held.place);
        }
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
        // Moved back where the kernel still holds node id 10: that one again.
        assert_eq!(ids.dir_entry(10, 1, b"b"), 10);
        assert_eq!(ids.dir_entry(10, 20, b"b"), alias);
        ids.forget(alias, 2);
        assert_eq!(ids.ino(alias), 10, "one lookup still held");
        ids.forget(alias, 1);
        assert_ne!(ids.ino(alias), 10, "forgotten");
        // The kernel still holds node id 10 under parent 1: found under 20, a new alias.
        let again = ids.dir_entry(10, 20, b"b");
        assert!(again >= FIRST_ALIAS && again != alias);
        // Node id 10 is still held under parent 1 (one of its four lookups).
        ids.forget(10, 3);
        ids.forget(again, 1);
        let third = ids.dir_entry(10, 30, b"c");
        assert!(third >= FIRST_ALIAS);
        // Nothing held any more: the inode number again.
        ids.forget(10, 1);
        ids.forget(third, 1);
        assert_eq!(ids.dir_entry(10, 40, b"d"), 10);
    }

    #[test]
    fn a_forget_racing_a_new_lookup_keeps_the_place() {
        let ids = NodeIds::new();
        assert_eq!(ids.dir_entry(10, 1, b"a"), 10);
        // The kernel evicts node id 10 (FORGET of its one lookup) while another thread
        // answers a lookup with it again: the place stays for the new lookup.
        assert_eq!(ids.dir_entry(10, 1, b"a"), 10);
        ids.forget(10, 1);
        assert!(ids.dir_entry(10, 2, b"a") >= FIRST_ALIAS);
    }

    #[test]
    fn an_entry_not_sent_is_not_counted() {
        let ids = NodeIds::new();
        assert_eq!(ids.dir_entry(10, 1, b"a"), 10);
        let alias = ids.choose(10, 2, b"a");
        assert!(alias >= FIRST_ALIAS);
        // Not given: the kernel still holds only node id 10, under parent 1.
        assert_eq!(ids.ino(alias), alias);
        assert_eq!(ids.dir_entry(10, 1, b"a"), 10);
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
