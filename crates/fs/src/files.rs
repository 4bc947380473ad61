//! Open files. All handles of one inode in this mount share one [`OpenFile`]: a buffer of
//! the whole file plus attribute changes not yet published. The buffer is published whole to
//! every data key of the file at flush/fsync/release (store contract §4), so readers (nginx,
//! other mounts) see the old bytes or the new, never a mix.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use memfis_memcache::{Command, Reply, Store};
use tracing::warn;

use crate::fs::{Attr, MemFs, SetAttr, lock};
use crate::record::{Inode, Kind, Link, Time};
use crate::{FsError, FsResult};

/// One open() of a file.
#[derive(Debug, Clone, Copy)]
pub struct Handle {
    pub ino: u64,
    pub write: bool,
    pub append: bool,
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
    pub data: Option<Vec<u8>>,
    pub data_dirty: bool,
    pub pending: Pending,
    pub handles: u32,
    pub writers: u32,
    /// The last name is gone: keep serving holders, publish nothing.
    pub unlinked: bool,
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
        let data = self.data.get_or_insert_with(Vec::new);
        data.resize(size as usize, 0);
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
    fn new_handle(&self, ino: u64, flags: i32) -> u64 {
        let acc = flags & libc::O_ACCMODE;
        let handle = Handle {
            ino,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, handle);
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<(Handle, Arc<Mutex<OpenFile>>)> {
        let h = *lock(&self.handles).get(&fh).ok_or(FsError::BadHandle)?;
        let of = self.open_file(h.ino).ok_or(FsError::BadHandle)?;
        Ok((h, of))
    }

    /// Registers a handle on `of` (adding it to the open-file table if new).
    fn attach(&self, ino: u64, of: Arc<Mutex<OpenFile>>, flags: i32) -> u64 {
        let fh = self.new_handle(ino, flags);
        let mut g = lock(&of);
        g.handles += 1;
        if lock(&self.handles)[&fh].write {
            g.writers += 1;
        }
        fh
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
        let (ino, rec, cas) = self.create_node(parent, name, rec)?;
        let mut of = OpenFile::new(rec, Some(cas));
        of.data = Some(Vec::new());
        let of = Arc::new(Mutex::new(of));
        lock(&self.files).insert(ino, of.clone());
        let fh = self.attach(ino, of.clone(), flags);
        let attr = self.attr_from(ino, &lock(&of).view(), None);
        Ok((attr, fh))
    }

    pub fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let existing = self.open_file(ino);
        let of = match existing {
            Some(of) => {
                let mut g = lock(&of);
                if !g.is_dirty() && g.writers == 0 && !g.unlinked {
                    // Close-to-open: a new open sees what other mounts closed since.
                    let (rec, cas) = self.read_inode(ino)?;
                    g.adopt_record(rec);
                    g.cas = Some(cas);
                    g.data = None;
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
                let of = Arc::new(Mutex::new(OpenFile::new(rec, Some(cas))));
                lock(&self.files).entry(ino).or_insert(of).clone()
            }
        };
        let writable = matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR);
        if writable && flags & libc::O_TRUNC != 0 {
            let mut g = lock(&of);
            g.data = Some(Vec::new());
            g.data_dirty = true;
            g.touch_mtime();
        }
        Ok(self.attach(ino, of, flags))
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
        of.data = Some(data);
        Ok(())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (h, of) = self.handle(fh)?;
        let mut of = lock(&of);
        self.ensure_loaded(h.ino, &mut of)?;
        let data = of.data.as_deref().unwrap_or_default();
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }

    pub fn write(&self, fh: u64, offset: u64, bytes: &[u8]) -> FsResult<u32> {
        let (h, of) = self.handle(fh)?;
        if !h.write {
            return Err(FsError::BadHandle);
        }
        let mut of = lock(&of);
        self.ensure_loaded(h.ino, &mut of)?;
        let data = of.data.as_mut().expect("loaded");
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
        Ok(bytes.len() as u32)
    }

    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let (h, of) = self.handle(fh)?;
        let mut of = lock(&of);
        self.publish(h.ino, &mut of)
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = lock(&self.handles).remove(&fh).ok_or(FsError::BadHandle)?;
        let Some(of) = self.open_file(h.ino) else {
            return Ok(());
        };
        let mut g = lock(&of);
        let result = self.publish(h.ino, &mut g);
        g.handles -= 1;
        if h.write {
            g.writers -= 1;
        }
        if g.handles == 0 {
            let mut files = lock(&self.files);
            if files.get(&h.ino).is_some_and(|f| Arc::ptr_eq(f, &of)) {
                files.remove(&h.ino);
            }
        }
        result
    }

    /// Publishes the buffer to every data key, then the record with cas. If another mount
    /// changed the record meanwhile, merges onto its version and fixes the data keys.
    pub(crate) fn publish(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        if of.unlinked || !of.is_dirty() {
            return Ok(());
        }
        if of.cas.is_none() {
            let (rec, cas) = self.read_inode(ino)?;
            of.record = rec;
            of.cas = Some(cas);
        }
        let ikey = self.keys.inode(ino);
        let mut written: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut rec = of.record.clone();
            of.pending.apply_to(&mut rec);
            if let Some(d) = &of.data {
                rec.size = d.len() as u64;
            }
            if of.data_dirty {
                let keys = self.data_keys(&rec)?;
                let missing: Vec<Vec<u8>> = keys
                    .iter()
                    .filter(|k| !written.contains(k))
                    .cloned()
                    .collect();
                if let Err(e) =
                    self.write_data_keys(&missing, of.data.as_deref().unwrap_or_default())
                {
                    if e.is_fault() {
                        warn!(ino, error = %e, "publishing file failed");
                    }
                    return Err(e);
                }
                written.extend(missing);
                // Names this file lost since we wrote them must not keep its bytes.
                let stale: Vec<Vec<u8>> = written
                    .iter()
                    .filter(|k| !keys.contains(k))
                    .cloned()
                    .collect();
                for k in &stale {
                    let _ = self.store.delete(k);
                }
                written.retain(|k| keys.contains(k));
            }
            match self
                .store
                .run(Command::cas(&ikey, &rec.encode(), of.cas.unwrap_or(0)))
            {
                Ok(Reply::Stored) => {
                    of.record = rec;
                    of.cas = None;
                    of.pending = Pending::default();
                    of.data_dirty = false;
                    return Ok(());
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
                    return Ok(());
                }
                Ok(other) => return Err(FsError::corrupt(&ikey, format!("cas got {other:?}"))),
                Err(e) => return Err(FsError::store(&ikey, e)),
            }
        }
    }

    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush(fh)
    }
}
