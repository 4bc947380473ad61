//! How a command reports while it works. The library calls these; the binary renders them (a
//! progress bar, lines on stderr, nothing). Final figures come back as each command's summary.

use std::path::Path;

/// Every method defaults to saying nothing.
pub trait Progress: Sync {
    /// The prefix held no tree and opening it made a new, empty one (asked for with
    /// [`crate::IfNoTree::Create`]). `others` are the prefixes of the trees already on the
    /// store (so a mistyped prefix is seen at once).
    fn new_tree(&self, _prefix: &str, _others: &[String]) {}

    /// A path the command could not handle (`path: why`); it goes on with the rest.
    fn error(&self, _line: &str) {}

    /// Bytes of source files dealt with (written, unchanged or given up), for a progress bar.
    fn advanced(&self, _bytes: u64) {}

    /// A change a dry run would make.
    fn would(&self, _change: &Would) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}

/// A change `load --dry-run` would make, by the source path it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Would<'a> {
    /// Write a file's bytes.
    Write(&'a Path),
    /// Make a FIFO, socket or device node.
    Make(&'a Path),
    /// Make a symlink to the target.
    Symlink(&'a Path, &'a Path),
    /// Make a hard link.
    Link(&'a Path),
    /// Remove a name (a directory with everything below it).
    Remove(&'a Path),
}

/// The per-path errors of a load or an export: told to the progress as they happen, kept
/// for the summary.
#[derive(Default)]
pub(crate) struct Errors(std::sync::Mutex<Vec<String>>);

impl Errors {
    pub(crate) fn note(&self, progress: &dyn Progress, path: &Path, what: impl std::fmt::Display) {
        let line = format!("{}: {what}", path.display());
        progress.error(&line);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    pub(crate) fn into_lines(self) -> Vec<String> {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}
