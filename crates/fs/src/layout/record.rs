//! Metadata records as stored: the inode record (JSON), the format record, and the byte
//! strings inside them (names, link targets, xattr values), percent-encoded so JSON stays ASCII.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{FsError, FsResult};

/// Version of the store layout this build reads and writes. 2: long names are keyed by
/// SHA-256 (was: two CRC-32s, which a second name could be made to match) and their entry
/// values carry the name. Stores of another version are refused, never changed.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FormatRecord {
    pub format: String,
    pub version: u32,
    /// Random id given when the store was formatted: a mount that finds another (or none)
    /// knows its store was emptied or replaced under it.
    #[serde(default)]
    pub store_id: String,
    /// Copies of each key on a pool (`--replicas`); absent for 1, so a tree with one copy
    /// keeps the record it always had.
    #[serde(default = "one_copy", skip_serializing_if = "is_one_copy")]
    pub replicas: usize,
}

fn one_copy() -> usize {
    1
}

fn is_one_copy(n: &usize) -> bool {
    *n == 1
}

impl FormatRecord {
    pub fn new(store_id: String) -> FormatRecord {
        FormatRecord {
            format: "memfis".into(),
            version: FORMAT_VERSION,
            store_id,
            replicas: 1,
        }
    }
}

/// A random 64-bit id as 16 hex digits (store ids, mount ids).
pub fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixing in time and pid keeps ids apart even if two
    // processes got the same seed.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Named pipe (mkfifo): an inode with no bytes in the store; the kernel makes the pipe.
    Fifo,
    /// Unix socket bound in the tree: an inode with no bytes, as for a FIFO.
    Socket,
    /// Character device node, its device number in `rdev`.
    CharDev,
    /// Block device node, its device number in `rdev`.
    BlockDev,
}

impl Kind {
    /// The special kinds: inodes with no data key, no log, no target.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev
        )
    }

    /// The kind of a `st_mode`'s file type bits (`S_IFMT`).
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A timestamp with nanoseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    pub s: i64,
    pub ns: u32,
}

impl Time {
    pub fn now() -> Time {
        Time::from(SystemTime::now())
    }

    /// `SECONDS.NANOS`, the form of the directory mtime key.
    pub fn to_text(self) -> String {
        format!("{}.{:09}", self.s, self.ns)
    }

    pub fn from_text(text: &[u8]) -> Option<Time> {
        let text = std::str::from_utf8(text).ok()?;
        let (s, ns) = text.split_once('.')?;
        Some(Time {
            s: s.parse().ok()?,
            ns: ns.parse().ok()?,
        })
    }
}

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Time {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time {
                s: d.as_secs() as i64,
                ns: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Time {
                        s: -(d.as_secs() as i64),
                        ns: 0,
                    }
                } else {
                    Time {
                        s: -(d.as_secs() as i64) - 1,
                        ns: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Time> for SystemTime {
    fn from(t: Time) -> SystemTime {
        if t.s >= 0 {
            UNIX_EPOCH + std::time::Duration::new(t.s as u64, t.ns)
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs((-t.s) as u64)
                + std::time::Duration::from_nanos(t.ns as u64)
        }
    }
}

/// One name of an inode: entry `name` in directory `parent`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub parent: u64,
    #[serde(with = "pct")]
    pub name: Vec<u8>,
}

impl Link {
    pub fn new(parent: u64, name: &[u8]) -> Link {
        Link {
            parent,
            name: name.to_vec(),
        }
    }
}

/// Everything about an inode except a file's bytes (which live at its data keys).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inode {
    pub kind: Kind,
    /// Permission bits (07777); the file type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// Every name of the inode. A directory has one (the root none); a file one per hard link.
    pub links: Vec<Link>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "pct_opt")]
    pub target: Option<Vec<u8>>,
    /// Device number of a character or block device (0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// user.* extended attributes, name and value percent-encoded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// A file larger than one item: its bytes are in chunks of this many bytes at
    /// `PREFIX%k<ino>.<chunk_gen>.<n>` (`chunked.rs`), and no name is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    /// Which set of chunks holds the bytes: each time a file goes into chunks it takes a new
    /// random generation, so chunks an earlier time left can go without touching these.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_gen: u64,
}

impl Inode {
    pub fn new(kind: Kind, mode: u32, uid: u32, gid: u32, links: Vec<Link>) -> Inode {
        let now = Time::now();
        Inode {
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            links,
            target: None,
            rdev: 0,
            xattrs: BTreeMap::new(),
            chunk_size: None,
            chunk_gen: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("inode record serializes")
    }

    pub fn decode(key: &[u8], bytes: &[u8]) -> FsResult<Inode> {
        serde_json::from_slice(bytes).map_err(|e| FsError::corrupt(key, e.to_string()))
    }

    pub fn replace_link(&mut self, old: &Link, new: Link) {
        match self.links.iter_mut().find(|l| *l == old) {
            Some(l) => *l = new,
            None => self.links.push(new),
        }
    }

    pub fn remove_link(&mut self, old: &Link) {
        if let Some(i) = self.links.iter().position(|l| l == old) {
            self.links.remove(i);
        }
    }
}

/// Percent-encodes bytes: control bytes, space, `%` and bytes >= 0x7f become `%XX`.
pub fn pct_encode(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if b <= 0x20 || b >= 0x7f || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

pub fn pct_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

pub(crate) mod pct {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::pct_encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::pct_decode(&text).ok_or_else(|| D::Error::custom("bad percent-encoding"))
    }
}

pub(crate) mod pct_opt {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&super::pct_encode(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::pct_decode(&text)
                .map(Some)
                .ok_or_else(|| D::Error::custom("bad percent-encoding")),
            None => Ok(None),
        }
    }
}

pub(crate) mod pct_list {
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for item in v {
            seq.serialize_element(&super::pct_encode(item))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                super::pct_decode(text).ok_or_else(|| D::Error::custom("bad percent-encoding"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trips_with_binary_names() {
        let mut ino = Inode::new(
            Kind::File,
            0o644,
            1,
            2,
            vec![Link {
                parent: 1,
                name: b"a b%\xff\n".to_vec(),
            }],
        );
        ino.target = Some(b"../t".to_vec());
        ino.xattrs
            .insert(pct_encode(b"user.x"), pct_encode(b"\x00\x01"));
        let bytes = ino.encode();
        assert!(bytes.is_ascii());
        assert_eq!(Inode::decode(b"k", &bytes).unwrap(), ino);
    }

    #[test]
    fn malformed_record_names_the_key() {
        let err = Inode::decode(b"memfis://h%i7", b"{nope").unwrap_err();
        assert!(err.to_string().contains("memfis://h%i7"));
        assert_eq!(err.errno(), libc::EIO);
    }

    #[test]
    fn time_text_round_trips() {
        let t = Time {
            s: 1700000000,
            ns: 5,
        };
        assert_eq!(Time::from_text(t.to_text().as_bytes()), Some(t));
        let before_epoch = Time::from(SystemTime::from(Time { s: -2, ns: 500 }));
        assert_eq!(before_epoch, Time { s: -2, ns: 500 });
    }
}
