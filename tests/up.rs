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
