//! `memfis stats` against real memcached servers and a mounted tree.

mod common;

use std::process::Command;

use common::*;

fn stats(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).arg("stats").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn stats_show_each_server_and_the_tree() {
    const PREFIX: &str = "memfis://stats";
    let mc = Memcached::start();
    let m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/a"), b"12345").unwrap();
    std::fs::write(m.p("b"), b"123").unwrap();
    std::os::unix::fs::symlink("b", m.p("s")).unwrap();

    let (code, out) = stats(&["--json", "--server", &mc.addr(), "--prefix", PREFIX]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let server = &v["servers"][0];
    assert_eq!(server["reachable"], true);
    assert_eq!(server["evictions_on"], false);
    assert_eq!(server["item_size_max"], 8 << 20);
    assert_eq!(server["bytes_limit"], 256 << 20);
    assert!(server["items"].as_u64().unwrap() > 5, "{out}");
    let tree = &v["tree"];
    assert_eq!(tree["files"], 2);
    assert_eq!(tree["directories"], 2, "the root and d");
    assert_eq!(tree["symlinks"], 1);
    assert_eq!(tree["bytes"], 8);
    assert_eq!(tree["inodes"], 5);
    assert_eq!(tree["format_version"], 2);
    assert!(tree["store_id"].as_str().unwrap().len() >= 8);

    let (code, out) = stats(&["--server", &mc.addr(), "--prefix", PREFIX]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "evictions off",
        "item size limit 8.0 MiB",
        "of 256.0 MiB",
        "2 files",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }
}

#[test]
fn stats_name_an_evicting_or_unreachable_server() {
    let evicting = evicting_memcached();
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, out) = stats(&[
        "--server",
        &evicting.addr(),
        "--server",
        &dead,
        "--prefix",
        "memfis://nothing",
        "--timeout",
        "0.5",
    ]);
    assert_eq!(code, 1, "a server is down: {out}");
    assert!(
        out.contains("evictions on (start memcached with -M"),
        "{out}"
    );
    assert!(
        out.contains(&format!("server {dead}: unreachable")),
        "{out}"
    );
}

/// A new tree is made only with `--create`, and even then not without a word: the mount says
/// it makes a new one and names the trees already on the store, which `memfis stats` lists too
/// (refusals without `--create`: tests/prefixes.rs).
#[test]
fn a_new_tree_is_announced_and_stats_list_every_tree() {
    let mc = Memcached::start();
    let _www = Mount::new(&[mc.addr()], "memfis://www");
    let dir = tempfile::tempdir().unwrap();
    let out = mount_detached(dir.path(), &mc.addr(), "memfis://wwww");
    let _ = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(dir.path())
        .status();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no tree under prefix \"memfis://wwww\"")
            && stderr.contains("trees already here: memfis://www"),
        "{stderr}"
    );
    let (code, out) = stats(&["--server", &mc.addr(), "--prefix", "memfis://www"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("trees on this store: memfis://www, memfis://wwww"),
        "{out}"
    );
}
