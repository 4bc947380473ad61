//! Two directory records that name each other as parent (damage: a crash or a bug left a
//! cycle). Working out a path there walks up the records: it must end with an error naming
//! a key, not overflow the thread's stack (the walk recursed once) or loop for good.

mod support;

use std::sync::Arc;

use memfis_fs::layout::record::Inode;
use memfis_fs::{FsError, KeyLayout, ROOT_INO};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{Command, Store, StoreOp};
use support::*;

#[test]
fn a_cycle_of_directories_is_an_error_not_a_stack_overflow() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://cycle").unwrap();
    let fs = open(&store, &keys);
    let a = fs.mkdir(ROOT_INO, b"a", 0o755, 0, 0).unwrap().ino;
    let b = fs.mkdir(a, b"b", 0o755, 0, 0).unwrap().ino;
    // a's record now says it is in b: a -> b -> a -> ...
    let akey = keys.inode(a);
    let mut rec = Inode::decode(&akey, &store.get(&akey).unwrap().unwrap().value).unwrap();
    rec.links[0].parent = b;
    store
        .run(Command::store(StoreOp::Set, &akey, &rec.encode()))
        .unwrap();
    // A fresh mount (no cached paths) works out b's path to make a file in it, on a small
    // stack: recursion 2,048 levels deep would not fit.
    let fresh = open(&store, &keys);
    let made = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            fresh
                .create(b, b"x", 0o644, libc::O_WRONLY, 0, 0)
                .map(|_| ())
        })
        .unwrap()
        .join()
        .unwrap();
    match made {
        Err(FsError::Corrupt { key, why }) => {
            assert!(why.contains("cycle"), "{why}");
            assert!(key.contains("%i"), "{key}");
        }
        other => panic!("{other:?}"),
    }
}
