//! Open files. All handles of one inode in this mount share one [`OpenFile`]: a buffer of
//! the whole file plus attribute changes not yet published. The buffer is published whole to
//! every data key of the file at flush/fsync/release (store contract §4), so readers (nginx,
//! other mounts) see the old bytes or the new, never a mix.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use memfis_memcache::command::Value;
use memfis_memcache::{CmdResult, Command, Reply, Store, StoreOp};
use tracing::warn;

use crate::dirlog::Op;
use crate::fs::{Attr, MemFs, SetAttr, lock};
use crate::record::{Inode, Kind, Link, Time};
use crate::{FsError, FsResult};

/// One open() of a file.
#[derive(Debug, Clone)]
pub struct Handle {
    pub ino: u64,
    pub write: bool,
    pub append: bool,
    pub file: Arc<Mutex<OpenFile>>,
}

/// Attribute changes made through an open file, applied over the stored record at publish.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub set: SetAttr,
    pub ctime: Option<Time>,
}

impl Pending {
    pub fn apply(&mut self, set: &SetAttr) {
        let p = &mut self.set;
        p.mode = set.mode.or(p.mode);
        p.uid = set.uid.or(p.uid);
        p.gid = set.gid.or(p.gid);
        p.atime = set.atime.or(p.atime);
        p.mtime = set.mtime.or(p.mtime);
        self.ctime = Some(Time::now());
    }

    fn is_empty(&self) -> bool {
        let p = &self.set;
        p.mode.is_none()
            && p.uid.is_none()
            && p.gid.is_none()
            && p.atime.is_none()
            && p.mtime.is_none()
            && self.ctime.is_none()
    }

    fn apply_to(&self, rec: &mut Inode) {
        let p = &self.set;
        if let Some(m) = p.mode {
            rec.mode = m & 0o7777;
        }
        if let Some(u) = p.uid {
            rec.uid = u;
        }
        if let Some(g) = p.gid {
            rec.gid = g;
        }
        if let Some(t) = p.atime {
            rec.atime = t;
        }
        if let Some(t) = p.mtime {
            rec.mtime = t;
        }
        if let Some(t) = self.ctime {
            rec.ctime = t;
        }
    }
}

#[derive(Debug)]
pub struct OpenFile {
    /// The record as last read from or written to the store.
    pub record: Inode,
    /// cas token of `record`; `None` when unknown (re-read before publishing).
    pub cas: Option<u64>,
    /// The file's bytes, once read (or written).
    pub data: Option<Value>,
    pub data_dirty: bool,
    pub pending: Pending,
    pub handles: u32,
    pub writers: u32,
    /// The last name is gone: keep serving holders, publish nothing.
    pub unlinked: bool,
    /// Created here and its log record not yet appended: that rides with the first publish,
    /// saving `create` a round trip. Until then other mounts can look the name up but not
    /// list it.
    pub pending_entry: Option<PendingEntry>,
}

/// The parent-log record a create still owes.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    pub parent: u64,
    pub name: Vec<u8>,
    /// Its sequence number in the parent's log.
    pub seq: u64,
    pub data_key: Vec<u8>,
}

impl OpenFile {
    fn new(record: Inode, cas: Option<u64>) -> OpenFile {
        OpenFile {
            record,
            cas,
            data: None,
            data_dirty: false,
            pending: Pending::default(),
            handles: 0,
            writers: 0,
            unlinked: false,
            pending_entry: None,
        }
    }

    /// The record as this mount sees it: stored record, pending changes, buffered size.
    pub fn view(&self) -> Inode {
        let mut rec = self.record.clone();
        self.pending.apply_to(&mut rec);
        if let Some(d) = &self.data {
            rec.size = d.len() as u64;
        }
        rec
    }

    /// Takes a record this mount just stored (rename, link, xattr ...): its token is unknown.
    pub fn adopt_record(&mut self, rec: Inode) {
        self.record = rec;
        self.cas = None;
    }

    pub fn resize(&mut self, size: u64) {
        let data = self.data.get_or_insert_with(Value::default);
        Arc::make_mut(data).resize(size as usize, 0);
        self.data_dirty = true;
        self.touch_mtime();
    }

    fn touch_mtime(&mut self) {
        let now = Time::now();
        self.pending.set.mtime = Some(now);
        self.pending.ctime = Some(now);
    }

    fn is_dirty(&self) -> bool {
        self.data_dirty || !self.pending.is_empty()
    }
}

impl<S: Store> MemFs<S> {
    /// Registers a handle on `file`, whose `handles` count already includes it. The handle
    /// keeps its own reference: it never has to find the file in the table again.
    fn new_handle(&self, ino: u64, file: Arc<Mutex<OpenFile>>, flags: i32) -> u64 {
        let acc = flags & libc::O_ACCMODE;
        let handle = Handle {
            ino,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            file,
        };
        if handle.write {
            lock(&handle.file).writers += 1;
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, handle);
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Handle> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
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
        let rec = Inode::new(
            Kind::File,
            mode,
            uid,
            gid,
            vec![Link {
                parent,
                name: name.to_vec(),
            }],
        );
        let node = match self.claim_node(parent, name, rec) {
            Ok(node) => node,
            // O_CREAT without O_EXCL on a name that exists (perhaps made by another mount a
            // moment ago): open what is there.
            Err(FsError::Exists) if flags & libc::O_EXCL == 0 => {
                let ino = self.read_entry(parent, name)?.ino.ok_or(FsError::Busy)?;
                let fh = self.open(ino, flags)?;
                return Ok((self.getattr(ino)?, fh));
            }
            Err(e) => return Err(e),
        };
        let ino = node.ino;
        let mut of = OpenFile::new(node.rec, Some(node.cas));
        of.pending_entry = Some(PendingEntry {
            parent,
            name: name.to_vec(),
            seq: node.seq,
            data_key: node.data_key,
        });
        of.data = Some(Value::default());
        of.handles = 1;
        let attr = self.attr_from(ino, &of.view(), None);
        let of = Arc::new(Mutex::new(of));
        lock(&self.files).insert(ino, of.clone());
        Ok((attr, self.new_handle(ino, of, flags)))
    }

    pub fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        // Counted under the table lock, so a release racing with this open cannot drop it.
        let existing = lock(&self.files).get(&ino).cloned().inspect(|of| {
            lock(of).handles += 1;
        });
        let of = match existing {
            Some(of) => {
                let mut g = lock(&of);
                if !g.is_dirty() && g.writers == 0 && !g.unlinked {
                    // Close-to-open: a new open sees what other mounts closed since.
                    match self.read_inode(ino) {
                        Ok((rec, cas)) => {
                            g.adopt_record(rec);
                            g.cas = Some(cas);
                            g.data = None;
                        }
                        Err(e) => {
                            drop(g);
                            self.drop_handle_count(ino, &of, false);
                            return Err(e);
                        }
                    }
                }
                drop(g);
                of
            }
            None => {
                let (rec, cas) = self.read_inode(ino)?;
                match rec.kind {
                    Kind::Dir => return Err(FsError::IsDir),
                    Kind::Symlink => return Err(FsError::Invalid("open of a symlink")),
                    Kind::File => {}
                }
                let fresh = Arc::new(Mutex::new(OpenFile::new(rec, Some(cas))));
                let mut files = lock(&self.files);
                let of = files.entry(ino).or_insert(fresh).clone();
                lock(&of).handles += 1;
                of
            }
        };
        let writable = matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR);
        if writable && flags & libc::O_TRUNC != 0 {
            let mut g = lock(&of);
            g.data = Some(Value::default());
            g.data_dirty = true;
            g.touch_mtime();
        }
        Ok(self.new_handle(ino, of, flags))
    }

    /// Takes one handle off `of`; the last one takes the file out of the table.
    fn drop_handle_count(&self, ino: u64, of: &Arc<Mutex<OpenFile>>, writer: bool) {
        {
            let mut g = lock(of);
            g.handles -= 1;
            if writer {
                g.writers -= 1;
            }
        }
        let mut files = lock(&self.files);
        if files.get(&ino).is_some_and(|f| Arc::ptr_eq(f, of)) && lock(of).handles == 0 {
            files.remove(&ino);
        }
    }

    /// Loads the file's bytes into the buffer if not there yet.
    pub(crate) fn ensure_loaded(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        if of.data.is_some() {
            return Ok(());
        }
        let rec = of.record.clone();
        let data = match rec.links.first() {
            Some(link) => self.read_data(&self.keys.data(&self.link_path(link)?), rec.size)?,
            None => return Err(FsError::missing(&self.keys.inode(ino))),
        };
        of.data = Some(Arc::new(data));
        Ok(())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.handle(fh)?;
        let mut of = lock(&h.file);
        self.ensure_loaded(h.ino, &mut of)?;
        let data: &[u8] = of.data.as_deref().map_or(&[], |d| d);
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }

    /// Writes at `offset` (at the end for O_APPEND). `kill_suidgid`: the kernel asks us to drop
    /// set-user/group-ID bits, as for a write by an unprivileged user (FUSE_HANDLE_KILLPRIV_V2).
    pub fn write(&self, fh: u64, offset: u64, bytes: &[u8], kill_suidgid: bool) -> FsResult<u32> {
        let h = self.handle(fh)?;
        if !h.write {
            return Err(FsError::BadHandle);
        }
        let mut of = lock(&h.file);
        self.ensure_loaded(h.ino, &mut of)?;
        // Copies only if a publish still holds the buffer.
        let data = Arc::make_mut(of.data.as_mut().expect("loaded"));
        let offset = if h.append {
            data.len()
        } else {
            offset as usize
        };
        let end = offset + bytes.len();
        self.check_size(h.ino, end as u64)?;
        if data.len() < end {
            data.resize(end, 0); // a hole reads as zeros
        }
        data[offset..end].copy_from_slice(bytes);
        of.data_dirty = true;
        of.touch_mtime();
        let mode = of.view().mode;
        if kill_suidgid && mode & 0o6000 != 0 {
            of.pending.set.mode = Some(mode & !0o6000);
        }
        Ok(bytes.len() as u32)
    }

    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        let mut of = lock(&h.file);
        self.publish(h.ino, &mut of)
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = lock(&self.handles).remove(&fh).ok_or(FsError::BadHandle)?;
        let result = self.publish(h.ino, &mut lock(&h.file));
        self.drop_handle_count(h.ino, &h.file, h.write);
        result
    }

    /// Publishes the buffer to every data key and the record with cas, pipelined in one round
    /// trip. If another mount changed the record meanwhile, merges onto its version (fixing
    /// the data keys if the names changed) and tries again.
    pub(crate) fn publish(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        if of.unlinked || (!of.is_dirty() && of.pending_entry.is_none()) {
            return Ok(());
        }
        if !of.is_dirty() {
            // Created and closed unwritten: the log record and the empty value, nothing else.
            let pe = of.pending_entry.take().expect("checked above");
            return self.settle_one(ino, of, pe);
        }
        if of.cas.is_none() {
            let (rec, cas) = self.read_inode(ino)?;
            of.record = rec;
            of.cas = Some(cas);
        }
        let ikey = self.keys.inode(ino);
        let data = of.data.clone().unwrap_or_default();
        // Data keys written so far by this publish.
        let mut written: Vec<Vec<u8>> = Vec::new();
        // The create's log record, appended with the first batch.
        let mut logged = None;
        loop {
            let mut rec = of.record.clone();
            of.pending.apply_to(&mut rec);
            if of.data.is_some() {
                rec.size = data.len() as u64;
            }
            let mut batch = Vec::new();
            let mut data_keys = Vec::new();
            if of.data_dirty {
                let keys = self.data_keys(&rec)?;
                // Names this file lost since we wrote them must not keep its bytes.
                for k in written.iter().filter(|k| !keys.contains(k)) {
                    batch.push(Command::Delete(k.clone()));
                }
                written.retain(|k| keys.contains(k));
                for k in keys.iter().filter(|k| !written.contains(k)) {
                    batch.push(Command::store_shared(StoreOp::Set, k, data.clone()));
                    data_keys.push(k.clone());
                }
            }
            let skip = batch.len() - data_keys.len();
            batch.push(Command::cas(&ikey, &rec.encode(), of.cas.unwrap_or(0)));
            let results = match of.pending_entry.take() {
                Some(pe) => {
                    let mut skip_add = 0;
                    if !of.data_dirty {
                        batch.insert(0, Command::store(StoreOp::Add, &pe.data_key, b""));
                        skip_add = 1;
                    }
                    match self.log_created(ino, &pe, batch) {
                        Ok(results) => {
                            logged = Some(pe);
                            results.into_iter().skip(skip_add).collect()
                        }
                        Err(e) => {
                            of.pending_entry = Some(pe); // owed still: retried at release
                            return Err(e);
                        }
                    }
                }
                None => self.store.execute(batch),
            };
            let mut results = results.into_iter();
            results.by_ref().take(skip).for_each(drop);
            let mut failure = None;
            for (k, r) in data_keys.iter().zip(results.by_ref()) {
                match r {
                    Ok(_) => written.push(k.clone()),
                    Err(e) => failure = failure.or(Some(FsError::store(k, e))),
                }
            }
            let cas_result = results.next().expect("cas result");
            if let Some(e) = failure {
                warn!(ino, error = %e, "publishing file failed");
                self.after_failed_publish(ino, of);
                return Err(e);
            }
            match cas_result {
                Ok(Reply::Stored) => {
                    of.record = rec;
                    of.cas = None;
                    of.pending = Pending::default();
                    of.data_dirty = false;
                    return self.unlog_if_moved(ino, logged, Some(&of.record));
                }
                Ok(Reply::Exists) => {
                    let (fresh, cas) = self.read_inode(ino)?;
                    of.record = fresh;
                    of.cas = Some(cas);
                }
                Ok(Reply::NotFound) => {
                    // Removed by another mount while open here: take our bytes back out.
                    for k in &written {
                        let _ = self.store.delete(k);
                    }
                    of.unlinked = true;
                    return self.unlog_if_moved(ino, logged, None);
                }
                Ok(other) => return Err(FsError::corrupt(&ikey, format!("cas got {other:?}"))),
                Err(e) => return Err(FsError::store(&ikey, e)),
            }
        }
    }

    /// Appends a created file's `+` record to its parent's log, with `extra` in the same batch.
    fn log_created(
        &self,
        ino: u64,
        pe: &PendingEntry,
        extra: Vec<Command>,
    ) -> FsResult<Vec<CmdResult>> {
        let record = [(Op::Add, Kind::File, ino, pe.name.as_slice())];
        self.append_log(pe.parent, pe.seq, &record, extra)
    }

    /// A create's `+` record appended after another mount already renamed or removed the
    /// name would list a ghost: follow it with the matching `-` record.
    fn unlog_if_moved(
        &self,
        ino: u64,
        logged: Option<PendingEntry>,
        now: Option<&Inode>,
    ) -> FsResult<()> {
        let Some(pe) = logged else { return Ok(()) };
        let link = Link {
            parent: pe.parent,
            name: pe.name.clone(),
        };
        if now.is_some_and(|r| r.links.contains(&link)) {
            return Ok(());
        }
        self.log_dir_change(pe.parent, Op::Remove, Kind::File, ino, &pe.name)
    }

    /// Appends the log records of files created here and still open, for the files `wanted`
    /// picks: before this mount lists a directory or renames/removes one of those files, so
    /// its own log never misses or misorders them.
    pub(crate) fn settle_created(
        &self,
        wanted: impl Fn(u64, &PendingEntry) -> bool,
    ) -> FsResult<()> {
        let open: Vec<(u64, Arc<Mutex<OpenFile>>)> = lock(&self.files)
            .iter()
            .map(|(i, f)| (*i, f.clone()))
            .collect();
        for (ino, file) in open {
            let mut of = lock(&file);
            if let Some(pe) = of.pending_entry.take_if(|pe| wanted(ino, pe)) {
                self.settle_one(ino, &mut of, pe)?;
            }
        }
        Ok(())
    }

    /// Appends the log record `pe` (and the empty value, unless bytes are pending anyway).
    fn settle_one(&self, ino: u64, of: &mut OpenFile, pe: PendingEntry) -> FsResult<()> {
        let mut extra = Vec::new();
        if !of.data_dirty {
            extra.push(Command::store(StoreOp::Add, &pe.data_key, b""));
        }
        let result = self.log_created(ino, &pe, extra).and_then(|results| {
            results
                .into_iter()
                .try_for_each(|r| r.map(drop).map_err(|e| FsError::store(&pe.data_key, e)))
        });
        if result.is_err() {
            of.pending_entry = Some(pe);
        }
        result
    }

    /// A failed `set` leaves no old bytes either (memcached drops the item), so the file is
    /// made empty everywhere rather than left half-visible; the buffer is dropped.
    fn after_failed_publish(&self, ino: u64, of: &mut OpenFile) {
        of.data = None;
        of.data_dirty = false;
        of.pending = Pending::default();
        let emptied = self.update_record(ino, |r| {
            r.size = 0;
            Ok(())
        });
        if let Ok(rec) = &emptied {
            of.record = rec.clone();
            of.cas = None;
        }
        if let Ok(rec) = emptied
            && let Ok(keys) = self.data_keys(&rec)
        {
            let _ = self.store.execute(
                keys.iter()
                    .map(|k| Command::store(StoreOp::Set, k, b""))
                    .collect(),
            );
        }
    }

    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush(fh)
    }
}
