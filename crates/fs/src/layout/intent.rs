//! Intents: what an operation holding the namespace lock is doing, stored in the lock so that
//! any mount can finish it (roll forward) after the owner died, stalled or hit a store error.
//! The records only; `roll_forward.rs` finishes them.

use serde::{Deserialize, Serialize};

use crate::layout::record::{Kind, pct, pct_list};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Intent {
    /// Remove name `name` of `parent` (pointing at `ino`); delete the keys in `data_keys`
    /// that hold its bytes and no other name's. First change: the entry deleted.
    Unlink {
        parent: u64,
        #[serde(with = "pct")]
        name: Vec<u8>,
        ino: u64,
        kind: Kind,
        #[serde(with = "pct_list", default)]
        data_keys: Vec<Vec<u8>>,
    },
    /// A file's mode now lets others read it (`public`) or no longer does: its bytes move
    /// between its served data keys and its private key. First change: the record's mode.
    Chmod { ino: u64, public: bool },
    /// Remove the empty directory `ino`. First change: its log sequence key made non-numeric
    /// (a fence: creates inside it fail from then on); `last_seq` was its value.
    Rmdir {
        parent: u64,
        #[serde(with = "pct")]
        name: Vec<u8>,
        ino: u64,
        last_seq: u64,
    },
    /// A new name for `ino`. First change: the entry claimed.
    Link {
        ino: u64,
        kind: Kind,
        parent: u64,
        #[serde(with = "pct")]
        name: Vec<u8>,
        /// The new name's path when the link began (its parent may be gone by the time a
        /// crashed link is completed).
        #[serde(with = "pct")]
        path: Vec<u8>,
    },
    /// rename(2). First change: the destination entry points at `ino`.
    Rename(Box<RenameIntent>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenameIntent {
    pub src_parent: u64,
    #[serde(with = "pct")]
    pub src_name: Vec<u8>,
    pub dst_parent: u64,
    #[serde(with = "pct")]
    pub dst_name: Vec<u8>,
    pub ino: u64,
    pub kind: Kind,
    /// What the destination name pointed at before (swapped in with RENAME_EXCHANGE).
    pub replaced: Option<(u64, Kind)>,
    pub exchange: bool,
    #[serde(with = "pct")]
    pub old_path: Vec<u8>,
    #[serde(with = "pct")]
    pub new_path: Vec<u8>,
    /// RENAME_EXCHANGE only: the two sets of bytes were swapped (a swap is not idempotent).
    #[serde(default)]
    pub data_done: bool,
    /// A replaced directory's log sequence before the rename fenced it (its chunks to delete).
    #[serde(default)]
    pub replaced_last_seq: u64,
}
