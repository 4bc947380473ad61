//! `memfis stats [--json]`: the figures `memfis_tools::stats` gathers, rendered for people or
//! as JSON. Exit 1 when a server or the tree cannot be read, 8 when the prefix holds no tree.

use anyhow::Result;
use memfis_fs::KeyLayout;
use memfis_tools::stats::Stats;

use crate::cli::StatsArgs;
use crate::cli::store::TOOL_CACHE_TTL;

pub fn run(args: StatsArgs) -> Result<i32> {
    let client =
        memfis_tools::session::connect(&crate::cli::store::config(&args.store, TOOL_CACHE_TTL)?)?;
    let keys = KeyLayout::new(&args.store.prefix()).map_err(anyhow::Error::msg)?;
    let stats = memfis_tools::stats::gather(&client, &keys);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", render(&stats));
    }
    Ok(if stats.healthy() {
        0
    } else if stats.tree.no_tree && stats.servers.iter().all(|s| s.reachable) {
        // Every server answered and none holds the tree.
        crate::cli::store::EXIT_NO_TREE
    } else {
        1
    })
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

/// The report `memfis stats` prints. (Over 80 lines: one line per figure, in print order.)
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
        match (&stats.trees_error, stats.trees.is_empty()) {
            (Some(e), _) => format!("cannot be read ({e})"),
            (None, true) => "none".to_string(),
            (None, false) => stats.trees.join(", "),
        }
    );
    if let Some(c) = &stats.copies {
        out += &format!(
            "copies: {} of each key; {} keys, {} under-replicated{}{}\n",
            c.replicas,
            c.keys,
            c.under_replicated,
            if c.failed.is_empty() {
                String::new()
            } else {
                format!(", {} copies could not be read", c.failed.len())
            },
            if c.out_of_sync.is_empty() {
                String::new()
            } else {
                format!(
                    "; out of sync (restarted empty?): {} (a mount or `memfis check --repair` refills)",
                    c.out_of_sync.join(", ")
                )
            }
        );
    }
    match (&stats.refill, &stats.refill_error) {
        (Some(r), _) => {
            out += &format!(
                "refill: mount {} copies to {}: {} of {} keys compared, {} copies written\n",
                r.mount,
                r.servers.join(", "),
                r.compared,
                r.keys,
                r.copied
            )
        }
        (None, Some(e)) => out += &format!("refill: {e}\n"),
        (None, None) => {}
    }
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
        t.counts.directories,
        t.counts.files,
        t.counts.symlinks,
        t.counts.specials,
        human(t.counts.bytes),
        opt(t.inodes),
    );
    if t.counts.private_names + t.counts.long_names + t.counts.chunked_files > 0 {
        out += &format!(
            "  not served by nginx: {} names of files others may not read, {} names too long for a key, {} files larger than one item\n",
            t.counts.private_names, t.counts.long_names, t.counts.chunked_files
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
