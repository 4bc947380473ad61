//! What this mount holds open: handles, and per inode one [`OpenFile`] shared by all its
//! handles (a buffer of the whole file plus attribute changes not yet published). Plain state;
//! reading, writing and publishing it live in `files.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memfis_memcache::command::Value;

use crate::attr::SetAttr;
use crate::chunk_buffer::ChunkedFile;
use crate::record::{Inode, Time};
use crate::sync::lock;
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

    pub(crate) fn is_empty(&self) -> bool {
        let p = &self.set;
        p.mode.is_none()
            && p.uid.is_none()
            && p.gid.is_none()
            && p.atime.is_none()
            && p.mtime.is_none()
            && self.ctime.is_none()
    }

    /// The changes over `rec`, with the ctime of the last one (not now: a publish later is no
    /// change of its own).
    pub(crate) fn apply_to(&self, rec: &mut Inode) {
        self.set.write_fields(rec);
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
    /// Data keys set by publishes since the file was last clean: a key among them that is
    /// no name of the file any more (renamed meanwhile) is deleted once the publish settles.
    pub written: Vec<Vec<u8>>,
    /// This mount created the file and nothing has put bytes at its private key since
    /// (`KeyLayout::private_data`): a publish that makes the file served has no private
    /// key to delete (`cp -a` creates every file unreadable by others, then opens it up).
    pub private_key_unused: bool,
    /// The file is larger than one item: its bytes are in chunks (`chunked.rs`) and `data`
    /// is unused.
    pub chunked: Option<ChunkedFile>,
    /// cas tokens of the file's served data keys (0: the key was absent), each read while
    /// the key was this file's name. A publish writes a served key only with `cas` on its
    /// token (`add` for 0), so it can never replace bytes another file moved to that key
    /// (a rename by another mount after this mount read the record).
    pub key_tokens: HashMap<Vec<u8>, u64>,
    /// The record version (`cas`) the tokens were checked against: they are used only while
    /// it is `cas`.
    pub tokens_cas: Option<u64>,
}

impl OpenFile {
    pub(crate) fn new(record: Inode, cas: Option<u64>) -> OpenFile {
        OpenFile {
            record,
            cas,
            data: None,
            data_dirty: false,
            pending: Pending::default(),
            handles: 0,
            writers: 0,
            unlinked: false,
            written: Vec::new(),
            private_key_unused: false,
            chunked: None,
            key_tokens: HashMap::new(),
            tokens_cas: None,
        }
        .with_bytes_of_record()
    }

    /// Forgets the bytes held (unchanged ones), to read them again as the record says: one
    /// buffer, or chunks.
    pub(crate) fn with_bytes_of_record(mut self) -> OpenFile {
        self.reset_bytes();
        self
    }

    pub(crate) fn reset_bytes(&mut self) {
        self.data = None;
        self.chunked = self
            .record
            .chunk_size
            .map(|cs| ChunkedFile::new(cs, self.record.chunk_gen, self.record.size));
    }

    /// The record as this mount sees it: stored record, pending changes, buffered size.
    pub fn view(&self) -> Inode {
        let mut rec = self.record.clone();
        self.pending.apply_to(&mut rec);
        if let Some(d) = &self.data {
            rec.size = d.len() as u64;
        }
        if let Some(c) = &self.chunked {
            rec.size = c.size;
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

    pub(crate) fn touch_mtime(&mut self) {
        let now = Time::now();
        self.pending.set.mtime = Some(now);
        self.pending.ctime = Some(now);
    }

    /// The token of served data key `key`, if known for the record version held.
    pub(crate) fn key_token(&self, key: &[u8]) -> Option<u64> {
        match self.tokens_cas {
            Some(c) if Some(c) == self.cas => self.key_tokens.get(key).copied(),
            _ => None,
        }
    }

    /// Takes tokens read while the record was at version `cas`.
    pub(crate) fn set_key_tokens(&mut self, tokens: HashMap<Vec<u8>, u64>, cas: Option<u64>) {
        self.key_tokens = tokens;
        self.tokens_cas = cas;
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.data_dirty
            || !self.pending.is_empty()
            || self.chunked.as_ref().is_some_and(ChunkedFile::is_dirty)
    }
}

/// The table of open files and handles of one mount.
pub(crate) struct OpenFiles {
    files: Mutex<HashMap<u64, Arc<Mutex<OpenFile>>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
}

impl OpenFiles {
    pub fn new() -> Self {
        OpenFiles {
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    /// (open files, open handles).
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.files).len(), lock(&self.handles).len())
    }

    /// The open file of `ino`, if any handle of this mount holds it.
    pub fn get(&self, ino: u64) -> Option<Arc<Mutex<OpenFile>>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// The open file of `ino` with one more handle counted, if it is open. Counted under
    /// the table lock, so a release racing with this open cannot drop it.
    pub fn join(&self, ino: u64) -> Option<Arc<Mutex<OpenFile>>> {
        lock(&self.files).get(&ino).cloned().inspect(|of| {
            lock(of).handles += 1;
        })
    }

    /// Puts `fresh` in the table for `ino` unless another thread got there first; either way
    /// the file in the table, with one more handle counted.
    pub fn join_or_insert(&self, ino: u64, fresh: OpenFile) -> Arc<Mutex<OpenFile>> {
        let mut files = lock(&self.files);
        let of = files
            .entry(ino)
            .or_insert_with(|| Arc::new(Mutex::new(fresh)))
            .clone();
        lock(&of).handles += 1;
        of
    }

    /// Puts a file just created (its one handle counted) in the table.
    pub fn insert_created(&self, ino: u64, of: OpenFile) -> Arc<Mutex<OpenFile>> {
        let of = Arc::new(Mutex::new(of));
        lock(&self.files).insert(ino, of.clone());
        of
    }

    /// Registers a handle on `file`, whose `handles` count already includes it. The handle
    /// keeps its own reference: it never has to find the file in the table again.
    pub fn new_handle(&self, ino: u64, file: Arc<Mutex<OpenFile>>, flags: i32) -> u64 {
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

    pub fn handle(&self, fh: u64) -> FsResult<Handle> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub fn take_handle(&self, fh: u64) -> FsResult<Handle> {
        lock(&self.handles).remove(&fh).ok_or(FsError::BadHandle)
    }

    /// Takes one handle off `of`; the last one takes the file out of the table.
    pub fn drop_handle_count(&self, ino: u64, of: &Arc<Mutex<OpenFile>>, writer: bool) {
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
}
