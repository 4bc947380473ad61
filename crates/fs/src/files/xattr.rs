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

/// The name under which Linux passes a file's POSIX access ACL to a filesystem.
pub const ACCESS_ACL: &[u8] = b"system.posix_acl_access";
/// Both ACL names: the access ACL and a directory's default ACL.
const ACL_NAMES: [&[u8]; 2] = [ACCESS_ACL, b"system.posix_acl_default"];

/// The permission bits (`0o777` at most) a POSIX access ACL stands for when it holds only
/// the owner, group and other entries: setting such an ACL is a chmod, and a filesystem with
/// ACLs keeps nothing else for it (getxattr then answers ENODATA). `None` for any other ACL
/// (named users or groups, a mask) or a value that is not one.
///
/// The value as Linux passes it: a little-endian `u32` version (2), then 8-byte entries of
/// `u16` tag, `u16` permissions, `u32` id, sorted by tag (owner 0x01, group 0x04, other 0x20).
/// (By hand: three fixed-size entries; an ACL crate would bring a C library for them.)
pub fn minimal_access_acl_mode(value: &[u8]) -> Option<u32> {
    const VERSION: u32 = 2;
    const TAGS: [u16; 3] = [0x01, 0x04, 0x20];
    if value.len() != 4 + 3 * 8 || u32::from_le_bytes(value[..4].try_into().ok()?) != VERSION {
        return None;
    }
    let mut mode = 0;
    for (entry, tag) in value[4..].chunks_exact(8).zip(TAGS) {
        let perm = u16::from_le_bytes([entry[2], entry[3]]);
        if u16::from_le_bytes([entry[0], entry[1]]) != tag || perm > 7 {
            return None;
        }
        mode = (mode << 3) | u32::from(perm);
    }
    Some(mode)
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

    /// Sets the access ACL `value` for caller `uid`/`gid` when it holds only owner, group and
    /// other entries: the chmod it stands for, allowed to the owner and root, dropping
    /// set-group-ID for a caller outside the file's group as the kernel's chmod does (only
    /// the caller's primary group is known here, so a member through a supplementary group
    /// loses the bit too). `None` for any other ACL (not kept: EOPNOTSUPP to the caller).
    pub fn set_access_acl(
        &self,
        ino: u64,
        value: &[u8],
        uid: u32,
        gid: u32,
    ) -> Option<FsResult<()>> {
        let perms = minimal_access_acl_mode(value)?;
        Some((|| {
            let rec = self.current_record(ino)?;
            if uid != 0 && uid != rec.uid {
                return Err(FsError::NotPermitted("only the owner may set a file's ACL"));
            }
            let mut mode = (rec.mode & 0o7000) | perms;
            if uid != 0 && gid != rec.gid {
                mode &= !libc::S_ISGID;
            }
            let chmod = crate::layout::attr::SetAttr {
                mode: Some(mode),
                ..Default::default()
            };
            self.setattr(ino, &chmod).map(drop)
        })())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        if ACL_NAMES.contains(&name) {
            // No ACL is kept beyond the mode: there is none to remove, as on ext4 (`cp -a`
            // removes a copied directory's default ACL once it could set the access ACL).
            self.current_record(ino)?;
            return Ok(());
        }
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
mod acl_tests {
    use super::minimal_access_acl_mode;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn an_acl_of_owner_group_and_other_is_a_mode() {
        // What `cp -a` sets after copying a 0644 file (taken from strace).
        let cp = b"\x02\0\0\0\x01\0\x06\0\xff\xff\xff\xff\x04\0\x04\0\xff\xff\xff\xff\x20\0\x04\0\xff\xff\xff\xff";
        assert_eq!(minimal_access_acl_mode(cp), Some(0o644));
        let any = acl(&[(1, 7, 0), (4, 5, 0), (0x20, 0, 0)]);
        assert_eq!(minimal_access_acl_mode(&any), Some(0o750));
    }

    #[test]
    fn any_other_acl_is_not() {
        let user = u32::MAX;
        for other in [
            acl(&[
                (1, 6, user),
                (2, 6, 1000),
                (4, 4, user),
                (0x10, 6, user),
                (0x20, 4, user),
            ]),
            acl(&[(1, 6, user), (4, 4, user), (0x10, 4, user), (0x20, 4, user)]),
            acl(&[(1, 6, user), (4, 4, user)]),
            acl(&[(4, 6, user), (1, 4, user), (0x20, 4, user)]),
            acl(&[(1, 8, user), (4, 4, user), (0x20, 4, user)]),
        ] {
            assert_eq!(minimal_access_acl_mode(&other), None, "{other:?}");
        }
        let mut v1 = acl(&[(1, 6, user), (4, 4, user), (0x20, 4, user)]);
        v1[0] = 1;
        assert_eq!(minimal_access_acl_mode(&v1), None);
        assert_eq!(minimal_access_acl_mode(b""), None);
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
