//! The reader threads: each file's bytes, a piece at a time, then its xattrs and metadata.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use memfis_memcache::Store;

use super::Exporter;
use super::local::set_local_attrs;
use super::walk::FileJob;

/// Bytes read per call: a file in chunks may be far larger than memory.
const PIECE: u32 = 1 << 20;

impl<S: Store> Exporter<'_, S> {
    pub(super) fn write_files(&self, jobs: &Mutex<Receiver<FileJob>>) {
        loop {
            let (ino, local, attr) = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            let written = self.copy_file(ino, &local).and_then(|len| {
                self.copy_xattrs(ino, &local)?;
                set_local_attrs(&local, &attr)?;
                Ok(len)
            });
            match written {
                Ok(len) => {
                    self.files.fetch_add(1, Ordering::Relaxed);
                    self.bytes.fetch_add(len, Ordering::Relaxed);
                }
                Err(e) => self.error(&local, e),
            }
        }
    }

    /// Copies a file's bytes to `local`; returns how many.
    fn copy_file(&self, ino: u64, local: &Path) -> std::io::Result<u64> {
        let fh = self
            .fs
            .open(ino, libc::O_RDONLY)
            .map_err(std::io::Error::other)?;
        let copied = (|| {
            let mut out = std::io::BufWriter::new(std::fs::File::create(local)?);
            let mut offset = 0u64;
            loop {
                let piece = self
                    .fs
                    .read(fh, offset, PIECE)
                    .map_err(std::io::Error::other)?;
                if piece.is_empty() {
                    break;
                }
                std::io::Write::write_all(&mut out, &piece)?;
                offset += piece.len() as u64;
            }
            std::io::Write::flush(&mut out)?;
            Ok(offset)
        })();
        let _ = self.fs.release(fh);
        copied
    }

    fn copy_xattrs(&self, ino: u64, local: &Path) -> std::io::Result<()> {
        let names = self.fs.listxattr(ino).map_err(std::io::Error::other)?;
        for name in names {
            let value = self
                .fs
                .getxattr(ino, &name)
                .map_err(std::io::Error::other)?;
            xattr::set(local, std::ffi::OsStr::from_bytes(&name), &value)?;
        }
        Ok(())
    }
}
