//! An access ACL that only says what the mode says is a chmod (`cp -a` sets one on every
//! file): who may set it, and what becomes of the set-ID bits, as the kernel's chmod decides.

mod support;

use std::sync::Arc;

use memfis_fs::{KeyLayout, ROOT_INO, SetAttr};
use memfis_memcache::memory::MemoryStore;
use support::{open, write};

/// The ACL of owner, group and other permissions `u`, `g`, `o`, as Linux passes it.
fn acl(u: u16, g: u16, o: u16) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, u), (0x04, g), (0x20, o)] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(u32::MAX.to_le_bytes());
    }
    v
}

#[test]
fn the_owner_or_root_sets_the_mode_and_an_outsider_loses_set_group_id() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://acl").unwrap();
    let fs = open(&store, &keys);
    let ino = write(&fs, ROOT_INO, "f", b"x");
    let owned = SetAttr {
        mode: Some(0o2755),
        uid: Some(1000),
        gid: Some(100),
        ..SetAttr::default()
    };
    fs.setattr(ino, &owned).unwrap();
    let mode = || fs.getattr(ino).unwrap().mode & 0o7777;

    // Someone else: EPERM, nothing changes.
    let refused = fs.set_access_acl(ino, &acl(7, 7, 7), 2000, 100).unwrap();
    assert_eq!(refused.unwrap_err().errno(), libc::EPERM);
    assert_eq!(mode(), 0o2755);
    // The owner in the file's group keeps set-group-ID.
    fs.set_access_acl(ino, &acl(7, 5, 0), 1000, 100)
        .unwrap()
        .unwrap();
    assert_eq!(mode(), 0o2750);
    // The owner outside the file's group loses it, as with chmod.
    fs.set_access_acl(ino, &acl(6, 4, 4), 1000, 200)
        .unwrap()
        .unwrap();
    assert_eq!(mode(), 0o644);
    // Root keeps the other special bits.
    fs.setattr(
        ino,
        &SetAttr {
            mode: Some(0o4755),
            ..SetAttr::default()
        },
    )
    .unwrap();
    fs.set_access_acl(ino, &acl(7, 0, 0), 0, 0)
        .unwrap()
        .unwrap();
    assert_eq!(mode(), 0o4700);
}

#[test]
fn any_other_acl_is_not_taken() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://acl").unwrap();
    let fs = open(&store, &keys);
    let ino = write(&fs, ROOT_INO, "f", b"x");
    let mut masked = acl(6, 4, 4);
    masked.extend(0x10u16.to_le_bytes());
    masked.extend(6u16.to_le_bytes());
    masked.extend(u32::MAX.to_le_bytes());
    assert!(fs.set_access_acl(ino, &masked, 0, 0).is_none());
    assert!(fs.set_access_acl(ino, b"", 0, 0).is_none());
    assert_eq!(fs.getattr(ino).unwrap().mode & 0o7777, 0o644);
}
