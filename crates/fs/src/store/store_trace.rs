//! A trace of every store batch a mount sends, for finding races between mounts: one line
//! per batch, each command with its key, what it carried and the reply. Off unless the log
//! filter enables target `memfis_fs::store::store_trace` at trace level
//! (`MEMFIS_LOG=info,memfis_fs::store::store_trace=trace`); then costly, never for production.
//! Values are summarised: a data value by its length and first byte, an inode record whole
//! (it is short JSON), anything else by its length.

use memfis_memcache::{CmdResult, Command, Reply};

pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "memfis_fs::store::store_trace", tracing::Level::TRACE)
}

pub(crate) fn log(batch: &[Command], results: &[CmdResult]) {
    let mut line = String::new();
    for (i, c) in batch.iter().enumerate() {
        if i > 0 {
            line.push_str(" | ");
        }
        line.push_str(&command(c));
        line.push_str(" -> ");
        line.push_str(&match results.get(i) {
            Some(r) => reply(c.key(), r),
            None => "(no reply)".into(),
        });
    }
    tracing::trace!(target: "memfis_fs::store::store_trace", "{line}");
}

fn key(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

fn value(k: &[u8], v: &[u8]) -> String {
    let is_record = k.windows(2).any(|w| w == b"%i");
    match (is_record, v.first()) {
        (true, _) => String::from_utf8_lossy(v).into_owned(),
        (false, Some(&b)) if b.is_ascii_graphic() => format!("{}B '{}'", v.len(), b as char),
        _ => format!("{}B", v.len()),
    }
}

fn command(c: &Command) -> String {
    match c {
        Command::Get(k) => format!("get {}", key(k)),
        Command::Gets(k) => format!("gets {}", key(k)),
        Command::MetaSize(k) => format!("mg {}", key(k)),
        Command::Delete(k) => format!("delete {}", key(k)),
        Command::Store {
            op,
            key: k,
            value: v,
            ..
        } => {
            format!("{} {} {}", op.verb(), key(k), value(k, v))
        }
        Command::Cas {
            key: k,
            value: v,
            cas,
            ..
        } => {
            format!("cas {} {} @{cas}", key(k), value(k, v))
        }
        Command::Incr { key: k, delta } => format!("incr {} {delta}", key(k)),
        Command::Decr { key: k, delta } => format!("decr {} {delta}", key(k)),
        Command::Touch { key: k, .. } => format!("touch {}", key(k)),
    }
}

fn reply(k: &[u8], r: &CmdResult) -> String {
    match r {
        Err(e) => format!("ERR {e}"),
        Ok(Reply::Value(None)) => "miss".into(),
        Ok(Reply::Value(Some(item))) => match item.cas {
            Some(cas) => format!("{} @{cas}", value(k, &item.value)),
            None => value(k, &item.value),
        },
        Ok(other) => format!("{other:?}"),
    }
}
