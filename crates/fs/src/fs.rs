//! The facade: the [`MemFs`] type and its configuration, the components it holds, and each
//! public operation handed to the component that owns it (the crate's documentation says
//! which file does each). A few combine components here: file locks with the open file's
//! side, the heartbeat's steps, liveness with the file locks' note of a lapse. Also what the
//! mount has done, and statfs. What every component shares (store, keys, configuration and
//! limits, identity) and opening a tree is `tree.rs`; names and paths `layout/names.rs`.

use std::sync::Arc;

use memfis_memcache::Store;

use crate::FsResult;
use crate::check::CheckOptions;
use crate::check::repair::RepairReport;
use crate::files::Files;
use crate::files::bulk::NewFile;
use crate::files::open_files::OpenFiles;
use crate::layout::attr::{Attr, DirEntry, SetAttr, StatFs};
use crate::layout::dirlog::Listing;
use crate::layout::keys::KeyLayout;
use crate::layout::record::Kind;
use crate::locks::{FileLocks, Holder, LockRequest};
use crate::maintenance::Maintenance;
use crate::namespace::Namespace;
use crate::namespace::rename::RenameFlags;
use crate::store::batch::StoreAt;
use crate::tree::Tree;

/// The facade: the operations of a mounted tree, each handed to the component that owns it.
pub struct MemFs<S: Store> {
    /// The store, key layout, configuration and identity every component shares.
    pub(crate) tree: Arc<Tree<S>>,
    /// What the heartbeat has to finish or clean up, and this mount's liveness
    /// (`maintenance.rs`).
    pub(crate) maintenance: Arc<Maintenance<S>>,
    /// Names, records, directory logs and the namespace lock (`namespace/`).
    pub(crate) names: Arc<Namespace<S>>,
    /// Open files, their bytes and publishing them (`files/`).
    pub(crate) files: Files<S>,
    /// File locks across mounts (`crate::locks`).
    pub(crate) locks: FileLocks<S>,
}

pub use crate::tree::{FsConfig, MAX_FILE_SIZE, NAME_MAX, listed_prefixes};

impl<S: Store> MemFs<S> {
    /// Opens the filesystem under `keys`, creating the format record and root directory when
    /// the prefix has no tree yet. Refuses a store whose format version this build does not know.
    pub fn new(store: S, keys: KeyLayout, cfg: FsConfig) -> FsResult<MemFs<S>> {
        MemFs::open_tree(store, keys, cfg, true)
    }

    /// Opens the filesystem under `keys`. A prefix with no tree is made only when `create` is
    /// true; otherwise it is refused with [`FsError::NoTree`], having written nothing to the
    /// store. A new prefix is listed in the store-wide registry before anything is written
    /// under it, so two nesting prefixes created at once cannot both succeed.
    pub fn open_tree(store: S, keys: KeyLayout, cfg: FsConfig, create: bool) -> FsResult<MemFs<S>> {
        let tree = Arc::new(Tree::open(store, keys, cfg, create)?);
        let maintenance = Arc::new(Maintenance::new(tree.clone()));
        let open_files = Arc::new(OpenFiles::new());
        let names = Arc::new(Namespace::new(
            tree.clone(),
            maintenance.clone(),
            open_files.clone(),
        ));
        let fs = MemFs {
            files: Files::new(tree.clone(), maintenance.clone(), names.clone(), open_files),
            names,
            locks: FileLocks::new(tree.clone()),
            maintenance,
            tree,
        };
        fs.heartbeat()?;
        // A mount that died mid-operation left its intent in the lock: finish it now.
        fs.names.wait_quiet()?;
        Ok(fs)
    }

    pub fn keys(&self) -> &KeyLayout {
        &self.tree.keys
    }

    pub fn store(&self) -> &S {
        self.tree.store.inner()
    }

    /// This mount's id (its liveness key is `PREFIX%alive.<id>`).
    pub fn mount_id(&self) -> &str {
        &self.tree.mount_id
    }

    /// What this mount has done so far, for its metrics.
    pub fn activity(&self) -> crate::activity::ActivitySnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let (cache_hits, cache_misses) = self.names.cache_hits_and_misses();
        let (open_files, open_handles) = self.files.open_files.counts();
        crate::activity::ActivitySnapshot {
            files_published: self.tree.activity.files_published.load(Relaxed),
            bytes_published: self.tree.activity.bytes_published.load(Relaxed),
            cache_hits,
            cache_misses,
            open_files: open_files as u64,
            open_handles: open_handles as u64,
            store_id: self.tree.store_id.clone(),
        }
    }

    // ----- names (`crate::namespace`) ---------------------------------------------------

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        self.names.lookup(parent, name)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.names.getattr(ino)
    }

    /// Attributes of many inodes at once, each with the kind its listing gave it (`None`
    /// for one whose record is gone).
    pub fn getattr_many(&self, listed: &[(u64, Kind)]) -> FsResult<Vec<Option<Attr>>> {
        self.names.getattr_many(listed)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32) -> FsResult<Attr> {
        self.names.mkdir(parent, name, mode, uid, gid)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.names.symlink(parent, name, target, uid, gid)
    }

    #[allow(clippy::too_many_arguments)] // mknod(2)'s arguments, and the caller's ids
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.names.mknod(parent, name, kind, mode, rdev, uid, gid)
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.names.readlink(ino)
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        self.names.link(ino, newparent, newname)
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.names.unlink(parent, name)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.names.rmdir(parent, name)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.names.rename(parent, name, newparent, newname, flags)
    }

    pub fn readdir(&self, dir: u64) -> FsResult<Vec<DirEntry>> {
        self.names.readdir(dir)
    }

    /// A directory's live names (name -> inode and kind), replayed from its log.
    pub fn list_dir(&self, dir: u64) -> FsResult<Listing> {
        self.names.list_dir(dir)
    }

    /// `dir/name` as a path for messages (a placeholder when the directory's path is unknown).
    pub fn path_of(&self, dir: u64, name: &[u8]) -> String {
        self.names.path_of(dir, name)
    }

    /// Rewrites `dir`'s log as its live names (`force`: even when not worth it). Returns
    /// the records dropped.
    pub fn compact_dir(&self, dir: u64, force: bool) -> FsResult<usize> {
        self.names.compact_dir(dir, force)
    }

    /// Compacts every directory's log worth it: (inode, path, records dropped) of each.
    pub fn compact_all(&self) -> FsResult<Vec<(u64, Vec<u8>, usize)>> {
        self.names.compact_all()
    }

    // ----- files (`crate::files`) ---------------------------------------------------------

    /// Creates `files` in `parent`, each whole (bytes and attributes) or not at all. One
    /// result per file, in order: its inode, or why it was not created (EEXIST when the name
    /// is taken, EFBIG, ENAMETOOLONG, ENOENT when the directory went meanwhile, a store
    /// error ...). Fails as a whole when the directory cannot be found, or its path once the
    /// files are made (they are then made but empty).
    pub fn create_files(&self, parent: u64, files: Vec<NewFile>) -> FsResult<Vec<FsResult<u64>>> {
        self.files.create_files(parent, files)
    }

    /// Creates and opens a regular file: O_EXCL semantics come from the atomic entry claim.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, u64)> {
        self.files.create(parent, name, mode, flags, uid, gid)
    }

    pub fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        self.files.open(ino, flags)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.files.read(fh, offset, size)
    }

    /// Writes at `offset` (at the end for O_APPEND). `kill_suidgid`: the kernel asks us to drop
    /// set-user/group-ID bits, as for a write by an unprivileged user (FUSE_HANDLE_KILLPRIV_V2).
    pub fn write(&self, fh: u64, offset: u64, bytes: &[u8], kill_suidgid: bool) -> FsResult<u32> {
        self.files.write(fh, offset, bytes, kill_suidgid)
    }

    pub fn flush(&self, fh: u64) -> FsResult<()> {
        self.files.flush(fh)
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        self.files.release(fh)
    }

    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        self.files.fsync(fh)
    }

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        self.files.setattr(ino, set)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.files.getxattr(ino, name)
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        self.files.listxattr(ino)
    }

    /// `flags`: XATTR_CREATE (1) fails if present, XATTR_REPLACE (2) fails if absent.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        self.files.setxattr(ino, name, value, flags)
    }

    /// A POSIX access ACL that only says what the mode says, set as the chmod it stands for
    /// by caller `uid`/`gid`; `None` for any other ACL (see `files::xattr`).
    pub fn set_access_acl(
        &self,
        ino: u64,
        value: &[u8],
        uid: u32,
        gid: u32,
    ) -> Option<FsResult<()>> {
        self.files.set_access_acl(ino, value, uid, gid)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.files.removexattr(ino, name)
    }

    // ----- file locks (`crate::locks`) ---------------------------------------------------

    /// Tries once to take a lock. `Ok(Ok(changed))` when granted: `changed` tells that
    /// another mount published the file since this mount read it (the kernel's cached pages
    /// and attributes of it are stale). `Ok(Err(holder))` when a live owner's lock is in the
    /// way.
    pub fn try_lock(&self, ino: u64, req: &LockRequest) -> FsResult<Result<bool, Holder>> {
        self.locks.try_lock(ino, req, &|record| {
            self.files.pages_stale_after_grant(ino, record)
        })
    }

    /// Takes the lock, waiting as long as it takes while thread `tid` (the caller, as the
    /// kernel names it; 0: unknown) has no signal pending. Granted: whether the file changed
    /// (as [`MemFs::try_lock`]).
    pub fn lock_wait(&self, ino: u64, req: &LockRequest, tid: u32) -> FsResult<bool> {
        self.locks.lock_wait(ino, req, tid, &|record| {
            self.files.pages_stale_after_grant(ino, record)
        })
    }

    /// `F_GETLK`: the first live lock of another owner in the way of `req`, if any.
    pub fn test_lock(&self, ino: u64, req: &LockRequest) -> FsResult<Option<Holder>> {
        self.locks.test_lock(ino, req)
    }

    /// `F_UNLCK` of a range through handle `fh`: publishes the file's pending writes first,
    /// so the next holder on any mount reads them, then cuts the range out of the owner's
    /// locks.
    pub fn unlock(&self, fh: u64, ino: u64, owner: u64, start: u64, end: u64) -> FsResult<()> {
        self.files.flush(fh)?;
        self.locks.unlock(ino, owner, start, end)
    }

    /// Releases every lock `owner` holds on `ino` (a close: the kernel's FLUSH for POSIX
    /// locks). Costs nothing unless this mount knows the owner locked the file. A failure
    /// is kept for the heartbeat to retry (the lock must not stay held by a live mount).
    pub fn release_locks(&self, ino: u64, owner: u64) -> FsResult<()> {
        self.locks.release_locks(ino, owner)
    }

    /// The last close of handle `fh` (the kernel's RELEASE): releases the locks of every
    /// owner that locked through it (its flock and OFD locks; POSIX locks of processes went
    /// with their FLUSH already), and `flock_owner`'s.
    pub fn release_handle_locks(
        &self,
        fh: u64,
        ino: u64,
        flock_owner: Option<u64>,
    ) -> FsResult<()> {
        self.locks.release_handle_locks(fh, ino, flock_owner)
    }

    // ----- check and repair (`crate::check`) -----------------------------------------------

    /// Repairs the store this mount works on. The caller keeps the mount's heartbeat going
    /// (a repair of a large store can outlast the liveness key).
    pub fn repair(&self) -> FsResult<RepairReport> {
        self.repair_with(CheckOptions::default())
    }

    /// As [`MemFs::repair`], with the checks `options` asks for (`--verify`).
    pub fn repair_with(&self, options: CheckOptions) -> FsResult<RepairReport> {
        crate::check::repair::repair(&self.names, options)
    }

    // ----- the heartbeat ------------------------------------------------------------------

    /// Refreshes this mount's liveness key and checks that the store is still the one it
    /// mounted, then does the mount's background work (keys left behind, intents to
    /// complete, logs to compact). Call every few seconds (the session runs a thread for it).
    pub fn heartbeat(&self) -> FsResult<()> {
        self.refresh_liveness()?;
        self.background_work()
    }

    /// Only the liveness refresh and the store check of [`Self::heartbeat`]: it never waits
    /// for the namespace lock, so a thread of its own keeps the mount alive while the
    /// background work waits behind a long operation of this mount (the lock's holder stops
    /// sending once the liveness is stale: `lock_lease`).
    pub fn refresh_liveness(&self) -> FsResult<()> {
        // A lapse of the liveness key may have cost this mount's file locks.
        self.maintenance
            .refresh_liveness(|was_alive| self.locks.note_liveness(was_alive))
    }

    /// Says that [`Self::heartbeat`] now runs every few seconds: from then on, a thread
    /// holding the namespace lock stops sending once the last refresh is older than
    /// [`crate::FsConfig::stall_limit`] (`lock_lease`: a mount that stalled past its
    /// liveness may have lost the lock to another mount).
    pub fn arm_stall_fence(&self) {
        self.maintenance.arm_stall_fence();
    }

    /// The background work of [`Self::heartbeat`].
    fn background_work(&self) -> FsResult<()> {
        // Data keys at paths renames took away, whose deletion failed.
        let stale = self.maintenance.take_stale_keys();
        if !stale.is_empty() {
            self.names.delete_keys_outside_tree(&stale)?;
        }
        // Creates a store error left unfinished (their directory may have gone meanwhile);
        // the steps below do not wait for them.
        let unsettled = self.names.settle_unsettled();
        // An operation whose intent is kept here without the lock: take it again to complete it.
        self.names.complete_orphaned_intent()?;
        // File lock releases that failed (a lock must not stay held by a live mount).
        self.locks.retry_lock_releases();
        // Directory logs that listings found long.
        let compacted = self.names.compact_wanted();
        // Last, as the steps above may leave it: the lock this mount still holds after an
        // operation failed midway (or its release failed).
        self.names.forget_released_leftovers()?;
        compacted.and(unsettled)
    }

    // ----- whole filesystem ----------------------------------------------------------------

    pub fn statfs(&self) -> FsResult<StatFs> {
        const BLOCK: u64 = 4096;
        let key = self.tree.keys.inode_count();
        let files = self
            .tree
            .store
            .get_at(&key)?
            .and_then(|i| std::str::from_utf8(&i.value).ok()?.trim().parse().ok())
            .unwrap_or(0u64);
        let (blocks, free) = match self.tree.store.capacity() {
            Some(c) => (
                c.limit_bytes / BLOCK,
                c.limit_bytes.saturating_sub(c.used_bytes) / BLOCK,
            ),
            None => (0, 0),
        };
        Ok(StatFs {
            block_size: BLOCK as u32,
            blocks,
            blocks_free: free,
            files,
            files_free: free.max(1_000_000),
        })
    }
}
