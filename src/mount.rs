//! `memfis mount`: check everything, mount, detach like other mount helpers, and unmount
//! cleanly on SIGINT/SIGTERM. `fusermount3 -u` also ends the daemon.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fuser::{Config, MountOption, Session, SessionACL};
use memfis_fs::{FsConfig, KeyLayout, MemFs};
use memfis_memcache::{Client, ClientConfig, Store};
use nix::unistd::{ForkResult, fork, pipe, setsid};

use crate::cli::{MountArgs, StoreArgs};
use crate::fuse_adapter::FuseFs;

/// Mount options after parsing `-o`.
struct Options {
    fuse: Vec<MountOption>,
    acl: SessionACL,
}

fn parse_options(args: &mut MountArgs) -> Result<Options> {
    let mut fuse = vec![
        MountOption::FSName("memfis".into()),
        MountOption::Subtype("memfis".into()),
        MountOption::DefaultPermissions,
    ];
    let mut acl = SessionACL::Owner;
    let mut servers_from_options = Vec::new();
    for opt in args.options.iter().filter(|o| !o.is_empty()) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt.as_str(), None),
        };
        match (name, value) {
            ("ro", None) => fuse.push(MountOption::RO),
            ("rw", None) => fuse.push(MountOption::RW),
            ("allow_other", None) => acl = SessionACL::All,
            ("allow_root", None) => acl = SessionACL::RootAndOwner,
            ("auto_unmount", None) => fuse.push(MountOption::AutoUnmount),
            ("noatime", None) => fuse.push(MountOption::NoAtime),
            ("atime", None) => fuse.push(MountOption::Atime),
            ("nodev", None) => fuse.push(MountOption::NoDev),
            ("dev", None) => fuse.push(MountOption::Dev),
            ("nosuid", None) => fuse.push(MountOption::NoSuid),
            ("suid", None) => fuse.push(MountOption::Suid),
            ("noexec", None) => fuse.push(MountOption::NoExec),
            ("exec", None) => fuse.push(MountOption::Exec),
            ("fsname", Some(v)) => fuse[0] = MountOption::FSName(v.into()),
            ("server", Some(v)) => servers_from_options.push(v.to_string()),
            ("prefix", Some(v)) => args.store.prefix = Some(v.to_string()),
            ("attr_ttl", Some(v)) => {
                args.attr_ttl = v.parse().with_context(|| format!("bad attr_ttl={v}"))?
            }
            // Options of mount(8) and fstab that mean nothing to the filesystem itself.
            (
                "defaults"
                | "_netdev"
                | "nofail"
                | "noauto"
                | "auto"
                | "user"
                | "users"
                | "default_permissions",
                _,
            ) => {}
            (n, _) if n.starts_with("x-") => {}
            _ => bail!("unknown mount option {opt:?}"),
        }
    }
    if !servers_from_options.is_empty() {
        args.store.servers = servers_from_options;
    }
    Ok(Options { fuse, acl })
}

/// A client for the servers of `store` (connections are made on first use).
pub fn connect(store: &StoreArgs) -> Result<Arc<Client>> {
    if !store.timeout.is_finite() || store.timeout <= 0.0 {
        bail!("--timeout must be a positive number of seconds");
    }
    let mut cfg = ClientConfig::new(store.servers.clone());
    cfg.connect_timeout = Duration::from_secs_f64(store.timeout);
    cfg.io_timeout = Duration::from_secs_f64(store.timeout);
    Ok(Arc::new(Client::new(&cfg).map_err(anyhow::Error::msg)?))
}

/// Connects to the store and opens the filesystem: every check that can fail before mounting.
pub fn open_store(store: &StoreArgs, cache_ttl: Duration) -> Result<MemFs<Arc<Client>>> {
    let prefix = store.prefix();
    let keys = KeyLayout::new(&prefix).map_err(anyhow::Error::msg)?;
    let client = connect(store)?;
    for (server, version) in client.versions() {
        version.with_context(|| format!("cannot reach memcached at {server}"))?;
    }
    guard_against_evictions(&client, store.allow_evictions)?;
    let fs_cfg = FsConfig {
        cache_ttl,
        item_size_max: client.item_size_max(),
        ..FsConfig::default()
    };
    MemFs::new(client, keys, fs_cfg)
        .with_context(|| format!("cannot open the memfis store under prefix {prefix:?}"))
}

/// Refuses servers that evict items when full (memcached's default): an evicted inode record
/// or log chunk silently breaks the tree. Through twemproxy `stats` does not pass: warn.
fn guard_against_evictions(client: &Client, allowed: bool) -> Result<()> {
    for (server, settings) in client.stats(Some("settings")) {
        let evictions = match settings {
            Ok(stats) => stats
                .iter()
                .find(|(k, _)| k == "evictions")
                .map(|(_, v)| v.clone()),
            Err(e) => {
                tracing::warn!(
                    "cannot read `stats settings` of {server} ({e}; through twemproxy it does not \
                     pass): make sure every memcached behind it runs with -M"
                );
                continue;
            }
        };
        if evictions.as_deref() == Some("on") {
            if allowed {
                tracing::warn!(
                    "{server} evicts items when full (started without -M): an evicted record \
                     breaks the tree; accepted by --allow-evictions"
                );
            } else {
                bail!(
                    "memcached at {server} evicts items when it is full (it runs without -M), \
                     which would silently lose files and directories. Restart it with -M (and -m \
                     large enough for the tree, -I at least the largest file), or pass \
                     --allow-evictions to accept the risk"
                );
            }
        }
    }
    Ok(())
}

pub fn run(mut args: MountArgs) -> Result<()> {
    let options = parse_options(&mut args)?;
    let meta = std::fs::metadata(&args.mountpoint)
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    if !meta.is_dir() {
        bail!(
            "mountpoint {} is not a directory",
            args.mountpoint.display()
        );
    }
    if !args.attr_ttl.is_finite() || args.attr_ttl < 0.0 {
        bail!("attr_ttl must be zero or more seconds");
    }
    let ttl = Duration::from_secs_f64(args.attr_ttl);
    // Check the store before detaching so errors reach the terminal; then start afresh in
    // the child (no sockets or threads cross the fork).
    drop(open_store(&args.store, ttl)?);
    if args.foreground {
        crate::logging::init_stderr();
        return serve(&args, &options, ttl, None);
    }
    let (read_end, write_end) = pipe().context("pipe")?;
    // SAFETY: no other threads exist yet (checked above: the store check spawns none).
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            let mut msg = String::new();
            std::fs::File::from(read_end).read_to_string(&mut msg)?;
            if msg == "ok" {
                Ok(())
            } else if msg.is_empty() {
                bail!("the mount daemon exited before mounting")
            } else {
                bail!("{msg}")
            }
        }
        ForkResult::Child => {
            drop(read_end);
            setsid().ok();
            crate::logging::init_daemon(args.log_file.as_deref());
            let result = serve(&args, &options, ttl, Some(write_end));
            if let Err(e) = &result {
                tracing::error!("{e:#}");
            }
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
    }
}

/// Mounts and runs until unmounted. `ready` is told "ok" (or the error) once mounted.
fn serve(args: &MountArgs, options: &Options, ttl: Duration, ready: Option<OwnedFd>) -> Result<()> {
    let mounted = (|| -> Result<_> {
        let fs = Arc::new(open_store(&args.store, ttl)?);
        let client = fs.store().clone();
        spawn_heartbeat(fs.clone());
        let mut config = Config::default();
        config.mount_options = options.fuse.clone();
        config.acl = options.acl;
        config.n_threads = Some(args.threads.max(1));
        config.clone_fd = args.threads > 1;
        let session = Session::new(FuseFs::new(fs, ttl), &args.mountpoint, &config)
            .with_context(|| format!("cannot mount on {}", args.mountpoint.display()))?;
        Ok((session, client))
    })();
    let (mut session, client) = match mounted {
        Ok(s) => s,
        Err(e) => {
            if let Some(fd) = ready {
                let _ = std::fs::File::from(fd).write_all(format!("{e:#}").as_bytes());
            }
            return Err(e);
        }
    };
    let mut unmounter = session.unmount_callable();
    let mountpoint = args.mountpoint.clone();
    ctrlc::set_handler(move || {
        tracing::info!("signal received: unmounting {}", mountpoint.display());
        if let Err(e) = unmounter.unmount() {
            tracing::warn!("unmount failed: {e}; trying fusermount3 -u -z");
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&mountpoint)
                .status();
        }
    })
    .context("installing signal handlers")?;
    if let Some(fd) = ready {
        let mut f = std::fs::File::from(fd);
        f.write_all(b"ok")?;
        drop(f);
        redirect_stdio_to_null();
    }
    tracing::info!(
        "mounted {} (prefix {})",
        args.mountpoint.display(),
        args.store.prefix()
    );
    session.run().context("FUSE session")?;
    let (trips, commands) = client.counters();
    tracing::info!(
        "unmounted {} after {trips} store round trips, {commands} commands",
        args.mountpoint.display()
    );
    Ok(())
}

/// Opens the store for a tool that works without FUSE (load, export, repair), as a mount of
/// its own with its heartbeat running (a long run must not let its liveness key expire).
pub fn open_for_tool(store: &StoreArgs) -> Result<Arc<MemFs<Arc<Client>>>> {
    let fs = Arc::new(open_store(store, Duration::from_secs(1))?);
    spawn_heartbeat(fs.clone());
    Ok(fs)
}

/// Keeps this mount's liveness key fresh and notices a store emptied under it.
fn spawn_heartbeat(fs: Arc<MemFs<Arc<Client>>>) {
    std::thread::spawn(move || {
        let mut failing = false;
        loop {
            std::thread::sleep(Duration::from_secs(2));
            match fs.heartbeat() {
                Ok(()) if failing => {
                    tracing::info!("store reachable again");
                    failing = false;
                }
                Ok(()) => {}
                Err(memfis_fs::FsError::StoreGone) => {}
                Err(e) if !failing => {
                    tracing::warn!("heartbeat: {e}");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    });
}

fn redirect_stdio_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
