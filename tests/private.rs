//! Files nginx must not serve (others may not read them) or cannot (the path makes a key over
//! 250 bytes) keep their bytes at a private key: real memcached, FUSE mounts and nginx.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;

const PREFIX: &str = "memfis://private";

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn private_key(path: &std::path::Path) -> Vec<u8> {
    let ino = std::fs::metadata(path).unwrap().ino();
    format!("{PREFIX}%d{ino}").into_bytes()
}

/// chmod withdraws a file from nginx and serves it again, with the same bytes; another mount
/// sees the same; a file created unreadable by others is never served.
#[test]
fn chmod_withdraws_and_serves_a_file() {
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    // Without caches, so it sees the first mount's changes at once.
    let other = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let nginx = Nginx::for_store(&mc.addr(), PREFIX, &[]);
    std::fs::create_dir(m.p("site")).unwrap();
    std::fs::write(m.p("site/page.html"), b"<p>hello</p>").unwrap();
    assert_eq!(nginx.get("/site/page.html").2, b"<p>hello</p>");

    chmod(&m.p("site/page.html"), 0o600);
    assert_eq!(nginx.get("/site/page.html").0, 404);
    assert!(
        mc.get(format!("{PREFIX}/site/page.html").as_bytes())
            .is_none()
    );
    assert_eq!(
        mc.get(&private_key(&m.p("site/page.html"))).unwrap(),
        b"<p>hello</p>"
    );
    assert_eq!(
        std::fs::read(other.p("site/page.html")).unwrap(),
        b"<p>hello</p>"
    );
    // Written while private: still not served.
    std::fs::write(other.p("site/page.html"), b"<p>secret</p>").unwrap();
    assert_eq!(nginx.get("/site/page.html").0, 404);
    let out = assert_check_clean(&mc, PREFIX);
    assert!(
        out.contains("1 names of files others may not read"),
        "{out}"
    );

    chmod(&other.p("site/page.html"), 0o644);
    assert_eq!(nginx.get("/site/page.html").2, b"<p>secret</p>");
    assert!(mc.get(&private_key(&m.p("site/page.html"))).is_none());
    assert_eq!(
        std::fs::read(m.p("site/page.html")).unwrap(),
        b"<p>secret</p>"
    );

    // Created 0600 (a PHP config, say): never served, readable through the mount.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(m.p("site/config.php"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"<?php $db_password = 'x';").unwrap();
    drop(f);
    assert!(
        mc.get(format!("{PREFIX}/site/config.php").as_bytes())
            .is_none()
    );
    assert_eq!(
        std::fs::read(other.p("site/config.php")).unwrap(),
        b"<?php $db_password = 'x';"
    );
    // Renamed, and its directory renamed: still private, never at a served key.
    std::fs::rename(m.p("site/config.php"), m.p("site/settings.php")).unwrap();
    std::fs::rename(m.p("site"), m.p("www")).unwrap();
    assert!(
        mc.get(format!("{PREFIX}/www/settings.php").as_bytes())
            .is_none()
    );
    assert_eq!(nginx.get("/www/page.html").2, b"<p>secret</p>");
    assert_eq!(
        std::fs::read(other.p("www/settings.php")).unwrap(),
        b"<?php $db_password = 'x';"
    );
    // Removed: its private key goes with it.
    let key = private_key(&m.p("www/settings.php"));
    assert!(mc.get(&key).is_some());
    std::fs::remove_file(m.p("www/settings.php")).unwrap();
    assert!(mc.get(&key).is_none());
    assert_check_clean(&mc, PREFIX);
}

use std::os::unix::fs::OpenOptionsExt;

/// `cp -a` of a tree with private files (created 0600 and opened up at the end, as cp does):
/// nginx serves exactly the files others may read, the mount holds every byte.
#[test]
fn cp_a_serves_only_what_others_may_read() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    let nginx = Nginx::for_store(&mc.addr(), PREFIX, &[]);
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    std::fs::create_dir_all(s.join("app/secret")).unwrap();
    for (name, mode) in [
        ("app/index.html", 0o644),
        ("app/style.css", 0o664),
        ("app/config.php", 0o600),
        ("app/group-only.txt", 0o640),
        ("app/secret/keys.txt", 0o644),
    ] {
        std::fs::write(s.join(name), name.as_bytes()).unwrap();
        chmod(&s.join(name), mode);
    }
    chmod(&s.join("app/secret"), 0o700);
    sh(&format!(
        "cp -a {}/app {}/",
        s.display(),
        m.path().display()
    ));
    sh(&format!(
        "diff -r {}/app {}/app",
        s.display(),
        m.path().display()
    ));
    assert_eq!(nginx.get("/app/index.html").2, b"app/index.html");
    assert_eq!(nginx.get("/app/style.css").2, b"app/style.css");
    // (nginx-config refuses `.php` sources with 403 anyway; the bytes are not in the store.)
    assert!(
        mc.get(format!("{PREFIX}/app/config.php").as_bytes())
            .is_none()
    );
    assert_eq!(nginx.get("/app/group-only.txt").0, 404);
    // Directory search bits are not honoured (docs/serving.md says why).
    assert_eq!(nginx.get("/app/secret/keys.txt").2, b"app/secret/keys.txt");
    let out = assert_check_clean(&mc, PREFIX);
    assert!(
        out.contains("2 names of files others may not read"),
        "{out}"
    );
}

/// A file whose data key would pass 250 bytes keeps its bytes at its private key, and moves
/// to its served key when a rename makes the path short enough, and back.
#[test]
fn long_paths_keep_their_bytes_at_a_private_key() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    // Without caches, so it sees the first mount's changes at once.
    let other = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let nginx = Nginx::for_store(&mc.addr(), PREFIX, &[]);
    // PREFIX (16) + "/" + name: 233 bytes of name make exactly 250.
    let fits = "n".repeat(233);
    std::fs::write(m.p(&fits), b"fits").unwrap();
    assert_eq!(nginx.get(&format!("/{fits}")).2, b"fits");
    let long = "n".repeat(255);
    std::fs::write(m.p(&long), b"long").unwrap();
    assert_eq!(std::fs::read(other.p(&long)).unwrap(), b"long");
    assert_eq!(mc.get(&private_key(&m.p(&long))).unwrap(), b"long");
    // Escaping counts: 80 spaces are 240 bytes once escaped.
    let spaces = " ".repeat(80);
    std::fs::write(m.p(&spaces), b"spaces").unwrap();
    assert_eq!(std::fs::read(other.p(&spaces)).unwrap(), b"spaces");
    // Deep paths: 15 directories of 255 bytes, a file at the bottom (a path of 3,860 bytes).
    let deep: String = (0..15)
        .map(|i| format!("{}/", &format!("{i:x}").repeat(255)[..255]))
        .collect();
    std::fs::create_dir_all(m.p(&deep)).unwrap();
    std::fs::write(m.p(&format!("{deep}f")), b"deep").unwrap();
    assert_eq!(
        std::fs::read(other.p(&format!("{deep}f"))).unwrap(),
        b"deep"
    );
    // A rename to a short path serves it; back to the long one withdraws it.
    std::fs::rename(m.p(&long), m.p("short.txt")).unwrap();
    assert_eq!(nginx.get("/short.txt").2, b"long");
    assert!(mc.get(&private_key(&m.p("short.txt"))).is_none());
    std::fs::rename(m.p("short.txt"), m.p(&long)).unwrap();
    assert_eq!(nginx.get("/short.txt").0, 404);
    assert_eq!(std::fs::read(other.p(&long)).unwrap(), b"long");
    // A hard link at a short path is served while the long name keeps the private copy.
    std::fs::hard_link(m.p(&long), m.p("linked.txt")).unwrap();
    assert_eq!(nginx.get("/linked.txt").2, b"long");
    std::fs::write(other.p("linked.txt"), b"both").unwrap();
    assert_eq!(std::fs::read(m.p(&long)).unwrap(), b"both");
    assert_eq!(nginx.get("/linked.txt").2, b"both");
    let out = assert_check_clean(&mc, PREFIX);
    assert!(out.contains("names too long for a key"), "{out}");
    // A 256-byte name is refused as everywhere.
    let e = std::fs::write(m.p(&"n".repeat(256)), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
}

/// chmod o-r while this mount holds a write handle withdraws the file at once, as without
/// one: its served key goes before chmod returns, bytes written meanwhile never reach it.
/// chmod o+r with a write handle open serves the file at the next flush (close or fsync),
/// with the bytes written by then.
#[test]
fn chmod_with_a_write_handle_open_withdraws_at_once_and_serves_at_close() {
    use std::io::Write;
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    let served = format!("{PREFIX}/f").into_bytes();
    std::fs::write(m.p("f"), b"public").unwrap();
    assert_eq!(mc.get(&served).unwrap(), b"public");

    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("f"))
        .unwrap();
    chmod(&m.p("f"), 0o600);
    assert!(mc.get(&served).is_none(), "still served after chmod 600");
    assert_eq!(mc.get(&private_key(&m.p("f"))).unwrap(), b"public");
    w.write_all(b" then secret").unwrap();
    w.sync_all().unwrap();
    assert!(mc.get(&served).is_none(), "served after a write");
    drop(w);
    assert!(mc.get(&served).is_none(), "served after close");
    assert_eq!(
        mc.get(&private_key(&m.p("f"))).unwrap(),
        b"public then secret"
    );
    assert_eq!(m.p("f").metadata().unwrap().mode() & 0o777, 0o600);

    // The same from a handle of its own (fchmod) with unpublished bytes in the buffer.
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("f"))
        .unwrap();
    chmod(&m.p("f"), 0o644);
    w.write_all(b"!").unwrap();
    assert!(mc.get(&served).is_none(), "served before the flush");
    w.sync_all().unwrap();
    assert_eq!(mc.get(&served).unwrap(), b"public then secret!");
    w.write_all(b"?").unwrap();
    w.set_permissions(std::fs::Permissions::from_mode(0o640))
        .unwrap();
    assert!(mc.get(&served).is_none(), "still served after fchmod 640");
    drop(w);
    assert!(mc.get(&served).is_none());
    assert_eq!(
        mc.get(&private_key(&m.p("f"))).unwrap(),
        b"public then secret!?"
    );
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"public then secret!?");
    assert_check_clean(&mc, PREFIX);
}
