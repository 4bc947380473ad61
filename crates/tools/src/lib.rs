//! What memfis commands do to a store, without FUSE and without a terminal: the layer between
//! the filesystem library (`memfis-fs`) and the binary, which keeps argument parsing and
//! rendering only.
//!
//! A crate of its own rather than modules of `memfis-fs`: these are clients of the filesystem
//! (they call the same public operations a FUSE mount calls, and walk local directories), not
//! part of it, and keeping them out leaves the filesystem free of local-disk code. Generic over
//! the store, so `tests/round_trip.rs` runs load and export against the in-memory store.
//!
//! - [`session`]: a store opened by a command; a [`Session`] keeps the liveness key alive
//!   (the heartbeat) from open to drop
//! - [`load`]: make a directory of the store equal to a local directory (`memfis load`)
//! - [`export`]: the tree back onto local disk (`memfis export`)
//! - [`replicas`]: every copy of a tree's keys compared, and refilled (`memfis check`)
//! - [`refill`]: a mount's background refill of a server that lacks its copies
//! - [`stats`]: the figures of the servers and of the tree (`memfis stats`)
//! - [`progress`]: how a command reports while it works; the binary renders it
//!
//! Errors that end a command are `anyhow::Error` with context: they are only ever shown to a
//! person. Problems with one path are reported and the command goes on.

pub mod export;
pub mod load;
pub mod progress;
pub mod refill;
pub mod replicas;
pub mod session;
pub mod stats;

pub use progress::{Progress, Silent, Would};
pub use session::{IfNoTree, Session, StoreConfig};
