//! Signals a mount daemon answers: SIGINT and SIGTERM unmount (the session then ends),
//! SIGHUP reopens the log file (what logrotate sends) and never unmounts.

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Answers signals on a thread of its own for the rest of the process's life.
pub fn spawn(
    mut on_stop: impl FnMut() + Send + 'static,
    mut on_reopen_logs: impl FnMut() + Send + 'static,
) -> Result<()> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => on_reopen_logs(),
                    _ => on_stop(),
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
