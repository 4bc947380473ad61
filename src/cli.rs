//! Command line: what the user can ask for, with environment equivalents and defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "memfis",
    version,
    about = "A POSIX filesystem stored in memcached, served by nginx"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the store as a filesystem (detaches unless --foreground).
    Mount(MountArgs),
    /// Print an nginx config (upstream + server) that serves the store, with fallbacks.
    NginxConfig(NginxConfigArgs),
    /// Start memcached, mount, copy SITE_DIR in, serve it with nginx; Ctrl-C stops it all.
    Up(UpArgs),
    /// Check the whole store (exit 0 clean, 4 problems left); --repair fixes what it finds.
    Check(CheckArgs),
    /// Show each server (version, evictions, memory, items, hit rate) and the tree's totals.
    Stats(StatsArgs),
    /// Make a directory in the store equal to SRC, like rsync -a, without FUSE (the fast way
    /// to preload a site).
    Load(LoadArgs),
    /// Write a directory of the store back onto local disk, bytes and metadata exact.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Example: memfis export /srv/backup/site --prefix memfis://www.example.com")]
pub struct ExportArgs {
    /// Local directory to write into (made if missing; files there are overwritten).
    pub dest: PathBuf,
    /// Directory of the store to export.
    #[arg(long, default_value = "/")]
    pub from: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example: memfis load ./site --to / --delete --prefix memfis://www.example.com"
)]
pub struct LoadArgs {
    /// Local directory whose contents are loaded.
    pub src: PathBuf,
    /// Directory in the store that becomes a copy of SRC (made if missing).
    #[arg(long, default_value = "/")]
    pub to: String,
    /// Remove what the store has under --to and SRC lacks.
    #[arg(long)]
    pub delete: bool,
    /// Compare bytes, not size and modification time, to skip unchanged files.
    #[arg(long)]
    pub checksum: bool,
    /// Print what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Files written at once (each waits for two store round trips).
    #[arg(long, default_value_t = 16)]
    pub jobs: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Fix what the check finds (under the namespace lock; mounts may stay live), logging
    /// every change, then check again.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory copied into the store (and served from disk if the store misses).
    pub site: Option<PathBuf>,
    /// Port nginx listens on (loopback).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where the mount, configs and logs live [default: /run/memfis-up as root].
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NginxConfigArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Port or address:port nginx listens on.
    #[arg(long, default_value = "80")]
    pub listen: String,
    /// Disk directory served when a file is not in the store or the store is down.
    #[arg(long)]
    pub root: Option<String>,
    /// php-fpm address (HOST:PORT or unix:/path) for requests nothing else answers.
    #[arg(long)]
    pub php_fpm: Option<String>,
    /// PHP front controller run for those requests [default: $document_root/index.php].
    #[arg(long)]
    pub php_script: Option<String>,
}

/// Where the store is: shared by every subcommand that talks to it.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// memcached server HOST:PORT; repeat for a pool (keys placed as nginx's `hash ... consistent`).
    #[arg(
        long = "server",
        env = "MEMFIS_SERVERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:11211"
    )]
    pub servers: Vec<String>,
    /// Key prefix: data of /path lives at PREFIX/path [default: memfis://$(hostname)].
    #[arg(long, env = "MEMFIS_PREFIX")]
    pub prefix: Option<String>,
    /// Seconds to wait for a server before a call fails with EIO.
    #[arg(long, default_value_t = 2.0)]
    pub timeout: f64,
    /// Mount even if memcached evicts items when full (started without -M): an evicted
    /// record breaks the tree.
    #[arg(long)]
    pub allow_evictions: bool,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Directory to mount on.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Stay in the foreground (logs go to stderr).
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount options, comma separated: ro, allow_other, allow_root, noatime, nodev, nosuid,
    /// noexec, fsname=NAME, server=HOST:PORT, prefix=PREFIX, attr_ttl=SECONDS.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Seconds the kernel caches entries and attributes.
    #[arg(long, default_value_t = 1.0)]
    pub attr_ttl: f64,
    /// FUSE worker threads (a slow store call holds one; measured: more than 8 only adds
    /// switching on 2 cores).
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Append logs to this file when detached (filter with MEMFIS_LOG, e.g. MEMFIS_LOG=debug).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}

impl StoreArgs {
    /// True when the user named servers (flag or MEMFIS_SERVERS), not the default.
    pub fn servers_given(&self) -> bool {
        std::env::var_os("MEMFIS_SERVERS").is_some()
            || std::env::args().any(|a| a == "--server" || a.starts_with("--server="))
    }

    /// The prefix to use: given, or `memfis://` + host name as in the original.
    pub fn prefix(&self) -> String {
        self.prefix.clone().unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into());
            format!("memfis://{host}")
        })
    }
}

/// Rewrites the form mount(8) uses for `fuse.memfis` (`memfis SOURCE MOUNTPOINT -o OPTS`)
/// into `memfis mount MOUNTPOINT -o OPTS[,server=SOURCE]`.
pub fn from_mount_helper(args: Vec<String>) -> Vec<String> {
    let known = [
        "mount",
        "nginx-config",
        "up",
        "check",
        "stats",
        "load",
        "export",
        "help",
        "-h",
        "--help",
        "-V",
        "--version",
    ];
    if args.len() < 3 || known.contains(&args[1].as_str()) || args[1].starts_with('-') {
        return args;
    }
    let source = &args[1];
    let mut out = vec![args[0].clone(), "mount".into(), args[2].clone()];
    if source.contains(':') {
        out.push(format!("-o=server={}", source.replace(',', ",server=")));
    }
    out.extend(args[3..].iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_helper_form_becomes_mount() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            from_mount_helper(args("memfis 127.0.0.1:11211 /mnt -o rw")),
            args("memfis mount /mnt -o=server=127.0.0.1:11211 -o rw")
        );
        assert_eq!(
            from_mount_helper(args("memfis mount /mnt")),
            args("memfis mount /mnt")
        );
        assert_eq!(
            from_mount_helper(args("memfis memfis /mnt")),
            args("memfis mount /mnt")
        );
    }
}
