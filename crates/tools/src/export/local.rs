//! Metadata onto local files: owner, mode and nanosecond times, a symlink's own times, and
//! FIFOs, sockets and device nodes made with mknod(2).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memfis_fs::{Attr, Kind, Time};

fn system_time(t: Time) -> SystemTime {
    let ns = Duration::new(t.s.unsigned_abs(), t.ns);
    if t.s >= 0 {
        UNIX_EPOCH + ns
    } else {
        UNIX_EPOCH - ns
    }
}

/// Mode, owner and times of `attr` onto the local file at `path` (not following symlinks
/// for the owner; a symlink's own times and mode are left as made).
pub(super) fn set_local_attrs(path: &Path, attr: &Attr) -> std::io::Result<()> {
    // Owner first (chown drops set-ID bits), the mode last (it may take away read access).
    std::os::unix::fs::lchown(path, Some(attr.uid), Some(attr.gid))?;
    if attr.kind == Kind::Symlink {
        return set_link_times(path, attr);
    }
    if attr.kind.is_special() {
        // Opening a FIFO would block and a device node would open the device.
        set_link_times(path, attr)?;
    } else {
        let times = std::fs::FileTimes::new()
            .set_accessed(system_time(attr.atime))
            .set_modified(system_time(attr.mtime));
        std::fs::File::open(path)?.set_times(times)?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(attr.mode & 0o7777))
}

/// A symlink's own times (std sets times only through an open file, which follows links).
fn set_link_times(path: &Path, attr: &Attr) -> std::io::Result<()> {
    let spec = |t: Time| libc::timespec {
        tv_sec: t.s as libc::time_t,
        tv_nsec: t.ns as libc::c_long,
    };
    let times = [spec(attr.atime), spec(attr.mtime)];
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path and two timespecs, as utimensat(2) expects.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A FIFO, socket or device node, made again with mknod(2) (replacing what is there).
pub(super) fn make_special(local: &Path, attr: &Attr) -> std::io::Result<()> {
    use nix::sys::stat::{Mode, SFlag};
    let kind = match attr.kind {
        Kind::Fifo => SFlag::S_IFIFO,
        Kind::Socket => SFlag::S_IFSOCK,
        Kind::CharDev => SFlag::S_IFCHR,
        _ => SFlag::S_IFBLK,
    };
    let _ = std::fs::remove_file(local);
    nix::sys::stat::mknod(
        local,
        kind,
        Mode::from_bits_truncate(attr.mode & 0o7777),
        attr.rdev as libc::dev_t,
    )
    .map_err(std::io::Error::from)?;
    set_local_attrs(local, attr)
}
