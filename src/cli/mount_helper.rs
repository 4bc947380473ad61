//! The form mount(8) uses for a `fuse.memfis` filesystem: `memfis SOURCE MOUNTPOINT -o OPTS`
//! (through mount.fuse3, or as `mount.memfis`). It is rewritten into `memfis mount ...`, but
//! only when mount(8) is the caller: anything else that is not a subcommand goes to clap, so
//! `memfis moutn DIR` is an error with a suggestion, never a mount.

use std::path::Path;

/// Rewrites `memfis SOURCE MOUNTPOINT [-o OPTS]` into
/// `memfis mount MOUNTPOINT -o=server=SOURCE [-o OPTS]` when mount(8) called us.
pub fn from_mount_helper(args: Vec<String>) -> Vec<String> {
    if args.len() >= 3 && called_by_mount(&args[0]) {
        rewrite(args)
    } else {
        args
    }
}

fn rewrite(args: Vec<String>) -> Vec<String> {
    let source = &args[1];
    let mut out = vec![args[0].clone(), "mount".into(), args[2].clone()];
    // A source naming servers (`HOST:PORT[,HOST:PORT]`) chooses them; a bare word such as
    // `memfis` in fstab leaves the servers to -o server= or MEMFIS_SERVERS.
    if source.contains(':') {
        out.push(format!("-o=server={}", source.replace(',', ",server=")));
    }
    out.extend(args[3..].iter().cloned());
    out
}

/// True when we run as mount(8)'s helper: started as `mount.memfis`, or by mount.fuse3 (it
/// runs `/bin/sh -c 'memfis' 'SOURCE' 'MOUNTPOINT' ...`), or below a `mount` process.
fn called_by_mount(argv0: &str) -> bool {
    let name = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("mount.") {
        return true;
    }
    let mut pid = std::process::id();
    for _ in 0..3 {
        let Some(parent) = parent_of(pid) else {
            return false;
        };
        if is_mount_fuse_shell(parent) || comm_of(parent).as_deref() == Some("mount") {
            return true;
        }
        pid = parent;
    }
    false
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last `)`; the parent's pid is the second of them.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .filter(|&p| p > 1)
}

fn comm_of(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// The shell mount.fuse3 starts a filesystem with: `/bin/sh -c 'PROG' 'SOURCE' ...`.
fn is_mount_fuse_shell(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    args.next() == Some(b"/bin/sh")
        && args.next() == Some(b"-c")
        && args.next().is_some_and(|command| command.starts_with(b"'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn mount_helper_form_becomes_mount() {
        assert_eq!(
            rewrite(args("memfis 127.0.0.1:11211,10.0.0.2:11211 /mnt -o rw")),
            args("memfis mount /mnt -o=server=127.0.0.1:11211,server=10.0.0.2:11211 -o rw")
        );
        assert_eq!(
            rewrite(args("memfis memfis /mnt")),
            args("memfis mount /mnt")
        );
    }

    #[test]
    fn a_shell_or_test_runner_is_not_mount() {
        // cargo test runs us below cargo and a shell, never below mount(8).
        assert!(!called_by_mount("/usr/bin/memfis"));
        assert_eq!(
            from_mount_helper(args("memfis moutn /mnt")),
            args("memfis moutn /mnt")
        );
        assert!(called_by_mount("/sbin/mount.memfis"));
    }
}
