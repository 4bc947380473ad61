//! Long names (hashed entry keys, `docs/store-layout.md`) cannot take over one another. Two
//! names with one SHA-256 are not known, so the state a collision would leave is made by
//! hand: the hashed entry key of name B is given the value of name A's entry (as if both
//! names hashed to A's key). Every operation on B must then find B absent and leave A alone.

mod support;

use std::sync::Arc;

use memfis_fs::files::bulk::NewFile;
use memfis_fs::layout::record::{Inode, Link};
use memfis_fs::{FsConfig, FsError, KeyLayout, Kind, MemFs, ROOT_INO, RenameFlags};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{Store, StoreOp};
use support::{Fs, names, uncached, write};

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.unwrap_err().errno()
}

fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, libc::O_RDONLY).unwrap();
    let bytes = fs.read(fh, 0, 1 << 20).unwrap();
    fs.release(fh).unwrap();
    bytes
}

fn get(store: &MemoryStore, key: &[u8]) -> Option<Vec<u8>> {
    store.get(key).unwrap().map(|i| i.value)
}

#[test]
fn a_name_whose_hashed_key_holds_another_name_never_reaches_that_file() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://long").unwrap();
    let fs = MemFs::new(store.clone(), keys.clone(), uncached()).unwrap();
    let a = "a".repeat(240);
    let b = "b".repeat(240);
    let (ka, kb) = (
        keys.entry(ROOT_INO, a.as_bytes()),
        keys.entry(ROOT_INO, b.as_bytes()),
    );
    assert!(ka.starts_with(b"memfis://long%h1/") && kb.starts_with(b"memfis://long%h1/"));
    assert_ne!(ka, kb);

    let victim = write(&fs, ROOT_INO, &a, b"the victim's bytes");
    let x = write(&fs, ROOT_INO, "x", b"x's bytes");
    let entry_a = get(&store, &ka).unwrap();
    assert_eq!(
        entry_a,
        format!("{victim}/{a}").as_bytes(),
        "the value carries the name"
    );
    // The collision, made by hand: B's key holds A's entry.
    store.store(StoreOp::Set, &kb, &entry_a).unwrap();
    let record_a = get(&store, &keys.inode(victim)).unwrap();

    // B does not exist ...
    assert_eq!(errno(fs.lookup(ROOT_INO, b.as_bytes())), libc::ENOENT);
    assert_eq!(errno(fs.unlink(ROOT_INO, b.as_bytes())), libc::ENOENT);
    assert_eq!(errno(fs.rmdir(ROOT_INO, b.as_bytes())), libc::ENOENT);
    let none = RenameFlags::default();
    assert_eq!(
        errno(fs.rename(ROOT_INO, b.as_bytes(), ROOT_INO, b"y", none)),
        libc::ENOENT
    );
    let exchange = RenameFlags {
        exchange: true,
        ..none
    };
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"x", ROOT_INO, b.as_bytes(), exchange)),
        libc::ENOENT
    );
    // ... and cannot be made, linked or renamed to: ENAMETOOLONG, A untouched.
    for flags in [
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
    ] {
        let made = fs.create(ROOT_INO, b.as_bytes(), 0o644, flags, 0, 0);
        assert_eq!(
            errno(made),
            libc::ENAMETOOLONG,
            "create with flags {flags:#o}"
        );
    }
    assert_eq!(
        errno(fs.mkdir(ROOT_INO, b.as_bytes(), 0o755, 0, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.symlink(ROOT_INO, b.as_bytes(), b"x", 0, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.mknod(ROOT_INO, b.as_bytes(), Kind::Fifo, 0o644, 0, 0, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.link(x, ROOT_INO, b.as_bytes())),
        libc::ENAMETOOLONG
    );
    for flags in [
        none,
        RenameFlags {
            noreplace: true,
            ..none
        },
    ] {
        assert_eq!(
            errno(fs.rename(ROOT_INO, b"x", ROOT_INO, b.as_bytes(), flags)),
            libc::ENAMETOOLONG
        );
    }
    // A mount that listed the directory a moment ago knows B absent and sends its create
    // without asking first: the claim fails the same way, and the create is undone.
    let cached = MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap();
    assert!(
        !cached
            .readdir(ROOT_INO)
            .unwrap()
            .iter()
            .any(|e| e.name == b.as_bytes())
    );
    let made = cached.create(
        ROOT_INO,
        b.as_bytes(),
        0o644,
        libc::O_CREAT | libc::O_WRONLY,
        0,
        0,
    );
    assert_eq!(errno(made), libc::ENAMETOOLONG);
    // `memfis load`'s bulk create too, the other files of the batch made.
    let file = |name: &str| NewFile {
        name: name.as_bytes().to_vec(),
        record: Inode::new(
            Kind::File,
            0o644,
            0,
            0,
            vec![Link::new(ROOT_INO, name.as_bytes())],
        ),
        bytes: Arc::new(b"loaded".to_vec()),
    };
    let out = fs
        .create_files(ROOT_INO, vec![file(&b), file("z")])
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap_err().errno(), libc::ENAMETOOLONG);
    assert!(out[1].is_ok());

    // A is as it was: its entry, the copy at B's key, its record, its bytes, and x.
    assert_eq!(get(&store, &ka).unwrap(), entry_a);
    assert_eq!(get(&store, &kb).unwrap(), entry_a);
    assert_eq!(get(&store, &keys.inode(victim)).unwrap(), record_a);
    assert_eq!(fs.lookup(ROOT_INO, a.as_bytes()).unwrap().ino, victim);
    assert_eq!(read_all(&fs, victim), b"the victim's bytes");
    assert_eq!(read_all(&fs, x), b"x's bytes");
    assert_eq!(
        names(&fs, ROOT_INO),
        vec![a.clone(), "x".into(), "z".into()]
    );

    // The check sees B's key as an entry no name reaches; repair deletes it (its name
    // does not hash to it) and leaves A. Then B is an ordinary name.
    let report = memfis_fs::check::check(&store, &keys).unwrap();
    let shown: Vec<_> = report.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(shown, vec![String::from_utf8_lossy(&kb)], "{report:?}");
    let repaired = fs.repair().unwrap();
    assert!(repaired.after.problems.is_empty(), "{:?}", repaired.after);
    assert_eq!(get(&store, &kb), None);
    assert_eq!(get(&store, &ka).unwrap(), entry_a);
    let b_ino = write(&fs, ROOT_INO, &b, b"b's own bytes");
    assert_eq!(read_all(&fs, b_ino), b"b's own bytes");
    assert_eq!(read_all(&fs, victim), b"the victim's bytes");
}

/// A name whose hashed key lost its name part cannot be told from another name's: EIO,
/// never followed; repair settles it from the log.
#[test]
fn a_hashed_entry_without_its_name_is_never_followed() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://long").unwrap();
    let fs = MemFs::new(store.clone(), keys.clone(), uncached()).unwrap();
    let a = "a".repeat(240);
    let ino = write(&fs, ROOT_INO, &a, b"bytes");
    let ka = keys.entry(ROOT_INO, a.as_bytes());
    store
        .store(StoreOp::Set, &ka, ino.to_string().as_bytes())
        .unwrap();
    assert_eq!(errno(fs.lookup(ROOT_INO, a.as_bytes())), libc::EIO);
    let repaired = fs.repair().unwrap();
    assert!(repaired.after.problems.is_empty(), "{:?}", repaired.after);
    assert_eq!(fs.lookup(ROOT_INO, a.as_bytes()).unwrap().ino, ino);
    assert_eq!(get(&store, &ka).unwrap(), format!("{ino}/{a}").as_bytes());
}

/// Long names through every operation that moves them, checked clean after each.
#[test]
fn long_names_rename_link_unlink_and_check_clean() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://long").unwrap();
    let fs = MemFs::new(store.clone(), keys.clone(), uncached()).unwrap();
    let clean = || {
        let r = memfis_fs::check::check(&store, &keys).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    };
    let (a, b, c) = ("a".repeat(255), "b\n%".repeat(85), "c".repeat(241));
    let d = fs.mkdir(ROOT_INO, c.as_bytes(), 0o755, 0, 0).unwrap().ino;
    let f = write(&fs, d, &a, b"one");
    clean();
    fs.rename(d, a.as_bytes(), d, b.as_bytes(), RenameFlags::default())
        .unwrap();
    fs.link(f, ROOT_INO, a.as_bytes()).unwrap();
    clean();
    assert_eq!(names(&fs, d), vec![b.clone()]);
    fs.unlink(d, b.as_bytes()).unwrap();
    fs.rename(
        ROOT_INO,
        a.as_bytes(),
        d,
        a.as_bytes(),
        RenameFlags::default(),
    )
    .unwrap();
    clean();
    assert_eq!(
        read_all(&fs, fs.lookup(d, a.as_bytes()).unwrap().ino),
        b"one"
    );
    fs.unlink(d, a.as_bytes()).unwrap();
    fs.rmdir(ROOT_INO, c.as_bytes()).unwrap();
    clean();
    assert!(names(&fs, ROOT_INO).is_empty());
}
