//! A store opened by a command. Commands that only read (`stats`, `check`) [`connect`];
//! commands that change the tree (mount, `load`, `export`, `check --repair`) open a
//! [`Session`]: the filesystem as a mount of its own, whose liveness key its heartbeat keeps
//! alive for as long as the session lives (a long load must not look like a dead mount).
//!
//! - `open`: connecting and every check before serving (reachable, no evictions, a tree:
//!   there already, or made only when the command says so, [`IfNoTree`])
//! - `heartbeat`: the thread that refreshes the liveness key

mod heartbeat;
mod open;

use std::sync::Arc;
use std::time::Duration;

use memfis_fs::MemFs;
use memfis_memcache::{Client, Store};

use crate::progress::Progress;

pub use heartbeat::HEARTBEAT_EVERY;
pub use open::{IfNoTree, connect, no_tree, open_fs, open_tree, require_tree};

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
    /// Copies of each key asked for (`--replicas`); `None`: the tree's number.
    pub replicas: Option<usize>,
    /// How long the filesystem trusts what it cached (a mount's attribute TTL).
    pub cache_ttl: Duration,
}

/// The filesystem over a store, with its heartbeat running from open to drop.
pub struct Session<S: Store + 'static> {
    fs: Arc<MemFs<S>>,
    _heartbeat: heartbeat::Heartbeat,
}

impl Session<Arc<Client>> {
    /// Connects, checks the servers and opens the tree (a prefix with none is refused or
    /// made, as `if_no_tree` says), then starts the heartbeat.
    pub fn open(
        cfg: &StoreConfig,
        if_no_tree: IfNoTree,
        progress: &dyn Progress,
    ) -> anyhow::Result<Self> {
        Ok(Session::start(open_fs(cfg, if_no_tree, progress)?))
    }
}

impl<S: Store + 'static> Session<S> {
    /// Starts the heartbeat of a filesystem already opened (whose open wrote the first beat).
    pub fn start(fs: MemFs<S>) -> Self {
        let fs = Arc::new(fs);
        fs.arm_stall_fence(); // the heartbeat below refreshes the liveness every 2 s
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

    use std::sync::Mutex;

    use memfis_fs::{FsConfig, FsError, KeyLayout, MemFs};
    use memfis_memcache::Store;
    use memfis_memcache::memory::MemoryStore;

    use super::{IfNoTree, Session, no_tree, open_tree, require_tree};
    use crate::progress::Progress;

    /// Records every announcement of a new tree.
    #[derive(Default)]
    struct NewTrees(Mutex<Vec<(String, Vec<String>)>>);

    impl Progress for NewTrees {
        fn new_tree(&self, prefix: &str, others: &[String]) {
            self.0
                .lock()
                .unwrap()
                .push((prefix.to_string(), others.to_vec()));
        }
    }

    fn open(
        store: &Arc<MemoryStore>,
        prefix: &str,
        if_no_tree: IfNoTree,
        progress: &NewTrees,
    ) -> anyhow::Result<MemFs<Arc<MemoryStore>>> {
        let keys = KeyLayout::new(prefix).unwrap();
        open_tree(
            store.clone(),
            keys,
            FsConfig::default(),
            if_no_tree,
            progress,
        )
    }

    #[test]
    fn a_prefix_with_no_tree_is_refused_without_a_write_unless_created() {
        let store = Arc::new(MemoryStore::default());
        let said = NewTrees::default();
        let www = open(&store, "memfis://www", IfNoTree::Create, &said).unwrap();
        assert_eq!(
            *said.0.lock().unwrap(),
            [("memfis://www".to_string(), vec![])],
            "making a tree is announced"
        );
        drop(www);

        let before = store.keys();
        let typo = KeyLayout::new("memfis://wwww").unwrap();
        let Err(refused) = open(&store, "memfis://wwww", IfNoTree::Refuse, &said) else {
            panic!("a prefix with no tree opened without --create");
        };
        assert_eq!(
            no_tree(&refused),
            Some(("memfis://wwww", &["memfis://www".to_string()][..])),
            "{refused:#}"
        );
        assert!(matches!(
            require_tree(&*store, &typo),
            Err(FsError::NoTree { .. })
        ));
        let mut after = store.keys();
        let mut before = before;
        after.sort();
        before.sort();
        assert_eq!(after, before, "a refusal wrote to the store");
        assert_eq!(
            said.0.lock().unwrap().len(),
            1,
            "a refusal announced a tree"
        );

        // An existing tree opens either way, without a word.
        open(&store, "memfis://www", IfNoTree::Refuse, &said).unwrap();
        open(&store, "memfis://www", IfNoTree::Create, &said).unwrap();
        assert!(require_tree(&*store, &KeyLayout::new("memfis://www").unwrap()).is_ok());
        assert_eq!(said.0.lock().unwrap().len(), 1);

        // A new one names the trees already there; a nesting one is refused.
        open(&store, "memfis://two", IfNoTree::Create, &said).unwrap();
        assert_eq!(
            said.0.lock().unwrap()[1],
            ("memfis://two".to_string(), vec!["memfis://www".to_string()])
        );
        let Err(nests) = open(&store, "memfis://www/b", IfNoTree::Create, &said) else {
            panic!("a nesting prefix was made");
        };
        assert!(
            matches!(
                nests.downcast_ref::<FsError>(),
                Some(FsError::PrefixNests { .. })
            ),
            "{nests:#}"
        );
        assert!(no_tree(&nests).is_none());
        assert_eq!(
            said.0.lock().unwrap().len(),
            2,
            "a refused nesting prefix was announced as a new tree"
        );
    }

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
