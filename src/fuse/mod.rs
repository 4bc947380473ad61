//! FUSE glue: the kernel's requests as `MemFs` calls and back, and the mount itself.

/// Kernel requests to `MemFs` calls, errors to errnos, replies with the mount's TTLs.
pub mod adapter;
/// mount(2) as `fuse.memfis` with the refusals a mount helper owes, and the unmount.
pub mod kernel_mount;
/// The kernel's node ids: a directory another mount moved gets a fresh one.
pub mod node_ids;
/// `/proc/self/mounts` read with its escapes undone.
pub mod proc_mounts;
