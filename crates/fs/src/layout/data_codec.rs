//! gzip for served text files (`--gzip`): a data key of an HTML, CSS, JS, JSON, XML, SVG or
//! plain-text file larger than [`GZIP_MIN_BYTES`] holds its bytes gzip-compressed, with
//! [`GZIP_FLAG`] set in the item's flags, which nginx's `memcached_gzip_flag` turns into
//! `Content-Encoding: gzip` (and `gunzip on` decompresses for clients that do not accept it).
//!
//! Applied where the filesystem meets the store ([`crate::store::fenced_store::FencedStore`]), so every
//! path that writes or copies a data key (publish, create, rename, link, load) compresses, and
//! every read of a flagged item (by any mount, with `--gzip` or not, and by `memfis check`)
//! gets the plain bytes: nothing above this layer knows. Only whole-value writes (`set`, `add`,
//! `replace`, `cas`) are compressed; memfis never appends to a data key.

use std::io::{Read, Write};
use std::sync::Arc;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use memfis_memcache::{CmdResult, Command, Item, Reply, StoreError, StoreOp};

use crate::layout::keys::KeyLayout;

/// The item flag bit that marks a gzip-compressed value (`memcached_gzip_flag 2;`).
pub const GZIP_FLAG: u32 = 2;

/// Files this small are stored as they are (gzip's header and the request's headers outweigh
/// what it would save).
pub const GZIP_MIN_BYTES: usize = 1024;

/// Extensions compressed with `--gzip`: text/html and nginx's usual `gzip_types`.
const TEXT_EXTENSIONS: &[&str] = &[
    "html", "htm", "shtml", "css", "js", "mjs", "json", "map", "xml", "rss", "atom", "svg", "txt",
    "md", "csv",
];

/// What the error of a flagged value that does not decompress says ([`is_undecodable`]).
const UNDECODABLE: &str = "flagged gzip but does not decompress";

/// True for the error a read gets when a data key is flagged gzip and its value is not gzip:
/// the key is damaged, not the store unreachable.
pub fn is_undecodable(e: &StoreError) -> bool {
    matches!(e, StoreError::Server(m) if m.contains(UNDECODABLE))
}

/// Encodes data keys on their way to the store and decodes them on their way back.
#[derive(Debug, Clone)]
pub struct DataCodec {
    /// Every data key starts with this (`escape(PREFIX + "/")`); metadata keys never do.
    data_prefix: Vec<u8>,
    compress: bool,
}

impl DataCodec {
    /// `compress`: write text files compressed (`--gzip`); reads decode either way.
    pub fn new(keys: &KeyLayout, compress: bool) -> DataCodec {
        DataCodec {
            data_prefix: keys.data(b"/"),
            compress,
        }
    }

    fn is_data_key(&self, key: &[u8]) -> bool {
        key.starts_with(&self.data_prefix)
    }

    fn is_text(key: &[u8]) -> bool {
        let name = key.rsplit(|&b| b == b'/').next().unwrap_or(key);
        let Some(dot) = name.iter().rposition(|&b| b == b'.') else {
            return false;
        };
        let ext = String::from_utf8_lossy(&name[dot + 1..]).to_ascii_lowercase();
        TEXT_EXTENSIONS.contains(&ext.as_str())
    }

    /// The compressed value, if this write should be compressed and compressing saves bytes.
    fn compressed(&self, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        if !self.compress
            || value.len() < GZIP_MIN_BYTES
            || !self.is_data_key(key)
            || !Self::is_text(key)
        {
            return None;
        }
        let mut gz = GzEncoder::new(Vec::with_capacity(value.len() / 3), Compression::new(6));
        gz.write_all(value).ok()?;
        let out = gz.finish().ok()?;
        (out.len() < value.len()).then_some(out)
    }

    /// The key of `cmd` if its reply may hold a compressed value (a read of a data key).
    pub fn read_key(&self, cmd: &Command) -> Option<Vec<u8>> {
        match cmd {
            Command::Get(key) | Command::Gets(key) if self.is_data_key(key) => Some(key.clone()),
            _ => None,
        }
    }

    /// A command as it goes to the store.
    pub fn encode(&self, mut cmd: Command) -> Command {
        if let Command::Store {
            op: StoreOp::Set | StoreOp::Add | StoreOp::Replace,
            key,
            value,
            flags,
            ..
        }
        | Command::Cas {
            key, value, flags, ..
        } = &mut cmd
            && let Some(gz) = self.compressed(key, value)
        {
            *value = Arc::new(gz);
            *flags |= GZIP_FLAG;
        }
        cmd
    }

    /// The reply to a command on `key` as the filesystem sees it: a compressed data key's
    /// plain bytes (a value that does not decompress is a server error naming the key).
    pub fn decode(&self, key: &[u8], result: CmdResult) -> CmdResult {
        match result {
            Ok(Reply::Value(Some(item)))
                if item.flags & GZIP_FLAG != 0 && self.is_data_key(key) =>
            {
                let mut plain = Vec::with_capacity(item.value.len() * 4);
                match GzDecoder::new(&item.value[..]).read_to_end(&mut plain) {
                    Ok(_) => Ok(Reply::Value(Some(Item {
                        value: plain,
                        flags: item.flags & !GZIP_FLAG,
                        cas: item.cas,
                    }))),
                    Err(e) => Err(StoreError::Server(format!(
                        "{}: {UNDECODABLE}: {e}",
                        String::from_utf8_lossy(key)
                    ))),
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> DataCodec {
        DataCodec::new(&KeyLayout::new("memfis://gz").unwrap(), true)
    }

    fn stored(cmd: &Command) -> (Vec<u8>, u32) {
        match cmd {
            Command::Store { value, flags, .. } => (value.to_vec(), *flags),
            _ => panic!("not a store"),
        }
    }

    #[test]
    fn compresses_large_text_data_keys_only() {
        let c = codec();
        let page = "<p>hello, world</p>\n".repeat(200).into_bytes();
        let set = |key: &[u8], v: &[u8]| c.encode(Command::store(StoreOp::Set, key, v));
        let (gz, flags) = stored(&set(b"memfis://gz/index.html", &page));
        assert_eq!(flags, GZIP_FLAG);
        assert!(gz.len() < page.len() / 5);
        let item = Item {
            value: gz,
            flags,
            cas: None,
        };
        let back = c.decode(b"memfis://gz/index.html", Ok(Reply::Value(Some(item))));
        assert_eq!(back.unwrap().into_value().unwrap().unwrap().value, page);
        // Not text, too small, or not a data key: as they are.
        for (key, v) in [
            (&b"memfis://gz/logo.png"[..], &page[..]),
            (b"memfis://gz/small.html", b"<p>hi</p>"),
            (b"memfis://gz%i5", &page[..]),
        ] {
            assert_eq!(stored(&set(key, v)), (v.to_vec(), 0), "{key:?}");
        }
    }

    #[test]
    fn a_flagged_value_that_does_not_decompress_is_an_error_naming_the_key() {
        let item = Item {
            value: b"not gzip".to_vec(),
            flags: GZIP_FLAG,
            cas: None,
        };
        let err = codec()
            .decode(b"memfis://gz/a.html", Ok(Reply::Value(Some(item))))
            .unwrap_err();
        assert!(err.to_string().contains("memfis://gz/a.html"));
    }
}
