//! Local-filesystem behaviour through a real FUSE mount over real memcached.

mod common;

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

const PREFIX: &str = "memfis://posix";

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let a = CString::new(from.as_os_str().as_bytes()).unwrap();
    let b = CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated paths; AT_FDCWD resolves them as given.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn create_open_flags_and_offsets() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    let f = m.p("f");
    std::fs::write(&f, b"hello").unwrap();
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&f)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let mut a = OpenOptions::new().append(true).open(&f).unwrap();
    a.write_all(b" world").unwrap();
    drop(a);
    assert_eq!(std::fs::read(&f).unwrap(), b"hello world");
    let mut rw = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    rw.seek(SeekFrom::Start(6)).unwrap();
    rw.write_all(b"W").unwrap();
    rw.seek(SeekFrom::Start(4)).unwrap();
    let mut buf = [0u8; 4];
    rw.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"o Wo");
    drop(rw);
    let t = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .unwrap();
    drop(t);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
    assert_eq!(mc.get(b"memfis://posix/f").unwrap(), b"");
}

#[test]
fn directories_rename_and_links() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/x"), b"x").unwrap();
    assert_eq!(
        errno_of(std::fs::remove_dir(m.p("d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(std::fs::create_dir(m.p("d")).unwrap_err()),
        libc::EEXIST
    );
    // rename over an existing file
    std::fs::write(m.p("y"), b"y").unwrap();
    std::fs::rename(m.p("y"), m.p("d/x")).unwrap();
    assert_eq!(std::fs::read(m.p("d/x")).unwrap(), b"y");
    assert!(!m.p("y").exists());
    assert_eq!(mc.get(b"memfis://posix/d/x").unwrap(), b"y");
    assert!(mc.get(b"memfis://posix/y").is_none());
    // RENAME_NOREPLACE and RENAME_EXCHANGE
    std::fs::write(m.p("a"), b"A").unwrap();
    std::fs::write(m.p("b"), b"B").unwrap();
    assert_eq!(
        renameat2(&m.p("a"), &m.p("b"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    renameat2(&m.p("a"), &m.p("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(std::fs::read(m.p("a")).unwrap(), b"B");
    assert_eq!(std::fs::read(m.p("b")).unwrap(), b"A");
    assert_eq!(mc.get(b"memfis://posix/a").unwrap(), b"B");
    assert_eq!(mc.get(b"memfis://posix/b").unwrap(), b"A");
    // a directory cannot move below itself
    assert_eq!(
        errno_of(std::fs::rename(m.p("d"), m.p("d/sub")).unwrap_err()),
        libc::EINVAL
    );
    // symlinks
    std::os::unix::fs::symlink("d/x", m.p("s")).unwrap();
    assert_eq!(std::fs::read_link(m.p("s")).unwrap(), Path::new("d/x"));
    assert_eq!(std::fs::read(m.p("s")).unwrap(), b"y");
    // listing
    let mut names: Vec<String> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "d", "s"]);
}

#[test]
fn unlinked_open_file_stays_readable() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(m.p("f"), b"still here").unwrap();
    let mut f = std::fs::File::open(m.p("f")).unwrap();
    std::fs::remove_file(m.p("f")).unwrap();
    assert!(mc.get(b"memfis://posix/f").is_none());
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
}

/// A POSIX access ACL in the format Linux passes it: version 2, then (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// `cp -a` sets every file's access ACL: one that only says what the mode says is a chmod,
/// as on ext4 (so cp neither falls back to a chmod nor reports anything), read back as no
/// ACL at all. Any other ACL is refused (EOPNOTSUPP), and only the owner or root may set one.
#[test]
fn an_acl_that_only_says_the_mode_is_a_chmod() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    let src = tempfile::tempdir().unwrap();
    let d = src.path().join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("f"), b"x").unwrap();
    std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o2750)).unwrap();
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&d)
        .arg(m.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &str| std::fs::metadata(m.p(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("d/f"), 0o640);
    assert_eq!(mode("d"), 0o2750);

    let owner_group_other = |u, g, o| {
        acl(&[
            (0x01, u, u32::MAX),
            (0x04, g, u32::MAX),
            (0x20, o, u32::MAX),
        ])
    };
    xattr::set(
        m.p("d/f"),
        "system.posix_acl_access",
        &owner_group_other(6, 0, 0),
    )
    .unwrap();
    assert_eq!(mode("d/f"), 0o600);
    assert_eq!(
        xattr::get(m.p("d/f"), "system.posix_acl_access").unwrap(),
        None
    );
    xattr::set(
        m.p("d"),
        "system.posix_acl_access",
        &owner_group_other(7, 5, 5),
    )
    .unwrap();
    assert_eq!(mode("d"), 0o2755, "the set-group-ID bit stays for root");
    // Nothing beyond the mode is kept, so removing either ACL finds nothing to remove.
    xattr::remove(m.p("d"), "system.posix_acl_default").unwrap();

    let named_user = acl(&[
        (0x01, 6, u32::MAX),
        (0x02, 6, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ]);
    let e = xattr::set(m.p("d/f"), "system.posix_acl_access", &named_user).unwrap_err();
    assert_eq!(errno_of(e), libc::EOPNOTSUPP);
    assert_eq!(mode("d/f"), 0o600);

    // Another user: EPERM (the request carries the thread's filesystem ids).
    // (Through a descriptor opened as root: the mount's parent may not be searchable.)
    std::fs::write(m.p("g"), b"y").unwrap();
    let file = std::fs::File::open(m.p("g")).unwrap();
    let value = owner_group_other(7, 7, 7);
    let errno = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setfsuid/setfsgid change only this thread's filesystem ids; the
        // descriptor and buffers are valid for the duration of the call.
        unsafe {
            libc::setfsgid(65534);
            libc::setfsuid(65534);
            let name = c"system.posix_acl_access";
            let r = libc::fsetxattr(
                file.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            );
            if r == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap()
            }
        }
    })
    .join()
    .unwrap();
    assert_eq!(errno, libc::EPERM);
    assert_eq!(mode("g"), 0o644);
    drop(m);

    // The kernel learns of the new mode at once, even caching attributes for long: `stat`
    // asking for the mode alone must not get the cached one.
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "30"]);
    let stat_mode = |p: &str| {
        sh(&format!("stat -c %a {}", m.p(p).display()))
            .trim()
            .to_string()
    };
    std::fs::write(m.p("h"), b"z").unwrap();
    assert_eq!(stat_mode("h"), "644");
    xattr::set(
        m.p("h"),
        "system.posix_acl_access",
        &owner_group_other(6, 0, 0),
    )
    .unwrap();
    assert_eq!(stat_mode("h"), "600");
}

#[test]
fn attributes_xattrs_statfs_and_stable_inodes() {
    let mc = Memcached::start();
    let ino;
    {
        let m = Mount::new(&[mc.addr()], PREFIX);
        std::fs::write(m.p("f"), b"data").unwrap();
        std::fs::set_permissions(m.p("f"), std::fs::Permissions::from_mode(0o640)).unwrap();
        sh(&format!(
            "touch -m -d '2001-02-03 04:05:06.987654321' {}",
            m.p("f").display()
        ));
        std::os::unix::fs::chown(m.p("f"), Some(1234), Some(5678)).unwrap();
        xattr::set(m.p("f"), "user.color", b"blue").unwrap();
        assert_eq!(
            xattr::get(m.p("f"), "user.color").unwrap().unwrap(),
            b"blue"
        );
        let names: Vec<_> = xattr::list(m.p("f")).unwrap().collect();
        assert_eq!(names, vec![std::ffi::OsString::from("user.color")]);
        xattr::remove(m.p("f"), "user.color").unwrap();
        assert!(xattr::get(m.p("f"), "user.color").unwrap().is_none());
        ino = std::fs::metadata(m.p("f")).unwrap().ino();
        let df = sh(&format!("stat -f -c '%b %f %c' {}", m.path().display()));
        let nums: Vec<u64> = df.split_whitespace().map(|n| n.parse().unwrap()).collect();
        assert!(nums[0] > 0 && nums[1] > 0 && nums[1] <= nums[0], "{df}");
        assert_eq!(nums[2], 2, "root and f are the two inodes");
    }
    // Remount: the same inode number and attributes.
    let m = Mount::new(&[mc.addr()], PREFIX);
    let meta = std::fs::metadata(m.p("f")).unwrap();
    assert_eq!(meta.ino(), ino);
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (981173106, 987654321));
    // And a second mount of the same prefix agrees.
    let m2 = Mount::new(&[mc.addr()], PREFIX);
    assert_eq!(std::fs::metadata(m2.p("f")).unwrap().ino(), ino);
}

#[test]
fn sigterm_unmounts_cleanly() {
    let mc = Memcached::start();
    let mut m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(m.p("f"), b"x").unwrap();
    let status = m.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(!is_mounted(m.path()));
}

#[test]
fn fusermount_u_ends_the_daemon() {
    let mc = Memcached::start();
    let mut m = Mount::new(&[mc.addr()], PREFIX);
    sh(&format!("fusermount3 -u {}", m.path().display()));
    let status = m.signal_and_wait(0);
    assert!(status.success(), "{status}");
}

#[test]
fn detached_mount_returns_and_unmounts_with_fusermount() {
    let mc = Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    let out = mount_detached(dir.path(), &mc.addr(), PREFIX);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(dir.path()));
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    sh(&format!("fusermount3 -u {}", dir.path().display()));
    assert!(!is_mounted(dir.path()));
    assert_eq!(mc.get(b"memfis://posix/f").unwrap(), b"x");
}

#[test]
fn writes_and_chown_drop_set_id_bits() {
    let mc = Memcached::start();
    // allow_other: the unprivileged writer below may use the mount.
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["-o", "allow_other"]);
    std::fs::write(m.p("prog"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(m.p("prog"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    std::os::unix::fs::chown(m.p("prog"), Some(1), None).unwrap();
    assert_eq!(
        std::fs::metadata(m.p("prog")).unwrap().mode() & 0o7777,
        0o0755
    );
    // cp -a order: chown, then chmod restores the bits.
    std::fs::set_permissions(m.p("prog"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(
        std::fs::metadata(m.p("prog")).unwrap().mode() & 0o7777,
        0o4755
    );
    // A write by an unprivileged user clears set-user-ID.
    std::fs::set_permissions(m.p("prog"), std::fs::Permissions::from_mode(0o4777)).unwrap();
    std::fs::set_permissions(m.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    sh(&format!(
        "setpriv --reuid 65534 --regid 65534 --clear-groups sh -c 'echo x >> {}'",
        m.p("prog").display()
    ));
    assert_eq!(
        std::fs::metadata(m.p("prog")).unwrap().mode() & 0o7777,
        0o0777
    );
    // Truncation by an unprivileged owner drops set-user-ID and set-group-ID with group
    // execute (truncate(2), and open with O_TRUNC); root keeps them.
    let mode = |p: &str| std::fs::metadata(m.p(p)).unwrap().mode() & 0o7777;
    for (name, how) in [("t1", "truncate -s 0"), ("t2", "sh -c ': >\"$0\"'")] {
        std::fs::write(m.p(name), b"data").unwrap();
        std::os::unix::fs::chown(m.p(name), Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(m.p(name), std::fs::Permissions::from_mode(0o6775)).unwrap();
        sh(&format!(
            "setpriv --reuid 65534 --regid 65534 --clear-groups {how} {}",
            m.p(name).display()
        ));
        assert_eq!(mode(name), 0o0775, "{how}");
        assert_eq!(std::fs::metadata(m.p(name)).unwrap().len(), 0);
    }
    std::fs::set_permissions(m.p("t1"), std::fs::Permissions::from_mode(0o6775)).unwrap();
    sh(&format!("truncate -s 0 {}", m.p("t1").display()));
    assert_eq!(mode("t1"), 0o6775, "root keeps set-ID bits");
}

#[test]
fn read_only_mount_refuses_writes() {
    let mc = Memcached::start();
    {
        let m = Mount::new(&[mc.addr()], PREFIX);
        std::fs::write(m.p("f"), b"kept").unwrap();
    }
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["-o", "ro,noatime"]);
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"kept");
    assert_eq!(
        errno_of(std::fs::write(m.p("g"), b"x").unwrap_err()),
        libc::EROFS
    );
    assert_eq!(
        errno_of(std::fs::remove_file(m.p("f")).unwrap_err()),
        libc::EROFS
    );
    assert_eq!(mc.get(b"memfis://posix/f").unwrap(), b"kept");
}

#[test]
fn set_group_id_directories_pass_their_group_on() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::create_dir(m.p("shared")).unwrap();
    std::os::unix::fs::chown(m.p("shared"), None, Some(4321)).unwrap();
    std::fs::set_permissions(m.p("shared"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::write(m.p("shared/f"), b"x").unwrap();
    std::fs::create_dir(m.p("shared/sub")).unwrap();
    assert_eq!(std::fs::metadata(m.p("shared/f")).unwrap().gid(), 4321);
    let sub = std::fs::metadata(m.p("shared/sub")).unwrap();
    assert_eq!(sub.gid(), 4321);
    assert_ne!(sub.mode() & 0o2000, 0, "subdirectory keeps set-group-ID");
    std::fs::create_dir(m.p("plain")).unwrap();
    std::fs::write(m.p("plain/f"), b"x").unwrap();
    assert_eq!(std::fs::metadata(m.p("plain/f")).unwrap().gid(), 0);
}

#[test]
fn fifos_sockets_and_device_nodes_through_every_operation() {
    use std::os::unix::fs::FileTypeExt;
    let mc = Memcached::start();
    let m = Mount::with_args(
        &[mc.addr()],
        PREFIX,
        &["-o", "allow_other", "--attr-ttl", "0"],
    );
    let other = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let p = |name: &str| m.p(name).display().to_string();
    sh(&format!(
        "mkfifo {} && mknod {} c 1 3 && mknod {} b 7 0",
        p("fifo"),
        p("null"),
        p("loop0")
    ));
    let socket = std::os::unix::net::UnixListener::bind(m.p("sock")).unwrap();
    // The other mount sees each kind, and the device numbers.
    let meta = |name: &str| std::fs::symlink_metadata(other.p(name)).unwrap();
    assert!(meta("fifo").file_type().is_fifo());
    assert!(meta("sock").file_type().is_socket());
    assert!(meta("null").file_type().is_char_device());
    assert!(meta("loop0").file_type().is_block_device());
    assert_eq!(meta("null").rdev(), libc::makedev(1, 3));
    assert_eq!(meta("loop0").rdev(), libc::makedev(7, 0));
    drop(socket);
    // A FIFO in the mount is a working pipe (the kernel makes it; nothing goes to the store).
    let fifo = m.p("fifo");
    let writer = std::thread::spawn(move || std::fs::write(fifo, b"through the pipe").unwrap());
    assert_eq!(std::fs::read(m.p("fifo")).unwrap(), b"through the pipe");
    writer.join().unwrap();
    assert!(mc.get(format!("{PREFIX}/fifo").as_bytes()).is_none());
    // chmod, chown, utimens, xattrs, link, rename, unlink, as on any inode.
    std::fs::set_permissions(m.p("fifo"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(m.p("null"), Some(1), Some(2)).unwrap();
    sh(&format!("touch -h -d '2020-01-02 03:04:05' {}", p("loop0")));
    // user.* xattrs on a FIFO: Linux refuses them itself (EPERM), on every filesystem.
    let refused = xattr::set(m.p("fifo"), "user.note", b"pipe").unwrap_err();
    assert_eq!(errno_of(refused), libc::EPERM);
    std::fs::hard_link(m.p("fifo"), m.p("fifo2")).unwrap();
    std::fs::create_dir(m.p("dev")).unwrap();
    std::fs::rename(m.p("null"), m.p("dev/null")).unwrap();
    assert_eq!(meta("fifo").mode() & 0o7777, 0o640);
    assert_eq!(meta("fifo").nlink(), 2);
    assert_eq!((meta("dev/null").uid(), meta("dev/null").gid()), (1, 2));
    assert_eq!(meta("dev/null").rdev(), libc::makedev(1, 3));
    assert_eq!(meta("loop0").mtime(), 1_577_934_245);
    std::fs::remove_file(m.p("fifo")).unwrap();
    assert!(meta("fifo2").file_type().is_fifo());
    // An unprivileged user makes a FIFO in a directory open to it.
    std::fs::set_permissions(m.p("dev"), std::fs::Permissions::from_mode(0o777)).unwrap();
    sh(&format!(
        "setpriv --reuid 65534 --regid 65534 --clear-groups mkfifo {}",
        p("dev/user-fifo")
    ));
    assert_eq!(meta("dev/user-fifo").uid(), 65534);
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn directories_link_counts_are_two_plus_subdirectories_on_every_mount() {
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let other = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let links = |mount: &Mount, p: &str| std::fs::metadata(mount.p(p)).unwrap().nlink();
    std::fs::create_dir(m.p("a")).unwrap();
    assert_eq!(links(&m, "a"), 2);
    std::fs::create_dir(m.p("a/b")).unwrap();
    std::fs::create_dir(other.p("a/c")).unwrap(); // made by the other mount
    std::fs::write(m.p("a/file"), b"not a directory").unwrap();
    assert_eq!(links(&m, "a"), 4);
    assert_eq!(links(&other, "a"), 4);
    std::fs::remove_dir(other.p("a/b")).unwrap();
    assert_eq!(links(&m, "a"), 3);
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::rename(m.p("a/c"), m.p("d/c")).unwrap();
    for mount in [&m, &other] {
        assert_eq!(links(mount, "a"), 2);
        assert_eq!(links(mount, "d"), 3);
        assert_eq!(links(mount, ""), 4, "the root: a, d");
    }
    // What ls -l and find see through readdirplus agrees.
    let listed = sh(&format!("ls -ld {}/d | cut -d' ' -f2", m.path().display()));
    assert_eq!(listed.trim(), "3");
}

/// fstat through a handle whose file lost its last name says 0 links, as tmpfs does; while
/// another name is left, one.
#[test]
fn an_open_file_whose_last_name_is_gone_has_no_links() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(m.p("r"), b"read").unwrap();
    std::fs::write(m.p("w"), b"write").unwrap();
    std::fs::hard_link(m.p("w"), m.p("w2")).unwrap();
    let reader = std::fs::File::open(m.p("r")).unwrap();
    let writer = OpenOptions::new().append(true).open(m.p("w")).unwrap();
    std::fs::remove_file(m.p("r")).unwrap();
    assert_eq!(reader.metadata().unwrap().nlink(), 0, "read-only handle");
    std::fs::remove_file(m.p("w")).unwrap();
    assert_eq!(writer.metadata().unwrap().nlink(), 1, "one name left");
    std::fs::remove_file(m.p("w2")).unwrap();
    assert_eq!(writer.metadata().unwrap().nlink(), 0, "write handle");
    (&writer).write_all(b" more").unwrap();
    assert_eq!(writer.metadata().unwrap().nlink(), 0, "after a write");
    assert_eq!(writer.metadata().unwrap().len(), 10);
    // fchmod still works (nothing is served any more to withdraw).
    writer
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(writer.metadata().unwrap().mode() & 0o777, 0o600);
}

fn xattr_call(path: &Path, op: &str, name: &str) -> Result<(), i32> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated path and name; the buffer outlives the call.
    let r = unsafe {
        match op {
            "set" => libc::setxattr(p.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) as isize,
            "get" => libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
            _ => libc::removexattr(p.as_ptr(), n.as_ptr()) as isize,
        }
    };
    match r {
        -1 => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
        _ => Ok(()),
    }
}

/// Extended attribute names that are not a `user.*` attribute answer what tmpfs answers: an
/// empty name after the namespace (`user.`) is EINVAL, a name in no namespace EOPNOTSUPP.
/// Compared with a file in /dev/shm (tmpfs) on this machine.
#[test]
fn odd_xattr_names_answer_as_on_tmpfs() {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm to compare with");
    let st = nix::sys::statfs::statfs(shm.path()).unwrap();
    assert_eq!(
        st.filesystem_type().0 as i64,
        TMPFS_MAGIC,
        "/dev/shm is not tmpfs"
    );
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    let here = m.p("f");
    let there = shm.path().join("f");
    std::fs::write(&here, b"x").unwrap();
    std::fs::write(&there, b"x").unwrap();
    let mut diffs = Vec::new();
    for name in ["user.", "user", "bogus.x", "user.x", "user.y"] {
        for op in ["get", "set", "get", "remove", "remove"] {
            let (want, got) = (xattr_call(&there, op, name), xattr_call(&here, op, name));
            if want != got {
                diffs.push(format!("{op} {name:?}: tmpfs {want:?}, memfis {got:?}"));
            }
        }
    }
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert_eq!(xattr_call(&here, "set", "user."), Err(libc::EINVAL));
}

/// Requests the kernel sends in ordinary use that memfis does not implement (ioctl, poll,
/// SEEK_DATA, fallocate, copy_file_range) get the answer a local filesystem without the
/// feature gives, and no log line: Python's open() alone asks TCGETS on every file.
#[test]
fn unimplemented_requests_answer_quietly() {
    use std::os::fd::AsRawFd;
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(m.p("f"), b"0123456789").unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    let out = std::fs::File::create(m.p("copy")).unwrap();
    let fd = f.as_raw_fd();
    let last = || std::io::Error::last_os_error().raw_os_error().unwrap();
    for _ in 0..3 {
        // SAFETY: fd is open; termios is a plain struct the kernel fills (or not).
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::ioctl(fd, libc::TCGETS, &mut t) }, -1);
        assert_eq!(last(), libc::ENOTTY);
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 1000) }, 1);
        // SAFETY: plain calls on an open fd.
        assert_eq!(unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) }, 0);
        assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 100) }, -1);
        assert_eq!(last(), libc::EOPNOTSUPP);
    }
    let (mut off_in, mut off_out) = (0i64, 0i64);
    // SAFETY: both fds are open; the offsets are valid pointers.
    let n = unsafe { libc::copy_file_range(fd, &mut off_in, out.as_raw_fd(), &mut off_out, 10, 0) };
    assert_eq!(n, 10);
    drop((f, out));
    assert_eq!(std::fs::read(m.p("copy")).unwrap(), b"0123456789");
    let log = m.log_text();
    assert!(!log.contains("Not Implemented"), "{log}");
    assert!(!log.contains("WARN"), "{log}");
}
