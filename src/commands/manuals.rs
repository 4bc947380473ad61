//! `memfis man` and `memfis completions`: manual pages and shell completion scripts, both
//! generated from the clap definitions so they never drift from `--help`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

pub fn man(args: &ManArgs) -> Result<()> {
    let root = Cli::command();
    if let Some(dir) = &args.dir {
        return write_all(&root, dir);
    }
    let page = match &args.subcommand {
        None => root,
        Some(name) => subcommand(&root, name)?,
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout().lock())?;
    Ok(())
}

/// memfis.1 and memfis-SUB.1 for every subcommand, into `dir`.
fn write_all(root: &clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = vec![root.clone()];
    for sub in root.get_subcommands() {
        pages.push(subcommand(root, sub.get_name())?);
    }
    for page in pages {
        let man = clap_mangen::Man::new(page);
        let path = dir.join(man.get_filename());
        let mut bytes = Vec::new();
        man.render(&mut bytes)?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(std::io::stdout(), "{}", path.display())?;
    }
    Ok(())
}

/// The subcommand `name`, named `memfis-NAME` as its page is.
fn subcommand(root: &clap::Command, name: &str) -> Result<clap::Command> {
    let Some(sub) = root.find_subcommand(name) else {
        bail!("no subcommand {name:?} (see memfis --help)");
    };
    let full = format!("{}-{}", root.get_name(), sub.get_name());
    Ok(sub
        .clone()
        .name(full)
        .version(root.get_version().unwrap_or_default().to_string()))
}

pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    // Into a buffer first: clap_complete panics when its writer fails (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "memfis", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(())
}
