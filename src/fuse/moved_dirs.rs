//! Directories another mount moved: tell the kernel to drop the old name.
//!
//! The kernel keeps one dentry per directory. When a lookup finds a directory it already
//! knows under another parent (another mount renamed it), the kernel must move its dentry,
//! which needs locks it only tries to take; when they are busy the lookup fails with
//! ESTALE, and the system call retries once. Under steady namespace traffic both attempts
//! can fail and ESTALE reaches the caller, which a local filesystem never answers.
//!
//! So the FUSE glue remembers where it last told the kernel each directory was, and when a
//! reply names a directory somewhere else, it invalidates the old entry first. The
//! invalidation runs on a thread of its own and the reply waits for it only briefly: the
//! kernel takes the old parent's lock for it, and that lock may be held by a rename waiting
//! for the very reply being sent (a deadlock if the request thread waited for good). When
//! the wait runs out, the system call's retry usually finds the old entry gone.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fuser::{INodeNo, Notifier};

/// How long a reply waits for the old entry to be invalidated.
const INVAL_WAIT: Duration = Duration::from_millis(200);

/// Most directories remembered; past it the table starts over (a forgotten directory only
/// loses the early invalidation, never correctness).
const MAX_DIRS: usize = 1 << 20;

pub struct MovedDirs {
    /// Directory inode -> (parent, name) the kernel was last given.
    placed: Mutex<HashMap<u64, (u64, Vec<u8>)>>,
    /// Set once the session exists (the filesystem is built before it).
    notifier: Arc<OnceLock<Notifier>>,
}

impl MovedDirs {
    pub fn new() -> MovedDirs {
        MovedDirs {
            placed: Mutex::new(HashMap::new()),
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// Where notifications go; called once the FUSE session is made.
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Where notifications go, once the session exists.
    pub fn notifier(&self) -> Option<Notifier> {
        self.notifier.get().cloned()
    }

    /// The kernel is about to be told directory `ino` is `name` in `parent`: when it knew
    /// the directory elsewhere, invalidates that entry (waiting [`INVAL_WAIT`] at most).
    pub fn placed(&self, ino: u64, parent: u64, name: &[u8]) {
        let old = {
            let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
            if placed.len() >= MAX_DIRS && !placed.contains_key(&ino) {
                placed.clear();
            }
            match placed.get_mut(&ino) {
                Some(at) if at.0 == parent && at.1 == name => return,
                // Within one directory the kernel moves its entry without the locks that can
                // fail: nothing to invalidate (and the lookup holds that directory's lock,
                // which the invalidation would wait for).
                Some(at) if at.0 == parent => {
                    at.1 = name.to_vec();
                    return;
                }
                Some(at) => std::mem::replace(at, (parent, name.to_vec())),
                None => {
                    placed.insert(ino, (parent, name.to_vec()));
                    return;
                }
            }
        };
        let Some(notifier) = self.notifier.get().cloned() else {
            return;
        };
        let (done, wait) = channel();
        // A thread each: one blocked on a busy directory must not hold up the others.
        let spawned = std::thread::Builder::new()
            .name("memfis-inval".into())
            .spawn(move || {
                let (parent, name) = old;
                // ENOENT (the kernel no longer has it) is what we want anyway; any other
                // failure only loses the early invalidation.
                if let Err(e) = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name)) {
                    tracing::debug!(parent, "invalidating a moved directory's old entry: {e}");
                }
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = wait.recv_timeout(INVAL_WAIT);
        }
    }

    /// The kernel forgot `ino`.
    pub fn forget(&self, ino: u64) {
        let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        placed.remove(&ino);
    }
}
