//! `memfis up`: one command from a site directory to nginx serving it from memcached, and
//! Ctrl-C/SIGTERM leaving no process or mount behind.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn up_serves_the_example_site_and_sigterm_cleans_everything() {
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("rt");
    let port = free_port();
    let mut child = UpGuard::spawn(
        Command::new(BIN)
            .args([
                "up",
                "examples/site",
                "--port",
                &port.to_string(),
                "--prefix",
                "memfis://up-test",
                // Reaches the mount and the load (either would refuse a flag it does not know).
                "--gzip",
            ])
            .arg("--runtime-dir")
            .arg(&runtime)
            .env_remove("MEMFIS_SERVERS")
            .env_remove("MEMFIS_PREFIX")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        &runtime,
        None,
    );
    let line = first_line(&mut child);
    assert!(
        line.contains(&format!("http://127.0.0.1:{port}/")),
        "{line}"
    );
    for (path, ct, needle) in [
        ("/", "text/html", "Served from memory"),
        ("/about/", "text/html", "About"),
        ("/css/style.css", "text/css", "font-family"),
        ("/img/logo.png", "image/png", "PNG"),
    ] {
        let (status, headers, body) = http_request(port, "GET", path, &[]);
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "x-memfis-source"), Some("store"), "{path}");
        assert_eq!(header(&headers, "content-type"), Some(ct), "{path}");
        assert!(String::from_utf8_lossy(&body).contains(needle), "{path}");
    }
    child.stop();
    assert!(!runtime.exists(), "runtime directory left behind");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(runtime.to_str().unwrap()));
    let leftovers = Command::new("pgrep")
        .args(["-f", runtime.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nginx still listening"
    );
}

#[test]
fn up_reports_a_busy_port_and_a_missing_nginx() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["up", "examples/site", "--port", &port, "--runtime-dir"])
        .arg(work.path().join("rt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(BIN)
        .args(["up", "examples/site", "--port", "1", "--runtime-dir"])
        .arg(work.path().join("rt"))
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install nginx-light"), "{err}");
}

#[test]
fn a_signal_during_the_copy_stops_and_cleans_up_everything() {
    let work = tempfile::tempdir().unwrap();
    let site = work.path().join("site");
    for d in 0..20 {
        std::fs::create_dir_all(site.join(format!("d{d}"))).unwrap();
        for f in 0..1000 {
            std::fs::write(site.join(format!("d{d}/f{f}.html")), b"<p>page</p>").unwrap();
        }
    }
    let runtime = work.path().join("rt");
    let port = free_port();
    let mut child = UpGuard::spawn(
        Command::new(BIN)
            .arg("up")
            .arg(&site)
            .args(["--port", &port.to_string(), "--prefix", "memfis://up-int"])
            .arg("--runtime-dir")
            .arg(&runtime)
            .env_remove("MEMFIS_SERVERS")
            .env_remove("MEMFIS_PREFIX")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        &runtime,
        None,
    );
    // Wait for the mount (the copy starts right after), remembering memcached's address.
    let mut memcached = None;
    let mut stderr = BufReader::new(child.child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "memfis up ended early"
        );
        if let Some(rest) = line.strip_prefix("memcached: ") {
            memcached = rest.split(' ').next().map(String::from);
        }
        if line.starts_with("mounted: ") {
            break;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id(), libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "memfis up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!runtime.exists(), "runtime directory left behind");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(runtime.to_str().unwrap()));
    let memcached = memcached.expect("memcached address printed");
    let socket = memcached
        .strip_prefix("unix:")
        .unwrap_or_else(|| panic!("memcached on a unix socket, not {memcached}"));
    assert!(
        std::os::unix::net::UnixStream::connect(socket).is_err(),
        "memcached at {memcached} still running"
    );
    let leftovers = Command::new("pgrep")
        .args(["-f", runtime.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(leftovers.stdout.is_empty(), "{leftovers:?}");
}

#[test]
fn a_runtime_dir_it_did_not_make_is_refused_when_not_empty() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("precious.txt"), b"keep me").unwrap();
    let out = Command::new(BIN)
        .args(["up", "examples/site", "--port", &free_port().to_string()])
        .arg("--runtime-dir")
        .arg(work.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not empty and was not made by memfis up"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(work.path().join("precious.txt")).unwrap(),
        b"keep me"
    );
}

/// True once `path` is a file: the mount sees what `memfis load` wrote after its cache TTL.
/// The first line `memfis up` prints on stdout (where it serves, what it started).
fn first_line(up: &mut UpGuard) -> String {
    let mut line = String::new();
    BufReader::new(up.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

fn appears(path: &std::path::Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.is_file() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The value of `STAT name` in memcached's `stats settings` on 127.0.0.1:`port`.
fn memcached_setting(port: u16, name: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"stats settings\r\nquit\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
        .trim()
        .to_string()
}

/// Everything `up` starts is chosen by a flag: memcached's TCP port, memory and item size,
/// the prefix, the mount point (the user's, left in place), nginx's port and the PHP backend
/// nginx falls back to; it stops all of it and only it.
#[test]
fn up_starts_what_the_flags_choose() {
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("rt");
    let mountpoint = work.path().join("my-mount");
    std::fs::create_dir(&mountpoint).unwrap();
    let (port, mc_port, fpm_port) = (free_port(), free_port(), free_port());
    let mut child = UpGuard::spawn(
        Command::new(BIN)
            .args(["up", "examples/site", "--port", &port.to_string()])
            .args(["--memcached-port", &mc_port.to_string()])
            .args(["--memcached-memory", "96", "--memcached-item-size", "4"])
            .args(["--prefix", "memfis://chosen"])
            .args(["--php-fpm", &format!("127.0.0.1:{fpm_port}")])
            .arg("--mountpoint")
            .arg(&mountpoint)
            .arg("--runtime-dir")
            .arg(&runtime)
            .env_remove("MEMFIS_SERVERS")
            .env_remove("MEMFIS_PREFIX")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        &runtime,
        Some(&mountpoint),
    );
    let line = first_line(&mut child);
    assert!(
        line.contains(&format!("http://127.0.0.1:{port}/")),
        "{line}"
    );
    assert!(line.contains(mountpoint.to_str().unwrap()), "{line}");
    // memcached as chosen.
    assert_eq!(
        memcached_setting(mc_port, "maxbytes"),
        (96u64 << 20).to_string()
    );
    assert_eq!(
        memcached_setting(mc_port, "item_size_max"),
        (4u64 << 20).to_string()
    );
    assert_eq!(memcached_setting(mc_port, "evictions"), "off");
    // The mount where asked, the site under the chosen prefix.
    assert!(is_mounted(&mountpoint));
    assert!(appears(&mountpoint.join("index.html")));
    let (status, headers, _) = http_request(port, "GET", "/", &[]);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-memfis-source"), Some("store"));
    let (code, out) = memfis_on(
        "stats",
        &[],
        &format!("127.0.0.1:{mc_port}"),
        "memfis://chosen",
    );
    assert_eq!(code, 0, "{out}");
    // What neither the store nor the site has goes to the PHP backend chosen (none listens
    // there: 502 from nginx, not 404).
    let (status, _, _) = http_request(port, "GET", "/no-such-page", &[]);
    assert_eq!(status, 502);
    child.stop();
    assert!(!is_mounted(&mountpoint));
    assert!(mountpoint.is_dir(), "the user's mount point was removed");
    assert!(!runtime.exists());
    for p in [port, mc_port] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
            "port {p} still served"
        );
    }
}

/// `--no-nginx` starts no nginx (no config, no process) and `--memcached-socket` puts memcached's
/// socket where asked, removed again when it stops; the stop message names only what ran.
#[test]
fn up_without_nginx_on_a_socket_of_ones_choice() {
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("rt");
    let socket = work.path().join("mc.sock");
    let mut child = UpGuard::spawn(
        Command::new(BIN)
            .args([
                "up",
                "examples/site",
                "--no-nginx",
                "--prefix",
                "memfis://bare",
            ])
            .arg("--memcached-socket")
            .arg(&socket)
            .arg("--runtime-dir")
            .arg(&runtime)
            .env_remove("MEMFIS_SERVERS")
            .env_remove("MEMFIS_PREFIX")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        &runtime,
        None,
    );
    let line = first_line(&mut child);
    assert!(line.contains("no nginx (--no-nginx)"), "{line}");
    assert!(
        line.contains(&format!("unix:{}", socket.display())),
        "{line}"
    );
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
    assert!(is_mounted(&runtime.join("mnt")));
    assert!(appears(&runtime.join("mnt/index.html")));
    assert!(!runtime.join("nginx.conf").exists());
    let nginx = Command::new("pgrep")
        .args(["-f", &format!("^nginx.*{}", runtime.display())])
        .output()
        .unwrap();
    assert!(nginx.stdout.is_empty(), "{nginx:?}");
    child.stop();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("stopping: mount, memcached\n"), "{stderr}");
    // `up` says it made its tree itself (the mount's notice goes to its log, since deleted).
    assert!(
        stderr.contains("memfis up: made a new, empty tree under prefix \"memfis://bare\""),
        "{stderr}"
    );
    assert!(!socket.exists(), "memcached's socket left behind");
    assert!(!runtime.exists());

    // A socket path that exists is refused (memcached would unlink it), touching nothing.
    std::fs::write(&socket, b"not yours").unwrap();
    let out = Command::new(BIN)
        .args(["up", "examples/site", "--no-nginx"])
        .arg("--memcached-socket")
        .arg(&socket)
        .arg("--runtime-dir")
        .arg(&runtime)
        .env_remove("MEMFIS_SERVERS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists"),
        "{out:?}"
    );
    assert_eq!(std::fs::read(&socket).unwrap(), b"not yours");
}

/// `memfis up` on `site` with `--no-nginx`, its runtime directory `runtime`; `extra` flags.
fn up_no_nginx(site: &str, runtime: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["up", site, "--no-nginx"])
        .args(extra)
        .arg("--runtime-dir")
        .arg(runtime)
        .env_remove("MEMFIS_SERVERS")
        .env_remove("MEMFIS_PREFIX");
    cmd
}

/// A second `memfis up` with the runtime directory of a running one is refused (the first
/// holds its lock), and the first keeps running with every file of its tree: the second once
/// emptied the directory, descending into the first's live mount and deleting its files.
#[test]
fn a_second_up_on_the_same_runtime_dir_is_refused_and_the_first_keeps_its_files() {
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("rt");
    let mut first = UpGuard::spawn(
        up_no_nginx("examples/site", &runtime, &["--prefix", "memfis://first"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        &runtime,
        None,
    );
    let line = first_line(&mut first);
    assert!(line.contains("no nginx"), "{line}");
    let index = runtime.join("mnt/index.html");
    assert!(appears(&index));
    let before = std::fs::read(&index).unwrap();
    std::fs::write(runtime.join("mnt/mine.txt"), b"written through the mount").unwrap();

    let out = up_no_nginx("examples/site", &runtime, &["--prefix", "memfis://second"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another `memfis up`") && err.contains("--runtime-dir"),
        "{err}"
    );
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the first run stopped"
    );
    assert!(is_mounted(&runtime.join("mnt")));
    assert_eq!(std::fs::read(&index).unwrap(), before);
    assert_eq!(
        std::fs::read(runtime.join("mnt/mine.txt")).unwrap(),
        b"written through the mount"
    );
    assert!(runtime.join("memcached.sock").exists());
    first.stop();
    assert!(!runtime.exists());
}

/// A mount left under a runtime directory (a `memfis up` killed before it unmounted) is
/// refused, its files untouched: the directory is never emptied across a mount.
#[test]
fn a_mount_left_in_the_runtime_dir_is_refused_and_kept() {
    let mc = Memcached::start();
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("rt");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::write(runtime.join(".memfis-up"), b"made by memfis up\n").unwrap();
    let mount = Mount::in_dir(&runtime, &[mc.addr()], "memfis://left", &["--create"]);
    std::fs::write(mount.p("kept.txt"), b"still here").unwrap();
    let out = up_no_nginx("examples/site", &runtime, &["--prefix", "memfis://again"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is mounted, under the runtime directory") && err.contains("fusermount3 -u"),
        "{err}"
    );
    assert_eq!(std::fs::read(mount.p("kept.txt")).unwrap(), b"still here");
}

/// With `--server` (a memcached of the user's, maybe holding production trees) `up` needs a
/// `--prefix`, and refuses one that holds a tree unless `--into-existing`; refusing, it starts
/// nothing and writes nothing.
#[test]
fn up_on_a_users_server_needs_a_prefix_and_leaves_a_tree_alone() {
    let mc = Memcached::start();
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("rt");
    let server = mc.addr();
    let out = up_no_nginx("examples/site", &runtime, &["--server", &server])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("with --server, give --prefix too"), "{err}");
    assert!(mc.keys().is_empty(), "something was written");

    // A tree in use under memfis://prod.
    let prod = work.path().join("prod");
    std::fs::create_dir(&prod).unwrap();
    std::fs::write(prod.join("index.html"), b"production").unwrap();
    let (code, out) = memfis_on("load", &[prod.to_str().unwrap()], &server, "memfis://prod");
    assert_eq!(code, 0, "{out}");
    let cmd_set = mc.stat("cmd_set");
    let args = ["--server", &server, "--prefix", "memfis://prod"];
    let out = up_no_nginx("examples/site", &runtime, &args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already holds a tree") && err.contains("--into-existing"),
        "{err}"
    );
    assert_eq!(mc.stat("cmd_set"), cmd_set, "something was written");
    assert!(!runtime.exists());
    assert_eq!(
        mc.get(b"memfis://prod/index.html").as_deref(),
        Some(&b"production"[..])
    );

    // Asked for, it mounts that tree and copies the site in.
    let mut up = UpGuard::spawn(
        up_no_nginx("examples/site", &runtime, &args)
            .arg("--into-existing")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        &runtime,
        None,
    );
    let line = first_line(&mut up);
    assert!(line.contains("no nginx"), "{line}");
    assert!(appears(&runtime.join("mnt/css/style.css")));
    up.stop();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut up.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("made a new, empty tree"), "{stderr}");
    assert!(stderr.contains("stopping: mount\n"), "{stderr}");
}
