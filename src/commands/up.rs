//! `memfis up`: a whole local stack in one command: memcached, a memfis mount, the site copied
//! in, nginx serving it from memory. Ctrl-C (or SIGTERM) takes it all down again.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cli::UpArgs;
use memfis_serving::{ServeOptions, render};

mod runtime;
use runtime::RuntimeDir;

/// Set by SIGINT/SIGTERM/SIGHUP from the moment `memfis up` starts: every wait below looks at
/// it, so a signal at any step unwinds through the destructors that stop what was started.
static STOP: AtomicBool = AtomicBool::new(false);

/// Fails once a signal asked to stop.
fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("stopped by a signal; everything started was stopped");
    }
    Ok(())
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    fn spawn(name: &'static str, cmd: &mut Command) -> Result<Service> {
        // Own process group: Ctrl-C reaches `memfis up` alone, which stops things in order.
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Service { name, child })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The memfis mount, unmounted before its daemon is stopped.
struct MountService {
    mountpoint: PathBuf,
    service: Option<Service>,
}

impl Drop for MountService {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mountpoint)
                .status();
            if is_mounted(&self.mountpoint) {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mountpoint)
                    .status();
            }
        }
        drop(self.service.take());
    }
}

fn is_mounted(path: &Path) -> bool {
    crate::fuse::proc_mounts::is_mount_point(path)
}

fn require(program: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("{program} is not installed: apt-get install {package}");
    }
    Ok(())
}

fn wait_for_port(port: u16, service: &mut Service, log: &Path) -> Result<()> {
    wait_until(service, log, &format!("listen on port {port}"), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// Waits until `ready` (10 s at most), failing with the service's log if it exits first.
fn wait_until(
    service: &mut Service,
    log: &Path,
    what: &str,
    ready: impl Fn() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        check_stop()?;
        if ready() {
            return Ok(());
        }
        if let Some(status) = service.exited() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{} exited ({status}): {}", service.name, tail.trim());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} did not {what}", service.name)
}

/// Sizes memcached for the site: `-I` above its largest file, `-m` room for it several times.
fn memcached_sizes(site: Option<&Path>) -> (u64, u64) {
    let (mut largest, mut total) = (0u64, 0u64);
    if let Some(site) = site {
        for path in walk(site) {
            if let Ok(m) = std::fs::symlink_metadata(&path)
                && m.is_file()
            {
                largest = largest.max(m.len());
                total += m.len();
            }
        }
    }
    let item_mb = (largest / (1 << 20) + 2).next_power_of_two().max(8);
    let memory_mb = (total / (1 << 20) * 4).max(2 * item_mb).max(256);
    (item_mb, memory_mb)
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

fn runtime_dir(args: &UpArgs) -> PathBuf {
    if let Some(dir) = &args.runtime_dir {
        return dir.clone();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/memfis-up");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("memfis-up"),
        None => std::env::temp_dir().join(format!("memfis-up-{}", unsafe { libc::geteuid() })),
    }
}

/// (Over 80 lines: the steps of `up` in the order they run, each a call; what is
/// started is stopped in reverse by the guards it makes on the way.)
pub fn run(args: UpArgs) -> Result<()> {
    crate::service::logging::init_stderr();
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst))
        .context("installing signal handlers")?;
    if !args.no_nginx {
        require("nginx", "nginx-light")?;
    }
    require("fusermount3", "fuse3")?;
    let site = match &args.site {
        Some(s) => Some(
            s.canonicalize()
                .with_context(|| format!("site directory {}", s.display()))?,
        ),
        None => None,
    };
    if let Some(s) = &site
        && !s.is_dir()
    {
        bail!("{} is not a directory", s.display());
    }
    let listen = format!("127.0.0.1:{}", args.port);
    if !args.no_nginx {
        TcpListener::bind(&listen).with_context(|| {
            format!("port {} is in use (choose another with --port)", args.port)
        })?;
    }
    if let Some(port) = args.memcached_port {
        TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!("port {port} is in use (choose another with --memcached-port)")
        })?;
    }
    if let Some(socket) = &args.memcached_socket
        && std::fs::symlink_metadata(socket).is_ok()
    {
        // memcached would unlink it, even another server's live socket.
        bail!(
            "--memcached-socket {} exists: choose a path that does not",
            socket.display()
        );
    }

    if args.store.servers_given() {
        refuse_a_tree_in_use(&args)?;
    }

    let runtime = runtime_dir(&args);
    let mountpoint = match &args.mountpoint {
        Some(m) => {
            let m = m
                .canonicalize()
                .with_context(|| format!("--mountpoint {}", m.display()))?;
            if let Ok(rt) = runtime.canonicalize()
                && m.starts_with(&rt)
            {
                bail!(
                    "--mountpoint {} is inside the runtime directory {}, which memfis up \
                     empties: leave --mountpoint out to mount at RUNTIME_DIR/mnt",
                    m.display(),
                    rt.display()
                );
            }
            if is_mounted(&m) {
                bail!(
                    "{} is still mounted: another `memfis up` is running (or run fusermount3 -u \
                     on it)",
                    m.display()
                );
            }
            Some(m)
        }
        None => None,
    };
    // Held (locked) until the end: a second run with the same directory is refused.
    let runtime = RuntimeDir::take(&runtime)?;
    let mountpoint = mountpoint.unwrap_or_else(|| runtime.path().join("mnt"));
    let result = run_stack(&args, site.as_deref(), runtime.path(), &mountpoint, &listen);
    if let Some(socket) = &args.memcached_socket
        && std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
    {
        // The socket its memcached made (the path did not exist before).
        let _ = std::fs::remove_file(socket);
    }
    runtime.remove();
    result
}

/// With `--server` (the user's memcached, maybe holding production trees): the prefix must be
/// chosen, and one that holds a tree already is used only with `--into-existing`.
fn refuse_a_tree_in_use(args: &UpArgs) -> Result<()> {
    let Some(prefix) = &args.store.prefix else {
        bail!(
            "with --server, give --prefix too: memfis up copies SITE_DIR into that prefix of \
             your memcached, and the default (memfis://HOSTNAME) may be a tree in use"
        );
    };
    if tree_state(args, &args.store.servers, prefix)?.is_ok() && !args.into_existing {
        bail!(
            "prefix {prefix:?} on {} already holds a tree: memfis up would mount it and copy \
             SITE_DIR into it, replacing files of the same names. Choose a new --prefix, or pass \
             --into-existing to use that tree",
            args.store.servers.join(",")
        );
    }
    Ok(())
}

/// Whether `prefix` on `servers` holds a tree (`Ok`), or else the trees the store holds.
fn tree_state(args: &UpArgs, servers: &[String], prefix: &str) -> Result<Result<(), Vec<String>>> {
    let mut store = args.store.clone();
    store.servers = servers.to_vec();
    store.prefix = Some(prefix.to_string());
    let cfg = crate::cli::store::config(&store, crate::cli::store::TOOL_CACHE_TTL)?;
    let client = memfis_tools::session::connect(&cfg)?;
    let keys = memfis_fs::KeyLayout::new(prefix).map_err(anyhow::Error::msg)?;
    match memfis_tools::session::require_tree(&client, &keys) {
        Ok(()) => Ok(Ok(())),
        Err(memfis_fs::FsError::NoTree { trees, .. }) => Ok(Err(trees)),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot read the store at {} under prefix {prefix:?}",
                servers.join(",")
            )
        }),
    }
}

/// The store options the user gave, passed on to `memfis mount` and `memfis load`.
fn store_flags(args: &UpArgs, servers: &[String], prefix: &str) -> Vec<String> {
    let mut flags = vec!["--prefix".to_string(), prefix.to_string()];
    for s in servers {
        flags.extend(["--server".to_string(), s.clone()]);
    }
    flags.extend(["--timeout".to_string(), args.store.timeout.to_string()]);
    if args.store.allow_evictions {
        flags.push("--allow-evictions".into());
    }
    if args.store.gzip {
        flags.push("--gzip".into());
    }
    flags
}

fn run_stack(
    args: &UpArgs,
    site: Option<&Path>,
    runtime: &Path,
    mountpoint: &Path,
    listen: &str,
) -> Result<()> {
    let prefix = args.store.prefix();
    // 1. memcached, unless the user named servers.
    let (servers, memcached) = if args.store.servers_given() {
        (args.store.servers.clone(), None)
    } else {
        let (server, service) = start_memcached(args, site, runtime)?;
        (vec![server], Some(service))
    };
    // 2. The mount.
    let mut mount = start_mount(args, runtime, mountpoint, &servers, &prefix)?;
    // 3. The site.
    if let Some(site) = site {
        load_site(args, site, &servers, &prefix)?;
    }
    // 4. nginx, unless --no-nginx.
    let mut nginx = if args.no_nginx {
        println!(
            "Mounted {} (prefix {prefix}, memcached {}); no nginx (--no-nginx). Ctrl-C stops \
             everything.",
            mountpoint.display(),
            servers.join(",")
        );
        None
    } else {
        let nginx = start_nginx(args, site, runtime, &servers, &prefix, listen)?;
        println!(
            "Serving http://{listen}/ from memcached. Edit files in {}. Ctrl-C stops everything.",
            mountpoint.display()
        );
        Some(nginx)
    };
    // 5. Until Ctrl-C / SIGTERM, or a part dies.
    wait_for_stop(runtime, &mut nginx, &mut mount, memcached.is_some())?;
    drop(nginx);
    drop(mount);
    drop(memcached);
    Ok(())
}

/// Starts memcached sized for the site (or as the flags say): its address and service.
fn start_memcached(
    args: &UpArgs,
    site: Option<&Path>,
    runtime: &Path,
) -> Result<(String, Service)> {
    require("memcached", "memcached")?;
    let (sized_item_mb, sized_memory_mb) = memcached_sizes(site);
    let item_mb = args.memcached_item_size.unwrap_or(sized_item_mb);
    let memory_mb = args.memcached_memory.unwrap_or(sized_memory_mb);
    let log = runtime.join("memcached.log");
    let mut cmd = Command::new("memcached");
    // By default a unix socket: nginx serves from it at about 0.9x of static files, over
    // TCP at about 0.6x (docs/benchmarks.md).
    let socket = args
        .memcached_socket
        .clone()
        .unwrap_or_else(|| runtime.join("memcached.sock"));
    match args.memcached_port {
        Some(port) => cmd.args(["-l", "127.0.0.1", "-U", "0", "-p", &port.to_string()]),
        None => cmd.arg("-s").arg(&socket).args(["-a", "0666"]),
    };
    // Half the cores (at least one): nginx's workers and the mount share the machine, and
    // on two cores one memcached thread served 15% more requests/s than memcached's default
    // of four (docs/benchmarks.md).
    let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    cmd.arg("-M")
        .args(["-m", &memory_mb.to_string(), "-I", &format!("{item_mb}m")])
        .args(["-t", &threads.to_string()]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "root"]);
    }
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let mut service = Service::spawn("memcached", &mut cmd)?;
    let server = match args.memcached_port {
        Some(port) => {
            wait_for_port(port, &mut service, &log)?;
            format!("127.0.0.1:{port}")
        }
        None => {
            wait_until(
                &mut service,
                &log,
                &format!("listen on {}", socket.display()),
                || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            )?;
            format!("unix:{}", socket.display())
        }
    };
    eprintln!("memcached: {server} (-M -m {memory_mb} -I {item_mb}m)");
    Ok((server, service))
}

/// Mounts the prefix at `mountpoint` with `memfis mount --foreground --create`, making the
/// tree if the prefix has none (said here: the mount's own notice goes to its log, deleted
/// with the runtime directory).
fn start_mount(
    args: &UpArgs,
    runtime: &Path,
    mountpoint: &Path,
    servers: &[String],
    prefix: &str,
) -> Result<MountService> {
    let before = tree_state(args, servers, prefix)?;
    let log = runtime.join("memfis.log");
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("mount")
        .arg(mountpoint)
        .arg("--foreground")
        // `memfis up` makes its tree on purpose (a new store, or a prefix of its own).
        .arg("--create")
        .args(store_flags(args, servers, prefix));
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let mut mount = MountService {
        mountpoint: mountpoint.to_path_buf(),
        service: Some(Service::spawn("memfis mount", &mut cmd)?),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_mounted(mountpoint) {
        check_stop()?;
        if let Some(status) = mount.service.as_mut().and_then(|s| s.exited()) {
            bail!(
                "memfis mount exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        if Instant::now() > deadline {
            bail!("the mount did not appear at {}", mountpoint.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(others) = &before {
        eprintln!(
            "memfis up: made a new, empty tree under prefix {prefix:?} (trees already on this \
             store: {})",
            memfis_fs::error::list_or_none(others)
        );
    }
    eprintln!("mounted: {} (prefix {prefix})", mountpoint.display());
    Ok(mount)
}

/// Copies the site in with `memfis load`: many files at once, no FUSE in the way; its
/// progress bar shows here.
fn load_site(args: &UpArgs, site: &Path, servers: &[String], prefix: &str) -> Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("load")
        .arg(site)
        .args(store_flags(args, servers, prefix));
    // Its summary goes with the other progress lines; stdout carries only the URL.
    cmd.stdout(Stdio::from(std::io::stderr()));
    // A service of its own: a signal stops it (on drop) like everything else.
    let mut load = Service::spawn("memfis load", &mut cmd)?;
    let status = loop {
        check_stop()?;
        if let Some(status) = load.exited() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        bail!("memfis load of {} failed ({status})", site.display());
    }
    Ok(())
}

/// Waits for Ctrl-C / SIGTERM (Ok, saying what it stops) or for nginx or the mount to die.
fn wait_for_stop(
    runtime: &Path,
    nginx: &mut Option<Service>,
    mount: &mut MountService,
    memcached: bool,
) -> Result<()> {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if STOP.load(Ordering::SeqCst) {
            // Only what this run started.
            let mut parts = Vec::new();
            if nginx.is_some() {
                parts.push("nginx");
            }
            parts.push("mount");
            if memcached {
                parts.push("memcached");
            }
            eprintln!("stopping: {}", parts.join(", "));
            return Ok(());
        }
        if let Some(status) = nginx.as_mut().and_then(|n| n.exited()) {
            bail!(
                "nginx exited ({status}); see {}",
                runtime.join("nginx-error.log").display()
            );
        }
        if let Some(status) = mount.service.as_mut().and_then(|s| s.exited()) {
            bail!(
                "memfis mount exited ({status}); see {}",
                runtime.join("memfis.log").display()
            );
        }
    }
}

/// Writes the nginx config for the store and starts nginx on `listen`.
fn start_nginx(
    args: &UpArgs,
    site: Option<&Path>,
    runtime: &Path,
    servers: &[String],
    prefix: &str,
    listen: &str,
) -> Result<Service> {
    let mut serve = ServeOptions::new(servers.to_vec(), prefix.to_string(), listen.to_string());
    serve.root = site.map(|s| s.display().to_string());
    serve.php_fpm = args.php_fpm.clone();
    serve.php_script = args.php_script.clone();
    let server_config = render(&serve)?;
    let conf = runtime.join("nginx.conf");
    let dir = runtime.display();
    std::fs::write(
        &conf,
        format!(
            "# Written by `memfis up`.\ndaemon off;\nworker_processes 2;\npcre_jit on;\npid {dir}/nginx.pid;\n\
             error_log {dir}/nginx-error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n\
             \x20   access_log off;\n    client_body_temp_path {dir}/client_body;\n\
             \x20   proxy_temp_path {dir}/proxy;\n    fastcgi_temp_path {dir}/fastcgi;\n\
             \x20   uwsgi_temp_path {dir}/uwsgi;\n    scgi_temp_path {dir}/scgi;\n\n{server_config}}}\n"
        ),
    )?;
    let port: u16 = args.port;
    let nginx_log = runtime.join("nginx-error.log");
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(runtime)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(runtime.join("nginx.stderr"))?);
    let mut nginx = Service::spawn("nginx", &mut cmd)?;
    wait_for_port(port, &mut nginx, &runtime.join("nginx.stderr")).or_else(|e| {
        let detail = std::fs::read_to_string(&nginx_log).unwrap_or_default();
        Err(e).with_context(|| detail.trim().to_string())
    })?;
    eprintln!("nginx config: {}", conf.display());
    Ok(nginx)
}
