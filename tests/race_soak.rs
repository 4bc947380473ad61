//! Races between real mounts, end to end: three FUSE mounts of one real memcached, two random
//! workers on each doing what web tools do (create, overwrite, pwrite, rename of files and
//! directories, RENAME_EXCHANGE and RENAME_NOREPLACE, unlink, mkdir, rmdir, link, relative
//! symlinks, chmod, utimens, setxattr), with the mounts' caches on as the kernel uses them.
//!
//! Every result is checked: only the errors a local filesystem may give such a race pass
//! (ENOENT, EEXIST, ...); EIO, EBUSY and anything else fail the test, and ESTALE past one in
//! 20,000 calls (`estale_allowed`), or at all with `MEMFIS_RACE_STRICT=1`. Afterwards an
//! oracle that does not use memfis's own code to read the store: a fresh mount walks the
//! tree, every entry stats and every file reads; every served key holds exactly the bytes the
//! mount reads; no served key lies outside the tree; then `memfis check` is clean.
//!
//! `MEMFIS_RACE_SECS` sets the length (default 60 s). For a diagnosis, `MEMFIS_RACE_LOGS=DIR`
//! keeps the mounts' logs and `MEMFIS_TEST_LOG=info,memfis_fs::store::store_trace=trace` makes them
//! hold every store batch with its replies.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "memfis://race-soak";
const DIRS: [&str; 3] = ["d0", "d1", "d2"];
const FILES: [&str; 4] = ["f0", "f1", "f2", "f3"];
const LINKS: [&str; 2] = ["s0", "s1"];

/// A random path inside the mount: up to two directories deep, ending in `last`.
fn path_in(rng: &mut Rng, root: &Path, names: &[&str]) -> PathBuf {
    let last = rng.pick(names);
    let mut p = root.to_path_buf();
    for _ in 0..rng.below(3) {
        p.push(rng.pick(&DIRS));
    }
    p.push(last);
    p
}

/// A random path ending in a name of any kind.
fn any_path(rng: &mut Rng, root: &Path) -> PathBuf {
    let last = any_name(rng);
    path_in(rng, root, &[last])
}

fn any_name(rng: &mut Rng) -> &'static str {
    match rng.below(10) {
        0..=3 => rng.pick(&FILES),
        4..=7 => rng.pick(&DIRS),
        _ => rng.pick(&LINKS),
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn rc(r: i32) -> Result<(), i32> {
    if r == 0 { Ok(()) } else { Err(errno()) }
}

fn io(r: std::io::Result<impl Sized>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let (f, t) = (cpath(from), cpath(to));
    // SAFETY: two NUL-terminated paths; AT_FDCWD for both directories.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    rc(r as i32)
}

fn content(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(3000);
    let byte = b'a' + rng.below(26) as u8;
    vec![byte; len]
}

/// One random operation; its name and its result.
fn one_op(rng: &mut Rng, root: &Path) -> (&'static str, Result<(), i32>) {
    match rng.below(16) {
        0 | 1 => {
            let p = path_in(rng, root, &FILES);
            ("write", io(std::fs::write(p, content(rng))))
        }
        2 => {
            let p = path_in(rng, root, &FILES);
            let data = content(rng);
            let at = rng.below(4000) as u64;
            let r = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .and_then(|f| f.write_all_at(&data, at));
            ("pwrite", io(r))
        }
        3 => {
            let p = path_in(rng, root, &FILES);
            ("read", io(std::fs::read(p)))
        }
        4 | 5 => {
            let name = [any_name(rng)];
            let (a, b) = (path_in(rng, root, &name), path_in(rng, root, &name));
            ("rename", io(std::fs::rename(a, b)))
        }
        6 => {
            let (a, b) = (any_path(rng, root), any_path(rng, root));
            ("exchange", renameat2(&a, &b, libc::RENAME_EXCHANGE))
        }
        7 => {
            let (a, b) = (any_path(rng, root), any_path(rng, root));
            ("noreplace", renameat2(&a, &b, libc::RENAME_NOREPLACE))
        }
        8 => {
            let p = path_in(rng, root, &FILES);
            ("unlink", io(std::fs::remove_file(p)))
        }
        9 => {
            let p = path_in(rng, root, &DIRS);
            ("mkdir", io(std::fs::create_dir(p)))
        }
        10 => {
            let p = path_in(rng, root, &DIRS);
            ("rmdir", io(std::fs::remove_dir(p)))
        }
        11 => {
            let (a, b) = (path_in(rng, root, &FILES), path_in(rng, root, &FILES));
            ("link", io(std::fs::hard_link(a, b)))
        }
        12 => {
            // Relative, one plain name: resolves next to the link, always inside the mount.
            let target = any_name(rng);
            let p = path_in(rng, root, &LINKS);
            ("symlink", io(std::os::unix::fs::symlink(target, p)))
        }
        13 => {
            let p = path_in(rng, root, &FILES);
            let mode = [0o644, 0o600, 0o755, 0o640][rng.below(4)];
            let r = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
            ("chmod", io(r))
        }
        14 => {
            let p = cpath(&any_path(rng, root));
            let t = libc::timespec {
                tv_sec: 1_700_000_000 + rng.below(1000) as i64,
                tv_nsec: rng.below(1_000_000_000) as i64,
            };
            // SAFETY: a NUL-terminated path and two timespecs; no symlink followed.
            let r = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), [t, t].as_ptr(), 0x100) };
            ("utimens", rc(r))
        }
        _ => {
            let p = path_in(rng, root, &FILES);
            let value = content(rng);
            (
                "setxattr",
                io(xattr::set(p, "user.race", &value[..value.len() % 200])),
            )
        }
    }
}

/// Errors a local filesystem may answer to these operations racing each other.
fn expected(op: &str, e: i32) -> bool {
    let usual = [
        libc::ENOENT,
        libc::EEXIST,
        libc::ENOTEMPTY,
        libc::ENOTDIR,
        libc::EISDIR,
        libc::ELOOP,
    ];
    usual.contains(&e)
        // Renaming a directory into itself.
        || (e == libc::EINVAL && matches!(op, "rename" | "exchange" | "noreplace"))
        // A hard link to a directory (through a symlink, or a name now a directory).
        || (e == libc::EPERM && op == "link")
        // xattrs on a symlink's target that is a directory or a special file.
        || (e == libc::EPERM && op == "setxattr")
}

#[derive(Default)]
struct Tally {
    ops: u64,
    by_result: BTreeMap<(String, String), u64>,
    unexpected: Vec<String>,
    /// ESTALE at callers: counted apart (see [`estale_allowed`]).
    estale: u64,
}

/// ESTALE at a caller: a directory another mount moved gets a fresh node id (no cached entry
/// for the kernel to move, src/fuse/node_ids.rs) and an open whose retry misses again is
/// ENOENT, yet about one call in 100,000 still sees ESTALE here (a rename's or an open's path
/// walk). Past one in 20,000 it fails the test, and at all with `MEMFIS_RACE_STRICT=1`.
fn estale_allowed(ops: u64) -> u64 {
    match std::env::var_os("MEMFIS_RACE_STRICT") {
        Some(_) => 0,
        None => ops / 20_000,
    }
}

/// A file whose record says another size than its data key holds (a fresh mount reads the
/// key's bytes and takes their size, so `memfis check` afterwards would be clean): it was
/// left by publishes that took key tokens at a moment a rename or exchange had changed the
/// records but not yet moved the bytes, or at paths a directory rename had made stale.
const SIZE_DIFFERS: &str = "record size differs from its bytes";

fn errno_name(e: i32) -> String {
    match e {
        libc::ENOENT => "ENOENT".into(),
        libc::EEXIST => "EEXIST".into(),
        libc::ENOTEMPTY => "ENOTEMPTY".into(),
        libc::ENOTDIR => "ENOTDIR".into(),
        libc::EISDIR => "EISDIR".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EIO => "EIO".into(),
        libc::ESTALE => "ESTALE".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::ELOOP => "ELOOP".into(),
        libc::EPERM => "EPERM".into(),
        e => format!("errno {e}"),
    }
}

fn run_worker(root: &Path, seed: u64, until: Instant, tally: &Mutex<Tally>) {
    let mut rng = Rng(seed | 1);
    while Instant::now() < until {
        let (op, result) = one_op(&mut rng, root);
        let mut t = tally.lock().unwrap();
        t.ops += 1;
        let key = match result {
            Ok(()) => "ok".to_string(),
            Err(libc::ESTALE) => {
                t.estale += 1;
                errno_name(libc::ESTALE)
            }
            Err(e) => {
                if !expected(op, e) && t.unexpected.len() < 50 {
                    t.unexpected
                        .push(format!("{op}: {} (worker seed {seed})", errno_name(e)));
                }
                errno_name(e)
            }
        };
        *t.by_result.entry((op.to_string(), key)).or_default() += 1;
    }
}

/// Walks a fresh mount: every entry stats, every file reads, every symlink reads. Returns the
/// bytes of each file others may read, by its path from the root ("/a/b").
fn walk(
    root: &Path,
    rel: &str,
    served: &mut BTreeMap<String, Vec<u8>>,
    problems: &mut Vec<String>,
) {
    let dir = root.join(rel.trim_start_matches('/'));
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => return problems.push(format!("readdir {rel}/: {e}")),
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("readdir {rel}/: {e}"));
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{rel}/{name}");
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("lstat {path}: {e}"));
                continue;
            }
        };
        if meta.is_dir() {
            walk(root, &path, served, problems);
        } else if meta.file_type().is_symlink() {
            if let Err(e) = std::fs::read_link(entry.path()) {
                problems.push(format!("readlink {path}: {e}"));
            }
        } else if meta.is_file() {
            match std::fs::read(entry.path()) {
                Ok(bytes) => {
                    if bytes.len() as u64 != meta.size() {
                        problems.push(format!(
                            "{path} (inode {}): {SIZE_DIFFERS}: read {} bytes, stat says {}",
                            meta.ino(),
                            bytes.len(),
                            meta.size()
                        ));
                    }
                    if meta.mode() & 0o004 != 0 {
                        served.insert(path, bytes);
                    }
                }
                Err(e) => problems.push(format!("read {path}: {e}")),
            }
        }
    }
}

/// Warnings and errors counted by kind: the text after the level, colours gone, numbers as `N`, cut
/// short (paths and keys vary; the kind of message does not).
fn warning_kinds(lines: &[&str]) -> BTreeMap<String, u64> {
    let mut kinds = BTreeMap::new();
    for line in lines {
        let mut plain = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
                continue;
            }
            plain.push(c);
        }
        let Some((_, text)) = plain
            .split_once(" WARN ")
            .or_else(|| plain.split_once(" ERROR "))
        else {
            continue;
        };
        let text = text.trim();
        let mut kind = String::new();
        for c in text.chars() {
            match c.is_ascii_digit() {
                true if kind.ends_with('N') => {}
                true => kind.push('N'),
                false => kind.push(c),
            }
        }
        let kind: String = kind.chars().take(100).collect();
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

/// The oracle: a fresh mount's tree against the raw store. Returns what is wrong.
fn check_store_against_fresh_mount(mc: &Memcached) -> Vec<String> {
    let m = Mount::new(&[mc.addr()], PREFIX);
    let mut served = BTreeMap::new();
    let mut problems = Vec::new();
    walk(m.path(), "", &mut served, &mut problems);
    // Paths whose key would pass memcached's 250 bytes keep their bytes at a private key.
    served.retain(|path, _| PREFIX.len() + path.len() <= 250);
    for (path, bytes) in &served {
        let key = format!("{PREFIX}{path}");
        match mc.get(key.as_bytes()) {
            Some(v) if &v == bytes => {}
            Some(v) => problems.push(format!(
                "served key {key} holds {} bytes, the file {}",
                v.len(),
                bytes.len()
            )),
            None => problems.push(format!("served key {key} is missing")),
        }
    }
    let served_keys: BTreeSet<Vec<u8>> = served
        .keys()
        .map(|p| format!("{PREFIX}{p}").into_bytes())
        .collect();
    let data_prefix = format!("{PREFIX}/");
    for key in mc.keys() {
        if key.starts_with(data_prefix.as_bytes()) && !served_keys.contains(&key) {
            problems.push(format!(
                "served key {} names no file others may read",
                String::from_utf8_lossy(&key)
            ));
        }
    }
    drop(m);
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    if code != 0 {
        problems.push(format!("memfis check exits {code}:\n{out}"));
    }
    problems
}

#[test]
fn three_mounts_racing_give_posix_answers_and_serve_exact_bytes() {
    let secs: u64 = std::env::var("MEMFIS_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mc = Memcached::start();
    let mounts: Vec<Mount> = (0..3).map(|_| Mount::new(&[mc.addr()], PREFIX)).collect();
    let until = Instant::now() + Duration::from_secs(secs);
    let tally = Mutex::new(Tally::default());
    let base_seed = std::env::var("MEMFIS_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    std::thread::scope(|s| {
        for (i, m) in mounts.iter().enumerate() {
            for w in 0..2u64 {
                let seed = base_seed.wrapping_add(i as u64 * 1000 + w);
                let tally = &tally;
                s.spawn(move || run_worker(m.path(), seed, until, tally));
            }
        }
    });
    let tally = tally.into_inner().unwrap();
    let mut summary = String::new();
    for ((op, result), n) in &tally.by_result {
        summary.push_str(&format!("  {op:<10} {result:<10} {n}\n"));
    }
    eprintln!(
        "{} operations in {secs} s (base seed {base_seed}):\n{summary}",
        tally.ops
    );
    let logs: Vec<String> = mounts.iter().map(|m| m.log_text()).collect();
    if let Some(dir) = std::env::var_os("MEMFIS_RACE_LOGS") {
        // Kept for a diagnosis (with MEMFIS_TEST_LOG=info,memfis_fs::store::store_trace=trace,
        // every batch of every mount).
        for (i, log) in logs.iter().enumerate() {
            std::fs::write(Path::new(&dir).join(format!("mount{i}.log")), log).unwrap();
        }
    }
    drop(mounts);
    for (i, log) in logs.iter().enumerate() {
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains(" INFO ") && !l.contains(" TRACE "))
            .collect();
        eprintln!("mount {i}: {} log lines besides INFO", warnings.len());
        for (kind, n) in warning_kinds(&warnings) {
            eprintln!("  {n:>6} x {kind}");
        }
        for line in warnings.iter().take(30) {
            eprintln!("  {line}");
        }
    }
    let oracle = check_store_against_fresh_mount(&mc);
    let allowed = estale_allowed(tally.ops);
    eprintln!("ESTALE: {} (allowed {allowed})", tally.estale);
    assert!(
        tally.estale <= allowed,
        "{} ESTALE in {} operations (allowed {allowed}): see estale_allowed",
        tally.estale,
        tally.ops
    );
    assert!(
        tally.unexpected.is_empty() && oracle.is_empty(),
        "errors a local filesystem would not give:\n{:#?}\nthe store afterwards:\n{:#?}\n\
         mount logs (first 20 warnings each):\n{}",
        tally.unexpected,
        oracle,
        logs.iter()
            .map(|l| l
                .lines()
                .filter(|l| l.contains("WARN"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
}
