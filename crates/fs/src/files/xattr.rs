//! Extended attributes: `user.*` only, kept in the inode record (so an open file answers
//! from its buffer, with no store round trip).

use memfis_memcache::Store;

use crate::files::Files;
use crate::layout::record::{Inode, Time, pct_decode, pct_encode};
use crate::sync::lock;
use crate::{FsError, FsResult};

/// Namespaces Linux knows. A name in none of them is EOPNOTSUPP; a name that is only a
/// namespace (`user.`) is EINVAL, as tmpfs answers both (`system.` has no bare form: it is
/// a set of whole names, so `system.` alone is simply unsupported).
const NAMESPACES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"system."];

/// True for a `user.*` name (the only ones memfis keeps); false for a name of another
/// namespace Linux knows; an error where tmpfs gives one whatever the file.
fn is_user_xattr(name: &[u8]) -> FsResult<bool> {
    match NAMESPACES.iter().find(|ns| name.starts_with(ns)) {
        None => Err(FsError::NotSupported(
            "extended attribute outside any namespace",
        )),
        Some(ns) if name.len() == ns.len() && *ns != b"system." => Err(FsError::Invalid(
            "extended attribute name empty after its namespace",
        )),
        Some(ns) => Ok(*ns == b"user."),
    }
}

impl<S: Store> Files<S> {
    fn xattr_name(name: &[u8]) -> FsResult<String> {
        if !is_user_xattr(name)? {
            return Err(FsError::NotSupported("only user.* extended attributes"));
        }
        Ok(pct_encode(name))
    }

    pub(crate) fn current_record(&self, ino: u64) -> FsResult<Inode> {
        if let Some(of) = self.open_files.get(ino) {
            return Ok(lock(&of).view());
        }
        Ok(self.names.read_live_inode(ino)?.0)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if !is_user_xattr(name)? {
            return Err(FsError::NoXattr); // (none is kept, so none is there)
        }
        let rec = self.current_record(ino)?;
        let value = rec.xattrs.get(&pct_encode(name)).ok_or(FsError::NoXattr)?;
        pct_decode(value)
            .ok_or_else(|| FsError::corrupt(&self.tree.keys.inode(ino), "bad xattr value"))
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        let rec = self.current_record(ino)?;
        Ok(rec.xattrs.keys().filter_map(|k| pct_decode(k)).collect())
    }

    /// `flags`: XATTR_CREATE (1) fails if present, XATTR_REPLACE (2) fails if absent.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        let key = Self::xattr_name(name)?;
        self.names.update_inode(ino, |r| {
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
        self.names.update_inode(ino, |r| {
            r.xattrs.remove(&key).ok_or(FsError::NoXattr)?;
            r.ctime = Time::now();
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_judged_as_tmpfs_judges_them() {
        assert!(is_user_xattr(b"user.x").unwrap());
        assert!(!is_user_xattr(b"security.selinux").unwrap());
        assert!(!is_user_xattr(b"system.posix_acl_access").unwrap());
        assert!(!is_user_xattr(b"system.").unwrap());
        for bare in [&b"user."[..], b"trusted.", b"security."] {
            assert_eq!(is_user_xattr(bare).unwrap_err().errno(), libc::EINVAL);
        }
        for odd in [&b"user"[..], b"bogus.x", b"", b"USER.x"] {
            assert_eq!(is_user_xattr(odd).unwrap_err().errno(), libc::EOPNOTSUPP);
        }
    }
}
