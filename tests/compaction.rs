//! Directory logs are compacted online by a live mount: after every file of a directory (4,000) is
//! removed, the store soon holds O(1) items for it, while a second mount keeps working.

mod common;

use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "memfis://compaction";

#[test]
fn removing_every_file_leaves_o1_items_once_the_mount_compacts() {
    let mc = Memcached::start();
    // The working mount keeps its default caches (with none, every lookup of the directory
    // replays its whole log to count subdirectories); the other one sees changes at once.
    let m = Mount::with_args(&[mc.addr()], PREFIX, &[]);
    let other = Mount::with_args(&[mc.addr()], PREFIX, &["--attr-ttl", "0"]);
    std::fs::create_dir(m.p("site")).unwrap();
    let dir = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.p("site")).unwrap());
    // The directory's log chunks in the store (a chunk holds 1,024 records).
    let chunks = || {
        (0..40)
            .filter(|c| mc.get(format!("{PREFIX}%l{dir}.{c}").as_bytes()).is_some())
            .count()
    };
    for i in 0..4000 {
        std::fs::write(m.p(&format!("site/f{i}.html")), b"<p>page</p>").unwrap();
    }
    for i in 0..4000 {
        std::fs::remove_file(m.p(&format!("site/f{i}.html"))).unwrap();
    }
    // The other mount goes on creating in the directory while the first one compacts.
    std::fs::write(other.p("site/kept.html"), b"kept").unwrap();
    assert_eq!(std::fs::read_dir(other.p("site")).unwrap().count(), 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // 8,000 records took 8 chunks; compacted, the one live name needs a few.
        let left = chunks();
        if left <= 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} log chunks left after removing 4,000 files: the log was not compacted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let names: Vec<_> = std::fs::read_dir(other.p("site"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["kept.html"]);
    assert_eq!(std::fs::read(other.p("site/kept.html")).unwrap(), b"kept");
    let (code, out) = memfis_check(&mc.addr(), PREFIX);
    assert_eq!(code, 0, "{out}");
}
