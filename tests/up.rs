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
