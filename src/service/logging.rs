//! Where logs go: tracing with an env filter (MEMFIS_LOG, default `info`) written to stderr
//! in the foreground; when detached, to `--log-file` (reopened on SIGHUP, for logrotate), or
//! else to journald where systemd's journal runs and to syslog otherwise.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("MEMFIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

pub fn init_stderr() {
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, not in journald or a log file.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// A log file that can be reopened at its path (after logrotate moved it away).
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    /// Opens (creates, appends to) `path`: failing here fails the mount.
    pub fn open(path: &Path) -> Result<LogFile> {
        let file = open_append(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Starts writing to whatever file is at the path now.
    pub fn reopen(&self) -> Result<()> {
        let fresh = open_append(&self.path)?;
        *lock(&self.file) = fresh;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))
}

/// One log line's writer: holds the file for the line, so lines never interleave.
pub struct LogFileGuard<'a>(std::sync::MutexGuard<'a, File>);

impl Write for LogFileGuard<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFileGuard<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LogFileGuard(lock(&self.file))
    }
}

/// Logging of a detached daemon: to `file` if given, else to the system's log.
pub fn init_daemon(file: Option<&LogFile>) {
    let result = match file {
        Some(file) => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(false)
            .with_writer(file.clone())
            .try_init()
            .map_err(|e| e.to_string()),
        None if Path::new(JOURNAL_SOCKET).exists() => match tracing_journald::layer() {
            Ok(journal) => tracing_subscriber::registry()
                .with(filter())
                .with(journal.with_syslog_identifier("memfis".into()))
                .try_init()
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("journald: {e}")),
        },
        None => init_syslog(),
    };
    if let Err(e) = result {
        // Nothing else can hear about it: stderr is /dev/null by now, or soon will be.
        eprintln!("memfis: cannot set up logging: {e}");
    }
}

/// Where a detached daemon without `--log-file` would log, when nothing listens there: the
/// warning to print before detaching (after it, nobody would read it).
pub fn unheard_daemon_logs(log_file: Option<&LogFile>) -> Option<String> {
    const SYSLOG_SOCKET: &str = "/dev/log";
    if log_file.is_some() || Path::new(JOURNAL_SOCKET).exists() || Path::new(SYSLOG_SOCKET).exists()
    {
        return None;
    }
    Some(format!(
        "neither journald ({JOURNAL_SOCKET}) nor a syslog daemon ({SYSLOG_SOCKET}) runs here: \
         the detached daemon's logs will be lost; give --log-file FILE, or run with --foreground"
    ))
}

fn init_syslog() -> Result<(), String> {
    let identity = c"memfis";
    let syslog = syslog_tracing::Syslog::new(
        identity,
        syslog_tracing::Options::LOG_PID,
        syslog_tracing::Facility::Daemon,
    )
    .ok_or("syslog already open")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(false)
        .without_time() // syslog stamps each line itself
        .with_writer(syslog)
        .try_init()
        .map_err(|e| e.to_string())
}

/// A poisoned lock only means another thread panicked mid-line: keep logging.
fn lock(file: &Mutex<File>) -> std::sync::MutexGuard<'_, File> {
    file.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
