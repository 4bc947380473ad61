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
    let mut child = Command::new(BIN)
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
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
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
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "memfis up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
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
    let mut child = ChildGuard(
        Command::new(BIN)
            .arg("up")
            .arg(&site)
            .args(["--port", &port.to_string(), "--prefix", "memfis://up-int"])
            .arg("--runtime-dir")
            .arg(&runtime)
            .env_remove("MEMFIS_SERVERS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait for the mount (the copy starts right after), remembering memcached's address.
    let mut memcached = None;
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
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
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.0.try_wait().unwrap().is_none() {
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

/// Sends SIGTERM to `memfis up` and waits for it to exit successfully.
fn stop_up(child: &mut std::process::Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "memfis up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
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
    let mut child = ChildGuard(
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
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
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
    stop_up(&mut child.0);
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
    let mut child = ChildGuard(
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
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
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
    stop_up(&mut child.0);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("stopping: mount, memcached\n"), "{stderr}");
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
