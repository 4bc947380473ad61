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
    /// Print the manual page of memfis, or of one subcommand; --dir writes them all.
    Man(ManArgs),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  memfis man | man -l -\n  \
                        memfis man --dir /usr/local/share/man/man1")]
pub struct ManArgs {
    /// The subcommand whose page to print (e.g. mount); the main page if omitted.
    pub subcommand: Option<String>,
    /// Write memfis.1 and memfis-SUBCOMMAND.1 for every subcommand into this directory.
    #[arg(long, conflicts_with = "subcommand")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Example: memfis completions bash > /etc/bash_completion.d/memfis")]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
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
    /// Print what would change; write no file. The tree is opened as by every command: while
    /// it runs its liveness key is written, and an operation a dead mount left half done is
    /// completed.
    #[arg(long)]
    pub dry_run: bool,
    /// Files written at once (each waits for two store round trips).
    #[arg(long, default_value_t = 16)]
    pub jobs: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  memfis stats --server 127.0.0.1:11211 --prefix memfis://www.example.com\n  \
                        memfis stats --json | jq .tree.files"
)]
pub struct StatsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 clean (nothing to repair), 1 repaired and clean now (an \
                        unfinished operation completed counts), 4 problems found (or left after \
                        repair), 8 the check could not run.\n\n\
                        Examples:\n  memfis check --prefix memfis://www.example.com\n  \
                        memfis check --repair --prefix memfis://www.example.com\n  \
                        memfis check --verify --prefix memfis://www.example.com"
)]
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
    /// Also read every data key's bytes: every name of a file (and its private key) must
    /// hold the same bytes. Without it sizes are compared, without reading the bytes.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Args)]
#[command(
    mut_arg("servers", |a| a
        .hide_default_value(true)
        .help("memcached to use (HOST:PORT or unix:/path, repeatable) instead of starting one; \
               needs --prefix, and a prefix holding a tree needs --into-existing")),
    after_help = "Everything it starts is chosen here: memcached (its socket, port, memory and \
                  item size; none with --server), the mount (--mountpoint, --prefix), nginx \
                  (--port; none with --no-nginx) and the PHP backend nginx falls back to \
                  (--php-fpm; memfis up starts no php-fpm). It deletes its runtime directory \
                  when it stops, never a --mountpoint or --memcached-socket directory of yours, \
                  never across a mount; a runtime directory another running memfis up holds \
                  (it locks RUNTIME_DIR/.memfis-up), or with a mount under it, is refused.\n\n\
                  Examples:\n  memfis up ./site --port 8080   # then open http://127.0.0.1:8080/\n  \
                  memfis up ./site --memcached-port 11311 --memcached-memory 512 --prefix memfis://dev\n  \
                  memfis up ./site --mountpoint /srv/dev --no-nginx\n  \
                  memfis up ./site --php-fpm unix:/run/php/php8.2-fpm.sock"
)]
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
    /// Mount here (an empty directory) instead of RUNTIME_DIR/mnt; left in place when it stops.
    #[arg(long)]
    pub mountpoint: Option<PathBuf>,
    /// The unix socket of the memcached it starts [default: RUNTIME_DIR/memcached.sock]; must
    /// not exist yet.
    #[arg(long, conflicts_with_all = ["servers", "memcached_port"])]
    pub memcached_socket: Option<PathBuf>,
    /// Start memcached on this loopback TCP port instead of a unix socket.
    #[arg(long, conflicts_with = "servers")]
    pub memcached_port: Option<u16>,
    /// Memory of the memcached it starts, in MB (-m) [default: 4x the site, at least 256].
    #[arg(long, value_name = "MB", conflicts_with = "servers")]
    pub memcached_memory: Option<u64>,
    /// Largest item of the memcached it starts, in MB (-I): the largest file nginx serves
    /// [default: above the site's largest file, at least 8].
    #[arg(long, value_name = "MB", conflicts_with = "servers")]
    pub memcached_item_size: Option<u64>,
    /// With --server: use the prefix even if it holds a tree already (SITE_DIR is copied into
    /// it, replacing files of the same names). Without it such a prefix is refused.
    #[arg(long)]
    pub into_existing: bool,
    /// Start no nginx: only memcached (unless --server), the mount and the load.
    #[arg(long, conflicts_with_all = ["php_fpm", "port"])]
    pub no_nginx: bool,
    /// php-fpm address (HOST:PORT or unix:/path) nginx passes what nothing else answers to
    /// (memfis up starts none).
    #[arg(long)]
    pub php_fpm: Option<String>,
    /// PHP front controller run for those requests [default: SITE/index.php].
    #[arg(long, requires = "php_fpm")]
    pub php_script: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example: memfis nginx-config --server 127.0.0.1:11211 --root /srv/www \\\n    \
                  --prefix memfis://www.example.com > /etc/nginx/conf.d/memfis.conf"
)]
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
    /// Host names this site answers (server_name); repeat or comma-separate.
    #[arg(long = "server-name", value_delimiter = ',')]
    pub server_names: Vec<String>,
    /// Make this site the default server of its port (answers requests no name claims).
    #[arg(long)]
    pub default_server: bool,
    /// Id naming this site's upstream and locations, unique per site on one nginx
    /// [default: from the prefix, e.g. www_example_com].
    #[arg(long)]
    pub name: Option<String>,
    /// Another extension of scripts, run by --php-fpm (answered 403 without a backend), never
    /// served as bytes; repeatable (php-fpm's pool must allow it: security.limit_extensions). php always is one; phtml, pht, php3-php8, phar, phps and inc are
    /// refused (403) unless named here.
    #[arg(long = "script-ext", value_delimiter = ',')]
    pub script_exts: Vec<String>,
    /// A file of the server's own `add_header` lines (HSTS, CSP, ...), included in every
    /// generated location that adds headers: nginx drops the server's there otherwise.
    #[arg(long, value_name = "FILE")]
    pub headers: Option<String>,
    /// How long browsers may keep responses of a type: TYPE=TIME with TYPE a content type,
    /// type/* or default, and an nginx time (5m, 12h, 30d, max, off); repeatable.
    #[arg(long, value_name = "TYPE=TIME")]
    pub expires: Vec<String>,
    /// Print only the locations, to `include` inside an existing `server {}`.
    #[arg(long, conflicts_with_all = ["upstream", "listen", "server_names", "default_server"])]
    pub snippet: bool,
    /// Print only the upstream, for the http context (what --snippet needs beside it; generate
    /// both with the same --expires, whose map it holds).
    #[arg(long)]
    pub upstream: bool,
}

/// Where the store is: shared by every subcommand that talks to it.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// memcached server HOST:PORT or unix:/path/to/socket; repeat for a pool (keys placed as
    /// nginx's `hash ... consistent`).
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
    /// Store HTML, CSS, JS, JSON, XML, SVG and text files over 1 KB gzip-compressed: nginx
    /// sends them as they are to clients that accept gzip (the generated config sets
    /// memcached_gzip_flag and gunzip). Reads decompress whether or not this is given.
    #[arg(long)]
    pub gzip: bool,
    /// Keep every key on N servers of the pool: its own and the next N-1 distinct servers
    /// clockwise on nginx's consistent-hash ring (where nginx retries). Fixed when a tree is
    /// made; later commands take the tree's number when this is not given.
    #[arg(long, env = "MEMFIS_REPLICAS", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: Option<u32>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    memfis mount /srv/www --server 127.0.0.1:11211 --prefix memfis://www.example.com\n  \
    memfis mount /srv/www --create --prefix memfis://new.example.com   # a new, empty tree\n  \
    memfis mount /srv/www -f -o allow_other,server=10.0.0.1:11211,server=10.0.0.2:11211\n  \
    umount /srv/www\n\n\
    As mount(8) helper (fstab):\n  \
    127.0.0.1:11211  /srv/www  fuse.memfis  prefix=memfis://www.example.com,allow_other,_netdev  0 0\n\n\
    Signals: SIGINT and SIGTERM unmount; SIGHUP reopens --log-file.")]
pub struct MountArgs {
    /// Directory to mount on.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Stay in the foreground (logs go to stderr).
    #[arg(short, long)]
    pub foreground: bool,
    /// Make a new, empty tree if the prefix has none (`-o create`). Without it a prefix with
    /// no tree is refused (a mistyped prefix), naming the trees the store holds.
    #[arg(long)]
    pub create: bool,
    /// Mount options, comma separated: ro, allow_other, allow_root, noatime, nodev, nosuid,
    /// noexec, nonempty, gzip, create, replicas=N, refill_rate=N, fsname=NAME, server=HOST:PORT, prefix=PREFIX,
    /// attr_ttl=SECONDS.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Seconds the kernel caches entries and attributes.
    #[arg(long, default_value_t = 1.0)]
    pub attr_ttl: f64,
    /// FUSE worker threads (a slow store call holds one; measured: more than 8 only adds
    /// switching on 2 cores).
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Append logs to this file (reopened on SIGHUP). Without it a detached mount logs to
    /// journald, or syslog where journald does not run; --foreground logs to stderr. Filter
    /// with MEMFIS_LOG, e.g. MEMFIS_LOG=debug.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at this address (e.g. 127.0.0.1:9310), path /metrics.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// With --replicas 2 or more: keys a second this mount compares and copies, in the
    /// background, to a server that lacks its copies (back empty, or new to the pool); one
    /// mount refills at a time. 0: never (`memfis check --repair` refills). `-o refill_rate=N`.
    #[arg(long, default_value_t = memfis_tools::refill::DEFAULT_RATE)]
    pub refill_rate: u32,
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
