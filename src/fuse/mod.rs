//! FUSE glue: the kernel's requests as `MemFs` calls and back, and the mount itself.

/// Kernel requests to `MemFs` calls, errors to errnos, replies with the mount's TTLs.
pub mod adapter;
/// mount(2) as `fuse.memfis` with the refusals a mount helper owes, and the unmount.
pub mod kernel_mount;
/// Directories another mount moved: the kernel's old entry dropped before a reply.
pub mod moved_dirs;
/// `/proc/self/mounts` read with its escapes undone.
pub mod proc_mounts;
