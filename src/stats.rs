//! `memfis stats [--json]`: each server (reachable, version, evictions, item size limit, memory,
//! items, evictions, hit rate) and the tree under the prefix (files, directories, bytes, inodes,
//! format, store id). Exit 1 when a server or the tree cannot be read.

use anyhow::Result;
use memfis_fs::KeyLayout;
use memfis_fs::record::FormatRecord;
use memfis_memcache::{Client, Store, StoreError};
use serde::Serialize;

use crate::cli::StatsArgs;

#[derive(Debug, Serialize)]
struct ServerStats {
    server: String,
    reachable: bool,
    /// Why the server could not be read (unreachable, or `stats` not passed through).
    error: Option<String>,
    version: Option<String>,
    /// `Some(true)`: the server evicts items when full (memcached without `-M`).
    evictions_on: Option<bool>,
    item_size_max: Option<u64>,
    bytes_used: Option<u64>,
    bytes_limit: Option<u64>,
    items: Option<u64>,
    evictions: Option<u64>,
    get_hits: Option<u64>,
    get_misses: Option<u64>,
    /// Hits over gets since the server started, 0 to 1.
    get_hit_rate: Option<f64>,
}

#[derive(Debug, Serialize)]
struct TreeStats {
    prefix: String,
    format_version: Option<u32>,
    store_id: Option<String>,
    directories: u64,
    files: u64,
    symlinks: u64,
    /// FIFOs, sockets and device nodes.
    specials: u64,
    bytes: u64,
    /// Names of files nginx does not serve: others may not read them.
    private_names: u64,
    /// Names of files nginx cannot serve: the data key would pass 250 bytes.
    long_names: u64,
    /// Files larger than one item, in chunks (not served).
    chunked_files: u64,
    /// The live-inode counter of the store (`statfs` reports it as files in use).
    inodes: Option<u64>,
    /// Problems one scan met (operations in flight included): run `memfis check`.
    problems: usize,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Stats {
    servers: Vec<ServerStats>,
    tree: TreeStats,
    /// Prefixes of every tree formatted on this store.
    trees: Vec<String>,
}

pub fn run(args: StatsArgs) -> Result<i32> {
    let client = crate::mount::connect(&args.store)?;
    let prefix = args.store.prefix();
    let keys = KeyLayout::new(&prefix).map_err(anyhow::Error::msg)?;
    let stats = Stats {
        servers: server_stats(&client),
        tree: tree_stats(&client, &keys),
        trees: memfis_fs::fs::listed_prefixes(&client).unwrap_or_default(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", render(&stats));
    }
    let healthy = stats.servers.iter().all(|s| s.reachable) && stats.tree.error.is_none();
    Ok(if healthy { 0 } else { 1 })
}

fn server_stats(client: &Client) -> Vec<ServerStats> {
    let general = client.stats(None);
    let settings = client.stats(Some("settings"));
    let versions = client.versions();
    let mut out = Vec::new();
    for (((server, general), (_, settings)), (_, version)) in
        general.into_iter().zip(settings).zip(versions)
    {
        let reachable = version.is_ok();
        let error = match (&version, &general) {
            (Err(e), _) => Some(e.to_string()),
            (Ok(_), Err(e)) => Some(format!("no stats ({e}); twemproxy does not pass them")),
            _ => None,
        };
        let stat = |stats: &Result<Vec<(String, String)>, StoreError>, name: &str| {
            stats
                .as_ref()
                .ok()?
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let number = |stats, name| stat(stats, name).and_then(|v| v.parse::<u64>().ok());
        let (hits, misses) = (number(&general, "get_hits"), number(&general, "get_misses"));
        out.push(ServerStats {
            server,
            reachable,
            error,
            version: version.ok(),
            evictions_on: stat(&settings, "evictions").map(|v| v == "on"),
            item_size_max: number(&settings, "item_size_max"),
            bytes_used: number(&general, "bytes"),
            bytes_limit: number(&general, "limit_maxbytes"),
            items: number(&general, "curr_items"),
            evictions: number(&general, "evictions"),
            get_hits: hits,
            get_misses: misses,
            get_hit_rate: match (hits, misses) {
                (Some(h), Some(m)) if h + m > 0 => Some(h as f64 / (h + m) as f64),
                _ => None,
            },
        });
    }
    out
}

fn tree_stats(client: &Client, keys: &KeyLayout) -> TreeStats {
    let mut tree = TreeStats {
        prefix: keys.prefix().to_string(),
        format_version: None,
        store_id: None,
        directories: 0,
        files: 0,
        symlinks: 0,
        specials: 0,
        bytes: 0,
        private_names: 0,
        long_names: 0,
        chunked_files: 0,
        inodes: None,
        problems: 0,
        error: None,
    };
    let format_key = keys.format();
    match client.get(&format_key) {
        Ok(Some(item)) => {
            if let Ok(rec) = serde_json::from_slice::<FormatRecord>(&item.value) {
                tree.format_version = Some(rec.version);
                tree.store_id = Some(rec.store_id);
            }
        }
        Ok(None) => {
            tree.error = Some(
                "no memfis tree under this prefix (no format record): check the prefix; \
                 `memfis load` or `memfis mount --create` makes one"
                    .into(),
            );
            return tree;
        }
        Err(e) => {
            tree.error = Some(format!("cannot read the format record: {e}"));
            return tree;
        }
    }
    tree.inodes = client
        .get(&keys.inode_count())
        .ok()
        .flatten()
        .and_then(|i| String::from_utf8_lossy(&i.value).trim().parse().ok());
    match memfis_fs::check::scan(client, keys) {
        Ok(report) => {
            tree.directories = report.directories;
            tree.files = report.files;
            tree.symlinks = report.symlinks;
            tree.specials = report.specials;
            tree.bytes = report.bytes;
            tree.private_names = report.private_names;
            tree.long_names = report.long_names;
            tree.chunked_files = report.chunked_files;
            tree.problems = report.problems.len();
        }
        Err(e) => tree.error = Some(e.to_string()),
    }
    tree
}

/// Bytes for people: 1023 B, 1.5 KiB, 12.0 MiB.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let opt = |v: Option<u64>| v.map_or("?".to_string(), |n| n.to_string());
    for s in &stats.servers {
        if let Some(e) = s.error.as_ref().filter(|_| !s.reachable) {
            out += &format!("server {}: unreachable ({e})\n", s.server);
            continue;
        }
        out += &format!(
            "server {}: memcached {}\n",
            s.server,
            s.version.as_deref().unwrap_or("?")
        );
        if let Some(e) = &s.error {
            out += &format!("  {e}\n");
            continue;
        }
        out += &format!(
            "  evictions {}, item size limit {}\n",
            match s.evictions_on {
                Some(true) => "on (start memcached with -M: an evicted record breaks the tree)",
                Some(false) => "off",
                None => "?",
            },
            s.item_size_max.map_or("?".into(), human),
        );
        if let (Some(used), Some(limit)) = (s.bytes_used, s.bytes_limit) {
            let pct = if limit > 0 {
                used as f64 * 100.0 / limit as f64
            } else {
                0.0
            };
            out += &format!("  memory {} of {} ({pct:.1}%)\n", human(used), human(limit));
        }
        out += &format!(
            "  items {}, evictions {}, get hit rate {}\n",
            opt(s.items),
            opt(s.evictions),
            s.get_hit_rate
                .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0)),
        );
    }
    out += &format!(
        "trees on this store: {}\n",
        if stats.trees.is_empty() {
            "none".to_string()
        } else {
            stats.trees.join(", ")
        }
    );
    let t = &stats.tree;
    out += &format!("tree {}:", t.prefix);
    if let Some(e) = &t.error {
        out += &format!(" {e}\n");
        return out;
    }
    out += &format!(
        " format version {}, store id {}\n  {} directories, {} files, {} symlinks, {} FIFOs/sockets/devices, {} in files, {} inodes\n",
        t.format_version.map_or("?".into(), |v| v.to_string()),
        t.store_id.as_deref().unwrap_or("?"),
        t.directories,
        t.files,
        t.symlinks,
        t.specials,
        human(t.bytes),
        opt(t.inodes),
    );
    if t.private_names + t.long_names + t.chunked_files > 0 {
        out += &format!(
            "  not served by nginx: {} names of files others may not read, {} names too long for a key, {} files larger than one item\n",
            t.private_names, t.long_names, t.chunked_files
        );
    }
    if t.problems > 0 {
        out += &format!(
            "  {} problems seen (operations in flight count too): run `memfis check`\n",
            t.problems
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(64 << 20), "64.0 MiB");
    }
}
