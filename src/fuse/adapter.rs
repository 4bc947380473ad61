//! FUSE glue: translates kernel requests into `memfis_fs::MemFs` calls and results back into
//! replies. No filesystem semantics live here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents,
    PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen,
    ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use memfis_fs::files::xattr::ACCESS_ACL;
use memfis_fs::limited_warn;
use memfis_fs::locks::LockRequest;
use memfis_fs::{Attr, DirEntry, FsError, Kind, MemFs, SetAttr, Time};
use memfis_memcache::Store;
use tracing::debug;

use crate::fuse::node_ids::NodeIds;
use crate::service::metrics::fuse_ops::{FUSE_OPS, Op};

/// How soon after an open answered ESTALE the same thread's next open counts as the
/// kernel's retry of it (which follows at once; a lookup that misses in between may be one
/// of the retry's two, so it does not end the retry).
const STALE_RETRY_WINDOW: Duration = Duration::from_millis(250);

pub struct FuseFs<S: Store> {
    fs: std::sync::Arc<MemFs<S>>,
    /// Kernel entry and attribute cache lifetime.
    ttl: Duration,
    /// Directory listings taken at opendir, served by offset.
    dirs: Mutex<HashMap<u64, Vec<DirEntry>>>,
    next_dir_fh: AtomicU64,
    /// The kernel's node ids and the inodes they stand for (`node_ids.rs`).
    ids: NodeIds,
    /// Threads whose open this mount answered ESTALE (a removed inode), and when: the
    /// kernel retries that open once, and a second miss is answered ENOENT (see `open`).
    stale_opens: Mutex<HashMap<u32, Instant>>,
    /// Where invalidations go, once the session exists (the filesystem is built before it).
    notifier: std::sync::Arc<std::sync::OnceLock<fuser::Notifier>>,
}

impl<S: Store> FuseFs<S> {
    pub fn new(
        fs: std::sync::Arc<MemFs<S>>,
        ttl: Duration,
        notifier: std::sync::Arc<std::sync::OnceLock<fuser::Notifier>>,
    ) -> Self {
        FuseFs {
            fs,
            ttl,
            dirs: Mutex::new(HashMap::new()),
            next_dir_fh: AtomicU64::new(1),
            ids: NodeIds::new(),
            stale_opens: Mutex::new(HashMap::new()),
            notifier,
        }
    }
}

impl<S: Store> FuseFs<S> {
    /// A node id of the kernel's as the inode it stands for.
    fn node(&self, nodeid: INodeNo) -> INodeNo {
        INodeNo(self.ids.ino(nodeid.0))
    }

    /// Adds `page`'s entries with their attributes to a readdirplus reply: whether the reply
    /// is full (the entry that did not fit was not sent), and whether any entry went in.
    fn add_entries_plus(
        &self,
        ino_node: INodeNo,
        page: &[(usize, DirEntry)],
        attrs: Vec<Option<Attr>>,
        reply: &mut ReplyDirectoryPlus,
    ) -> (bool, bool) {
        let mut added = false;
        for ((i, e), attr) in page.iter().zip(attrs) {
            let Some(attr) = attr else { continue }; // removed since opendir
            // The kernel links every entry but `.` and `..`, as a lookup would.
            let linked = attr.kind == Kind::Dir && e.name != b"." && e.name != b"..";
            let nodeid = match linked {
                true => self.ids.choose(e.ino, ino_node.0, &e.name),
                false => e.ino,
            };
            if reply.add(
                INodeNo(nodeid),
                *i as u64 + 1,
                OsStr::from_bytes(&e.name),
                &self.ttl,
                &to_fuse(&attr),
                Generation(0),
            ) {
                return (true, added); // this entry was not sent
            }
            added = true;
            if linked {
                self.ids.given(nodeid, e.ino, ino_node.0, &e.name);
            }
        }
        (false, added)
    }

    /// ESTALE, which has the kernel look the path up again and retry the call once; or,
    /// when this thread's call is that retry and it misses again, `second` (ESTALE would
    /// then reach the caller, which a local filesystem never answers).
    fn stale_once(&self, req: &Request, second: Errno) -> Errno {
        let mut stale = self.stale_opens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if stale.len() > 4096 {
            stale.retain(|_, at| now.duration_since(*at) < STALE_RETRY_WINDOW);
        }
        match stale.remove(&req.pid()) {
            Some(at) if now.duration_since(at) < STALE_RETRY_WINDOW => second,
            _ => {
                stale.insert(req.pid(), now);
                Errno::from_i32(libc::ESTALE)
            }
        }
    }

    /// The answer to an open of an inode another mount removed since this kernel looked
    /// its name up: ESTALE, so the kernel looks the name up again and retries (an `O_CREAT`
    /// then creates the file, as on a local filesystem). When the retry misses too (the
    /// name's next file removed in between), ENOENT, as if the open came after the removal.
    fn removed_on_open(&self, req: &Request) -> Errno {
        self.stale_once(req, Errno::ENOENT)
    }

    /// The kernel's retry of an open this thread was answered ESTALE for is over (an open or
    /// create went through).
    fn open_went_through(&self, req: &Request) {
        let mut stale = self.stale_opens.lock().unwrap_or_else(|p| p.into_inner());
        if !stale.is_empty() {
            stale.remove(&req.pid());
        }
    }

    fn notifier(&self) -> Option<fuser::Notifier> {
        self.notifier.get().cloned()
    }

    fn reply_entry(
        &self,
        reply: ReplyEntry,
        op: Op,
        what: &dyn std::fmt::Debug,
        result: Result<Attr, FsError>,
    ) {
        match result {
            Ok(a) => reply.entry(&self.ttl, &to_fuse(&a), Generation(0)),
            Err(e) => reply.error(errno(op, what, e)),
        }
    }
}

impl<S: Store> FuseFs<S> {
    /// An open with O_TRUNC by a caller without CAP_FSETID drops set-ID bits, as truncate
    /// does (fuser does not pass the kernel's FUSE_OPEN_KILL_SUIDGID).
    fn drop_setid_after_truncate(&self, ino: u64) {
        if self.fs.getattr(ino).is_ok_and(|a| a.mode & 0o6000 != 0) {
            let set = SetAttr {
                size: Some(0),
                kill_suidgid: true,
                ..SetAttr::default()
            };
            if let Err(e) = self.fs.setattr(ino, &set) {
                let kind = format!("drop set-ID bits: {}", e.kind());
                limited_warn!(
                    kind,
                    "could not drop set-ID bits after O_TRUNC: inode {ino}: {e}"
                );
            }
        }
    }
}

fn reply_empty(reply: ReplyEmpty, op: Op, what: &dyn std::fmt::Debug, result: Result<(), FsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, what, e)),
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn to_fuse(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.ctime.into(),
        kind: file_type(a.kind),
        perm: a.mode as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn time_of(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::SpecificTime(t) => Time::from(t),
        TimeOrNow::Now => Time::now(),
    }
}

/// Names entry `name` of directory `parent` by its path in log lines; the path is only
/// worked out when a line is actually written.
struct PathOf<'a, S: Store>(&'a MemFs<S>, INodeNo, &'a OsStr);

impl<S: Store> std::fmt::Debug for PathOf<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0.path_of(self.1.0, self.2.as_bytes()))
    }
}

/// Turns an error into an errno, logging the ones that mean the store misbehaved: one line a
/// second per operation, errno and kind of trouble (`memfis_fs::log_limit`), so an outage
/// failing every request writes a few lines, not thousands.
fn errno(op: Op, what: &dyn std::fmt::Debug, e: FsError) -> Errno {
    let op_name = op.name();
    if e.is_fault() {
        let errno_name = match e.errno() {
            libc::EIO => "EIO",
            libc::ENOSPC => "ENOSPC",
            libc::EFBIG => "EFBIG",
            _ => "error",
        };
        let kind = format!("{op_name} {errno_name}: {}", e.kind());
        limited_warn!(kind, "{op_name} {what:?}: {e}");
    } else {
        debug!("{op_name} {what:?}: {e}");
    }
    FUSE_OPS.error(op, e.errno());
    Errno::from_i32(e.errno())
}

impl<S: Store + 'static> Filesystem for FuseFs<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // HANDLE_KILLPRIV_V2: we drop set-ID bits on write ourselves, so the kernel stops
        // asking for security.capability before every write (one request less per write).
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            // File locks go to the store (`memfis_fs::locks`), so they hold across mounts.
            | InitFlags::FUSE_POSIX_LOCKS
            | InitFlags::FUSE_FLOCK_LOCKS;
        if let Err(missing) = config.add_capabilities(wanted) {
            debug!("kernel lacks capabilities {missing:?}");
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ids.forget(ino.0, nlookup);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent_node = parent;
        let parent = self.node(parent);
        FUSE_OPS.call(Op::Lookup);
        match self.fs.lookup(parent.0, name.as_bytes()) {
            Ok(a) if a.kind == Kind::Dir => {
                let nodeid = self.ids.dir_entry(a.ino, parent_node.0, name.as_bytes());
                reply.entry_with_nodeid(&self.ttl, INodeNo(nodeid), &to_fuse(&a), Generation(0))
            }
            found => self.reply_entry(reply, Op::Lookup, &PathOf(&self.fs, parent, name), found),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Getattr);
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &to_fuse(&a)),
            Err(e) => reply.error(errno(Op::Getattr, &ino, e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Setattr);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_of),
            mtime: mtime.map(time_of),
            // fuser does not pass the kernel's FATTR_KILL_SUIDGID: decide as the kernel does,
            // with root standing for CAP_FSETID.
            kill_suidgid: req.uid() != 0,
        };
        match self.fs.setattr(ino.0, &set) {
            Ok(a) => reply.attr(&self.ttl, &to_fuse(&a)),
            Err(e) => reply.error(errno(Op::Setattr, &ino, e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Readlink);
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(Op::Readlink, &ino, e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let parent = self.node(parent);
        FUSE_OPS.call(Op::Mknod);
        let created = match Kind::from_mode(mode) {
            Some(Kind::File) => self
                .fs
                .create(
                    parent.0,
                    name.as_bytes(),
                    mode,
                    libc::O_WRONLY,
                    req.uid(),
                    req.gid(),
                )
                .and_then(|(a, fh)| self.fs.release(fh).map(|_| a)),
            Some(kind) if kind.is_special() => self.fs.mknod(
                parent.0,
                name.as_bytes(),
                kind,
                mode,
                u64::from(rdev),
                req.uid(),
                req.gid(),
            ),
            _ => Err(FsError::Invalid("mknod of a directory or symlink")),
        };
        match created {
            Ok(a) => reply.entry(&self.ttl, &to_fuse(&a), Generation(0)),
            Err(e) => reply.error(errno(Op::Mknod, &PathOf(&self.fs, parent, name), e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let parent_node = parent;
        let parent = self.node(parent);
        FUSE_OPS.call(Op::Mkdir);
        match self
            .fs
            .mkdir(parent.0, name.as_bytes(), mode, req.uid(), req.gid())
        {
            Ok(a) => {
                // A new directory: the kernel holds it nowhere else, so its own number.
                let nodeid = self.ids.dir_entry(a.ino, parent_node.0, name.as_bytes());
                reply.entry_with_nodeid(&self.ttl, INodeNo(nodeid), &to_fuse(&a), Generation(0))
            }
            Err(e) => reply.error(errno(Op::Mkdir, &PathOf(&self.fs, parent, name), e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let parent = self.node(parent);
        FUSE_OPS.call(Op::Unlink);
        reply_empty(
            reply,
            Op::Unlink,
            &PathOf(&self.fs, parent, name),
            self.fs.unlink(parent.0, name.as_bytes()),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let parent = self.node(parent);
        FUSE_OPS.call(Op::Rmdir);
        reply_empty(
            reply,
            Op::Rmdir,
            &PathOf(&self.fs, parent, name),
            self.fs.rmdir(parent.0, name.as_bytes()),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let parent = self.node(parent);
        FUSE_OPS.call(Op::Symlink);
        self.reply_entry(
            reply,
            Op::Symlink,
            &PathOf(&self.fs, parent, link_name),
            self.fs.symlink(
                parent.0,
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
                req.uid(),
                req.gid(),
            ),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let parent_node = parent;
        let parent = self.node(parent);
        let newparent_node = newparent;
        let newparent = self.node(newparent);
        FUSE_OPS.call(Op::Rename);
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        let flags = memfis_fs::RenameFlags {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        reply_empty(
            reply,
            Op::Rename,
            &(
                PathOf(&self.fs, parent, name),
                PathOf(&self.fs, newparent, newname),
            ),
            self.fs
                .rename(
                    parent.0,
                    name.as_bytes(),
                    newparent.0,
                    newname.as_bytes(),
                    flags,
                )
                .inspect(|()| {
                    // The kernel moves its dentries itself: keep the places in step.
                    self.ids.renamed(
                        parent_node.0,
                        name.as_bytes(),
                        newparent_node.0,
                        newname.as_bytes(),
                        flags.exchange,
                    )
                }),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let ino = self.node(ino);
        let newparent = self.node(newparent);
        FUSE_OPS.call(Op::Link);
        self.reply_entry(
            reply,
            Op::Link,
            &PathOf(&self.fs, newparent, newname),
            self.fs.link(ino.0, newparent.0, newname.as_bytes()),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Open);
        match self.fs.open(ino.0, flags.0) {
            Ok(fh) => {
                self.open_went_through(req);
                if flags.0 & libc::O_TRUNC != 0 && req.uid() != 0 {
                    self.drop_setid_after_truncate(ino.0);
                }
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(memfis_fs::FsError::NotFound) => reply.error(self.removed_on_open(req)),
            Err(e) => reply.error(errno(Op::Open, &ino, e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Read);
        match self.fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(Op::Read, &ino, e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Write);
        let kill_suidgid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.fs.write(fh.0, offset, data, kill_suidgid) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(Op::Write, &ino, e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Flush);
        // A close: publish, then release the closing process's POSIX locks on the file.
        let result = self.fs.flush(fh.0);
        let released = self.fs.release_locks(ino.0, lock_owner.0);
        reply_empty(reply, Op::Flush, &ino, result.and(released));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Release);
        // The last close of an open file: publish, then release its flock and OFD locks.
        let result = self.fs.release(fh.0);
        let released = self
            .fs
            .release_handle_locks(fh.0, ino.0, lock_owner.map(|o| o.0));
        reply_empty(reply, Op::Release, &ino, result.and(released));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Fsync);
        reply_empty(reply, Op::Fsync, &ino, self.fs.fsync(fh.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Opendir);
        match self.fs.readdir(ino.0) {
            Ok(mut entries) => {
                let dot = |name: &[u8]| DirEntry {
                    name: name.to_vec(),
                    ino: ino.0,
                    kind: Kind::Dir,
                };
                entries.splice(0..0, [dot(b"."), dot(b"..")]);
                let fh = self.next_dir_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(Op::Opendir, &ino, e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        FUSE_OPS.call(Op::Readdir);
        let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entries) = dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(e.ino),
                i as u64 + 1,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ino_node = ino;
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Readdirplus);
        // Attributes are fetched a page at a time, one pipelined batch per page, until the
        // reply is full. (How many entries a reply holds depends on the kernel: about 25 in
        // 4 KB, hundreds where it offers more; the rest of the last page is read again by the
        // next call.)
        const PAGE: usize = 128;
        let mut next = offset as usize;
        let mut sent_any = false;
        loop {
            let page: Vec<(usize, DirEntry)> = {
                let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
                let Some(entries) = dirs.get(&fh.0) else {
                    reply.error(Errno::EBADF);
                    return;
                };
                entries
                    .iter()
                    .cloned()
                    .enumerate()
                    .skip(next)
                    .take(PAGE)
                    .collect()
            };
            if page.is_empty() {
                break;
            }
            let listed: Vec<(u64, Kind)> = page.iter().map(|(_, e)| (e.ino, e.kind)).collect();
            let attrs = match self.fs.getattr_many(&listed) {
                Ok(a) => a,
                // Entries sent already go out; the next call starts at the failed page and
                // gets the error then. (An empty reply would end the listing.)
                Err(e) if sent_any => {
                    debug!("readdirplus {ino:?}: a later page failed: {e}");
                    break;
                }
                Err(e) => {
                    reply.error(errno(Op::Readdirplus, &ino, e));
                    return;
                }
            };
            let (full, added) = self.add_entries_plus(ino_node, &page, attrs, &mut reply);
            sent_any |= added;
            if full {
                break;
            }
            next += page.len();
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        FUSE_OPS.call(Op::Releasedir);
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        FUSE_OPS.call(Op::Fsyncdir);
        reply.ok(); // directory changes are in the store when the call returns
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        FUSE_OPS.call(Op::Statfs);
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_free,
                s.files,
                s.files_free,
                s.block_size,
                255,
                s.block_size,
            ),
            Err(e) => reply.error(errno(Op::Statfs, &"/", e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let node = ino;
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Setxattr);
        // `cp -a` and `rsync -A` set the ACL of every file; one that only says what the mode
        // says is a chmod, as on ext4 (else they chmod after the ACL is refused: one more
        // request a file).
        if name.as_bytes() == ACCESS_ACL
            && let Some(result) = self.fs.set_access_acl(ino.0, value, req.uid(), req.gid())
        {
            if result.is_ok()
                && let Some(notifier) = self.notifier()
            {
                // The kernel does not know an ACL changed the mode: its cached attributes
                // go, or it would grant access by the old mode until they expire. (Offset
                // -1: attributes only, no pages, so nothing this request holds is waited on.)
                if let Err(e) = notifier.inval_inode(node, -1, 0) {
                    debug!("dropping cached attributes of inode {}: {e}", ino.0);
                }
            }
            return reply_empty(reply, Op::Setxattr, &name, result);
        }
        reply_empty(
            reply,
            Op::Setxattr,
            &name,
            self.fs.setxattr(ino.0, name.as_bytes(), value, flags),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Getxattr);
        match self.fs.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => sized_reply(reply, &v, size),
            Err(e) => reply.error(errno(Op::Getxattr, &name, e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Listxattr);
        match self.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                sized_reply(reply, &buf, size);
            }
            Err(e) => reply.error(errno(Op::Listxattr, &ino, e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Removexattr);
        reply_empty(
            reply,
            Op::Removexattr,
            &name,
            self.fs.removexattr(ino.0, name.as_bytes()),
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        FUSE_OPS.call(Op::Access);
        reply.ok(); // permission bits are checked by the kernel (default_permissions)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let parent = self.node(parent);
        FUSE_OPS.call(Op::Create);
        match self
            .fs
            .create(parent.0, name.as_bytes(), mode, flags, req.uid(), req.gid())
        {
            Ok((a, fh)) => {
                self.open_went_through(req);
                reply.created(
                    &self.ttl,
                    &to_fuse(&a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            // A name another mount made a symlink (or a FIFO, a device) meanwhile: the
            // kernel's retry follows or opens it. When the retry meets another such change,
            // ELOOP: the name kept turning into links under the call.
            Err(FsError::Stale) => reply.error(self.stale_once(req, Errno::from_i32(libc::ELOOP))),
            Err(e) => reply.error(errno(Op::Create, &PathOf(&self.fs, parent, name), e)),
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Getlk);
        let asked = lock_request(fh, lock_owner, start, end, typ, pid);
        match self.fs.test_lock(ino.0, &asked) {
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Ok(Some(h)) => reply.locked(h.start, h.end, lock_type(h.write), h.pid),
            Err(e) => reply.error(errno(Op::Getlk, &ino, e)),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.node(ino);
        FUSE_OPS.call(Op::Setlk);
        if typ == libc::F_UNLCK {
            let result = self.fs.unlock(fh.0, ino.0, lock_owner.0, start, end);
            return reply_empty(reply, Op::Setlk, &ino, result);
        }
        let asked = lock_request(fh, lock_owner, start, end, typ, pid);
        match self.fs.try_lock(ino.0, &asked) {
            Ok(Ok(changed)) => {
                self.drop_cached_pages(ino, changed);
                reply.ok();
            }
            Ok(Err(_)) if !sleep => reply.error(Errno::EAGAIN),
            Ok(Err(_)) => {
                // Wait on a thread of its own: a waiter must not hold a request thread (the
                // holder's unlock may need it).
                let fs = self.fs.clone();
                let notifier = self.notifier();
                let tid = req.pid();
                let waiter = std::thread::Builder::new()
                    .name("memfis-lockwait".into())
                    .spawn(move || match fs.lock_wait(ino.0, &asked, tid) {
                        Ok(changed) => {
                            drop_cached_pages(notifier, ino, changed);
                            reply.ok();
                        }
                        Err(e) => reply.error(errno(Op::Setlk, &ino, e)),
                    });
                if let Err(e) = waiter {
                    limited_warn!("lock wait thread", "cannot start a lock wait thread: {e}");
                }
            }
            Err(e) => reply.error(errno(Op::Setlk, &ino, e)),
        }
    }

    // What a local filesystem without these features answers. ENOSYS where the kernel
    // then stops asking and does the work itself: poll (a regular file is always ready),
    // fallocate (EOPNOTSUPP to the caller), SEEK_DATA/SEEK_HOLE (the whole file is data),
    // copy_file_range (copied through read and write). bmap is only sent to filesystems on a block device.

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No ioctl applies to a memfis file; ENOTTY as for TCGETS on a regular file.
        reply.error(unsupported(Op::Ioctl, Errno::ENOTTY));
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(unsupported(Op::Poll, Errno::ENOSYS));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(unsupported(Op::Fallocate, Errno::ENOSYS));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        reply.error(unsupported(Op::Lseek, Errno::ENOSYS));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(unsupported(Op::CopyFileRange, Errno::ENOSYS));
    }
}

impl<S: Store> FuseFs<S> {
    fn drop_cached_pages(&self, ino: INodeNo, changed: bool) {
        drop_cached_pages(self.notifier(), ino, changed);
    }
}

/// A lock was granted on a file another mount changed since this mount read it: the
/// kernel's cached pages and attributes of it are dropped, so reads under the lock see the
/// last holder's writes. On a thread of its own, waited for briefly: the kernel may wait for
/// a page a read in progress holds, and that read needs a request thread.
fn drop_cached_pages(notifier: Option<fuser::Notifier>, ino: INodeNo, changed: bool) {
    let Some(notifier) = notifier.filter(|_| changed) else {
        return;
    };
    let (done, wait) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("memfis-inval".into())
        .spawn(move || {
            if let Err(e) = notifier.inval_inode(ino, 0, 0) {
                debug!("dropping cached pages of inode {}: {e}", ino.0);
            }
            let _ = done.send(());
        });
    if spawned.is_ok() {
        let _ = wait.recv_timeout(Duration::from_millis(500));
    }
}

/// A lock request as the kernel sends it (`typ` F_RDLCK or F_WRLCK).
fn lock_request(
    fh: FileHandle,
    owner: LockOwner,
    start: u64,
    end: u64,
    typ: i32,
    pid: u32,
) -> LockRequest {
    LockRequest {
        owner: owner.0,
        fh: fh.0,
        pid,
        write: typ == libc::F_WRLCK,
        start,
        end: end.min(memfis_fs::locks::OFFSET_MAX),
    }
}

fn lock_type(write: bool) -> i32 {
    if write { libc::F_WRLCK } else { libc::F_RDLCK }
}

/// Answers a request memfis has no use for with `errno`, quietly: fuser's defaults log a
/// warning for each, and the kernel sends some of them all the time (TCGETS on every open
/// by Python).
fn unsupported(op: Op, errno: Errno) -> Errno {
    FUSE_OPS.call(op);
    FUSE_OPS.error(op, errno.code());
    errno
}

/// xattr replies: size 0 asks for the length; a smaller buffer is ERANGE.
fn sized_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
