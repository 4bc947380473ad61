//! `--replicas 2` on a pool of three real memcached servers: every key on two servers, where
//! nginx's consistent hash looks next; a server killed, then back empty, loses nothing that
//! was acknowledged: nginx serves every file from the store, mounts read every file, `memfis
//! check --repair` refills the emptied server.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::*;
use memfis_memcache::{Client, ClientConfig, Command, ReplicaKeys, Reply, Store, StoreOp};

const PREFIX: &str = "memfis://replicas";

/// Three servers of 64 MB.
fn pool() -> Vec<Memcached> {
    (0..3)
        .map(|_| Memcached::with_args(&["-m", "64", "-I", "2m"]))
        .collect()
}

fn addrs(servers: &[Memcached]) -> Vec<String> {
    servers.iter().map(Memcached::addr).collect()
}

/// A site: nested directories, small and mid-sized files, names with spaces.
fn site(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut rng = Rng(7);
    for d in ["", "css", "img", "docs/a b", "docs/deep/er"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        for i in 0..12 {
            let rel = if d.is_empty() {
                format!("page{i}.html")
            } else {
                format!("{d}/f{i}.bin")
            };
            let len = 1 + rng.below(40_000);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            std::fs::write(dir.join(&rel), &bytes).unwrap();
            files.insert(rel, bytes);
        }
    }
    files
}

/// Every file answers 200 from the store with its bytes.
fn assert_served(nginx: &Nginx, files: &BTreeMap<String, Vec<u8>>, when: &str) {
    for (rel, bytes) in files {
        let (status, headers, body) = nginx.get(&format!("/{}", url_encode(rel.as_bytes())));
        assert_eq!(status, 200, "{when}: /{rel}");
        assert_eq!(
            header(&headers, "x-memfis-source"),
            Some("store"),
            "{when}: /{rel}"
        );
        assert!(&body == bytes, "{when}: /{rel} served other bytes");
    }
}

/// Every file reads back through `mount` with its bytes.
fn assert_reads(mount: &Path, files: &BTreeMap<String, Vec<u8>>, when: &str) {
    for (rel, bytes) in files {
        let got = std::fs::read(mount.join(rel)).unwrap_or_else(|e| panic!("{when}: {rel}: {e}"));
        assert!(&got == bytes, "{when}: {rel} read other bytes");
    }
}

/// Which servers hold `key` (before nginx's escaping).
fn holders(servers: &[Memcached], key: &str) -> Vec<usize> {
    let key = memfis_fs::layout::keys::escape(key.as_bytes());
    (0..servers.len())
        .filter(|&i| servers[i].get(&key).is_some())
        .collect()
}

#[test]
fn a_server_killed_then_back_empty_loses_no_file() {
    let mut servers = pool();
    let list = addrs(&servers);
    let src = tempfile::tempdir().unwrap();
    let files = site(src.path());

    // No background refill here: `memfis check --repair` refills (the mounts' own refill:
    // a_live_mount_refills_a_server_back_empty_or_new).
    let writer = Mount::with_args(&list, PREFIX, &["--replicas", "2", "--refill-rate", "0"]);
    sh(&format!(
        "cp -a {}/. {}/",
        src.path().display(),
        writer.path().display()
    ));
    // Every data key is on exactly two servers: its own on the ring and the next.
    let client = Client::new(&ClientConfig::new(list.clone())).unwrap();
    client.set_replicas(2, &Default::default()).unwrap();
    for rel in files.keys() {
        let key = format!("{PREFIX}/{rel}");
        let want: Vec<usize> = {
            let mut h = client.servers_holding(&memfis_fs::layout::keys::escape(key.as_bytes()));
            h.sort();
            h
        };
        assert_eq!(holders(&servers, &key), want, "{key}");
    }

    let joined = list.join(",");
    let nginx = Nginx::for_store(&joined, PREFIX, &["--replicas", "2"]);
    assert_served(&nginx, &files, "all up");

    // One server dies: nginx and the mounts answer from the other copies.
    servers[1].stop();
    assert_served(&nginx, &files, "server 1 down");
    let reader = Mount::with_exact_args(&list, PREFIX, &["--refill-rate", "0"]);
    assert_reads(reader.path(), &files, "server 1 down, new mount");
    // Writes either land on every copy or fail (EIO): none is acknowledged and lost.
    let mut written = BTreeMap::new();
    for i in 0..20 {
        let rel = format!("during/{i}.txt");
        let _ = std::fs::create_dir(writer.p("during"));
        let bytes = format!("written while a server was down {i}").into_bytes();
        if std::fs::write(writer.p(&rel), &bytes).is_ok() {
            written.insert(rel, bytes);
        }
    }

    // It comes back empty: still served and read from the copies, and writable again.
    servers[1].restart();
    // A client leaves a server that failed alone for a second before it tries it again.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_served(&nginx, &files, "server 1 back empty");
    assert_reads(reader.path(), &files, "server 1 back empty");
    assert_reads(
        reader.path(),
        &written,
        "server 1 back empty, written while down",
    );
    std::fs::create_dir_all(writer.p("after"))
        .unwrap_or_else(|e| panic!("mkdir after the restart: {e}\n{}", writer.log_text()));
    let mut after = BTreeMap::new();
    for i in 0..10 {
        let rel = format!("after/{i}.txt");
        let bytes = format!("written after the restart {i}").into_bytes();
        std::fs::write(writer.p(&rel), &bytes)
            .unwrap_or_else(|e| panic!("{rel}: {e}\n{}", writer.log_text()));
        after.insert(rel, bytes);
    }
    assert_served(&nginx, &after, "written after the restart");

    // check names the emptied server; repair refills it; check is clean again.
    let (code, out) = memfis_on("check", &[], &joined, PREFIX);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("under-replicated") && out.contains("out of sync"),
        "{out}"
    );
    let (code, out) = memfis_on("check", &["--repair"], &joined, PREFIX);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("copies refilled"), "{out}");
    let (code, out) = memfis_on("check", &[], &joined, PREFIX);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(", 0 under-replicated"), "{out}");

    // The refilled copies count: another server dies and nothing is missed (once nginx uses
    // server 1 again: it skips a server for 2 s after a failure).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    servers[2].stop();
    assert_served(&nginx, &files, "server 2 down after the resync");
    assert_served(&nginx, &after, "server 2 down after the resync");
    let late = Mount::with_exact_args(&list, PREFIX, &["--refill-rate", "0"]);
    assert_reads(late.path(), &files, "server 2 down after the resync");
    assert_reads(late.path(), &written, "server 2 down after the resync");
    assert_reads(late.path(), &after, "server 2 down after the resync");
    // A rolling restart: it comes back empty too, and the mounts that lived through both
    // restarts go on reading (they once took its misses for an emptied store and fenced
    // themselves).
    servers[2].restart();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for m in [&late, &reader, &writer] {
        assert_reads(m.path(), &files, "server 2 back empty");
        assert_reads(m.path(), &after, "server 2 back empty");
    }
    std::fs::write(writer.p("after/rolled"), b"rolled").unwrap();
    drop((late, reader, writer));
}

/// Polls `memfis check` on `servers` until it exits 0, up to `secs` seconds: its last output.
fn wait_for_clean_check(servers: &str, secs: u64, when: &str, mount: &Mount) -> String {
    wait_for_check(servers, secs, when, mount, |code, _| code == 0)
}

/// Polls `memfis check` on `servers` until `done(exit code, output)`, up to `secs` seconds
/// (then fails with its output, its debug log and the mount's log): its last output.
fn wait_for_check(
    servers: &str,
    secs: u64,
    when: &str,
    mount: &Mount,
    done: impl Fn(i32, &str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let (code, out) = memfis_on("check", &[], servers, PREFIX);
        if done(code, &out) {
            return out;
        }
        if std::time::Instant::now() >= deadline {
            let debug = std::process::Command::new(BIN)
                .args(["check", "--server", servers, "--prefix", PREFIX])
                .env("MEMFIS_LOG", "debug")
                .output()
                .unwrap();
            eprintln!("{}", String::from_utf8_lossy(&debug.stderr));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{when}: check not as wanted within {secs} s:\n{out}\nmount's log:\n{}",
            mount.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// A figure of the mount's metrics.
fn metric(port: u16, name: &str) -> u64 {
    let (_, _, body) = http_request(port, "GET", "/metrics", &[]);
    let body = String::from_utf8_lossy(&body).into_owned();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

/// A live mount refills a server back empty, slowly enough (`--refill-rate 40`) that
/// `memfis stats` shows its progress; then a fourth server joins the pool and the mount of
/// the four refills it. Each time, every file is then served from the store with any one
/// server down.
#[test]
fn a_live_mount_refills_a_server_back_empty_or_new() {
    let mut servers = pool();
    let list = addrs(&servers);
    let joined = list.join(",");
    let src = tempfile::tempdir().unwrap();
    let files = site(src.path());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mount = Mount::with_args(
        &list,
        PREFIX,
        &["--replicas", "2", "--refill-rate", "40", "--metrics", &addr],
    );
    sh(&format!(
        "cp -a {}/. {}/",
        src.path().display(),
        mount.path().display()
    ));

    servers[1].stop();
    servers[1].restart();
    // The mount's next batches find it without its marker; its refill takes the lease and
    // says how far it got.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let progress = loop {
        let (_, out) = memfis_on("stats", &[], &joined, PREFIX);
        if let Some(line) = out.lines().find(|l| l.starts_with("refill: mount")) {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refill shown by stats:\n{out}\n{}",
            mount.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(progress.contains(&list[1]), "{progress}");
    assert_eq!(metric(port, "memfis_refill_running"), 1);
    let out = wait_for_clean_check(&joined, 60, "server 1 refilled", &mount);
    assert!(out.contains(", 0 under-replicated"), "{out}");
    assert_eq!(metric(port, "memfis_refills_total{result=\"done\"}"), 1);
    assert!(metric(port, "memfis_refill_copies_total") > 100);
    assert_eq!(metric(port, "memfis_servers_lacking_copies"), 0);
    assert_eq!(metric(port, "memfis_refill_running"), 0);
    let (_, out) = memfis_on("stats", &[], &joined, PREFIX);
    assert!(
        !out.contains("refill: mount"),
        "the lease outlived the refill:\n{out}"
    );

    // What server 1 got counts: server 0, which held the other copies of many of its keys,
    // goes (nginx skips a server for 2 s after a failure: let it use server 1 again first).
    let nginx = Nginx::for_store(&joined, PREFIX, &["--replicas", "2"]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    servers[0].stop();
    assert_served(&nginx, &files, "server 0 down after the refill");
    // Back empty too: the mount refills it in turn.
    servers[0].restart();
    wait_for_clean_check(&joined, 60, "server 0 refilled", &mount);
    drop(nginx);

    // A fourth server joins: keys move on the ring, and some now have the new server among
    // their two. A mount of the four refills it from the copies the others hold, but not
    // while a mount of the three still runs: that one writes where its own ring says, which
    // the new server would miss once taken for in sync.
    let fourth = Memcached::with_args(&["-m", "64", "-I", "2m"]);
    let mut four = list.clone();
    four.push(fourth.addr());
    let all = four.join(",");
    let old = mount;
    let mount = Mount::with_exact_args(&four, PREFIX, &[]);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let during = b"written through a mount of the three servers after the fourth came".to_vec();
    std::fs::write(old.p("during-switch.txt"), &during).unwrap();
    let (code, out) = memfis_on("check", &[], &all, PREFIX);
    assert_eq!(
        code, 4,
        "the new server was refilled while a mount of the old list ran:\n{out}"
    );
    assert!(
        mount.log_text().contains("use another list of servers"),
        "{}",
        mount.log_text()
    );
    drop(old);
    let out = wait_for_clean_check(&all, 60, "the new server refilled", &mount);
    assert_eq!(std::fs::read(mount.p("during-switch.txt")).unwrap(), during);
    assert!(out.contains(", 0 under-replicated"), "{out}");
    assert!(
        !fourth.keys().is_empty(),
        "the new server holds nothing after its refill"
    );
    let nginx = Nginx::for_store(&all, PREFIX, &["--replicas", "2"]);
    assert_served(&nginx, &files, "four servers");
    assert_reads(mount.path(), &files, "four servers");
    // Any one server can go: its keys' other copies are on the three left.
    servers[2].stop();
    assert_served(&nginx, &files, "four servers, server 2 down");
    drop((nginx, mount));
}

/// A server killed -9 while `memfis load` writes: the load fails (or not, if it was done),
/// the server comes back empty, the operator runs the load again, and then every file is
/// served from the store with its bytes, a mount refills the server, `check --repair` leaves
/// the tree clean, and every file is still served with another server down.
#[test]
fn a_server_killed_during_a_load_loses_nothing_once_the_load_is_run_again() {
    let mut servers = pool();
    let list = addrs(&servers);
    let joined = list.join(",");
    let src = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    let mut rng = Rng(11);
    for i in 0..4000 {
        let rel = format!("d{}/f{i}.html", i % 30);
        std::fs::create_dir_all(src.path().join(format!("d{}", i % 30))).unwrap();
        let bytes: Vec<u8> = (0..1 + rng.below(4000)).map(|_| rng.next() as u8).collect();
        std::fs::write(src.path().join(&rel), &bytes).unwrap();
        files.insert(rel, bytes);
    }
    let load = || {
        std::process::Command::new(BIN)
            .args(["load", src.path().to_str().unwrap(), "--replicas", "2"])
            .args(["--server", &joined, "--prefix", PREFIX])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = load();
    std::thread::sleep(std::time::Duration::from_millis(150));
    // SAFETY: killing the test's own child.
    unsafe { libc::kill(servers[1].pid(), libc::SIGKILL) };
    let out = first.wait_with_output().unwrap();
    eprintln!(
        "first load: {} ({})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
    servers[1].restart();
    // Writes work again once the server has rested (a second).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let again = load().wait_with_output().unwrap();
    assert!(
        again.status.success(),
        "the second load: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let nginx = Nginx::for_store(&joined, PREFIX, &["--replicas", "2"]);
    assert_served(&nginx, &files, "after the second load");
    let mount = Mount::with_exact_args(&list, PREFIX, &["--refill-rate", "50000"]);
    assert_reads(mount.path(), &files, "after the second load");
    // The mount refills the server. (The tree itself may hold records the killed load made
    // and never named, as with one copy: `check --repair` deletes them.)
    wait_for_check(&joined, 60, "refilled after the load", &mount, |_, out| {
        out.contains(", 0 under-replicated") && !out.contains("out of sync")
    });
    let (code, out) = memfis_on("check", &["--repair"], &joined, PREFIX);
    assert!(code == 0 || code == 1, "{out}");
    wait_for_clean_check(&joined, 30, "after the repair", &mount);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    servers[2].stop();
    assert_served(&nginx, &files, "server 2 down after the refill");
    drop(mount);
}

#[test]
fn the_number_of_copies_is_the_trees() {
    let servers = pool();
    let list = addrs(&servers);
    let joined = list.join(",");
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.txt"), b"a").unwrap();
    let (code, out) = memfis_on(
        "load",
        &[src.path().to_str().unwrap(), "--replicas", "2"],
        &joined,
        PREFIX,
    );
    assert_eq!(code, 0, "{out}");
    // The format record says so; tools given no number take it; another number is refused.
    let format = servers
        .iter()
        .find_map(|s| s.get(format!("{PREFIX}%format").as_bytes()))
        .unwrap();
    assert!(String::from_utf8_lossy(&format).contains("\"replicas\":2"));
    let (code, out) = memfis_on("check", &[], &joined, PREFIX);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("copies: 2 of each key"), "{out}");
    let (code, out) = memfis_on("check", &["--replicas", "1"], &joined, PREFIX);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("keeps 2 copies of each key, not 1"), "{out}");
    // More copies than servers is refused before anything is written.
    let (code, out) = memfis_on(
        "load",
        &[src.path().to_str().unwrap(), "--replicas", "4"],
        &joined,
        "memfis://four",
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("at least 4 servers"), "{out}");
    assert!(
        servers
            .iter()
            .all(|s| s.get(b"memfis://four%format").is_none())
    );
    // A tree of one copy keeps its format record as it always was.
    let (code, out) = memfis_on(
        "load",
        &[src.path().to_str().unwrap()],
        &joined,
        "memfis://one",
    );
    assert_eq!(code, 0, "{out}");
    let format = servers
        .iter()
        .find_map(|s| s.get(b"memfis://one%format"))
        .unwrap();
    assert!(!String::from_utf8_lossy(&format).contains("replicas"));
    // A tree of two copies made after it: the store's list of prefixes, written by the
    // one-copy tree on one server only, gets its second copy (a fix-up from a server with
    // no marker of the new tree yet once failed here).
    let (code, out) = memfis_on(
        "load",
        &[src.path().to_str().unwrap(), "--replicas", "2"],
        &joined,
        "memfis://two-after",
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = memfis_on("check", &[], &joined, "memfis://two-after");
    assert_eq!(code, 0, "{out}");
}

/// The client on its own: the acting primary decides conditional commands and the other copy
/// follows it, whatever the copy held before.
#[test]
fn copies_follow_the_primary() {
    let servers = pool();
    let client = Arc::new(Client::new(&ClientConfig::new(addrs(&servers))).unwrap());
    let keys = ReplicaKeys {
        marker: b"memfis://c%synced".to_vec(),
        presence: b"memfis://c%alive.".to_vec(),
        ..Default::default()
    };
    client.set_replicas(2, &keys).unwrap();
    client.mark_all_in_sync().unwrap();
    let key = b"memfis://c%k1".to_vec();
    let copies = client.servers_holding(&key);
    let (primary, copy) = (&servers[copies[0]], &servers[copies[1]]);

    // An add the copy refuses (it holds a stray value) is decided by the primary.
    copy.set(&key, b"stray");
    assert!(client.store(StoreOp::Add, &key, b"v1").unwrap());
    assert_eq!(primary.get(&key).unwrap(), b"v1");
    assert_eq!(copy.get(&key).unwrap(), b"v1");
    // An add the primary refuses is refused, and the copy keeps the primary's value.
    assert!(!client.store(StoreOp::Add, &key, b"v2").unwrap());
    assert_eq!(copy.get(&key).unwrap(), b"v1");

    // gets + cas change both copies; a stale token changes neither.
    let item = client.gets(&key).unwrap().unwrap();
    let cas = item.cas.unwrap();
    let r = client.run(Command::cas(&key, b"v3", cas)).unwrap();
    assert_eq!(r, Reply::Stored);
    assert_eq!(primary.get(&key).unwrap(), b"v3");
    assert_eq!(copy.get(&key).unwrap(), b"v3");
    let r = client.run(Command::cas(&key, b"v4", cas)).unwrap();
    assert_eq!(r, Reply::Exists);
    assert_eq!(copy.get(&key).unwrap(), b"v3");

    // An append to a copy that lost the key gives it the whole value.
    copy.delete(&key);
    assert!(client.store(StoreOp::Append, &key, b"+").unwrap());
    assert_eq!(copy.get(&key).unwrap(), b"v3+");
    // Counters stay equal.
    client.store(StoreOp::Set, b"memfis://c%n", b"5").unwrap();
    servers[client.servers_holding(b"memfis://c%n")[1]].set(b"memfis://c%n", b"9");
    assert_eq!(client.incr(b"memfis://c%n", 1).unwrap(), Some(6));
    for s in &servers {
        if let Some(v) = s.get(b"memfis://c%n") {
            assert_eq!(v, b"6");
        }
    }
    // A delete removes every copy.
    assert!(client.delete(&key).unwrap());
    assert!(holders(&servers, "memfis://c%k1").is_empty());
}

/// Two mounts write files while one server is killed (-9) and later comes back empty: every
/// file whose write and close succeeded is there afterwards with its bytes, on both mounts
/// and through nginx, once `memfis check --repair` has refilled the server, and again with
/// another server down.
#[test]
fn acknowledged_writes_survive_a_server_killed_mid_copy() {
    let mut servers = pool();
    let list = addrs(&servers);
    let joined = list.join(",");
    let a = Mount::with_args(&list, PREFIX, &["--replicas", "2"]);
    let b = Mount::with_exact_args(&list, PREFIX, &[]);
    std::fs::create_dir(a.p("a")).unwrap();
    std::fs::create_dir(a.p("b")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = |root: std::path::PathBuf, tag: &'static str, seed: u64| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut acked = BTreeMap::new();
            let mut failed = 0;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let rel = format!("{tag}/f{i}");
                let len = 1 + rng.below(20_000);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let wrote = std::fs::File::create(root.join(&rel)).and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(&bytes)?;
                    f.sync_all()
                });
                match wrote {
                    Ok(()) => {
                        acked.insert(rel, bytes);
                    }
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (acked, failed)
        })
    };
    let wa = writer(a.path().to_path_buf(), "a", 1);
    let wb = writer(b.path().to_path_buf(), "b", 2);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: killing the test's own child.
    unsafe { libc::kill(servers[0].pid(), libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(1000));
    servers[0].restart();
    std::thread::sleep(std::time::Duration::from_millis(2000));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut files, failed_a) = wa.join().unwrap();
    let (files_b, failed_b) = wb.join().unwrap();
    files.extend(files_b);
    assert!(files.len() > 20, "too few writes: {}", files.len());
    eprintln!(
        "{} writes acknowledged, {} failed while the server was down or resting",
        files.len(),
        failed_a + failed_b
    );
    assert_reads(a.path(), &files, "after the restart, mount a");
    assert_reads(b.path(), &files, "after the restart, mount b");

    let (code, out) = memfis_on("check", &["--repair"], &joined, PREFIX);
    assert!(code == 0 || code == 1, "{out}");
    let (code, out) = memfis_on("check", &[], &joined, PREFIX);
    assert_eq!(code, 0, "{out}");

    let nginx = Nginx::for_store(&joined, PREFIX, &["--replicas", "2"]);
    assert_served(&nginx, &files, "after the repair");
    servers[1].stop();
    assert_served(&nginx, &files, "after the repair, server 1 down");
    let late = Mount::with_exact_args(&list, PREFIX, &[]);
    assert_reads(late.path(), &files, "after the repair, server 1 down");
    servers[1].restart();
    drop((late, a, b));
}

fn replicated_client(servers: &[Memcached]) -> Client {
    let mut cfg = ClientConfig::new(addrs(servers));
    cfg.io_timeout = std::time::Duration::from_millis(500);
    let client = Client::new(&cfg).unwrap();
    let keys = ReplicaKeys {
        marker: b"memfis://c%synced".to_vec(),
        presence: b"memfis://c%alive.".to_vec(),
        ..Default::default()
    };
    client.set_replicas(2, &keys).unwrap();
    client.mark_all_in_sync().unwrap();
    client
}

/// A server restarted between two batches (its idle connection re-dialled inside the next
/// batch) is not believed: its marker is read in the same exchange, and the other copy
/// answers. Before, an `add` replaced an acknowledged value and an `append` deleted it from
/// every server.
#[test]
fn a_server_restarted_between_two_batches_is_not_believed() {
    let mut servers = pool();
    let client = replicated_client(&servers);
    let key = b"memfis://c%k".to_vec();
    assert!(client.store(StoreOp::Set, &key, b"v1").unwrap());
    let [owner, copy] = client.servers_holding(&key)[..] else {
        unreachable!()
    };
    servers[owner].restart();
    assert!(!client.store(StoreOp::Add, &key, b"v2").unwrap());
    assert!(client.store(StoreOp::Append, &key, b"+").unwrap());
    assert_eq!(client.get(&key).unwrap().unwrap().value, b"v1+");
    assert_eq!(servers[copy].get(&key).unwrap(), b"v1+");
    servers[owner].restart();
    assert_eq!(client.get(&key).unwrap().unwrap().value, b"v1+");
}

/// A server stalled while a write went to its copy (it answers again later, still holding its
/// marker and the old value) never answers for that key with the old value, and is set right
/// by the client's next batch.
#[test]
fn a_copy_that_missed_a_write_is_set_right_when_it_answers_again() {
    let servers = pool();
    let client = replicated_client(&servers);
    let key = b"memfis://c%k".to_vec();
    assert!(client.store(StoreOp::Set, &key, b"old").unwrap());
    let [owner, copy] = client.servers_holding(&key)[..] else {
        unreachable!()
    };
    servers[owner].pause();
    assert!(client.store(StoreOp::Set, &key, b"new").is_err());
    servers[owner].resume();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // the client's rest
    assert_eq!(client.get(&key).unwrap().unwrap().value, b"new");
    assert_eq!(servers[owner].get(&key).unwrap(), b"new");
    assert_eq!(servers[copy].get(&key).unwrap(), b"new");
}
