//! `memfis check --repair` with real memcached and FUSE: damage done on purpose (a record, a
//! log chunk, a counter and a data key deleted, a stray key added; a mount killed mid-rename)
//! is repaired while a mount stays live, and `memfis check` is clean afterwards.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;

fn repair(server: &str, prefix: &str) -> (i32, String) {
    memfis_on("check", &["--repair"], server, prefix)
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn repair_fixes_damage_done_on_purpose_while_a_mount_is_live() {
    const PREFIX: &str = "memfis://repair";
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    std::fs::create_dir_all(m.p("d")).unwrap();
    std::fs::create_dir_all(m.p("e/sub")).unwrap();
    for (path, bytes) in [
        ("d/a", "aaa"),
        ("d/b", "bbb"),
        ("d/c", "ccc"),
        ("e/x", "xxx"),
        ("e/y", "yyy"),
        ("e/sub/z", "zzz"),
    ] {
        std::fs::write(m.p(path), bytes).unwrap();
    }
    assert_eq!(memfis_check(&mc.addr(), PREFIX).0, 0);

    let ino = |p: &str| std::fs::metadata(m.p(p)).unwrap().ino();
    let (b, e) = (ino("d/b"), ino("e"));
    mc.delete(format!("{PREFIX}%i{b}").as_bytes()); // a lost inode record
    mc.delete(format!("{PREFIX}%l{e}.0").as_bytes()); // a lost log chunk
    mc.delete(format!("{PREFIX}%next-ino").as_bytes()); // a lost counter
    mc.delete(format!("{PREFIX}/d/a").as_bytes()); // a lost data key
    mc.set(format!("{PREFIX}/stray").as_bytes(), b"left behind"); // garbage nginx serves
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 4, "{out}");

    let (code, out) = repair(&mc.addr(), PREFIX);
    assert_eq!(code, 1, "problems repaired, none left: {out}");
    for what in [
        "/d/a: removed the file",
        "inode counter raised",
        "re-added a missing log piece",
        "/stray: deleted a key no name reaches",
    ] {
        assert!(out.contains(what), "{what:?} in {out}");
    }
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 0, "check after repair: {out}");

    // The live mount sees the repaired tree and keeps working.
    assert_eq!(names(&m.p("d")), ["c"]);
    assert_eq!(names(&m.p("e")), ["sub", "x", "y"]);
    assert_eq!(std::fs::read(m.p("e/sub/z")).unwrap(), b"zzz");
    std::fs::write(m.p("e/new"), "new").unwrap();
    std::fs::write(m.p("d/b"), "again").unwrap();
    assert_eq!(
        mc.get(format!("{PREFIX}/e/new").as_bytes()).unwrap(),
        b"new"
    );
    assert_eq!(mc.get(format!("{PREFIX}/stray").as_bytes()), None);
    assert_eq!(memfis_check(&mc.addr(), PREFIX).0, 0);

    // Nothing to do: exit 0.
    let (code, out) = repair(&mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn repair_finishes_a_directory_rename_cut_by_kill_9() {
    const PREFIX: &str = "memfis://repair-killed";
    const FILES: usize = 1000;
    let mc = Memcached::start();
    kill_mount_mid_dir_rename(&mc, PREFIX, FILES);

    // Repair waits for the dead mount's liveness key to expire, then completes the rename.
    let (code, out) = repair(&mc.addr(), PREFIX);
    assert!(code == 0 || code == 1, "{out}");
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 0, "check after repair: {out}");
    let p2 = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let top = names(p2.path());
    assert!(top == ["moved"] || top == ["site"], "{top:?}");
    assert_eq!(names(&p2.p(&top[0])).len(), FILES);
    for i in (0..FILES).step_by(97) {
        let path = format!("{}/f{i}", top[0]);
        assert_eq!(
            std::fs::read(p2.p(&path)).unwrap(),
            format!("{i}").as_bytes()
        );
    }
}
