//! The numbers docs/store-layout.md (and the README) state, held against the code: each is
//! read from the doc's own sentence and compared with the constant, or with what the
//! filesystem does on the in-memory store. A sentence reworded fails here too: update the
//! pattern with it. Needs no memcached.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use memfis_fs::files::bulk::NewFile;
use memfis_fs::layout::record::Inode;
use memfis_fs::{FsConfig, KeyLayout, Kind, MemFs, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{MAX_KEY_LEN, Store};

const LAYOUT: &str = include_str!("../docs/store-layout.md");
const README: &str = include_str!("../README.md");

/// The numbers at each `{}` of every place `doc` says `pattern` (line breaks and runs of
/// spaces read as one space; `1,024` as 1024). Fails when the doc says it nowhere.
fn stated(doc: &str, pattern: &str) -> Vec<u64> {
    let text = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let pieces: Vec<&str> = pattern.split("{}").collect();
    let mut found = Vec::new();
    for (start, _) in text.match_indices(pieces[0]) {
        let mut rest = &text[start + pieces[0].len()..];
        let mut numbers = Vec::new();
        for piece in &pieces[1..] {
            let digits = number_len(rest);
            let Ok(n) = rest[..digits].replace(',', "").parse::<u64>() else {
                break;
            };
            let Some(after) = rest[digits..].strip_prefix(piece) else {
                break;
            };
            numbers.push(n);
            rest = after;
        }
        if numbers.len() == pieces.len() - 1 {
            found.extend(numbers);
        }
    }
    assert!(!found.is_empty(), "the doc no longer says {pattern:?}");
    found
}

/// How many bytes at the start of `text` are a number: digits, and commas between groups of
/// three (so the comma after a number ends it).
fn number_len(text: &str) -> usize {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            i += 1;
        } else if b[i] == b','
            && i > 0
            && b.len() >= i + 4
            && b[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            && b.get(i + 4).is_none_or(|c| !c.is_ascii_digit())
        {
            i += 4;
        } else {
            break;
        }
    }
    i
}

/// Every number at `{}` in every place `doc` says `pattern` is `want`.
fn holds(doc: &str, pattern: &str, want: u64) {
    for n in stated(doc, pattern) {
        assert_eq!(
            n, want,
            "the doc says {pattern:?} with {n}, the code {want}"
        );
    }
}

fn fresh(cfg: FsConfig) -> (Arc<MemoryStore>, MemFs<Arc<MemoryStore>>) {
    let store = Arc::new(MemoryStore::new(16 << 20, usize::MAX));
    let keys = KeyLayout::new("memfis://spec").unwrap();
    let fs = MemFs::new(store.clone(), keys, cfg).unwrap();
    (store, fs)
}

fn number(store: &MemoryStore, key: &[u8]) -> u64 {
    let item = store.get(key).unwrap().expect("the key exists");
    String::from_utf8_lossy(&item.value).trim().parse().unwrap()
}

#[test]
fn format_and_keys() {
    holds(LAYOUT, "# memfis store layout (format version {})", 2);
    holds(LAYOUT, r#""version":{},"#, 2);
    assert_eq!(memfis_fs::layout::record::FORMAT_VERSION, 2);
    holds(LAYOUT, "The root directory is inode {}.", ROOT_INO);
    for pattern in [
        "must fit memcached's {} bytes",
        "a data key over {} bytes",
        "whose `%e` key would pass {} bytes",
        "whose `%e` key would pass memcached's {} bytes",
    ] {
        holds(LAYOUT, pattern, MAX_KEY_LEN as u64);
    }
    let longest = stated(LAYOUT, "1–{} bytes of printable ASCII")[0] as usize;
    assert!(KeyLayout::new(&"p".repeat(longest)).is_ok());
    assert!(KeyLayout::new(&"p".repeat(longest + 1)).is_err());
}

#[test]
fn liveness() {
    let expiry = memfis_fs::namespace::lock::ALIVE_SECS as u64;
    let every = memfis_tools::session::HEARTBEAT_EVERY;
    let said = stated(LAYOUT, "a {} s expiry, refreshed every {} s");
    for pair in said.chunks(2) {
        assert_eq!(pair[0], expiry, "the doc's expiry, the code's");
        assert_eq!(
            Duration::from_secs(pair[1]),
            every,
            "the doc's refresh, the code's"
        );
    }
    holds(LAYOUT, "is stored with an expiry of {} s", expiry);
    holds(LAYOUT, "(the owner died or stalled for {} s)", expiry);
    holds(
        LAYOUT,
        "stops counting {} s after its last heartbeat",
        expiry,
    );
    holds(
        LAYOUT,
        "the mount's heartbeat (every {} s)",
        every.as_secs(),
    );
}

#[test]
fn directory_logs() {
    let per_chunk = memfis_fs::layout::keys::LOG_CHUNK_RECORDS;
    for pattern in [
        "appends one record to chunk `n / {}`",
        "every chunk `chunk ..= seq/{}`",
        "every chunk up to `seq / {}` exists",
        "A chunk holds about {} records",
        "plus one chunk ({} records)",
        "as `+` records, {} a piece",
        "`set PREFIX%b<dir>` to `seq/{} generation pieces`",
    ] {
        holds(LAYOUT, pattern, per_chunk);
    }
}

#[test]
fn batches() {
    holds(
        LAYOUT,
        "in batches of {}: read the records",
        memfis_fs::namespace::rename::MOVE_BATCH as u64,
    );
    let bulk = memfis_tools::load::BATCH_FILES as u64;
    holds(
        LAYOUT,
        "bulk create of up to {} files of one directory",
        bulk,
    );
    holds(
        LAYOUT,
        "2 per batch of up to {} files of one directory",
        bulk,
    );
}

/// `incr 64`: every reservation of inode numbers, counted on the store's counter.
#[test]
fn inode_numbers_are_reserved_as_stated() {
    let said = stated(LAYOUT, "`incr {}`: a mount reserves {} numbers at a time");
    let (store, fs) = fresh(FsConfig::default());
    let key = fs.keys().next_ino();
    let mut last = number(&store, &key);
    let mut steps = Vec::new();
    for i in 0..200 {
        fs.mkdir(ROOT_INO, format!("d{i}").as_bytes(), 0o755, 0, 0)
            .unwrap();
        let now = number(&store, &key);
        if now != last {
            steps.push(now - last);
            last = now;
        }
    }
    assert!(steps.len() >= 3, "{steps:?}");
    for n in said {
        assert!(
            steps.iter().all(|&s| s == n),
            "the doc says {n}, the store moved by {steps:?}"
        );
    }
}

fn new_files(n: usize, mode: u32) -> Vec<NewFile> {
    (0..n)
        .map(|i| NewFile {
            name: format!("f{i}").into_bytes(),
            record: Inode::new(Kind::File, mode, 0, 0, Vec::new()),
            bytes: Arc::new(vec![7u8; 100]),
        })
        .collect()
}

/// The bulk create's row of "Operations, in store round trips", counted on the in-memory
/// store: round trips per batch besides the reservations of inode numbers, commands a file.
#[test]
fn bulk_create_costs_as_stated() {
    let text = LAYOUT.split_whitespace().collect::<Vec<_>>().join(" ");
    let said = stated(
        &text,
        "| 2 per batch of up to {} files of one directory, plus 1 per {} inode numbers reserved (about {} commands a file; {} for a file others may not read) |",
    );
    let (batch, reserved, served, private) = (said[0] as usize, said[1], said[2], said[3]);
    for (mode, commands_said) in [(0o644, served), (0o600, private)] {
        let (store, fs) = fresh(FsConfig::default());
        let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
        // A first batch reads the directory's record, as a first create in it does: the
        // table's figures are those of a mount that knows the directory.
        let mut warm = new_files(1, mode);
        warm[0].name = b"warm".to_vec();
        fs.create_files(dir, warm).unwrap();
        let next_ino = fs.keys().next_ino();
        let inos_before = number(&store, &next_ino);
        let (trips, commands) = (&store.batches, &store.commands);
        let trips_before = trips.load(Ordering::SeqCst);
        let commands_before = commands.load(Ordering::SeqCst);
        let made = fs.create_files(dir, new_files(batch, mode)).unwrap();
        // Read before `number` below, which is a round trip of its own.
        let trips = trips.load(Ordering::SeqCst) - trips_before;
        let commands = commands.load(Ordering::SeqCst) - commands_before;
        assert!(made.iter().all(|r| r.is_ok()));
        let reservations = (number(&store, &next_ino) - inos_before) / reserved;
        assert_eq!(
            trips - reservations,
            2,
            "{trips} round trips, {reservations} reservations"
        );
        let per_file = (commands as f64 / batch as f64).round() as u64;
        assert_eq!(
            per_file, commands_said,
            "mode {mode:o}: {commands} commands for {batch} files"
        );
    }
}

/// The README's chunks and gzip, on the in-memory store.
#[test]
fn chunks_and_gzip() {
    let store = Arc::new(MemoryStore::new(2 << 20, usize::MAX));
    let cfg = FsConfig {
        gzip: true,
        item_size_max: Some(2 << 20),
        ..FsConfig::default()
    };
    let fs = MemFs::new(store.clone(), KeyLayout::new("memfis://spec").unwrap(), cfg).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let (a, fh) = fs
            .create(ROOT_INO, name.as_bytes(), 0o644, libc::O_WRONLY, 0, 0)
            .unwrap();
        fs.write(fh, 0, bytes, false).unwrap();
        fs.release(fh).unwrap();
        a.ino
    };
    // Larger than an item of 2 MiB: in chunks of the cap, which is smaller than the item.
    let big = write("big.bin", &vec![1u8; 5 << 20]);
    let record = store.get(&fs.keys().inode(big)).unwrap().unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
    holds(
        README,
        "stored in chunks of up to {} MiB",
        record["chunk_size"].as_u64().unwrap() >> 20,
    );
    holds(README, "up to {} TiB", memfis_fs::fs::MAX_FILE_SIZE >> 40);

    holds(
        README,
        "text files over {} KB",
        memfis_fs::layout::data_codec::GZIP_MIN_BYTES as u64 / 1024,
    );
    let flag = stated(
        LAYOUT,
        "holding gzip-compressed bytes (`--gzip`) has flags `{}`",
    )[0];
    assert_eq!(flag, memfis_fs::layout::data_codec::GZIP_FLAG as u64);
    write("page.html", "<p>memfis</p>\n".repeat(200).as_bytes());
    let served = store.get(&fs.keys().data(b"/page.html")).unwrap().unwrap();
    assert_eq!(served.flags as u64, flag);
}

#[test]
fn file_locks() {
    use memfis_fs::locks::{EMPTY_LIST_SECS, FIRST_PAUSE, MAX_PAUSE};
    holds(
        LAYOUT,
        "an empty list is stored with a {} s expiry",
        EMPTY_LIST_SECS as u64,
    );
    holds(
        LAYOUT,
        "A list left empty is stored (`cas`) with a {} s expiry",
        EMPTY_LIST_SECS as u64,
    );
    let pauses = stated(LAYOUT, "tries again after {} ms, doubling up to {} ms");
    assert_eq!(
        pauses,
        [FIRST_PAUSE.as_millis() as u64, MAX_PAUSE.as_millis() as u64]
    );
    holds(
        README,
        "with a backoff of up to {} ms",
        MAX_PAUSE.as_millis() as u64,
    );
    let expiry = memfis_fs::namespace::lock::ALIVE_SECS as u64;
    holds(
        LAYOUT,
        "are free at most {} s after its last heartbeat",
        expiry,
    );
    holds(README, "once its liveness key expires ({} s)", expiry);
}
