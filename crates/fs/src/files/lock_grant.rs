//! What a file lock granted means for the open file: another mount may have published the
//! file since this mount read it, and the lock's holder must read those bytes.

use memfis_memcache::{Item, Store};

use crate::FsResult;
use crate::files::Files;
use crate::layout::record::Inode;
use crate::sync::lock;

impl<S: Store> Files<S> {
    /// Whether the kernel's pages of a file just locked are stale (another mount published
    /// it since), from the record read after the grant. The lock stands either way: without
    /// the record they count as stale.
    pub(crate) fn pages_stale_after_grant(&self, ino: u64, record: FsResult<Option<Item>>) -> bool {
        match record {
            Ok(record) => self.adopt_published(ino, record).unwrap_or(true),
            Err(_) => true,
        }
    }

    /// A lock was granted and `record` read after it: if another mount published the file
    /// since this mount read it, the open file takes the new record and drops its bytes
    /// (unless it holds writes not yet published). True when the file changed.
    fn adopt_published(&self, ino: u64, record: Option<Item>) -> FsResult<bool> {
        let Some(item) = record else {
            return Ok(false); // removed: reads answer ENOENT as for any stale handle
        };
        let Some(of) = self.open_files.get(ino) else {
            return Ok(false);
        };
        let mut of = lock(&of);
        if item.cas.is_some() && of.cas() == item.cas {
            return Ok(false);
        }
        if of.is_dirty() || of.is_unlinked() {
            return Ok(false);
        }
        of.take_newer_record(
            Inode::decode(&self.tree.keys.inode(ino), &item.value)?,
            item.cas,
        );
        of.forget_bytes();
        Ok(true)
    }
}
