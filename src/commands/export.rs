//! `memfis export`: options in, the library's export (`memfis_tools::export`) run, its
//! errors and summary printed.

use std::time::Instant;

use anyhow::Result;
use memfis_tools::{IfNoTree, Session, Silent};

use crate::cli::ExportArgs;
use crate::cli::store::{Notices, TOOL_CACHE_TTL};

pub fn run(args: ExportArgs) -> Result<i32> {
    crate::service::malloc::limit_caching();
    let session = Session::open(
        &crate::cli::store::config(&args.store, TOOL_CACHE_TTL)?,
        IfNoTree::Refuse,
        &Notices,
    )
    .map_err(|e| {
        crate::cli::store::explain_no_tree(
            e,
            "Check the prefix (--prefix, MEMFIS_PREFIX): a mistyped prefix, or a store emptied \
             since (memcached restarted)",
        )
    })?;
    let started = Instant::now();
    // Errors are printed once, after the run.
    let summary = memfis_tools::export::export(session.fs(), &args.from, &args.dest, &Silent)?;
    for e in &summary.errors {
        eprintln!("memfis export: {e}");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} files ({:.1} MB) exported to {}, {} errors; {secs:.1} s, {:.0} files/s",
        summary.files,
        summary.bytes as f64 / 1e6,
        args.dest.display(),
        summary.errors.len(),
        summary.files as f64 / secs.max(1e-9)
    );
    Ok(if summary.errors.is_empty() { 0 } else { 1 })
}
