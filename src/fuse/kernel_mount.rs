//! Putting the filesystem on its mount point and taking it off: the refusals a mount helper
//! owes its users (a mount point in use or not empty), the kernel mount itself, and the
//! unmount that SIGINT/SIGTERM ask for.
//!
//! As root we call mount(2) ourselves rather than let fuser do it: fuser's direct mount
//! passes the type `fuse` and drops the subtype, so `findmnt -t fuse.memfis`, `umount -t
//! fuse.memfis` and fstab would not know the mount. Other users go through fusermount3
//! (via fuser), which writes the type `fuse.memfis` itself.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fuser::{Config, Filesystem, MountOption, Session, SessionACL, SessionUnmounter};
use nix::mount::{MntFlags, MsFlags};

use crate::fuse::proc_mounts;

/// The filesystem type the kernel shows: `fuse.` + subtype.
pub const FS_TYPE: &str = "fuse.memfis";

/// Refuses a mount point that is already a mount point, or (unless `nonempty`) has entries:
/// mounting over files hides them, which is rarely what was meant.
pub fn refuse_unusable(mountpoint: &Path, nonempty: bool) -> Result<()> {
    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    if proc_mounts::is_mount_point(mountpoint) {
        bail!(
            "{} is already a mount point (unmount it first, or pass -o nonempty to mount over it)",
            mountpoint.display()
        );
    }
    let has_entries = std::fs::read_dir(mountpoint)
        .with_context(|| format!("cannot read mountpoint {}", mountpoint.display()))?
        .next()
        .is_some();
    if has_entries && !nonempty {
        bail!(
            "mountpoint {} is not empty (its files would be hidden); pass -o nonempty to mount \
             over them anyway",
            mountpoint.display()
        );
    }
    Ok(())
}

/// What to mount where.
pub struct MountSpec<'a> {
    pub mountpoint: &'a Path,
    /// Shown as the mount's source: the server list, or `-o fsname=`.
    pub source: &'a str,
    pub options: &'a [MountOption],
    pub acl: SessionACL,
}

/// Takes the mount off its mount point.
pub enum Unmounter {
    /// We mounted with mount(2) and unmount with umount2(2).
    Direct(PathBuf),
    /// fuser mounted through fusermount3 and knows how to undo it.
    Fuser(SessionUnmounter),
}

impl Unmounter {
    /// Unmounts; a mount still in use is detached (it goes once its last user leaves).
    pub fn unmount(&mut self) -> Result<()> {
        match self {
            Unmounter::Direct(path) => match nix::mount::umount2(path.as_path(), MntFlags::empty())
            {
                Ok(()) => Ok(()),
                Err(nix::errno::Errno::EINVAL) => Ok(()), // already unmounted
                Err(nix::errno::Errno::EBUSY) => {
                    tracing::warn!("{} is busy: detaching it", path.display());
                    nix::mount::umount2(path.as_path(), MntFlags::MNT_DETACH)
                        .with_context(|| format!("cannot detach {}", path.display()))
                }
                Err(e) => Err(e).with_context(|| format!("cannot unmount {}", path.display())),
            },
            Unmounter::Fuser(unmounter) => unmounter
                .unmount()
                .context("unmounting through fusermount3"),
        }
    }
}

/// Mounts `fs` and returns the session to run and the way to unmount it.
pub fn mount<FS: Filesystem>(
    fs: FS,
    spec: &MountSpec,
    config: Config,
) -> Result<(Session<FS>, Unmounter)> {
    // auto_unmount is fusermount3's job (it watches the daemon from outside).
    let auto_unmount = spec.options.contains(&MountOption::AutoUnmount);
    if nix::unistd::geteuid().is_root() && !auto_unmount {
        let device = mount_as_root(spec)?;
        let session = Session::from_fd(fs, device, spec.acl, config);
        return match session {
            Ok(session) => Ok((session, Unmounter::Direct(spec.mountpoint.to_path_buf()))),
            Err(e) => {
                let _ = nix::mount::umount2(spec.mountpoint, MntFlags::MNT_DETACH);
                Err(e).context("FUSE handshake with the kernel")
            }
        };
    }
    let mut config = config;
    config.mount_options = spec.options.to_vec();
    config
        .mount_options
        .push(MountOption::FSName(spec.source.to_string()));
    config
        .mount_options
        .push(MountOption::Subtype("memfis".into()));
    config.acl = spec.acl;
    let mut session = Session::new(fs, spec.mountpoint, &config)
        .with_context(|| format!("cannot mount on {}", spec.mountpoint.display()))?;
    let unmounter = Unmounter::Fuser(session.unmount_callable());
    Ok((session, unmounter))
}

/// Opens /dev/fuse and mounts it at the mount point with type `fuse.memfis`.
fn mount_as_root(spec: &MountSpec) -> Result<OwnedFd> {
    let device: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse (is the fuse module loaded? try modprobe fuse)")?
        .into();
    let root_mode = std::fs::metadata(spec.mountpoint)?.mode() & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={}",
        device.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    // As fuser and libfuse do: nodev and nosuid unless asked otherwise.
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    for option in spec.options {
        match option {
            MountOption::RO => flags |= MsFlags::MS_RDONLY,
            MountOption::NoAtime => flags |= MsFlags::MS_NOATIME,
            MountOption::NoExec => flags |= MsFlags::MS_NOEXEC,
            MountOption::Dev => flags.remove(MsFlags::MS_NODEV),
            MountOption::Suid => flags.remove(MsFlags::MS_NOSUID),
            MountOption::DefaultPermissions => data.push_str(",default_permissions"),
            _ => {}
        }
    }
    // allow_root is allow_other in the kernel; fuser turns away other users itself.
    if spec.acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    nix::mount::mount(
        Some(spec.source),
        spec.mountpoint,
        Some(FS_TYPE),
        flags,
        Some(data.as_str()),
    )
    .with_context(|| format!("cannot mount on {}", spec.mountpoint.display()))?;
    Ok(device)
}
