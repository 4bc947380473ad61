//! A tree copied in with `cp -a` is identical inside the mount and served byte for byte by
//! stock nginx `memcached_pass`; metadata never is.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;

const PREFIX: &str = "memfis://test";

fn nginx_for(mc: &Memcached) -> Nginx {
    Nginx::start(
        "",
        &format!(
            "location / {{ set $memcached_key \"{PREFIX}$uri\"; memcached_pass {}; }}",
            mc.addr()
        ),
    )
}

fn make_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    let random: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    w("index.html", b"<h1>home</h1>\n");
    w("css/site.css", b"body{}\n");
    w("js/app.js", b"console.log(1)\n");
    w("img/logo.png", &random[..4096]);
    w("downloads/blob.bin", &random);
    w("a/b/c/deep.txt", b"deep\n");
    w("empty.txt", b"");
    w("names/with space.html", b"space\n");
    w("names/100%.txt", b"percent\n");
    w("names/what?.txt", b"question\n");
    w("names/hash#tag.txt", b"hash\n");
    w("names/ünïcödé.txt", "utf8 ✓\n".as_bytes());
    w("names/plus+sign.txt", b"plus\n");
    w("names/del\x7fchar.txt", b"delete char\n");
    symlink("index.html", root.join("link-to-index")).unwrap();
    std::fs::hard_link(root.join("a/b/c/deep.txt"), root.join("hardlink.txt")).unwrap();
    sh(&format!(
        "touch -d '2020-01-02 03:04:05.123456789' '{}'",
        root.join("css/site.css").display()
    ));
}

#[test]
fn cp_a_tree_is_identical_and_served_by_nginx() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    sh(&format!(
        "cp -a {}/. {}/",
        src.path().display(),
        mount.path().display()
    ));
    sh(&format!(
        "diff -r --no-dereference {} {}",
        src.path().display(),
        mount.path().display()
    ));
    // Attributes survive: mode and nanosecond mtime.
    let out = sh(&format!(
        "cd {} && stat -c '%n %a %y' css/site.css && cd {} && stat -c '%n %a %y' css/site.css",
        src.path().display(),
        mount.path().display()
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], lines[1]);
    assert!(lines[1].contains(".123456789"), "{}", lines[1]);

    let nginx = nginx_for(&mc);
    let mut served = 0;
    for entry in walk(src.path()) {
        let rel = entry.strip_prefix(src.path()).unwrap();
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        if !meta.is_file() {
            continue;
        }
        let url = url_encode(format!("/{}", rel.display()).as_bytes());
        let (status, headers, body) = nginx.get(&url);
        assert_eq!(status, 200, "GET {url}");
        assert_eq!(body, std::fs::read(&entry).unwrap(), "body of {url}");
        let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or("");
        let expected = match ext {
            "html" => Some("text/html"),
            "css" => Some("text/css"),
            "js" => Some("application/javascript"),
            "png" => Some("image/png"),
            "txt" => Some("text/plain"),
            _ => None,
        };
        if let Some(ct) = expected {
            assert_eq!(header(&headers, "content-type"), Some(ct), "{url}");
        }
        served += 1;
    }
    assert_eq!(served, 15);
    // Directories and metadata are never served.
    for url in [
        "/a/",
        "/a",
        "/names/",
        "/%25i1",
        "/%25format",
        "/%25e1/index.html",
        "/%25s1",
        "/%25l1.0",
        "/%25next-ino",
    ] {
        let (status, _, body) = nginx.get(url);
        assert_eq!(
            status,
            404,
            "GET {url} returned {}",
            String::from_utf8_lossy(&body)
        );
    }
    // ...even though the records exist under the prefix.
    assert!(mc.get(b"memfis://test%i1").is_some());
    assert!(mc.get(b"memfis://test%format").is_some());
    // Range and HEAD.
    let (status, _, body) =
        nginx.request("GET", "/downloads/blob.bin", &[("Range", "bytes=10-19")]);
    assert_eq!(status, 206);
    assert_eq!(
        body,
        std::fs::read(src.path().join("downloads/blob.bin")).unwrap()[10..20]
    );
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn directory_rename_moves_every_served_key() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    std::fs::create_dir_all(mount.p("old/sub")).unwrap();
    std::fs::write(mount.p("old/a.html"), b"A").unwrap();
    std::fs::write(mount.p("old/sub/b.css"), b"B").unwrap();
    std::fs::rename(mount.p("old"), mount.p("new")).unwrap();
    let nginx = nginx_for(&mc);
    assert_eq!(nginx.get("/new/a.html").2, b"A");
    assert_eq!(nginx.get("/new/sub/b.css").2, b"B");
    assert_eq!(nginx.get("/old/a.html").0, 404);
    assert_eq!(nginx.get("/old/sub/b.css").0, 404);
    assert_eq!(std::fs::read(mount.p("new/sub/b.css")).unwrap(), b"B");
    // Writing through the new path publishes at the new key.
    std::fs::write(mount.p("new/sub/b.css"), b"B2").unwrap();
    assert_eq!(nginx.get("/new/sub/b.css").2, b"B2");
}

#[test]
fn hard_links_are_all_served_and_stay_identical() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(mount.p("one.txt"), b"v1").unwrap();
    std::fs::hard_link(mount.p("one.txt"), mount.p("two.txt")).unwrap();
    std::fs::write(mount.p("two.txt"), b"version 2").unwrap();
    let nginx = nginx_for(&mc);
    assert_eq!(nginx.get("/one.txt").2, b"version 2");
    assert_eq!(nginx.get("/two.txt").2, b"version 2");
    std::fs::remove_file(mount.p("one.txt")).unwrap();
    assert_eq!(nginx.get("/one.txt").0, 404);
    assert_eq!(nginx.get("/two.txt").2, b"version 2");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(mount.p("two.txt")).unwrap().nlink(), 1);
}

#[test]
fn truncate_and_random_writes_change_the_served_value() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    let nginx = nginx_for(&mc);
    std::fs::write(mount.p("f.txt"), b"0123456789").unwrap();
    sh(&format!("truncate -s 4 {}", mount.p("f.txt").display()));
    assert_eq!(nginx.get("/f.txt").2, b"0123");
    sh(&format!("truncate -s 6 {}", mount.p("f.txt").display()));
    assert_eq!(nginx.get("/f.txt").2, b"0123\0\0");
    // A write past the end leaves a hole that reads as zeros.
    sh(&format!(
        "printf XY | dd of={} bs=1 seek=8 conv=notrunc 2>/dev/null",
        mount.p("f.txt").display()
    ));
    assert_eq!(std::fs::read(mount.p("f.txt")).unwrap(), b"0123\0\0\0\0XY");
    assert_eq!(nginx.get("/f.txt").2, b"0123\0\0\0\0XY");
}
