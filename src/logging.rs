//! Log setup: tracing with an env filter (MEMFIS_LOG, default `info`).

use std::path::Path;

use tracing_subscriber::EnvFilter;

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("MEMFIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

pub fn init_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .try_init();
}

/// A detached daemon logs to `file` if given, else nowhere.
pub fn init_daemon(file: Option<&Path>) {
    let Some(path) = file else { return };
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(f) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        Err(e) => eprintln!("memfis: cannot open log file {}: {e}", path.display()),
    }
}
