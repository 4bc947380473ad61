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
//! Replaying all chunks in order gives the listing. A name maps to the inodes added to it
//! and not removed since, the latest one winning: a removal names the inode it removes, so a
//! late removal cannot hide a name another mount re-created meanwhile, and a create whose
//! claim of the name failed takes its `+` back with a `-` without hiding the name's owner.
//! Records are idempotent (adding a pair already there, or removing one that is not, changes
//! nothing), so an operation completed twice after a crash lists the same.

use std::collections::BTreeMap;

use crate::layout::record::Kind;
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
        Kind::Fifo => 'p',
        Kind::Socket => 's',
        Kind::CharDev => 'c',
        Kind::BlockDev => 'b',
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

/// Where a directory's log starts, the value of `PREFIX%b<dir>`: `<chunk>` or
/// `<chunk> <generation> <pieces>`. A replay reads the snapshot's pieces (the live names a
/// compaction wrote), then chunks `chunk ..= seq / LOG_CHUNK_RECORDS`. No key: chunk 0, no
/// snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogBase {
    pub chunk: u64,
    /// (generation, number of pieces).
    pub snapshot: Option<(u64, u64)>,
}

impl LogBase {
    pub fn encode(&self) -> String {
        match self.snapshot {
            Some((generation, pieces)) => format!("{} {generation} {pieces}", self.chunk),
            None => self.chunk.to_string(),
        }
    }

    /// The base stored at `key`, `None` for no value.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> FsResult<LogBase> {
        let Some(value) = value else {
            return Ok(LogBase::default());
        };
        let bad = || FsError::corrupt(key, "directory log base: not `CHUNK [GENERATION PIECES]`");
        let text = std::str::from_utf8(value).map_err(|_| bad())?;
        let nums: Vec<u64> = text
            .split(' ')
            .map(|n| n.parse().map_err(|_| bad()))
            .collect::<FsResult<_>>()?;
        match nums[..] {
            [chunk] => Ok(LogBase {
                chunk,
                snapshot: None,
            }),
            [chunk, generation, pieces] => Ok(LogBase {
                chunk,
                snapshot: Some((generation, pieces)),
            }),
            _ => Err(bad()),
        }
    }
}

/// A directory's log position: its sequence number (`None` when fenced), the sequence key's
/// cas token, and where replays start.
pub(crate) struct DirSeq {
    pub seq: Option<u64>,
    pub cas: u64,
    pub base: LogBase,
}

/// A directory's listing: each name with the inode it points at and its kind.
pub type Listing = BTreeMap<Vec<u8>, (u64, Kind)>;

/// The state of a log being replayed: every name with the inodes it points at, latest last.
#[derive(Debug, Default)]
pub struct Replay {
    names: BTreeMap<Vec<u8>, NameState>,
    /// Records replayed (what compaction weighs against the names left).
    records: usize,
}

/// A name during replay: its live inodes, latest last, and whether it had more than one
/// since it was last empty (then only the entry key can tell which, if any, is real).
type NameState = (Vec<(u64, Kind)>, bool);

/// Names the log added more than one inode to without removing the others (a create that
/// lost the claim of a name to another and died before taking its record back), with the
/// inodes still live. The entry key decides which, if any, the name has.
pub type Ambiguous = Vec<(Vec<u8>, Vec<(u64, Kind)>)>;

impl Replay {
    /// How many records were replayed.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The listing: each name with the inode it points at, and the names only the entry
    /// keys can settle.
    pub fn finish(self) -> (Listing, Ambiguous) {
        let mut listing = Listing::new();
        let mut ambiguous = Ambiguous::new();
        for (name, (mut inos, doubtful)) in self.names {
            match (inos.len(), doubtful) {
                (0, _) => {}
                (1, false) => {
                    listing.insert(name, inos.pop().expect("one"));
                }
                _ => ambiguous.push((name, inos)),
            }
        }
        (listing, ambiguous)
    }

    /// The listing, taking the latest inode of an ambiguous name (for tests).
    pub fn listing(self) -> Listing {
        self.names
            .into_iter()
            .filter_map(|(name, (mut inos, _))| Some((name, inos.pop()?)))
            .collect()
    }
}

/// Settles ambiguous names with their entry keys' values (`entries[i]` for `ambiguous[i]`;
/// `None`: no entry): a name lists the inode its entry names, or nothing.
pub fn settle(listing: &mut Listing, ambiguous: Ambiguous, entries: &[Option<u64>]) {
    for ((name, inos), entry) in ambiguous.into_iter().zip(entries) {
        if let Some(found) = inos.into_iter().find(|(ino, _)| Some(*ino) == *entry) {
            listing.insert(name, found);
        }
    }
}

/// Applies the records of one chunk to `state`.
pub fn replay(key: &[u8], chunk: &[u8], state: &mut Replay) -> FsResult<()> {
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
            Some(b'p') => Kind::Fifo,
            Some(b's') => Kind::Socket,
            Some(b'c') => Kind::CharDev,
            Some(b'b') => Kind::BlockDev,
            _ => return Err(bad("bad kind")),
        };
        let ino = num(&rest[2..space]).ok_or_else(|| bad("bad inode number"))?;
        let len = num(&rest[space + 1..colon]).ok_or_else(|| bad("bad name length"))? as usize;
        let end = colon + 1 + len;
        if rest.len() <= end || rest[end] != b'\n' {
            return Err(bad("truncated record"));
        }
        let name = rest[colon + 1..end].to_vec();
        state.records += 1;
        let (inos, doubtful) = state.names.entry(name).or_default();
        inos.retain(|(i, _)| *i != ino);
        if op == Op::Add {
            inos.push((ino, kind));
        }
        *doubtful = match inos.len() {
            0 => false,
            1 => *doubtful,
            _ => true,
        };
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
        log.extend(encode(Op::Add, Kind::File, 8, b"y"));
        log.extend(encode(Op::Add, Kind::Dir, 9, b"y")); // a create that lost the claim...
        log.extend(encode(Op::Remove, Kind::Dir, 9, b"y")); // ...takes its record back
        log.extend(encode(Op::Add, Kind::File, 8, b"y")); // completed twice
        let mut state = Replay::default();
        replay(b"k", &log, &mut state).unwrap();
        let listing = state.listing();
        assert_eq!(listing.get(&b"x"[..]), Some(&(7, Kind::File)));
        assert_eq!(listing.get(&b"y"[..]), Some(&(8, Kind::File)));
        assert_eq!(listing.get(&b"we\nird:name"[..]), Some(&(6, Kind::Dir)));
    }

    #[test]
    fn log_base_round_trips() {
        for base in [
            LogBase::default(),
            LogBase {
                chunk: 7,
                snapshot: Some((123456789, 3)),
            },
        ] {
            let text = base.encode();
            assert_eq!(LogBase::decode(b"k", Some(text.as_bytes())).unwrap(), base);
        }
        assert_eq!(LogBase::decode(b"k", None).unwrap(), LogBase::default());
        assert!(LogBase::decode(b"k", Some(b"7 8")).is_err());
    }

    #[test]
    fn truncated_log_is_an_error_naming_the_key() {
        let mut state = Replay::default();
        let err = replay(b"memfis://h%l1.0", b"+f5 3:ab", &mut state).unwrap_err();
        assert!(err.to_string().contains("memfis://h%l1.0"));
    }
}
