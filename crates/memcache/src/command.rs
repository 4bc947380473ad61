//! Commands and replies, independent of how they travel.

use std::sync::Arc;

use crate::StoreError;

/// A value to store. Shared, so a file's buffer goes to the socket without being copied.
pub type Value = Arc<Vec<u8>>;

/// Which storage command (`set`, `add`, ...) a [`Command::Store`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
}

impl StoreOp {
    pub fn verb(self) -> &'static str {
        match self {
            StoreOp::Set => "set",
            StoreOp::Add => "add",
            StoreOp::Replace => "replace",
            StoreOp::Append => "append",
            StoreOp::Prepend => "prepend",
        }
    }
}

/// One memcached command. Keys are raw bytes: memfis keys may hold UTF-8 and other bytes >= 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Get(Vec<u8>),
    Gets(Vec<u8>),
    Store {
        op: StoreOp,
        key: Vec<u8>,
        value: Value,
        flags: u32,
        exptime: u32,
    },
    Cas {
        key: Vec<u8>,
        value: Value,
        flags: u32,
        cas: u64,
        /// Expiry of the stored item (0: never); a `cas` sets it anew like a `set`.
        exptime: u32,
    },
    Incr {
        key: Vec<u8>,
        delta: u64,
    },
    Decr {
        key: Vec<u8>,
        delta: u64,
    },
    Delete(Vec<u8>),
    Touch {
        key: Vec<u8>,
        exptime: u32,
    },
    /// memcached 1.6's meta get `mg KEY s f`: the item's stored size and flags, without its
    /// value. Servers without meta commands (memcached before 1.6, twemproxy) refuse it:
    /// callers fall back to reading the value.
    MetaSize(Vec<u8>),
}

impl Command {
    pub fn store(op: StoreOp, key: &[u8], value: &[u8]) -> Command {
        Command::store_shared(op, key, Arc::new(value.to_vec()))
    }

    /// A storage command whose value is shared with the caller (no copy).
    pub fn store_shared(op: StoreOp, key: &[u8], value: Value) -> Command {
        Command::Store {
            op,
            key: key.to_vec(),
            value,
            flags: 0,
            exptime: 0,
        }
    }

    pub fn cas(key: &[u8], value: &[u8], cas: u64) -> Command {
        Command::cas_shared(key, Arc::new(value.to_vec()), cas)
    }

    /// A `cas` whose value is shared with the caller (no copy).
    pub fn cas_shared(key: &[u8], value: Value, cas: u64) -> Command {
        Command::Cas {
            key: key.to_vec(),
            value,
            flags: 0,
            cas,
            exptime: 0,
        }
    }

    /// A `cas` storing an item that expires after `exptime` seconds (0: never).
    pub fn cas_expiring(key: &[u8], value: &[u8], cas: u64, exptime: u32) -> Command {
        Command::Cas {
            key: key.to_vec(),
            value: Arc::new(value.to_vec()),
            flags: 0,
            cas,
            exptime,
        }
    }

    pub fn key(&self) -> &[u8] {
        match self {
            Command::Get(k) | Command::Gets(k) | Command::Delete(k) | Command::MetaSize(k) => k,
            Command::Store { key, .. }
            | Command::Cas { key, .. }
            | Command::Incr { key, .. }
            | Command::Decr { key, .. }
            | Command::Touch { key, .. } => key,
        }
    }
}

/// A value read with `get`/`gets`. `cas` is set only for `gets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub value: Vec<u8>,
    pub flags: u32,
    pub cas: Option<u64>,
}

/// The server's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `get`/`gets`: the item, or `None` on a miss.
    Value(Option<Item>),
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    /// `incr`/`decr` result.
    Number(u64),
    /// [`Command::MetaSize`]: the item's size and flags, or `None` on a miss.
    Meta(Option<MetaItem>),
}

/// What a meta get tells of an item without reading its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaItem {
    /// Bytes of the value as stored (for a compressed value, the compressed length).
    pub size: u64,
    pub flags: u32,
}

impl Reply {
    /// The item of a `get`/`gets` reply.
    pub fn into_value(self) -> Result<Option<Item>, StoreError> {
        match self {
            Reply::Value(v) => Ok(v),
            other => Err(StoreError::protocol(
                "-",
                &format!("expected VALUE/END, got {other:?}"),
            )),
        }
    }
}
