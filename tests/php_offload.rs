//! PHP offloading end to end with `examples/php-offload`: a miss of a known route runs PHP,
//! which writes the page into the mount; the next request is served by nginx from memcached
//! without PHP; `rm` in the mount invalidates. Any other path is a 404 that writes nothing, and
//! concurrent misses of one page on two hosts render it once.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "memfis://php";

fn script() -> String {
    let p = std::fs::canonicalize("examples/php-offload/index.php").unwrap();
    p.to_str().unwrap().to_string()
}

/// One web server: its php-fpm pool (working in `mount`) and its nginx in front. `calls` gets
/// a byte per PHP invocation; `renders` (shared by hosts) a line per page rendered.
struct Host {
    nginx: Nginx,
    calls: PathBuf,
    fpm: PhpFpm,
}

impl Host {
    fn start(mc: &Memcached, mount: &Path, work: &Path, tag: &str, env: &[(&str, &Path)]) -> Host {
        let calls = work.join(format!("calls-{tag}"));
        std::fs::write(&calls, b"").unwrap();
        let renders = work.join("renders");
        let mut all = vec![
            ("MEMFIS_PHP_COUNTER", calls.as_path()),
            ("MEMFIS_RENDER_LOG", renders.as_path()),
        ];
        all.extend_from_slice(env);
        let fpm = PhpFpm::start(mount, 8, &all);
        let addr = format!("127.0.0.1:{}", fpm.port);
        let nginx = Nginx::for_store(
            &mc.addr(),
            PREFIX,
            &["--php-fpm", &addr, "--php-script", &script()],
        );
        Host { nginx, calls, fpm }
    }

    /// PHP invocations so far.
    fn calls(&self) -> usize {
        std::fs::read(&self.calls).unwrap().len()
    }
}

/// The pages rendered so far (a line each, as the route table names them).
fn renders(work: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(work.join("renders")).unwrap_or_default();
    text.lines().map(str::to_string).collect()
}

/// Every key in the store with its value; a mount's liveness key only by name (its expiry is
/// refreshed while the mount runs), and no empty lock list (one expires by itself, 5 s after
/// the last lock on its file went).
fn store_snapshot(mc: &Memcached) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let lock_list = format!("{PREFIX}%L");
    mc.keys()
        .into_iter()
        .filter_map(|k| {
            let name = String::from_utf8_lossy(&k).into_owned();
            if name.contains("%alive.") {
                return Some((k, None));
            }
            let value = mc.get(&k)?;
            let lock = name
                .strip_prefix(&lock_list)
                .is_some_and(|n| n.parse::<u64>().is_ok());
            let empty = value.is_empty() || value == b"[]";
            (!(lock && empty)).then_some((k, Some(value)))
        })
        .collect()
}

/// Fails naming the keys that `after` added, removed or changed since `before`.
fn assert_same_store(
    before: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    after: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    what: &str,
) {
    let keys = before.keys().chain(after.keys());
    let changed: std::collections::BTreeSet<String> = keys
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            let show = |v: Option<&Option<Vec<u8>>>| match v {
                None => "absent".to_string(),
                Some(v) => format!("{:?}", v.as_deref().map(String::from_utf8_lossy)),
            };
            let k = String::from_utf8_lossy(k);
            format!(
                "{k}: {} -> {}",
                show(before.get(k.as_bytes())),
                show(after.get(k.as_bytes()))
            )
        })
        .collect();
    assert!(
        changed.is_empty(),
        "{what} wrote into the store: {changed:?}"
    );
}

/// Every path under `root` with its kind and size, sorted.
fn tree(root: &Path) -> Vec<(PathBuf, bool, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            }
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            out.push((rel, meta.is_dir(), meta.len()));
        }
    }
    out.sort();
    out
}

/// An HTTP/1.1 client on one keep-alive connection (opened again when nginx closes it).
struct Client {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(port: u16) -> Client {
        Client { port, conn: None }
    }

    /// GET `path` (already percent-encoded): status and body.
    fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        // A connection nginx closed between two requests fails the next one: retried once,
        // on a new connection.
        self.try_get(path)
            .or_else(|_| {
                self.conn = None;
                self.try_get(path)
            })
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn try_get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        conn.get_mut().write_all(req.as_bytes())?;
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(bad("closed"));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("status line"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or_else(|| bad("header"))?;
            match (k.to_ascii_lowercase().as_str(), v.trim()) {
                ("content-length", v) => length = v.parse::<usize>().ok(),
                ("transfer-encoding", v) => chunked = v.eq_ignore_ascii_case("chunked"),
                ("connection", v) => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("chunk"))?;
                let mut chunk = vec![0; n + 2];
                conn.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            conn.read_exact(&mut body)?;
        } else {
            conn.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }
}

#[test]
fn known_routes_render_once_then_nginx_serves_them_from_memory() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    let work = tempfile::tempdir().unwrap();
    let host = Host::start(&mc, mount.path(), work.path(), "a", &[]);
    let nginx = &host.nginx;

    let (status, headers, first) = nginx.get("/about.html");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&first));
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    assert_eq!(host.calls(), 1);
    assert_eq!(std::fs::read(mount.p("about.html")).unwrap(), first);
    for _ in 0..5 {
        let (status, headers, again) = nginx.get("/about.html");
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-memfis-source"), Some("store"));
        assert_eq!(header(&headers, "content-type"), Some("text/html"));
        assert_eq!(again, first);
    }
    assert_eq!(host.calls(), 1, "PHP must not run for a page in the store");

    // The home page is stored as index.html: served from the store at / and /index.html.
    let (_, headers, home) = nginx.get("/");
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    for path in ["/", "/index.html"] {
        let (status, headers, body) = nginx.get(path);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-memfis-source"), Some("store"));
        assert_eq!(body, home);
    }
    assert!(String::from_utf8_lossy(&home).contains("/articles/hello-memfis.html"));

    // The parameterised route: a slug the application ships.
    let (status, headers, article) = nginx.get("/articles/hello-memfis.html");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    let (_, headers, again) = nginx.get("/articles/hello-memfis.html");
    assert_eq!(header(&headers, "x-memfis-source"), Some("store"));
    assert_eq!(again, article);
    assert_eq!(host.calls(), 3);
    assert_eq!(
        renders(work.path()),
        ["about.html", "index.html", "articles/hello-memfis.html"]
    );

    // Invalid parameters and near misses of the routes: 404 from PHP, nothing written.
    let store = store_snapshot(&mc);
    let files = tree(mount.path());
    let long = "a".repeat(65);
    let near_misses = [
        "/articles/no-such-article.html".to_string(),
        "/articles/Hello-Memfis.html".into(),
        "/articles/hello_memfis.html".into(),
        format!("/articles/{long}.html"),
        "/articles/hello-memfis.html%0A".into(),
        "/articles/hello-memfis.htm".into(),
        "/articles/hello-memfis.html/x".into(),
        "/articles/".into(),
        "/articles".into(),
        "/about.html/".into(),
        "/about".into(),
        "/news/".into(),
    ];
    let before = host.calls();
    for path in &near_misses {
        let (status, headers, body) = nginx.get(path);
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(
            header(&headers, "x-memfis-source"),
            Some("backend"),
            "{path}"
        );
    }
    assert_eq!(host.calls(), before + near_misses.len());
    assert_same_store(&store, &store_snapshot(&mc), "a 404");
    assert_eq!(tree(mount.path()), files, "a 404 wrote into the mount");
    assert_eq!(renders(work.path()).len(), 3);

    // The lock files and a page's temporary name are hidden paths: nginx refuses them.
    let lock = std::fs::read_dir(mount.p(".locks"))
        .unwrap()
        .next()
        .unwrap();
    let lock = lock.unwrap().file_name().into_string().unwrap();
    let (status, _, _) = nginx.get(&format!("/.locks/{lock}"));
    assert_eq!(status, 403);
    std::fs::write(mount.p("articles/.x.html.0123.tmp"), "half").unwrap();
    let (status, _, _) = nginx.get("/articles/.x.html.0123.tmp");
    assert_eq!(status, 403);
    std::fs::remove_file(mount.p("articles/.x.html.0123.tmp")).unwrap();
    // No temporary file is left behind by the renders.
    let leftovers: Vec<_> = tree(mount.path())
        .into_iter()
        .filter(|(p, _, _)| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

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
    let (status, _, body) = nginx.get("/about.html/x.php");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("nginx"), "{body:?}");

    // With a disk root in the chain too, a miss still reaches PHP after the root missed.
    let root = tempfile::tempdir().unwrap();
    let fpm = format!("127.0.0.1:{}", host.fpm.port);
    let with_root = Nginx::for_store(
        &mc.addr(),
        PREFIX,
        &[
            "--php-fpm",
            &fpm,
            "--php-script",
            &script(),
            "--root",
            root.path().to_str().unwrap(),
        ],
    );
    let before = host.calls();
    let (status, headers, _) = with_root.get("/articles/invalidate-with-rm.html");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    assert_eq!(host.calls(), before + 1);

    // Invalidation is `rm` in the mount: the next request renders the page again.
    std::fs::remove_file(mount.p("about.html")).unwrap();
    let before = host.calls();
    let (status, headers, _) = nginx.get("/about.html");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    let (_, headers, _) = nginx.get("/about.html");
    assert_eq!(header(&headers, "x-memfis-source"), Some("store"));
    assert_eq!(host.calls(), before + 1);
    assert_eq!(
        renders(work.path())
            .iter()
            .filter(|r| *r == "about.html")
            .count(),
        2
    );
}

/// The `i`th of the unknown paths (percent-encoded) and whether PHP must be the one answering
/// (404): the others nginx may refuse itself (403 for hidden paths and PHP sources, 404 for a
/// `.php` that is no script, 400 for a path above the root).
fn unknown_path(rng: &mut Rng, i: usize) -> (String, bool) {
    match i % 6 {
        // Deep paths.
        0 => {
            let depth = 2 + rng.below(12);
            let mut p = String::new();
            for _ in 0..depth {
                p.push('/');
                p.push_str(&rng.word(1, 12));
            }
            if rng.below(2) == 0 {
                p.push_str(".html");
            }
            (p, true)
        }
        // Names holding control characters (CR LF, ESC, DEL) and bytes that are no UTF-8.
        1 => {
            let mut name = rng.word(1, 8).into_bytes();
            for _ in 0..1 + rng.below(4) {
                let b = match rng.below(3) {
                    0 => 1 + rng.below(31) as u8,
                    1 => 0x7f,
                    _ => 0x80 + rng.below(128) as u8,
                };
                let at = rng.below(name.len() + 1);
                name.insert(at, b);
            }
            let dir = ["/", "/articles/", "/a/b/"][rng.below(3)];
            let ext = [".html", "", "/"][rng.below(3)];
            (format!("{dir}{}{ext}", url_encode(&name)), true)
        }
        // Long names: past a slug's 64, past 255 bytes, past memcached's 250-byte keys.
        2 => {
            let p = match rng.below(3) {
                0 => format!("/articles/{}.html", rng.word(65, 200)),
                1 => format!("/{}", rng.word(200, 400)),
                _ => (0..20).map(|_| format!("/{}", rng.word(100, 1))).collect(),
            };
            (p, true)
        }
        // Names a PHP application might be attacked with.
        3 => {
            const TAILS: &[&str] = &[
                ".php",
                ".PHP",
                ".php5",
                ".phtml",
                ".phar",
                ".inc",
                ".php.bak",
                ".php~",
                "/index.php",
                ".php/x.html",
                ".php%0A",
                ".html.php",
            ];
            let stem = rng.word(1, 10);
            let dir = ["/", "/articles/", "/uploads/"][rng.below(3)];
            (
                format!("{dir}{stem}{}", TAILS[rng.below(TAILS.len())]),
                false,
            )
        }
        // Near misses of the routes: slugs the application does not ship, wrong cases and tails.
        4 => {
            let slug = rng.word(1, 64);
            let p = match rng.below(6) {
                0 => format!("/articles/{slug}.html"),
                1 => format!("/articles/{}.html", slug.to_uppercase()),
                2 => format!("/articles/{slug}"),
                3 => format!("/articles/hello-memfis.html/{slug}"),
                4 => format!("/about.html/{slug}"),
                _ => format!("/{slug}/articles/hello-memfis.html"),
            };
            (p, true)
        }
        // Hidden paths, traversal and NUL: nginx answers these itself.
        _ => {
            let w = rng.word(1, 20);
            let p = match rng.below(5) {
                0 => format!("/.locks/{w}.lock"),
                1 => format!("/articles/.{w}.html.tmp"),
                2 => format!("/a/../../{w}"),
                3 => format!("/%2e%2e/%2e%2e/{w}"),
                _ => format!("/{w}%00.html"),
            };
            (p, false)
        }
    }
}

/// A symlink made in the mount at a page's name, or at a page's lock file, is never read out
/// or written through (PHP may run as a user that can read and write anything).
#[test]
fn links_at_a_page_or_its_lock_are_never_followed() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    let work = tempfile::tempdir().unwrap();
    let host = Host::start(&mc, mount.path(), work.path(), "a", &[]);
    let private = |name: &str, text: &str| {
        std::fs::write(mount.p(name), text).unwrap();
        std::fs::set_permissions(mount.p(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    private("secret.txt", "SECRET");
    private("victim.txt", "VICTIM");

    // A link at a page's name: nginx finds no key there, PHP renders the page over the link.
    std::os::unix::fs::symlink("secret.txt", mount.p("about.html")).unwrap();
    let (status, _, body) = host.nginx.get("/about.html");
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains("SECRET"));
    let meta = std::fs::symlink_metadata(mount.p("about.html")).unwrap();
    assert!(meta.file_type().is_file(), "the page replaced the link");
    assert_eq!(std::fs::read(mount.p("about.html")).unwrap(), body);

    // A link at a page's lock file: the page is answered but not stored, the target untouched.
    assert_eq!(host.nginx.get("/").0, 200); // makes .locks
    let name = "articles/hello-memfis.html";
    std::os::unix::fs::symlink("../victim.txt", mount.p(&lock_file_of(name))).unwrap();
    let (status, headers, body) = host.nginx.get(&format!("/{name}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    assert_eq!(std::fs::read(mount.p("victim.txt")).unwrap(), b"VICTIM");
    assert!(!mount.p(name).exists(), "stored without its lock");
}

/// The page lock file of `name` (`.locks/<sha1 of the name>.lock`), relative to the mount.
fn lock_file_of(name: &str) -> String {
    let out = Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(name.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha1sum runs");
    format!(
        ".locks/{}.lock",
        &String::from_utf8(out.stdout).unwrap()[..40]
    )
}

/// Hard links and linked directories someone made in the mount: a hard link to a private
/// file at a page's name is not read out, one at a lock file is not written through, and a
/// page directory that is a symlink is neither read from nor written into (found by an
/// attack: each of them was followed).
#[test]
fn hard_links_and_linked_directories_are_never_followed() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    let work = tempfile::tempdir().unwrap();
    let host = Host::start(&mc, mount.path(), work.path(), "a", &[]);
    let write_mode = |name: &str, text: &str, mode: u32| {
        std::fs::write(mount.p(name), text).unwrap();
        std::fs::set_permissions(mount.p(name), std::fs::Permissions::from_mode(mode)).unwrap();
    };

    // `articles` a link to another directory holding a readable file at the page's name.
    std::fs::create_dir(mount.p("elsewhere")).unwrap();
    write_mode("elsewhere/render-once.html", "LINKED DIRECTORY", 0o644);
    std::os::unix::fs::symlink("elsewhere", mount.p("articles")).unwrap();
    let (status, _, body) = host.nginx.get("/articles/render-once.html");
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains("LINKED"));
    let mut left: Vec<_> = std::fs::read_dir(mount.p("elsewhere"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["render-once.html"],
        "nothing written through the link"
    );
    std::fs::remove_file(mount.p("articles")).unwrap();
    std::fs::create_dir(mount.p("articles")).unwrap();

    // A hard link to a private file at a page's name.
    write_mode("secret.txt", "SECRET", 0o600);
    std::fs::hard_link(mount.p("secret.txt"), mount.p("articles/hello-memfis.html")).unwrap();
    let (status, _, body) = host.nginx.get("/articles/hello-memfis.html");
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains("SECRET"));
    assert_eq!(std::fs::read(mount.p("secret.txt")).unwrap(), b"SECRET");

    // A hard link to another file at a page's lock file.
    write_mode("victim.txt", "VICTIM", 0o644);
    assert_eq!(host.nginx.get("/").0, 200); // makes .locks
    let name = "articles/invalidate-with-rm.html";
    let lock = lock_file_of(name);
    let _ = std::fs::remove_file(mount.p(&lock));
    std::fs::hard_link(mount.p("victim.txt"), mount.p(&lock)).unwrap();
    let (status, headers, body) = host.nginx.get(&format!("/{name}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "x-memfis-source"), Some("backend"));
    assert_eq!(std::fs::read(mount.p("victim.txt")).unwrap(), b"VICTIM");
    assert!(!mount.p(name).exists(), "stored without its lock");
}

#[test]
fn ten_thousand_unknown_paths_answer_404_and_write_nothing() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    let work = tempfile::tempdir().unwrap();
    let host = Host::start(&mc, mount.path(), work.path(), "a", &[]);
    // Some pages first, so that the tree has directories and lock files a request might add to.
    for path in ["/", "/about.html", "/articles/hello-memfis.html"] {
        assert_eq!(host.nginx.get(path).0, 200, "{path}");
    }
    let store = store_snapshot(&mc);
    // (An empty snapshot would compare equal to anything.)
    assert!(
        store.contains_key(format!("{PREFIX}/about.html").as_bytes()),
        "the snapshot misses the pages just stored"
    );
    let files = tree(mount.path());
    let calls = host.calls();

    const THREADS: usize = 4;
    const REQUESTS: usize = 10_000;
    let started = Instant::now();
    let must_reach_php: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let port = host.nginx.port;
                s.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                    let mut client = Client::new(port);
                    let mut php = 0;
                    for i in (t..REQUESTS).step_by(THREADS) {
                        let (path, reaches_php) = unknown_path(&mut rng, i);
                        let (status, body) = client.get(&path);
                        let body = String::from_utf8_lossy(&body);
                        if reaches_php {
                            php += 1;
                            assert_eq!(status, 404, "{path}: {body}");
                            assert_eq!(body, "not found\n", "{path}");
                        } else {
                            assert!([400, 403, 404].contains(&status), "{path}: {status} {body}");
                        }
                    }
                    php
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    eprintln!(
        "{REQUESTS} unknown paths in {:?} ({must_reach_php} answered by PHP)",
        started.elapsed()
    );
    assert!(
        host.calls() - calls >= must_reach_php,
        "PHP ran {} times for {must_reach_php} requests it must answer",
        host.calls() - calls
    );
    assert_same_store(&store, &store_snapshot(&mc), "an unknown path");
    assert_eq!(
        tree(mount.path()),
        files,
        "an unknown path wrote into the mount"
    );
    assert_eq!(renders(work.path()).len(), 3);
}

#[test]
fn fifty_concurrent_misses_on_two_hosts_render_once() {
    let mc = Memcached::start();
    let mount_a = Mount::new(&[mc.addr()], PREFIX);
    let mount_b = Mount::new(&[mc.addr()], PREFIX);
    let work = tempfile::tempdir().unwrap();
    // A slow render, so that every request misses the store in nginx and waits in PHP.
    let slow = [("MEMFIS_RENDER_DELAY_MS", Path::new("300"))];
    let a = Host::start(&mc, mount_a.path(), work.path(), "a", &slow);
    let b = Host::start(&mc, mount_b.path(), work.path(), "b", &slow);

    const CLIENTS: usize = 50;
    let page = "/articles/render-once.html";
    let barrier = std::sync::Barrier::new(CLIENTS);
    let started = Instant::now();
    let answers: Vec<(u16, Option<String>, Vec<u8>)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (host, barrier) = (if i % 2 == 0 { &a } else { &b }, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let (status, headers, body) = host.nginx.get(page);
                    let source = header(&headers, "x-memfis-source").map(str::to_string);
                    (status, source, body)
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    eprintln!("{CLIENTS} concurrent misses in {:?}", started.elapsed());

    let rendered = renders(work.path());
    assert_eq!(
        rendered,
        ["articles/render-once.html"],
        "rendered {} times; host A's php-fpm log:\n{}\nhost B's:\n{}",
        rendered.len(),
        a.fpm.log(),
        b.fpm.log()
    );
    let stored = std::fs::read(mount_b.p("articles/render-once.html")).unwrap();
    assert_eq!(
        std::fs::read(mount_a.p("articles/render-once.html")).unwrap(),
        stored
    );
    assert!(stored.len() > 32 * 1024 && stored.ends_with(b"</html>\n"));
    for (status, source, body) in &answers {
        assert_eq!(*status, 200, "{}", String::from_utf8_lossy(body));
        assert_eq!(body.len(), stored.len(), "from {source:?}");
        assert!(
            *body == stored,
            "a response from {source:?} differs from the page"
        );
    }
    // Both hosts ran PHP for the page and waited on the lock across mounts.
    let (calls_a, calls_b) = (a.calls(), b.calls());
    eprintln!("PHP ran {calls_a} times on host A, {calls_b} on host B");
    assert!(calls_a >= 2 && calls_b >= 2, "{calls_a} {calls_b}");
    let (_, headers, body) = a.nginx.get(page);
    assert_eq!(header(&headers, "x-memfis-source"), Some("store"));
    assert_eq!(body, stored);
    // Only the page and its lock file: no temporary file is left.
    let names: Vec<_> = tree(mount_a.path()).into_iter().map(|e| e.0).collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[test]
fn php_sessions_in_the_shared_mount_hold_across_hosts() {
    let mc = Memcached::start();
    let a = Mount::new(&[mc.addr()], PREFIX);
    let b = Mount::new(&[mc.addr()], PREFIX);
    // PHP's files handler makes no directory: the operator makes it, hidden and private.
    std::fs::create_dir(a.p(".sessions")).unwrap();
    // Made before the site serves: mount B sees it once the root listing it read at mount time
    // is older than the attribute TTL (1 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.p(".sessions").is_dir() {
        assert!(Instant::now() < deadline, "B never saw .sessions");
        std::thread::sleep(Duration::from_millis(20));
    }
    let fpm_a = PhpFpm::start(a.path(), 4, &[]);
    let fpm_b = PhpFpm::start(b.path(), 4, &[]);
    let script = std::fs::canonicalize("tests/php_offload/session_counter.php").unwrap();
    // One nginx standing for two hosts: /a goes to host A's pool, /b to host B's.
    let nginx = Nginx::two_php_hosts(&script, fpm_a.port, fpm_b.port);
    let (status, headers, body) = nginx.get("/a");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"1\n");
    let cookie = header(&headers, "set-cookie").expect("a session cookie");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let id = cookie.strip_prefix("PHPSESSID=").unwrap().to_string();

    const CLIENTS: usize = 8;
    const REQUESTS: usize = 25;
    let answers: Vec<u64> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (nginx, cookie) = (&nginx, &cookie);
                s.spawn(move || {
                    (0..REQUESTS)
                        .map(|i| {
                            let path = if (c + i) % 2 == 0 { "/a" } else { "/b" };
                            let (status, _, body) =
                                nginx.request("GET", path, &[("Cookie", cookie)]);
                            let body = String::from_utf8_lossy(&body).to_string();
                            assert_eq!(status, 200, "{path}: {body}");
                            body.trim().parse::<u64>().expect("a number")
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let mut sorted = answers;
    sorted.sort();
    let last = 1 + (CLIENTS * REQUESTS) as u64;
    assert_eq!(
        sorted,
        (2..=last).collect::<Vec<u64>>(),
        "every count once; host A's php-fpm log:\n{}\nhost B's:\n{}",
        fpm_a.log(),
        fpm_b.log()
    );
    // One session file, private: a file others may not read has no key nginx could reach.
    let file = b.p(&format!(".sessions/sess_{id}"));
    let meta = std::fs::metadata(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        String::from_utf8_lossy(&std::fs::read(&file).unwrap()).contains(&format!("i:{last};"))
    );
    let key = format!("{PREFIX}/.sessions/sess_{id}");
    assert_eq!(mc.get(key.as_bytes()), None);
}
