//! Trees are made only on purpose: a prefix with no tree is refused by `mount` (unless
//! `--create`), `check`, `export` and `stats` without writing a byte to the store, while
//! `load` makes it and says so. Two nesting prefixes created at the same moment never both
//! succeed, and the refused one writes nothing.

mod common;

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use memfis_fs::{FsConfig, FsError, KeyLayout, MemFs};
use memfis_memcache::{Client, ClientConfig};

/// Every key on the server, sorted, with every counter of a command that writes: equal before
/// and after means nothing was stored, changed, touched or deleted.
fn store_state(mc: &Memcached) -> (Vec<Vec<u8>>, Vec<u64>) {
    let keys = stable_keys(mc);
    let counters = [
        "cmd_set",
        "cmd_touch",
        "incr_hits",
        "incr_misses",
        "decr_hits",
        "decr_misses",
        "delete_hits",
        "delete_misses",
        "cas_hits",
        "cas_misses",
        "cas_badval",
        "total_items",
    ]
    .iter()
    .map(|name| mc.stat(name))
    .collect();
    (keys, counters)
}

/// Every key on the server but liveness keys, sorted, once two listings in a row agree:
/// `lru_crawler metadump` can miss an item that memcached moves between its LRUs while the
/// crawler passes (seen right after a load: a key listed after the refusals but not before,
/// with no write counted). The load's liveness key expires 10 s after it ends, which may fall
/// between two snapshots: left out (a liveness key written by a refusal counts in `cmd_set`).
fn stable_keys(mc: &Memcached) -> Vec<Vec<u8>> {
    let list = || {
        let mut keys: Vec<Vec<u8>> = mc
            .keys()
            .into_iter()
            .filter(|k| !k.windows(7).any(|w| w == b"%alive."))
            .collect();
        keys.sort();
        keys
    };
    let mut last = list();
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let keys = list();
        if keys == last {
            return keys;
        }
        last = keys;
    }
    panic!("the key listing never settled: {last:?}");
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs memfis with `args`, killed (and the test failed) if it is still running after `limit`;
/// its exit status and stderr.
fn run_for_at_most(limit: Duration, args: &[&str]) -> (i32, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = ChildGuard(
        Command::new(BIN)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "memfis {args:?} still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(log.path()).unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn a_prefix_with_no_tree_is_refused_without_a_write_unless_created() {
    let mc = Memcached::start();
    let server = mc.addr();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), b"<p>www</p>").unwrap();

    // `load` into a new prefix makes its tree, and says so.
    let src = site.path().to_str().unwrap();
    let (code, _, err) = run(&["load", src, "--server", &server, "--prefix", "memfis://www"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("no tree under prefix \"memfis://www\"")
            && err.contains("made a new, empty one")
            && err.contains("trees already here: none"),
        "{err}"
    );

    // A mistyped prefix: every tool refuses it and the store is left exactly as it was.
    let before = store_state(&mc);
    let dir = tempfile::tempdir().unwrap();
    // Made before any mount is tried: a mount that wrongly succeeds is undone even on failure.
    let _unmount = UnmountGuard(dir.path().to_path_buf());
    let mp = dir.path().to_str().unwrap();
    let typo = "memfis://wwww";
    // Every command refuses it with the same exit status, 8, and the same words.
    let (code, _, err) = run(&["mount", mp, "--server", &server, "--prefix", typo]);
    assert_eq!(code, 8, "{err}");
    assert!(!is_mounted(dir.path()));
    assert!(
        err.contains("no memfis tree under prefix \"memfis://wwww\"")
            && err.contains("trees here: memfis://www")
            && err.contains("--create"),
        "{err}"
    );
    // In the foreground a wrong success would never return: run with a deadline.
    let (code, err) = run_for_at_most(
        Duration::from_secs(20),
        &[
            "mount",
            mp,
            "--foreground",
            "--server",
            &server,
            "--prefix",
            typo,
        ],
    );
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("--create"), "{err}");

    let (code, out, err) = run(&["check", "--server", &server, "--prefix", typo]);
    assert_eq!(code, 8, "{out}{err}");
    assert!(
        err.contains("no memfis tree under prefix \"memfis://wwww\" on this store")
            && err.contains("trees here: memfis://www"),
        "{err}"
    );
    let (code, out, err) = run(&["check", "--json", "--server", &server, "--prefix", typo]);
    assert_eq!(code, 8, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("check --json prints JSON");
    assert_eq!(json["tree"], false, "{json}");
    assert_eq!(json["prefix"], typo, "{json}");
    assert_eq!(json["trees"], serde_json::json!(["memfis://www"]), "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("no memfis tree under prefix"),
        "{json}"
    );
    let (code, out, err) = run(&["check", "--repair", "--server", &server, "--prefix", typo]);
    assert_eq!(code, 8, "{out}{err}");

    let dest = tempfile::tempdir().unwrap();
    let dest = dest.path().join("out");
    let dest = dest.to_str().unwrap();
    let (code, _, err) = run(&["export", dest, "--server", &server, "--prefix", typo]);
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains("no memfis tree under prefix \"memfis://wwww\" on this store")
            && err.contains("trees here: memfis://www"),
        "{err}"
    );
    assert!(!std::path::Path::new(dest).exists(), "export made {dest}");

    let (code, out, _) = run(&["stats", "--server", &server, "--prefix", typo]);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains("tree memfis://wwww: no memfis tree under prefix \"memfis://wwww\" on this store (trees here: memfis://www)")
            && out.contains("trees on this store: memfis://www"),
        "{out}"
    );
    let (code, out, _) = run(&["stats", "--json", "--server", &server, "--prefix", typo]);
    assert_eq!(code, 8, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        json["tree"]["error"]
            .as_str()
            .unwrap()
            .contains("no memfis tree")
    );

    // A dry run into a new prefix changes nothing either.
    let (code, _, err) = run(&[
        "load",
        src,
        "--dry-run",
        "--server",
        &server,
        "--prefix",
        typo,
    ]);
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains("no memfis tree under prefix \"memfis://wwww\" on this store"),
        "{err}"
    );

    assert_eq!(store_state(&mc), before, "a refusal wrote to the store");

    // With --create the mount makes the tree, naming the trees already there.
    let (code, _, err) = run(&[
        "mount", mp, "--create", "--server", &server, "--prefix", typo,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(is_mounted(dir.path()));
    assert!(
        err.contains("made a new, empty one (trees already here: memfis://www)"),
        "{err}"
    );
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let (code, out, _) = run(&["stats", "--server", &server, "--prefix", "memfis://www"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("trees on this store: memfis://www, memfis://wwww"),
        "{out}"
    );
    // An existing tree mounts without --create.
    let m = Mount::with_exact_args(std::slice::from_ref(&server), "memfis://www", &[]);
    assert_eq!(std::fs::read(m.p("index.html")).unwrap(), b"<p>www</p>");
}

fn client(mc: &Memcached) -> Arc<Client> {
    Arc::new(Client::new(&ClientConfig::new(vec![mc.addr()])).unwrap())
}

/// Creates `prefix` on its own connection once the barrier lets every creator go at once.
fn create_at_once(
    mc: &Memcached,
    barrier: &Arc<Barrier>,
    prefix: &str,
) -> std::thread::JoinHandle<Result<(), FsError>> {
    let store = client(mc);
    let keys = KeyLayout::new(prefix).unwrap();
    let barrier = barrier.clone();
    std::thread::spawn(move || {
        barrier.wait();
        MemFs::open_tree(store, keys, FsConfig::default(), true).map(drop)
    })
}

/// The keys under `prefix` that belong to no other tree: those a creator wrote for it.
fn keys_of(mc: &Memcached, prefix: &str) -> Vec<String> {
    let meta = format!("{prefix}%");
    mc.keys()
        .into_iter()
        .filter(|k| k.starts_with(meta.as_bytes()))
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

/// Two nesting prefixes (outer and inner) created at the same moment, 200 times on one store
/// (each round a fresh pair, the registry growing): exactly one wins each time, the other is
/// refused with "nests" having written no key under its prefix, and the registry lists the
/// winner only. Two prefixes that do not nest, created at once on an empty registry, are
/// both listed (an `add` that lost the race used to drop one silently).
#[test]
fn two_nesting_prefixes_created_at_once_never_both_succeed() {
    let mc = Memcached::start();
    let mut outer_won = Vec::new();
    let mut losers = Vec::new();
    for round in 0..200 {
        let outer = format!("memfis://r{round}");
        let inner = format!("memfis://r{round}/b");
        let barrier = Arc::new(Barrier::new(2));
        // Alternate which thread starts first.
        let (a, b) = if round % 2 == 0 {
            (&outer, &inner)
        } else {
            (&inner, &outer)
        };
        let ta = create_at_once(&mc, &barrier, a);
        let tb = create_at_once(&mc, &barrier, b);
        let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
        let (winner, loser, err) = match (ra, rb) {
            (Ok(()), Err(e)) => (a, b, e),
            (Err(e), Ok(())) => (b, a, e),
            (ra, rb) => panic!("round {round}: {a}: {ra:?}, {b}: {rb:?}"),
        };
        assert!(
            matches!(err, FsError::PrefixNests { .. }),
            "round {round}: {err}"
        );
        // What formatting writes first (the root's record) and last (the format record).
        for key in ["%i1", "%format"] {
            let key = format!("{loser}{key}");
            assert!(mc.get(key.as_bytes()).is_none(), "round {round}: {key}");
        }
        assert!(mc.get(format!("{winner}%format").as_bytes()).is_some());
        losers.push(loser.clone());
        let listed = memfis_fs::fs::listed_prefixes(&client(&mc)).unwrap();
        assert!(listed.contains(winner), "round {round}: {listed:?}");
        assert!(!listed.contains(loser), "round {round}: {listed:?}");
        if winner == &outer {
            outer_won.push(outer.clone());
        }
    }
    // Not one key of any refused prefix (listing every key takes a while: once).
    let all = mc.keys();
    for loser in &losers {
        let meta = format!("{loser}%");
        let written: Vec<_> = all
            .iter()
            .filter(|k| k.starts_with(meta.as_bytes()))
            .collect();
        assert!(written.is_empty(), "refused {loser} wrote {written:?}");
    }
    // No key of a refused inner prefix is left inside the outer tree's data keys.
    for outer in outer_won.iter().take(5) {
        assert_check_clean(&mc, outer);
    }

    // Non-nesting prefixes on an empty registry, at once: both listed every time.
    for round in 0..50 {
        let mc = Memcached::start();
        let barrier = Arc::new(Barrier::new(2));
        let ta = create_at_once(&mc, &barrier, "memfis://one");
        let tb = create_at_once(&mc, &barrier, "memfis://two");
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
        let mut listed = memfis_fs::fs::listed_prefixes(&client(&mc)).unwrap();
        listed.sort();
        assert_eq!(listed, ["memfis://one", "memfis://two"], "round {round}");
    }
}

/// The same race between two `memfis mount --create` processes: one mounts, the other is
/// refused and leaves no key of its own.
#[test]
fn two_mount_processes_creating_nesting_prefixes_at_once() {
    let mc = Memcached::start();
    let mut losers = Vec::new();
    for round in 0..10 {
        let outer = format!("memfis://p{round}");
        let inner = format!("memfis://p{round}/b");
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let _guards: Vec<_> = dirs
            .iter()
            .map(|d| UnmountGuard(d.path().to_path_buf()))
            .collect();
        let children: Vec<_> = [&outer, &inner]
            .iter()
            .zip(&dirs)
            .map(|(prefix, dir)| {
                Command::new(BIN)
                    .arg("mount")
                    .arg(dir.path())
                    .args(["--create", "--server", &mc.addr(), "--prefix", prefix])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let ok: Vec<bool> = outs.iter().map(|o| o.status.success()).collect();
        assert_eq!(
            ok.iter().filter(|s| **s).count(),
            1,
            "round {round}: {outs:?}"
        );
        let loser = if ok[0] { &inner } else { &outer };
        let refused = &outs[if ok[0] { 1 } else { 0 }];
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("nests"),
            "{refused:?}"
        );
        losers.push(loser.clone());
    }
    for loser in &losers {
        assert!(keys_of(&mc, loser).is_empty(), "refused {loser} wrote keys");
    }
}
