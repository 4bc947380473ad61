//! Real parts for integration tests: memcached, nginx and memfis mounts started as child
//! processes on free loopback ports, and stopped (and unmounted) on drop, even on failure.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_memfis");

/// A port free now and never handed out twice in this test process: tests run in parallel
/// threads, and two of them picking the same just-freed ephemeral port once made one memcached
/// fail to bind while its test talked to the other's.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Below 32768, where Linux picks ephemeral (outgoing) ports: one of those taken by a
    // connection of another test made a memcached here unreachable once.
    let base = 20000 + (std::process::id() % 1000) as u16 * 10;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 20000;
        let port = base + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port}");
}

/// The state letter of each thread of a process (`/proc/PID/task/*/stat`).
fn thread_states(pid: i32) -> Vec<char> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        // The state follows the command name, which ends with ") ".
        .filter_map(|stat| stat.rsplit_once(") ")?.1.chars().next())
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub struct Memcached {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

/// memcached as Debian starts it: evicting items when full (no `-M`), which mounts refuse.
pub fn evicting_memcached() -> Memcached {
    Memcached::with_args(&["--evicting-for-test"])
}

impl Memcached {
    pub fn start() -> Memcached {
        Memcached::with_args(&["-m", "256", "-I", "8m"])
    }

    pub fn with_args(extra: &[&str]) -> Memcached {
        let mut m = Memcached {
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A port free when picked can be taken before memcached binds it (it then exits, and
        // the listener found is someone else's): check that ours answers, else pick another.
        for _ in 0..5 {
            m.restart();
            if m.is_ours() {
                return m;
            }
            m.stop();
            m.port = free_port();
        }
        panic!("memcached did not come up on a port of its own");
    }

    /// True when the memcached answering on our port is our process (`stats` names its
    /// pid): another test's server may have taken the port first.
    fn is_ours(&mut self) -> bool {
        std::thread::sleep(Duration::from_millis(20));
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let pid = child.id();
        let answered = || -> std::io::Result<bool> {
            let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"stats\r\nquit\r\n")?;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let want = format!("STAT pid {pid}\r\n");
            Ok(String::from_utf8_lossy(&out).contains(&want))
        };
        answered().unwrap_or(false)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Stalls the server (SIGSTOP) and returns once the kernel shows it stopped: `kill`
    /// returns before the signal takes effect, and a request sent in that gap is answered.
    pub fn pause(&self) {
        self.signal_and_wait(libc::SIGSTOP, |state| state == 'T');
    }

    /// Lets a paused server run again.
    pub fn resume(&self) {
        self.signal_and_wait(libc::SIGCONT, |state| state != 'T');
    }

    /// Sends `signal` and waits until every thread of the server is in a state `reached`
    /// accepts (a group stop takes each thread at its own next step).
    fn signal_and_wait(&self, signal: i32, reached: impl Fn(char) -> bool) {
        let pid = self.pid();
        // SAFETY: signalling the test's own child process.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !thread_states(pid).iter().all(|s| reached(*s)) {
            assert!(
                Instant::now() < deadline,
                "memcached threads: {:?}",
                thread_states(pid)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new("memcached");
        cmd.args(["-U", "0", "-l", "127.0.0.1", "-p", &self.port.to_string()]);
        if is_root() {
            cmd.args(["-u", "root"]);
        }
        // memfis refuses a store that evicts (see the store guard); tests run it with -M.
        if self.extra.iter().any(|a| a == "--evicting-for-test") {
            cmd.args(self.extra.iter().filter(|a| *a != "--evicting-for-test"));
        } else {
            if !self.extra.iter().any(|a| a == "-M") {
                cmd.arg("-M");
            }
            cmd.args(&self.extra);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .expect("memcached installed (apt-get install memcached)");
        wait_for_port(self.port, "memcached", &mut child);
        self.child = Some(child);
    }

    /// One raw text-protocol exchange, for checking what the store holds.
    pub fn raw(&self, request: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(request).unwrap();
        s.write_all(b"quit\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    /// The value at `key`, or None.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let reply = self.raw(&[b"get ", key, b"\r\n"].concat());
        if reply.starts_with(b"END") {
            return None;
        }
        let header_end = reply.windows(2).position(|w| w == b"\r\n").unwrap();
        let header = String::from_utf8_lossy(&reply[..header_end]).to_string();
        let len: usize = header.rsplit(' ').next().unwrap().parse().unwrap();
        Some(reply[header_end + 2..header_end + 2 + len].to_vec())
    }

    pub fn set(&self, key: &[u8], value: &[u8]) {
        let reply = self.raw(
            &[
                b"set ",
                key,
                format!(" 0 0 {}\r\n", value.len()).as_bytes(),
                value,
                b"\r\n",
            ]
            .concat(),
        );
        assert!(
            reply.starts_with(b"STORED"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }

    /// Every key the server holds (`lru_crawler metadump all`), decoded.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let out = loop {
            let out = self.metadump();
            // BUSY (and no keys) while the crawler still runs for the dump before, or for
            // memcached's own LRU maintenance.
            if !out.starts_with(b"BUSY") {
                break out;
            }
            assert!(Instant::now() < deadline, "the LRU crawler stayed busy");
            std::thread::sleep(Duration::from_millis(20));
        };
        String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.strip_prefix("key="))
            .filter_map(|l| l.split(' ').next())
            .map(|k| percent_decode(k.as_bytes()))
            .collect()
    }

    /// The reply to `lru_crawler metadump all`, read to its END: the crawler writes it from a
    /// thread of its own, so a `quit` sent after it could close the connection mid-dump.
    fn metadump(&self) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"lru_crawler metadump all\r\n").unwrap();
        let mut out = Vec::new();
        let mut buf = [0; 64 * 1024];
        while !(out.ends_with(b"END\r\n") || out.starts_with(b"BUSY") && out.ends_with(b"\r\n")) {
            let n = s.read(&mut buf).expect("metadump");
            assert!(
                n > 0,
                "metadump cut short: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    pub fn delete(&self, key: &[u8]) {
        self.raw(&[b"delete ", key, b"\r\n"].concat());
    }

    pub fn stat(&self, name: &str) -> u64 {
        let reply = String::from_utf8(self.raw(b"stats\r\n")).unwrap();
        reply
            .lines()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no stat {name}"))
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `memfis mount --foreground` child process; unmounted and stopped on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub log: PathBuf,
    /// Holds the log (outside the mountpoint, which the mount hides); removed on drop.
    _log_dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(servers: &[String], prefix: &str) -> Mount {
        Mount::with_args(servers, prefix, &[])
    }

    /// Mounts `prefix`, making its tree if it has none (`--create`).
    pub fn with_args(servers: &[String], prefix: &str, extra: &[&str]) -> Mount {
        let mut args = vec!["--create"];
        args.extend_from_slice(extra);
        Mount::with_exact_args(servers, prefix, &args)
    }

    /// Mounts `prefix` with exactly `extra` (no `--create`: the tree must exist).
    pub fn with_exact_args(servers: &[String], prefix: &str, extra: &[&str]) -> Mount {
        Mount::in_dir(&std::env::temp_dir(), servers, prefix, extra)
    }

    /// As [`Mount::with_exact_args`], on a new directory made in `parent`.
    pub fn in_dir(parent: &Path, servers: &[String], prefix: &str, extra: &[&str]) -> Mount {
        Mount::spawn(None, parent, servers, prefix, extra)
    }

    /// As [`Mount::with_exact_args`], the daemon running in network namespace `netns`.
    pub fn in_netns(netns: &str, servers: &[String], prefix: &str, extra: &[&str]) -> Mount {
        Mount::spawn(Some(netns), &std::env::temp_dir(), servers, prefix, extra)
    }

    fn spawn(
        netns: Option<&str>,
        parent: &Path,
        servers: &[String],
        prefix: &str,
        extra: &[&str],
    ) -> Mount {
        let dir = tempfile::tempdir_in(parent).unwrap();
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("memfis.log");
        let mut cmd = match netns {
            // nsenter, not `ip netns exec`, which also enters a mount namespace of its own
            // (where the FUSE mount would stay).
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("mount")
            .arg(dir.path())
            .arg("--foreground")
            .args(["--prefix", prefix]);
        for s in servers {
            cmd.args(["--server", s]);
        }
        cmd.args(extra)
            // MEMFIS_TEST_LOG: another filter for a diagnosis, e.g. the store trace.
            .env(
                "MEMFIS_LOG",
                std::env::var("MEMFIS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(dir.path()) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "memfis mount exited: {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "mount did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount {
            dir,
            child: Some(child),
            log,
            _log_dir: log_dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the daemon and waits for it to exit.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit on signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A child process killed when dropped, so a failing test leaves none behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// php-fpm (`-F`, as root) with one static pool of `children` workers on a free loopback port,
/// `MEMFIS_MOUNT` set to `mount` and each of `env` in the pool's environment. Stopped on drop
/// with its workers: it runs in a process group of its own, killed whole (a SIGKILL of the
/// master alone leaves its workers running).
pub struct PhpFpm {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl PhpFpm {
    pub fn start(mount: &Path, children: usize, env: &[(&str, &Path)]) -> PhpFpm {
        use std::os::unix::process::CommandExt;
        let binary = std::fs::read_dir("/usr/sbin")
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("php-fpm")
            })
            .expect("php-fpm installed (apt-get install php-fpm)");
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("php-fpm.conf");
        let mut text = format!(
            "[global]\npid = {d}/php-fpm.pid\nerror_log = {d}/php-fpm.log\ndaemonize = no\n\
             [app]\nuser = root\ngroup = root\nlisten = 127.0.0.1:{port}\npm = static\n\
             pm.max_children = {children}\nclear_env = yes\ncatch_workers_output = yes\n\
             env[MEMFIS_MOUNT] = {m}\n",
            d = dir.path().display(),
            m = mount.display(),
        );
        for (k, v) in env {
            text.push_str(&format!("env[{k}] = {}\n", v.display()));
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new(binary)
            .args(["-F", "-R", "-y"])
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut fpm = PhpFpm { port, child, dir };
        wait_for_port(port, "php-fpm", &mut fpm.child);
        fpm
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// php-fpm's log, with what the workers wrote to stderr (PHP's `error_log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("php-fpm.log")).unwrap_or_default()
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        // SAFETY: killing the process group our own child leads.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A `memfis up` child process. On drop (a test that failed, or one that left it running):
/// SIGTERM and a bounded wait for its own cleanup; then, if it is still there, SIGKILL to the
/// process groups it started (memcached, the mount, nginx: each has its own), to it, and a lazy
/// unmount of its mount points.
pub struct UpGuard {
    pub child: Child,
    /// Mount points to unmount if `memfis up` did not.
    mounts: Vec<PathBuf>,
}

impl UpGuard {
    /// Spawns `cmd` (a `memfis up` with `--runtime-dir runtime`, mounting at `mountpoint` if
    /// given, else at RUNTIME/mnt).
    pub fn spawn(cmd: &mut Command, runtime: &Path, mountpoint: Option<&Path>) -> UpGuard {
        let child = cmd.spawn().unwrap();
        let mut mounts = vec![runtime.join("mnt")];
        mounts.extend(mountpoint.map(Path::to_path_buf));
        UpGuard { child, mounts }
    }

    pub fn id(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits (15 s at most) for it to exit successfully.
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.id(), libc::SIGTERM) };
        let status = self.wait_for(Duration::from_secs(15));
        let status = status.expect("memfis up did not stop on SIGTERM");
        assert!(status.success(), "{status}");
    }

    fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The processes whose parent is `pid` (`/proc/*/stat`, field 4).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // The fields after the command name, which ends with ") ".
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

impl Drop for UpGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.id(), libc::SIGTERM) };
        if self.wait_for(Duration::from_secs(20)).is_some() {
            return;
        }
        // Its children each lead a process group of their own (nginx's workers are in its).
        for child in children_of(self.id()) {
            // SAFETY: killing a process group our own child started.
            unsafe { libc::kill(-child, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in &self.mounts {
            if is_mounted(m) {
                let _ = Command::new("fusermount3").arg("-uz").arg(m).status();
            }
        }
    }
}

/// Unmounts (lazily if busy) whatever is mounted at its path when dropped: made before a mount is
/// tried, it undoes one that should not have happened, even when the test fails.
pub struct UnmountGuard(pub PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
        }
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.0).status();
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .any(|target| unescape_mount_field(target) == path)
}

/// The kernel writes a space, tab, newline or backslash in a mount point as `\ooo` (octal).
fn unescape_mount_field(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match u8::from_str_radix(rest.get(i + 1..i + 4).unwrap_or(""), 8) {
            Ok(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(self.dir.path()) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(self.dir.path())
                .status()
                .map(|s| s.success());
            if !matches!(ok, Ok(true)) {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(self.dir.path())
                    .status();
            }
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// nginx with a config body (inside `http {}`), run in the foreground from a temp prefix.
pub struct Nginx {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// One nginx standing for two hosts running `script` with PHP: `/a` goes to the php-fpm
    /// pool on `port_a` (host A's), `/b` to the one on `port_b`.
    pub fn two_php_hosts(script: &Path, port_a: u16, port_b: u16) -> Nginx {
        let location = |port: u16| {
            format!(
                "fastcgi_pass 127.0.0.1:{port}; include /etc/nginx/fastcgi_params; \
                 fastcgi_param SCRIPT_FILENAME {};",
                script.display()
            )
        };
        Nginx::start(
            "",
            &format!(
                "location = /a {{ {} }}\nlocation = /b {{ {} }}",
                location(port_a),
                location(port_b)
            ),
        )
    }

    /// `server_body` goes inside `server { listen 127.0.0.1:PORT; ... }`.
    pub fn start(http_extra: &str, server_body: &str) -> Nginx {
        let port = free_port();
        let http = format!("{http_extra}\nserver {{ listen 127.0.0.1:{port};\n{server_body}\n}}\n");
        Nginx::start_http(port, &http)
    }

    /// Wraps `http` (upstream/server blocks) in a complete config for a temp prefix.
    pub fn config(dir: &Path, http: &str) -> String {
        format!(
            "daemon off;\nmaster_process off;\nerror_log {dir}/error.log warn;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n  access_log off;\n\
             client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;\n\
             uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;\n{http}\n}}\n",
            dir = dir.display(),
        )
    }

    /// Runs nginx with `http` as the body of its http block; `port` is where it listens.
    pub fn start_http(port: u16, http: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, Nginx::config(dir.path(), http)).unwrap();
        let mut child = Command::new("nginx")
            .args(["-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx installed (apt-get install nginx-light)");
        wait_for_port(port, "nginx", &mut child);
        Nginx {
            port,
            child,
            _dir: dir,
        }
    }

    /// nginx serving `prefix` from `server` with `memfis nginx-config` (plus `extra`
    /// arguments), listening on a free loopback port.
    pub fn for_store(server: &str, prefix: &str, extra: &[&str]) -> Nginx {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--server", server, "--prefix", prefix, "--listen", &listen];
        args.extend(extra);
        Nginx::start_http(port, &nginx_config(&args))
    }

    /// `nginx -t` of a config whose http block is `http`: Ok or nginx's complaint.
    pub fn test_config(http: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, Nginx::config(dir.path(), http)).unwrap();
        let out = Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// GET (or another method) `path` (already percent-encoded): status, headers, body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        http_request(self.port, method, path, headers)
    }

    pub fn get(&self, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        self.request("GET", path, &[])
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request to 127.0.0.1:`port`: status, headers (names lowercased), body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http header end");
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, headers, out[split + 4..].to_vec())
}

/// `memfis mount DIR --create --server SERVER --prefix PREFIX` (detaching; making the tree
/// if the prefix has none), returning its output.
pub fn mount_detached(dir: &Path, server: &str, prefix: &str) -> std::process::Output {
    Command::new(BIN)
        .arg("mount")
        .arg(dir)
        .args(["--create", "--server", server, "--prefix", prefix])
        .output()
        .unwrap()
}

/// Percent-encodes a path for a request line (everything but unreserved bytes and '/').
pub fn url_encode(path: &[u8]) -> String {
    let mut out = String::new();
    for &b in path {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Runs a shell command, panicking with its output on failure.
/// `memfis nginx-config ARGS` output.
pub fn nginx_config(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("nginx-config")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx-config {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Mounts `prefix`, fills `site/` with `files` files (`f<i>` holding `<i>`), starts
/// `mv site moved` and kills the daemon (SIGKILL) once data keys are moving: the namespace lock
/// is left to a dead mount, the rename half done.
pub fn kill_mount_mid_dir_rename(mc: &Memcached, prefix: &str, files: usize) {
    let mut m = Mount::with_args(&[mc.addr()], prefix, &["--attr-ttl", "0"]);
    std::fs::create_dir(m.p("site")).unwrap();
    for i in 0..files {
        std::fs::write(m.p(&format!("site/f{i}")), format!("{i}")).unwrap();
    }
    let mv = Command::new("mv")
        .arg(m.p("site"))
        .arg(m.p("moved"))
        .spawn()
        .unwrap();
    // Kill it while keys are moving: wait until the first new key appears.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mc.get(format!("{prefix}/moved/f0").as_bytes()).is_none()
        && mc.get(format!("{prefix}%lock").as_bytes()).is_none()
    {
        assert!(Instant::now() < deadline, "the rename never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: killing our own child.
    unsafe { libc::kill(m.pid(), libc::SIGKILL) };
    let _ = mv.wait_with_output();
    let _ = m.signal_and_wait(0); // reaps it; the dead mount is unmounted on drop
}

/// Runs `memfis SUBCOMMAND ARGS... --server SERVER --prefix PREFIX`; returns its exit status
/// and its output (stdout then stderr).
pub fn memfis_on(sub: &str, args: &[&str], server: &str, prefix: &str) -> (i32, String) {
    let out = Command::new(BIN)
        .arg(sub)
        .args(args)
        .args(["--server", server, "--prefix", prefix])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `memfis check` on the store; returns its exit status and output.
pub fn memfis_check(server: &str, prefix: &str) -> (i32, String) {
    memfis_on("check", &[], server, prefix)
}

/// `memfis check` of `prefix` on `mc` must exit 0 and say clean; its output.
pub fn assert_check_clean(mc: &Memcached, prefix: &str) -> String {
    let (code, out) = memfis_check(&mc.addr(), prefix);
    assert_eq!(code, 0, "memfis check: {out}");
    assert!(out.contains("clean"), "{out}");
    out
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Undoes `%XX` escapes (memcached's metadump and nginx's key escaping).
pub fn percent_decode(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%'
            && let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A small xorshift generator: a sequence fixed by its seed (printed on failure, or fixed),
/// so that the tests need no crate for it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len())]
    }

    /// A name of `min` up to `min + spread - 1` letters, digits and dashes.
    pub fn word(&mut self, min: usize, spread: usize) -> String {
        let len = min + self.below(spread);
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len())] as char)
            .collect()
    }
}
