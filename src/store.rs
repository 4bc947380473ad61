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

/// A refusal of a prefix with no tree ([`memfis_tools::session::no_tree`]: it names the trees
/// the store holds) followed by what to do about it; any other error as it is.
pub fn explain_no_tree(err: anyhow::Error, advice: &str) -> anyhow::Error {
    if memfis_tools::session::no_tree(&err).is_some() {
        anyhow::anyhow!("{err}. {advice}")
    } else {
        err
    }
}
