//! Filesystem errors. Each maps to one errno; store-level failures keep the key they hit so
//! the message a user sees names it.

use memfis_memcache::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("no such extended attribute")]
    NoXattr,
    #[error("buffer too small")]
    Range,
    /// Another writer kept winning a cas round, or a live mount held the namespace lock for
    /// longer than a caller waits: the one error for contention.
    #[error("changed concurrently by other writers for too long; try again")]
    Contended,
    /// A lock is held by another owner (`F_SETLK`, `LOCK_NB`).
    #[error("the file is locked by another owner")]
    WouldBlock,
    /// A blocking lock wait ended because the waiting thread has a signal pending.
    #[error("interrupted while waiting for a lock")]
    Interrupted,
    /// The store was emptied or replaced under a live mount (memcached restarted).
    #[error("the store was emptied or replaced under this mount; remount it")]
    StoreGone,
    #[error("bad file handle")]
    BadHandle,
    /// The name the kernel asked about changed kind meanwhile (another mount): ESTALE makes
    /// the kernel look it up again and retry the call once.
    #[error("the name changed under this call; the kernel retries it")]
    Stale,
    #[error("name too long: store key {key} would be {len} bytes (memcached allows 250)")]
    NameTooLong { key: String, len: usize },
    /// A long name whose hashed entry key holds another name of the directory (two names
    /// with one SHA-256: never seen). The name does not exist, and cannot be made, linked or
    /// renamed to: the other name's entry is never touched.
    #[error(
        "name cannot be stored: its entry key {key} (a hash of the long name) holds another \
         name of the directory; use another name"
    )]
    NameCollision { key: String },
    #[error("file too large for one store item at key {key} ({limit})")]
    TooBig { key: String, limit: String },
    #[error("store is full writing key {key}: {source}")]
    NoSpace { key: String, source: StoreError },
    #[error("store error at key {key}: {source}")]
    Store { key: String, source: StoreError },
    #[error("missing record at key {key} (evicted or never written; run `memfis check`)")]
    Missing { key: String },
    #[error("malformed record at key {key}: {why}")]
    Corrupt { key: String, why: String },
    #[error(
        "prefix {prefix:?} nests with prefix {other:?} already used on this store (their data keys \
         would overlap); pick a prefix that neither starts with nor is the start of another, up to a '/'"
    )]
    PrefixNests { prefix: String, other: String },
    /// Opened without asking to create: the prefix has no tree (a mistyped prefix, or a store
    /// emptied by a restart). Nothing was written.
    #[error(
        "no memfis tree under prefix {prefix:?} on this store (trees here: {})",
        crate::error::list_or_none(trees)
    )]
    NoTree { prefix: String, trees: Vec<String> },
    /// `--replicas` asked for another number of copies than the tree keeps (or than the
    /// servers given can hold).
    #[error("{0}")]
    Replicas(String),
    #[error(
        "store format at key {key} is {found}; this memfis understands version {supported} only. {advice}"
    )]
    UnknownFormat {
        key: String,
        found: String,
        supported: u32,
        /// What to do about it.
        advice: String,
    },
}

pub type FsResult<T> = Result<T, FsError>;

/// `a, b, c`, or `none` for an empty list.
pub fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

impl FsError {
    /// The errno this error reports through FUSE.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::NoXattr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::BadHandle => libc::EBADF,
            FsError::Stale => libc::ESTALE,
            FsError::Contended => libc::EBUSY,
            FsError::WouldBlock => libc::EAGAIN,
            FsError::Interrupted => libc::EINTR,
            FsError::NameTooLong { .. } | FsError::NameCollision { .. } => libc::ENAMETOOLONG,
            FsError::TooBig { .. } => libc::EFBIG,
            FsError::NoSpace { .. } => libc::ENOSPC,
            FsError::Store { .. }
            | FsError::StoreGone
            | FsError::Missing { .. }
            | FsError::Corrupt { .. }
            | FsError::UnknownFormat { .. } => libc::EIO,
            FsError::PrefixNests { .. } | FsError::Replicas(_) => libc::EINVAL,
            FsError::NoTree { .. } => libc::ENOENT,
        }
    }

    /// Wraps a store error hit at `key`, picking the errno the contract gives it.
    pub fn store(key: &[u8], source: StoreError) -> FsError {
        let key = String::from_utf8_lossy(key).into_owned();
        match source {
            StoreError::Refused(memfis_memcache::Refusal::StoreGone) => FsError::StoreGone,
            StoreError::OutOfMemory(_) => FsError::NoSpace { key, source },
            StoreError::TooLarge(msg) => FsError::TooBig { key, limit: msg },
            StoreError::BadKey(_) if key.len() > memfis_memcache::MAX_KEY_LEN => {
                FsError::NameTooLong {
                    len: key.len(),
                    key,
                }
            }
            source => FsError::Store { key, source },
        }
    }

    /// A format record this build does not read (`found`), with what to do about it.
    pub fn unknown_format(key: &[u8], found: &crate::layout::record::FormatRecord) -> FsError {
        use crate::layout::record::FORMAT_VERSION;
        let advice = if found.format != "memfis" {
            "This is not a memfis tree: pick another prefix.".to_string()
        } else if found.version < FORMAT_VERSION {
            format!(
                "It was written by an older memfis; this one neither reads nor changes it \
                 (version {FORMAT_VERSION} keys long names by SHA-256 instead of CRC-32, with \
                 which one name could take over another's file). To move the tree: with the memfis that wrote \
                 it, copy it out (`memfis export DIR`, or mount it and `cp -a`); then, with \
                 this memfis, `memfis load DIR --prefix NEW` into a prefix no memfis has used, \
                 and point nginx at NEW."
            )
        } else {
            "It was written by a newer memfis: use that version.".to_string()
        };
        FsError::UnknownFormat {
            key: String::from_utf8_lossy(key).into_owned(),
            found: format!("{} version {}", found.format, found.version),
            supported: FORMAT_VERSION,
            advice,
        }
    }

    pub fn corrupt(key: &[u8], why: impl Into<String>) -> FsError {
        FsError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            why: why.into(),
        }
    }

    pub fn missing(key: &[u8]) -> FsError {
        FsError::Missing {
            key: String::from_utf8_lossy(key).into_owned(),
        }
    }

    /// Damage in the store (a key missing or holding what it must not) that no retry
    /// mends: only `memfis check --repair` does.
    pub fn is_damage(&self) -> bool {
        matches!(self, FsError::Missing { .. } | FsError::Corrupt { .. })
    }

    /// Errors worth a log line (the store misbehaved), as opposed to ordinary answers.
    pub fn is_fault(&self) -> bool {
        // A gone store was logged once, by the heartbeat that found it.
        !matches!(self, FsError::StoreGone) && self.errno() == libc::EIO
            || self.errno() == libc::ENOSPC
            || self.errno() == libc::EFBIG
    }
}
