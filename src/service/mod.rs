//! What a long-running daemon needs besides the filesystem: logs, signals, metrics, and
//! allocator tuning.

pub mod logging;
pub mod malloc;
pub mod metrics;
pub mod signals;
