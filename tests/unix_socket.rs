//! memcached on a unix socket (`--server unix:/path`): mount, load, check, stats and the
//! generated nginx config all reach it, and nginx serves from it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "memfis://sock";

/// memcached listening only on a unix socket in `dir`; stopped on drop.
fn memcached_on_socket(dir: &Path) -> (ChildGuard, String) {
    let socket = dir.join("memcached.sock");
    let mut cmd = Command::new("memcached");
    cmd.arg("-s")
        .arg(&socket)
        .args(["-a", "0666", "-M", "-m", "64"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "root"]);
    }
    let child = ChildGuard(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "memcached did not listen on its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("unix:{}", socket.display()))
}

#[test]
fn every_tool_and_nginx_reach_memcached_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (_memcached, server) = memcached_on_socket(dir.path());

    let mount = Mount::new(std::slice::from_ref(&server), PREFIX);
    std::fs::create_dir(mount.p("docs")).unwrap();
    std::fs::write(mount.p("docs/index.html"), b"docs over a socket").unwrap();
    std::fs::write(mount.p("app.css"), b"body{}").unwrap();

    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("loaded.html"), b"loaded over a socket").unwrap();
    let (code, out) = memfis_on(
        "load",
        &[site.path().to_str().unwrap(), "--to", "/l"],
        &server,
        PREFIX,
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = memfis_check(&server, PREFIX);
    assert_eq!(code, 0, "{out}");
    let (code, out) = memfis_on("stats", &[], &server, PREFIX);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&server), "{out}");

    let port = free_port();
    let config = nginx_config(&[
        "--server",
        &server,
        "--prefix",
        PREFIX,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(config.contains(&format!("server {server};")), "{config}");
    let nginx = Nginx::start_http(port, &config);
    assert_eq!(nginx.get("/app.css").2, b"body{}");
    assert_eq!(nginx.get("/docs/").2, b"docs over a socket");
    assert_eq!(nginx.get("/l/loaded.html").2, b"loaded over a socket");
    assert_eq!(nginx.get("/docs").0, 301);
}

#[test]
fn a_relative_socket_path_is_refused() {
    let out = Command::new(BIN)
        .args([
            "nginx-config",
            "--server",
            "unix:memcached.sock",
            "--prefix",
            PREFIX,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute path"));
}
