//! Long names (keyed by SHA-256 of the name, the name kept in the entry; docs/store-layout.md,
//! "Long names") through a real FUSE mount on real memcached. No two names with one SHA-256
//! are known, so the state a collision would leave is written by hand: one name's hashed entry
//! key is given the other name's entry. The mount must then never let the one name reach the
//! other's file.

mod common;

use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

use common::*;
use memfis_fs::KeyLayout;

const PREFIX: &str = "memfis://long-names";

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap_or(0)
}

fn open_with(path: &std::path::Path, create_new: bool) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o644);
    match create_new {
        true => o.create_new(true),
        false => o.create(true).truncate(true),
    };
    o.open(path)
}

#[test]
fn a_colliding_long_name_never_reaches_the_other_file() {
    let mc = Memcached::start();
    let keys = KeyLayout::new(PREFIX).unwrap();
    let m = Mount::new(&[mc.addr()], PREFIX);
    let (a, b) = ("a".repeat(240), "b".repeat(240));

    // 1. A victim's file A exists; B's key is made to hold A's entry.
    std::fs::create_dir(m.p("pub")).unwrap();
    let pub_dir = std::fs::metadata(m.p("pub")).unwrap().ino();
    let (pa, pb) = (m.p(&format!("pub/{a}")), m.p(&format!("pub/{b}")));
    std::fs::write(&pa, b"victim").unwrap();
    std::fs::write(m.p("pub/x"), b"x").unwrap();
    let (ka, kb) = (
        keys.entry(pub_dir, a.as_bytes()),
        keys.entry(pub_dir, b.as_bytes()),
    );
    let entry_a = mc.get(&ka).expect("A's hashed entry");
    let a_ino = std::fs::metadata(&pa).unwrap().ino();
    assert_eq!(entry_a, format!("{a_ino}/{a}").as_bytes());
    mc.set(&kb, &entry_a);

    assert_eq!(
        std::fs::metadata(&pb).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(errno_of(open_with(&pb, true)), libc::ENAMETOOLONG);
    assert_eq!(errno_of(open_with(&pb, false)), libc::ENAMETOOLONG);
    assert_eq!(errno_of(std::fs::write(&pb, b"x")), libc::ENAMETOOLONG);
    assert_eq!(
        errno_of(std::fs::rename(m.p("pub/x"), &pb)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(std::fs::hard_link(m.p("pub/x"), &pb)),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno_of(std::fs::create_dir(&pb)), libc::ENAMETOOLONG);
    assert_eq!(errno_of(std::fs::remove_file(&pb)), libc::ENOENT);
    assert_eq!(std::fs::read(&pa).unwrap(), b"victim");
    assert_eq!(std::fs::read(m.p("pub/x")).unwrap(), b"x");
    assert_eq!(mc.get(&ka).unwrap(), entry_a);
    assert_eq!(mc.get(&kb).unwrap(), entry_a);
    assert!(
        m.log_text().contains("holds another name"),
        "{}",
        m.log_text()
    );

    // 2. A sticky world-writable directory: another user's file B is there first, and the
    // key of the name a victim then writes (A) holds B's entry. The victim's bytes never
    // reach B.
    std::fs::create_dir(m.p("tmp")).unwrap();
    std::fs::set_permissions(m.p("tmp"), PermissionsExt::from_mode(0o1777)).unwrap();
    let tmp_dir = std::fs::metadata(m.p("tmp")).unwrap().ino();
    let (ta, tb) = (m.p(&format!("tmp/{a}")), m.p(&format!("tmp/{b}")));
    std::fs::write(&tb, b"planted").unwrap();
    let entry_b = mc.get(&keys.entry(tmp_dir, b.as_bytes())).unwrap();
    mc.set(&keys.entry(tmp_dir, a.as_bytes()), &entry_b);
    assert_eq!(
        errno_of(std::fs::write(&ta, b"the victim's secret")),
        libc::ENAMETOOLONG
    );
    assert_eq!(std::fs::read(&tb).unwrap(), b"planted");
    assert_eq!(
        std::fs::metadata(&ta).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // The check finds the two keys no name reaches; repair deletes them and nothing else.
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 4, "{out}");
    assert_eq!(
        out.matches("directory entry its directory does not list")
            .count(),
        2,
        "{out}"
    );
    let (code, out) = memfis_on("check", &["--repair"], &mc.addr(), PREFIX);
    assert_eq!(code, 1, "{out}");
    assert_check_clean(&mc, PREFIX);
    assert!(mc.get(&kb).is_none());
    // Now B is a name like any other, and A's bytes are still A's.
    std::fs::write(&pb, b"b's own").unwrap();
    assert_eq!(std::fs::read(&pb).unwrap(), b"b's own");
    assert_eq!(std::fs::read(&pa).unwrap(), b"victim");
    std::fs::write(&ta, b"the victim's own").unwrap();
    assert_eq!(std::fs::read(&ta).unwrap(), b"the victim's own");
    assert_eq!(std::fs::read(&tb).unwrap(), b"planted");
    assert_check_clean(&mc, PREFIX);
}
