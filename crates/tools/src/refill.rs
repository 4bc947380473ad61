//! A mount's background refill on a pool with `--replicas N`: a server that answers without
//! its in-sync marker (restarted empty, or new to the pool) gets its copy of every key from
//! the others, a bounded number of keys a second, while the mount serves. One mount refills
//! at a time: it holds a lease key (`PREFIX%refill`, with an expiry, refreshed as it goes),
//! whose value says how far it got (`memfis stats`); the mount's metrics count the keys and
//! copies. It is `memfis check --repair`'s refill (the same walk and listing, the same
//! resync: copies set by `cas`/`add` on what they held, so writes at the same moment win),
//! paced and left to run. The protocol: docs/store-layout.md, "Replicas".

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use memfis_fs::{KeyLayout, MemFs};
use memfis_memcache::{Command, Reply, ResyncReport, Store, StoreOp};
use serde::{Deserialize, Serialize};

/// The lease's life: a mount that dies while refilling holds it at most this long. Longer
/// than the walk of a large tree before the first refresh.
pub const LEASE_SECS: u32 = 120;

/// How often the lease (and its progress) is written again while keys are compared.
const LEASE_REFRESH: Duration = Duration::from_secs(5);

/// How often a mount looks for a server to refill.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The pause after a refill that failed (a server died again, another mount's lease).
const AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Keys compared a second unless the mount says otherwise (`--refill-rate`).
pub const DEFAULT_RATE: u32 = 2_000;

/// The lease's value: who refills what, and how far it got.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefillLease {
    /// The refilling mount's id.
    pub mount: String,
    /// The servers it copies to.
    pub servers: Vec<String>,
    /// Keys to compare in all, and compared so far.
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
    /// Refills that failed or were stopped (tried again later).
    pub failed: AtomicU64,
}

/// The running refill thread; dropping this stops it (within one group of keys).
pub struct Refiller {
    _stop: Sender<()>,
    status: Arc<RefillStatus>,
}

impl Refiller {
    /// Starts looking for servers to refill, comparing at most `rate` keys a second (at
    /// least one group, [`memfis_memcache::replicas::RESYNC_GROUP`] keys, at a time).
    pub fn start<S: Store + 'static>(fs: Arc<MemFs<S>>, rate: u32) -> Refiller {
        let (stop, stopped) = channel::<()>();
        let status = Arc::new(RefillStatus::default());
        let mine = status.clone();
        std::thread::spawn(move || {
            let mut wait = LOOK_EVERY;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                wait = LOOK_EVERY;
                match refill(&fs, rate, &mine, &stopped) {
                    Ok(None) => {}
                    Ok(Some(report)) => {
                        tracing::info!(
                            "refill done: {} keys compared, {} copies written; every server holds its copies",
                            report.keys,
                            report.copied
                        );
                        mine.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!("refill: {e:#} (tried again in {AFTER_FAILURE:?})");
                        mine.failed.fetch_add(1, Ordering::Relaxed);
                        wait = AFTER_FAILURE;
                    }
                }
                mine.running.store(false, Ordering::Relaxed);
            }
        });
        Refiller {
            _stop: stop,
            status,
        }
    }

    pub fn status(&self) -> Arc<RefillStatus> {
        self.status.clone()
    }
}

/// Reads the lease: the refill running now, if any (`memfis stats`).
pub fn current<S: Store>(store: &S, keys: &KeyLayout) -> Result<Option<RefillLease>> {
    let key = keys.refill_lease();
    let Some(item) = store.get(&key).context("cannot read the refill lease")? else {
        return Ok(None);
    };
    serde_json::from_slice(&item.value)
        .map(Some)
        .with_context(|| format!("the refill lease {} is not readable", text(&key)))
}

/// One refill, if a server needs one and no other mount holds the lease: `None` when there
/// was nothing to do (or another mount is at it).
fn refill<S: Store>(
    fs: &MemFs<S>,
    rate: u32,
    status: &RefillStatus,
    stop: &Receiver<()>,
) -> Result<Option<ResyncReport>> {
    let store = fs.store();
    let servers = store.servers_to_refill();
    if servers.is_empty() {
        return Ok(None);
    }
    let keys = fs.keys();
    let mut lease = RefillLease {
        mount: fs.mount_id().to_string(),
        servers,
        ..RefillLease::default()
    };
    if !write_lease(store, keys, &lease, StoreOp::Add)? {
        return Ok(None); // another mount refills
    }
    status.running.store(true, Ordering::Relaxed);
    tracing::info!(
        "refilling {} from the other copies, at most {rate} keys a second",
        lease.servers.join(", ")
    );
    let result = compare_and_copy(fs, rate, status, stop, &mut lease);
    // Released whatever happened: another mount (or this one, later) tries again.
    let _ = store.delete(&keys.refill_lease());
    result
}

/// The walk, the listing and the paced resync of one refill.
fn compare_and_copy<S: Store>(
    fs: &MemFs<S>,
    rate: u32,
    status: &RefillStatus,
    stop: &Receiver<()>,
    lease: &mut RefillLease,
) -> Result<Option<ResyncReport>> {
    let (store, keys) = (fs.store(), fs.keys());
    let walked = memfis_fs::check::scan(store, keys).context("cannot walk the tree")?;
    let all = crate::replicas::keys_to_compare(store, keys, &walked.tree_keys)?;
    lease.keys = all.len() as u64;
    status.keys_planned.store(lease.keys, Ordering::Relaxed);
    let started = Instant::now();
    let mut refreshed = Instant::now();
    let mut lease_error = None;
    let (mut compared, mut copied) = (0, 0);
    let report = store.resync(&all, true, &mut |so_far| {
        status
            .keys_compared
            .fetch_add((so_far.keys - compared) as u64, Ordering::Relaxed);
        status.copies_written.fetch_add(
            so_far.copied.saturating_sub(copied) as u64,
            Ordering::Relaxed,
        );
        (compared, copied) = (so_far.keys, so_far.copied);
        if matches!(stop.try_recv(), Err(TryRecvError::Disconnected)) {
            return ControlFlow::Break(());
        }
        if refreshed.elapsed() >= LEASE_REFRESH {
            refreshed = Instant::now();
            lease.compared = compared as u64;
            lease.copied = copied as u64;
            if let Err(e) = write_lease(store, keys, lease, StoreOp::Set) {
                lease_error = Some(e);
                return ControlFlow::Break(());
            }
        }
        // Keys compared so far may not run ahead of the rate.
        let due = Duration::from_secs_f64(compared as f64 / f64::from(rate.max(1)));
        if let Some(ahead) = due.checked_sub(started.elapsed())
            && stop.recv_timeout(ahead) == Err(RecvTimeoutError::Disconnected)
        {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    status
        .keys_compared
        .fetch_add((report.keys - compared) as u64, Ordering::Relaxed);
    status.copies_written.fetch_add(
        report.copied.saturating_sub(copied) as u64,
        Ordering::Relaxed,
    );
    if let Some(e) = lease_error {
        return Err(e);
    }
    if report.stopped {
        return Err(anyhow!(
            "stopped after {} of {} keys",
            report.keys,
            all.len()
        ));
    }
    if let Some((key, e)) = report.failed.first() {
        return Err(anyhow!(
            "{} copies could not be compared or set (first: {}: {e})",
            report.failed.len(),
            text(key)
        ));
    }
    Ok(Some(report))
}

/// Writes the lease (`add`: taken only if no other mount holds it; `set`: refreshed).
/// Whether it was stored.
fn write_lease<S: Store>(
    store: &S,
    keys: &KeyLayout,
    lease: &RefillLease,
    op: StoreOp,
) -> Result<bool> {
    let key = keys.refill_lease();
    let value = serde_json::to_vec(lease).expect("a lease serializes");
    let cmd = Command::Store {
        op,
        key: key.clone(),
        value: Arc::new(value),
        flags: 0,
        exptime: LEASE_SECS,
    };
    match store.run(cmd) {
        Ok(Reply::Stored) => Ok(true),
        Ok(Reply::NotStored) => Ok(false),
        Ok(other) => Err(anyhow!("the refill lease {}: {other:?}", text(&key))),
        Err(e) => Err(e).with_context(|| format!("cannot write the refill lease {}", text(&key))),
    }
}

fn text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
