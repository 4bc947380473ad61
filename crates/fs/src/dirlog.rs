//! Directory logs: how a directory lists its entries in O(1) store operations per change.
//!
//! Each change appends one record (`append`) to chunk `seq / LOG_CHUNK_RECORDS`, where `seq`
//! comes from `incr` on the directory's sequence key. Records:
//!
//! ```text
//! +<kind><ino> <len>:<name>\n    name now points at ino; kind is f (file), d (dir), l (symlink)
//! -<kind><ino> <len>:<name>\n    name no longer points at ino (ignored if it points elsewhere)
//! ```
//!
//! Replaying all chunks in order gives the listing. Because a removal names the inode it
//! removes, racing mounts cannot hide a name that another mount re-created meanwhile.

use std::collections::BTreeMap;

use crate::record::Kind;
use crate::{FsError, FsResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
}

fn kind_char(kind: Kind) -> char {
    match kind {
        Kind::File => 'f',
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
    }
}

pub fn encode(op: Op, kind: Kind, ino: u64, name: &[u8]) -> Vec<u8> {
    let sign = match op {
        Op::Add => '+',
        Op::Remove => '-',
    };
    let k = kind_char(kind);
    let mut out = format!("{sign}{k}{ino} {}:", name.len()).into_bytes();
    out.extend_from_slice(name);
    out.push(b'\n');
    out
}

/// Applies the records of one chunk to `listing` (name -> (ino, kind)).
pub fn replay(
    key: &[u8],
    chunk: &[u8],
    listing: &mut BTreeMap<Vec<u8>, (u64, Kind)>,
) -> FsResult<()> {
    let mut rest = chunk;
    while !rest.is_empty() {
        let bad = |why: &str| FsError::corrupt(key, format!("directory log: {why}"));
        let op = match rest[0] {
            b'+' => Op::Add,
            b'-' => Op::Remove,
            _ => return Err(bad("record does not start with + or -")),
        };
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no space"))?;
        let colon = rest
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("no colon"))?;
        let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u64>().ok();
        let kind = match rest.get(1) {
            Some(b'f') => Kind::File,
            Some(b'd') => Kind::Dir,
            Some(b'l') => Kind::Symlink,
            _ => return Err(bad("bad kind")),
        };
        let ino = num(&rest[2..space]).ok_or_else(|| bad("bad inode number"))?;
        let len = num(&rest[space + 1..colon]).ok_or_else(|| bad("bad name length"))? as usize;
        let end = colon + 1 + len;
        if rest.len() <= end || rest[end] != b'\n' {
            return Err(bad("truncated record"));
        }
        let name = rest[colon + 1..end].to_vec();
        match op {
            Op::Add => {
                listing.insert(name, (ino, kind));
            }
            Op::Remove => {
                if listing.get(&name).map(|e| e.0) == Some(ino) {
                    listing.remove(&name);
                }
            }
        }
        rest = &rest[end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_adds_and_removes_by_inode() {
        let mut log = Vec::new();
        log.extend(encode(Op::Add, Kind::File, 5, b"x"));
        log.extend(encode(Op::Add, Kind::Dir, 6, b"we\nird:name"));
        log.extend(encode(Op::Add, Kind::File, 7, b"x")); // another mount replaced x
        log.extend(encode(Op::Remove, Kind::File, 5, b"x")); // a late removal of the old x
        let mut listing = BTreeMap::new();
        replay(b"k", &log, &mut listing).unwrap();
        assert_eq!(listing.get(&b"x"[..]), Some(&(7, Kind::File)));
        assert_eq!(listing.get(&b"we\nird:name"[..]), Some(&(6, Kind::Dir)));
    }

    #[test]
    fn truncated_log_is_an_error_naming_the_key() {
        let mut listing = BTreeMap::new();
        let err = replay(b"memfis://h%l1.0", b"+f5 3:ab", &mut listing).unwrap_err();
        assert!(err.to_string().contains("memfis://h%l1.0"));
    }
}
