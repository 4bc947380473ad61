//! Key layout: where every record lives in the store (`docs/store-layout.md`).
//!
//! Data keys are `escape(PREFIX + path)`, exactly what nginx asks for. Every metadata key is
//! `PREFIX + "%" + ...`: nginx escapes a `%` in a URI to `%25`, so no request can reach one.

use memfis_memcache::MAX_KEY_LEN;

use crate::layout::dirlog::LogBase;

/// nginx's memcached key escaping: bytes 0x00-0x20 and `%` become `%XX` (uppercase hex).
pub fn escape(raw: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(raw.len() + 8);
    for &b in raw {
        if b <= 0x20 || b == b'%' {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            out.push(b);
        }
    }
    out
}

/// Undoes [`escape`] (`%XX` back to the byte).
pub fn unescape(key: &[u8]) -> Vec<u8> {
    memfis_memcache::protocol::percent_decode(key)
}

/// Checks a prefix against the contract: 1-100 bytes of printable ASCII without `%`.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 100 {
        return Err(format!(
            "prefix {prefix:?} must be 1 to 100 bytes long (it is {})",
            prefix.len()
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !('\x21'..='\x7e').contains(c) || *c == '%')
    {
        return Err(format!(
            "prefix {prefix:?} contains {c:?}: only printable ASCII without '%' and spaces is allowed \
             (nginx would escape anything else)"
        ));
    }
    Ok(())
}

/// A file whose mode grants read to others is served: what a static nginx, running as an
/// unprivileged user, could read from disk.
pub fn is_public(mode: u32) -> bool {
    mode & libc::S_IROTH != 0
}

/// Inode number of the root directory (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INO: u64 = 1;

/// Entries a directory log chunk holds before the next chunk starts (keeps chunks well
/// under memcached's default 1 MiB item: a record is at most ~800 bytes, names escaped).
pub const LOG_CHUNK_RECORDS: u64 = 1024;

/// Builds every key memfis uses under one prefix.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
    /// Records per log chunk: [`LOG_CHUNK_RECORDS`], smaller only in tests.
    log_chunk: u64,
}

impl KeyLayout {
    pub fn new(prefix: &str) -> Result<KeyLayout, String> {
        validate_prefix(prefix)?;
        Ok(KeyLayout {
            prefix: prefix.to_string(),
            log_chunk: LOG_CHUNK_RECORDS,
        })
    }

    /// The same layout with `records` log records a chunk instead of [`LOG_CHUNK_RECORDS`]:
    /// for tests that need logs of many chunks and compactions that move their base with a
    /// few operations. Every mount and tool of one store must use the same value.
    #[doc(hidden)]
    pub fn with_log_chunk_records(mut self, records: u64) -> KeyLayout {
        self.log_chunk = records.max(1);
        self
    }

    /// Records a directory log chunk holds: record number `n` belongs in chunk
    /// `n / log_chunk_records()`.
    pub fn log_chunk_records(&self) -> u64 {
        self.log_chunk
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn meta(&self, rest: &str) -> Vec<u8> {
        format!("{}%{}", self.prefix, rest).into_bytes()
    }

    /// The file's bytes, served by nginx: `escape(PREFIX + path)`.
    pub fn data(&self, path: &[u8]) -> Vec<u8> {
        let mut raw = self.prefix.as_bytes().to_vec();
        raw.extend_from_slice(path);
        escape(&raw)
    }

    /// Where a file's bytes live for its name at `path`: its data key (served) while its mode
    /// lets others read it and the key fits memcached's limit, else its private key, which
    /// no URI reaches (docs/serving.md, "What is served").
    pub fn file_bytes(&self, ino: u64, mode: u32, path: &[u8]) -> Vec<u8> {
        if is_public(mode) {
            let key = self.data(path);
            if key.len() <= MAX_KEY_LEN {
                return key;
            }
        }
        self.private_data(ino)
    }

    /// A file's bytes when no name of it may be served (see [`Self::file_bytes`]): one key per
    /// inode, shared by every such name.
    pub fn private_data(&self, ino: u64) -> Vec<u8> {
        self.meta(&format!("d{ino}"))
    }

    /// Chunk `n` of generation `generation` of a file larger than one item (bytes
    /// `n * chunk_size ..`).
    pub fn chunk(&self, ino: u64, generation: u64, n: u64) -> Vec<u8> {
        self.meta(&format!("k{ino}.{generation:x}.{n}"))
    }

    /// What every chunk key starts with.
    pub fn chunk_prefix(&self) -> Vec<u8> {
        self.meta("k")
    }

    /// What every private key starts with.
    pub fn private_data_prefix(&self) -> Vec<u8> {
        self.meta("d")
    }

    /// Format record: `{"format":"memfis","version":N}`.
    pub fn format(&self) -> Vec<u8> {
        self.meta("format")
    }

    /// Marker a server of a replicated pool holds once it holds its copy of every key of the
    /// tree (written to each server directly, not placed by the ring).
    pub fn in_sync_marker(&self) -> Vec<u8> {
        self.meta("synced")
    }

    /// Lease of the mount refilling the servers of a replicated pool that lack their copies
    /// (one at a time), stored with an expiry; its value tells its progress (`memfis
    /// stats`).
    pub fn refill_lease(&self) -> Vec<u8> {
        self.meta("refill")
    }

    /// Counter handing out inode numbers (`incr`).
    pub fn next_ino(&self) -> Vec<u8> {
        self.meta("next-ino")
    }

    /// Counter of live inodes, for statfs (`incr`/`decr`).
    pub fn inode_count(&self) -> Vec<u8> {
        self.meta("inodes")
    }

    /// Inode record (JSON, see `record.rs`).
    pub fn inode(&self, ino: u64) -> Vec<u8> {
        self.meta(&format!("i{ino}"))
    }

    /// Directory entry of `name` in `dir`; its value is [`Self::entry_value`]. A name whose
    /// `%e` key would pass 250 bytes is keyed by the SHA-256 of the name instead
    /// (`%h<dir>/<64 hex digits>`), and its value carries the name, so that a lookup can tell
    /// its own entry from another name's should two names ever share a key.
    pub fn entry(&self, dir: u64, name: &[u8]) -> Vec<u8> {
        let mut key = self.meta(&format!("e{dir}/"));
        let escaped = escape(name);
        if key.len() + escaped.len() <= MAX_KEY_LEN {
            key.extend_from_slice(&escaped);
            key
        } else {
            self.meta(&format!("h{dir}/{}", name_hash(name)))
        }
    }

    /// What the entry of `name` in `dir` holds when it names inode `ino`: the number for a
    /// `%e` key; the number, `/` and the name's bytes for a hashed (`%h`) key.
    pub fn entry_value(&self, dir: u64, name: &[u8], ino: u64) -> Vec<u8> {
        let mut value = ino.to_string().into_bytes();
        if is_hashed_entry_key(&self.entry(dir, name)) {
            value.push(b'/');
            value.extend_from_slice(name);
        }
        value
    }

    /// Sequence counter of a directory's log (`incr`): record N lives in chunk N / log_chunk_records().
    pub fn dir_seq(&self, dir: u64) -> Vec<u8> {
        self.meta(&format!("s{dir}"))
    }

    /// A directory's last entry change as `SECONDS.NANOS` (its mtime and ctime), kept apart
    /// from the inode record so that creating a file costs a blind `set`, not a cas round.
    pub fn dir_mtime(&self, dir: u64) -> Vec<u8> {
        self.meta(&format!("m{dir}"))
    }

    /// Where a directory's log starts (absent: chunk 0, no snapshot): the first chunk still
    /// read and the snapshot read before it ([`crate::layout::dirlog::LogBase`]). Moved by compaction.
    pub fn dir_base(&self, dir: u64) -> Vec<u8> {
        self.meta(&format!("b{dir}"))
    }

    /// Piece `k` of snapshot `generation` of a directory's log: the live names written by a
    /// compaction as `+` records, read before the chunks from the base on.
    pub fn dir_snapshot(&self, dir: u64, generation: u64, k: u64) -> Vec<u8> {
        self.meta(&format!("c{dir}.{generation}.{k}"))
    }

    /// The keys a replay of `dir`'s log from `base` up to sequence number `seq` reads, in
    /// order: the snapshot's pieces, then chunks `base.chunk ..= seq / log_chunk_records()`.
    pub fn dir_log_keys(&self, dir: u64, base: LogBase, seq: u64) -> Vec<Vec<u8>> {
        let snapshot = base.snapshot.map_or(Vec::new(), |(generation, pieces)| {
            (0..pieces)
                .map(|k| self.dir_snapshot(dir, generation, k))
                .collect()
        });
        let chunks =
            (base.chunk..=(seq / self.log_chunk).max(base.chunk)).map(|c| self.dir_log(dir, c));
        snapshot.into_iter().chain(chunks).collect()
    }

    /// One chunk of a directory's append-only entry log.
    pub fn dir_log(&self, dir: u64, chunk: u64) -> Vec<u8> {
        self.meta(&format!("l{dir}.{chunk}"))
    }

    /// The namespace lock: held (created with `add`) by the one operation that removes or
    /// moves names at a time; its value is the operation's intent (`intent.rs`).
    pub fn ns_lock(&self) -> Vec<u8> {
        self.meta("lock")
    }

    /// The advisory locks (flock, fcntl) every mount holds on inode `ino`
    /// (`crate::locks`).
    pub fn lock_table(&self, ino: u64) -> Vec<u8> {
        self.meta(&format!("L{ino}"))
    }

    /// A mount's liveness key, stored with an expiry and refreshed while the mount runs: once
    /// it is gone, the mount's unfinished intent may be completed by others.
    pub fn alive(&self, mount_id: &str) -> Vec<u8> {
        self.meta(&format!("alive.{mount_id}"))
    }

    /// Count of finished directory renames: a mount that sees it change drops its cached paths.
    pub fn dir_generation(&self) -> Vec<u8> {
        self.meta("dirgen")
    }
}

/// SHA-256 of a name as 64 lowercase hex digits: the tail of a hashed entry key. A
/// cryptographic hash, so nobody can make a second name with the key of another.
fn name_hash(name: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(name)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// True for a hashed entry key (`PREFIX%h...`): its value carries the name. A prefix holds
/// no `%`, so the first `%` of a key starts its metadata part.
pub(crate) fn is_hashed_entry_key(key: &[u8]) -> bool {
    key.iter()
        .position(|&b| b == b'%')
        .is_some_and(|i| key.get(i + 1) == Some(&b'h'))
}

/// The store-wide list of formatted prefixes, one per line, so that nesting ones are refused.
/// It starts with `%`, which no prefix does, so no URI reaches it.
pub const PREFIX_REGISTRY_KEY: &[u8] = b"%memfis-prefixes";

/// True when two prefixes would share data keys: one is the other followed by `/`.
pub fn prefixes_nest(a: &str, b: &str) -> bool {
    let nested = |outer: &str, inner: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    a == b || nested(a, b) || nested(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_nginx() {
        assert_eq!(escape(b"/a b%c?#+\x7f"), b"/a%20b%25c?#+\x7f");
        assert_eq!(escape(b"\x00\x1f"), b"%00%1F");
        assert_eq!(escape("/é".as_bytes()), "/é".as_bytes());
    }

    #[test]
    fn unescape_inverts_escape() {
        let raw = b"/a b%c?\x01\xff%";
        assert_eq!(unescape(&escape(raw)), raw);
    }

    #[test]
    fn metadata_keys_are_unreachable_from_uris() {
        let k = KeyLayout::new("memfis://h").unwrap();
        // Any URI gives PREFIX + "/"...; metadata keys continue with a raw '%'.
        for key in [
            k.inode(1),
            k.entry(1, b"x"),
            k.dir_log(1, 0),
            k.format(),
            k.next_ino(),
        ] {
            assert!(key.starts_with(b"memfis://h%"));
        }
        assert!(k.data(b"/%").starts_with(b"memfis://h/"));
    }

    #[test]
    fn long_names_get_hashed_entry_keys() {
        let k = KeyLayout::new("memfis://h").unwrap();
        let long = vec![b'a'; 240];
        assert!(k.entry(1, &long).len() <= MAX_KEY_LEN);
        assert_ne!(k.entry(1, &long), k.entry(1, &long[1..]));
        // `%h<dir>/` and the SHA-256 of the name (checked against a known digest).
        assert_eq!(
            name_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let want = format!("memfis://h%h77/{}", name_hash(&long));
        assert_eq!(k.entry(77, &long), want.as_bytes());
        assert!(is_hashed_entry_key(&k.entry(77, &long)));
        assert!(!is_hashed_entry_key(&k.entry(77, b"short")));
        // Plain keys hold the inode number; hashed keys the number and the name.
        assert_eq!(k.entry_value(3, b"short", 12), b"12");
        let mut hashed_value = b"12/".to_vec();
        hashed_value.extend_from_slice(&long);
        assert_eq!(k.entry_value(3, &long, 12), hashed_value);
    }

    /// The entry key format version 1 gave a long name: CRC-32 of the name, then CRC-32 of
    /// the reversed name.
    fn crc_key(name: &[u8]) -> u64 {
        let reversed: Vec<u8> = name.iter().rev().copied().collect();
        (u64::from(crc32fast::hash(name)) << 32) | u64::from(crc32fast::hash(&reversed))
    }

    /// Two different names of `len` bytes with one format-1 key. Both CRCs are affine over
    /// GF(2) in the name's bits, so for names of one length, `crc_key(a) ^ crc_key(b)` is a
    /// linear map `L` of `a ^ b`: `L(d) = crc_key(d) ^ crc_key(0...0)`. 96 bits of the tail
    /// give 96 vectors in a 64-bit space, so some nonzero combination `d` has `L(d) = 0`
    /// (found by elimination); the names are `a` and `a ^ d`, with `a` picked so that neither
    /// holds a NUL or a `/`.
    fn crc_colliding_names(len: usize) -> (Vec<u8>, Vec<u8>) {
        const FREE_BYTES: usize = 12;
        let zero = crc_key(&vec![0; len]);
        let image = |d: &[u8]| crc_key(d) ^ zero;
        let first = len - FREE_BYTES;
        // basis[b]: a vector whose highest set bit is b, with the tail bits that make it.
        let mut basis: [Option<(u64, u128)>; 64] = [None; 64];
        let mut kernel = None;
        for k in 0..FREE_BYTES * 8 {
            let mut d = vec![0u8; len];
            d[first + k / 8] = 1 << (k % 8);
            let (mut v, mut comb) = (image(&d), 1u128 << k);
            while v != 0 {
                let top = 63 - v.leading_zeros() as usize;
                match basis[top] {
                    Some((bv, bc)) => {
                        v ^= bv;
                        comb ^= bc;
                    }
                    None => {
                        basis[top] = Some((v, comb));
                        break;
                    }
                }
            }
            if v == 0 {
                kernel = Some(comb);
                break;
            }
        }
        let comb = kernel.expect("96 vectors in 64 dimensions are dependent");
        let mut d = vec![0u8; len];
        for k in 0..FREE_BYTES * 8 {
            if comb >> k & 1 == 1 {
                d[first + k / 8] ^= 1 << (k % 8);
            }
        }
        let ok = |b: u8| b != 0 && b != b'/';
        let a: Vec<u8> = d
            .iter()
            .map(|&x| (b'a'..=255).find(|&c| ok(c) && ok(c ^ x)).unwrap())
            .collect();
        let b: Vec<u8> = a.iter().zip(&d).map(|(x, y)| x ^ y).collect();
        (a, b)
    }

    /// Issue 16: under format 1, a second long name with another name's entry key was found
    /// in milliseconds; under SHA-256 the same two names have keys of their own.
    #[test]
    fn names_with_one_crc_key_get_keys_of_their_own() {
        let k = KeyLayout::new("memfis://h").unwrap();
        let (a, b) = crc_colliding_names(240);
        assert_ne!(a, b);
        assert_eq!(crc_key(&a), crc_key(&b), "format 1 gave both one key");
        for name in [&a, &b] {
            assert!(crate::layout::names::check_name(name).is_ok());
            assert!(is_hashed_entry_key(&k.entry(1, name)));
        }
        assert_ne!(k.entry(1, &a), k.entry(1, &b));
        assert_ne!(k.entry_value(1, &a, 5), k.entry_value(1, &b, 5));
    }

    #[test]
    fn nesting_prefixes_are_found() {
        assert!(prefixes_nest("memfis://n", "memfis://n/b"));
        assert!(prefixes_nest("memfis://n/b", "memfis://n"));
        assert!(!prefixes_nest("memfis://n", "memfis://nb"));
        assert!(!prefixes_nest("memfis://site1", "memfis://site10"));
    }

    #[test]
    fn validates_prefixes() {
        assert!(validate_prefix("memfis://host").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a b").is_err());
        assert!(validate_prefix("a%b").is_err());
        assert!(validate_prefix(&"x".repeat(101)).is_err());
    }
}
