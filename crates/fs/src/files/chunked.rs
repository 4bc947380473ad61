//! Files larger than one memcached item: their bytes in chunks of `chunk_size` bytes at
//! `PREFIX%k<ino>.<generation>.<n>` (chunk `n` holds bytes `n * chunk_size ..`), named in the
//! record (`Inode::chunk_size`, `Inode::chunk_gen`). No name of such a file is served: nginx
//! finds no key and falls back. Each time a file goes into chunks it takes a new random
//! generation, so chunks left by an earlier time (a delete that failed) are garbage that can go
//! whenever (the heartbeat retries them) without ever touching chunks being written now.
//!
//! A chunk that is missing, or shorter than `chunk_size`, reads as zeros up to the file's size,
//! so a file is sparse: a write at 8 GiB stores one chunk. An open file holds only the chunks
//! written since its last publish, and writes them out once they pass [`DIRTY_LIMIT`], so memory
//! follows what is being written, not the file's size; reads keep the last chunk read.
//!
//! Unlike a file of one item, a file in chunks is not published whole: chunks go out as they
//! are written (and at close), and the record takes the new size at close. Another mount that
//! reads while the file is being written may see some new chunks and some old.
//!
//! A file becomes chunked when a write or truncate takes it past one item, and goes back to
//! one item when a publish finds it small enough again.

use std::sync::Arc;

use memfis_memcache::{Command, Store, StoreOp};

use crate::files::Files;
use crate::files::chunk_buffer::{ChunkedFile, chunk_count};
use crate::files::io::Published;
use crate::files::open_files::OpenFile;
use crate::store::batch::{Batch, CasOutcome, StoreAt};
use crate::{FsError, FsResult};

/// Written chunks an open file keeps before it writes them out.
const DIRTY_LIMIT: u64 = 16 * 1024 * 1024;

/// Chunks written or deleted per pipelined batch.
const CHUNK_BATCH: usize = 16;

/// The largest chunk: a few reads or writes of the kernel's (128 KiB) each.
const MAX_CHUNK: u64 = 1024 * 1024;

impl<S: Store> Files<S> {
    /// The chunk size of files this store makes: the largest multiple of 4 KiB one item
    /// holds, at most [`MAX_CHUNK`].
    pub(crate) fn chunk_size(&self) -> u64 {
        match self.tree.item_limit().min(MAX_CHUNK) {
            limit if limit >= 4096 => limit / 4096 * 4096,
            limit => limit.max(1), // (memcached's smallest -I is 1 KiB)
        }
    }

    /// Turns a buffered file that grows past one item into chunks (all of them to write).
    pub(crate) fn start_chunking(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        self.names.ensure_loaded(ino, of)?;
        let generation = u64::from_str_radix(&crate::layout::record::random_id(), 16).unwrap_or(1);
        of.go_chunked(self.chunk_size(), generation.max(1));
        Ok(())
    }

    /// Chunk `n` as stored; a missing chunk is a hole (zeros) only where the file still has
    /// it: in the chunks of this open file's own writes, of a file this mount removed, or of
    /// the record as stored now. Otherwise another mount removed the file (ENOENT, as for the
    /// bytes of a file of one item) or rewrote it (`Stale`: the caller takes the newer
    /// record), never zeros. (A missing chunk costs a look at the record.)
    fn load_chunk(&self, ino: u64, c: &ChunkedFile, n: u64) -> FsResult<Arc<Vec<u8>>> {
        let key = self.tree.keys.chunk(ino, c.generation, n);
        let hole = || Ok(Arc::new(Vec::new()));
        match self.tree.store.get_at(&key)? {
            Some(item) => Ok(Arc::new(item.value)),
            None if c.removed_here || c.is_dirty() => hole(),
            None => match self.names.read_inode_opt(ino)? {
                None => Err(FsError::NotFound),
                Some((rec, _))
                    if rec.chunk_gen == c.generation
                        && rec.chunk_size.is_some_and(|cs| {
                            cs == c.chunk_size && n < chunk_count(rec.size, cs)
                        }) =>
                {
                    hole()
                }
                Some(_) => Err(FsError::Stale),
            },
        }
    }

    pub(crate) fn read_chunked(
        &self,
        ino: u64,
        c: &mut ChunkedFile,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        let end = offset.saturating_add(size as u64).min(c.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let n = pos / c.chunk_size;
            let start = n * c.chunk_size;
            let upto = end.min(start + c.chunk_size);
            let (from, to) = ((pos - start) as usize, (upto - start) as usize);
            match c.dirty.get(&n) {
                Some(bytes) => copy_part(&mut out, bytes, from, to),
                None => {
                    let bytes = match &c.cached {
                        Some((cn, bytes)) if *cn == n => bytes.clone(),
                        _ => {
                            let bytes = self.load_chunk(ino, c, n)?;
                            c.cached = Some((n, bytes.clone()));
                            bytes
                        }
                    };
                    copy_part(&mut out, &bytes, from, to);
                }
            }
            pos = upto;
        }
        Ok(out)
    }

    pub(crate) fn write_chunked(
        &self,
        ino: u64,
        c: &mut ChunkedFile,
        offset: u64,
        bytes: &[u8],
    ) -> FsResult<()> {
        let end = offset + bytes.len() as u64;
        let mut pos = offset;
        while pos < end {
            let n = pos / c.chunk_size;
            let start = n * c.chunk_size;
            let upto = end.min(start + c.chunk_size);
            if !c.dirty.contains_key(&n) {
                // Bytes of the chunk the write does not cover must be read first.
                let held = c.size.min(start + c.chunk_size);
                let covers = pos == start && upto >= held;
                // Room for the whole chunk at once: growing it write by write would copy it.
                let mut chunk = Vec::with_capacity(c.chunk_size as usize);
                match (covers, &c.cached) {
                    (true, _) => {}
                    (false, Some((cn, b))) if *cn == n => chunk.extend_from_slice(b),
                    (false, _) if start < c.size => {
                        chunk.extend_from_slice(&self.load_chunk(ino, c, n)?)
                    }
                    (false, _) => {}
                }
                c.dirty.insert(n, chunk);
            }
            if c.cached.as_ref().is_some_and(|(cn, _)| *cn == n) {
                c.cached = None;
            }
            let chunk = c.dirty.get_mut(&n).expect("inserted above");
            let (from, to) = ((pos - start) as usize, (upto - start) as usize);
            if chunk.len() < to {
                chunk.resize(to, 0);
            }
            let src = (pos - offset) as usize;
            chunk[from..to].copy_from_slice(&bytes[src..src + (to - from)]);
            pos = upto;
        }
        c.size = c.size.max(end);
        c.changed = true;
        if c.dirty_bytes() > DIRTY_LIMIT {
            self.write_out_chunks(ino, c)?;
        }
        Ok(())
    }

    /// Truncates or extends a file in chunks. Bytes past a new, smaller size are cut from
    /// the chunk that holds it, and later chunks are deleted at once, so growing again reads
    /// zeros (the size reaches other mounts at publish, as with any change to such a file).
    pub(crate) fn resize_chunked(&self, ino: u64, c: &mut ChunkedFile, size: u64) -> FsResult<()> {
        if size < c.size {
            let keep = chunk_count(size, c.chunk_size);
            let had = chunk_count(c.size, c.chunk_size).max(c.written_until);
            self.maintenance.delete_chunks(ino, c.generation, keep, had);
            c.dirty.retain(|n, _| *n < keep);
            c.cached = None;
            let cut = size % c.chunk_size;
            if cut != 0 {
                let n = size / c.chunk_size;
                if !c.dirty.contains_key(&n) {
                    let old = self.load_chunk(ino, c, n)?.to_vec();
                    c.dirty.insert(n, old);
                }
                c.dirty
                    .get_mut(&n)
                    .expect("inserted above")
                    .truncate(cut as usize);
            }
        }
        c.size = size;
        c.changed = true;
        Ok(())
    }

    /// Writes every changed chunk to the store and forgets it. On a store error the chunks
    /// not known written stay, to go with the next attempt.
    fn write_out_chunks(&self, ino: u64, c: &mut ChunkedFile) -> FsResult<()> {
        let mut chunks = std::mem::take(&mut c.dirty).into_iter().peekable();
        while chunks.peek().is_some() {
            // Each chunk's bytes move into its command (shared, not copied), and come back
            // if the batch fails.
            let batch: Vec<(u64, Arc<Vec<u8>>)> = chunks
                .by_ref()
                .take(CHUNK_BATCH)
                .map(|(n, b)| (n, Arc::new(b)))
                .collect();
            let cmds = batch
                .iter()
                .map(|(n, b)| {
                    let key = self.tree.keys.chunk(ino, c.generation, *n);
                    Command::store_shared(StoreOp::Set, &key, b.clone())
                })
                .collect();
            let results = self.tree.store.execute(cmds);
            c.written_until = c.written_until.max(batch.last().map_or(0, |(n, _)| n + 1));
            let failed = batch
                .iter()
                .zip(&results)
                .find_map(|((n, _), r)| r.as_ref().err().map(|e| (*n, e.clone())));
            if let Some((n, e)) = failed {
                for (n, b) in batch {
                    c.dirty
                        .insert(n, Arc::try_unwrap(b).unwrap_or_else(|b| b.to_vec()));
                }
                c.dirty.extend(chunks);
                return Err(FsError::store(
                    &self.tree.keys.chunk(ino, c.generation, n),
                    e,
                ));
            }
        }
        c.changed = true;
        Ok(())
    }

    /// A publish in chunks failed: what this mount wrote since the last publish is dropped
    /// (the caller reports the error) and the file reads as the store has it. Its chunks go
    /// to the heartbeat, which deletes them unless the record took them after all (a `cas`
    /// whose reply was lost).
    pub(crate) fn after_failed_chunked_publish(&self, ino: u64, of: &mut OpenFile) {
        if let Some(c) = of.chunks() {
            let until = chunk_count(c.size, c.chunk_size).max(c.written_until);
            let keys = (0..until).map(|n| self.tree.keys.chunk(ino, c.generation, n));
            self.maintenance.leave_stale_keys(keys);
        }
        // If the record's cas went through after all (its reply lost), the file's keys as
        // one item are garbage; the heartbeat deletes them only if no name holds bytes there.
        if let Ok(keys) = self.names.bytes_keys(ino, of.record()) {
            self.maintenance.leave_stale_keys(keys);
        }
        of.drop_pending();
        of.forget_version();
        of.forget_bytes();
    }

    /// Publishes a file in chunks: changed chunks out, chunks past a shrink deleted, then the
    /// record (size, chunk size, pending attributes) with cas. A file small enough for one
    /// item again goes back to one (the caller publishes it the usual way).
    pub(crate) fn publish_chunked(&self, ino: u64, of: &mut OpenFile) -> FsResult<Published> {
        let c = of.chunks_mut().expect("a file in chunks");
        if c.size <= self.tree.item_limit() {
            let bytes = self.read_chunked(ino, c, 0, c.size as u32)?;
            of.unchunk(bytes);
            return Ok(Published::Unchunked);
        }
        self.write_out_chunks(ino, c)?;
        let (size, chunk_size, generation) = (c.size, c.chunk_size, c.generation);
        let ikey = self.tree.keys.inode(ino);
        for _ in 0..crate::tree::CAS_RETRIES {
            if !self.refresh_record(ino, of)? {
                // (An unlink of this mount may be waiting for this open file to keep its
                // chunks: they go with the last handle, not now.)
                self.maintenance.delete_chunk_runs(ino, of.lose_record());
                return Ok(Published::Done(Vec::new()));
            }
            let mut rec = of.record_to_publish();
            rec.size = size;
            rec.chunk_size = Some(chunk_size);
            rec.chunk_gen = generation;
            let value = rec.encode();
            self.names.check_record_size(&ikey, value.len())?;
            // The file was one item until now: its served or private keys go after the cas
            // (worked out first: a store error then would leave them behind).
            let stale = self.names.bytes_keys(ino, of.record())?;
            // The lock, then the record, read after the cas as a publish's fence: an unlink
            // that read the record before this cas deletes the record without these chunks.
            // Either it still holds the lock at the lock read, or it has deleted the record
            // by the record read.
            let mut batch = Batch::new();
            let cas = batch.cas(&ikey, &value, of.cas().unwrap_or(0));
            batch.fence();
            let lock = batch.get(self.tree.keys.ns_lock());
            let record_after = batch.get(&ikey);
            let mut r = batch.execute(&self.tree.store);
            let stored = r.take(cas)?;
            // (A lock read that failed counts as held: publish again once quiet.)
            let lock_held = r.take(lock).map_or(true, |v| v.is_some());
            let removed_after = matches!(r.take(record_after), Ok(None));
            match stored {
                CasOutcome::Stored if removed_after && !lock_held => {
                    // Unlinked by another mount that read the record before this cas: the
                    // chunks this cas named are no record's now; they go with the last
                    // handle.
                    self.maintenance.delete_chunk_runs(ino, of.lose_record());
                    // (Keys of the file as one item go unless a name still reaches them.)
                    return Ok(Published::Done(stale));
                }
                CasOutcome::Stored => {
                    // Another set of chunks goes too.
                    if of.record().chunk_gen != generation {
                        self.maintenance.delete_record_chunks(ino, of.record());
                    }
                    if lock_held {
                        // Publish again once the namespace is quiet: the record may be gone
                        // (and these chunks with it). The old keys go by the heartbeat.
                        self.maintenance.leave_stale_keys(stale);
                        of.record_published(rec);
                        return Ok(Published::AfterNamespaceOp);
                    }
                    of.record_published(rec);
                    if let Some(c) = of.chunks_mut() {
                        c.changed = false;
                    }
                    return Ok(Published::Done(stale));
                }
                CasOutcome::Changed | CasOutcome::Gone => of.forget_version(),
            }
        }
        Err(FsError::Contended)
    }
}

/// Appends bytes `from..to` of a chunk to `out`, zeros where the stored chunk is shorter.
fn copy_part(out: &mut Vec<u8>, chunk: &[u8], from: usize, to: usize) {
    let have = chunk.len().min(to);
    if from < have {
        out.extend_from_slice(&chunk[from..have]);
    }
    out.resize(out.len() + (to - from.max(have)), 0);
}
