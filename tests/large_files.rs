//! Files larger than one memcached item: stored in chunks under keys of their own (not
//! served), sparse, with memory that follows what is written. Real memcached, FUSE, nginx.

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;

use common::*;

const PREFIX: &str = "memfis://large";

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

/// A file written past the item size (`-I 1m`) reads back whole from another mount, is not
/// served, survives a rename, and goes back to its served key once truncated small.
#[test]
fn a_file_larger_than_an_item_goes_in_chunks_and_back() {
    let mc = Memcached::with_args(&["-m", "256", "-I", "1m"]);
    let m = Mount::new(&[mc.addr()], PREFIX);
    let other = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let nginx = Nginx::for_store(&mc.addr(), PREFIX, &[]);
    let src = tempfile::NamedTempFile::new().unwrap();
    let data = pattern(3 * 1024 * 1024 + 123);
    std::fs::write(src.path(), &data).unwrap();
    // (A temporary file is 0600: cp would make a file nginx must not serve anyway.)
    std::fs::set_permissions(
        src.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    sh(&format!(
        "cp {} {}",
        src.path().display(),
        m.p("video.bin").display()
    ));
    assert!(std::fs::read(other.p("video.bin")).unwrap() == data);
    assert_eq!(
        std::fs::metadata(other.p("video.bin")).unwrap().len(),
        data.len() as u64
    );
    assert_eq!(nginx.get("/video.bin").0, 404);
    let out = assert_check_clean(&mc, PREFIX);
    assert!(out.contains("1 files larger than one item"), "{out}");

    // Renamed: the chunks stay where they are (keyed by inode).
    std::fs::rename(m.p("video.bin"), m.p("movie.bin")).unwrap();
    sh(&format!(
        "cmp {} {}",
        src.path().display(),
        other.p("movie.bin").display()
    ));

    // An append and a write in the middle, through the other mount.
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(other.p("movie.bin"))
            .unwrap();
        f.write_all_at(b"MIDDLE", 2_000_000).unwrap();
        f.write_all_at(b"END", data.len() as u64).unwrap();
    }
    let mut want = data.clone();
    want[2_000_000..2_000_006].copy_from_slice(b"MIDDLE");
    want.extend_from_slice(b"END");
    assert!(std::fs::read(m.p("movie.bin")).unwrap() == want);

    // Truncated below one item: served again, whole, and no chunk is left (check lists keys).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.p("movie.bin"))
        .unwrap();
    f.set_len(100_000).unwrap();
    drop(f);
    assert_eq!(nginx.get("/movie.bin").2, &want[..100_000]);
    assert_eq!(
        std::fs::read(other.p("movie.bin")).unwrap(),
        &want[..100_000]
    );
    assert_check_clean(&mc, PREFIX);

    // Grown past one item by truncate: zeros, in chunks again; removed: nothing left.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.p("movie.bin"))
        .unwrap();
    f.set_len(5_000_000).unwrap();
    drop(f);
    let back = std::fs::read(other.p("movie.bin")).unwrap();
    assert!(back[..100_000] == want[..100_000]);
    assert!(back[100_000..].iter().all(|&b| b == 0));
    assert_eq!(nginx.get("/movie.bin").0, 404);
    std::fs::remove_file(m.p("movie.bin")).unwrap();
    assert_check_clean(&mc, PREFIX);
    assert!(mc.stat("curr_items") < 20, "chunks left behind");
}

/// Writes at 16 GiB store one chunk; the rest of the file reads as zeros.
#[test]
fn sparse_writes_at_16_gib() {
    let mc = Memcached::with_args(&["-m", "64", "-I", "1m"]);
    let m = Mount::new(&[mc.addr()], PREFIX);
    let other = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    let at = 16u64 << 30;
    let f = std::fs::File::create(m.p("sparse")).unwrap();
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"end", at).unwrap();
    f.write_all_at(b"two", 1 << 31).unwrap();
    drop(f);
    let f = std::fs::File::open(other.p("sparse")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), at + 3);
    let mut buf = [9u8; 5];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"start");
    f.read_exact_at(&mut buf[..3], at).unwrap();
    assert_eq!(&buf[..3], b"end");
    f.read_exact_at(&mut buf[..3], 1 << 31).unwrap();
    assert_eq!(&buf[..3], b"two");
    f.read_exact_at(&mut buf, 8 << 30).unwrap();
    assert_eq!(buf, [0; 5]);
    drop(f);
    assert!(mc.stat("curr_items") < 30, "only written chunks are stored");
    assert_check_clean(&mc, PREFIX);
    std::fs::remove_file(m.p("sparse")).unwrap();
    assert_check_clean(&mc, PREFIX);
}

/// Writing 160 MB keeps the daemon well under the file's size (it writes chunks out as it
/// goes), and the bytes read back.
#[test]
fn memory_follows_what_is_written_not_the_file_size() {
    let mc = Memcached::with_args(&["-m", "512", "-I", "1m"]);
    let m = Mount::new(&[mc.addr()], PREFIX);
    let piece = pattern(1 << 20);
    let mut f = std::fs::File::create(m.p("big")).unwrap();
    for i in 0..160u8 {
        let mut p = piece.clone();
        p[0] = i;
        f.write_all(&p).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.pid())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kb < 110 * 1024,
        "peak RSS {peak_kb} kB for a 160 MB file"
    );
    let f = std::fs::File::open(m.p("big")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for i in [0u64, 77, 159] {
        f.read_exact_at(&mut buf, i << 20).unwrap();
        assert_eq!(buf[0], i as u8);
        assert!(buf[1..] == piece[1..]);
    }
    assert_eq!(f.metadata().unwrap().len(), 160 << 20);
}

/// A store that fills up while a large file is written: ENOSPC, not EIO, and files written
/// before stay whole.
#[test]
fn a_full_store_is_enospc_for_a_file_in_chunks() {
    let mc = Memcached::with_args(&["-M", "-m", "16", "-I", "1m"]);
    let m = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(m.p("small"), b"kept").unwrap();
    let mut f = std::fs::File::create(m.p("huge")).unwrap();
    let piece = vec![1u8; 1 << 20];
    // The error may come with a write, an fsync or the close (whichever sends the chunks
    // that no longer fit): look at all three.
    let mut failed = None;
    for _ in 0..64 {
        if let Err(e) = f.write_all(&piece).and_then(|()| f.sync_all()) {
            failed = Some(e);
            break;
        }
    }
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: closing the descriptor taken from the File just above, once.
    let closed = unsafe { libc::close(fd) };
    let failed = failed
        .or_else(|| (closed != 0).then(std::io::Error::last_os_error))
        .unwrap_or_else(|| panic!("the store did not fill up: {}", m.log_text()));
    assert_eq!(failed.raw_os_error(), Some(libc::ENOSPC), "{failed}");
    assert_eq!(std::fs::read(m.p("small")).unwrap(), b"kept");
}

/// Truncated down and grown again through one open handle, before any close: the cut bytes
/// read as zeros (the chunks past the cut went at once, not at the close).
#[test]
fn shrink_then_grow_in_one_open_reads_zeros() {
    let mc = Memcached::with_args(&["-m", "64", "-I", "1m"]);
    let m = Mount::new(&[mc.addr()], PREFIX);
    let data = pattern(4 * 1024 * 1024);
    std::fs::write(m.p("f"), &data).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    f.set_len(1_500_000).unwrap();
    f.set_len(4_000_000).unwrap();
    let mut back = vec![9u8; 4_000_000];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back[..1_500_000] == data[..1_500_000]);
    assert!(
        back[1_500_000..].iter().all(|&b| b == 0),
        "cut bytes came back"
    );
    drop(f);
    let back = std::fs::read(m.p("f")).unwrap();
    assert_eq!(back.len(), 4_000_000);
    assert!(back[1_500_000..].iter().all(|&b| b == 0));
    assert_check_clean(&mc, PREFIX);
}
