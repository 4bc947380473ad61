//! The lock list of one inode and POSIX's rules on it, without a store: which entries conflict
//! with a request, and what a lock or an unlock of one owner makes of the list (replacing,
//! splitting and merging that owner's ranges, as the kernel does for a local filesystem).

use serde::{Deserialize, Serialize};

/// The last byte a lock can cover: `OFFSET_MAX`, what the kernel sends for "to the end".
pub const OFFSET_MAX: u64 = i64::MAX as u64;

/// Who holds a lock: a mount and the kernel's lock owner there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub mount: String,
    pub owner: u64,
}

/// One lock in the list (`docs/store-layout.md`, "File locks").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Mount id.
    #[serde(rename = "m")]
    pub mount: String,
    /// The kernel's lock owner on that mount.
    #[serde(rename = "o")]
    pub owner: u64,
    /// The mount's file handle the lock was taken through: the last close of that handle
    /// releases it, and only it (the kernel may give a new open file the owner number of
    /// one whose release is still on its way).
    #[serde(rename = "f", default)]
    pub fh: u64,
    /// Pid of the process that took it (0 for OFD and flock-by-fork cases the kernel gives so).
    #[serde(rename = "p")]
    pub pid: u32,
    /// The holder's host, so that only a holder's own host reports its pid.
    #[serde(rename = "h")]
    pub host: String,
    /// A write (exclusive) lock; else read (shared).
    #[serde(rename = "w")]
    pub write: bool,
    /// First byte.
    #[serde(rename = "s")]
    pub start: u64,
    /// Last byte, included.
    #[serde(rename = "e")]
    pub end: u64,
}

impl Entry {
    pub fn owned_by(&self, who: &Owner) -> bool {
        self.owner == who.owner && self.mount == who.mount
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// What a lock request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub who: Owner,
    pub fh: u64,
    pub pid: u32,
    pub host: String,
    pub write: bool,
    pub start: u64,
    pub end: u64,
}

/// Every lock held on one inode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Table {
    pub entries: Vec<Entry>,
}

impl Table {
    pub fn decode(bytes: &[u8]) -> Result<Table, String> {
        if bytes.is_empty() {
            return Ok(Table::default());
        }
        serde_json::from_slice(bytes).map_err(|e| format!("lock list: {e}"))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializes")
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries standing in the way of `who` taking a lock of kind `write` on
    /// `start..=end`: another owner's, overlapping, one of the two a write lock.
    pub fn conflicts<'a>(
        &'a self,
        who: &'a Owner,
        write: bool,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| !e.owned_by(who) && e.overlaps(start, end) && (write || e.write))
    }

    /// True when `who` holds any lock here.
    pub fn holds(&self, who: &Owner) -> bool {
        self.entries.iter().any(|e| e.owned_by(who))
    }

    /// Drops every entry of the given mounts (gone: their liveness key expired).
    pub fn prune(&mut self, gone: &[String]) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !gone.contains(&e.mount));
        self.entries.len() != before
    }

    /// Cuts `start..=end` out of `who`'s entries (an unlock): an entry covering the range
    /// from inside is split in two. True when anything changed.
    pub fn unlock(&mut self, who: &Owner, start: u64, end: u64) -> bool {
        let mut changed = false;
        let mut out = Vec::with_capacity(self.entries.len() + 1);
        for e in self.entries.drain(..) {
            if !e.owned_by(who) || !e.overlaps(start, end) {
                out.push(e);
                continue;
            }
            changed = true;
            if e.start < start {
                out.push(Entry {
                    end: start - 1,
                    ..e.clone()
                });
            }
            if e.end > end {
                out.push(Entry {
                    start: end + 1,
                    ..e.clone()
                });
            }
        }
        self.entries = out;
        changed
    }

    /// Drops every entry of `who` (taken through handle `fh`, if given). True when anything
    /// changed.
    pub fn remove_owner(&mut self, who: &Owner, fh: Option<u64>) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|e| !(e.owned_by(who) && fh.is_none_or(|fh| e.fh == fh)));
        self.entries.len() != before
    }

    /// Gives `req.who` the lock it asks for, replacing its own locks on the range (upgrade or
    /// downgrade in place) and merging it with its entries of the same kind it overlaps or
    /// touches. The caller checked [`Table::conflicts`] first.
    pub fn lock(&mut self, req: &Request) {
        self.unlock(&req.who, req.start, req.end);
        let (mut start, mut end) = (req.start, req.end);
        let touches = |e: &Entry, start: u64, end: u64| {
            e.start <= end.saturating_add(1) && start <= e.end.saturating_add(1)
        };
        self.entries.retain(|e| {
            if e.owned_by(&req.who) && e.write == req.write && touches(e, start, end) {
                start = start.min(e.start);
                end = end.max(e.end);
                false
            } else {
                true
            }
        });
        self.entries.push(Entry {
            mount: req.who.mount.clone(),
            owner: req.who.owner,
            fh: req.fh,
            pid: req.pid,
            host: req.host.clone(),
            write: req.write,
            start,
            end,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn who(mount: &str, owner: u64) -> Owner {
        Owner {
            mount: mount.to_string(),
            owner,
        }
    }

    fn req(w: &Owner, write: bool, start: u64, end: u64) -> Request {
        Request {
            who: w.clone(),
            fh: 3,
            pid: 7,
            host: "h".into(),
            write,
            start,
            end,
        }
    }

    fn ranges(t: &Table, w: &Owner) -> Vec<(bool, u64, u64)> {
        let mut v: Vec<_> = t
            .entries
            .iter()
            .filter(|e| e.owned_by(w))
            .map(|e| (e.write, e.start, e.end))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn read_locks_share_write_locks_exclude() {
        let (a, b) = (who("m1", 1), who("m2", 1));
        let mut t = Table::default();
        t.lock(&req(&a, false, 0, OFFSET_MAX));
        assert_eq!(t.conflicts(&b, false, 0, 10).count(), 0);
        assert_eq!(t.conflicts(&b, true, 0, 10).count(), 1);
        // The same owner number on another mount is another owner.
        assert_eq!(t.conflicts(&who("m3", 1), true, 5, 5).count(), 1);
        // Its own lock never stands in an owner's way.
        assert_eq!(t.conflicts(&a, true, 0, 10).count(), 0);
    }

    #[test]
    fn disjoint_ranges_do_not_conflict() {
        let (a, b) = (who("m1", 1), who("m1", 2));
        let mut t = Table::default();
        t.lock(&req(&a, true, 0, 99));
        assert_eq!(t.conflicts(&b, true, 100, 199).count(), 0);
        assert_eq!(t.conflicts(&b, true, 99, 100).count(), 1);
    }

    #[test]
    fn unlock_in_the_middle_splits() {
        let a = who("m", 1);
        let mut t = Table::default();
        t.lock(&req(&a, true, 0, 99));
        assert!(t.unlock(&a, 10, 19));
        assert_eq!(ranges(&t, &a), vec![(true, 0, 9), (true, 20, 99)]);
        assert!(!t.unlock(&a, 10, 19));
    }

    #[test]
    fn same_kind_neighbours_merge_other_kinds_replace() {
        let a = who("m", 1);
        let mut t = Table::default();
        t.lock(&req(&a, true, 0, 9));
        t.lock(&req(&a, true, 10, 19));
        assert_eq!(ranges(&t, &a), vec![(true, 0, 19)]);
        // A read lock in the middle downgrades that part only.
        t.lock(&req(&a, false, 5, 14));
        assert_eq!(
            ranges(&t, &a),
            vec![(false, 5, 14), (true, 0, 4), (true, 15, 19)]
        );
        // Upgrading the whole of it merges back into one write lock.
        t.lock(&req(&a, true, 0, 19));
        assert_eq!(ranges(&t, &a), vec![(true, 0, 19)]);
    }

    #[test]
    fn owners_and_gone_mounts_are_removed() {
        let (a, b) = (who("m1", 1), who("m2", 2));
        let mut t = Table::default();
        t.lock(&req(&a, false, 0, 9));
        t.lock(&req(&b, false, 0, 9));
        assert!(t.prune(&["m2".to_string()]));
        assert!(!t.holds(&b));
        // Only the entries taken through the handle given.
        assert!(!t.remove_owner(&a, Some(4)));
        assert!(t.remove_owner(&a, Some(3)));
        assert!(t.is_empty());
    }

    #[test]
    fn encodes_and_decodes() {
        let a = who("abc", u64::MAX);
        let mut t = Table::default();
        t.lock(&req(&a, true, 0, OFFSET_MAX));
        assert_eq!(Table::decode(&t.encode()).unwrap(), t);
        assert_eq!(Table::decode(b"").unwrap(), Table::default());
        assert_eq!(Table::decode(b"[]").unwrap(), Table::default());
        assert!(Table::decode(b"{").is_err());
    }

    /// A model of one owner's locks: the kind of lock held on each byte of a small file.
    type Model = Vec<Option<bool>>;

    fn model_of(t: &Table, w: &Owner, len: u64) -> Model {
        (0..len)
            .map(|b| {
                let held: Vec<bool> = t
                    .entries
                    .iter()
                    .filter(|e| e.owned_by(w) && e.start <= b && b <= e.end)
                    .map(|e| e.write)
                    .collect();
                assert!(held.len() <= 1, "byte {b} held twice: {t:?}");
                held.first().copied()
            })
            .collect()
    }

    proptest! {
        /// Any sequence of locks and unlocks by two owners: each owner's entries hold exactly
        /// the bytes and kinds a byte-by-byte model says, never overlap, same-kind
        /// neighbours are merged, and the two owners never hold conflicting locks (each lock
        /// is taken only when `conflicts` is empty).
        #[test]
        fn ranges_follow_a_byte_model(ops in prop::collection::vec(
            (0..2usize, 0..3u8, 0..40u64, 0..40u64), 1..60)
        ) {
            const LEN: u64 = 48;
            let owners = [who("m1", 1), who("m2", 1)];
            let mut t = Table::default();
            let mut models: [Model; 2] = [vec![None; LEN as usize], vec![None; LEN as usize]];
            for (o, op, a, b) in ops {
                let (start, end) = (a.min(b), a.max(b));
                let w = &owners[o];
                match op {
                    0 => {
                        t.unlock(w, start, end);
                        for byte in start..=end { models[o][byte as usize] = None; }
                    }
                    _ => {
                        let write = op == 2;
                        if t.conflicts(w, write, start, end).next().is_none() {
                            t.lock(&req(w, write, start, end));
                            for byte in start..=end { models[o][byte as usize] = Some(write); }
                        }
                    }
                }
                for (i, w) in owners.iter().enumerate() {
                    prop_assert_eq!(&model_of(&t, w, LEN), &models[i]);
                    let mut mine: Vec<_> = t.entries.iter().filter(|e| e.owned_by(w)).collect();
                    mine.sort_by_key(|e| e.start);
                    for pair in mine.windows(2) {
                        let touching = pair[0].end + 1 >= pair[1].start;
                        prop_assert!(!(touching && pair[0].write == pair[1].write), "unmerged {:?}", t);
                    }
                }
                for byte in 0..LEN as usize {
                    let (x, y) = (models[0][byte], models[1][byte]);
                    prop_assert!(!(x.is_some() && y.is_some() && (x == Some(true) || y == Some(true))));
                }
            }
        }
    }
}
