//! Typed errors: the filesystem maps each to an errno (out of memory -> ENOSPC, too large ->
//! EFBIG, the rest -> EIO).

/// What went wrong with one command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `SERVER_ERROR out of memory storing object` (memcached run with `-M`).
    #[error("store is full ({0})")]
    OutOfMemory(String),
    /// `SERVER_ERROR object too large for cache` (value over `-I`).
    #[error("value too large for the server's item size limit ({0})")]
    TooLarge(String),
    /// Any other `SERVER_ERROR`.
    #[error("server error: {0}")]
    Server(String),
    /// `CLIENT_ERROR` or `ERROR`: the server did not accept the command.
    #[error("client error: {0}")]
    Client(String),
    /// The key is not one memcached accepts (too long, whitespace or control bytes).
    #[error("invalid key: {0}")]
    BadKey(String),
    /// Connecting, reading or writing failed (refused, reset, closed).
    #[error("I/O error talking to {server}: {message}")]
    Io { server: String, message: String },
    /// The server did not answer within the timeout.
    #[error("timed out talking to {server}")]
    Timeout { server: String },
    /// The reply could not be parsed.
    #[error("protocol error from {server}: {message}")]
    Protocol { server: String, message: String },
    /// Never sent: a guard above the connections refused it.
    #[error("{0}")]
    Refused(Refusal),
}

/// Why a guard above the connections refused a command (a caller's own rule, typed so that
/// callers tell the cases apart without reading messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The store was emptied or replaced under the caller.
    #[error("the store was emptied or replaced under this mount; remount it")]
    StoreGone,
    /// The caller stalled past its liveness while holding a lock another may hold now.
    #[error(
        "this mount stalled past its liveness: the namespace lock it held may be another mount's now"
    )]
    LeaseLapsed,
}

impl StoreError {
    pub fn protocol(server: &str, message: &str) -> StoreError {
        StoreError::Protocol {
            server: server.to_string(),
            message: message.to_string(),
        }
    }

    /// Classifies an I/O error: timeouts apart from everything else.
    pub fn from_io(server: &str, err: &std::io::Error) -> StoreError {
        match err.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => StoreError::Timeout {
                server: server.to_string(),
            },
            _ => StoreError::Io {
                server: server.to_string(),
                message: err.to_string(),
            },
        }
    }

    /// True when the connection that produced this error must not be reused.
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. }
                | StoreError::Timeout { .. }
                | StoreError::Protocol { .. }
                | StoreError::Client(_)
        )
    }

    /// True when the server could not be reached at all (vs. it answered with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Io { .. } | StoreError::Timeout { .. })
    }
}
