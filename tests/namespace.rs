//! Atomic namespace changes with real mounts, memcached and FUSE: the reproducers of the
//! namespace issue, each ending with `memfis check` clean (or reporting what it must).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Two mounts of one prefix: `echo A > x; mv x y` on one, `mv y z` on the other, looped.
/// Afterwards every name works on both mounts and the store is sound.
#[test]
fn racing_renames_on_two_mounts_leave_every_name_usable() {
    const PREFIX: &str = "memfis://race";
    let mc = Memcached::start();
    let p1 = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let p2 = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    std::thread::scope(|s| {
        s.spawn(|| {
            while Instant::now() < deadline {
                let _ = std::fs::write(p1.p("x"), b"A\n");
                let _ = std::fs::rename(p1.p("x"), p1.p("y"));
            }
        });
        s.spawn(|| {
            while Instant::now() < deadline {
                let _ = std::fs::rename(p2.p("y"), p2.p("z"));
            }
        });
    });
    for name in ["x", "y", "z"] {
        match std::fs::metadata(p1.p(name)) {
            Ok(_) => assert_eq!(std::fs::read(p1.p(name)).unwrap(), b"A\n"),
            Err(e) => assert_eq!(errno_of(e), libc::ENOENT, "{name}"),
        }
        let _ = std::fs::remove_file(p2.p(name));
        std::fs::write(p2.p(name), b"new").unwrap();
        assert_eq!(std::fs::read(p1.p(name)).unwrap(), b"new");
    }
    assert_check_clean(&mc, PREFIX);
    assert!(
        !p1.log_text().contains("missing record"),
        "{}",
        p1.log_text()
    );
    assert!(
        !p2.log_text().contains("missing record"),
        "{}",
        p2.log_text()
    );
}

/// A directory renamed in a loop on one mount while another writes files inside it: every
/// write that returned success is readable afterwards with the size it had.
#[test]
fn writes_inside_a_directory_another_mount_renames_are_kept() {
    const PREFIX: &str = "memfis://movingdir";
    let mc = Memcached::start();
    let p1 = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let p2 = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    std::fs::create_dir(p1.p("a")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let written = std::thread::scope(|s| {
        s.spawn(|| {
            while Instant::now() < deadline {
                let _ = std::fs::rename(p1.p("a"), p1.p("b"));
                let _ = std::fs::rename(p1.p("b"), p1.p("a"));
            }
        });
        let writer = s.spawn(|| {
            let mut ok = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                i += 1;
                for dir in ["a", "b"] {
                    let name = format!("f{i}");
                    if std::fs::write(p2.p(&format!("{dir}/{name}")), name.as_bytes()).is_ok() {
                        ok.push(name);
                        break;
                    }
                }
            }
            ok
        });
        writer.join().unwrap()
    });
    assert!(!written.is_empty());
    let dir = if p1.p("a").exists() { "a" } else { "b" };
    for name in &written {
        let got = std::fs::read(p1.p(&format!("{dir}/{name}"))).unwrap_or_else(|e| {
            let at = |d: &str| mc.get(format!("{PREFIX}/{d}/{name}").as_bytes());
            panic!(
                "{dir}/{name}: {e}; a: {:?} b: {:?}\n{}\n{}",
                at("a"),
                at("b"),
                p1.log_text(),
                p2.log_text()
            )
        });
        assert_eq!(got, name.as_bytes(), "{dir}/{name}");
        let served = mc.get(format!("{PREFIX}/{dir}/{name}").as_bytes());
        assert_eq!(
            served.as_deref(),
            Some(name.as_bytes()),
            "served {dir}/{name}"
        );
    }
    assert_check_clean(&mc, PREFIX);
}

/// memfis killed (kill -9) in the middle of a directory rename: the next mount completes
/// it once the dead mount's liveness key expires. No data key stays outside the tree.
#[test]
fn a_directory_rename_cut_by_kill_9_is_completed_by_the_next_mount() {
    const PREFIX: &str = "memfis://killed";
    const FILES: usize = 1500;
    let mc = Memcached::start();
    kill_mount_mid_dir_rename(&mc, PREFIX, FILES);
    // The lock is held by a mount that is gone; the next mount completes the rename once
    // the liveness key expires (10 s).
    let p2 = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let names: Vec<String> = std::fs::read_dir(p2.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names == ["moved"] || names == ["site"],
        "one of the two names, not both: {names:?}"
    );
    let dir = &names[0];
    for i in (0..FILES).step_by(97) {
        let want = format!("{i}");
        assert_eq!(
            std::fs::read(p2.p(&format!("{dir}/f{i}"))).unwrap(),
            want.as_bytes()
        );
        assert_eq!(
            mc.get(format!("{PREFIX}/{dir}/f{i}").as_bytes()).as_deref(),
            Some(want.as_bytes())
        );
    }
    assert_check_clean(&mc, PREFIX);
}

#[test]
fn a_store_that_evicts_is_refused_unless_allowed() {
    const PREFIX: &str = "memfis://evicting";
    let mc = evicting_memcached();
    let dir = tempfile::tempdir().unwrap();
    let out = mount_detached(dir.path(), &mc.addr(), PREFIX);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("-M") && err.contains("--allow-evictions"),
        "{err}"
    );
    assert!(!is_mounted(dir.path()));
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--allow-evictions"]);
    std::fs::write(m.p("f"), b"x").unwrap();
    assert!(m.log_text().contains("evicts items"), "{}", m.log_text());
}

#[test]
fn nesting_prefixes_are_refused_in_either_order() {
    let mc = Memcached::start();
    let _outer = Mount::new(&[mc.addr()], "memfis://n");
    let dir = tempfile::tempdir().unwrap();
    let out = mount_detached(dir.path(), &mc.addr(), "memfis://n/b");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nests"));
    let out = mount_detached(dir.path(), &mc.addr(), "memfis://nb");
    assert!(
        out.status.success(),
        "a prefix that only starts alike is fine"
    );
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(dir.path())
        .status();

    let mc2 = Memcached::start();
    let _inner = Mount::new(&[mc2.addr()], "memfis://m/b");
    let out = mount_detached(dir.path(), &mc2.addr(), "memfis://m");
    assert!(!out.status.success());
    assert!(!is_mounted(dir.path()));
}

/// memcached restarted empty under a live mount: EIO with one clear log line, never a
/// silently empty tree or a re-format under the mount.
#[test]
fn a_store_emptied_under_a_mount_gives_eio_and_says_so() {
    const PREFIX: &str = "memfis://emptied";
    let mut mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    std::fs::write(m.p("f"), b"x").unwrap();
    std::fs::create_dir(m.p("d")).unwrap();
    mc.restart();
    // From the first call, before any heartbeat: not an empty tree (ENOENT) for a moment.
    assert_eq!(
        errno_of(std::fs::metadata(m.p("d")).unwrap_err()),
        libc::EIO
    );
    assert_eq!(errno_of(std::fs::read_dir(m.p("")).unwrap_err()), libc::EIO);
    std::thread::sleep(Duration::from_secs(3)); // one heartbeat
    assert_eq!(errno_of(std::fs::read(m.p("f")).unwrap_err()), libc::EIO);
    assert_eq!(
        errno_of(std::fs::write(m.p("g"), b"y").unwrap_err()),
        libc::EIO
    );
    let log = m.log_text();
    assert_eq!(
        log.matches("emptied or replaced under this mount").count(),
        1,
        "{log}"
    );
    assert!(
        mc.get(format!("{PREFIX}%format").as_bytes()).is_none(),
        "not re-formatted"
    );
}

/// Damage found by `memfis check` with path and key, exit status 4; a missing log chunk is
/// EIO for a listing, never an empty one.
#[test]
fn check_names_damage_and_a_missing_log_chunk_is_eio() {
    const PREFIX: &str = "memfis://damage";
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/a"), b"aaa").unwrap();
    std::fs::write(m.p("d/b"), b"bbb").unwrap();
    assert_check_clean(&mc, PREFIX);

    mc.delete(format!("{PREFIX}/d/a").as_bytes());
    mc.set(format!("{PREFIX}/stray").as_bytes(), b"left behind");
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("/d/a") && out.contains("data key is missing"),
        "{out}"
    );
    assert!(
        out.contains("/stray") && out.contains("outside the tree"),
        "{out}"
    );

    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.p("d")).unwrap());
    mc.delete(format!("{PREFIX}%l{ino}.0").as_bytes());
    let listed = std::fs::read_dir(m.p("d")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert_eq!(errno_of(listed.unwrap_err()), libc::EIO);
    assert_eq!(
        errno_of(std::fs::remove_dir(m.p("d")).unwrap_err()),
        libc::EIO,
        "rmdir must not take a missing chunk for an empty directory"
    );
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 4);
    assert!(out.contains(&format!("{PREFIX}%l{ino}.0")), "{out}");
}

/// A rename that would grow the inode record past the item size fails whole: the file
/// stays at its old name, and the next write goes where nginx reads.
#[test]
fn a_rename_refused_with_efbig_moves_nothing() {
    const PREFIX: &str = "memfis://efbig";
    let mc = Memcached::with_args(&["-m", "64", "-I", "1m"]);
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    std::fs::write(m.p("r"), b"one").unwrap();
    // Fill the record with extended attributes until it is refused.
    let value = vec![b'v'; 60_000];
    let mut filled = false;
    for i in 0..40 {
        if let Err(e) = xattr::set(m.p("r"), format!("user.a{i}"), &value) {
            assert_eq!(errno_of(e), libc::EFBIG);
            filled = true;
            break;
        }
    }
    assert!(filled, "the record never reached the item size");
    // Shrink it to just below the limit: one more long name must not fit.
    let long = "s".repeat(200);
    let mut renamed = std::fs::rename(m.p("r"), m.p(&long));
    let mut i = 0;
    while renamed.is_ok() {
        std::fs::rename(m.p(&long), m.p("r")).unwrap();
        xattr::set(m.p("r"), format!("user.pad{i}"), &[b'p'; 150]).unwrap();
        renamed = std::fs::rename(m.p("r"), m.p(&long));
        i += 1;
        assert!(i < 500, "never refused");
    }
    assert_eq!(errno_of(renamed.unwrap_err()), libc::EFBIG);
    assert_eq!(std::fs::read(m.p("r")).unwrap(), b"one");
    assert!(!m.p(&long).exists());
    std::fs::write(m.p("r"), b"two").unwrap();
    assert_eq!(
        mc.get(format!("{PREFIX}/r").as_bytes()).as_deref(),
        Some(&b"two"[..])
    );
    assert_check_clean(&mc, PREFIX);
}

/// The store stalls (SIGSTOP) between a file's create and its close: the close fails with
/// EIO within the timeout; once the store is back the file is listed, and removing its
/// directory leaves no data key behind.
#[test]
fn a_store_stalled_during_the_first_publish_leaves_nothing_behind() {
    const PREFIX: &str = "memfis://stalled";
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0", "--timeout", "1"]);
    std::fs::create_dir(m.p("d")).unwrap();
    let mut f = std::fs::File::create(m.p("d/f")).unwrap();
    std::io::Write::write_all(&mut f, b"payload").unwrap();
    mc.pause();
    let started = Instant::now();
    let closed = f.sync_all();
    mc.resume();
    assert_eq!(errno_of(closed.unwrap_err()), libc::EIO);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(f);
    std::thread::sleep(Duration::from_millis(500));
    let names: Vec<_> = std::fs::read_dir(m.p("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["f"]);
    std::fs::remove_dir_all(m.p("d")).unwrap();
    assert!(mc.get(format!("{PREFIX}/d/f").as_bytes()).is_none());
    assert_check_clean(&mc, PREFIX);
}
