//! The lock list of an inode in the store, `PREFIX%L<ino>`: taking, testing and releasing
//! locks with `add` or `gets` + `cas` (docs/store-layout.md, "File locks").

use std::collections::HashSet;
use std::time::{Duration, Instant};

use memfis_memcache::{Command, Item, Store, StoreOp};
use tracing::{error, warn};

use super::table::{Entry, Owner, Request, Table};
use super::{EMPTY_LIST_SECS, FileLocks};
use crate::store::batch::{Batch, StoreAt, Stored};
use crate::sync::lock;
use crate::tree::CAS_RETRIES;
use crate::{FsError, FsResult};

/// How long a mount seen alive counts as alive without reading its liveness key again.
const ALIVE_TRUST: Duration = Duration::from_secs(1);

/// A lock asked for through the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    /// The kernel's lock owner (a process's file table, or an open file).
    pub owner: u64,
    /// The file handle the request came through.
    pub fh: u64,
    /// Pid of the locking process, for `F_GETLK` on its host (0 when the kernel gives none).
    pub pid: u32,
    pub write: bool,
    pub start: u64,
    /// Last byte, included.
    pub end: u64,
}

/// A lock in the way, as `F_GETLK` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub write: bool,
    pub start: u64,
    pub end: u64,
    /// The holder's pid where it runs on this host, else 0.
    pub pid: u32,
}

impl<S: Store> FileLocks<S> {
    fn owner(&self, owner: u64) -> Owner {
        Owner {
            mount: self.tree.mount_id.clone(),
            owner,
        }
    }

    fn decode_list(&self, key: &[u8], item: &Item) -> FsResult<Table> {
        Table::decode(&item.value).map_err(|why| FsError::corrupt(key, why))
    }

    /// Tries once to take a lock. `Ok(Ok(changed))` when granted: `after_grant` is given the
    /// file's record as read after the grant (under this inode's stripe, so grants apply
    /// their records in order) and says whether the file changed. `Ok(Err(holder))` when a
    /// live owner's lock is in the way.
    pub(crate) fn try_lock(
        &self,
        ino: u64,
        req: &LockRequest,
        after_grant: &dyn Fn(FsResult<Option<Item>>) -> bool,
    ) -> FsResult<Result<bool, Holder>> {
        let key = self.tree.keys.lock_table(ino);
        let ikey = self.tree.keys.inode(ino);
        let want = self.request(req);
        let who = want.who.clone();
        // Releases of this owner that failed earlier are done with this write.
        let redo_release: Vec<Option<u64>> = lock(&self.failed_releases)
            .iter()
            .filter(|f| f.0 == ino && f.1 == req.owner)
            .map(|f| f.2)
            .collect();
        let in_order = self.tree.store.in_order();
        let _serial = self.stripe(ino);
        // `None`: no list known, so try to `add` one. The list last seen may be stale: it
        // is written on (a stale one fails the `cas`) but never trusted to refuse.
        let mut current: Option<Item> = self.seen(ino);
        let mut fresh = current.is_none();
        for _ in 0..CAS_RETRIES {
            let write = match &current {
                None => {
                    let mut fresh = Table::default();
                    fresh.lock(&want);
                    Command::store(StoreOp::Add, &key, &fresh.encode())
                }
                Some(item) => {
                    let mut list = self.decode_list(&key, item)?;
                    for fh in &redo_release {
                        list.remove_owner(&who, *fh);
                    }
                    let blocking: Vec<Entry> = list
                        .conflicts(&who, req.write, req.start, req.end)
                        .cloned()
                        .collect();
                    if !blocking.is_empty() && !fresh {
                        current = self.tree.store.gets_at(&key)?;
                        fresh = true;
                        continue;
                    }
                    if !blocking.is_empty() {
                        let gone = self.gone_mounts(&blocking)?;
                        if let Some(e) = blocking.iter().find(|e| !gone.contains(&e.mount)) {
                            return Ok(Err(self.holder(e)));
                        }
                        list.prune(&gone);
                    }
                    list.lock(&want);
                    Command::cas(&key, &list.encode(), item.cas.unwrap_or(0))
                }
            };
            // The list again after the write: on a refusal it is what to work from.
            let mut batch = Batch::new();
            let stored = batch.push::<Stored>(write);
            let after = batch.gets(&key);
            let record = in_order.then(|| batch.gets(&ikey));
            let mut r = batch.execute(&self.tree.store);
            let stored = r.take(stored);
            let after = r.take(after);
            // A list this mount may be behind on is not kept: `change_own` trusts the one
            // it remembers to hold every entry of this mount's.
            self.remember(ino, after.as_ref().ok().cloned().flatten());
            if stored.is_err() {
                self.note_maybe_granted(ino, req);
            }
            if stored? {
                self.note_granted(ino, req, !redo_release.is_empty());
                let record = match record {
                    Some(record) => r.take(record),
                    None => self.tree.store.gets_at(&ikey),
                };
                return Ok(Ok(after_grant(record)));
            }
            current = after?;
            fresh = true;
        }
        Err(FsError::Contended)
    }

    /// The entry `req` adds to a lock list.
    fn request(&self, req: &LockRequest) -> Request {
        Request {
            who: self.owner(req.owner),
            fh: req.fh,
            pid: req.pid,
            host: self.host.clone(),
            write: req.write,
            start: req.start,
            end: req.end,
        }
    }

    /// What this mount remembers of a lock granted: which owners hold locks on `ino` and
    /// through which handle (released with them), and that the failed releases it redid
    /// are done.
    fn note_granted(&self, ino: u64, req: &LockRequest, redid_releases: bool) {
        lock(&self.held).entry(ino).or_default().insert(req.owner);
        lock(&self.by_handle)
            .entry(req.fh)
            .or_default()
            .insert(req.owner);
        if redid_releases {
            lock(&self.failed_releases).retain(|f| !(f.0 == ino && f.1 == req.owner));
        }
    }

    /// A lock write whose reply was lost may have run: the owner may hold the lock in the
    /// store. Noted as held, so the owner's close or exit releases it (the caller gets the
    /// error and does not count on the lock).
    fn note_maybe_granted(&self, ino: u64, req: &LockRequest) {
        self.note_granted(ino, req, false);
    }

    /// `F_GETLK`: the first live lock of another owner in the way of `req`, if any.
    pub(crate) fn test_lock(&self, ino: u64, req: &LockRequest) -> FsResult<Option<Holder>> {
        let key = self.tree.keys.lock_table(ino);
        // Under the stripe, as every read the list is remembered from: an older list
        // remembered over a newer one this mount wrote would miss this mount's entry.
        let found = {
            let _serial = self.stripe(ino);
            let found = self.tree.store.gets_at(&key)?;
            self.remember(ino, found.clone());
            found
        };
        let Some(item) = found else {
            return Ok(None);
        };
        let list = self.decode_list(&key, &item)?;
        let who = self.owner(req.owner);
        let blocking: Vec<Entry> = list
            .conflicts(&who, req.write, req.start, req.end)
            .cloned()
            .collect();
        if blocking.is_empty() {
            return Ok(None);
        }
        let gone = self.gone_mounts(&blocking)?;
        Ok(blocking
            .iter()
            .find(|e| !gone.contains(&e.mount))
            .map(|e| self.holder(e)))
    }

    /// `F_UNLCK` of a range: cuts the range out of the owner's locks.
    pub(crate) fn unlock(&self, ino: u64, owner: u64, start: u64, end: u64) -> FsResult<()> {
        if !self.may_hold(ino, owner) {
            return Ok(());
        }
        let who = self.owner(owner);
        self.change_own(ino, &who, |list| list.unlock(&who, start, end))
    }

    /// Releases every lock `owner` holds on `ino` (a close: the kernel's FLUSH for POSIX
    /// locks). Costs nothing unless this mount knows the owner locked the file. A failure
    /// is kept for the heartbeat to retry (the lock must not stay held by a live mount).
    pub(crate) fn release_locks(&self, ino: u64, owner: u64) -> FsResult<()> {
        self.release_owner(ino, owner, None)
    }

    /// Releases `owner`'s locks on `ino`, only those taken through handle `fh` if given.
    fn release_owner(&self, ino: u64, owner: u64, fh: Option<u64>) -> FsResult<()> {
        if !self.may_hold(ino, owner) {
            return Ok(());
        }
        let who = self.owner(owner);
        let result = self.change_own(ino, &who, |list| list.remove_owner(&who, fh));
        if result.is_err() {
            lock(&self.failed_releases).insert((ino, owner, fh));
        }
        result
    }

    /// The last close of handle `fh` (the kernel's RELEASE): releases the locks of every
    /// owner that locked through it (its flock and OFD locks; POSIX locks of processes went
    /// with their FLUSH already), and `flock_owner`'s.
    pub(crate) fn release_handle_locks(
        &self,
        fh: u64,
        ino: u64,
        flock_owner: Option<u64>,
    ) -> FsResult<()> {
        let mut owners = lock(&self.by_handle).remove(&fh).unwrap_or_default();
        owners.extend(flock_owner);
        let mut result = Ok(());
        for owner in owners {
            if let Err(e) = self.release_owner(ino, owner, Some(fh)) {
                result = Err(e);
            }
        }
        result
    }

    /// Retries releases that failed (heartbeat). Errors are logged, the releases kept.
    pub(crate) fn retry_lock_releases(&self) {
        let failed: Vec<_> = lock(&self.failed_releases).drain().collect();
        for (ino, owner, fh) in failed {
            if let Err(e) = self.release_owner(ino, owner, fh) {
                crate::limited_warn!(
                    format!("cannot release a file lock: {}", e),
                    "cannot release the locks of owner {owner:x} on inode {ino} (retried): {e}"
                );
            }
        }
    }

    /// Called by the heartbeat with whether this mount's liveness key was still there. A
    /// lapse means other mounts may have been given locks this mount's processes hold.
    pub(crate) fn note_liveness(&self, was_alive: bool) {
        let first = !self.beat.swap(true, std::sync::atomic::Ordering::Relaxed);
        if was_alive || first {
            return;
        }
        let held: usize = lock(&self.held).values().map(HashSet::len).sum();
        if held > 0 {
            error!(
                mount = %self.tree.mount_id,
                "this mount's liveness key expired (no heartbeat reached the store for 10 s): \
                 other mounts may have taken file locks that {held} owner(s) here still believe \
                 they hold"
            );
        }
    }

    /// Whether `owner` of this mount may hold locks on `ino`.
    fn may_hold(&self, ino: u64, owner: u64) -> bool {
        lock(&self.held)
            .get(&ino)
            .is_some_and(|o| o.contains(&owner))
            || lock(&self.failed_releases)
                .iter()
                .any(|f| f.0 == ino && f.1 == owner)
    }

    /// Changes this mount's own entries with `change` (false: nothing to change) by gets +
    /// cas; an emptied list is stored to expire. Wakes this mount's waiters.
    fn change_own(
        &self,
        ino: u64,
        who: &Owner,
        mut change: impl FnMut(&mut Table) -> bool,
    ) -> FsResult<()> {
        let key = self.tree.keys.lock_table(ino);
        let _serial = self.stripe(ino);
        // The list last seen holds every entry of this mount's (only this mount adds them,
        // under the stripe): if it says there is nothing to change, there is nothing.
        let mut item = match self.seen(ino) {
            Some(item) => Some(item),
            None => self.tree.store.gets_at(&key)?,
        };
        for _ in 0..CAS_RETRIES {
            let Some(it) = item else {
                self.forget_owner(ino, who.owner);
                return Ok(());
            };
            let mut list = self.decode_list(&key, &it)?;
            if !change(&mut list) {
                if !list.holds(who) {
                    self.forget_owner(ino, who.owner);
                }
                return Ok(());
            }
            let exptime = if list.is_empty() { EMPTY_LIST_SECS } else { 0 };
            let cas = Command::cas_expiring(&key, &list.encode(), it.cas.unwrap_or(0), exptime);
            let mut batch = Batch::new();
            let stored = batch.push::<Stored>(cas);
            let after = batch.gets(&key);
            let mut r = batch.execute(&self.tree.store);
            let stored = r.take(stored);
            let after = r.take(after);
            self.remember(ino, after.as_ref().ok().cloned().flatten());
            let (stored, after) = (stored?, after?);
            if stored {
                if !list.holds(who) {
                    self.forget_owner(ino, who.owner);
                }
                self.wake_waiters();
                return Ok(());
            }
            item = after;
        }
        Err(FsError::Contended)
    }

    fn forget_owner(&self, ino: u64, owner: u64) {
        let mut held = lock(&self.held);
        if let Some(owners) = held.get_mut(&ino) {
            owners.remove(&owner);
            if owners.is_empty() {
                held.remove(&ino);
            }
        }
    }

    fn holder(&self, e: &Entry) -> Holder {
        Holder {
            write: e.write,
            start: e.start,
            end: e.end,
            pid: if e.host == self.host { e.pid } else { 0 },
        }
    }

    /// The mounts of `entries` whose liveness key is gone. This mount is alive; a mount seen
    /// alive within [`ALIVE_TRUST`] counts as alive (treating a gone mount as alive a moment
    /// longer only delays).
    fn gone_mounts(&self, entries: &[Entry]) -> FsResult<Vec<String>> {
        let now = Instant::now();
        let unknown: Vec<String> = {
            let seen = lock(&self.alive_seen);
            let mut unknown: Vec<String> = entries
                .iter()
                .map(|e| e.mount.clone())
                .filter(|m| *m != self.tree.mount_id)
                .filter(|m| {
                    seen.get(m)
                        .is_none_or(|t| now.duration_since(*t) > ALIVE_TRUST)
                })
                .collect();
            unknown.sort();
            unknown.dedup();
            unknown
        };
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        let alive: Vec<_> = unknown
            .iter()
            .map(|m| batch.get(self.tree.keys.alive(m)))
            .collect();
        let mut r = batch.execute(&self.tree.store);
        let mut gone = Vec::new();
        let mut seen = lock(&self.alive_seen);
        if seen.len() > 4096 {
            seen.retain(|_, t| now.duration_since(*t) <= ALIVE_TRUST);
        }
        for (mount, alive) in unknown.into_iter().zip(alive) {
            if r.take(alive)?.is_some() {
                seen.insert(mount, now);
            } else {
                warn!(
                    mount = %mount,
                    "file locks of a mount whose liveness expired are dropped"
                );
                gone.push(mount);
            }
        }
        Ok(gone)
    }

    pub(super) fn wake_waiters(&self) {
        *lock(&self.released) += 1;
        self.release_signal.notify_all();
    }
}

impl<S: Store> FileLocks<S> {
    /// How many releases this mount made so far.
    pub(super) fn releases(&self) -> u64 {
        *lock(&self.released)
    }

    /// Waits until this mount releases a lock after `seen` releases, or `pause` passes.
    pub(super) fn wait_release(&self, seen: u64, pause: Duration) {
        let guard = lock(&self.released);
        if *guard != seen {
            return;
        }
        let _ = self
            .release_signal
            .wait_timeout_while(guard, pause, |n| *n == seen);
    }
}
