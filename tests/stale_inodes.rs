//! The kernel calls by inode numbers it looked up earlier. When another mount removed the
//! name meanwhile, every such call must answer ENOENT as a local filesystem does for a name
//! that went away, never EIO (which means damage or a store fault).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// `mkdir A/d; echo x > A/d/y; stat B/d/y; rm A/d/y; <op> B/d/y`, for each operation that
/// goes by the inode the kernel cached.
#[test]
fn calls_on_a_name_another_mount_removed_are_enoent() {
    const PREFIX: &str = "memfis://stale";
    let mc = Memcached::start();
    // B's kernel keeps the inode it looked up for the attribute TTL (1 s): each case runs
    // well inside it.
    let a = Mount::new(&[mc.addr()], PREFIX);
    let b = Mount::new(&[mc.addr()], PREFIX);
    type Op = fn(&std::path::Path) -> i32;
    let ops: [(&str, Op); 6] = [
        ("chmod", |p| {
            errno_of(std::fs::set_permissions(
                p,
                std::fs::Permissions::from_mode(0o600),
            ))
        }),
        ("utimens", |p| {
            errno_of(
                std::fs::File::options()
                    .write(true)
                    .open(p)
                    .and_then(|f| f.set_modified(std::time::SystemTime::UNIX_EPOCH)),
            )
        }),
        ("setxattr", |p| errno_of(xattr::set(p, "user.k", b"v"))),
        ("getxattr", |p| errno_of(xattr::get(p, "user.k"))),
        ("listxattr", |p| errno_of(xattr::list(p))),
        ("chown", |p| {
            errno_of(std::os::unix::fs::chown(p, Some(0), Some(0)))
        }),
    ];
    // Made on A before B looks: B's cached listings (1 s, the attribute TTL) predate them.
    for i in 0..ops.len() {
        std::fs::create_dir(a.p(&format!("d{i}"))).unwrap();
        std::fs::write(a.p(&format!("d{i}/y")), b"x\n").unwrap();
    }
    std::fs::create_dir(a.p("gone")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    for (i, (what, op)) in ops.iter().enumerate() {
        let name = format!("d{i}/y");
        std::fs::metadata(b.p(&name)).unwrap();
        std::fs::remove_file(a.p(&name)).unwrap();
        assert_eq!(op(&b.p(&name)), libc::ENOENT, "{what} on a removed name");
    }
    // A rename into a directory another mount removed.
    std::fs::write(b.p("f"), b"f").unwrap();
    std::fs::metadata(b.p("gone")).unwrap();
    std::fs::remove_dir(a.p("gone")).unwrap();
    let e = errno_of(std::fs::rename(b.p("f"), b.p("gone/f")));
    assert_eq!(e, libc::ENOENT, "rename into a removed directory");
    let logs = b.log_text();
    assert!(!logs.contains("missing record"), "{logs}");
    drop((a, b));
    assert_check_clean(&mc, PREFIX);
}

/// `echo a > A/x; cat B/x; rm A/x; echo b > B/x`: B's kernel still has the name cached for
/// the removed file. The create must make a new file, as on a local filesystem (memfis
/// answers ESTALE for the removed inode, and the kernel looks the name up again).
#[test]
fn a_create_over_a_name_another_mount_removed_makes_the_file() {
    const PREFIX: &str = "memfis://stale-create";
    let mc = Memcached::start();
    let a = Mount::new(&[mc.addr()], PREFIX);
    let b = Mount::new(&[mc.addr()], PREFIX);
    std::fs::create_dir(a.p("t")).unwrap();
    for round in 0..5 {
        std::fs::write(a.p(&format!("t/x{round}.html")), b"a\n").unwrap();
    }
    // B's cached listings (1 s) predate the files.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    for round in 0..5 {
        let name = format!("t/x{round}.html");
        assert_eq!(std::fs::read(b.p(&name)).unwrap(), b"a\n");
        std::fs::remove_file(a.p(&name)).unwrap();
        // Within B's attribute TTL (1 s): its kernel still holds the name.
        std::fs::write(b.p(&name), b"b\n").unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(std::fs::read(b.p(&name)).unwrap(), b"b\n");
    }
    drop((a, b));
    assert_check_clean(&mc, PREFIX);
}

/// An open the kernel cannot redirect by looking the name up again (reopening
/// `/proc/self/fd/N`) of a file another mount removed: memfis answers ESTALE, the kernel
/// retries once with the same inode, and that second miss is ENOENT, never ESTALE at the
/// caller.
#[test]
fn reopening_a_file_another_mount_removed_is_enoent_not_estale() {
    const PREFIX: &str = "memfis://stale-reopen";
    let mc = Memcached::start();
    let a = Mount::new(&[mc.addr()], PREFIX);
    let b = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(a.p("x"), b"a\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let held = std::fs::File::open(b.p("x")).unwrap();
    drop(held);
    // B's kernel keeps the dentry (and its inode) for the entry TTL; only O_PATH keeps the
    // inode without a memfis open file.
    let path_fd = nix::fcntl::open(
        &b.p("x"),
        nix::fcntl::OFlag::O_PATH,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    std::fs::remove_file(a.p("x")).unwrap();
    let proc_path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&path_fd)
    );
    let e = errno_of(std::fs::File::open(&proc_path));
    assert_eq!(e, libc::ENOENT, "reopening a removed file through /proc");
    drop(path_fd);
    drop((a, b));
    assert_check_clean(&mc, PREFIX);
}
