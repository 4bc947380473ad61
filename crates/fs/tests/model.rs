//! Property test: random operation sequences against a reference model of a POSIX tree.
//! Two `MemFs` instances share one store (two mounts); each step runs on either, so the
//! second writer acts between steps. After every step, both must see the model's tree and
//! every file's data key must hold exactly its bytes (what nginx would serve).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use memfis_fs::{FsConfig, KeyLayout, Kind, MemFs, ROOT_INO, RenameFlags};
use memfis_memcache::Store;
use memfis_memcache::memory::MemoryStore;
use proptest::prelude::*;

const NAMES: [&str; 3] = ["a", "b c", "%d"];

/// Paths of depth 1 and 2 over NAMES.
fn universe() -> Vec<String> {
    let mut out = Vec::new();
    for a in NAMES {
        out.push(a.to_string());
        for b in NAMES {
            out.push(format!("{a}/{b}"));
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Mkdir(usize),
    Create(usize, Vec<u8>),
    Write(usize, u8, Vec<u8>),
    Truncate(usize, u8),
    Unlink(usize),
    Rmdir(usize),
    Rename(usize, usize, u8),
    Link(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..12usize;
    let bytes = proptest::collection::vec(any::<u8>(), 0..6);
    prop_oneof![
        p.clone().prop_map(Op::Mkdir),
        (p.clone(), bytes.clone()).prop_map(|(a, b)| Op::Create(a, b)),
        (p.clone(), 0..8u8, bytes).prop_map(|(a, o, b)| Op::Write(a, o, b)),
        (p.clone(), 0..8u8).prop_map(|(a, s)| Op::Truncate(a, s)),
        p.clone().prop_map(Op::Unlink),
        p.clone().prop_map(Op::Rmdir),
        (p.clone(), p.clone(), 0..3u8).prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        (p.clone(), p).prop_map(|(a, b)| Op::Link(a, b)),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    File(usize),
}

/// The reference: paths to nodes, file ids to bytes (hard links share an id).
#[derive(Debug, Default)]
struct Model {
    tree: BTreeMap<String, Node>,
    files: Vec<Vec<u8>>,
}

fn parent(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

impl Model {
    fn parent_ok(&self, p: &str) -> bool {
        parent(p).is_none_or(|d| self.tree.get(d) == Some(&Node::Dir))
    }
    fn children(&self, p: &str) -> usize {
        self.tree.keys().filter(|k| parent(k) == Some(p)).count()
    }
    fn file(&self, p: &str) -> Option<usize> {
        match self.tree.get(p) {
            Some(Node::File(id)) => Some(*id),
            _ => None,
        }
    }
}

type Fs = MemFs<Arc<MemoryStore>>;

fn resolve(fs: &Fs, path: &str) -> Option<u64> {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = fs.lookup(ino, part.as_bytes()).ok()?.ino;
    }
    Some(ino)
}

fn split(fs: &Fs, path: &str) -> (u64, Vec<u8>) {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (resolve(fs, d).expect("parent exists"), n),
        None => (ROOT_INO, path),
    };
    (dir, name.as_bytes().to_vec())
}

fn errno<T>(r: memfis_fs::FsResult<T>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.errno())
}

fn below(a: &str, b: &str) -> bool {
    b == a || b.starts_with(&format!("{a}/"))
}

/// Runs `op` on the model and on `fs`; returns both results (None = op skipped).
fn step(model: &mut Model, fs: &Fs, op: &Op) -> Option<(Result<(), i32>, Result<(), i32>)> {
    let u = universe();
    match op {
        Op::Mkdir(i) => {
            let p = &u[*i];
            if !model.parent_ok(p) {
                return None;
            }
            let (d, n) = split(fs, p);
            let expect = if model.tree.contains_key(p) {
                Err(libc::EEXIST)
            } else {
                model.tree.insert(p.clone(), Node::Dir);
                Ok(())
            };
            Some((expect, errno(fs.mkdir(d, &n, 0o755, 0, 0))))
        }
        Op::Create(i, data) => {
            let p = &u[*i];
            if !model.parent_ok(p) {
                return None;
            }
            let (d, n) = split(fs, p);
            let expect = if model.tree.contains_key(p) {
                Err(libc::EEXIST)
            } else {
                model.files.push(data.clone());
                model
                    .tree
                    .insert(p.clone(), Node::File(model.files.len() - 1));
                Ok(())
            };
            let got = fs
                .create(d, &n, 0o644, libc::O_WRONLY | libc::O_EXCL, 0, 0)
                .and_then(|(_, fh)| {
                    fs.write(fh, 0, data, false)?;
                    fs.release(fh)
                });
            Some((expect, errno(got)))
        }
        Op::Write(i, off, data) => {
            let id = model.file(&u[*i])?;
            let f = &mut model.files[id];
            let end = *off as usize + data.len();
            if f.len() < end {
                f.resize(end, 0);
            }
            f[*off as usize..end].copy_from_slice(data);
            let ino = resolve(fs, &u[*i]).unwrap();
            let got = fs.open(ino, libc::O_RDWR).and_then(|fh| {
                fs.write(fh, *off as u64, data, false)?;
                fs.release(fh)
            });
            Some((Ok(()), errno(got)))
        }
        Op::Truncate(i, size) => {
            let id = model.file(&u[*i])?;
            model.files[id].resize(*size as usize, 0);
            let ino = resolve(fs, &u[*i]).unwrap();
            let set = memfis_fs::SetAttr {
                size: Some(*size as u64),
                ..Default::default()
            };
            Some((Ok(()), errno(fs.setattr(ino, &set))))
        }
        Op::Unlink(i) => {
            let p = &u[*i];
            if !model.parent_ok(p) {
                return None;
            }
            let expect = match model.tree.get(p) {
                None => Err(libc::ENOENT),
                Some(Node::Dir) => Err(libc::EISDIR),
                Some(Node::File(_)) => {
                    model.tree.remove(p);
                    Ok(())
                }
            };
            let (d, n) = split(fs, p);
            Some((expect, errno(fs.unlink(d, &n))))
        }
        Op::Rmdir(i) => {
            let p = &u[*i];
            if !model.parent_ok(p) {
                return None;
            }
            let expect = match model.tree.get(p) {
                None => Err(libc::ENOENT),
                Some(Node::File(_)) => Err(libc::ENOTDIR),
                Some(Node::Dir) if model.children(p) > 0 => Err(libc::ENOTEMPTY),
                Some(Node::Dir) => {
                    model.tree.remove(p);
                    Ok(())
                }
            };
            let (d, n) = split(fs, p);
            Some((expect, errno(fs.rmdir(d, &n))))
        }
        Op::Rename(i, j, f) => {
            let (s, t) = (&u[*i], &u[*j]);
            if !model.parent_ok(s) || !model.parent_ok(t) {
                return None;
            }
            let flags = RenameFlags {
                noreplace: *f == 1,
                exchange: *f == 2,
            };
            let src = model.tree.get(s).cloned();
            let dst = model.tree.get(t).cloned();
            let expect = match (&src, &dst) {
                (None, _) => Err(libc::ENOENT),
                (Some(_), None) if flags.exchange => Err(libc::ENOENT),
                (Some(_), Some(_)) if flags.noreplace => Err(libc::EEXIST),
                _ if s == t => Ok(()),
                (Some(Node::Dir), _) if below(s, t) => Err(libc::EINVAL),
                (_, Some(Node::Dir)) if flags.exchange && below(t, s) => Err(libc::EINVAL),
                (Some(Node::File(x)), Some(Node::File(y))) if x == y => Ok(()), // one inode
                (Some(Node::Dir), Some(Node::File(_))) if !flags.exchange => Err(libc::ENOTDIR),
                (Some(Node::File(_)), Some(Node::Dir)) if !flags.exchange => Err(libc::EISDIR),
                (Some(Node::Dir), Some(Node::Dir)) if !flags.exchange && model.children(t) > 0 => {
                    Err(libc::ENOTEMPTY)
                }
                _ => {
                    let moved = |m: &BTreeMap<String, Node>, from: &str, to: &str| {
                        m.iter()
                            .filter(|(k, _)| below(from, k))
                            .map(|(k, v)| (format!("{to}{}", &k[from.len()..]), v.clone()))
                            .collect::<Vec<_>>()
                    };
                    let a = moved(&model.tree, s, t);
                    let b = if flags.exchange {
                        moved(&model.tree, t, s)
                    } else {
                        Vec::new()
                    };
                    model.tree.retain(|k, _| !below(s, k) && !below(t, k));
                    model.tree.extend(a);
                    model.tree.extend(b);
                    Ok(())
                }
            };
            let (sd, sn) = split(fs, s);
            let (td, tn) = split(fs, t);
            // The kernel answers rename(x, x) itself; MemFs is never asked.
            let got = if s == t && expect.is_ok() {
                Ok(())
            } else {
                errno(fs.rename(sd, &sn, td, &tn, flags))
            };
            Some((expect, got))
        }
        Op::Link(i, j) => {
            let (s, t) = (&u[*i], &u[*j]);
            if !model.parent_ok(s) || !model.parent_ok(t) {
                return None;
            }
            let expect = match (model.tree.get(s).cloned(), model.tree.contains_key(t)) {
                (None, _) => Err(libc::ENOENT),
                (Some(Node::Dir), _) => Err(libc::EPERM),
                (Some(_), true) => Err(libc::EEXIST),
                (Some(n), false) => {
                    model.tree.insert(t.clone(), n);
                    Ok(())
                }
            };
            let got = match resolve(fs, s) {
                None => Err(libc::ENOENT),
                Some(ino) => {
                    let (td, tn) = split(fs, t);
                    errno(fs.link(ino, td, &tn))
                }
            };
            // POSIX leaves the order of checks open; compare only failure vs failure there.
            if expect.is_err() && got.is_err() {
                return Some((expect, expect));
            }
            Some((expect, got))
        }
    }
}

/// A mount lists the model's tree and reads its bytes; the store serves them.
fn check(model: &Model, fs: &Fs, store: &MemoryStore, keys: &KeyLayout) {
    fn walk(fs: &Fs, dir: u64, prefix: &str, out: &mut BTreeMap<String, (Kind, u64)>) {
        for e in fs.readdir(dir).unwrap() {
            let path = format!("{prefix}{}", String::from_utf8(e.name).unwrap());
            out.insert(path.clone(), (e.kind, e.ino));
            if e.kind == Kind::Dir {
                walk(fs, e.ino, &format!("{path}/"), out);
            }
        }
    }
    let mut seen = BTreeMap::new();
    walk(fs, ROOT_INO, "", &mut seen);
    let model_paths: Vec<&String> = model.tree.keys().collect();
    let seen_paths: Vec<&String> = seen.keys().collect();
    assert_eq!(seen_paths, model_paths);
    for (path, node) in &model.tree {
        let (kind, ino) = seen[path];
        match node {
            Node::Dir => assert_eq!(kind, Kind::Dir, "{path}"),
            Node::File(id) => {
                let want = &model.files[*id];
                let fh = fs.open(ino, libc::O_RDONLY).unwrap();
                assert_eq!(&fs.read(fh, 0, 4096).unwrap(), want, "read {path}");
                fs.release(fh).unwrap();
                assert_eq!(
                    fs.getattr(ino).unwrap().size,
                    want.len() as u64,
                    "size {path}"
                );
                let served = store
                    .get(&keys.data(format!("/{path}").as_bytes()))
                    .unwrap();
                assert_eq!(
                    served.map(|i| i.value).as_ref(),
                    Some(want),
                    "served {path}"
                );
            }
        }
    }
    for path in universe() {
        // Lookups agree too (negative ones may be answered from a known listing).
        assert_eq!(
            resolve(fs, &path).is_some(),
            model.tree.contains_key(&path),
            "lookup {path}"
        );
        if model.file(&path).is_none() {
            let served = store
                .get(&keys.data(format!("/{path}").as_bytes()))
                .unwrap();
            assert!(served.is_none(), "{path} is not a file but is served");
        }
    }
}

fn run_model(ops: &[(Op, bool)], cache_ttl: Duration) -> Result<(), TestCaseError> {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://model").unwrap();
    let cfg = FsConfig {
        cache_ttl,
        item_size_max: None,
        ..FsConfig::default()
    };
    let a = MemFs::new(store.clone(), keys.clone(), cfg.clone()).unwrap();
    let b = MemFs::new(store.clone(), keys.clone(), cfg).unwrap();
    let mut model = Model::default();
    for (op, on_b) in ops {
        let fs = if *on_b { &b } else { &a };
        if let Some((expect, got)) = step(&mut model, fs, op) {
            prop_assert_eq!(expect, got, "{:?}", op);
        }
        check(&model, &a, &store, &keys);
        if cache_ttl.is_zero() {
            check(&model, &b, &store, &keys);
        }
        let report = memfis_fs::check::check(&store, &keys).unwrap();
        prop_assert!(
            report.problems.is_empty(),
            "{:?} after {:?}",
            report.problems,
            op
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Two mounts, no caching: every step of either is seen by both at once.
    #[test]
    fn memfs_matches_the_model(ops in proptest::collection::vec((op(), any::<bool>()), 1..40)) {
        run_model(&ops, Duration::ZERO)?;
    }

    /// One mount with long-lived caches (paths, directory attributes, known listings): its
    /// own changes must keep every cache right.
    #[test]
    fn memfs_with_caches_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let ops: Vec<(Op, bool)> = ops.into_iter().map(|o| (o, false)).collect();
        run_model(&ops, Duration::from_secs(600))?;
    }
}

/// A create's log record rides with its first publish; listings and other mounts' renames or
/// removals in between must neither lose the name nor leave a ghost.
#[test]
fn created_files_are_listed_once_settled_and_never_as_ghosts() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://pending").unwrap();
    let cfg = FsConfig {
        cache_ttl: Duration::ZERO,
        item_size_max: None,
        ..FsConfig::default()
    };
    let a = MemFs::new(store.clone(), keys.clone(), cfg.clone()).unwrap();
    let b = MemFs::new(store.clone(), keys, cfg).unwrap();
    let names = |fs: &Fs| -> Vec<String> {
        fs.readdir(ROOT_INO)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    };
    // Listed by the creating mount at once; by others once closed.
    let (_, fh) = a
        .create(ROOT_INO, b"open", 0o644, libc::O_WRONLY, 0, 0)
        .unwrap();
    assert_eq!(names(&a), ["open"]);
    assert_eq!(names(&b), ["open"]); // a's listing settled the record
    a.write(fh, 0, b"x", false).unwrap();
    a.release(fh).unwrap();
    assert_eq!(names(&b), ["open"]);

    // Removed by another mount before the creator's first publish: no ghost.
    let (_, fh) = a
        .create(ROOT_INO, b"gone", 0o644, libc::O_WRONLY, 0, 0)
        .unwrap();
    b.unlink(ROOT_INO, b"gone").unwrap();
    a.write(fh, 0, b"late", false).unwrap();
    a.release(fh).unwrap();
    assert_eq!(names(&a), ["open"]);
    assert_eq!(names(&b), ["open"]);
    assert!(store.get(&a.keys().data(b"/gone")).unwrap().is_none());

    // Renamed by another mount before the creator's first publish: listed at the new name only.
    let (_, fh) = a
        .create(ROOT_INO, b"old", 0o644, libc::O_WRONLY, 0, 0)
        .unwrap();
    b.rename(ROOT_INO, b"old", ROOT_INO, b"new", RenameFlags::default())
        .unwrap();
    a.write(fh, 0, b"data", false).unwrap();
    a.release(fh).unwrap();
    assert_eq!(names(&a), ["new", "open"]);
    assert_eq!(names(&b), ["new", "open"]);
    let fh = b
        .open(b.lookup(ROOT_INO, b"new").unwrap().ino, libc::O_RDONLY)
        .unwrap();
    assert_eq!(b.read(fh, 0, 10).unwrap(), b"data");
    assert!(store.get(&a.keys().data(b"/old")).unwrap().is_none());
}
