//! Decoding single replies: a get's value, a `cas`, a directory entry, a counter. Batches
//! read their replies by handle (`batch.rs`); these serve single commands (`Store::run`) and
//! sweeps that zip keys with results, through the same conversion (`batch::read`).

use memfis_memcache::{CmdResult, Item};

use crate::store::batch;
pub(crate) use crate::store::batch::CasOutcome;
use crate::{FsError, FsResult};

/// A directory entry as read from the store: the child's inode (or `None` once removed) and
/// the cas token to change it.
#[derive(Debug)]
pub(crate) struct EntrySlot {
    pub ino: Option<u64>,
    pub cas: Option<u64>,
    /// A hashed key holding the entry of another name (two names with one hash): the name
    /// asked for has no entry (`ino` and `cas` are `None`), and its key is not its to claim.
    pub taken_by: Option<Vec<u8>>,
}

/// Maps a batch result to the value of a get, naming the key on failure.
pub(crate) fn value_of(key: &[u8], r: CmdResult) -> FsResult<Option<Item>> {
    batch::read::<batch::Got>(key, r)
}

/// A decimal counter value (sequence keys, inode counters).
pub(crate) fn parse_number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Decodes the reply to a `gets` of the entry key `key` of `name`. A hashed key's value
/// carries the name it belongs to: another name's entry reads as none, with `taken_by` set.
pub(crate) fn entry_slot(key: &[u8], name: &[u8], r: CmdResult) -> FsResult<EntrySlot> {
    decode_entry(key, name, value_of(key, r)?)
}

/// Decodes what a `gets` of the entry key `key` of `name` found.
pub(crate) fn decode_entry(key: &[u8], name: &[u8], item: Option<Item>) -> FsResult<EntrySlot> {
    let Some(item) = item else {
        return Ok(EntrySlot {
            ino: None,
            cas: None,
            taken_by: None,
        });
    };
    let (ino, stored_name) = parse_entry(key, &item.value)?;
    match stored_name {
        Some(stored) if stored != name => Ok(EntrySlot {
            ino: None,
            cas: None,
            taken_by: Some(stored.to_vec()),
        }),
        _ => Ok(EntrySlot {
            ino,
            cas: item.cas,
            taken_by: None,
        }),
    }
}

/// An entry's value: the child's inode number, followed for a hashed key by `/` and the
/// name. `-` at a plain key (left by older versions for a removed name) reads as no entry.
fn parse_entry<'v>(key: &[u8], value: &'v [u8]) -> FsResult<(Option<u64>, Option<&'v [u8]>)> {
    let hashed = crate::layout::keys::is_hashed_entry_key(key);
    if value == b"-" && !hashed {
        return Ok((None, None));
    }
    let (number, name) = match value.iter().position(|&b| b == b'/') {
        Some(slash) if hashed => (&value[..slash], Some(&value[slash + 1..])),
        None if !hashed => (value, None),
        _ if hashed => {
            return Err(FsError::corrupt(
                key,
                "hashed directory entry does not carry its name",
            ));
        }
        _ => {
            return Err(FsError::corrupt(
                key,
                "directory entry is not an inode number",
            ));
        }
    };
    std::str::from_utf8(number)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(|ino| (Some(ino), name))
        .ok_or_else(|| FsError::corrupt(key, "directory entry is not an inode number"))
}

#[cfg(test)]
mod tests {
    use memfis_memcache::{Item, Reply};

    use super::*;

    fn got(value: &[u8]) -> CmdResult {
        Ok(Reply::Value(Some(Item {
            value: value.to_vec(),
            flags: 0,
            cas: Some(9),
        })))
    }

    #[test]
    fn a_hashed_entry_belongs_to_the_name_it_carries() {
        let key = b"memfis://h%h1/00ff";
        let mine = entry_slot(key, b"long", got(b"7/long")).unwrap();
        assert_eq!(
            (mine.ino, mine.cas, mine.taken_by),
            (Some(7), Some(9), None)
        );
        // Another name's entry at this key: no entry for this name, and none to claim.
        let theirs = entry_slot(key, b"other", got(b"7/long")).unwrap();
        assert_eq!(
            (theirs.ino, theirs.cas, theirs.taken_by),
            (None, None, Some(b"long".to_vec()))
        );
        // A hashed entry without its name cannot be told apart: EIO, never followed.
        let bare = entry_slot(key, b"long", got(b"7")).unwrap_err();
        assert_eq!(bare.errno(), libc::EIO);
        assert!(entry_slot(key, b"long", got(b"-")).is_err());
        // A plain key holds the number alone (its key is the name).
        let plain = b"memfis://h%e1/short";
        assert_eq!(entry_slot(plain, b"short", got(b"7")).unwrap().ino, Some(7));
        assert!(entry_slot(plain, b"short", got(b"7/short")).is_err());
        assert_eq!(entry_slot(plain, b"short", got(b"-")).unwrap().ino, None);
    }
}
