//! Bytes on the wire: encoding commands and parsing replies of the memcached ASCII protocol
//! (memcached's `doc/protocol.txt`). Never uses `noreply`: it would hide out-of-memory.

use std::io::{BufRead, Write};

use crate::{Command, Item, MAX_KEY_LEN, MetaItem, Reply, StoreError};

/// Checks a key as memcached's text protocol needs it: 1..=250 bytes, no control bytes or space.
pub fn validate_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(StoreError::BadKey(format!(
            "{} bytes (allowed 1..={MAX_KEY_LEN}): {}",
            key.len(),
            String::from_utf8_lossy(key)
        )));
    }
    // memcached splits commands on spaces and line ends; 0x7F and bytes >= 0x80 are fine (and
    // nginx sends them raw).
    if key.iter().any(|&b| b <= b' ') {
        return Err(StoreError::BadKey(format!(
            "contains whitespace or control bytes: {}",
            String::from_utf8_lossy(key)
        )));
    }
    Ok(())
}

/// Writes the wire form of `cmd` (through a buffered writer: a large value goes straight
/// to the socket).
pub fn write_command(cmd: &Command, out: &mut impl Write) -> std::io::Result<()> {
    fn line(out: &mut impl Write, verb: &str, key: &[u8], rest: &str) -> std::io::Result<()> {
        out.write_all(verb.as_bytes())?;
        out.write_all(b" ")?;
        out.write_all(key)?;
        out.write_all(rest.as_bytes())?;
        out.write_all(b"\r\n")
    }
    match cmd {
        Command::Get(k) => line(out, "get", k, ""),
        Command::Gets(k) => line(out, "gets", k, ""),
        Command::Store {
            op,
            key,
            value,
            flags,
            exptime,
        } => {
            line(
                out,
                op.verb(),
                key,
                &format!(" {flags} {exptime} {}", value.len()),
            )?;
            out.write_all(value)?;
            out.write_all(b"\r\n")
        }
        Command::Cas {
            key,
            value,
            flags,
            cas,
            exptime,
        } => {
            line(
                out,
                "cas",
                key,
                &format!(" {flags} {exptime} {} {cas}", value.len()),
            )?;
            out.write_all(value)?;
            out.write_all(b"\r\n")
        }
        Command::Incr { key, delta } => line(out, "incr", key, &format!(" {delta}")),
        Command::Decr { key, delta } => line(out, "decr", key, &format!(" {delta}")),
        Command::Delete(k) => line(out, "delete", k, ""),
        Command::Touch { key, exptime } => line(out, "touch", key, &format!(" {exptime}")),
        Command::MetaSize(k) => line(out, "mg", k, " s f"),
    }
}

/// Bytes `cmd` takes on the wire (approximately: for pipeline bounds).
pub fn wire_len(cmd: &Command) -> usize {
    match cmd {
        Command::Store { key, value, .. } | Command::Cas { key, value, .. } => {
            key.len() + value.len() + 48
        }
        other => other.key().len() + 32,
    }
}

/// Reads one `\r\n`-terminated line, without the terminator.
pub fn read_line(r: &mut impl BufRead, server: &str) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::with_capacity(64);
    let n = r
        .read_until(b'\n', &mut buf)
        .map_err(|e| StoreError::from_io(server, &e))?;
    if n == 0 {
        return Err(StoreError::Io {
            server: server.to_string(),
            message: "connection closed by server".into(),
        });
    }
    if !buf.ends_with(b"\r\n") {
        return Err(StoreError::protocol(
            server,
            "reply line not terminated by CRLF",
        ));
    }
    buf.truncate(buf.len() - 2);
    Ok(buf)
}

/// Maps the error lines every command may get instead of its normal reply.
fn error_line(line: &[u8], server: &str) -> Option<StoreError> {
    let text = String::from_utf8_lossy(line);
    if let Some(msg) = text.strip_prefix("SERVER_ERROR ") {
        let msg = msg.to_string();
        // "out of memory storing object", or "Out of memory during read" for a value too
        // large to find room for (memcached 1.6 with -M).
        return Some(if msg.to_ascii_lowercase().contains("out of memory") {
            StoreError::OutOfMemory(msg)
        } else if msg.contains("too large") {
            StoreError::TooLarge(msg)
        } else {
            StoreError::Server(msg)
        });
    }
    if let Some(msg) = text.strip_prefix("CLIENT_ERROR ") {
        return Some(StoreError::Client(msg.to_string()));
    }
    if text == "ERROR" {
        return Some(StoreError::Client(format!("{server} answered ERROR")));
    }
    None
}

/// Reads the reply to `cmd`.
pub fn read_reply(r: &mut impl BufRead, cmd: &Command, server: &str) -> Result<Reply, StoreError> {
    let line = read_line(r, server)?;
    if let Some(err) = error_line(&line, server) {
        return Err(err);
    }
    let unexpected = || {
        StoreError::protocol(
            server,
            &format!(
                "unexpected reply {:?} to {}",
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(cmd.key())
            ),
        )
    };
    match cmd {
        Command::Get(_) | Command::Gets(_) => {
            if line == b"END" {
                return Ok(Reply::Value(None));
            }
            let item = read_value(r, &line, server)?;
            let end = read_line(r, server)?;
            if end != b"END" {
                return Err(StoreError::protocol(server, "VALUE not followed by END"));
            }
            Ok(Reply::Value(Some(item)))
        }
        Command::Store { .. } | Command::Cas { .. } => match &line[..] {
            b"STORED" => Ok(Reply::Stored),
            b"NOT_STORED" => Ok(Reply::NotStored),
            b"EXISTS" => Ok(Reply::Exists),
            b"NOT_FOUND" => Ok(Reply::NotFound),
            _ => Err(unexpected()),
        },
        Command::Incr { .. } | Command::Decr { .. } => {
            if line == b"NOT_FOUND" {
                return Ok(Reply::NotFound);
            }
            std::str::from_utf8(&line)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Reply::Number)
                .ok_or_else(unexpected)
        }
        Command::Delete(_) => match &line[..] {
            b"DELETED" => Ok(Reply::Deleted),
            b"NOT_FOUND" => Ok(Reply::NotFound),
            _ => Err(unexpected()),
        },
        Command::Touch { .. } => match &line[..] {
            b"TOUCHED" => Ok(Reply::Touched),
            b"NOT_FOUND" => Ok(Reply::NotFound),
            _ => Err(unexpected()),
        },
        Command::MetaSize(_) => {
            if line == b"EN" {
                return Ok(Reply::Meta(None));
            }
            parse_meta_size(&line).ok_or_else(unexpected)
        }
    }
}

/// `HD s<size> f<flags>` (the returned flags in any order) as a [`Reply::Meta`].
fn parse_meta_size(line: &[u8]) -> Option<Reply> {
    let mut parts = line.split(|&b| b == b' ');
    if parts.next()? != b"HD" {
        return None;
    }
    let (mut size, mut flags) = (None, None);
    for p in parts {
        let num = || std::str::from_utf8(&p[1..]).ok()?.parse::<u64>().ok();
        match p.first() {
            Some(b's') => size = num(),
            Some(b'f') => flags = num().and_then(|f| u32::try_from(f).ok()),
            _ => {}
        }
    }
    Some(Reply::Meta(Some(MetaItem {
        size: size?,
        flags: flags.unwrap_or(0),
    })))
}

/// Parses `VALUE <key> <flags> <bytes> [<cas>]` and reads the data block after it.
fn read_value(r: &mut impl BufRead, header: &[u8], server: &str) -> Result<Item, StoreError> {
    let bad = || {
        StoreError::protocol(
            server,
            &format!("bad VALUE line {:?}", String::from_utf8_lossy(header)),
        )
    };
    let mut parts = header.split(|&b| b == b' ');
    if parts.next() != Some(b"VALUE") {
        return Err(bad());
    }
    let _key = parts.next().ok_or_else(bad)?;
    let num = |p: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(p?).ok()?.parse().ok() };
    let flags = num(parts.next()).ok_or_else(bad)? as u32;
    let len = num(parts.next()).ok_or_else(bad)? as usize;
    let cas = num(parts.next());
    let mut value = vec![0u8; len + 2];
    r.read_exact(&mut value)
        .map_err(|e| StoreError::from_io(server, &e))?;
    if !value.ends_with(b"\r\n") {
        return Err(StoreError::protocol(
            server,
            "data block not terminated by CRLF",
        ));
    }
    value.truncate(len);
    Ok(Item { value, flags, cas })
}

/// Reads `STAT <name> <value>` lines up to `END`.
pub fn read_stats(r: &mut impl BufRead, server: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    loop {
        let line = read_line(r, server)?;
        if line == b"END" {
            return Ok(out);
        }
        if let Some(err) = error_line(&line, server) {
            return Err(err);
        }
        let text = String::from_utf8_lossy(&line).to_string();
        let mut parts = text.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("STAT"), Some(name), value) => {
                out.push((name.to_string(), value.unwrap_or("").to_string()))
            }
            _ => {
                return Err(StoreError::protocol(
                    server,
                    &format!("bad stats line {text:?}"),
                ));
            }
        }
    }
}

/// Reads the reply to `lru_crawler metadump all`: `key=<uri-encoded> exp=... ...` lines
/// ending in `END`. `None` when the crawler was busy.
pub fn read_metadump(
    r: &mut impl BufRead,
    server: &str,
) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
    let mut keys = Vec::new();
    loop {
        let mut line = Vec::with_capacity(128);
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| StoreError::from_io(server, &e))?;
        if n == 0 {
            return Err(StoreError::Io {
                server: server.to_string(),
                message: "connection closed by server".into(),
            });
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if line == b"END" {
            return Ok(Some(keys));
        }
        if line.starts_with(b"BUSY") {
            return Ok(None);
        }
        if let Some(err) = error_line(&line, server) {
            return Err(err);
        }
        let Some(rest) = line.strip_prefix(b"key=") else {
            return Err(StoreError::protocol(server, "bad metadump line"));
        };
        let encoded = rest.split(|b| *b == b' ').next().unwrap_or_default();
        keys.push(percent_decode(encoded));
    }
}

/// Undoes `%XX` escapes (nginx's key escaping, memcached's metadump encoding); anything else
/// is kept as it is.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOp;
    use std::io::Cursor;

    fn reply(wire: &str, cmd: Command) -> Result<Reply, StoreError> {
        read_reply(&mut Cursor::new(wire.as_bytes().to_vec()), &cmd, "s")
    }

    #[test]
    fn encodes_storage_commands_with_length_and_no_noreply() {
        let mut out = Vec::new();
        write_command(&Command::store(StoreOp::Add, b"k", b"hello"), &mut out).unwrap();
        write_command(&Command::cas(b"k", b"", 7), &mut out).unwrap();
        assert_eq!(out, b"add k 0 0 5\r\nhello\r\ncas k 0 0 0 7\r\n\r\n");
    }

    #[test]
    fn parses_values_misses_and_cas() {
        let got = reply(
            "VALUE k 3 5 99\r\nab\r\nc\r\nEND\r\n",
            Command::Gets(b"k".to_vec()),
        );
        assert_eq!(
            got,
            Ok(Reply::Value(Some(Item {
                value: b"ab\r\nc".to_vec(),
                flags: 3,
                cas: Some(99)
            })))
        );
        assert_eq!(
            reply("END\r\n", Command::Get(b"k".to_vec())),
            Ok(Reply::Value(None))
        );
    }

    #[test]
    fn meta_size_asks_for_size_and_flags_and_reads_hits_and_misses() {
        let mg = Command::MetaSize(b"k".to_vec());
        let mut out = Vec::new();
        write_command(&mg, &mut out).unwrap();
        assert_eq!(out, b"mg k s f\r\n");
        let hit = |size, flags| Ok(Reply::Meta(Some(MetaItem { size, flags })));
        assert_eq!(reply("HD s12 f2\r\n", mg.clone()), hit(12, 2));
        assert_eq!(reply("HD f0 s0\r\n", mg.clone()), hit(0, 0));
        assert_eq!(reply("EN\r\n", mg.clone()), Ok(Reply::Meta(None)));
        // memcached before 1.6 does not know it.
        assert!(matches!(
            reply("ERROR\r\n", mg.clone()),
            Err(StoreError::Client(_))
        ));
        assert!(matches!(
            reply("HD\r\n", mg),
            Err(StoreError::Protocol { .. })
        ));
    }

    #[test]
    fn types_server_errors() {
        let set = Command::store(StoreOp::Set, b"k", b"v");
        assert!(matches!(
            reply("SERVER_ERROR out of memory storing object\r\n", set.clone()),
            Err(StoreError::OutOfMemory(_))
        ));
        assert!(matches!(
            reply("SERVER_ERROR Out of memory during read\r\n", set.clone()),
            Err(StoreError::OutOfMemory(_))
        ));
        assert!(matches!(
            reply("SERVER_ERROR object too large for cache\r\n", set.clone()),
            Err(StoreError::TooLarge(_))
        ));
        assert!(matches!(
            reply("CLIENT_ERROR bad\r\n", set.clone()),
            Err(StoreError::Client(_))
        ));
        assert!(matches!(reply("", set), Err(StoreError::Io { .. })));
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(validate_key(b"a b").is_err());
        assert!(validate_key(&[b'a'; 251]).is_err());
        assert!(validate_key("memfis://h/é?#\x7f".as_bytes()).is_ok());
    }
}
