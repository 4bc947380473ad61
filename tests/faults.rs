//! Bad input and faults: each gets a clear error and loses nothing.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "memfis://faults";

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// NAME_MAX is 255 bytes for every kind (a file whose key would pass 250 bytes keeps its
/// bytes at a private key: tests/private.rs); over it, ENAMETOOLONG and nothing is made.
#[test]
fn a_name_over_name_max_is_enametoolong_and_nothing_is_made() {
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    let too_long = "n".repeat(256);
    assert_eq!(
        errno_of(std::fs::write(m.p(&too_long), b"x").unwrap_err()),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(std::fs::create_dir(m.p(&too_long)).unwrap_err()),
        libc::ENAMETOOLONG
    );
    std::fs::write(m.p("f"), b"x").unwrap();
    assert_eq!(
        errno_of(std::fs::rename(m.p("f"), m.p(&too_long)).unwrap_err()),
        libc::ENAMETOOLONG
    );
    let names: Vec<_> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["f"]);
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"x");
}

/// Files larger than one item go in chunks (tests/large_files.rs); past 1 TiB a write is
/// EFBIG with a log line, and what was written before stays.
#[test]
fn file_over_the_largest_size_is_efbig_with_a_log_line() {
    use std::os::unix::fs::FileExt;
    let mc = Memcached::with_args(&["-m", "64", "-I", "1m"]);
    let m = Mount::new(&[mc.addr()], PREFIX);
    let f = std::fs::File::create(m.p("big")).unwrap();
    f.write_all_at(b"start", 0).unwrap();
    let e = f.write_all_at(b"x", 1 << 40).unwrap_err();
    assert_eq!(errno_of(e), libc::EFBIG);
    drop(f);
    assert!(m.log_text().contains("largest size"), "{}", m.log_text());
    assert_eq!(std::fs::read(m.p("big")).unwrap(), b"start");
}

#[test]
fn full_store_is_enospc_and_earlier_files_survive() {
    let mc = Memcached::with_args(&["-M", "-m", "4", "-I", "1m"]);
    let m = Mount::new(&[mc.addr()], PREFIX);
    let data = vec![1u8; 200 * 1024];
    let mut failed = None;
    for i in 0..200 {
        // fsync reports what close would: the publish of the whole file.
        let written = std::fs::File::create(m.p(&format!("f{i}")))
            .and_then(|mut f| f.write_all(&data).and_then(|_| f.sync_all()));
        if let Err(e) = written {
            failed = Some((i, e));
            break;
        }
    }
    let (i, e) = failed.expect("the store fills up");
    assert_eq!(errno_of(e), libc::ENOSPC, "file {i}");
    assert!(i > 0);
    assert_eq!(std::fs::read(m.p("f0")).unwrap(), data);
    // The failed file shows no partial content.
    let len = std::fs::metadata(m.p(&format!("f{i}")))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        len == 0 || len == data.len() as u64,
        "partial file of {len} bytes"
    );
}

#[test]
fn stopped_server_gives_eio_in_time_and_the_mount_recovers() {
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--timeout", "1", "--attr-ttl", "0"]);
    std::fs::write(m.p("before"), b"1").unwrap();
    mc.pause();
    let started = Instant::now();
    let e = std::fs::metadata(m.p("during")).unwrap_err();
    assert_eq!(errno_of(e), libc::EIO);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let e = std::fs::write(m.p("during"), b"2").unwrap_err();
    assert_eq!(errno_of(e), libc::EIO);
    mc.resume();
    std::fs::write(m.p("after"), b"3").unwrap();
    assert_eq!(std::fs::read(m.p("before")).unwrap(), b"1");
    assert_eq!(std::fs::read(m.p("after")).unwrap(), b"3");
}

#[test]
fn dead_server_gives_eio_quickly() {
    let mut mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--timeout", "1", "--attr-ttl", "0"]);
    std::fs::write(m.p("f"), b"1").unwrap();
    mc.stop();
    let started = Instant::now();
    assert_eq!(errno_of(std::fs::read(m.p("f")).unwrap_err()), libc::EIO);
    assert_eq!(
        errno_of(std::fs::write(m.p("g"), b"x").unwrap_err()),
        libc::EIO
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn malformed_or_missing_record_is_eio_naming_the_key() {
    let mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    std::fs::write(m.p("bad"), b"x").unwrap();
    std::fs::write(m.p("gone"), b"y").unwrap();
    let ino_bad = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.p("bad")).unwrap());
    let ino_gone = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.p("gone")).unwrap());
    let bad_key = format!("{PREFIX}%i{ino_bad}");
    let gone_key = format!("{PREFIX}%i{ino_gone}");
    mc.set(bad_key.as_bytes(), b"{not json");
    mc.delete(gone_key.as_bytes());
    assert_eq!(
        errno_of(std::fs::metadata(m.p("bad")).unwrap_err()),
        libc::EIO
    );
    assert_eq!(
        errno_of(std::fs::metadata(m.p("gone")).unwrap_err()),
        libc::EIO
    );
    let log = m.log_text();
    assert!(log.contains(&bad_key), "{log}");
    assert!(log.contains("\"/bad\""), "the path too: {log}");
    assert!(log.contains(&gone_key), "{log}");
    // A broken directory log is also EIO, and listing the root still answers.
    mc.set(format!("{PREFIX}%l1.0").as_bytes(), b"+f7 99:short");
    let e = std::fs::read_dir(m.path()).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert_eq!(errno_of(e.unwrap_err()), libc::EIO);
    assert!(m.log_text().contains(&format!("{PREFIX}%l1.0")));
}

#[test]
fn unknown_format_version_is_refused() {
    let mc = Memcached::start();
    mc.set(
        format!("{PREFIX}%format").as_bytes(),
        br#"{"format":"memfis","version":99}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let out = mount_detached(dir.path(), &mc.addr(), PREFIX);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version 99"), "{err}");
    assert!(err.contains("newer memfis"), "{err}");
    assert!(!is_mounted(dir.path()));
    // And nothing was written.
    assert!(mc.get(format!("{PREFIX}%i1").as_bytes()).is_none());
}

/// A store of format version 1 (long names keyed by CRC-32) is refused by every command,
/// with the way to move it, and left as it was.
#[test]
fn a_version_1_store_is_refused_with_the_way_to_move_it() {
    let mc = Memcached::start();
    let format = br#"{"format":"memfis","version":1,"store_id":"0123456789abcdef"}"#;
    mc.set(format!("{PREFIX}%format").as_bytes(), format);
    let dir = tempfile::tempdir().unwrap();
    let out = mount_detached(dir.path(), &mc.addr(), PREFIX);
    assert!(!out.status.success());
    assert!(!is_mounted(dir.path()));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "version 1",
        "older memfis",
        "memfis export",
        "memfis load",
        "--prefix",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    let src = tempfile::tempdir().unwrap();
    let (code, out) = memfis_on("load", &[src.path().to_str().unwrap()], &mc.addr(), PREFIX);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("memfis load"), "{out}");
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("older memfis"), "{out}");
    assert_eq!(
        mc.get(format!("{PREFIX}%format").as_bytes()).unwrap(),
        format
    );
    assert!(mc.get(format!("{PREFIX}%i1").as_bytes()).is_none());
}

#[test]
fn bad_arguments_fail_before_mounting() {
    let mc = Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--server", "nohostport"], "HOST:PORT"),
        (vec!["--server", "127.0.0.1:0"], "port"),
        (vec!["--prefix", "has space"], "prefix"),
        (vec!["--prefix", "a%b"], "prefix"),
        (vec!["--server", "127.0.0.1:1"], "cannot reach memcached"),
    ];
    let server = mc.addr();
    for (extra, needle) in cases {
        let mut args = vec!["mount", mp];
        if !extra.contains(&"--server") {
            args.extend(["--server", &server]);
        }
        args.extend(extra.iter());
        let out = Command::new(BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!is_mounted(dir.path()));
    }
    let out = Command::new(BIN)
        .args(["mount", "/nonexistent/memfis-mp", "--server", &server])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/memfis-mp"));
}

/// A store outage under load writes a bounded log: repeated identical errors are one line a
/// second per kind, with a count of the ones left out, and the lines say what went wrong.
/// Two outages while four workers stat and read files: a stopped server for 3 s (calls time
/// out), then a dead one for 3 s (calls fail at once: 30,000 lines before the limit).
#[test]
fn an_outage_under_load_writes_a_few_log_lines_not_thousands() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut mc = Memcached::start();
    let m = Mount::with_args(&[mc.addr()], PREFIX, &["--timeout", "1", "--attr-ttl", "0"]);
    for i in 0..8 {
        std::fs::write(m.p(&format!("f{i}")), b"data").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, failures) = (stop.clone(), failures.clone());
            let dir = m.path().to_path_buf();
            std::thread::spawn(move || {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let f = dir.join(format!("f{}", i % 8));
                    if std::fs::metadata(&f).is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    if std::fs::read(&f).is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Stops the workers even if an assertion below fails (before the mount goes).
    struct Stop(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
            for w in self.1.drain(..) {
                let _ = w.join();
            }
        }
    }
    let stopper = Stop(stop, workers);
    std::thread::sleep(Duration::from_millis(300));
    mc.pause();
    // Long enough that calls fail: one call may spend several 1 s timeouts (a retry on a new
    // connection, the store's identity check after it) and still succeed once resumed.
    std::thread::sleep(Duration::from_secs(6));
    mc.resume();
    std::thread::sleep(Duration::from_millis(1500));
    let after_pause = failures.load(Ordering::Relaxed);
    assert!(after_pause > 0, "the pause failed no call");
    assert_eq!(std::fs::read(m.p("f0")).unwrap(), b"data", "recovered");
    mc.stop();
    std::thread::sleep(Duration::from_secs(3));
    drop(stopper);
    let failed = failures.load(Ordering::Relaxed);
    assert!(
        failed > after_pause + 1000,
        "the dead server failed {failed} calls"
    );
    // The heartbeat (every 2 s) writes the counts left when the trouble stopped.
    std::thread::sleep(Duration::from_millis(2500));
    let log = m.log_text();
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warns.len() < 50,
        "{} WARN lines for {failed} failed calls, the last: {:#?}",
        warns.len(),
        &warns[warns.len().saturating_sub(20)..]
    );
    for cause in ["timed out talking to", "Connection refused"] {
        assert!(
            warns.iter().any(|l| l.contains(cause)),
            "no line names {cause:?}: {log}"
        );
    }
    assert!(
        warns.iter().any(|l| l.contains("more like it in the last")),
        "no line counts what was left out: {log}"
    );
}
