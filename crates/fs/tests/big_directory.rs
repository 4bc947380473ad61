//! A directory of 100,000 entries on a real memcached with the default 1 MiB item size:
//! creating, listing, looking up and removing entries all work, and no record grows past
//! one item.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memfis_fs::{FsConfig, KeyLayout, MemFs, ROOT_INO};
use memfis_memcache::{Client, ClientConfig, Store};

struct Memcached(Child);

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_memcached() -> (Memcached, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("memcached");
    cmd.args([
        "-U",
        "0",
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-m",
        "512",
        "-M",
    ]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "root"]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("memcached installed (apt-get install memcached)");
    let mc = Memcached(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "memcached did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (mc, format!("127.0.0.1:{port}"))
}

#[test]
fn hundred_thousand_entries_with_default_item_size() {
    const N: usize = 100_000;
    let (_mc, addr) = start_memcached();
    let client = Arc::new(Client::new(&ClientConfig::new(vec![addr])).unwrap());
    assert_eq!(client.item_size_max(), Some(1 << 20));
    let keys = KeyLayout::new("memfis://big").unwrap();
    let fs = MemFs::new(client.clone(), keys.clone(), FsConfig::default()).unwrap();
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    // Long names make big log records: the worst case for chunk sizes.
    let name = |i: usize| format!("{i:06}-{}", "x".repeat(100));
    for i in 0..N {
        let (_, fh) = fs
            .create(dir, name(i).as_bytes(), 0o644, libc::O_WRONLY, 0, 0)
            .unwrap();
        fs.release(fh).unwrap();
    }
    let listing = fs.readdir(dir).unwrap();
    assert_eq!(listing.len(), N);
    assert_eq!(fs.lookup(dir, name(N - 1).as_bytes()).unwrap().size, 0);
    for i in (0..N).step_by(1000) {
        fs.unlink(dir, name(i).as_bytes()).unwrap();
    }
    assert_eq!(fs.readdir(dir).unwrap().len(), N - N / 1000);
    // Every log chunk stayed well inside one item.
    for chunk in 0.. {
        match client.get(&keys.dir_log(dir, chunk)).unwrap() {
            Some(item) => assert!(item.value.len() < 512 << 10, "chunk {chunk}"),
            None => {
                assert!(chunk > 90, "only {chunk} chunks");
                break;
            }
        }
    }
}
