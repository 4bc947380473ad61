//! The kernel's table of mounts (`/proc/self/mounts`), read with its octal escapes undone:
//! a mount point with a space is listed as `/srv/my\040site`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// Every mount this process can see (empty if the table cannot be read).
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read("/proc/self/mounts")
        .map(|table| parse(&table))
        .unwrap_or_default()
}

/// True when something is mounted exactly at `path`.
pub fn is_mount_point(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts().iter().any(|m| m.target == path)
}

fn parse(table: &[u8]) -> Vec<MountEntry> {
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut fields = line.split(|&b| b == b' ');
            let source = unescape(fields.next()?);
            let target = unescape(fields.next()?);
            let fstype = unescape(fields.next()?);
            Some(MountEntry {
                source: String::from_utf8_lossy(&source).into_owned(),
                target: PathBuf::from(OsString::from_vec(target)),
                fstype: String::from_utf8_lossy(&fstype).into_owned(),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escapes (space, tab, newline and backslash are written so).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_spaces_and_backslashes_come_back() {
        let table = b"127.0.0.1:11211 /srv/my\\040site fuse.memfis rw 0 0\n\
                      proc /proc proc rw 0 0\n";
        let got = parse(table);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].target, PathBuf::from("/srv/my site"));
        assert_eq!(got[0].fstype, "fuse.memfis");
        assert_eq!(got[0].source, "127.0.0.1:11211");
        assert_eq!(unescape(b"a\\134b\\011"), b"a\\b\t");
    }
}
