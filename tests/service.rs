//! Running memfis as a service: mount identity and refusals, the helper form only from
//! mount(8), logs that follow SIGHUP, systemd's notify protocol and units, metrics, manuals.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "memfis://service";

/// A mount started detached (`memfis mount` without --foreground); unmounted on drop.
struct Detached {
    dir: tempfile::TempDir,
}

impl Detached {
    fn start(mc: &Memcached, args: &[&str]) -> (Detached, std::process::Output) {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .arg("mount")
            .arg(dir.path())
            .args(["--create", "--server", &mc.addr(), "--prefix", PREFIX])
            .args(args)
            .output()
            .unwrap();
        (Detached { dir }, out)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon serving this mount (found by its command line).
    fn daemon_pid(&self) -> i32 {
        let wanted = self.path().to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().is_some_and(|a| a.ends_with("memfis")) && args.contains(&wanted) {
                return pid;
            }
        }
        panic!("no daemon for {wanted}");
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        unmount(self.path());
    }
}

/// Unmounts a path when dropped (a failing test leaves no mount behind).
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

fn unmount(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("umount").arg(path).status();
    }
    if is_mounted(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// (source, type) of the mount at `path`, from the kernel's table.
fn mount_entry(path: &Path) -> Option<(String, String)> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let path = path.to_string_lossy();
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f[1] == path).then(|| (f[0].to_string(), f[2].to_string()))
    })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn mount_shows_as_fuse_memfis_with_its_servers_and_refuses_reuse() {
    let mc = Memcached::start();
    let (m, out) = Detached::start(&mc, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        mount_entry(m.path()),
        Some((mc.addr(), "fuse.memfis".to_string()))
    );
    let listed = sh(&format!(
        "findmnt -n -t fuse.memfis -o TARGET {}",
        m.path().display()
    ));
    assert_eq!(listed.trim(), m.path().to_string_lossy());

    // A second mount on the same mount point is refused.
    let again = mount_detached(m.path(), &mc.addr(), PREFIX);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already a mount point"),
        "{again:?}"
    );

    // The daemon holds no directory busy: it works from /.
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", m.daemon_pid())).unwrap();
    assert_eq!(cwd, PathBuf::from("/"));

    // umount -t fuse.memfis finds it.
    sh(&format!("umount -t fuse.memfis {}", m.path().display()));
    assert!(!is_mounted(m.path()));
}

#[test]
fn a_non_empty_mount_point_needs_nonempty() {
    let mc = Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hidden.txt"), b"local").unwrap();
    let out = mount_detached(dir.path(), &mc.addr(), PREFIX);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not empty") && err.contains("nonempty"),
        "{err}"
    );
    assert!(!is_mounted(dir.path()));

    let out = Command::new(BIN)
        .arg("mount")
        .arg(dir.path())
        .args([
            "--server",
            &mc.addr(),
            "--prefix",
            PREFIX,
            "-o",
            "nonempty,create",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(is_mounted(dir.path()));
    assert!(
        !dir.path().join("hidden.txt").exists(),
        "the mount hides it"
    );
    unmount(dir.path());
    assert_eq!(
        std::fs::read(dir.path().join("hidden.txt")).unwrap(),
        b"local"
    );
}

#[test]
fn the_helper_form_is_taken_only_from_mount() {
    let mc = Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    // A mistyped subcommand is an error with a suggestion, never a mount.
    let out = Command::new(BIN)
        .arg("moutn")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("similar subcommand exists: 'mount'"), "{err}");
    // So is the helper form typed by hand.
    let out = Command::new(BIN)
        .arg(mc.addr())
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!is_mounted(dir.path()));

    // mount.fuse3, as `mount -t fuse.memfis SOURCE DIR -o ...` runs it, mounts.
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let out = Command::new("/sbin/mount.fuse3")
        .arg(mc.addr())
        .arg(dir.path())
        .args([
            "-t",
            "fuse.memfis",
            "-o",
            &format!("prefix={PREFIX},create"),
        ])
        .env("PATH", path)
        .output()
        .unwrap();
    let guard = Detached { dir };
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        mount_entry(guard.path()),
        Some((mc.addr(), "fuse.memfis".to_string()))
    );
    std::fs::write(guard.path().join("via-helper.txt"), b"hello").unwrap();
    assert_eq!(
        mc.get(format!("{PREFIX}/via-helper.txt").as_bytes()),
        Some(b"hello".to_vec())
    );
}

#[test]
fn sighup_reopens_the_log_file_and_keeps_the_mount() {
    let mc = Memcached::start();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("memfis.log");
    let (m, out) = Detached::start(&mc, &["--log-file", log.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let pid = m.daemon_pid();
    // logrotate: move the file away, then SIGHUP.
    let rotated = logs.path().join("memfis.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_until("the log file to be reopened", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("log file reopened"))
    });
    assert!(is_mounted(m.path()), "SIGHUP must not unmount");
    std::fs::write(m.path().join("after-hup.txt"), b"x").unwrap();
    assert!(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("mounted")
    );

    // SIGTERM unmounts, and says so in the new file.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until("the unmount", || !is_mounted(m.path()));
    wait_until("the daemon's last line", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("unmounted"))
    });
}

#[test]
fn a_log_file_that_cannot_be_opened_fails_the_mount() {
    let mc = Memcached::start();
    let (m, out) = Detached::start(&mc, &["--log-file", "/nonexistent-dir/memfis.log"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open log file"), "{err}");
    assert!(!is_mounted(m.path()));
}

#[test]
fn systemd_hears_ready_once_the_mount_answers_and_stopping_on_unmount() {
    let mc = Memcached::start();
    let sockets = tempfile::tempdir().unwrap();
    let socket_path = sockets.path().join("notify");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .arg("mount")
        .arg(dir.path())
        .args([
            "--foreground",
            "--create",
            "--server",
            &mc.addr(),
            "--prefix",
            PREFIX,
        ])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let _unmount = Detached { dir };
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 10 s");
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Ready means answering: the mount is there and serves.
    assert!(is_mounted(_unmount.path()));
    std::fs::write(_unmount.path().join("ready.txt"), b"ok").unwrap();

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).expect("STOPPING=1 within 10 s");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(_unmount.path()));
}

#[test]
fn the_systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: skipping");
        return;
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let dir = tempfile::tempdir().unwrap();
    // The template as an instance, with this build's binary and a config file that exists.
    let env_file = dir.path().join("srv-www.env");
    std::fs::write(&env_file, "MEMFIS_SERVERS=127.0.0.1:11211\n").unwrap();
    let unit = std::fs::read_to_string(examples.join("memfis@.service"))
        .unwrap()
        .replace("/usr/local/bin/memfis", BIN)
        .replace(
            "/etc/memfis/%i.env",
            &dir.path().join("%i.env").to_string_lossy(),
        );
    let mount_unit = dir.path().join("memfis@srv-www.service");
    std::fs::write(&mount_unit, unit).unwrap();
    // The memcached drop-in, applied to a minimal memcached unit.
    let drop_in =
        std::fs::read_to_string(examples.join("memcached.service.d/memfis.conf")).unwrap();
    let memcached_unit = dir.path().join("memcached-memfis.service");
    std::fs::write(
        &memcached_unit,
        format!("[Unit]\nDescription=memcached for memfis\n{drop_in}"),
    )
    .unwrap();
    for unit in [&mount_unit, &memcached_unit] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(unit)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(&*unit.file_name().unwrap().to_string_lossy()))
            .filter(|l| !l.contains("memcached.service") && !l.contains("nginx.service"))
            .collect();
        assert!(
            out.status.success() && problems.is_empty(),
            "{}: {err}",
            unit.display()
        );
    }
}

#[test]
fn metrics_are_served_in_prometheus_text() {
    let mc = Memcached::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--metrics", &addr]);
    for i in 0..5 {
        std::fs::write(m.p(&format!("f{i}.txt")), vec![b'x'; 1000]).unwrap();
    }
    let _ = std::fs::metadata(m.p("missing"));
    // The kernel sends a file's release after close(2) has returned: wait for the last one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (status, headers, body) = loop {
        let (status, headers, body) = http_request(port, "GET", "/metrics", &[]);
        let released = String::from_utf8_lossy(&body)
            .lines()
            .any(|l| l == "memfis_open_handles 0");
        if released || std::time::Instant::now() > deadline {
            break (status, headers, body);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body).unwrap();
    let value = |line_start: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value("memfis_fuse_requests_total{op=\"create\"}") >= 5);
    assert!(value("memfis_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"}") >= 1);
    assert_eq!(value("memfis_published_files_total"), 5);
    assert_eq!(value("memfis_published_bytes_total"), 5000);
    assert!(value("memfis_store_round_trips_total") > 0);
    assert_eq!(
        value("memfis_store_round_trip_seconds_count"),
        value("memfis_store_round_trip_seconds_bucket{le=\"+Inf\"}")
    );
    assert!(text.contains("# TYPE memfis_store_round_trip_seconds histogram"));
    assert!(text.contains("memfis_store_info{store_id=\""));
    assert_eq!(value("memfis_open_handles"), 0);
    let (status, _, _) = http_request(port, "GET", "/other", &[]);
    assert_eq!(status, 404);
}

#[test]
fn manuals_completions_and_examples_come_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let subcommands = [
        "mount",
        "nginx-config",
        "up",
        "check",
        "stats",
        "load",
        "export",
        "man",
        "completions",
    ];
    for sub in subcommands {
        let page = std::fs::read_to_string(dir.path().join(format!("memfis-{sub}.1"))).unwrap();
        assert!(page.contains(".TH"), "{sub}");
        let help = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains("Example"),
            "memfis {sub} --help has no example:\n{help}"
        );
    }
    assert!(dir.path().join("memfis.1").exists());
    let mut bash = String::new();
    Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
        .stdout
        .unwrap()
        .read_to_string(&mut bash)
        .unwrap();
    assert!(bash.contains("_memfis") && bash.contains("nginx-config"));
    let _ = std::io::stdout().flush();
}

/// `memfis man mount | head -1`: the reader leaving early is not an error.
#[test]
fn output_read_only_in_part_is_not_an_error() {
    for args in [["man", "mount"], ["completions", "bash"]] {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before the first write
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
    }
}

/// A detached mount without --log-file says so when nothing would hear its logs (neither
/// journald nor a syslog daemon), and stays quiet when something would.
#[test]
fn a_detached_mount_warns_when_its_logs_would_be_lost() {
    let mc = Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    let out = mount_detached(dir.path(), &mc.addr(), "memfis://unheard");
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(dir.path())
        .status();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let listener = std::path::Path::new("/run/systemd/journal/socket").exists()
        || std::path::Path::new("/dev/log").exists();
    assert_eq!(
        stderr.contains("logs will be lost"),
        !listener,
        "journald or syslog present: {listener}; stderr: {stderr}"
    );
    let with_file = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("mount")
        .arg(dir.path())
        .args([
            "--create",
            "--server",
            &mc.addr(),
            "--prefix",
            "memfis://unheard",
        ])
        .arg("--log-file")
        .arg(with_file.path().join("memfis.log"))
        .output()
        .unwrap();
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(dir.path())
        .status();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("lost"),
        "{out:?}"
    );
}

/// Logs written to a file or a pipe (journald, `up`'s log) carry no terminal colour codes.
#[test]
fn logs_not_on_a_terminal_have_no_colour_codes() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], "memfis://plain-logs");
    std::fs::write(m.p("f"), b"x").unwrap();
    let log = m.log_text();
    assert!(log.contains("mounted"), "{log}");
    assert!(!log.contains('\x1b'), "{log:?}");
}

#[test]
fn a_mount_point_with_a_space_is_known_as_mounted() {
    // The kernel lists it as `with\040space`: a second mount must still see it taken.
    let mc = Memcached::start();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("with space");
    std::fs::create_dir(&dir).unwrap();
    let out = mount_detached(&dir, &mc.addr(), PREFIX);
    let _unmount = UnmountOnDrop(dir.clone());
    assert!(out.status.success(), "{out:?}");
    assert!(is_mounted(&dir));
    let again = mount_detached(&dir, &mc.addr(), PREFIX);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already a mount point"),
        "{again:?}"
    );
    unmount(&dir);
    assert!(!is_mounted(&dir), "left mounted");
}

#[test]
fn fusermount_ends_the_daemon_without_a_warning() {
    let mc = Memcached::start();
    let mut m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(m.p("a.txt"), b"a").unwrap();
    sh(&format!("fusermount3 -u {}", m.path().display()));
    let status = m.signal_and_wait(0);
    assert!(status.success(), "{status}");
    let log = m.log_text();
    assert!(log.contains("unmounted"), "{log}");
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}

/// Removes a socket file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes a directory this test made (if any) when dropped.
struct RemoveDirOnDrop(Option<PathBuf>);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Waits for a datagram on `socket` containing `wanted`; returns it.
fn receive_line(socket: &UnixDatagram, wanted: &str) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = socket.recv(&mut buf).expect("a log line within 10 s");
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        if line.contains(wanted) {
            return line;
        }
    }
}

#[test]
fn detached_without_a_log_file_logs_to_journald_or_syslog() {
    const JOURNAL: &str = "/run/systemd/journal/socket";
    if Path::new(JOURNAL).exists() || Path::new("/dev/log").exists() {
        eprintln!("a system logger runs here: the stand-in loggers need its sockets; skipping");
        return;
    }
    let mc = Memcached::start();
    // journald first: memfis sends it native journal fields when its socket exists.
    let made_dir = !Path::new("/run/systemd/journal").exists();
    std::fs::create_dir_all("/run/systemd/journal").unwrap();
    let remove_dir = RemoveDirOnDrop(made_dir.then(|| PathBuf::from("/run/systemd/journal")));
    let journal = UnixDatagram::bind(JOURNAL).unwrap();
    let remove_journal = RemoveOnDrop(PathBuf::from(JOURNAL));
    let (m, out) = Detached::start(&mc, &[]);
    assert!(out.status.success(), "{out:?}");
    let wanted = format!("mounted {}", m.path().display());
    let fields = receive_line(&journal, &wanted);
    // Native journal fields, values length-prefixed: NAME\n<u64 le length><value>\n.
    let field = |name: &str, value: &str| {
        let mut f = format!("{name}\n").into_bytes();
        f.extend((value.len() as u64).to_le_bytes());
        f.extend(value.as_bytes());
        String::from_utf8_lossy(&f).into_owned()
    };
    assert!(
        fields.contains(&field("SYSLOG_IDENTIFIER", "memfis")),
        "{fields:?}"
    );
    assert!(
        fields.contains(&field("MESSAGE", &format!("{wanted} (prefix {PREFIX})"))),
        "{fields:?}"
    );
    drop(m);
    drop(remove_journal);
    drop(remove_dir);
    // Without journald: syslog, facility daemon.
    let syslog = UnixDatagram::bind("/dev/log").unwrap();
    let _remove_syslog = RemoveOnDrop(PathBuf::from("/dev/log"));
    let (m, out) = Detached::start(&mc, &[]);
    assert!(out.status.success(), "{out:?}");
    let wanted = format!("mounted {}", m.path().display());
    let line = receive_line(&syslog, &wanted);
    // `<PRI>` of facility daemon (PRI / 8 == 3), then `memfis[PID]:`.
    let pri: u32 = line[1..line.find('>').unwrap()].parse().unwrap();
    assert_eq!(pri / 8, 3, "{line}");
    assert!(line.contains("memfis["), "{line}");
}
