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

    // Repair waits for the dead mount's liveness key to expire, then completes the rename:
    // a change it made (exit 1), even when nothing else was left to fix.
    let (code, out) = repair(&mc.addr(), PREFIX);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("completed the unfinished operation"), "{out}");
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

/// `set KEY FLAGS 0 N` of `value`, as a person would by hand.
fn set_by_hand(mc: &Memcached, key: &str, flags: u32, value: &[u8]) {
    let header = format!("set {key} {flags} 0 {}\r\n", value.len());
    let reply = mc.raw(&[header.as_bytes(), value, b"\r\n"].concat());
    assert!(
        reply.starts_with(b"STORED"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

#[test]
fn served_keys_overwritten_by_hand_are_found_and_repaired() {
    const PREFIX: &str = "memfis://by-hand";
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--gzip"]);
    let page = "<p>served compressed</p>\n".repeat(200);
    std::fs::write(m.p("plain.txt"), "hello world\n").unwrap();
    std::fs::write(m.p("page.html"), &page).unwrap();
    std::fs::write(m.p("a"), "linked").unwrap();
    std::fs::hard_link(m.p("a"), m.p("b")).unwrap();
    assert_check_clean(&mc, PREFIX);

    // Other bytes of another length; plain bytes flagged gzip (nginx would send them as
    // Content-Encoding: gzip); one name of a hard-linked file.
    set_by_hand(&mc, &format!("{PREFIX}/plain.txt"), 0, b"xyz");
    set_by_hand(&mc, &format!("{PREFIX}/page.html"), 2, b"not gzip at all");
    set_by_hand(&mc, &format!("{PREFIX}/b"), 0, b"other");
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 4, "{out}");
    for (path, what) in [
        ("/plain.txt", "data key holds 3 bytes, the record says 12"),
        ("/page.html", "flagged gzip but does not decompress"),
        ("/b", "data key holds 5 bytes, the record says 6"),
    ] {
        let line = out.lines().find(|l| l.starts_with(&format!("{path}: ")));
        let line = line.unwrap_or_else(|| panic!("{path} in {out}"));
        assert!(line.contains(what), "{line}");
        assert!(line.contains(&format!("(key {PREFIX}{path})")), "{line}");
    }

    let (code, out) = repair(&mc.addr(), PREFIX);
    assert_eq!(code, 1, "{out}");
    assert_check_clean(&mc, PREFIX);
    // The record follows the bytes nginx serves; the other name gets its file's bytes back;
    // bytes that cannot be decoded are lost with their file.
    assert_eq!(std::fs::read(m.p("plain.txt")).unwrap(), b"xyz");
    assert_eq!(std::fs::read(m.p("b")).unwrap(), b"linked");
    assert_eq!(mc.get(format!("{PREFIX}/b").as_bytes()).unwrap(), b"linked");
    assert!(!m.p("page.html").exists());
    assert_eq!(mc.get(format!("{PREFIX}/page.html").as_bytes()), None);
}

#[test]
fn verify_reads_the_bytes_every_name_serves() {
    const PREFIX: &str = "memfis://verify";
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(m.p("a"), "same bytes").unwrap();
    std::fs::hard_link(m.p("a"), m.p("b")).unwrap();
    set_by_hand(&mc, &format!("{PREFIX}/b"), 0, b"SAME BYTES");
    // Sizes agree: only --verify reads the bytes.
    assert_check_clean(&mc, PREFIX);
    let (code, out) = memfis_on("check", &["--verify"], &mc.addr(), PREFIX);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(&format!(
            "/b: data key holds other bytes than /a (same size) (key {PREFIX}/b)"
        )),
        "{out}"
    );
    let (code, out) = memfis_on("check", &["--repair", "--verify"], &mc.addr(), PREFIX);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        mc.get(format!("{PREFIX}/b").as_bytes()).unwrap(),
        b"same bytes"
    );
    let (code, out) = memfis_on("check", &["--verify"], &mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn chunks_a_killed_writer_left_are_found_and_freed() {
    const PREFIX: &str = "memfis://dd-killed";
    let mc = Memcached::with_args(&["-m", "256", "-I", "1m"]);
    let mut m = Mount::new(&[mc.addr()], PREFIX);
    let dd = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", m.p("big").display()))
        .args(["bs=1M", "count=200"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _dd = ChildGuard(dd);
    // Kill the daemon once chunks are going out (every chunk is an item of its own).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while mc.stat("curr_items") < 40 {
        assert!(std::time::Instant::now() < deadline, "no chunks written");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = m.signal_and_wait(libc::SIGKILL);
    drop(m); // unmounts the dead mount
    let chunks = mc.stat("curr_items");

    // Its liveness key expires 10 s after its last heartbeat: until then a write may be in
    // progress, and check does not call the chunks leaked.
    std::thread::sleep(std::time::Duration::from_secs(11));
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("chunk its file's record does not name"),
        "{out}"
    );
    let (code, out) = repair(&mc.addr(), PREFIX);
    assert_eq!(code, 1, "{out}");
    assert_check_clean(&mc, PREFIX);
    let chunk_keys = format!("{PREFIX}%k");
    let left: Vec<String> = mc
        .keys()
        .iter()
        .filter(|k| k.starts_with(chunk_keys.as_bytes()))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    // The file reads as 0 bytes: its record names no chunk, so none may stay.
    assert!(
        left.is_empty(),
        "{chunks} items before repair; chunks left: {left:?}\n{out}"
    );
}

/// A prefix with no tree (mistyped, or a store emptied by a restart) is not "problems": it
/// says so and exits 8, for check and for repair, and writes nothing.
#[test]
fn a_prefix_with_no_tree_is_said_plainly() {
    let mc = Memcached::start();
    for args in [&[][..], &["--repair"][..]] {
        let (code, out) = memfis_on("check", args, &mc.addr(), "memfis://never-made");
        assert_eq!(code, 8, "{args:?}: {out}");
        assert!(out.contains("no memfis tree under prefix"), "{out}");
        assert!(!out.contains("problems"), "{out}");
    }
    assert_eq!(mc.stat("curr_items"), 0, "nothing written");
}
