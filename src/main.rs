//! memfis: a small binary over the library crates. See README.md for the layers.

mod cli;
mod commands;
mod fuse;
mod service;

use clap::Parser;

fn main() {
    let args = cli::mount_helper::from_mount_helper(std::env::args().collect());
    let cli = cli::Cli::parse_from(args);
    // Warnings (twemproxy, evictions, the heartbeat) reach stderr from every command; a mount
    // chooses its own logging (stderr, a file, journald or syslog).
    if !matches!(cli.command, cli::Command::Mount(_)) {
        service::logging::init_stderr();
    }
    let result = match cli.command {
        cli::Command::Mount(args) => commands::mount::run(args).map_err(exit_if_no_tree),
        cli::Command::NginxConfig(args) => commands::nginx_config::run(args),
        cli::Command::Up(args) => commands::up::run(args),
        cli::Command::Check(args) => exit_with(commands::check::run(args), 8),
        cli::Command::Stats(args) => exit_with(commands::stats::run(args), 1),
        cli::Command::Load(args) => exit_with(commands::load::run(args), 2),
        cli::Command::Export(args) => exit_with(commands::export::run(args), 2),
        cli::Command::Man(args) => commands::manuals::man(&args),
        cli::Command::Completions(args) => commands::manuals::completions(&args),
    };
    if let Err(e) = result {
        if closed_output(&e) {
            // `memfis man mount | head -1`: the reader had enough; not an error.
            std::process::exit(0);
        }
        eprintln!("memfis: {e:#}");
        std::process::exit(1);
    }
}

/// True when writing to stdout failed because its reader went away (EPIPE).
fn closed_output(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Exits with the status a command chose, or `on_error` when it failed (8 when it refused a
/// prefix with no tree).
fn exit_with(result: anyhow::Result<i32>, on_error: i32) -> ! {
    match result.map_err(exit_if_no_tree) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("memfis: {e:#}");
            std::process::exit(on_error);
        }
    }
}

/// A refusal of a prefix with no tree is said and exits 8, whatever the command; any other
/// error is returned.
fn exit_if_no_tree(e: anyhow::Error) -> anyhow::Error {
    if cli::store::is_no_tree(&e) {
        eprintln!("memfis: {e:#}");
        std::process::exit(cli::store::EXIT_NO_TREE);
    }
    e
}
