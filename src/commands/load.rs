//! `memfis load`: options in, the library's load (`memfis_tools::load`) run, its progress
//! rendered as a bar on a terminal, its summary as one line.

use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use memfis_tools::load::{LoadOptions, Source};
use memfis_tools::{IfNoTree, Progress, Session, Would};

use crate::cli::LoadArgs;
use crate::cli::store::{Notices, TOOL_CACHE_TTL};

pub fn run(args: LoadArgs) -> Result<i32> {
    crate::service::malloc::limit_caching();
    let source = Source::new(&args.src)?;
    // Loading into a new prefix makes its tree (and says so); a dry run changes nothing.
    let if_no_tree = if args.dry_run {
        IfNoTree::Refuse
    } else {
        IfNoTree::Create
    };
    let session = Session::open(
        &crate::cli::store::config(&args.store, TOOL_CACHE_TTL)?,
        if_no_tree,
        &Notices,
    )
    .map_err(|e| {
        crate::cli::store::explain_no_tree(
            e,
            "Check the prefix (--prefix, MEMFIS_PREFIX); a load without --dry-run makes the tree",
        )
    })?;
    let started = Instant::now();
    let (files, bytes) = source.totals();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) && !args.dry_run {
        ProgressBar::new(bytes).with_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
            )
            .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let opts = LoadOptions {
        to: args.to.clone(),
        delete: args.delete,
        checksum: args.checksum,
        dry_run: args.dry_run,
        jobs: args.jobs,
    };
    let summary = memfis_tools::load::load(session.fs(), &source, &opts, &Bar(&bar))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    for e in &summary.errors {
        eprintln!("memfis load: {e}");
    }
    println!(
        "{}{} files written ({:.1} MB), {} unchanged, {} other entries made, {} removed, {} errors of {files} files in {}; {:.1} s, {:.0} files/s",
        if args.dry_run { "dry run: " } else { "" },
        summary.files,
        summary.bytes as f64 / 1e6,
        summary.skipped,
        summary.other,
        summary.removed,
        summary.errors.len(),
        source.path.display(),
        secs,
        (summary.files + summary.skipped) as f64 / secs.max(1e-9),
    );
    if summary.full {
        eprintln!(
            "memfis load: the store is full: stopped after {} files; what was written \
             is complete, give memcached more memory (-m) and load again to finish",
            summary.files
        );
    }
    Ok(if summary.errors.is_empty() { 0 } else { 1 })
}

/// A load's progress: bytes on the bar, errors above it, a dry run's changes on stdout.
struct Bar<'a>(&'a ProgressBar);

impl Progress for Bar<'_> {
    fn error(&self, line: &str) {
        self.0.println(format!("memfis load: {line}"));
    }

    fn advanced(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn would(&self, change: &Would) {
        match change {
            Would::Write(path) => println!("would write {}", path.display()),
            Would::Make(path) => println!("would make {}", path.display()),
            Would::Symlink(path, target) => {
                println!("would link {} -> {}", path.display(), target.display())
            }
            Would::Link(path) => println!("would link {}", path.display()),
            Would::Remove(path) => println!("would remove {}", path.display()),
        }
    }
}
