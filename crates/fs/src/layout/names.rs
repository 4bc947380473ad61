//! File names and paths as the filesystem takes them (no store access).

use crate::tree::NAME_MAX;
use crate::{FsError, FsResult};

/// EINVAL for a name no directory entry can have; ENAMETOOLONG past [`NAME_MAX`].
pub(crate) fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::Invalid("bad file name"));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong {
            key: String::from_utf8_lossy(name).into_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

/// `dir/name`.
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}
