//! What a file costs the store: commands sent to create, write and close a small file, and to
//! unlink it, counted as a mount sends them (`cp -a`, `rm -rf`). memcached's work grows with
//! each command; these bounds keep a change from adding any unnoticed. And the log chunk a
//! mount has seen made is not made again, without losing a name across chunks.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memfis_fs::{FsConfig, KeyLayout, Kind, MemFs, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store};
use support::{names, open};

/// A store that counts the commands sent to it.
struct Counting {
    inner: Arc<MemoryStore>,
    commands: AtomicU64,
}

impl Store for Counting {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        self.commands
            .fetch_add(batch.len() as u64, Ordering::SeqCst);
        self.inner.execute(batch)
    }
}

fn commands(c: &Counting, f: impl FnOnce()) -> u64 {
    let before = c.commands.load(Ordering::SeqCst);
    f();
    c.commands.load(Ordering::SeqCst) - before
}

#[test]
fn a_small_file_costs_at_most_16_commands_to_create_and_16_to_unlink() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://counts").unwrap();
    let c = Arc::new(Counting {
        inner: store.clone(),
        commands: AtomicU64::new(0),
    });
    // Caches as a mount has them: `cp -a` lists the new directory before filling it.
    let fs = MemFs::new(c.clone(), keys.clone(), FsConfig::default()).unwrap();
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    fs.readdir(dir).unwrap();
    let mut per_create = Vec::new();
    for i in 0..20 {
        per_create.push(commands(&c, || {
            let name = format!("f{i}.html");
            // As `cp -a`: made private, written, given its mode at the close.
            let (attr, fh) = fs
                .create(dir, name.as_bytes(), 0o600, libc::O_WRONLY, 0, 0)
                .unwrap();
            fs.write(fh, 0, &[b'x'; 3000], false).unwrap();
            let mode = memfis_fs::SetAttr {
                mode: Some(0o644),
                ..Default::default()
            };
            fs.setattr(attr.ino, &mode).unwrap();
            fs.flush(fh).unwrap();
            fs.release(fh).unwrap();
        }));
    }
    // (The first file costs one more: this mount learns the new directory first.)
    let most = per_create[1..].iter().max().unwrap();
    assert!(*most <= 16, "commands per file created: {per_create:?}");

    let mut per_unlink = Vec::new();
    for i in 0..20 {
        let name = format!("f{i}.html");
        fs.lookup(dir, name.as_bytes()).unwrap();
        per_unlink.push(commands(&c, || fs.unlink(dir, name.as_bytes()).unwrap()));
    }
    let most = per_unlink[1..].iter().max().unwrap();
    assert!(*most <= 16, "commands per file unlinked: {per_unlink:?}");
    assert!(names(&open(&store, &keys), dir).is_empty());
}

/// Two mounts take turns creating in one directory past several log chunks (each knowing
/// chunks the other made, and behind on the sequence): a third lists every name, and one
/// more create in each still lands where a replay reads it.
#[test]
fn names_created_by_turns_across_log_chunks_are_all_listed() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://chunks").unwrap();
    let a = MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap();
    let b = MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap();
    let dir = a.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let mut want = HashSet::new();
    for i in 0..2600 {
        // Runs of 300 on one mount, so the other falls a chunk behind in between.
        let fs = if (i / 300) % 2 == 0 { &a } else { &b };
        let name = format!("n{i}");
        fs.mknod(dir, name.as_bytes(), Kind::Fifo, 0o644, 0, 0, 0)
            .unwrap();
        want.insert(name);
    }
    for (fs, name) in [(&a, "last-a"), (&b, "last-b")] {
        fs.mknod(dir, name.as_bytes(), Kind::Fifo, 0o644, 0, 0, 0)
            .unwrap();
        want.insert(name.to_string());
    }
    let listed: HashSet<String> = names(&open(&store, &keys), dir).into_iter().collect();
    assert_eq!(listed.len(), want.len());
    assert_eq!(listed, want);
}

/// A chunk made ahead and later lost (a server of a pool restarted empty, a repair that read
/// the sequence before it was made) while mounts know it made: the first number that falls in
/// it makes it again, even from a mount a chunk behind, so the listing stays whole.
#[test]
fn a_lost_chunk_made_ahead_is_made_again_when_a_number_reaches_it() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://ahead")
        .unwrap()
        .with_log_chunk_records(4);
    let a = MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap();
    let b = MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap();
    let dir = a.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    a.mknod(dir, b"f0", Kind::Fifo, 0o644, 0, 0, 0).unwrap();
    b.mknod(dir, b"f1", Kind::Fifo, 0o644, 0, 0, 0).unwrap();
    store.run(Command::Delete(keys.dir_log(dir, 1))).unwrap();
    b.mknod(dir, b"f2", Kind::Fifo, 0o644, 0, 0, 0).unwrap();
    // `a` is a record behind: its number (4) falls in chunk 1.
    a.mknod(dir, b"f3", Kind::Fifo, 0o644, 0, 0, 0).unwrap();
    assert_eq!(names(&open(&store, &keys), dir), ["f0", "f1", "f2", "f3"]);
    for i in 4..12 {
        let fs = if i % 2 == 0 { &a } else { &b };
        fs.mknod(dir, format!("f{i}").as_bytes(), Kind::Fifo, 0o644, 0, 0, 0)
            .unwrap();
    }
    assert_eq!(names(&open(&store, &keys), dir).len(), 12);
}

/// Fails (unsent, as a lost reply) the `add` of one log chunk made ahead inside an append's
/// batch; the same `add` sent on its own (the chunks an appender makes up to its number) passes.
struct LosesChunkAhead {
    inner: Arc<MemoryStore>,
    chunk_key: Vec<u8>,
}

impl Store for LosesChunkAhead {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        let appends = batch.iter().any(|c| {
            matches!(
                c,
                Command::Store {
                    op: memfis_memcache::StoreOp::Append,
                    ..
                }
            )
        });
        let lost = |c: &Command| {
            appends
                && matches!(c, Command::Store { op: memfis_memcache::StoreOp::Add, key, .. }
                    if *key == self.chunk_key)
        };
        let sent: Vec<Command> = batch.iter().filter(|c| !lost(c)).cloned().collect();
        let mut replies = self.inner.execute(sent).into_iter();
        batch
            .iter()
            .map(|c| match lost(c) {
                true => Err(memfis_memcache::StoreError::Timeout {
                    server: "lost reply".into(),
                }),
                false => replies.next().expect("one reply a command sent"),
            })
            .collect()
    }
}

/// A mount a chunk behind appends a number that falls in the next chunk while the reply to its
/// `add` of that chunk is lost: the chunk counts as made only if the `add` answered, so the
/// appender makes it, and the listing stays whole.
#[test]
fn a_chunk_whose_add_lost_its_reply_is_made_by_the_appender() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://lost-add")
        .unwrap()
        .with_log_chunk_records(4);
    let a = MemFs::new(store.clone(), keys.clone(), FsConfig::default()).unwrap();
    let dir = a.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let lossy = Arc::new(LosesChunkAhead {
        inner: store.clone(),
        chunk_key: keys.dir_log(dir, 2),
    });
    let b = MemFs::new(lossy.clone(), keys.clone(), FsConfig::default()).unwrap();
    let a = MemFs::new(lossy, keys.clone(), FsConfig::default()).unwrap();
    for i in 0..4 {
        a.mknod(dir, format!("f{i}").as_bytes(), Kind::Fifo, 0o644, 0, 0, 0)
            .unwrap();
    }
    // `b` learns the log at number 4 (its appends go to chunk 1), then `a` takes 5 to 7.
    b.readdir(dir).unwrap();
    for i in 4..7 {
        a.mknod(dir, format!("f{i}").as_bytes(), Kind::Fifo, 0o644, 0, 0, 0)
            .unwrap();
    }
    // Number 8, in chunk 2, appended to chunk 1 with the `add` of chunk 2 unanswered.
    b.mknod(dir, b"g", Kind::Fifo, 0o644, 0, 0, 0).unwrap();
    assert_eq!(names(&open(&store, &keys), dir).len(), 8);
}
