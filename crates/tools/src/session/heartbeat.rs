//! The heartbeat: keeps the session's liveness key fresh (it expires 10 s after the last
//! beat, `memfis_fs::namespace::lock::ALIVE_SECS`) and notices a store emptied under it; between beats
//! the filesystem does its background work (`MemFs::heartbeat`).

use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::time::Duration;

use memfis_fs::{FsError, MemFs};
use memfis_memcache::Store;

/// Time between beats: several beats fit in the liveness key's life, so one slow or failed
/// beat does not let it expire.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The running thread; dropping this stops it.
pub(super) struct Heartbeat {
    /// Dropped to stop the thread: it wakes at once and ends.
    _stop: Sender<()>,
    /// The same for the thread that only refreshes the liveness.
    _stop_refresh: Sender<()>,
}

impl Heartbeat {
    pub(super) fn start<S: Store + 'static>(fs: Arc<MemFs<S>>) -> Heartbeat {
        let (stop, stopped) = channel::<()>();
        let refresher = fs.clone();
        // Not joined on drop: a beat in flight may wait on the store for its timeout, and
        // nothing needs to wait for it; the thread ends when the beat returns.
        std::thread::spawn(move || {
            let mut failing = false;
            // A beat at once: the liveness counts from now, not from when the store was
            // opened (`MemFs::arm_stall_fence`).
            beat(&fs, &mut failing);
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT_EVERY) {
                beat(&fs, &mut failing);
            }
        });
        // The liveness alone, on a thread of its own: a beat's background work can wait for
        // the namespace lock behind a long operation of this mount (a big directory's
        // rename, a repair), and the liveness must not lapse meanwhile. (Its errors are the
        // beat's to report.)
        let (stop_refresh, refresh_stopped) = channel::<()>();
        std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = refresh_stopped.recv_timeout(HEARTBEAT_EVERY)
            {
                let _ = refresher.refresh_liveness();
            }
        });
        Heartbeat {
            _stop: stop,
            _stop_refresh: stop_refresh,
        }
    }
}

/// One beat. Its own warning is written once per outage (then "reachable again"), not
/// through the limiter.
fn beat<S: Store>(fs: &MemFs<S>, failing: &mut bool) {
    // Counts of repeated warnings left out (an outage that ended) are written now.
    memfis_fs::log_limit::global().flush();
    match fs.heartbeat() {
        Ok(()) if *failing => {
            tracing::info!("store reachable again");
            *failing = false;
        }
        Ok(()) => {}
        Err(FsError::StoreGone) => {}
        Err(e) if !*failing => {
            tracing::warn!("heartbeat: {e}");
            *failing = true;
        }
        Err(_) => {}
    }
}
