//! `memfis export DEST [--from /DIR]`: the tree under DIR in the store, written back onto local
//! disk with its exact bytes and metadata (modes, owners, nanosecond times, symlinks, hard links,
//! `user.*` xattrs), through the filesystem layer like `load`. After `load SRC` then
//! `export DEST`, `diff -r SRC DEST` shows nothing.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use memfis_fs::{Attr, Kind, MemFs, ROOT_INO, Time};
use memfis_memcache::Client;

use crate::cli::ExportArgs;

type Fs = MemFs<Arc<Client>>;

/// Files read from the store at once.
const READERS: usize = 16;

struct Exporter {
    fs: Arc<Fs>,
    files: AtomicU64,
    bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
}

pub fn run(args: ExportArgs) -> Result<i32> {
    crate::malloc::limit_caching();
    let fs = crate::mount::open_for_tool(&args.store, crate::mount::Create::No)?;
    let started = Instant::now();
    let mut ino = ROOT_INO;
    for part in args.from.split('/').filter(|p| !p.is_empty()) {
        let a = fs
            .lookup(ino, part.as_bytes())
            .with_context(|| format!("--from {}: cannot find {part} in the store", args.from))?;
        if a.kind != Kind::Dir {
            bail!("--from {}: {part} is not a directory", args.from);
        }
        ino = a.ino;
    }
    std::fs::create_dir_all(&args.dest)
        .with_context(|| format!("cannot make {}", args.dest.display()))?;
    let root_attr = fs.getattr(ino)?;
    let ex = Arc::new(Exporter {
        fs,
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    });
    ex.export_tree(ino, &args.dest, root_attr);
    let errors = ex.errors.lock().unwrap_or_else(|p| p.into_inner());
    for e in errors.iter() {
        eprintln!("memfis export: {e}");
    }
    let files = ex.files.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{files} files ({:.1} MB) exported to {}, {} errors; {secs:.1} s, {:.0} files/s",
        ex.bytes.load(Ordering::Relaxed) as f64 / 1e6,
        args.dest.display(),
        errors.len(),
        files as f64 / secs.max(1e-9)
    );
    Ok(if errors.is_empty() { 0 } else { 1 })
}

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
fn set_local_attrs(path: &Path, attr: &Attr) -> std::io::Result<()> {
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

impl Exporter {
    fn error(&self, path: &Path, what: impl std::fmt::Display) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{}: {what}", path.display()));
    }

    fn export_tree(self: &Arc<Self>, top: u64, dest: &Path, top_attr: Attr) {
        let (jobs, rx) = sync_channel::<(u64, PathBuf, Attr)>(4 * READERS);
        let rx = Arc::new(Mutex::new(rx));
        let mut dirs = vec![(top, dest.to_path_buf(), top_attr)];
        let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
        std::thread::scope(|scope| {
            for _ in 0..READERS {
                let rx = rx.clone();
                let me = self.clone();
                scope.spawn(move || me.write_files(&rx));
            }
            let mut first_paths: HashMap<u64, PathBuf> = HashMap::new();
            let mut i = 0;
            while i < dirs.len() {
                let (dir, path, _) = dirs[i].clone();
                i += 1;
                let entries = match self.fs.readdir(dir) {
                    Ok(e) => e,
                    Err(e) => {
                        self.error(&path, e);
                        continue;
                    }
                };
                let inos: Vec<u64> = entries.iter().map(|e| e.ino).collect();
                let attrs = match self.fs.getattr_many(&inos) {
                    Ok(a) => a,
                    Err(e) => {
                        self.error(&path, e);
                        continue;
                    }
                };
                for (entry, attr) in entries.into_iter().zip(attrs) {
                    let local = path.join(std::ffi::OsStr::from_bytes(&entry.name));
                    let Some(attr) = attr else {
                        continue; // removed meanwhile
                    };
                    match attr.kind {
                        Kind::Dir => {
                            if let Err(e) = std::fs::create_dir(&local)
                                && e.kind() != std::io::ErrorKind::AlreadyExists
                            {
                                self.error(&local, e);
                                continue;
                            }
                            dirs.push((attr.ino, local, attr));
                        }
                        Kind::Symlink => self.symlink(&local, &attr),
                        Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                            self.special(&local, &attr)
                        }
                        Kind::File => {
                            if attr.nlink > 1 {
                                if let Some(first) = first_paths.get(&attr.ino) {
                                    links.push((first.clone(), local));
                                    continue;
                                }
                                first_paths.insert(attr.ino, local.clone());
                            }
                            if jobs.send((attr.ino, local, attr)).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            drop(jobs);
        });
        for (first, local) in links {
            let _ = std::fs::remove_file(&local);
            if let Err(e) = std::fs::hard_link(&first, &local) {
                self.error(&local, e);
            }
        }
        for (_, path, attr) in dirs.iter().rev() {
            if let Err(e) = set_local_attrs(path, attr) {
                self.error(path, e);
            }
        }
    }

    /// A FIFO, socket or device node, made again with mknod(2).
    fn special(&self, local: &Path, attr: &Attr) {
        use nix::sys::stat::{Mode, SFlag};
        let kind = match attr.kind {
            Kind::Fifo => SFlag::S_IFIFO,
            Kind::Socket => SFlag::S_IFSOCK,
            Kind::CharDev => SFlag::S_IFCHR,
            _ => SFlag::S_IFBLK,
        };
        let _ = std::fs::remove_file(local);
        let made = nix::sys::stat::mknod(
            local,
            kind,
            Mode::from_bits_truncate(attr.mode & 0o7777),
            attr.rdev as libc::dev_t,
        )
        .map_err(std::io::Error::from)
        .and_then(|()| set_local_attrs(local, attr));
        if let Err(e) = made {
            self.error(local, e);
        }
    }

    fn symlink(&self, local: &Path, attr: &Attr) {
        let target = match self.fs.readlink(attr.ino) {
            Ok(t) => t,
            Err(e) => return self.error(local, e),
        };
        let _ = std::fs::remove_file(local);
        let made = std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), local)
            .and_then(|()| set_local_attrs(local, attr));
        if let Err(e) = made {
            self.error(local, e);
        }
    }

    fn write_files(&self, jobs: &Mutex<Receiver<(u64, PathBuf, Attr)>>) {
        loop {
            let (ino, local, attr) = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            let written = self.copy_file(ino, &local).and_then(|len| {
                self.copy_xattrs(ino, &local)?;
                set_local_attrs(&local, &attr)?;
                Ok(len)
            });
            match written {
                Ok(len) => {
                    self.files.fetch_add(1, Ordering::Relaxed);
                    self.bytes.fetch_add(len, Ordering::Relaxed);
                }
                Err(e) => self.error(&local, e),
            }
        }
    }

    /// Copies a file's bytes to `local` a piece at a time (a file in chunks may be far larger
    /// than memory); returns how many.
    fn copy_file(&self, ino: u64, local: &Path) -> std::io::Result<u64> {
        const PIECE: u32 = 1 << 20;
        let fh = self
            .fs
            .open(ino, libc::O_RDONLY)
            .map_err(std::io::Error::other)?;
        let copied = (|| {
            let mut out = std::io::BufWriter::new(std::fs::File::create(local)?);
            let mut offset = 0u64;
            loop {
                let piece = self
                    .fs
                    .read(fh, offset, PIECE)
                    .map_err(std::io::Error::other)?;
                if piece.is_empty() {
                    break;
                }
                std::io::Write::write_all(&mut out, &piece)?;
                offset += piece.len() as u64;
            }
            std::io::Write::flush(&mut out)?;
            Ok(offset)
        })();
        let _ = self.fs.release(fh);
        copied
    }

    fn copy_xattrs(&self, ino: u64, local: &Path) -> std::io::Result<()> {
        let names = self.fs.listxattr(ino).map_err(std::io::Error::other)?;
        for name in names {
            let value = self
                .fs
                .getxattr(ino, &name)
                .map_err(std::io::Error::other)?;
            xattr::set(local, std::ffi::OsStr::from_bytes(&name), &value)?;
        }
        Ok(())
    }
}
