//! memfis: a small binary over the library crates. See README.md for the layers.

mod check;
mod cli;
mod fuse_adapter;
mod logging;
mod mount;
mod nginx_config;
mod up;

use clap::Parser;

fn main() {
    let args = cli::from_mount_helper(std::env::args().collect());
    let cli = cli::Cli::parse_from(args);
    let result = match cli.command {
        cli::Command::Mount(args) => mount::run(args),
        cli::Command::NginxConfig(args) => nginx_config::render(&nginx_config::ServeOptions {
            servers: args.store.servers.clone(),
            prefix: args.store.prefix(),
            listen: args.listen,
            root: args.root,
            php_fpm: args.php_fpm,
            php_script: args.php_script,
        })
        .map(|config| print!("{config}")),
        cli::Command::Up(args) => up::run(args),
        cli::Command::Check(args) => match check::run(args) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("memfis: {e:#}");
                std::process::exit(8);
            }
        },
    };
    if let Err(e) = result {
        eprintln!("memfis: {e:#}");
        std::process::exit(1);
    }
}
