//! PHP offloading end to end: a miss runs PHP, which writes the page into the mount; the next
//! request is served by nginx from memcached without PHP; `rm` in the mount invalidates.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::*;

const PREFIX: &str = "memfis://php";

struct PhpFpm {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn php_fpm_binary() -> PathBuf {
    std::fs::read_dir("/usr/sbin")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("php-fpm")
        })
        .expect("php-fpm installed (apt-get install php-fpm)")
}

fn start_php_fpm(port: u16, mount: &std::path::Path, counter: &std::path::Path) -> PhpFpm {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("php-fpm.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\npid = {d}/php-fpm.pid\nerror_log = {d}/php-fpm.log\ndaemonize = no\n\
             [app]\nuser = root\ngroup = root\nlisten = 127.0.0.1:{port}\npm = static\npm.max_children = 2\n\
             clear_env = yes\nenv[MEMFIS_MOUNT] = {m}\nenv[MEMFIS_PHP_COUNTER] = {c}\ncatch_workers_output = yes\n",
            d = dir.path().display(),
            m = mount.display(),
            c = counter.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(php_fpm_binary())
        .args(["-F", "-R", "-y"])
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "php-fpm exited");
        assert!(
            std::time::Instant::now() < deadline,
            "php-fpm did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    PhpFpm { child, _dir: dir }
}

#[test]
fn a_miss_renders_with_php_once_then_nginx_serves_from_memory() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    let work = tempfile::tempdir().unwrap();
    let counter = work.path().join("php-runs");
    std::fs::write(&counter, b"").unwrap();
    let runs = || std::fs::read(&counter).unwrap().len();
    let fpm_port = free_port();
    let _fpm = start_php_fpm(fpm_port, mount.path(), &counter);
    let script = std::fs::canonicalize("examples/php-offload/index.php").unwrap();
    let fpm = format!("127.0.0.1:{fpm_port}");
    let nginx = Nginx::for_store(
        &mc.addr(),
        PREFIX,
        &["--php-fpm", &fpm, "--php-script", script.to_str().unwrap()],
    );

    let (status, headers, first) = nginx.get("/products/42.html");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&first));
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    assert_eq!(runs(), 1);
    assert_eq!(std::fs::read(mount.p("products/42.html")).unwrap(), first);

    for _ in 0..5 {
        let (status, headers, again) = nginx.get("/products/42.html");
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-memfis-source"), Some("store"));
        assert_eq!(header(&headers, "content-type"), Some("text/html"));
        assert_eq!(again, first);
    }
    assert_eq!(runs(), 1, "PHP must not run for a page in the store");

    // A directory URL is rendered to its index.html.
    let (_, headers, _) = nginx.get("/news/");
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    let (_, headers, _) = nginx.get("/news/");
    assert_eq!(header(&headers, "x-memfis-source"), Some("store"));
    assert_eq!(runs(), 2);

    // A script's source in the store is never sent: php-fpm gets the request (and finds no
    // such script under the document root), and the front controller renders nothing over it.
    let source = b"<?php $db_password = 'hunter2';";
    std::fs::write(mount.p("config.php"), source).unwrap();
    let (status, _, body) = nginx.get("/config.php");
    assert_ne!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains("hunter2"));
    assert_eq!(std::fs::read(mount.p("config.php")).unwrap(), source);
    // A path that only ends in .php (an upload followed by /x.php) never reaches php-fpm:
    // nginx answers 404 itself.
    let (status, _, body) = nginx.get("/products/42.html/x.php");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("nginx"), "{body:?}");

    // With a disk root in the chain too, a miss still reaches PHP after the root missed.
    let root = tempfile::tempdir().unwrap();
    let with_root = Nginx::for_store(
        &mc.addr(),
        PREFIX,
        &[
            "--php-fpm",
            &fpm,
            "--php-script",
            script.to_str().unwrap(),
            "--root",
            root.path().to_str().unwrap(),
        ],
    );
    let before = runs();
    let (status, headers, _) = with_root.get("/products/43.html");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    assert_eq!(runs(), before + 1);

    // Invalidation is `rm` in the mount.
    std::fs::remove_file(mount.p("products/42.html")).unwrap();
    let (status, headers, _) = nginx.get("/products/42.html");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    assert_eq!(runs(), 4);
}
