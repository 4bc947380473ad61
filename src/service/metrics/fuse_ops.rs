//! FUSE requests counted by operation, and their errors by operation and errno: a fixed
//! table of atomics (one mount per process, so one static table), read by the exporter.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! ops {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// A FUSE operation, as counted and logged.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Op { $($variant),* }

        impl Op {
            pub const ALL: &[Op] = &[$(Op::$variant),*];

            pub fn name(self) -> &'static str {
                match self { $(Op::$variant => $name),* }
            }
        }
    };
}

ops! {
    Lookup => "lookup", Getattr => "getattr", Setattr => "setattr", Readlink => "readlink",
    Mknod => "mknod", Mkdir => "mkdir", Unlink => "unlink", Rmdir => "rmdir",
    Symlink => "symlink", Rename => "rename", Link => "link", Open => "open", Read => "read",
    Write => "write", Flush => "flush", Release => "release", Fsync => "fsync",
    Opendir => "opendir", Readdir => "readdir", Readdirplus => "readdirplus",
    Releasedir => "releasedir", Fsyncdir => "fsyncdir", Statfs => "statfs",
    Setxattr => "setxattr", Getxattr => "getxattr", Listxattr => "listxattr",
    Removexattr => "removexattr", Access => "access", Create => "create", Getlk => "getlk",
    Setlk => "setlk",
    Ioctl => "ioctl", Poll => "poll", Fallocate => "fallocate", Lseek => "lseek",
    CopyFileRange => "copy_file_range",
}

const N_OPS: usize = Op::ALL.len();

pub struct FuseOps {
    calls: [AtomicU64; N_OPS],
    /// Errors are rare: a map under a lock is cheap enough for them.
    errors: Mutex<BTreeMap<(Op, i32), u64>>,
}

/// The counters of this process's mount.
pub static FUSE_OPS: FuseOps = FuseOps {
    calls: [const { AtomicU64::new(0) }; N_OPS],
    errors: Mutex::new(BTreeMap::new()),
};

impl FuseOps {
    pub fn call(&self, op: Op) {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, op: Op, errno: i32) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry((op, errno)).or_default() += 1;
    }

    /// (operation, calls) for every operation.
    pub fn calls(&self) -> Vec<(Op, u64)> {
        Op::ALL
            .iter()
            .map(|&op| (op, self.calls[op as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// ((operation, errno), count) for every error seen.
    pub fn errors(&self) -> Vec<((Op, i32), u64)> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.iter().map(|(k, v)| (*k, *v)).collect()
    }
}
