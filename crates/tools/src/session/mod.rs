//! A store opened by a command. Commands that only read (`stats`, `check`) [`connect`];
//! commands that change the tree (mount, `load`, `export`, `check --repair`) open a
//! [`Session`]: the filesystem as a mount of its own, whose liveness key its heartbeat keeps
//! alive for as long as the session lives (a long load must not look like a dead mount).
//!
//! - `open`: connecting and every check before serving (reachable, no evictions, a tree)
//! - `heartbeat`: the thread that refreshes the liveness key

mod heartbeat;
mod open;

use std::sync::Arc;
use std::time::Duration;

use memfis_fs::MemFs;
use memfis_memcache::{Client, Store};

use crate::progress::Progress;

pub use heartbeat::HEARTBEAT_EVERY;
pub use open::{connect, open_fs};

/// Where the store is and how to treat it: what the command line gives.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `HOST:PORT` or `unix:/path`; several form a pool.
    pub servers: Vec<String>,
    pub prefix: String,
    /// Bounds every connect and every call.
    pub timeout: Duration,
    /// Accept servers that evict items when full.
    pub allow_evictions: bool,
    /// Store text files gzip-compressed.
    pub gzip: bool,
    /// How long the filesystem trusts what it cached (a mount's attribute TTL).
    pub cache_ttl: Duration,
}

/// The filesystem over a store, with its heartbeat running from open to drop.
pub struct Session<S: Store + 'static> {
    fs: Arc<MemFs<S>>,
    _heartbeat: heartbeat::Heartbeat,
}

impl Session<Arc<Client>> {
    /// Connects, checks the servers and opens the tree (making it if the prefix has none),
    /// then starts the heartbeat.
    pub fn open(cfg: &StoreConfig, progress: &dyn Progress) -> anyhow::Result<Self> {
        Ok(Session::start(open_fs(cfg, progress)?))
    }
}

impl<S: Store + 'static> Session<S> {
    /// Starts the heartbeat of a filesystem already opened (whose open wrote the first beat).
    pub fn start(fs: MemFs<S>) -> Self {
        let fs = Arc::new(fs);
        fs.keep_alive(); // the heartbeat below refreshes the liveness every 2 s
        Session {
            _heartbeat: heartbeat::Heartbeat::start(fs.clone()),
            fs,
        }
    }

    pub fn fs(&self) -> &Arc<MemFs<S>> {
        &self.fs
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use memfis_fs::{FsConfig, KeyLayout, MemFs};
    use memfis_memcache::Store;
    use memfis_memcache::memory::MemoryStore;

    use super::Session;

    #[test]
    fn the_heartbeat_lives_as_long_as_the_session() {
        let store = Arc::new(MemoryStore::default());
        let keys = KeyLayout::new("memfis://session").unwrap();
        let session =
            Session::start(MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap());
        let alive = keys.alive(session.fs().mount_id());
        assert!(
            store.get(&alive).unwrap().is_some(),
            "opening wrote the first beat"
        );
        let fs = Arc::downgrade(session.fs());
        drop(session);
        // The thread holds the filesystem until it ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "the heartbeat outlived its session"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
