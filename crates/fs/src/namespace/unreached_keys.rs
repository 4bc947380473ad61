//! Keys that hold no name's bytes any more: data keys at paths a rename took away, keys a
//! mode change or a failed publish left behind, chunks of an earlier generation. Deleted
//! under the namespace lock once no name reaches them (the heartbeat retries what fails).

use memfis_memcache::{Command, Store};

use crate::files::chunk_buffer::chunk_count;
use crate::layout::record::{Inode, Kind};
use crate::namespace::Namespace;
use crate::store::batch::StoreAt;
use crate::store::retried;
use crate::{FsError, FsResult};

impl<S: Store> Namespace<S> {
    /// Deletes keys a publish wrote that hold no name's bytes any more: data keys at paths a
    /// rename took away (another file's key is left alone), keys a mode change left behind.
    /// Under the namespace lock, so no rename or chmod changes the answer between the check
    /// and the delete. If that fails, the keys are kept for the heartbeat to retry.
    pub(crate) fn delete_keys_outside_tree(&self, keys: &[Vec<u8>]) -> FsResult<()> {
        let deleted = retried(|| {
            self.with_ns_lock(crate::store::batch::Batch::new(), |_, _| {
                self.delete_unreached(keys)
            })
        });
        if deleted.is_err() {
            self.maintenance.leave_stale_keys(keys.iter().cloned());
        }
        deleted
    }

    /// [`Self::delete_keys_outside_tree`] for a caller that holds the lock.
    pub(crate) fn delete_unreached(&self, keys: &[Vec<u8>]) -> FsResult<()> {
        // Whether a name reaches a key is worked out with this mount's cached directory paths:
        // current only once the directory-rename count is read (no directory moves while the
        // lock is held). A stale path would miss the file now at the key and delete its bytes.
        let generation = self.tree.keys.dir_generation();
        self.observe_generation(self.tree.store.run(Command::Get(generation)))?;
        for key in keys {
            if !self.holds_bytes_of_a_name(key)? {
                self.tree.store.delete_at(key)?;
            }
        }
        Ok(())
    }

    /// True when `key` is where some name of a file keeps its bytes (`KeyLayout::file_bytes`);
    /// also for keys that are neither data nor private keys, which this never deletes.
    fn holds_bytes_of_a_name(&self, key: &[u8]) -> FsResult<bool> {
        // Paths start with `/`; metadata keys (a private key among them) with `%`.
        let data_prefix = self.tree.keys.data(b"");
        if let Some(escaped_path) = key.strip_prefix(data_prefix.as_slice())
            && escaped_path.starts_with(b"/")
        {
            let path = crate::layout::keys::unescape(escaped_path);
            let Some(ino) = self.resolve_path(&path)? else {
                return Ok(false);
            };
            return Ok(match self.read_inode_opt(ino)? {
                Some((rec, _)) if rec.kind == Kind::File => {
                    self.bytes_keys_include(ino, &rec, key)?
                }
                // Not a file: a directory's path holds no bytes. (A record missing
                // meanwhile: left for `memfis check`.)
                Some(_) => false,
                None => true,
            });
        }
        if key.starts_with(&self.tree.keys.chunk_prefix()) {
            return self.chunk_in_use(key);
        }
        let private_prefix = self.tree.keys.private_data_prefix();
        if let Some(number) = key.strip_prefix(private_prefix.as_slice())
            && let Some(ino) = crate::store::replies::parse_number(number)
        {
            return Ok(match self.read_inode_opt(ino)? {
                Some((rec, _)) => self.bytes_keys_include(ino, &rec, key)?,
                None => false,
            });
        }
        Ok(true)
    }

    /// Whether `key` is among the keys of the file's bytes. A name of its record in a
    /// directory that is gone, is no directory or is damaged (damage a fault left: `memfis
    /// check` reports it) leaves the paths unknown: the key is kept, rather than fail every
    /// later try (the heartbeat's).
    fn bytes_keys_include(&self, ino: u64, rec: &Inode, key: &[u8]) -> FsResult<bool> {
        match self.bytes_keys(ino, rec) {
            Ok(keys) => Ok(keys.iter().any(|k| k == key)),
            Err(e) if matches!(e, FsError::NotFound | FsError::NotDir) || e.is_damage() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// True when chunk key `key` (`%k<ino>.<generation>.<n>`) holds bytes of a file.
    pub(crate) fn chunk_in_use(&self, key: &[u8]) -> FsResult<bool> {
        let rest = &key[self.tree.keys.chunk_prefix().len()..];
        let text = String::from_utf8_lossy(rest);
        let mut parts = text.split('.');
        let (Some(ino), Some(generation), Some(n)) = (
            parts.next().and_then(|p| p.parse::<u64>().ok()),
            parts.next().and_then(|p| u64::from_str_radix(p, 16).ok()),
            parts.next().and_then(|p| p.parse::<u64>().ok()),
        ) else {
            return Ok(true); // not a chunk key this version makes: left alone
        };
        Ok(match self.read_inode_opt(ino)? {
            Some((rec, _)) => {
                rec.chunk_gen == generation
                    && rec
                        .chunk_size
                        .is_some_and(|cs| n < chunk_count(rec.size, cs))
            }
            None => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use memfis_memcache::memory::MemoryStore;
    use memfis_memcache::{Command, Store, StoreOp};

    use crate::layout::keys::ROOT_INO;
    use crate::layout::record::Inode;
    use crate::{FsConfig, KeyLayout, MemFs};

    /// The kernel-like harness hung on this: after lost replies, a file reached by an entry
    /// whose record names it in a directory that is gone. Working out whether a stale key
    /// holds its bytes failed with ENOENT at every heartbeat, so the heartbeat never
    /// succeeded again. The key is kept (check reports the record), and the call succeeds.
    #[test]
    fn a_key_of_a_file_whose_record_names_a_gone_directory_is_kept() {
        let store = Arc::new(MemoryStore::default());
        let keys = KeyLayout::new("memfis://gone-parent").unwrap();
        let fs = MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap();
        let (attr, fh) = fs
            .create(ROOT_INO, b"f", 0o644, libc::O_WRONLY, 0, 0)
            .unwrap();
        fs.write(fh, 0, b"bytes", false).unwrap();
        fs.release(fh).unwrap();
        let ikey = keys.inode(attr.ino);
        let item = store.get(&ikey).unwrap().unwrap();
        let mut rec = Inode::decode(&ikey, &item.value).unwrap();
        rec.links[0].parent = 999; // no such directory
        store
            .run(Command::store(StoreOp::Set, &ikey, &rec.encode()))
            .unwrap();
        let served = keys.data(b"/f");
        fs.names
            .delete_unreached(std::slice::from_ref(&served))
            .unwrap();
        assert!(store.get(&served).unwrap().is_some(), "the bytes are kept");
    }
}
