//! Key layout: where every record lives in the store (`docs/store-layout.md`).
//!
//! Data keys are `escape(PREFIX + path)`, exactly what nginx asks for. Every metadata key is
//! `PREFIX + "%" + ...`: nginx escapes a `%` in a URI to `%25`, so no request can reach one.

use memfis_memcache::MAX_KEY_LEN;

use crate::dirlog::LogBase;

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

    /// Directory entry: value is the child's inode number, or `-` once removed.
    /// A name whose key would pass 250 bytes is keyed by a 64-bit hash of the name instead.
    pub fn entry(&self, dir: u64, name: &[u8]) -> Vec<u8> {
        let mut key = self.meta(&format!("e{dir}/"));
        let escaped = escape(name);
        if key.len() + escaped.len() <= MAX_KEY_LEN {
            key.extend_from_slice(&escaped);
            key
        } else {
            let reversed: Vec<u8> = name.iter().rev().copied().collect();
            self.meta(&format!(
                "h{dir}/{:08x}{:08x}",
                crc32fast::hash(name),
                crc32fast::hash(&reversed)
            ))
        }
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
    /// read and the snapshot read before it ([`crate::dirlog::LogBase`]). Moved by compaction.
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
