//! `memfis check [--repair]`: the consistency check (and repair), printed for people or as
//! JSON, with fsck's exit codes (0 clean, 1 problems repaired, 4 problems left, 8 the store
//! could not be checked).

use anyhow::{Context, Result};
use memfis_fs::KeyLayout;
use memfis_fs::check::{CheckOptions, Report, check_with};
use memfis_memcache::Store;

use crate::cli::CheckArgs;

/// Exit status when problems were found (as fsck's "errors left uncorrected").
pub const EXIT_PROBLEMS: i32 = 4;
/// Exit status when the store could not be checked (fsck's "operational error").
pub const EXIT_NO_CHECK: i32 = 8;
/// Exit status when problems were repaired and none is left (fsck's "errors corrected").
pub const EXIT_REPAIRED: i32 = 1;

pub fn run(args: CheckArgs) -> Result<i32> {
    let prefix = args.store.prefix();
    let keys = KeyLayout::new(&prefix).map_err(anyhow::Error::msg)?;
    let client = crate::mount::connect(&args.store)?;
    let format = keys.format();
    if client
        .get(&format)
        .with_context(|| format!("cannot read the store under prefix {prefix:?}"))?
        .is_none()
    {
        // A mistyped prefix, or a store emptied by a restart: nothing to check (fsck's 8).
        let trees = memfis_fs::fs::listed_prefixes(&client).unwrap_or_default();
        let message = format!(
            "no memfis tree under prefix {prefix:?} (no format record at {}): a mistyped \
             prefix, or a store emptied since (memcached restarted). Trees on this store: {}",
            String::from_utf8_lossy(&format),
            memfis_fs::error::list_or_none(&trees)
        );
        if args.json {
            let answer = serde_json::json!({
                "prefix": prefix,
                "tree": false,
                "error": message,
                "trees": trees,
            });
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            eprintln!("memfis: {message}");
        }
        return Ok(EXIT_NO_CHECK);
    }
    if args.repair {
        return repair(&args);
    }
    let report = check_with(&client, &keys, options(&args))
        .with_context(|| format!("cannot check the store under prefix {prefix:?}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&prefix, &report);
    }
    Ok(if report.problems.is_empty() {
        0
    } else {
        EXIT_PROBLEMS
    })
}

fn repair(args: &CheckArgs) -> Result<i32> {
    let prefix = args.store.prefix();
    let fs = crate::mount::open_for_tool(&args.store, crate::mount::Create::No)?;
    let report = fs
        .repair_with(options(args))
        .with_context(|| format!("cannot repair the store under prefix {prefix:?}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &report.repaired {
            println!("repaired {}: {} (key {})", r.path, r.action, r.key);
        }
        print_report(&prefix, &report.after);
    }
    Ok(
        match (report.after.problems.is_empty(), report.repaired.is_empty()) {
            (false, _) => EXIT_PROBLEMS,
            (true, true) => 0,
            (true, false) => EXIT_REPAIRED,
        },
    )
}

fn options(args: &CheckArgs) -> CheckOptions {
    CheckOptions {
        verify: args.verify,
    }
}

/// The names nginx does not serve, and why (docs/serving.md), when there are any.
fn unserved(report: &Report) -> String {
    match (
        report.private_names,
        report.long_names,
        report.chunked_files,
    ) {
        (0, 0, 0) => String::new(),
        (p, l, c) => format!(
            "not served: {p} names of files others may not read, {l} names too long for a key, \
             {c} files larger than one item; "
        ),
    }
}

fn print_report(prefix: &str, report: &Report) {
    for p in &report.problems {
        println!("{}: {} (key {})", p.path, p.problem, p.key);
    }
    println!(
        "{}: {} directories, {} files, {} symlinks, {} bytes; {}{}{}",
        prefix,
        report.directories,
        report.files,
        report.symlinks,
        report.bytes,
        unserved(report),
        match report.problems.len() {
            0 => "clean".to_string(),
            n => format!("{n} problems"),
        },
        if report.keys_listed {
            ""
        } else {
            " (the store cannot list its keys, e.g. through twemproxy: keys outside the tree were not looked for)"
        }
    );
}
