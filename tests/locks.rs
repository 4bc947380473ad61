//! File locks across mounts (docs/store-layout.md, "File locks"): processes on two mounts of
//! one store exclude each other with flock, POSIX and OFD locks; F_GETLK on one mount names
//! the holder on the other; LOCK_NB and F_SETLK answer EAGAIN; a waiting process can be
//! interrupted; the locks of a mount killed with -9 are free once its liveness lapses.
//!
//! The lock takers are processes of `tests/locks/lockworker.c` (each its own POSIX lock
//! owner, as real programs are), built here with `cc`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// The worker binary, built once per test run.
fn worker() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/locks/lockworker.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lockworker");
        let status = Command::new("cc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("cc (a C compiler) is needed to build the lock worker");
        assert!(status.success(), "building {}", src.display());
        out
    })
}

fn run(args: &[&str]) -> String {
    let out = Command::new(worker()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "lockworker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Waits until another mount sees a file made on the first (its cached listing may say the
/// name is absent for up to the attribute TTL).
fn visible(path: PathBuf) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    path
}

/// A process holding a lock until dropped (its stdin closes).
struct Holder {
    child: ChildGuard,
}

impl Holder {
    fn start(kind: &str, path: &Path, start: u64, len: u64) -> Holder {
        let mut child = Command::new(worker())
            .args(["hold", kind])
            .arg(path)
            .args([start.to_string(), len.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        Holder {
            child: ChildGuard(child),
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Lets go of the lock (closes stdin) and waits for the process to end.
    fn release(mut self) {
        drop(self.child.0.stdin.take());
        let status = self.child.0.wait().unwrap();
        assert!(status.success());
    }
}

/// `processes` workers on each mount increment the counter at `name` `rounds` times each
/// under `kind` locks: the count must end exact.
fn count_across_mounts(kind: &str, processes: usize, rounds: usize) {
    let mc = Memcached::start();
    let a = Mount::new(&[mc.addr()], "memfis://locks");
    let b = Mount::new(&[mc.addr()], "memfis://locks");
    std::fs::write(a.p("counter"), "0\n").unwrap();
    let started = Instant::now();
    let workers: Vec<ChildGuard> = (0..processes)
        .flat_map(|_| [a.p("counter"), visible(b.p("counter"))])
        .map(|path| {
            ChildGuard(
                Command::new(worker())
                    .args(["count", kind])
                    .arg(path)
                    .arg(rounds.to_string())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for mut w in workers {
        assert!(w.0.wait().unwrap().success(), "a {kind} worker failed");
    }
    let total = 2 * processes * rounds;
    let elapsed = started.elapsed();
    for m in [&a, &b] {
        let text = std::fs::read_to_string(m.p("counter")).unwrap();
        assert_eq!(text.trim(), total.to_string(), "{kind}: increments lost");
    }
    eprintln!("{kind}: {total} increments on two mounts in {elapsed:?}");
}

#[test]
fn flock_counter_on_two_mounts_ends_exact() {
    count_across_mounts("flock", 3, 500);
}

#[test]
fn fcntl_counter_on_two_mounts_ends_exact() {
    count_across_mounts("posix", 3, 500);
}

#[test]
fn ofd_counter_on_two_mounts_ends_exact() {
    count_across_mounts("ofd", 2, 150);
}

#[test]
fn getlk_and_nonblocking_attempts_see_the_other_mounts_holder() {
    let mc = Memcached::start();
    let a = Mount::new(&[mc.addr()], "memfis://locks");
    let b = Mount::new(&[mc.addr()], "memfis://locks");
    std::fs::write(a.p("f"), "0123456789abcdefghij").unwrap();
    let (fa, fb) = (a.p("f"), visible(b.p("f")));
    let fb_s = fb.to_str().unwrap();

    // A POSIX write lock on bytes 10..=19 on mount A.
    let holder = Holder::start("posix", &fa, 10, 10);
    let seen = run(&["getlk", fb_s, "0", "0"]);
    assert_eq!(
        seen,
        format!("W 10 10 {}", holder.pid()),
        "F_GETLK from mount B"
    );
    // Bytes outside the held range are free.
    assert_eq!(run(&["getlk", fb_s, "0", "10"]), "U 0 10 0");
    assert_eq!(run(&["try", "posix", fb_s]), "EAGAIN");
    holder.release();
    assert_eq!(run(&["getlk", fb_s, "0", "0"]).split(' ').next(), Some("U"));
    assert_eq!(run(&["try", "posix", fb_s]), "ok");

    // flock: LOCK_NB on B fails while A holds it (EWOULDBLOCK is EAGAIN), succeeds after.
    let holder = Holder::start("flock", &fa, 0, 0);
    assert_eq!(run(&["try", "flock", fb_s]), "EAGAIN");
    holder.release();
    assert_eq!(run(&["try", "flock", fb_s]), "ok");

    // Within one mount, two processes exclude each other as on a local filesystem.
    let holder = Holder::start("flock", &fa, 0, 0);
    assert_eq!(run(&["try", "flock", fa.to_str().unwrap()]), "EAGAIN");
    holder.release();
}

#[test]
fn a_waiting_process_is_interrupted_and_killed_as_on_a_local_filesystem() {
    let mc = Memcached::start();
    let a = Mount::new(&[mc.addr()], "memfis://locks");
    let b = Mount::new(&[mc.addr()], "memfis://locks");
    std::fs::write(a.p("f"), "x").unwrap();
    let holder = Holder::start("posix", &a.p("f"), 0, 0);
    let fb = visible(b.p("f"));
    // SIGALRM after 1 s ends the F_SETLKW wait on mount B with EINTR.
    let started = Instant::now();
    assert_eq!(run(&["wait", "posix", fb.to_str().unwrap(), "1"]), "EINTR");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    // kill -9 of a waiting process ends it at once, not when the lock frees.
    let mut waiter = ChildGuard(
        Command::new(worker())
            .args(["wait", "flock"])
            .arg(&fb)
            .arg("0")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.0.try_wait().unwrap().is_none(), "the waiter waits");
    let killed = Instant::now();
    waiter.0.kill().unwrap();
    waiter.0.wait().unwrap();
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    // A waiter gets the lock once the holder lets go.
    let mut waiter = ChildGuard(
        Command::new(worker())
            .args(["wait", "posix"])
            .arg(&fb)
            .arg("0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    holder.release();
    let out = std::mem::replace(&mut waiter.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn locks_of_a_killed_mount_are_free_once_its_liveness_lapses() {
    let mc = Memcached::start();
    let mut a = Mount::new(&[mc.addr()], "memfis://locks");
    let b = Mount::new(&[mc.addr()], "memfis://locks");
    std::fs::write(a.p("f"), "x").unwrap();
    std::fs::write(a.p("g"), "x").unwrap();
    let flocked = Holder::start("flock", &a.p("f"), 0, 0);
    let posix = Holder::start("posix", &a.p("g"), 0, 0);
    let (fb, gb) = (visible(b.p("f")), visible(b.p("g")));
    let (fb, gb) = (fb.to_str().unwrap(), gb.to_str().unwrap());
    assert_eq!(run(&["try", "flock", fb]), "EAGAIN");
    a.signal_and_wait(libc::SIGKILL);
    let killed = Instant::now();
    // Held while the liveness key lives (10 s from the last heartbeat, every 2 s).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        run(&["try", "flock", fb]),
        "EAGAIN",
        "freed before the lapse"
    );
    assert_eq!(
        run(&["try", "posix", gb]),
        "EAGAIN",
        "freed before the lapse"
    );
    loop {
        if run(&["try", "flock", fb]) == "ok" && run(&["try", "posix", gb]) == "ok" {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(13),
            "locks of the killed mount still held after {:?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("locks free {:?} after kill -9", killed.elapsed());
    drop(flocked);
    drop(posix);
}

#[test]
fn php_flock_on_two_hosts_pools_excludes() {
    let mc = Memcached::start();
    let a = Mount::new(&[mc.addr()], "memfis://php-locks");
    let b = Mount::new(&[mc.addr()], "memfis://php-locks");
    std::fs::write(a.p("counter"), "0\n").unwrap();
    visible(b.p("counter"));
    let fpm_a = PhpFpm::start(a.path(), 4, &[]);
    let fpm_b = PhpFpm::start(b.path(), 4, &[]);
    assert!(fpm_a.pid() != fpm_b.pid());
    let (port_a, port_b) = (fpm_a.port, fpm_b.port);
    let script = std::fs::canonicalize("tests/locks/flock_counter.php").unwrap();
    // One nginx standing for two hosts: /a goes to host A's pool, /b to host B's.
    let nginx = Nginx::two_php_hosts(&script, port_a, port_b);
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 40;
    let answers: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let nginx = &nginx;
                s.spawn(move || {
                    (0..REQUESTS)
                        .map(|i| {
                            let path = if (c + i) % 2 == 0 { "/a" } else { "/b" };
                            let (status, _, body) = nginx.get(path);
                            let body = String::from_utf8_lossy(&body).to_string();
                            assert_eq!(status, 200, "{path}: {body}");
                            body.trim().parse::<u64>().expect("a number")
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut sorted = answers.clone();
    sorted.sort();
    let total = (CLIENTS * REQUESTS) as u64;
    assert_eq!(
        sorted,
        (1..=total).collect::<Vec<u64>>(),
        "every number once"
    );
    let text = std::fs::read_to_string(b.p("counter")).unwrap();
    assert_eq!(text.trim(), total.to_string());
}
