//! `--gzip`: text files over 1 KB are stored compressed with flag 2, nginx sends them as they
//! are to clients that accept gzip and unpacked to the others, and every reader (this mount,
//! a mount without `--gzip`, export, check) sees the plain bytes. Real memcached and nginx.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

const PREFIX: &str = "memfis://gzip";

/// The flags and length of the item at `key`, as memcached holds it.
fn raw_item(mc: &Memcached, key: &str) -> (u32, Vec<u8>) {
    let reply = mc.raw(format!("get {key}\r\n").as_bytes());
    let end = reply.windows(2).position(|w| w == b"\r\n").unwrap();
    let header = String::from_utf8_lossy(&reply[..end]).to_string();
    let parts: Vec<&str> = header.split(' ').collect();
    assert_eq!(parts[0], "VALUE", "{key}: {header}");
    let (flags, len): (u32, usize) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
    (flags, reply[end + 2..end + 2 + len].to_vec())
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not gzip");
    out.stdout
}

fn page(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("<p>paragraph {i} of a page served from memory</p>\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn text_files_are_stored_compressed_and_every_reader_gets_plain_bytes() {
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--gzip", "--attr-ttl", "0"]);
    let plain_mount = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let html = page(400);
    let logo: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(m.p("index.html"), &html).unwrap();
    std::fs::write(m.p("small.css"), b"body { color: red }").unwrap();
    std::fs::write(m.p("logo.png"), &logo).unwrap();

    let (flags, stored) = raw_item(&mc, &format!("{PREFIX}/index.html"));
    assert_eq!(flags, 2);
    assert!(
        stored.len() * 5 < html.len(),
        "{} of {}",
        stored.len(),
        html.len()
    );
    assert_eq!(gunzip(&stored), html);
    assert_eq!(raw_item(&mc, &format!("{PREFIX}/small.css")).0, 0);
    assert_eq!(
        raw_item(&mc, &format!("{PREFIX}/logo.png")),
        (0, logo.clone())
    );

    // Every reader gets the plain bytes: this mount, one without --gzip.
    assert_eq!(std::fs::read(m.p("index.html")).unwrap(), html);
    assert_eq!(std::fs::read(plain_mount.p("index.html")).unwrap(), html);
    assert_eq!(
        std::fs::metadata(plain_mount.p("index.html"))
            .unwrap()
            .len(),
        html.len() as u64
    );

    // Renamed and linked, it stays compressed at its new names and reads back the same.
    std::fs::create_dir(m.p("docs")).unwrap();
    std::fs::rename(m.p("index.html"), m.p("docs/index.html")).unwrap();
    std::fs::hard_link(m.p("docs/index.html"), m.p("docs/copy.html")).unwrap();
    for name in ["docs/index.html", "docs/copy.html"] {
        let (flags, stored) = raw_item(&mc, &format!("{PREFIX}/{name}"));
        assert_eq!((flags, gunzip(&stored)), (2, html.clone()), "{name}");
        assert_eq!(std::fs::read(plain_mount.p(name)).unwrap(), html);
    }
    // A mount without --gzip writes plain bytes.
    std::fs::write(plain_mount.p("plain.html"), &html).unwrap();
    assert_eq!(
        raw_item(&mc, &format!("{PREFIX}/plain.html")),
        (0, html.clone())
    );

    // nginx: compressed to a client that accepts gzip, plain to one that does not.
    let nginx = Nginx::for_store(&mc.addr(), PREFIX, &[]);
    let (status, headers, body) =
        nginx.request("GET", "/docs/index.html", &[("Accept-Encoding", "gzip")]);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    assert_eq!(header(&headers, "vary"), Some("Accept-Encoding"));
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(gunzip(&body), html);
    let (status, headers, body) = nginx.get("/docs/index.html");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), None);
    assert_eq!(body, html);
    let (status, _, body) = nginx.request("GET", "/logo.png", &[("Accept-Encoding", "gzip")]);
    assert_eq!((status, body), (200, logo.clone()));

    // The tools read plain bytes too.
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("out");
    let (code, out) = memfis_on("export", &[target.to_str().unwrap()], &mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read(target.join("docs/index.html")).unwrap(), html);
    assert_eq!(std::fs::read(target.join("logo.png")).unwrap(), logo);
}

#[test]
fn load_with_gzip_stores_text_compressed() {
    let mc = Memcached::start();
    let src = tempfile::tempdir().unwrap();
    let html = page(300);
    std::fs::write(src.path().join("a.html"), &html).unwrap();
    std::fs::write(src.path().join("b.bin"), &html).unwrap();
    let (code, out) = memfis_on(
        "load",
        &[src.path().to_str().unwrap(), "--gzip"],
        &mc.addr(),
        PREFIX,
    );
    assert_eq!(code, 0, "{out}");
    let (flags, stored) = raw_item(&mc, &format!("{PREFIX}/a.html"));
    assert_eq!((flags, gunzip(&stored)), (2, html.clone()));
    assert_eq!(raw_item(&mc, &format!("{PREFIX}/b.bin")), (0, html.clone()));
    // Loading again finds nothing to do, and check sees the plain sizes.
    let (code, out) = memfis_on(
        "load",
        &[src.path().to_str().unwrap(), "--gzip"],
        &mc.addr(),
        PREFIX,
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
}
