//! The store options of the command line as the library takes them, and what opening a store
//! says on stderr (a new tree made, a prefix with no tree refused).

use std::time::Duration;

use anyhow::{Result, bail};
use memfis_tools::{Progress, StoreConfig};

use crate::cli::StoreArgs;

/// `args` with the cache TTL of the command (a mount's attribute TTL; 1 s for tools).
pub fn config(args: &StoreArgs, cache_ttl: Duration) -> Result<StoreConfig> {
    if !args.timeout.is_finite() || args.timeout <= 0.0 {
        bail!("--timeout must be a positive number of seconds");
    }
    Ok(StoreConfig {
        servers: args.servers.clone(),
        prefix: args.prefix(),
        timeout: Duration::from_secs_f64(args.timeout),
        allow_evictions: args.allow_evictions,
        gzip: args.gzip,
        replicas: args.replicas.map(|n| n as usize),
        cache_ttl,
    })
}

/// The cache TTL of commands other than mount.
pub const TOOL_CACHE_TTL: Duration = Duration::from_secs(1);

/// What opening a store reports, on stderr.
pub struct Notices;

impl Progress for Notices {
    fn new_tree(&self, prefix: &str, others: &[String]) {
        eprintln!(
            "memfis: no tree under prefix {prefix:?} on this store: made a new, empty one \
             (trees already here: {})",
            memfis_fs::error::list_or_none(others)
        );
    }
}

/// The exit status of every command refused for a prefix with no tree (fsck's "operational
/// error", as `memfis check` gives when it cannot check).
pub const EXIT_NO_TREE: i32 = 8;

/// A refusal of a prefix with no tree, with what to do about it: the message of
/// [`memfis_fs::FsError::NoTree`] (the one source of it) followed by the command's advice.
#[derive(Debug)]
pub struct NoTreeRefusal(String);

impl std::fmt::Display for NoTreeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoTreeRefusal {}

/// A refusal of a prefix with no tree ([`memfis_tools::session::no_tree`]: it names the trees
/// the store holds) followed by what to do about it; any other error as it is.
pub fn explain_no_tree(err: anyhow::Error, advice: &str) -> anyhow::Error {
    if memfis_tools::session::no_tree(&err).is_some() {
        NoTreeRefusal(format!("{err}. {advice}")).into()
    } else {
        err
    }
}

/// True when `err` is a refusal of a prefix with no tree (exit [`EXIT_NO_TREE`]).
pub fn is_no_tree(err: &anyhow::Error) -> bool {
    err.downcast_ref::<NoTreeRefusal>().is_some() || memfis_tools::session::no_tree(err).is_some()
}
