//! Extended attributes: `user.*` only, kept in the inode record (so an open file answers
//! from its buffer, with no store round trip).

use memfis_memcache::Store;

use crate::fs::MemFs;
use crate::record::{Inode, Time, pct_decode, pct_encode};
use crate::sync::lock;
use crate::{FsError, FsResult};

impl<S: Store> MemFs<S> {
    fn xattr_name(name: &[u8]) -> FsResult<String> {
        if !name.starts_with(b"user.") {
            return Err(FsError::NotSupported("only user.* extended attributes"));
        }
        Ok(pct_encode(name))
    }

    pub(crate) fn current_record(&self, ino: u64) -> FsResult<Inode> {
        if let Some(of) = self.open_file(ino) {
            return Ok(lock(&of).view());
        }
        Ok(self.read_live_inode(ino)?.0)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if !name.starts_with(b"user.") {
            return Err(FsError::NoXattr);
        }
        let rec = self.current_record(ino)?;
        let value = rec.xattrs.get(&pct_encode(name)).ok_or(FsError::NoXattr)?;
        pct_decode(value).ok_or_else(|| FsError::corrupt(&self.keys.inode(ino), "bad xattr value"))
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        let rec = self.current_record(ino)?;
        Ok(rec.xattrs.keys().filter_map(|k| pct_decode(k)).collect())
    }

    /// `flags`: XATTR_CREATE (1) fails if present, XATTR_REPLACE (2) fails if absent.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        let key = Self::xattr_name(name)?;
        self.update_inode(ino, |r| {
            let present = r.xattrs.contains_key(&key);
            if flags & libc::XATTR_CREATE != 0 && present {
                return Err(FsError::Exists);
            }
            if flags & libc::XATTR_REPLACE != 0 && !present {
                return Err(FsError::NoXattr);
            }
            r.xattrs.insert(key.clone(), pct_encode(value));
            r.ctime = Time::now();
            Ok(())
        })?;
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        let key = Self::xattr_name(name)?;
        self.update_inode(ino, |r| {
            r.xattrs.remove(&key).ok_or(FsError::NoXattr)?;
            r.ctime = Time::now();
            Ok(())
        })?;
        Ok(())
    }
}
