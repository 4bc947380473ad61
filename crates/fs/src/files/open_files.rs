//! What this mount holds open: handles, and per inode one [`OpenFile`] shared by all its
//! handles: the record and its version (with the key tokens read at it), the bytes (not read
//! yet, one buffer of the whole file, or chunks), attribute changes not yet published. The
//! state and its transitions, without the store; loading its bytes lives in
//! `namespace/file_bytes.rs`, reading, writing and publishing them in `files/io.rs` and
//! `chunked.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memfis_memcache::command::Value;

use crate::files::chunk_buffer::{ChunkedFile, chunk_count};
use crate::layout::attr::SetAttr;
use crate::layout::record::{Inode, Link, Time};
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
pub(crate) struct Pending {
    set: SetAttr,
    ctime: Option<Time>,
}

impl Pending {
    fn apply(&mut self, set: &SetAttr) {
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

    /// The changes over `rec`, with the ctime of the last one (not now: a publish later is no
    /// change of its own).
    fn apply_to(&self, rec: &mut Inode) {
        self.set.write_fields(rec);
        if let Some(t) = self.ctime {
            rec.ctime = t;
        }
    }
}

/// An open file's bytes: exactly one of not read yet, one buffer of the whole file, or the
/// chunks of a file larger than one item.
#[derive(Debug)]
enum Bytes {
    /// Not read yet (or forgotten): read as the record says before they are used
    /// (`Namespace::load_bytes`, `namespace/file_bytes.rs`).
    Unloaded,
    /// The whole file. `dirty`: it holds bytes not published yet.
    Whole { data: Value, dirty: bool },
    /// The file is larger than one item: its bytes are in chunks (`chunked.rs`), read as
    /// they are needed.
    Chunked(ChunkedFile),
}

impl Bytes {
    /// The bytes as the record says they are stored: none read yet, or chunks.
    fn of_record(record: &Inode) -> Bytes {
        match record.chunk_size {
            Some(cs) => Bytes::Chunked(ChunkedFile::new(cs, record.chunk_gen, record.size)),
            None => Bytes::Unloaded,
        }
    }
}

/// The record as last read from or written to the store, with what is known of its version:
/// its cas token and the tokens of the file's served data keys read at that version. Tokens
/// count only for the version they were read at, so forgetting the version forgets them too.
#[derive(Debug)]
struct RecordVersion {
    record: Inode,
    /// cas token of `record`; `None` when unknown (re-read before publishing).
    cas: Option<u64>,
    /// cas tokens of the file's served data keys (0: the key was absent), each read while
    /// the key was this file's name. A publish writes a served key only with `cas` on its
    /// token (`add` for 0), so it can never replace bytes another file moved to that key
    /// (a rename by another mount after this mount read the record).
    key_tokens: HashMap<Vec<u8>, u64>,
    /// The record version (`cas`) the tokens were checked against: they are used only while
    /// it is `cas`.
    tokens_cas: Option<u64>,
}

impl RecordVersion {
    fn new(record: Inode, cas: Option<u64>) -> RecordVersion {
        RecordVersion {
            record,
            cas,
            key_tokens: HashMap::new(),
            tokens_cas: None,
        }
    }

    /// The version is unknown from now on (the record changed, or may have): read again
    /// before the next publish. The key tokens go with it.
    fn forget(&mut self) {
        self.cas = None;
        self.key_tokens.clear();
        self.tokens_cas = None;
    }

    /// Takes a record read from the store at version `cas`. Tokens read at another version
    /// go (they could never count again: a version does not come back).
    fn read(&mut self, record: Inode, cas: Option<u64>) {
        self.record = record;
        self.cas = cas;
        if cas.is_none() || self.tokens_cas != cas {
            self.key_tokens.clear();
            self.tokens_cas = None;
        }
    }

    /// Takes a record this mount just stored: its new version is unknown.
    fn stored(&mut self, record: Inode) {
        self.record = record;
        self.forget();
    }

    fn key_token(&self, key: &[u8]) -> Option<u64> {
        match self.tokens_cas {
            Some(c) if Some(c) == self.cas => self.key_tokens.get(key).copied(),
            _ => None,
        }
    }

    /// Takes tokens read while the record was at the version held.
    fn take_tokens(&mut self, tokens: HashMap<Vec<u8>, u64>) {
        self.key_tokens = tokens;
        self.tokens_cas = self.cas;
    }
}

/// One file open in this mount, shared by all its handles: the stored record and its version,
/// the bytes, attribute changes not yet published, and what its publishes wrote.
#[derive(Debug)]
pub struct OpenFile {
    version: RecordVersion,
    bytes: Bytes,
    pending: Pending,
    handles: u32,
    writers: u32,
    /// The last name is gone: keep serving holders, publish nothing.
    unlinked: bool,
    /// This mount removed the file's last name (`remove_last_name`): its chunks are kept.
    removed_here: bool,
    /// Chunks of the removed file, (generation, count), kept for the handles still open
    /// and deleted with the last one (`OpenFiles::drop_handle_count`).
    chunks_of_removed: Vec<(u64, u64)>,
    /// Data keys set by publishes since the file was last clean: a key among them that is
    /// no name of the file any more (renamed meanwhile) is deleted once the publish settles.
    written: Vec<Vec<u8>>,
    /// This mount created the file and nothing has put bytes at its private key since
    /// (`KeyLayout::private_data`): a publish that makes the file served has no private
    /// key to delete (`cp -a` creates every file unreadable by others, then opens it up).
    private_key_unused: bool,
}

impl OpenFile {
    pub(crate) fn new(record: Inode, cas: Option<u64>) -> OpenFile {
        OpenFile {
            bytes: Bytes::of_record(&record),
            version: RecordVersion::new(record, cas),
            pending: Pending::default(),
            handles: 0,
            writers: 0,
            unlinked: false,
            removed_here: false,
            chunks_of_removed: Vec::new(),
            written: Vec::new(),
            private_key_unused: false,
        }
    }

    /// A file this mount just created (at version `cas`), empty, with its one handle
    /// counted; `data_token`: its served data key with the token the create read.
    pub(crate) fn created(record: Inode, cas: u64, data_token: Option<(Vec<u8>, u64)>) -> OpenFile {
        let mut of = OpenFile::new(record, Some(cas));
        if let Some((key, token)) = data_token {
            of.version.take_tokens([(key, token)].into());
        }
        of.private_key_unused = true;
        of.bytes = Bytes::Whole {
            data: Value::default(),
            dirty: false,
        };
        of.handles = 1;
        of
    }

    // ----- the record and its version ----------------------------------------------------

    /// The record as last read from or written to the store.
    pub(crate) fn record(&self) -> &Inode {
        &self.version.record
    }

    /// cas token of the record held; `None` when unknown (re-read before publishing).
    pub(crate) fn cas(&self) -> Option<u64> {
        self.version.cas
    }

    /// The record version is unknown from now on (another writer changed the record, or
    /// this mount's publish did): read again before the next publish, key tokens with it.
    pub(crate) fn forget_version(&mut self) {
        self.version.forget();
    }

    /// Takes a record this mount just stored (rename, link, xattr ...): its token is unknown.
    pub fn adopt_record(&mut self, rec: Inode) {
        self.version.stored(rec);
    }

    /// Takes a record read from the store that another mount may have changed: it may have
    /// written the private key too.
    pub(crate) fn take_newer_record(&mut self, rec: Inode, cas: Option<u64>) {
        self.version.read(rec, cas);
        self.private_key_unused = false;
    }

    /// Close-to-open: a new open takes the record as stored now (`cas`), and reads the
    /// bytes again.
    pub(crate) fn reopen(&mut self, rec: Inode, cas: u64) {
        self.version.read(rec, Some(cas));
        self.forget_bytes();
    }

    /// Another operation of this mount removed name `link` from the stored record.
    pub(crate) fn lose_link(&mut self, link: &Link) {
        self.version.record.remove_link(link);
        self.version.forget();
    }

    /// The token of served data key `key`, if known for the record version held.
    pub(crate) fn key_token(&self, key: &[u8]) -> Option<u64> {
        self.version.key_token(key)
    }

    /// Takes tokens of served data keys read while the record was at the version held.
    pub(crate) fn take_key_tokens(&mut self, tokens: HashMap<Vec<u8>, u64>) {
        self.version.take_tokens(tokens);
    }

    // ----- the bytes ---------------------------------------------------------------------

    /// The bytes are there to use: a whole buffer, or chunks (read as they are needed).
    pub(crate) fn is_loaded(&self) -> bool {
        !matches!(self.bytes, Bytes::Unloaded)
    }

    /// The whole-file buffer, if that is how the bytes are held and they were read.
    pub(crate) fn buffer(&self) -> Option<&Value> {
        match &self.bytes {
            Bytes::Whole { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The buffer holds bytes not published yet.
    pub(crate) fn buffer_dirty(&self) -> bool {
        matches!(self.bytes, Bytes::Whole { dirty: true, .. })
    }

    pub(crate) fn chunks(&self) -> Option<&ChunkedFile> {
        match &self.bytes {
            Bytes::Chunked(c) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn chunks_mut(&mut self) -> Option<&mut ChunkedFile> {
        match &mut self.bytes {
            Bytes::Chunked(c) => Some(c),
            _ => None,
        }
    }

    /// Forgets the bytes held (unchanged ones), to read them again as the record says: one
    /// buffer, or chunks.
    pub(crate) fn forget_bytes(&mut self) {
        self.bytes = Bytes::of_record(&self.version.record);
    }

    /// Takes the bytes as read from the store.
    pub(crate) fn loaded(&mut self, data: Value) {
        self.bytes = Bytes::Whole { data, dirty: false };
    }

    /// Drops the buffer, published or not (a file in chunks keeps its chunks).
    pub(crate) fn drop_buffer(&mut self) {
        if let Bytes::Whole { .. } = self.bytes {
            self.bytes = Bytes::Unloaded;
        }
    }

    /// The buffer is to be published (again), as after a write. (Chunks are published by
    /// their own state.)
    pub(crate) fn mark_buffer_dirty(&mut self) {
        if let Bytes::Whole { dirty, .. } = &mut self.bytes {
            *dirty = true;
        }
    }

    /// The buffer as published.
    pub(crate) fn mark_buffer_clean(&mut self) {
        if let Bytes::Whole { dirty, .. } = &mut self.bytes {
            *dirty = false;
        }
    }

    /// O_TRUNC: the file is empty, to publish so, whatever the store holds.
    pub(crate) fn truncate(&mut self) {
        self.bytes = Bytes::Whole {
            data: Value::default(),
            dirty: true,
        };
        self.touch_mtime();
    }

    /// The loaded buffer, to change (marked dirty). Copies only if a publish still holds it.
    fn buffer_to_change(&mut self) -> &mut Vec<u8> {
        match &mut self.bytes {
            Bytes::Whole { data, dirty } => {
                *dirty = true;
                Arc::make_mut(data)
            }
            _ => panic!("a change to the buffer of a file whose buffer is not loaded"),
        }
    }

    /// Writes `bytes` at `offset` into the loaded buffer.
    pub(crate) fn write_buffer(&mut self, offset: usize, bytes: &[u8]) {
        let data = self.buffer_to_change();
        let end = offset + bytes.len();
        if data.len() < end {
            data.resize(end, 0); // a hole reads as zeros
        }
        data[offset..end].copy_from_slice(bytes);
    }

    /// Resizes the loaded buffer (a file in chunks: `Files::resize_chunked`).
    pub fn resize(&mut self, size: u64) {
        self.buffer_to_change().resize(size as usize, 0);
        self.touch_mtime();
    }

    /// The loaded buffer goes into chunks of `chunk_size` (all to write) under a new
    /// `generation`.
    pub(crate) fn go_chunked(&mut self, chunk_size: u64, generation: u64) {
        let data = match std::mem::replace(&mut self.bytes, Bytes::Unloaded) {
            Bytes::Whole { data, .. } => data,
            _ => Value::default(),
        };
        let mut c = ChunkedFile::new(chunk_size, generation, data.len() as u64);
        for (n, piece) in data.chunks(c.chunk_size as usize).enumerate() {
            c.dirty.insert(n as u64, piece.to_vec());
        }
        c.changed = true;
        c.removed_here = self.removed_here;
        self.bytes = Bytes::Chunked(c);
    }

    /// A file in chunks small enough for one item again: `bytes` are all of it, to publish.
    pub(crate) fn unchunk(&mut self, bytes: Vec<u8>) {
        self.bytes = Bytes::Whole {
            data: Arc::new(bytes),
            dirty: true,
        };
    }

    // ----- attributes --------------------------------------------------------------------

    /// The record as this mount sees it: stored record, pending changes, buffered size.
    pub fn view(&self) -> Inode {
        let mut rec = self.version.record.clone();
        self.pending.apply_to(&mut rec);
        match &self.bytes {
            Bytes::Whole { data, .. } => rec.size = data.len() as u64,
            Bytes::Chunked(c) => rec.size = c.size,
            Bytes::Unloaded => {}
        }
        rec
    }

    pub(crate) fn touch_mtime(&mut self) {
        let now = Time::now();
        self.pending.set.mtime = Some(now);
        self.pending.ctime = Some(now);
    }

    /// Attribute changes to publish with the bytes (`cp -a` keeps to a few round trips).
    pub(crate) fn buffer_attrs(&mut self, set: &SetAttr) {
        self.pending.apply(set);
    }

    /// Drops a mode change still to publish (a chmod that runs at once supersedes it).
    pub(crate) fn drop_pending_mode(&mut self) {
        self.pending.set.mode = None;
    }

    /// A write by a caller that may not keep set-ID bits: they go with the publish.
    pub(crate) fn kill_suidgid(&mut self) {
        let mode = self.view().mode;
        if mode & 0o6000 != 0 {
            self.pending.set.mode = Some(mode & !0o6000);
        }
    }

    /// Forgets the attribute changes not published (they went, or failed to).
    pub(crate) fn drop_pending(&mut self) {
        self.pending = Pending::default();
    }

    /// The record a publish stores: the stored one with the pending changes, and the size of
    /// the buffer if it is to be written. Only bytes this publish writes give the record its
    /// size: a buffer published already may be older than what another mount published since
    /// (an attribute change riding with a writer's close must not take the file back to its
    /// size).
    pub(crate) fn record_to_publish(&self) -> Inode {
        let mut rec = self.version.record.clone();
        self.pending.apply_to(&mut rec);
        if let Bytes::Whole { data, dirty: true } = &self.bytes {
            rec.size = data.len() as u64;
            rec.chunk_size = None;
            rec.chunk_gen = 0;
        }
        rec
    }

    /// The record (with the pending changes) is stored: its new version is unknown.
    pub(crate) fn record_published(&mut self, rec: Inode) {
        self.version.stored(rec);
        self.drop_pending();
    }

    pub(crate) fn is_dirty(&self) -> bool {
        let bytes = match &self.bytes {
            Bytes::Whole { dirty, .. } => *dirty,
            Bytes::Chunked(c) => c.is_dirty(),
            Bytes::Unloaded => false,
        };
        bytes || !self.pending.is_empty()
    }

    // ----- handles, names, keys written ----------------------------------------------------

    pub(crate) fn has_writers(&self) -> bool {
        self.writers > 0
    }

    pub(crate) fn is_unlinked(&self) -> bool {
        self.unlinked
    }

    /// The last name is gone: holders keep reading, nothing is published.
    pub(crate) fn mark_unlinked(&mut self) {
        self.unlinked = true;
    }

    /// This mount removed the file's last name while it is open here: holders keep reading,
    /// so the chunks the record names (`record_chunks`: generation and count) stay until
    /// the last handle goes. Returns the chunks to delete now: all of them if no handle is
    /// left (closed meanwhile), else none.
    pub(crate) fn remove_last_name(
        &mut self,
        record_chunks: Option<(u64, u64)>,
    ) -> Vec<(u64, u64)> {
        self.unlinked = true;
        self.removed_here = true;
        if let Some(c) = self.chunks_mut() {
            // Its missing chunks are holes only if they are the record's (or this file's own
            // writes): chunks of a generation another mount's rewrite replaced are gone.
            c.removed_here = c.is_dirty() || record_chunks.is_some_and(|(g, _)| g == c.generation);
        }
        self.chunks_of_removed.extend(record_chunks);
        self.free_if_closed()
    }

    /// The file's record went while this mount was publishing it (removed by another mount,
    /// or by an unlink of this mount between its batches): nothing is published, and the
    /// chunks this open file wrote stay for its handles until the last one goes (a missing
    /// chunk reads ENOENT, the file being gone). Returns the chunks to delete now: all of
    /// them if no handle is left.
    pub(crate) fn lose_record(&mut self) -> Vec<(u64, u64)> {
        self.unlinked = true;
        self.free_if_closed()
    }

    fn free_if_closed(&mut self) -> Vec<(u64, u64)> {
        if self.handles == 0 {
            return self.chunks_to_free();
        }
        Vec::new()
    }

    /// Chunks of a removed file nothing reads any more: the record's, and those this open
    /// file wrote (one generation each, the most chunks seen).
    fn chunks_to_free(&mut self) -> Vec<(u64, u64)> {
        let mut runs = std::mem::take(&mut self.chunks_of_removed);
        if let Some(c) = self.chunks() {
            runs.push((
                c.generation,
                chunk_count(c.size, c.chunk_size).max(c.written_until),
            ));
        }
        runs.sort_unstable();
        runs.dedup_by(|later, kept| {
            // (Sorted by generation, then count: `later` has the larger count.)
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        runs
    }

    /// Keys a publish wrote since the file was last clean (see `written`).
    pub(crate) fn written(&self) -> &[Vec<u8>] {
        &self.written
    }

    /// A publish wrote `key`, or left bytes there that go once no name holds them.
    pub(crate) fn note_written(&mut self, key: &[u8]) {
        if !self.written.iter().any(|k| k == key) {
            self.written.push(key.to_vec());
        }
    }

    /// A publish put bytes at the private key.
    pub(crate) fn private_key_used(&mut self) {
        self.private_key_unused = false;
    }

    pub(crate) fn take_written(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.written)
    }

    /// See `private_key_unused`.
    pub(crate) fn private_key_unused(&self) -> bool {
        self.private_key_unused
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
    /// A handle of `of` closed. Returns the chunks of a removed file its last handle kept
    /// (`OpenFile::remove_last_name`), for the caller to delete.
    pub fn drop_handle_count(
        &self,
        ino: u64,
        of: &Arc<Mutex<OpenFile>>,
        writer: bool,
    ) -> Vec<(u64, u64)> {
        let free = {
            let mut g = lock(of);
            g.handles -= 1;
            if writer {
                g.writers -= 1;
            }
            if g.handles == 0 && g.unlinked {
                g.chunks_to_free()
            } else {
                Vec::new()
            }
        };
        let mut files = lock(&self.files);
        if files.get(&ino).is_some_and(|f| Arc::ptr_eq(f, of)) && lock(of).handles == 0 {
            files.remove(&ino);
        }
        free
    }
}
