//! A mount's background refill on a pool with `--replicas N`: a server that answers without
//! its in-sync marker (restarted empty, or new to the pool) gets its copy of every key from
//! the others, a bounded number of keys a second, while the mount serves. One mount refills
//! at a time: it holds a lease key (`PREFIX%refill`, with an expiry, refreshed as it goes),
//! whose value says how far it got (`memfis stats`); the mount's metrics count the keys and
//! copies. It is `memfis check --repair`'s refill (the same walk and listing, the same
//! resync: copies set by `cas`/`add` on what they held, so writes at the same moment win),
//! its comparing paced and left to run. The protocol: docs/store-layout.md, "Replicas".

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use memfis_fs::{KeyLayout, MemFs};
use memfis_memcache::replicas::RESYNC_GROUP;
use memfis_memcache::{Command, Reply, ResyncReport, Store, StoreOp};
use serde::{Deserialize, Serialize};

/// The lease's life: a mount that dies while refilling holds it at most this long. It is
/// first written again after the walk of the tree; a walk that outlasts it takes it back
/// then, unless another mount took it meanwhile.
pub const LEASE_SECS: u32 = 120;

/// How often the lease (and its progress) is written again while keys are compared.
const LEASE_REFRESH: Duration = Duration::from_secs(5);

/// How often a mount looks for a server to refill (one marker read a server).
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The pause after a refill that failed (another server down, a server restarted during
/// it), doubled after each failure in a row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How often a mount waiting for mounts on another server list looks again (a listing of
/// every server's keys each time).
const AFTER_MIXED_LISTS: Duration = Duration::from_secs(10);

/// How long dropping a [`Refiller`] waits for its refill to stop and release the lease (a
/// walk of the tree does not stop halfway).
const STOP_WAIT: Duration = Duration::from_secs(3);

/// Keys compared a second unless the mount says otherwise (`--refill-rate`).
pub const DEFAULT_RATE: u32 = 2_000;

/// The lease's value: who refills what, and how far it got.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefillLease {
    /// The refilling mount's id.
    pub mount: String,
    /// The servers it copies to.
    pub servers: Vec<String>,
    /// Keys to compare in all (0 while the tree is walked), and compared so far.
    pub keys: u64,
    pub compared: u64,
    /// Copies written so far.
    pub copied: u64,
}

/// What this mount's refills did, for its metrics.
#[derive(Debug, Default)]
pub struct RefillStatus {
    /// A refill is running.
    pub running: AtomicBool,
    /// Keys of the refill running (or of the last one).
    pub keys_planned: AtomicU64,
    /// Keys compared by every refill so far.
    pub keys_compared: AtomicU64,
    /// Copies written by every refill so far.
    pub copies_written: AtomicU64,
    /// Refills that ended with every server in sync.
    pub completed: AtomicU64,
    /// Refills that failed (tried again later).
    pub failed: AtomicU64,
    /// Refills stopped by the mount's end.
    pub stopped: AtomicU64,
}

impl RefillStatus {
    /// Adds what a resync did since it last reported `before` (keys compared, copies).
    fn count(&self, so_far: &ResyncReport, before: (usize, usize)) {
        let keys = so_far.keys.saturating_sub(before.0) as u64;
        let copies = so_far.copied.saturating_sub(before.1) as u64;
        self.keys_compared.fetch_add(keys, Ordering::Relaxed);
        self.copies_written.fetch_add(copies, Ordering::Relaxed);
    }
}

/// The running refill thread. Dropping this stops it: a refill comparing keys stops within
/// one group and releases its lease (waited for up to [`STOP_WAIT`]).
pub struct Refiller {
    stop: Option<Sender<()>>,
    /// Disconnected when the thread ends.
    ended: Receiver<()>,
    status: Arc<RefillStatus>,
}

/// How one look for a server to refill ended.
enum Outcome {
    /// No server lacks its copies, or another mount refills them.
    Nothing,
    Done(ResyncReport),
    Stopped,
    /// Live mounts (these) use another list of servers: no server is refilled until they
    /// are gone.
    Waiting(Vec<String>),
}

impl Refiller {
    /// Starts looking for servers to refill, comparing at most `rate` keys a second (a group
    /// of [`memfis_memcache::replicas::RESYNC_GROUP`] keys at a time).
    pub fn start<S: Store + 'static>(fs: Arc<MemFs<S>>, rate: u32) -> Refiller {
        let (stop, stopped) = channel::<()>();
        let (ended_tx, ended) = channel::<()>();
        let status = Arc::new(RefillStatus::default());
        let mine = status.clone();
        std::thread::spawn(move || {
            let _ended = ended_tx; // dropped when the loop ends: tells `Drop`
            look_until_stopped(&fs, rate, &mine, &stopped);
        });
        Refiller {
            stop: Some(stop),
            ended,
            status,
        }
    }

    pub fn status(&self) -> Arc<RefillStatus> {
        self.status.clone()
    }
}

impl Drop for Refiller {
    fn drop(&mut self) {
        self.stop.take();
        let _ = self.ended.recv_timeout(STOP_WAIT);
    }
}

/// The refill thread: looks for a server to refill every [`LOOK_EVERY`] (less often after a
/// failure, or while mounts use another server list) until the [`Refiller`] is dropped.
fn look_until_stopped<S: Store>(
    fs: &MemFs<S>,
    rate: u32,
    status: &RefillStatus,
    stopped: &Receiver<()>,
) {
    let mut wait = LOOK_EVERY;
    let mut backoff = FIRST_BACKOFF;
    let mut waiting_for = Vec::new();
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
        wait = LOOK_EVERY;
        let outcome = refill(fs, rate, status, stopped);
        status.running.store(false, Ordering::Relaxed);
        if !matches!(outcome, Ok(Outcome::Waiting(_))) {
            waiting_for.clear();
        }
        match outcome {
            Ok(Outcome::Nothing) => {}
            Ok(Outcome::Done(report)) => {
                tracing::info!(
                    "refill done: {} keys compared, {} copies written; every server holds its copies",
                    report.keys,
                    report.copied
                );
                status.completed.fetch_add(1, Ordering::Relaxed);
                backoff = FIRST_BACKOFF;
            }
            Ok(Outcome::Stopped) => {
                status.stopped.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Outcome::Waiting(others)) => {
                if others != waiting_for {
                    tracing::warn!(
                        "refill waits: mounts {} use another list of servers than this one ({}); remount them with this list",
                        others.join(", "),
                        fs.store().pool_id().unwrap_or_default()
                    );
                }
                waiting_for = others;
                wait = AFTER_MIXED_LISTS;
                continue;
            }
            Err(e) => {
                tracing::warn!("refill: {e:#} (tried again in {backoff:?})");
                status.failed.fetch_add(1, Ordering::Relaxed);
                wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Reads the lease: the refill running now, if any (`memfis stats`).
pub fn current<S: Store>(store: &S, keys: &KeyLayout) -> Result<Option<RefillLease>> {
    Ok(read_lease(store, keys)?.map(|(lease, _)| lease))
}

/// One refill, if a server needs one and no other mount holds the lease.
fn refill<S: Store>(
    fs: &MemFs<S>,
    rate: u32,
    status: &RefillStatus,
    stop: &Receiver<()>,
) -> Result<Outcome> {
    let store = fs.store();
    let servers = store.servers_to_refill();
    if servers.is_empty() {
        return Ok(Outcome::Nothing);
    }
    let keys = fs.keys();
    let mut lease = RefillLease {
        mount: fs.mount_id().to_string(),
        servers,
        ..RefillLease::default()
    };
    if !take_lease(store, keys, &lease)? {
        drop_dead_lease(store, keys, &lease.mount)?;
        return Ok(Outcome::Nothing); // another mount refills
    }
    let result = (|| {
        // Another mount may have finished a refill between the look above and the lease.
        lease.servers = store.servers_to_refill();
        if lease.servers.is_empty() {
            return Ok(Outcome::Nothing);
        }
        // A mount still on another server list writes where its own ring places keys: a
        // server this list adds would miss them once marked in sync. (Looked at under the
        // lease: a listing of every server, which memcached runs one at a time.)
        let others = crate::replicas::mounts_on_other_lists(store, keys)?;
        if !others.is_empty() {
            return Ok(Outcome::Waiting(others));
        }
        status.running.store(true, Ordering::Relaxed);
        tracing::info!(
            "refilling {} from the other copies, at most {rate} keys a second",
            lease.servers.join(", ")
        );
        compare_and_copy(fs, rate, status, stop, &mut lease)
    })();
    // Released whatever happened (if still ours): another mount, or this one later, goes on.
    if let Err(e) = release_lease(store, keys, &lease.mount) {
        tracing::warn!("refill: {e:#}");
    }
    result
}

/// The walk, the listing and the paced resync of one refill, under the lease.
fn compare_and_copy<S: Store>(
    fs: &MemFs<S>,
    rate: u32,
    status: &RefillStatus,
    stop: &Receiver<()>,
    lease: &mut RefillLease,
) -> Result<Outcome> {
    let (store, keys) = (fs.store(), fs.keys());
    let walked = memfis_fs::check::scan(store, keys).context("cannot walk the tree")?;
    let all = crate::replicas::keys_to_compare(store, keys, &walked.tree_keys)?;
    lease.keys = all.len() as u64;
    refresh_lease(store, keys, lease)?; // the walk may have outlasted it
    status.keys_planned.store(lease.keys, Ordering::Relaxed);
    let per_group = Duration::from_secs_f64(RESYNC_GROUP as f64 / f64::from(rate.max(1)));
    let mut next_group = Instant::now();
    let mut refreshed = Instant::now();
    let mut lease_error = None;
    let (mut compared, mut copied) = (0, 0);
    let report = store.resync(&all, true, &mut |so_far| {
        status.count(so_far, (compared, copied));
        (compared, copied) = (so_far.keys, so_far.copied);
        // Waits for the next group's turn, writing the lease again meanwhile.
        loop {
            if matches!(stop.try_recv(), Err(TryRecvError::Disconnected)) {
                return ControlFlow::Break(());
            }
            if refreshed.elapsed() >= LEASE_REFRESH {
                refreshed = Instant::now();
                (lease.compared, lease.copied) = (compared as u64, copied as u64);
                if let Err(e) = refresh_lease(store, keys, lease) {
                    lease_error = Some(e);
                    return ControlFlow::Break(());
                }
            }
            let now = Instant::now();
            let Some(ahead) = next_group
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
            else {
                // This group's turn. The next one's comes a group's time later, counted from
                // at most a second ago: a slow stretch of the store earns no burst after it.
                let floor = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
                next_group = next_group.max(floor) + per_group;
                return ControlFlow::Continue(());
            };
            if stop.recv_timeout(ahead.min(LEASE_REFRESH)) == Err(RecvTimeoutError::Disconnected) {
                return ControlFlow::Break(());
            }
        }
    });
    status.count(&report, (compared, copied));
    if let Some(e) = lease_error {
        return Err(e);
    }
    if report.stopped {
        return Ok(Outcome::Stopped);
    }
    if let Some((key, e)) = report.failed.first() {
        return Err(anyhow!(
            "{} copies could not be compared or set (first: {}: {e})",
            report.failed.len(),
            text(key)
        ));
    }
    Ok(Outcome::Done(report))
}

/// The lease as stored, with its cas token.
fn read_lease<S: Store>(store: &S, keys: &KeyLayout) -> Result<Option<(RefillLease, u64)>> {
    let key = keys.refill_lease();
    let Some(item) = store.gets(&key).context("cannot read the refill lease")? else {
        return Ok(None);
    };
    let lease = serde_json::from_slice(&item.value)
        .with_context(|| format!("the refill lease {} is not readable", text(&key)))?;
    Ok(Some((lease, item.cas.unwrap_or(0))))
}

fn lease_value(lease: &RefillLease) -> Arc<Vec<u8>> {
    Arc::new(serde_json::to_vec(lease).expect("a lease serializes"))
}

/// Takes the lease (`add`): whether no other mount held it.
fn take_lease<S: Store>(store: &S, keys: &KeyLayout, lease: &RefillLease) -> Result<bool> {
    let key = keys.refill_lease();
    let add = Command::Store {
        op: StoreOp::Add,
        key: key.clone(),
        value: lease_value(lease),
        flags: 0,
        exptime: LEASE_SECS,
    };
    match store.run(add) {
        Ok(Reply::Stored) => Ok(true),
        Ok(Reply::NotStored) => Ok(false),
        Ok(other) => Err(anyhow!("the refill lease {}: {other:?}", text(&key))),
        Err(e) => Err(e).with_context(|| format!("cannot take the refill lease {}", text(&key))),
    }
}

/// Deletes a lease no live mount holds: one that cannot be parsed, names this mount (`me`,
/// which refills nothing while it looks), or whose mount's liveness key is gone (it died). A
/// lease that somehow lost its expiry would otherwise stop every refill for good. The next
/// look takes it.
fn drop_dead_lease<S: Store>(store: &S, keys: &KeyLayout, me: &str) -> Result<()> {
    let held = store
        .get(&keys.refill_lease())
        .context("cannot read the refill lease")?;
    let Some(held) = held else { return Ok(()) };
    let why = match serde_json::from_slice::<RefillLease>(&held.value) {
        // This mount's own, though it refills nothing now (a lease written by hand).
        Ok(lease) if lease.mount == me => "it names this mount, which is not refilling".into(),
        Ok(lease) => {
            if store
                .get(&keys.alive(&lease.mount))
                .context("cannot read the refilling mount's liveness")?
                .is_some()
            {
                return Ok(());
            }
            format!("its mount {} is gone", lease.mount)
        }
        Err(e) => format!("not readable: {e}"),
    };
    tracing::warn!(
        "refill: deleting the lease {} ({why})",
        text(&keys.refill_lease())
    );
    store
        .delete(&keys.refill_lease())
        .context("cannot delete the refill lease")?;
    Ok(())
}

/// Writes the lease again with its progress and a new expiry, if it is still this mount's
/// (`gets` + `cas`): a lease that expired and another mount took ends this refill.
fn refresh_lease<S: Store>(store: &S, keys: &KeyLayout, lease: &RefillLease) -> Result<()> {
    let key = keys.refill_lease();
    let lost = || {
        anyhow!(
            "the refill lease {} expired: another mount may refill",
            text(&key)
        )
    };
    let Some((held, cas)) = read_lease(store, keys)? else {
        // Expired (a walk longer than its life) with no other mount taking it: take it back.
        return if take_lease(store, keys, lease)? {
            Ok(())
        } else {
            Err(lost())
        };
    };
    if held.mount != lease.mount {
        return Err(lost());
    }
    let value = lease_value(lease);
    match store.run(Command::cas_expiring(&key, &value[..], cas, LEASE_SECS)) {
        Ok(Reply::Stored) => Ok(()),
        Ok(_) => Err(lost()),
        Err(e) => Err(e).with_context(|| format!("cannot write the refill lease {}", text(&key))),
    }
}

/// Deletes the lease if it is still `mount`'s.
fn release_lease<S: Store>(store: &S, keys: &KeyLayout, mount: &str) -> Result<()> {
    if read_lease(store, keys)?.is_some_and(|(held, _)| held.mount == mount) {
        store
            .delete(&keys.refill_lease())
            .context("cannot release the refill lease")?;
    }
    Ok(())
}

fn text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
