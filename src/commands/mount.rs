//! `memfis mount`: check everything, mount, detach like other mount helpers, and unmount
//! cleanly on SIGINT/SIGTERM. `fusermount3 -u` also ends the daemon.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fuser::{Config, MountOption, SessionACL};
use memfis_memcache::Store;
use memfis_tools::refill::Refiller;
use memfis_tools::{IfNoTree, Session, StoreConfig, session};
use nix::unistd::{ForkResult, fork, pipe, setsid};
use sd_notify::NotifyState;

use crate::cli::MountArgs;
use crate::cli::store::Notices;
use crate::fuse::adapter::FuseFs;
use crate::fuse::kernel_mount::{self, MountSpec};
use crate::service::logging::{self, LogFile};
use crate::service::signals;

/// Mount options after parsing `-o`.
struct Options {
    fuse: Vec<MountOption>,
    acl: SessionACL,
    /// `-o fsname=`: the source shown in the mount table instead of the server list.
    fsname: Option<String>,
    /// `-o nonempty`: mount over a directory that has entries, or is a mount point.
    nonempty: bool,
}

fn parse_options(args: &mut MountArgs) -> Result<Options> {
    let mut fuse = vec![MountOption::DefaultPermissions];
    let mut acl = SessionACL::Owner;
    let (mut fsname, mut nonempty) = (None, false);
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
            ("fsname", Some(v)) => fsname = Some(v.to_string()),
            ("nonempty", None) => nonempty = true,
            ("gzip", None) => args.store.gzip = true,
            ("replicas", Some(v)) => {
                let n: u32 = v.parse().with_context(|| format!("bad replicas={v}"))?;
                if !(1..=16).contains(&n) {
                    bail!("replicas={v}: give 1 to 16");
                }
                args.store.replicas = Some(n);
            }
            ("refill_rate", Some(v)) => {
                args.refill_rate = v.parse().with_context(|| format!("bad refill_rate={v}"))?
            }
            ("create", None) => args.create = true,
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
    Ok(Options {
        fuse,
        acl,
        fsname,
        nonempty,
    })
}

/// What the mount does with a prefix that has no tree: makes it only with `--create`
/// (`-o create`).
fn if_no_tree(args: &MountArgs) -> IfNoTree {
    if args.create {
        IfNoTree::Create
    } else {
        IfNoTree::Refuse
    }
}

/// A refusal of a prefix with no tree, with what to do about it.
const NO_TREE_ADVICE: &str = "Check the prefix (--prefix, MEMFIS_PREFIX, -o prefix=), or pass \
                              --create (-o create) to make a new, empty tree under it";

pub fn run(mut args: MountArgs) -> Result<()> {
    let options = parse_options(&mut args)?;
    kernel_mount::refuse_unusable(&args.mountpoint, options.nonempty)?;
    // The daemon works from `/` (so it holds no directory busy): keep the mount point whole.
    args.mountpoint = args.mountpoint.canonicalize()?;
    if !args.attr_ttl.is_finite() || args.attr_ttl < 0.0 {
        bail!("attr_ttl must be zero or more seconds");
    }
    let ttl = Duration::from_secs_f64(args.attr_ttl);
    let log_file = args.log_file.as_deref().map(LogFile::open).transpose()?;
    // Check the store before detaching so errors reach the terminal; then start afresh in
    // the child (no sockets or threads cross the fork).
    let store = crate::cli::store::config(&args.store, ttl)?;
    drop(
        session::open_fs(&store, if_no_tree(&args), &Notices)
            .map_err(|e| crate::cli::store::explain_no_tree(e, NO_TREE_ADVICE))?,
    );
    if args.foreground {
        match &log_file {
            Some(file) => logging::init_daemon(Some(file)),
            None => logging::init_stderr(),
        }
        return serve(&args, &options, &store, log_file, None);
    }
    if let Some(warning) = logging::unheard_daemon_logs(log_file.as_ref()) {
        eprintln!("memfis: warning: {warning}");
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
            std::env::set_current_dir("/").ok();
            logging::init_daemon(log_file.as_ref());
            let result = serve(&args, &options, &store, log_file, Some(write_end));
            if let Err(e) = &result {
                tracing::error!("{e:#}");
            }
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
    }
}

/// Mounts and runs until unmounted. `ready` is told "ok" (or the error) once the mount
/// answers; systemd (NOTIFY_SOCKET) hears READY then, and STOPPING when it goes. (Over 80
/// lines: the mount's life in order: threads started, mounted, ready, signals, stopped.)
fn serve(
    args: &MountArgs,
    options: &Options,
    store: &StoreConfig,
    log_file: Option<LogFile>,
    ready: Option<OwnedFd>,
) -> Result<()> {
    let mounted = (|| -> Result<_> {
        // Created (if asked) by the check before detaching; the daemon opens what is there.
        let session = Session::open(store, IfNoTree::Refuse, &Notices)
            .map_err(|e| crate::cli::store::explain_no_tree(e, NO_TREE_ADVICE))?;
        let fs = session.fs().clone();
        let client = fs.store().clone();
        // Refills a server back empty (or new) from the other copies while the mount runs.
        let refiller = (client.replicas() > 1 && args.refill_rate > 0)
            .then(|| Refiller::start(fs.clone(), args.refill_rate));
        if let Some(addr) = args.metrics {
            let refills = refiller.as_ref().map(Refiller::status);
            crate::service::metrics::serve(addr, fs.clone(), refills)?;
        }
        let mut config = Config::default();
        config.n_threads = Some(args.threads.max(1));
        config.clone_fd = args.threads > 1;
        let source = options
            .fsname
            .clone()
            .unwrap_or_else(|| args.store.servers.join(","));
        let spec = MountSpec {
            mountpoint: &args.mountpoint,
            source: &source,
            options: &options.fuse,
            acl: options.acl,
        };
        let notifier = Arc::new(std::sync::OnceLock::new());
        let fuse_fs = FuseFs::new(fs, store.cache_ttl, notifier.clone());
        let (fuse, unmounter) = kernel_mount::mount(fuse_fs, &spec, config)?;
        let _ = notifier.set(fuse.notifier());
        // The session (its heartbeat) and the refill live until the FUSE session ends.
        Ok(((session, refiller), fuse, unmounter, client))
    })();
    let (_session, fuse, unmounter, client) = match mounted {
        Ok(s) => s,
        Err(e) => {
            if let Some(fd) = ready {
                let _ = std::fs::File::from(fd).write_all(format!("{e:#}").as_bytes());
            }
            return Err(e);
        }
    };
    let unmounter = Arc::new(Mutex::new(unmounter));
    let stopper = unmounter.clone();
    let mountpoint = args.mountpoint.clone();
    signals::spawn(
        move || {
            tracing::info!("signal received: unmounting {}", mountpoint.display());
            let _ = sd_notify::notify(&[NotifyState::Stopping]);
            if let Err(e) = stopper.lock().unwrap_or_else(|p| p.into_inner()).unmount() {
                tracing::warn!("{e:#}");
            }
        },
        move || {
            if let Some(file) = &log_file {
                match file.reopen() {
                    Ok(()) => tracing::info!("log file reopened"),
                    Err(e) => tracing::warn!("{e:#}"),
                }
            }
        },
    )?;
    spawn_readiness(args.mountpoint.clone(), ready, unmounter);
    tracing::info!(
        "mounted {} (prefix {})",
        args.mountpoint.display(),
        args.store.prefix()
    );
    fuse.run().context("FUSE session")?;
    memfis_fs::log_limit::global().flush();
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let (trips, commands) = client.counters();
    tracing::info!(
        "unmounted {} after {trips} store round trips, {commands} commands",
        args.mountpoint.display()
    );
    Ok(())
}

/// Once the mount answers a stat, tells whoever waits (the parent of a detached mount,
/// systemd) that it is ready; if it never answers, says why and unmounts.
fn spawn_readiness(
    mountpoint: PathBuf,
    ready: Option<OwnedFd>,
    unmounter: Arc<Mutex<kernel_mount::Unmounter>>,
) {
    std::thread::spawn(move || {
        let answer = std::fs::metadata(&mountpoint);
        let message = match &answer {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("the mount at {} does not answer: {e}", mountpoint.display()),
        };
        if let Some(fd) = ready {
            let _ = std::fs::File::from(fd).write_all(message.as_bytes());
            redirect_stdio_to_null();
        }
        if answer.is_ok() {
            let _ = sd_notify::notify(&[NotifyState::Ready]);
        } else {
            tracing::error!("{message}");
            let _ = unmounter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unmount();
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
