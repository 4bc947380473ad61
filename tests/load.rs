//! `memfis load` with real memcached, nginx and a FUSE mount to look at the result.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn load(server: &str, prefix: &str, args: &[&str]) -> (i32, String) {
    memfis_on("load", args, server, prefix)
}

/// A small site with every kind of entry load keeps.
fn site(root: &Path) {
    std::fs::create_dir_all(root.join("css")).unwrap();
    std::fs::create_dir_all(root.join("docs/deep/er")).unwrap();
    std::fs::write(root.join("index.html"), b"<h1>home</h1>").unwrap();
    std::fs::write(root.join("css/site.css"), b"body{}").unwrap();
    std::fs::write(root.join("docs/deep/er/page.html"), vec![7u8; 100_000]).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::set_permissions(root.join("css/site.css"), PermissionsExt::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("index.html", root.join("home.html")).unwrap();
    std::fs::hard_link(root.join("index.html"), root.join("docs/index.html")).unwrap();
    xattr::set(root.join("index.html"), "user.lang", b"en").unwrap();
    sh(&format!(
        "touch -d '2020-02-03 04:05:06.123456789' {}",
        root.join("css/site.css").display()
    ));
    // A link's own time is kept too (rsync -a compares it).
    sh(&format!(
        "touch -h -d '2019-01-02 03:04:05.5' {}",
        root.join("home.html").display()
    ));
}

/// Asserts that `got` (a mount) holds what `want` (the source) holds, metadata included.
fn assert_same_tree(want: &Path, got: &Path) {
    sh(&format!(
        "diff -r --no-dereference {} {}",
        want.display(),
        got.display()
    ));
    for rel in [
        "index.html",
        "css/site.css",
        "docs/deep/er/page.html",
        "css",
        "docs",
    ] {
        let (w, g) = (
            std::fs::symlink_metadata(want.join(rel)).unwrap(),
            std::fs::symlink_metadata(got.join(rel)).unwrap(),
        );
        assert_eq!(w.mode(), g.mode(), "{rel} mode");
        assert_eq!(w.uid(), g.uid(), "{rel} owner");
        assert_eq!(
            (w.mtime(), w.mtime_nsec()),
            (g.mtime(), g.mtime_nsec()),
            "{rel} mtime"
        );
    }
    let (a, b) = (
        std::fs::metadata(got.join("index.html")).unwrap(),
        std::fs::metadata(got.join("docs/index.html")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard link kept");
    assert_eq!(
        std::fs::read_link(got.join("home.html")).unwrap(),
        Path::new("index.html")
    );
    assert_eq!(
        xattr::get(got.join("index.html"), "user.lang").unwrap(),
        Some(b"en".to_vec())
    );
}

#[test]
fn load_makes_the_store_equal_to_the_source_and_nginx_serves_it() {
    const PREFIX: &str = "memfis://load";
    let mc = Memcached::start();
    let src = tempfile::tempdir().unwrap();
    site(src.path());
    let src_arg = src.path().to_str().unwrap();

    let (code, out) = load(&mc.addr(), PREFIX, &[src_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 files written"), "{out}"); // and one hard link
    assert_eq!(memfis_check(&mc.addr(), PREFIX).0, 0);

    let nginx = Nginx::for_store(&mc.addr(), PREFIX, &[]);
    assert_eq!(nginx.get("/index.html").2, b"<h1>home</h1>");
    assert_eq!(nginx.get("/docs/deep/er/page.html").2, vec![7u8; 100_000]);

    {
        let m = Mount::new(&[mc.addr()], PREFIX);
        assert_same_tree(src.path(), m.path());
    }

    // Nothing changed: nothing written.
    let (code, out) = load(&mc.addr(), PREFIX, &[src_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 files written"), "{out}");

    // One file changed, one removed, one directory removed: --delete follows.
    std::fs::write(src.path().join("css/site.css"), b"body{color:red}").unwrap();
    std::fs::remove_file(src.path().join("empty")).unwrap();
    std::fs::remove_dir_all(src.path().join("docs/deep")).unwrap();
    let (code, out) = load(&mc.addr(), PREFIX, &[src_arg, "--delete", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        nginx.get("/docs/deep/er/page.html").0,
        200,
        "a dry run changes nothing"
    );
    let (code, out) = load(&mc.addr(), PREFIX, &[src_arg, "--delete"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 files written"), "{out}");
    // Mode 0640: others may not read it, so nginx does not serve it (the mount has it).
    assert_eq!(nginx.get("/css/site.css").0, 404);
    assert_eq!(nginx.get("/docs/deep/er/page.html").0, 404);
    assert_eq!(nginx.get("/empty").0, 404);
    assert_eq!(memfis_check(&mc.addr(), PREFIX).0, 0);
    let m = Mount::new(&[mc.addr()], PREFIX);
    sh(&format!(
        "diff -r --no-dereference {} {}",
        src_arg,
        m.path().display()
    ));
}

#[test]
fn load_into_a_subdirectory_while_a_mount_is_live() {
    const PREFIX: &str = "memfis://load-live";
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    std::fs::write(m.p("kept.html"), b"mine").unwrap();
    let src = tempfile::tempdir().unwrap();
    site(src.path());
    let (code, out) = load(
        &mc.addr(),
        PREFIX,
        &[src.path().to_str().unwrap(), "--to", "/www/v1"],
    );
    assert_eq!(code, 0, "{out}");
    assert_same_tree(src.path(), &m.p("www/v1"));
    assert_eq!(std::fs::read(m.p("kept.html")).unwrap(), b"mine");
    assert_eq!(memfis_check(&mc.addr(), PREFIX).0, 0);
}

#[test]
fn a_file_too_big_is_reported_and_the_rest_loaded() {
    const PREFIX: &str = "memfis://load-big";
    let mc = Memcached::with_args(&["-m", "64", "-I", "1m"]);
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("small.html"), b"ok").unwrap();
    std::fs::write(src.path().join("huge.bin"), vec![1u8; 2 << 20]).unwrap();
    let (code, out) = load(&mc.addr(), PREFIX, &[src.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("huge.bin") && out.contains("too large"),
        "{out}"
    );
    assert!(out.contains("1 files written"), "{out}");
    assert_eq!(
        mc.get(format!("{PREFIX}/small.html").as_bytes()).as_deref(),
        Some(&b"ok"[..])
    );
    assert_eq!(memfis_check(&mc.addr(), PREFIX).0, 0);
}

#[test]
fn a_full_store_stops_the_load_cleanly() {
    const PREFIX: &str = "memfis://load-full";
    let mc = Memcached::with_args(&["-m", "4", "-I", "1m"]);
    let src = tempfile::tempdir().unwrap();
    for i in 0..40 {
        std::fs::write(
            src.path().join(format!("f{i:02}.bin")),
            vec![i as u8; 500_000],
        )
        .unwrap();
    }
    let (code, out) = load(&mc.addr(), PREFIX, &[src.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the store is full"), "{out}");
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 0, "what was written is whole: {out}");
}

#[test]
fn export_gives_back_what_load_took() {
    const PREFIX: &str = "memfis://export";
    let mc = Memcached::start();
    let src = tempfile::tempdir().unwrap();
    site(src.path());
    let (code, out) = load(
        &mc.addr(),
        PREFIX,
        &[src.path().to_str().unwrap(), "--to", "/a/b"],
    );
    assert_eq!(code, 0, "{out}");
    let dest = tempfile::tempdir().unwrap();
    let out_dir = dest.path().join("copy");
    let out_arg = out_dir.to_str().unwrap();
    let (code, out) = memfis_on("export", &[out_arg, "--from", "/a/b"], &mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
    assert_same_tree(src.path(), &out_dir);
    let changes = sh(&format!(
        "rsync -aHX --dry-run --itemize-changes {}/ {}/",
        src.path().display(),
        out_dir.display()
    ));
    assert_eq!(changes.trim(), "", "rsync sees differences");
    // The empty file and the top directory's metadata come back too.
    assert_eq!(std::fs::read(out_dir.join("empty")).unwrap(), b"");
    let (w, g) = (
        std::fs::metadata(src.path()).unwrap(),
        std::fs::metadata(&out_dir).unwrap(),
    );
    assert_eq!(
        (w.mode(), w.mtime(), w.mtime_nsec()),
        (g.mode(), g.mtime(), g.mtime_nsec())
    );
}

#[test]
fn checksum_finds_changes_that_keep_size_and_time() {
    const PREFIX: &str = "memfis://load-sum";
    let mc = Memcached::start();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("page.html");
    std::fs::write(&file, b"version 1").unwrap();
    let src_arg = src.path().to_str().unwrap();
    assert_eq!(load(&mc.addr(), PREFIX, &[src_arg]).0, 0);
    // Same size, same mtime, other bytes: only --checksum sees it.
    let stamp = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, b"version 2").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    let (code, out) = load(&mc.addr(), PREFIX, &[src_arg]);
    assert!(code == 0 && out.contains("0 files written"), "{out}");
    let (code, out) = load(&mc.addr(), PREFIX, &[src_arg, "--checksum"]);
    assert!(code == 0 && out.contains("1 files written"), "{out}");
    assert_eq!(
        mc.get(format!("{PREFIX}/page.html").as_bytes()).as_deref(),
        Some(&b"version 2"[..])
    );
}

#[test]
fn fifos_and_device_nodes_go_in_and_come_back() {
    const PREFIX: &str = "memfis://specials";
    let mc = Memcached::start();
    let src = tempfile::tempdir().unwrap();
    let s = src.path().display();
    sh(&format!(
        "mkfifo -m 640 {s}/fifo && mknod -m 600 {s}/null c 1 3 && mknod {s}/loop7 b 7 7 && \
         chown 65534:65534 {s}/fifo && touch -d '2021-05-06 07:08:09.5' {s}/fifo {s}/null"
    ));
    let (code, out) = load(&mc.addr(), PREFIX, &[src.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Loading again finds nothing to do.
    let (code, out) = load(&mc.addr(), PREFIX, &[src.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let dest = tempfile::tempdir().unwrap();
    let copy = dest.path().join("copy");
    let (code, out) = memfis_on("export", &[copy.to_str().unwrap()], &mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
    let changes = sh(&format!(
        "rsync -aHX --dry-run --itemize-changes {s}/ {}/",
        copy.display()
    ));
    assert_eq!(changes.trim(), "", "rsync sees differences");
    let null = std::fs::symlink_metadata(copy.join("null")).unwrap();
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    let (code, out) = memfis_on("stats", &[], &mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 FIFOs/sockets/devices"), "{out}");
}

/// Names up to 255 bytes (hashed entry keys, the name kept in the entry) go in with `load`
/// and come back with `export` and through a mount: files, a hard link, a symlink and a
/// directory with long names, one holding newlines, `%` and UTF-8.
#[test]
fn long_names_go_in_and_come_back() {
    const PREFIX: &str = "memfis://load-long";
    let mc = Memcached::start();
    let src = tempfile::tempdir().unwrap();
    let (a, odd, dir) = (
        "a".repeat(255),
        format!("{}\n%x", "é".repeat(125)),
        "d".repeat(250),
    );
    let root = src.path();
    std::fs::create_dir(root.join(&dir)).unwrap();
    std::fs::write(root.join(&a), b"top").unwrap();
    std::fs::write(root.join(&dir).join(&odd), b"odd").unwrap();
    std::fs::write(root.join(&dir).join(&a), vec![3u8; 5000]).unwrap();
    std::fs::hard_link(root.join(&a), root.join(&dir).join("l".repeat(251))).unwrap();
    std::os::unix::fs::symlink(&odd, root.join(&dir).join("s".repeat(249))).unwrap();
    let src_arg = root.to_str().unwrap();
    let (code, out) = load(&mc.addr(), PREFIX, &[src_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 files written"), "{out}");
    assert_check_clean(&mc, PREFIX);
    // Unchanged: found by their long names, nothing written again.
    let (code, out) = load(&mc.addr(), PREFIX, &[src_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 files written"), "{out}");

    let dest = tempfile::tempdir().unwrap();
    let copy = dest.path().join("copy");
    let (code, out) = memfis_on("export", &[copy.to_str().unwrap()], &mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
    sh(&format!(
        "diff -r --no-dereference {} {}",
        root.display(),
        copy.display()
    ));
    let changes = sh(&format!(
        "rsync -aHX --dry-run --itemize-changes {}/ {}/",
        root.display(),
        copy.display()
    ));
    assert_eq!(changes.trim(), "", "rsync sees differences");
    {
        let m = Mount::new(&[mc.addr()], PREFIX);
        assert_eq!(std::fs::read(m.p(&dir).join(&odd)).unwrap(), b"odd");
        assert_eq!(std::fs::metadata(m.p(&a)).unwrap().nlink(), 2);
    }
    // --delete removes long names the source lost.
    std::fs::remove_file(root.join(&dir).join(&odd)).unwrap();
    let (code, out) = load(&mc.addr(), PREFIX, &[src_arg, "--delete"]);
    assert_eq!(code, 0, "{out}");
    assert_check_clean(&mc, PREFIX);
    let m = Mount::new(&[mc.addr()], PREFIX);
    assert!(!m.p(&dir).join(&odd).exists());
    assert_eq!(std::fs::read(m.p(&dir).join(&a)).unwrap(), vec![3u8; 5000]);
}

/// Every source time survives a load of a large tree to the nanosecond, whatever `--jobs`:
/// batches that met a namespace operation (the heartbeat compacting a big directory) used to
/// take the load time, in whole batches of 256 files.
#[test]
fn a_large_load_keeps_every_mtime_to_the_nanosecond() {
    const FILES: usize = 20_000;
    let src = tempfile::tempdir().unwrap();
    let mut times = Vec::with_capacity(FILES);
    for i in 0..FILES {
        // A few big directories, so that their logs get long enough to be compacted.
        let dir = src.path().join(format!("d{}", i % 2));
        if i < 2 {
            std::fs::create_dir(&dir).unwrap();
        }
        let path = dir.join(format!("f{i:05}.html"));
        std::fs::write(&path, format!("page {i}")).unwrap();
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::new(1_500_000_000 + i as u64, (i as u32 * 7919) % 1_000_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        times.push((format!("d{}/f{i:05}.html", i % 2), t));
    }
    for jobs in ["1", "8"] {
        let mc = Memcached::start();
        let prefix = format!("memfis://many-{jobs}");
        let m = Mount::new(&[mc.addr()], &prefix);
        // Another mount renaming meanwhile holds the namespace lock now and then, as the
        // heartbeat's compaction does: the batches it meets are published again.
        std::fs::create_dir(m.p("other")).unwrap();
        std::fs::write(m.p("other/a"), b"a").unwrap();
        let loaded = std::sync::atomic::AtomicBool::new(false);
        let (code, out) = std::thread::scope(|s| {
            s.spawn(|| {
                while !loaded.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::rename(m.p("other/a"), m.p("other/b")).unwrap();
                    std::fs::rename(m.p("other/b"), m.p("other/a")).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            });
            let args = [src.path().to_str().unwrap(), "--jobs", jobs];
            let done = load(&mc.addr(), &prefix, &args);
            loaded.store(true, std::sync::atomic::Ordering::Relaxed);
            done
        });
        assert_eq!(code, 0, "{out}");
        let wrong: Vec<&String> = times
            .iter()
            .filter(|(rel, t)| std::fs::metadata(m.p(rel)).unwrap().modified().unwrap() != *t)
            .map(|(rel, _)| rel)
            .collect();
        assert!(
            wrong.is_empty(),
            "--jobs {jobs}: {} of {FILES} files with another mtime, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
}

/// The tools log their warnings to stderr as the mount does: here the one that accepts a
/// memcached evicting items (--allow-evictions), from `load`.
#[test]
fn a_tools_warnings_reach_stderr() {
    let mc = evicting_memcached();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.html"), b"a").unwrap();
    let (code, out) = load(
        &mc.addr(),
        "memfis://warned",
        &[src.path().to_str().unwrap(), "--allow-evictions"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WARN") && out.contains("accepted by --allow-evictions"),
        "{out}"
    );
}
