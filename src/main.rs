//! memfis: a small binary over the library crates. See README.md for the layers.

mod cli;
mod fuse_adapter;
mod logging;
mod mount;

use clap::Parser;

fn main() {
    let args = cli::from_mount_helper(std::env::args().collect());
    let cli = cli::Cli::parse_from(args);
    let result = match cli.command {
        cli::Command::Mount(args) => mount::run(args),
    };
    if let Err(e) = result {
        eprintln!("memfis: {e:#}");
        std::process::exit(1);
    }
}
