//! The namespace lock and mount liveness: how operations that remove or move names (unlink,
//! rmdir, link, rename) stay atomic against other mounts and crashes (docs/store-layout.md,
//! "Protocol").
//!
//! memcached is atomic per key only, so one key, `PREFIX%lock`, is taken with `add` by the one
//! such operation that runs at a time, store-wide. Its value names the owner and, once the
//! operation has read what it will change, its [`Intent`]: every step still to do, written so
//! that any mount can finish it from any point. Each mount keeps `PREFIX%alive.<id>` alive with
//! a short expiry (memcached's own clock, so clocks of web servers never matter; refreshed by
//! `crate::maintenance`). A lock whose
//! owner's liveness key is gone belongs to a dead or stalled mount: the next mount that wants
//! the lock takes it over with `cas` and completes the intent (roll forward).
//!
//! Creates and publishes do not take the lock (they cost one round trip each); they read the
//! lock key in the same batch and, if an operation was running, redo their last step after it.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memfis_memcache::{Command, Reply, Store, StoreOp};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::layout::intent::Intent;
use crate::layout::record::random_id;
use crate::namespace::Namespace;
use crate::store::batch::{Batch, Handle, Replies, StoreAt, Stored};
use crate::sync::lock;
use crate::{FsError, FsResult};

/// Seconds a mount's liveness key lives without a refresh: how long a crashed mount's
/// unfinished operation blocks the others before they complete it.
pub const ALIVE_SECS: u32 = 10;
/// How long an operation waits for the lock held by a live mount before giving up (EBUSY).
const LOCK_WAIT: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_millis(10);

/// The value of `PREFIX%lock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LockValue {
    /// `<mount id>/<nonce>`: the mount whose liveness counts, and this one acquisition.
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
}

impl LockValue {
    fn mount(&self) -> &str {
        self.owner.split('/').next().unwrap_or("")
    }
}

/// The namespace lock held by this thread; [`Namespace::with_ns_lock`] releases it.
pub(crate) struct NsLock<'a> {
    _local: MutexGuard<'a, ()>,
    /// Told when this thread holds the lock and when it no longer does.
    lease: &'a crate::store::lock_lease::LockLease,
    pub owner: String,
    /// The lock key was deleted by the operation's last batch already.
    pub released: bool,
    /// An intent was stored: if the operation fails midway, it must be completed.
    pub intent: Option<Intent>,
}

impl Drop for NsLock<'_> {
    fn drop(&mut self) {
        self.lease.given_up();
    }
}

/// This mount's side of the namespace lock.
#[derive(Default)]
pub(crate) struct LocalNsLock {
    /// Namespace operations of this mount run one at a time (they would queue on the store's
    /// lock anyway).
    pub(crate) serial: Mutex<()>,
    /// Held by the one thread of this mount that takes a held lock over and completes its
    /// intent (a dead mount's, or this mount's leftover). Waiters for the lock (creates,
    /// publishes, reads) do not hold `serial`: without this, a second thread would find the
    /// first one's new owner among the leftovers and take the lock over again midway. Only
    /// ever `try_lock`ed. Its holder may lock open files (`keep_bytes_for_open_handles`):
    /// nothing may wait for the namespace lock while holding an open file's mutex.
    pub(crate) taking_over: Mutex<()>,
    /// Owner strings under which this mount may still hold the namespace lock: an operation
    /// that failed midway and left its intent in it, or a lock command whose reply was lost
    /// (an `add` that took it, a `delete` that may not have run). The next operation or the
    /// heartbeat completes and releases such a lock instead of waiting for it: this mount is
    /// alive, so no other mount would ever take it over. Several, as a lost `add` can follow
    /// a lost `delete`.
    pub(crate) leftover: Mutex<Vec<String>>,
    /// The intent of an operation of this mount that failed midway (the lock may not hold
    /// it): completed with the leftover lock, or by the heartbeat.
    pub(crate) orphaned: Mutex<Option<Intent>>,
    /// Operations of gone mounts this mount completed (roll forward), as (owner, intent):
    /// repair reports them as changes it made.
    pub(crate) rolled_forward: Mutex<Vec<(String, String)>>,
}

impl<S: Store> Namespace<S> {
    /// Runs `op` holding the namespace lock. `reads` go in the same batch as the `add` that
    /// takes it (so an uncontended operation pays no extra round trip); `op` gets their results.
    /// If `op` fails after storing an intent, the intent is completed before returning.
    pub(crate) fn with_ns_lock<T>(
        &self,
        reads: Batch,
        op: impl FnOnce(&mut NsLock<'_>, Replies) -> FsResult<T>,
    ) -> FsResult<T> {
        let (mut guard, results) = self.acquire(reads)?;
        let _holding = HoldingNsLock::mark();
        let result = op(&mut guard, results);
        if guard.released {
            return result;
        }
        if result.is_err() && self.tree.store.lease.refuses() {
            // This mount stalled past its liveness: another mount may have completed the
            // intent and gone on since, so this copy of it must not run again. If the lock
            // still names this mount, the heartbeat completes the intent stored there.
            error!(intent = ?guard.intent, "this mount stalled past its liveness while holding the namespace lock; the operation failed, and is left to whoever holds the lock");
            lock(&self.ns.leftover).push(guard.owner.clone());
            return result;
        }
        if result.is_err()
            && let Some(mine) = guard.intent.clone()
        {
            // The intent as the lock holds it, if it does: the operation may have noted
            // progress there that its own copy lacks (an exchange whose bytes were swapped
            // already must not swap them back).
            let intent = match self.intent_in_lock(&guard.owner) {
                Some(stored) => {
                    guard.intent = Some(stored.clone());
                    stored
                }
                None => mine,
            };
            crate::limited_warn!(
                "operation failed midway",
                "operation failed midway; completing it: {intent:?}"
            );
            if let Err(e) = self
                .store_intent(&mut guard)
                .and_then(|()| self.complete_unless_damaged(&intent))
            {
                if e.is_damage() {
                    // No retry mends it: kept, the lock would stop every namespace operation
                    // of every mount for good.
                    error!(error = %e, ?intent, "cannot complete the operation: the store is damaged there; releasing the namespace lock so that other operations go on (run `memfis check --repair`)");
                    let mut orphaned = lock(&self.ns.orphaned);
                    if orphaned.as_ref() == Some(&intent) {
                        *orphaned = None; // (the heartbeat was completing it)
                    }
                    drop(orphaned);
                    self.release_ns_lock(&guard.owner);
                    return result;
                }
                // Keep the lock: this mount's next operation (or another mount, once this one
                // is gone) completes the intent.
                error!(error = %e, ?intent, "cannot complete the operation now; this mount keeps the lock to retry");
                lock(&self.ns.leftover).push(guard.owner.clone());
                // The lock may not hold the intent (its store failed too): keep it here.
                *lock(&self.ns.orphaned) = Some(intent);
                return result;
            }
        }
        self.release_ns_lock(&guard.owner);
        result
    }

    /// The owner the namespace lock names (None when free or unreadable).
    fn lock_owner(&self) -> Option<String> {
        let item = self.tree.store.get(&self.tree.keys.ns_lock()).ok()??;
        let held: LockValue = serde_json::from_slice(&item.value).ok()?;
        Some(held.owner)
    }

    /// The intent the lock holds if `owner` holds it (None when unreadable).
    fn intent_in_lock(&self, owner: &str) -> Option<Intent> {
        let item = self.tree.store.get(&self.tree.keys.ns_lock()).ok()??;
        let held: LockValue = serde_json::from_slice(&item.value).ok()?;
        (held.owner == owner).then_some(held.intent).flatten()
    }

    /// The command that stores `intent` in the lock (first in an operation's first write batch).
    pub(crate) fn intent_cmd(&self, guard: &mut NsLock<'_>, intent: Intent) -> Command {
        let value = LockValue {
            owner: guard.owner.clone(),
            intent: Some(intent.clone()),
        };
        guard.intent = Some(intent);
        Command::store(
            StoreOp::Set,
            &self.tree.keys.ns_lock(),
            &serde_json::to_vec(&value).expect("serializes"),
        )
    }

    /// Stores `intent` in the lock and makes its first changes, `first` (`cas` or `add`
    /// commands), in one batch: which of them were stored. The caller withdraws the intent
    /// (`guard.intent = None`) when that means nothing happened.
    pub(crate) fn begin(
        &self,
        guard: &mut NsLock<'_>,
        intent: &Intent,
        first: Vec<Command>,
    ) -> FsResult<Vec<bool>> {
        let mut batch = Batch::new();
        let stored_intent = batch.push::<Stored>(self.intent_cmd(guard, intent.clone()));
        let firsts: Vec<Handle<Stored>> = first.into_iter().map(|c| batch.push(c)).collect();
        let mut results = batch.execute(&self.tree.store);
        results.take(stored_intent)?;
        firsts.into_iter().map(|h| results.take(h)).collect()
    }

    /// Stores the guard's intent in the lock again (before completing it after a failed
    /// batch that may not have stored it).
    pub(crate) fn store_intent(&self, guard: &mut NsLock<'_>) -> FsResult<()> {
        let Some(intent) = guard.intent.clone() else {
            return Ok(());
        };
        let cmd = self.intent_cmd(guard, intent);
        crate::store::retried(|| {
            self.tree
                .store
                .run_at::<Stored>(&self.tree.keys.ns_lock(), cmd.clone())
                .map(drop)
        })
    }

    /// The command that releases the lock (last in an operation's last batch).
    pub(crate) fn unlock_cmd(&self, guard: &mut NsLock<'_>) -> Command {
        guard.released = true;
        Command::Delete(self.tree.keys.ns_lock())
    }

    /// Called once the batch holding [`Self::unlock_cmd`] ran it: what the operation does
    /// after that runs without the lock, and waits for other mounts' operations as any does.
    pub(crate) fn lock_released_by_batch(&self) {
        HOLDS_NS_LOCK.set(false);
    }

    fn release_ns_lock(&self, owner: &str) {
        let key = self.tree.keys.ns_lock();
        if let Err(e) = self.tree.store.delete(&key) {
            // Released by this mount's next operation or heartbeat (others wait meanwhile,
            // or take it over once this mount is gone).
            crate::limited_warn!(
                format!("cannot release the namespace lock: {}", e),
                "cannot release the namespace lock (owner {owner}): {e}"
            );
            lock(&self.ns.leftover).push(owner.to_string());
        }
    }

    /// Takes the lock back for an operation whose last batch held its release although an
    /// earlier command of that batch failed, with the operation's intent. The release may
    /// have run (the lock free, or another mount's by now) or not (still this operation's,
    /// if its reply was lost or the batch stopped before it): both are found out here, never
    /// assumed. If it cannot, the intent is kept for the heartbeat to complete.
    pub(crate) fn reacquire(&self, guard: &mut NsLock<'_>) -> FsResult<()> {
        let value = serde_json::to_vec(&LockValue {
            owner: guard.owner.clone(),
            intent: guard.intent.clone(),
        })
        .expect("serializes");
        let key = self.tree.keys.ns_lock();
        let mut waiter = Waiter::new(self.tree.cfg.lock_backoff);
        let taken = loop {
            match self
                .tree
                .store
                .run(Command::store(StoreOp::Add, &key, &value))
            {
                Ok(Reply::Stored) => break Ok(()),
                Ok(_) if self.lock_owner().as_deref() == Some(&guard.owner) => {
                    break Ok(()); // the release never ran: still held
                }
                Ok(_) => {
                    if let Err(e) = self.resolve_holder(&mut waiter) {
                        break Err(e);
                    }
                }
                Err(e) => {
                    // The `add` may have run with its reply lost: the lock may be ours.
                    lock(&self.ns.leftover).push(guard.owner.clone());
                    break Err(FsError::store(&key, e));
                }
            }
        };
        if taken.is_err() {
            *lock(&self.ns.orphaned) = guard.intent.clone();
        } else {
            HOLDS_NS_LOCK.set(true); // held again (`lock_released_by_batch` cleared it)
        }
        guard.released = taken.is_err();
        taken
    }

    fn acquire(&self, reads: Batch) -> FsResult<(NsLock<'_>, Replies)> {
        // Taking it again under itself would wait for itself (on `serial`, or on the lock).
        debug_assert!(
            !HoldingNsLock::here(),
            "the namespace lock taken by a thread that holds it"
        );
        let local = lock(&self.ns.serial);
        let owner = format!("{}/{}", self.tree.mount_id, random_id());
        let value = serde_json::to_vec(&LockValue {
            owner: owner.clone(),
            intent: None,
        })
        .expect("serializes");
        let key = self.tree.keys.ns_lock();
        let mut waiter = Waiter::new(self.tree.cfg.lock_backoff);
        loop {
            let mut batch = vec![Command::store(StoreOp::Add, &key, &value)];
            batch.extend(reads.commands().iter().cloned());
            let mut results = self.tree.store.execute(batch);
            let rest = results.split_off(1);
            match results.pop().expect("one result per command") {
                Ok(Reply::Stored) => {
                    self.tree.store.lease.taken();
                    let guard = NsLock {
                        _local: local,
                        lease: &self.tree.store.lease,
                        owner,
                        released: false,
                        intent: None,
                    };
                    return Ok((guard, reads.answered(rest)));
                }
                Ok(_) => self.resolve_holder(&mut waiter)?,
                Err(e) => {
                    // The `add` may have taken the lock and lost its reply: without this,
                    // every mount would wait on a live owner that never releases it (EBUSY
                    // after a minute, for good). The next operation or heartbeat of this
                    // mount releases it.
                    lock(&self.ns.leftover).push(owner);
                    return Err(FsError::store(&key, e));
                }
            }
        }
    }

    /// Waits until no namespace operation runs (completing a dead mount's), for creates,
    /// publishes and reads that found the lock held.
    pub(crate) fn wait_quiet(&self) -> FsResult<()> {
        if HoldingNsLock::here() {
            // The operation running is this thread's own: waiting would wait for itself.
            return Ok(());
        }
        let key = self.tree.keys.ns_lock();
        let mut waiter = Waiter::new(self.tree.cfg.lock_backoff);
        loop {
            match self.tree.store.get_at(&key)? {
                None => return Ok(()),
                Some(_) => self.resolve_holder(&mut waiter)?,
            }
        }
    }

    /// The lock is held: wait for a live owner, or complete a dead owner's intent. (About 80
    /// lines: a take-over is one sequence of read, `cas`, complete and release, whose steps
    /// share the lock's value and owner.)
    fn resolve_holder(&self, waiter: &mut Waiter) -> FsResult<()> {
        let one_taker = match self.ns.taking_over.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            // Another thread of this mount is completing the holder's intent.
            Err(std::sync::TryLockError::WouldBlock) => return waiter.wait(),
        };
        let key = self.tree.keys.ns_lock();
        let Some(item) = self.tree.store.gets_at(&key)? else {
            return Ok(()); // released meanwhile
        };
        let held: LockValue = serde_json::from_slice(&item.value)
            .map_err(|e| FsError::corrupt(&key, format!("namespace lock: {e}")))?;
        let mine_left_over = lock(&self.ns.leftover).contains(&held.owner);
        if !mine_left_over {
            let alive_key = self.tree.keys.alive(held.mount());
            let alive = self.tree.store.get_at(&alive_key)?.is_some();
            if alive {
                drop(one_taker); // (others of this mount may look meanwhile)
                return waiter.wait();
            }
        }
        // The owner is gone (or it is this mount's own failed operation): take over.
        let me = format!("{}/{}", self.tree.mount_id, random_id());
        let taken = LockValue {
            owner: me.clone(),
            intent: held.intent.clone(),
        };
        let cas = Command::cas(
            &key,
            &serde_json::to_vec(&taken).expect("serializes"),
            item.cas.unwrap_or(0),
        );
        match self.tree.store.run(cas) {
            Ok(Reply::Stored) => {}
            Ok(_) => return Ok(()), // someone else took it over first
            Err(e) => {
                // The `cas` may have run with its reply lost: the lock may be ours.
                lock(&self.ns.leftover).push(me);
                return Err(FsError::store(&key, e));
            }
        }
        // Fenced as an acquisition is (`lock_lease`): a stall from here on sends nothing.
        let _fenced = self.tree.store.lease.taken_over();
        // Ours now: until it is released, this mount's next operation or heartbeat finishes
        // it (if completing fails here, the error goes to the caller).
        lock(&self.ns.leftover).push(me.clone());
        let intent = match (&held.intent, mine_left_over) {
            (Some(intent), _) => Some(intent.clone()),
            (None, true) => lock(&self.ns.orphaned).clone(),
            (None, false) => None,
        };
        let _holding = HoldingNsLock::mark();
        if let Some(intent) = &intent {
            info!(owner = %held.owner, ?intent, "completing an unfinished operation");
            match self.complete_unless_damaged(intent) {
                // As in `with_ns_lock`: damage no retry mends does not keep the lock.
                Err(e) if e.is_damage() => {
                    error!(error = %e, ?intent, "cannot complete another mount's operation: the store is damaged there; releasing the namespace lock (run `memfis check --repair`)")
                }
                other => other?,
            }
        }
        if !mine_left_over {
            let what = match &intent {
                Some(intent) => format!("{intent:?}"),
                None => "no intent stored yet: the lock was released".to_string(),
            };
            // Kept for repair to report; a long-lived mount keeps only the first few.
            let mut done = lock(&self.ns.rolled_forward);
            if done.len() < 64 {
                done.push((held.owner.clone(), what));
            }
        }
        if mine_left_over {
            *lock(&self.ns.orphaned) = None;
        }
        lock(&self.ns.leftover).retain(|o| *o != held.owner && *o != me);
        self.release_ns_lock(&me);
        Ok(())
    }

    /// True when no namespace operation is running.
    pub(crate) fn is_quiet(&self) -> FsResult<bool> {
        let key = self.tree.keys.ns_lock();
        Ok(self.tree.store.get_at(&key)?.is_none())
    }

    /// Completes the intent of an operation of this mount kept without the lock (its lock
    /// was lost midway), taking the lock again (heartbeat).
    pub(crate) fn complete_orphaned_intent(&self) -> FsResult<()> {
        let orphaned = lock(&self.ns.orphaned).clone();
        if let Some(intent) = orphaned {
            self.with_ns_lock(Batch::new(), |guard, _| {
                guard.intent = Some(intent.clone());
                self.complete(&intent)
            })?;
            *lock(&self.ns.orphaned) = None;
        }
        Ok(())
    }

    /// Forgets the locks this mount may still hold after an operation failed midway (or its
    /// release failed) once the lock was seen free (heartbeat).
    pub(crate) fn forget_released_leftovers(&self) -> FsResult<()> {
        let leftover = lock(&self.ns.leftover).clone();
        if !leftover.is_empty() {
            let _local = lock(&self.ns.serial);
            self.wait_quiet()?;
            // The lock was free at some point since: none of these holds it, and none takes
            // it again (every acquisition has a new owner; `reacquire` runs within an
            // operation, which holds `ns_local`).
            lock(&self.ns.leftover).retain(|o| !leftover.contains(o));
        }
        Ok(())
    }
}

thread_local! {
    static HOLDS_NS_LOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as running under the namespace lock (an operation, or the completion of
/// an intent it took over) until dropped: a step of it that waits for the lock to be free
/// (`wait_quiet`) must not wait for itself, nor take its own lock over again.
struct HoldingNsLock {
    before: bool,
}

impl HoldingNsLock {
    fn mark() -> HoldingNsLock {
        HoldingNsLock {
            before: HOLDS_NS_LOCK.replace(true),
        }
    }

    fn here() -> bool {
        HOLDS_NS_LOCK.get()
    }
}

impl Drop for HoldingNsLock {
    fn drop(&mut self) {
        HOLDS_NS_LOCK.set(self.before);
    }
}

/// Backoff while a live mount holds the lock, bounded by [`LOCK_WAIT`].
struct Waiter {
    started: Instant,
    next: Duration,
}

impl Waiter {
    fn new(first: Duration) -> Waiter {
        Waiter {
            started: Instant::now(),
            next: first,
        }
    }

    fn wait(&mut self) -> FsResult<()> {
        if self.started.elapsed() > LOCK_WAIT {
            return Err(FsError::Contended);
        }
        if !self.next.is_zero() {
            std::thread::sleep(self.next);
            self.next = (self.next * 2).min(MAX_BACKOFF);
        } else {
            std::thread::yield_now();
        }
        Ok(())
    }
}
