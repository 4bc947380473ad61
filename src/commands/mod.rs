//! One module per `memfis` command: runs it over the library crates and renders what it
//! reports (progress, summaries, exit codes).

pub mod check;
pub mod export;
pub mod load;
pub mod manuals;
pub mod mount;
pub mod nginx_config;
pub mod stats;
pub mod up;
