//! Loading a file's bytes while other mounts move them. A file's bytes live at the data key of
//! its name (`PREFIX/path`) or at its private key (`PREFIX%d<ino>`), and renames, chmods and
//! directory renames by other mounts move them between keys. A mount that loads a file with a
//! record (or a directory path) that is no longer current looks at a key that holds nothing,
//! or another file's bytes. A local filesystem neither answers EIO there nor reads another
//! file's bytes: the loader reads the record again and retries at the keys it names now, waits
//! out (or completes) a namespace operation in progress, and takes the size of the bytes it
//! found only when record, key and namespace stood still (a writer that died between its
//! bytes and its record). Each interleaving is driven by hand: the other mount acts from a hook
//! the reader's store runs before the reader's batches.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use memfis_fs::{FsConfig, KeyLayout, MemFs, ROOT_INO, RenameFlags, SetAttr};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store};
use support::*;

type Hook = Box<dyn FnMut(&[Command]) + Send>;

/// One mount's view of the store: runs `hook` before each batch it sends.
struct Hooked {
    inner: Arc<MemoryStore>,
    hook: Mutex<Option<Hook>>,
}

impl Store for Hooked {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if let Some(hook) = self.hook.lock().unwrap().as_mut() {
            hook(&batch);
        }
        self.inner.execute(batch)
    }
}

fn hooked(store: &Arc<MemoryStore>, keys: &KeyLayout, cfg: FsConfig) -> MemFs<Arc<Hooked>> {
    let view = Arc::new(Hooked {
        inner: store.clone(),
        hook: Mutex::new(None),
    });
    MemFs::new(view, keys.clone(), cfg).unwrap()
}

fn set_hook(fs: &MemFs<Arc<Hooked>>, hook: impl FnMut(&[Command]) + Send + 'static) {
    *fs.store().hook.lock().unwrap() = Some(Box::new(hook));
}

/// True for a batch that reads the bytes of a file: a `gets` of a data or private key.
fn reads_bytes(keys: &KeyLayout, batch: &[Command]) -> bool {
    let data = keys.data(b"/");
    let private = keys.private_data(0);
    let private = &private[..private.len() - 1];
    batch
        .iter()
        .any(|c| matches!(c, Command::Gets(k) if k.starts_with(&data) || k.starts_with(private)))
}

fn read_all(fs: &MemFs<Arc<Hooked>>, ino: u64) -> Result<Vec<u8>, memfis_fs::FsError> {
    let fh = fs.open(ino, libc::O_RDONLY)?;
    let read = fs.read(fh, 0, 1 << 16);
    fs.release(fh)?;
    read
}

fn value(store: &Arc<MemoryStore>, key: &[u8]) -> Option<Vec<u8>> {
    store.get(key).unwrap().map(|i| i.value)
}

#[test]
fn a_read_follows_a_file_renamed_again_each_time_it_looks() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://loads").unwrap();
    let other = open(&store, &keys);
    let reader = hooked(&store, &keys, uncached());
    let f = write(&other, ROOT_INO, "n0", b"the bytes of f");
    let fh = reader.open(f, libc::O_RDONLY).unwrap();
    // Each time the reader looks for the bytes, the other mount has just moved the name on.
    let mut moves = 0;
    set_hook(&reader, move |batch| {
        if moves < 4 && reads_bytes(other.keys(), batch) {
            let (from, to) = (format!("n{moves}"), format!("n{}", moves + 1));
            let none = RenameFlags::default();
            other
                .rename(ROOT_INO, from.as_bytes(), ROOT_INO, to.as_bytes(), none)
                .unwrap();
            moves += 1;
        }
    });
    let read = reader.read(fh, 0, 100);
    assert_eq!(read.unwrap(), b"the bytes of f");
    reader.release(fh).unwrap();
}

#[test]
fn a_read_completes_a_chmod_a_dead_mount_left_half_done() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://loads").unwrap();
    let other = open(&store, &keys);
    let f = write(&other, ROOT_INO, "f", b"hello");
    let reader = hooked(&store, &keys, uncached());
    // A mount died in `chmod 0600 f` after its record took the mode and before the bytes
    // moved to the private key: the lock holds its intent; its liveness key is gone.
    let ikey = keys.inode(f);
    let rec = String::from_utf8(value(&store, &ikey).unwrap()).unwrap();
    store.raw_set(
        &ikey,
        rec.replace("\"mode\":420", "\"mode\":384").as_bytes(),
    );
    let lock = format!(
        r#"{{"owner":"0123456789abcdef/1","intent":{{"op":"chmod","ino":{f},"public":false}}}}"#
    );
    store.raw_set(&keys.ns_lock(), lock.as_bytes());
    assert_eq!(read_all(&reader, f).unwrap(), b"hello");
    assert_eq!(value(&store, &keys.private_data(f)).unwrap(), b"hello");
    assert_eq!(value(&store, &keys.data(b"/f")), None);
}

#[test]
fn a_chmod_after_another_mount_renamed_the_directory_moves_the_bytes() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://loads").unwrap();
    // This mount remembers directory paths (as a mount does for a second).
    let cached = FsConfig {
        cache_ttl: Duration::from_secs(60),
        ..FsConfig::default()
    };
    let chmodder = hooked(&store, &keys, cached);
    let other = open(&store, &keys);
    let d = chmodder.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let f = write(&chmodder, d, "f", b"hello");
    let none = RenameFlags::default();
    other.rename(ROOT_INO, b"d", ROOT_INO, b"e", none).unwrap();
    let private = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    chmodder.setattr(f, &private).unwrap();
    assert_eq!(value(&store, &keys.private_data(f)).unwrap(), b"hello");
    assert_eq!(value(&store, &keys.data(b"/e/f")), None, "still served");
    let fresh = hooked(&store, &keys, uncached());
    assert_eq!(read_all(&fresh, f).unwrap(), b"hello");
}

#[test]
fn a_read_does_not_take_the_bytes_of_a_file_renamed_over_the_old_name() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://loads").unwrap();
    let other = open(&store, &keys);
    let reader = hooked(&store, &keys, uncached());
    let x = write(&other, ROOT_INO, "x", b"bytes of x");
    write(&other, ROOT_INO, "z", b"the longer bytes of z");
    let fh = reader.open(x, libc::O_RDWR).unwrap();
    // Between the reader's record and its look at the bytes, x moves to y and z to x.
    let mut done = false;
    set_hook(&reader, move |batch| {
        if !done && reads_bytes(other.keys(), batch) {
            let none = RenameFlags::default();
            other.rename(ROOT_INO, b"x", ROOT_INO, b"y", none).unwrap();
            other.rename(ROOT_INO, b"z", ROOT_INO, b"x", none).unwrap();
            done = true;
        }
    });
    assert_eq!(reader.read(fh, 0, 100).unwrap(), b"bytes of x");
    // A write through the handle publishes x's bytes, not z's, at x's name.
    reader.write(fh, 0, b"B", false).unwrap();
    reader.release(fh).unwrap();
    assert_eq!(value(&store, &keys.data(b"/y")).unwrap(), b"Bytes of x");
    assert_eq!(
        value(&store, &keys.data(b"/x")).unwrap(),
        b"the longer bytes of z"
    );
    assert_eq!(reader.getattr(x).unwrap().size, 10);
}

#[test]
fn a_read_does_not_take_the_bytes_another_directory_brought_to_its_path() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://loads").unwrap();
    let cached = FsConfig {
        cache_ttl: Duration::from_secs(60),
        ..FsConfig::default()
    };
    let reader = hooked(&store, &keys, cached);
    let other = open(&store, &keys);
    let d = reader.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let e = other.mkdir(ROOT_INO, b"e", 0o755, 0, 0).unwrap().ino;
    // The reader knows d's path ("/d") from writing in it.
    let x = write(&reader, d, "x", b"bytes of d/x");
    write(&other, e, "x", b"the longer bytes of e/x");
    let fh = reader.open(x, libc::O_RDONLY).unwrap();
    let none = RenameFlags::default();
    other.rename(ROOT_INO, b"d", ROOT_INO, b"d2", none).unwrap();
    other.rename(ROOT_INO, b"e", ROOT_INO, b"d", none).unwrap();
    assert_eq!(reader.read(fh, 0, 100).unwrap(), b"bytes of d/x");
    reader.release(fh).unwrap();
    assert_eq!(reader.getattr(x).unwrap().size, 12);
}

#[test]
fn a_read_takes_the_size_a_dead_writer_left_at_the_data_key() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://loads").unwrap();
    let other = open(&store, &keys);
    let f = write(&other, ROOT_INO, "f", b"old");
    // A writer set the bytes and died before its record took their size.
    store.raw_set(&keys.data(b"/f"), b"new bytes");
    let reader = hooked(&store, &keys, uncached());
    assert_eq!(read_all(&reader, f).unwrap(), b"new bytes");
    assert_eq!(reader.getattr(f).unwrap().size, 9);
}
