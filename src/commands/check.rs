//! `memfis check [--repair]`: the consistency check (and repair), printed for people or as
//! JSON, with fsck's exit codes (0 clean, 1 problems repaired, 4 problems left, 8 the store
//! could not be checked).

use anyhow::{Context, Result};
use memfis_fs::check::{CheckOptions, Report, check_with};
use memfis_fs::{FsError, KeyLayout};
use memfis_memcache::Store;
use memfis_tools::replicas::{ReplicaReport, check_copies};
use memfis_tools::{IfNoTree, Session};

use crate::cli::CheckArgs;
use crate::cli::store::{Notices, TOOL_CACHE_TTL};

/// Exit status when problems were found (as fsck's "errors left uncorrected").
pub const EXIT_PROBLEMS: i32 = 4;
/// Exit status when the store could not be checked (fsck's "operational error"), a prefix
/// with no tree included.
pub const EXIT_NO_CHECK: i32 = crate::cli::store::EXIT_NO_TREE;
/// Exit status when problems were repaired and none is left (fsck's "errors corrected").
pub const EXIT_REPAIRED: i32 = 1;

pub fn run(args: CheckArgs) -> Result<i32> {
    let prefix = args.store.prefix();
    let keys = KeyLayout::new(&prefix).map_err(anyhow::Error::msg)?;
    let client =
        memfis_tools::session::connect(&crate::cli::store::config(&args.store, TOOL_CACHE_TTL)?)?;
    match memfis_tools::session::require_tree(&client, &keys) {
        Ok(()) => {}
        // A mistyped prefix, or a store emptied by a restart: nothing to check (fsck's 8).
        Err(FsError::NoTree { trees, .. }) => return no_tree(&args, &keys, &trees),
        Err(FsError::Store { source, .. }) => {
            return Err(source)
                .with_context(|| format!("cannot read the store under prefix {prefix:?}"));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the store under prefix {prefix:?}"));
        }
    }
    memfis_fs::settle_replicas(&client, &keys, args.store.replicas.map(|n| n as usize))?;
    if args.repair {
        return repair(&args);
    }
    let report = check_with(&client, &keys, options(&args))
        .with_context(|| format!("cannot check the store under prefix {prefix:?}"))?;
    let copies = check_copies(&client, &keys, &report.tree_keys, false)?;
    if args.json {
        let mut answer = serde_json::to_value(&report)?;
        if let Some(c) = &copies {
            answer["copies"] = serde_json::to_value(c)?;
        }
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_report(&prefix, &report);
        if let Some(c) = &copies {
            print_copies(c);
        }
    }
    Ok(
        if report.problems.is_empty() && copies.as_ref().is_none_or(|c| c.clean()) {
            0
        } else {
            EXIT_PROBLEMS
        },
    )
}

/// Refills the copies of a replicated tree (after the tree's own repair, which may have
/// rewritten keys through every copy).
fn repair_copies(args: &CheckArgs) -> Result<Option<ReplicaReport>> {
    let keys = KeyLayout::new(&args.store.prefix()).map_err(anyhow::Error::msg)?;
    let client =
        memfis_tools::session::connect(&crate::cli::store::config(&args.store, TOOL_CACHE_TTL)?)?;
    memfis_fs::settle_replicas(&client, &keys, args.store.replicas.map(|n| n as usize))?;
    if client.replicas() < 2 {
        return Ok(None);
    }
    let walked = check_with(&client, &keys, CheckOptions::default())
        .context("cannot walk the tree to refill its copies")?;
    check_copies(&client, &keys, &walked.tree_keys, true)
}

fn print_copies(c: &ReplicaReport) {
    for f in c.failed.iter().take(5) {
        println!("copy not compared or set: {f}");
    }
    if c.failed.len() > 5 {
        println!(
            "... and {} more copies not compared or set",
            c.failed.len() - 5
        );
    }
    for s in &c.out_of_sync {
        println!(
            "server {s} is out of sync (restarted empty?): `memfis check --repair` refills it, as a mount does in the background"
        );
    }
    println!(
        "copies: {} of each key; {} keys, {} under-replicated{}",
        c.replicas,
        c.keys,
        c.under_replicated,
        if c.copied > 0 {
            format!(", {} copies refilled", c.copied)
        } else {
            String::new()
        }
    );
}

fn repair(args: &CheckArgs) -> Result<i32> {
    let prefix = args.store.prefix();
    let session = match Session::open(
        &crate::cli::store::config(&args.store, TOOL_CACHE_TTL)?,
        IfNoTree::Refuse,
        &Notices,
    ) {
        Ok(session) => session,
        // Gone since the look before (a store emptied meanwhile).
        Err(e) => match memfis_tools::session::no_tree(&e) {
            Some((_, trees)) => {
                let keys = KeyLayout::new(&prefix).map_err(anyhow::Error::msg)?;
                return no_tree(args, &keys, trees);
            }
            None => return Err(e),
        },
    };
    let report = session
        .fs()
        .repair_with(options(args))
        .with_context(|| format!("cannot repair the store under prefix {prefix:?}"))?;
    let copies = repair_copies(args)?;
    if args.json {
        let mut answer = serde_json::to_value(&report)?;
        if let Some(c) = &copies {
            answer["copies"] = serde_json::to_value(c)?;
        }
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        for r in &report.repaired {
            println!("repaired {}: {} (key {})", r.path, r.action, r.key);
        }
        print_report(&prefix, &report.after);
        if let Some(c) = &copies {
            print_copies(c);
        }
    }
    let copies_clean = copies.as_ref().is_none_or(|c| c.clean());
    let copied = copies.as_ref().is_some_and(|c| c.copied > 0);
    Ok(
        match (
            report.after.problems.is_empty() && copies_clean,
            report.repaired.is_empty() && !copied,
        ) {
            (false, _) => EXIT_PROBLEMS,
            (true, true) => 0,
            (true, false) => EXIT_REPAIRED,
        },
    )
}

/// Says there is no tree to check (JSON with --json), naming the trees the store holds, and
/// gives fsck's 8.
fn no_tree(args: &CheckArgs, keys: &KeyLayout, trees: &[String]) -> Result<i32> {
    let prefix = keys.prefix();
    let refusal = FsError::NoTree {
        prefix: prefix.to_string(),
        trees: trees.to_vec(),
    };
    let message = format!(
        "{refusal}. Nothing to check: a mistyped prefix (--prefix, MEMFIS_PREFIX), or a store \
         emptied since (memcached restarted)"
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
    Ok(EXIT_NO_CHECK)
}

fn options(args: &CheckArgs) -> CheckOptions {
    CheckOptions {
        verify: args.verify,
    }
}

/// The names nginx does not serve, and why (docs/serving.md), when there are any.
fn unserved(report: &Report) -> String {
    match (
        report.counts.private_names,
        report.counts.long_names,
        report.counts.chunked_files,
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
        report.counts.directories,
        report.counts.files,
        report.counts.symlinks,
        report.counts.bytes,
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
