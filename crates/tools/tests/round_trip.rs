//! `load` then `export` against the in-memory store: the tree comes back as it went in (bytes,
//! kinds, modes, owners, nanosecond times, symlinks, hard links, FIFOs, `user.*` xattrs). The
//! same round trip through real memcached and the binary is `tests/load.rs` at the top.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use memfis_fs::{FsConfig, KeyLayout, MemFs};
use memfis_memcache::memory::MemoryStore;
use memfis_tools::load::{LoadOptions, LoadSummary, Source};
use memfis_tools::{Progress, Session, Silent, Would};

/// A session over a fresh in-memory store (items of 1 MiB).
fn session() -> Session<Arc<MemoryStore>> {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://round-trip").unwrap();
    Session::start(MemFs::new(store, keys, FsConfig::default()).unwrap())
}

fn options() -> LoadOptions {
    LoadOptions {
        to: "/".into(),
        delete: false,
        checksum: false,
        dry_run: false,
        jobs: 4,
    }
}

fn load(session: &Session<Arc<MemoryStore>>, src: &Path, opts: &LoadOptions) -> LoadSummary {
    let source = Source::new(src).unwrap();
    memfis_tools::load::load(session.fs(), &source, opts, &Silent).unwrap()
}

/// Sets a file's mtime to a time with nanoseconds, as a source tree has.
fn set_mtime(path: &Path, secs: u64, nanos: u32) {
    let t = UNIX_EPOCH + Duration::new(secs, nanos);
    let times = std::fs::FileTimes::new().set_modified(t).set_accessed(t);
    std::fs::File::open(path).unwrap().set_times(times).unwrap();
}

/// A source tree with one of everything `load` keeps.
fn site(root: &Path) -> bool {
    std::fs::create_dir_all(root.join("docs/deep")).unwrap();
    std::fs::write(root.join("index.html"), b"<h1>home</h1>").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("docs/deep/page.html"), vec![7u8; 100_000]).unwrap();
    // Nearly one item (load refuses larger files: they go through a mount, in chunks).
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("docs/big.bin"), &big).unwrap();
    std::fs::write(root.join("docs/private"), b"only mine").unwrap();
    std::fs::set_permissions(root.join("docs/private"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::hard_link(root.join("index.html"), root.join("docs/home.html")).unwrap();
    std::os::unix::fs::symlink("../index.html", root.join("docs/link")).unwrap();
    nix::unistd::mkfifo(
        &root.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    for (i, name) in ["index.html", "empty", "docs/deep/page.html", "docs/big.bin"]
        .iter()
        .enumerate()
    {
        set_mtime(&root.join(name), 1_700_000_000 + i as u64, 123_456_789);
    }
    // Only root may give files away (a file made by root is owned by uid 0).
    if std::fs::metadata(root).unwrap().uid() == 0 {
        std::os::unix::fs::lchown(root.join("docs/private"), Some(1234), Some(5678)).unwrap();
    }
    // Where the filesystem keeps no user xattrs, the tree goes without.
    xattr::set(root.join("index.html"), "user.lang", b"en").is_ok()
}

/// What a tree holds, by path: kind and mode, owner, mtime, and bytes or link target.
type Tree = BTreeMap<PathBuf, (u32, u32, u32, i64, i64, Vec<u8>, Vec<(String, Vec<u8>)>)>;

fn tree(root: &Path) -> (Tree, BTreeSet<BTreeSet<PathBuf>>) {
    let mut out = Tree::new();
    let mut by_ino: BTreeMap<u64, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let ft = meta.file_type();
        let content = if ft.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
            Vec::new()
        } else if ft.is_symlink() {
            std::fs::read_link(&path)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if ft.is_file() {
            by_ino.entry(meta.ino()).or_default().insert(rel.clone());
            std::fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        let xattrs = if ft.is_file() || ft.is_dir() {
            xattr::list(&path)
                .map(|names| {
                    names
                        .filter(|n| n.to_string_lossy().starts_with("user."))
                        .map(|n| {
                            let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                            (n.to_string_lossy().into_owned(), v)
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let entry = (
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.mtime(),
            meta.mtime_nsec(),
            content,
            xattrs,
        );
        out.insert(rel, entry);
    }
    let links = by_ino
        .into_values()
        .filter(|names| names.len() > 1)
        .collect();
    (out, links)
}

#[test]
fn export_gives_back_what_load_took() {
    let src = tempfile::tempdir().unwrap();
    let with_xattrs = site(src.path());
    let session = session();

    let summary = load(&session, src.path(), &options());
    assert_eq!(summary.errors, Vec::<String>::new());
    assert_eq!(summary.files, 5, "{summary:?}");
    assert_eq!(
        summary.other, 5,
        "2 directories, a symlink, a FIFO, a hard link"
    );
    assert!(!summary.full);

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("copy");
    let exported = memfis_tools::export::export(session.fs(), "/", &dest, &Silent).unwrap();
    assert_eq!(exported.errors, Vec::<String>::new());
    assert_eq!(exported.files, 5, "the hard link is made, not copied");

    let (want, want_links) = tree(src.path());
    let (got, got_links) = tree(&dest);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (path, w) in &want {
        assert_eq!(w, &got[path], "{}", path.display());
    }
    assert_eq!(want_links, got_links, "hard links kept");
    if with_xattrs {
        assert_eq!(
            got[Path::new("index.html")].6.len(),
            1,
            "user.lang came back"
        );
    }
    let report = memfis_fs::check::scan(session.fs().store(), session.fs().keys()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_second_load_finds_nothing_to_do() {
    let src = tempfile::tempdir().unwrap();
    site(src.path());
    let session = session();
    load(&session, src.path(), &options());

    let again = load(&session, src.path(), &options());
    assert_eq!(
        (again.files, again.other, again.removed),
        (0, 0, 0),
        "{again:?}"
    );
    assert_eq!(
        again.skipped, 8,
        "5 files, the hard link, the symlink, the FIFO"
    );
}

/// Records what a command reports.
#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
}

impl Progress for Recorder {
    fn would(&self, change: &Would) {
        self.lines.lock().unwrap().push(format!("{change:?}"));
    }
}

#[test]
fn a_dry_run_reports_and_changes_nothing() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("d")).unwrap();
    std::fs::write(src.path().join("d/a"), b"a").unwrap();
    std::fs::write(src.path().join("b"), b"b").unwrap();
    let session = session();
    let opts = LoadOptions {
        dry_run: true,
        ..options()
    };
    let recorder = Recorder::default();
    let source = Source::new(src.path()).unwrap();
    let summary = memfis_tools::load::load(session.fs(), &source, &opts, &recorder).unwrap();
    assert_eq!(summary.files, 2);
    let mut lines = recorder.lines.into_inner().unwrap();
    lines.sort();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("Write(")), "{lines:?}");
    let root = session.fs().readdir(memfis_fs::ROOT_INO).unwrap();
    assert!(
        root.iter().all(|e| e.name == b"." || e.name == b".."),
        "store untouched"
    );
}
