//! `MemFs::repair` against damage done on purpose to an in-memory store: each case breaks one
//! thing, repairs, and then the check must be clean and the tree must hold what it still can.
//! (The same runs against real memcached through the binary in the top-level tests.)

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use memfis_fs::{KeyLayout, Kind, MemFs, ROOT_INO};
use memfis_memcache::Store;
use memfis_memcache::memory::MemoryStore;
use support::{Fs, uncached, write};

struct Tree {
    store: Arc<MemoryStore>,
    keys: KeyLayout,
    inos: BTreeMap<&'static str, u64>,
}

/// /a/f1 ("hello"), /a/f2 ("second"), /a/h (hard link to f1), /b/c/g ("deep"), /s -> a/f1.
fn build() -> Tree {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://repair").unwrap();
    let fs = MemFs::new(store.clone(), keys.clone(), uncached()).unwrap();
    let a = fs.mkdir(ROOT_INO, b"a", 0o755, 0, 0).unwrap().ino;
    let b = fs.mkdir(ROOT_INO, b"b", 0o755, 0, 0).unwrap().ino;
    let c = fs.mkdir(b, b"c", 0o755, 0, 0).unwrap().ino;
    let f1 = write(&fs, a, "f1", b"hello");
    let f2 = write(&fs, a, "f2", b"second");
    fs.link(f1, a, b"h").unwrap();
    let g = write(&fs, c, "g", b"deep");
    fs.symlink(ROOT_INO, b"s", b"a/f1", 0, 0).unwrap();
    let inos = BTreeMap::from([
        ("a", a),
        ("b", b),
        ("c", c),
        ("f1", f1),
        ("f2", f2),
        ("g", g),
    ]);
    let tree = Tree { store, keys, inos };
    assert!(tree.check().is_empty());
    tree
}

impl Tree {
    fn check(&self) -> Vec<String> {
        memfis_fs::check::check(&self.store, &self.keys)
            .unwrap()
            .problems
            .into_iter()
            .map(|p| format!("{}: {} ({})", p.path, p.problem, p.key))
            .collect()
    }

    /// Repairs with a fresh mount; the check after it must be clean. Returns the actions.
    fn repair(&self) -> Vec<String> {
        let before = self.check();
        assert!(!before.is_empty(), "the damage shows in the check");
        let fs = MemFs::new(self.store.clone(), self.keys.clone(), uncached()).unwrap();
        let report = fs.repair().unwrap();
        let after: Vec<String> = report
            .after
            .problems
            .iter()
            .map(|p| p.problem.clone())
            .collect();
        assert!(
            after.is_empty(),
            "left after repair of {before:?}: {after:?}"
        );
        assert!(self.check().is_empty());
        report
            .repaired
            .into_iter()
            .map(|r| format!("{}: {}", r.path, r.action))
            .collect()
    }

    /// Every path in the tree with its bytes (directories and symlinks as markers).
    fn contents(&self) -> BTreeMap<String, String> {
        let fs = MemFs::new(self.store.clone(), self.keys.clone(), uncached()).unwrap();
        let mut out = BTreeMap::new();
        walk(&fs, ROOT_INO, "", &mut out);
        out
    }

    fn served(&self, path: &str) -> Option<Vec<u8>> {
        self.store
            .get(&self.keys.data(path.as_bytes()))
            .unwrap()
            .map(|i| i.value)
    }

    fn delete(&self, key: &[u8]) {
        self.store.raw_delete(key);
    }
}

fn walk(fs: &Fs, dir: u64, prefix: &str, out: &mut BTreeMap<String, String>) {
    for e in fs.readdir(dir).unwrap() {
        let name = String::from_utf8(e.name.clone()).unwrap();
        if name == "." || name == ".." {
            continue;
        }
        let path = format!("{prefix}/{name}");
        match e.kind {
            Kind::Dir => {
                out.insert(path.clone(), "<dir>".into());
                walk(fs, e.ino, &path, out);
            }
            Kind::Symlink => {
                out.insert(path, "<symlink>".into());
            }
            other @ (Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev) => {
                out.insert(path, format!("<{other:?}>"));
            }
            Kind::File => {
                let fh = fs.open(e.ino, libc::O_RDONLY).unwrap();
                let bytes = fs.read(fh, 0, 1 << 20).unwrap();
                fs.release(fh).unwrap();
                out.insert(path, String::from_utf8(bytes).unwrap());
            }
        }
    }
}

fn expected_full() -> BTreeMap<String, String> {
    [
        ("/a", "<dir>"),
        ("/a/f1", "hello"),
        ("/a/f2", "second"),
        ("/a/h", "hello"),
        ("/b", "<dir>"),
        ("/b/c", "<dir>"),
        ("/b/c/g", "deep"),
        ("/s", "<symlink>"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn a_lost_inode_record_takes_its_name_away() {
    let t = build();
    t.delete(&t.keys.inode(t.inos["f2"]));
    let done = t.repair();
    assert!(done.iter().any(|d| d.starts_with("/a/f2")), "{done:?}");
    let mut want = expected_full();
    want.remove("/a/f2");
    assert_eq!(t.contents(), want);
    assert_eq!(t.served("/a/f2"), None, "nginx no longer serves it");
}

#[test]
fn a_lost_log_chunk_is_rebuilt_from_the_entries() {
    let t = build();
    t.delete(&t.keys.dir_log(t.inos["a"], 0));
    t.repair();
    assert_eq!(t.contents(), expected_full());
}

#[test]
fn a_lost_log_sequence_is_rebuilt() {
    let t = build();
    t.delete(&t.keys.dir_seq(t.inos["a"]));
    t.repair();
    assert_eq!(t.contents(), expected_full());
    // The directory takes new names again.
    let fs = MemFs::new(t.store.clone(), t.keys.clone(), uncached()).unwrap();
    write(&fs, t.inos["a"], "new", b"n");
    assert!(t.check().is_empty());
}

#[test]
fn lost_counters_and_keys_are_made_again() {
    let t = build();
    t.delete(&t.keys.next_ino());
    t.delete(&t.keys.dir_generation());
    t.delete(&t.keys.dir_mtime(t.inos["b"]));
    t.repair();
    assert_eq!(t.contents(), expected_full());
    let fs = MemFs::new(t.store.clone(), t.keys.clone(), uncached()).unwrap();
    let ino = write(&fs, ROOT_INO, "after", b"x");
    assert!(
        ino > t.inos["g"],
        "new inodes come after every existing one"
    );
    assert!(t.check().is_empty());
}

#[test]
fn a_counter_behind_the_inodes_is_raised() {
    let t = build();
    t.store.raw_set(&t.keys.next_ino(), b"2");
    t.repair();
    let fs = MemFs::new(t.store.clone(), t.keys.clone(), uncached()).unwrap();
    write(&fs, ROOT_INO, "after", b"x");
    assert!(t.check().is_empty());
}

#[test]
fn a_lost_data_key_is_copied_from_another_name_or_the_file_goes() {
    let t = build();
    t.delete(&t.keys.data(b"/a/f1")); // /a/h has the same bytes
    t.delete(&t.keys.data(b"/b/c/g")); // no other name: lost
    let done = t.repair();
    assert!(
        done.iter().any(|d| d.contains("bytes were lost")),
        "{done:?}"
    );
    let mut want = expected_full();
    want.remove("/b/c/g");
    assert_eq!(t.contents(), want);
    assert_eq!(t.served("/a/f1").as_deref(), Some(&b"hello"[..]));
}

#[test]
fn a_record_size_follows_the_bytes_served() {
    let t = build();
    t.store.raw_set(&t.keys.data(b"/a/f2"), b"longer bytes");
    t.repair();
    let mut want = expected_full();
    want.insert("/a/f2".into(), "longer bytes".into());
    assert_eq!(t.contents(), want);
}

#[test]
fn a_lost_directory_record_is_made_again() {
    let t = build();
    t.delete(&t.keys.inode(t.inos["c"]));
    t.repair();
    assert_eq!(t.contents(), expected_full());
}

#[test]
fn an_entry_lost_midway_is_restored_and_garbage_goes() {
    let t = build();
    t.delete(&t.keys.entry(t.inos["a"], b"f2"));
    t.store.raw_set(&t.keys.data(b"/nobody"), b"stray");
    t.store
        .raw_set(&t.keys.inode(99_999), br#"{"kind":"file"}"#);
    t.repair();
    assert_eq!(t.contents(), expected_full());
    assert_eq!(t.served("/nobody"), None);
}

#[test]
fn a_name_missing_from_the_log_is_listed_again() {
    let t = build();
    // Like a create whose log append was lost: the entry and record are there, the log
    // has no record of the name.
    let fs = MemFs::new(t.store.clone(), t.keys.clone(), uncached()).unwrap();
    let a = t.inos["a"];
    fs.unlink(a, b"f2").unwrap();
    let seq_before = t.store.get(&t.keys.dir_seq(a)).unwrap().unwrap().value;
    let chunk_before = t.store.get(&t.keys.dir_log(a, 0)).unwrap().unwrap().value;
    write(&fs, a, "f2", b"again");
    t.store.raw_set(&t.keys.dir_seq(a), &seq_before);
    t.store.raw_set(&t.keys.dir_log(a, 0), &chunk_before);
    t.repair();
    let mut want = expected_full();
    want.insert("/a/f2".into(), "again".into());
    assert_eq!(t.contents(), want);
}

#[test]
fn many_keys_no_name_reaches_go_in_one_pass() {
    let t = build();
    for i in 0..10 {
        t.store
            .raw_set(&t.keys.data(format!("/stray{i}").as_bytes()), b"x");
        t.store.raw_set(&t.keys.dir_seq(90_000 + i), b"0");
    }
    let done = t.repair();
    assert_eq!(done.len(), 20, "{done:?}");
    assert_eq!(t.contents(), expected_full());
}

#[test]
fn the_keys_of_a_directory_no_name_reaches_go() {
    let t = build();
    // What a mkdir leaves whose record went while its own keys stayed (issue 16).
    let gone = 91_000;
    t.store.raw_set(&t.keys.dir_seq(gone), b"0");
    t.store.raw_set(&t.keys.dir_log(gone, 0), b"");
    t.store.raw_set(&t.keys.dir_log(gone, 1), b"");
    t.store
        .raw_set(&t.keys.dir_mtime(gone), b"1764000000.000000000");
    assert_eq!(t.check().len(), 4, "{:?}", t.check());
    let done = t.repair();
    assert_eq!(done.len(), 4, "{done:?}");
    assert_eq!(t.contents(), expected_full());
}

/// `/a/f1`, `/a/h` (its hard link) and `/b/c/g`, as `build` makes them.
fn data_problems(t: &Tree, verify: bool) -> Vec<String> {
    let opts = memfis_fs::check::CheckOptions { verify };
    memfis_fs::check::check_with(&t.store, &t.keys, opts)
        .unwrap()
        .problems
        .into_iter()
        .map(|p| format!("{}: {} ({})", p.path, p.problem, p.key))
        .collect()
}

#[test]
fn a_gzip_flagged_key_that_does_not_decompress_is_a_problem_repair_removes() {
    let t = build();
    // What a hand-made `set KEY 2 0 N` of plain bytes leaves: nginx would send them as gzip.
    t.store
        .raw_set_flags(&t.keys.data(b"/b/c/g"), b"not gzip", 2);
    let found = t.check();
    assert!(
        found
            .iter()
            .any(|p| p.contains("/b/c/g") && p.contains("does not decompress")),
        "{found:?}"
    );
    let done = t.repair();
    assert!(done.iter().any(|d| d.contains("/b/c/g")), "{done:?}");
    let mut want = expected_full();
    want.remove("/b/c/g");
    assert_eq!(t.contents(), want);
}

#[test]
fn sizes_come_from_meta_gets_and_values_where_the_store_has_none() {
    let t = build();
    t.store.raw_set(&t.keys.data(b"/a/f2"), b"other length");
    // A gzip item: its stored size is the compressed one; the value is read and decoded.
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"dee").unwrap();
        e.finish().unwrap()
    };
    t.store.raw_set_flags(&t.keys.data(b"/b/c/g"), &gz, 2);
    for meta in [true, false] {
        t.store.set_meta_commands(meta);
        let found = t.check();
        assert_eq!(found.len(), 2, "meta commands {meta}: {found:?}");
        assert!(found[0].contains("/a/f2: data key holds 12 bytes, the record says 6"));
        assert!(found[1].contains("/b/c/g: data key holds 3 bytes, the record says 4"));
    }
    // No value of a plain data key is read when the store answers meta gets.
    t.store.set_meta_commands(true);
    let counting = Counting::new(t.store.clone(), t.keys.data(b"/"));
    memfis_fs::check::check(&counting, &t.keys).unwrap();
    let mut reads = counting.data_reads();
    reads.dedup(); // (one per scan)
    assert_eq!(
        reads,
        vec![t.keys.data(b"/b/c/g")],
        "only the gzip item's value is read"
    );
}

#[test]
fn verify_finds_names_of_a_file_holding_other_bytes_of_the_same_size() {
    let t = build();
    t.store.raw_set(&t.keys.data(b"/a/h"), b"HELLO");
    assert!(
        data_problems(&t, false).is_empty(),
        "same size: only --verify sees it"
    );
    let found = data_problems(&t, true);
    assert_eq!(
        found,
        ["/a/h: data key holds other bytes than /a/f1 (same size) (memfis://repair/a/h)"]
    );
    let fs = MemFs::new(t.store.clone(), t.keys.clone(), uncached()).unwrap();
    let opts = memfis_fs::check::CheckOptions { verify: true };
    let report = fs.repair_with(opts).unwrap();
    assert!(
        report.after.problems.is_empty(),
        "{:?}",
        report.after.problems
    );
    assert_eq!(t.served("/a/h").as_deref(), Some(&b"hello"[..]));
    assert!(data_problems(&t, true).is_empty());
}

/// A store that notes which data keys' values were read.
struct Counting {
    inner: Arc<MemoryStore>,
    data_prefix: Vec<u8>,
    reads: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Counting {
    fn new(inner: Arc<MemoryStore>, data_prefix: Vec<u8>) -> Counting {
        Counting {
            inner,
            data_prefix,
            reads: Default::default(),
        }
    }

    fn data_reads(&self) -> Vec<Vec<u8>> {
        self.reads.lock().unwrap().clone()
    }
}

impl Store for Counting {
    fn execute(&self, batch: Vec<memfis_memcache::Command>) -> Vec<memfis_memcache::CmdResult> {
        use memfis_memcache::Command;
        for c in &batch {
            if let Command::Get(k) | Command::Gets(k) = c
                && k.starts_with(&self.data_prefix)
            {
                self.reads.lock().unwrap().push(k.clone());
            }
        }
        self.inner.execute(batch)
    }

    fn list_keys(&self) -> Option<Result<Vec<Vec<u8>>, memfis_memcache::StoreError>> {
        self.inner.list_keys()
    }
}

#[test]
fn chunks_no_record_names_are_freed_when_no_other_mount_can_be_writing_them() {
    let store = Arc::new(MemoryStore::new(8192, usize::MAX));
    let keys = KeyLayout::new("memfis://chunks").unwrap();
    let small_items = || memfis_fs::FsConfig {
        item_size_max: Some(8192),
        ..uncached()
    };
    let fs = MemFs::new(store.clone(), keys.clone(), small_items()).unwrap();
    let big = vec![7u8; 10_000];
    let ino = write(&fs, ROOT_INO, "big", &big);
    let rec = fs.getattr(ino).unwrap();
    assert_eq!(rec.size, 10_000);
    let chunk_keys: Vec<Vec<u8>> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(&keys.chunk_prefix()))
        .collect();
    assert!(!chunk_keys.is_empty(), "stored in chunks");
    // What a writer killed mid-write leaves: chunks of a new generation, one past the size.
    let leaked = [keys.chunk(ino, 0x77, 0), keys.chunk(ino, 0x77, 1)];
    let past = chunk_keys[0][..chunk_keys[0].len() - 1].to_vec();
    let past = [past, b"9".to_vec()].concat();
    for k in leaked.iter().chain([&past]) {
        store.raw_set(k, b"stale chunk");
    }
    // The writing mount is alive: a write in progress, not a leak.
    assert!(
        memfis_fs::check::check(&store, &keys)
            .unwrap()
            .problems
            .is_empty()
    );
    drop(fs);
    for k in store.keys() {
        if k.starts_with(&keys.alive("")) {
            store.raw_delete(&k); // its liveness key expired
        }
    }
    let problems = memfis_fs::check::check(&store, &keys).unwrap().problems;
    let mut named: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    named.sort();
    let mut want: Vec<String> = leaked
        .iter()
        .chain([&past])
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    want.sort();
    assert_eq!(named, want, "{problems:?}");
    let repairer = MemFs::new(store.clone(), keys.clone(), small_items()).unwrap();
    let report = repairer.repair().unwrap();
    assert_eq!(report.repaired.len(), 3, "{:?}", report.repaired);
    assert!(report.after.problems.is_empty());
    for k in leaked.iter().chain([&past]) {
        assert_eq!(store.get(k).unwrap(), None);
    }
    let fh = repairer.open(ino, libc::O_RDONLY).unwrap();
    assert_eq!(repairer.read(fh, 0, 20_000).unwrap(), big);
}
