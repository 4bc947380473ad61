//! The command line: arguments (`args.rs`), mount(8)'s helper form turned into them
//! (`mount_helper.rs`), and the store options as the library takes them (`store.rs`).

mod args;
pub mod mount_helper;
pub mod store;

pub use args::*;
