//! Allocator tuning for the commands that move whole files on many threads.

/// `load` and `export` allocate and free file-sized buffers on many threads. glibc would keep them in
/// one arena per thread and, after the first large free, stop returning large blocks to the
/// system: peak memory grew to ~115 MB loading a 52k-file tree with a 32 MB byte budget.
/// Large buffers mmapped (and unmapped when freed) and two arenas keep it near the budget.
pub fn limit_caching() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the worker threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
