//! `memfis check`: the read-only consistency check, printed for people or as JSON, with
//! fsck's exit codes (0 clean, 4 problems left, 8 the store could not be checked).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use memfis_fs::KeyLayout;
use memfis_fs::check::check;
use memfis_memcache::{Client, ClientConfig};

use crate::cli::CheckArgs;

/// Exit status when problems were found (as fsck's "errors left uncorrected").
pub const EXIT_PROBLEMS: i32 = 4;

pub fn run(args: CheckArgs) -> Result<i32> {
    let prefix = args.store.prefix();
    let keys = KeyLayout::new(&prefix).map_err(anyhow::Error::msg)?;
    let mut cfg = ClientConfig::new(args.store.servers.clone());
    cfg.connect_timeout = Duration::from_secs_f64(args.store.timeout);
    cfg.io_timeout = Duration::from_secs_f64(args.store.timeout);
    let client = Arc::new(Client::new(&cfg).map_err(anyhow::Error::msg)?);
    let report = check(&client, &keys)
        .with_context(|| format!("cannot check the store under prefix {prefix:?}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            println!("{}: {} (key {})", p.path, p.problem, p.key);
        }
        println!(
            "{}: {} directories, {} files, {} symlinks, {} bytes; {}{}",
            prefix,
            report.directories,
            report.files,
            report.symlinks,
            report.bytes,
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
    Ok(if report.problems.is_empty() {
        0
    } else {
        EXIT_PROBLEMS
    })
}
