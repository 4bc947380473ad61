//! Directory logs stay bounded: a file replaced over and over, and a directory emptied, leave
//! a log of O(live names) records once compacted (by the heartbeat, or by `repair`). Against an
//! in-memory store; the interleaving harness races compaction with other mounts' changes.

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, ROOT_INO, RenameFlags};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{Command, Store, StoreOp};
use support::{Fs, names, open, write};

/// Log chunks of `dir` in the store.
fn chunks(store: &MemoryStore, keys: &KeyLayout, dir: u64) -> usize {
    let prefix = keys.dir_log(dir, 0);
    let prefix = &prefix[..prefix.len() - 1]; // without the chunk number
    store
        .keys()
        .iter()
        .filter(|k| k.starts_with(prefix) && k[prefix.len()..].iter().all(u8::is_ascii_digit))
        .count()
}

#[test]
fn a_file_replaced_many_times_keeps_a_bounded_log() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://compact").unwrap();
    let fs = open(&store, &keys);
    let other = open(&store, &keys); // a second mount appending while the first compacts
    const ROUNDS: usize = 20_000;
    for i in 0..ROUNDS {
        write(&fs, ROOT_INO, "index.html.tmp", format!("v{i}").as_bytes());
        fs.rename(
            ROOT_INO,
            b"index.html.tmp",
            ROOT_INO,
            b"index.html",
            RenameFlags::default(),
        )
        .unwrap();
        if i % 97 == 0 {
            write(&other, ROOT_INO, &format!("other{}", i % 5), b"x");
        }
        if i % 1000 == 999 {
            // What the heartbeat does every 2 s: compact the logs a listing found long.
            fs.readdir(ROOT_INO).unwrap();
            fs.heartbeat().unwrap();
        }
    }
    fs.readdir(ROOT_INO).unwrap();
    fs.heartbeat().unwrap();
    // 60,000 records were appended (create, rename's remove and add): a few chunks remain.
    let left = chunks(&store, &keys, ROOT_INO);
    assert!(left <= 4, "{left} log chunks left");
    assert_eq!(
        names(&other, ROOT_INO),
        [
            "index.html",
            "other0",
            "other1",
            "other2",
            "other3",
            "other4"
        ]
    );
    let report = memfis_fs::check::check(&store, &keys).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn an_emptied_directory_holds_o1_items_after_repair_compacts_it() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://emptied").unwrap();
    let fs = open(&store, &keys);
    let items_empty = store.keys().len();
    let site = fs.mkdir(ROOT_INO, b"site", 0o755, 0, 0).unwrap().ino;
    for i in 0..3000 {
        write(&fs, site, &format!("f{i}"), b"bytes");
    }
    for i in 0..3000 {
        fs.unlink(site, format!("f{i}").as_bytes()).unwrap();
    }
    let report = fs.repair().unwrap();
    assert!(
        report
            .repaired
            .iter()
            .any(|r| r.path == "site" || r.path == "/site"),
        "{:?}",
        report.repaired
    );
    assert!(
        report.after.problems.is_empty(),
        "{:?}",
        report.after.problems
    );
    // The directory's own keys (record, entry, sequence, base, mtime, and two chunks: the
    // base's and the one made ahead) besides what the store held before.
    let items = store.keys().len();
    assert!(
        items <= items_empty + 9,
        "{items} items vs {items_empty} when empty"
    );
    assert!(
        fs.readdir(site)
            .unwrap()
            .iter()
            .all(|e| e.name == b"." || e.name == b"..")
    );
}

/// What a compaction that died leaves (snapshot pieces no base names, chunks below the base
/// written by a mount with an old idea of the log) is garbage: the listing is unchanged,
/// `check` reports it and `repair` deletes it.
#[test]
fn a_dead_compactions_leftovers_are_reported_and_repaired() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://leftovers")
        .unwrap()
        .with_log_chunk_records(4);
    let fs = open(&store, &keys);
    let site = fs.mkdir(ROOT_INO, b"site", 0o755, 0, 0).unwrap().ino;
    for i in 0..40 {
        write(&fs, site, &format!("f{i}"), b"x");
    }
    for i in 0..30 {
        fs.unlink(site, format!("f{i}").as_bytes()).unwrap();
    }
    assert!(fs.compact_dir(site, false).unwrap() > 0);
    let listed = |fs: &Fs| fs.readdir(site).unwrap().len();
    let before = listed(&fs);
    // A snapshot written by a compaction that died before moving the base, naming a file that
    // is gone, and a chunk made below the base.
    store
        .execute(vec![
            Command::store(
                StoreOp::Set,
                &keys.dir_snapshot(site, 77, 0),
                b"+f999 4:gone\n",
            ),
            Command::store(StoreOp::Set, &keys.dir_log(site, 0), b"+f998 5:gone2\n"),
        ])
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    assert_eq!(listed(&open(&store, &keys)), before);
    let report = memfis_fs::check::check(&store, &keys).unwrap();
    let found: Vec<_> = report.problems.iter().map(|p| p.key.clone()).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    let repaired = fs.repair().unwrap();
    assert!(
        repaired.after.problems.is_empty(),
        "{:?}",
        repaired.after.problems
    );
    assert_eq!(listed(&open(&store, &keys)), before);
}
