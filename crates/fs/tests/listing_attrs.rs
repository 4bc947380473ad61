//! The attributes a listing gives with each name (READDIRPLUS, `ls -l`) are those getattr
//! gives: a directory's mtime lives in its own key, apart from its record, and listings
//! showed the record's (the time of its mkdir) after names were made in it, which the
//! kernel then cached for later stats too (found by an attack on real mounts).

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use support::*;

#[test]
fn a_listed_directory_has_the_mtime_getattr_gives() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://listing-attrs").unwrap();
    let fs = open(&store, &keys);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let made = fs.getattr(d).unwrap().mtime;
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&fs, d, "x", b"x");
    let now = fs.getattr(d).unwrap().mtime;
    assert!(now > made, "making a name in it moved its mtime");
    let listed = fs.getattr_many(&[(d, memfis_fs::Kind::Dir)]).unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(listed.mtime, now);
    assert_eq!(listed, fs.getattr(d).unwrap());
}
