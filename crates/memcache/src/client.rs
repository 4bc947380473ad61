//! The client: routes each command of a batch to the server that owns its key and runs the
//! per-server sub-batches pipelined, in parallel when several servers are involved.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::connection::Timeouts;
use crate::latency::{LatencyHistogram, LatencySnapshot};
use crate::pool::ServerPool;
use crate::protocol::validate_key;
use crate::replicas::{Replication, ResyncReport, Servers};
use crate::ring::Ring;
use crate::{Capacity, CmdResult, Command, Item, Reply, Store, StoreError};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` strings, exactly as nginx's upstream block lists them.
    pub servers: Vec<String>,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
}

impl ClientConfig {
    pub fn new(servers: Vec<String>) -> ClientConfig {
        let t = Timeouts::default();
        ClientConfig {
            servers,
            connect_timeout: t.connect,
            io_timeout: t.io,
        }
    }
}

/// `STAT name value` pairs of one server.
pub type Stats = Vec<(String, String)>;

pub struct Client {
    pools: Vec<ServerPool>,
    ring: Ring,
    /// Per-server pipelined exchanges (round trips) and commands sent, for benchmarks.
    round_trips: AtomicU64,
    commands: AtomicU64,
    /// How long each per-server exchange took.
    latency: LatencyHistogram,
    /// Commands that failed for want of the server (unreachable, timed out, broken).
    failed: AtomicU64,
    /// How many copies of each key, and which servers hold theirs (`--replicas`).
    replication: Replication,
}

/// Checks a server address: `host:port` with a numeric port, or `unix:/absolute/path` (as
/// nginx's upstream writes a unix socket).
pub fn validate_server(addr: &str) -> Result<(), String> {
    if let Some(path) = addr.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!(
                "server {addr:?}: a unix socket needs an absolute path"
            ));
        }
        return Ok(());
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("server {addr:?} is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("server {addr:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("server {addr:?} has no valid port (1-65535)")),
    }
}

impl Client {
    pub fn new(cfg: &ClientConfig) -> Result<Client, String> {
        if cfg.servers.is_empty() {
            return Err("no memcached server given".into());
        }
        for (i, s) in cfg.servers.iter().enumerate() {
            validate_server(s)?;
            if cfg.servers[..i].contains(s) {
                return Err(format!(
                    "server {s} is given twice: a pool lists each server once"
                ));
            }
        }
        let t = Timeouts {
            connect: cfg.connect_timeout,
            io: cfg.io_timeout,
        };
        Ok(Client {
            pools: cfg.servers.iter().map(|s| ServerPool::new(s, t)).collect(),
            ring: Ring::new(&cfg.servers),
            round_trips: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
            failed: AtomicU64::new(0),
            replication: Replication::new(cfg.servers.len()),
        })
    }

    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.pools.iter().map(|p| p.addr.as_str())
    }

    /// Round trip times so far.
    pub fn latency(&self) -> LatencySnapshot {
        self.latency.snapshot()
    }

    /// Commands that failed because a server could not be reached or answered badly.
    pub fn failed_commands(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Runs one server's part of a batch, timing it.
    fn exchange(&self, server: usize, cmds: &[Command]) -> Vec<CmdResult> {
        let started = Instant::now();
        let out = self.pools[server].run_batch(cmds);
        self.latency.record(started.elapsed());
        let failed = out
            .iter()
            .filter(|r| matches!(r, Err(e) if e.is_unreachable()))
            .count();
        self.failed.fetch_add(failed as u64, Ordering::Relaxed);
        out
    }

    /// (round trips, commands) sent so far. A batch touching two servers counts two trips.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.round_trips.load(Ordering::Relaxed),
            self.commands.load(Ordering::Relaxed),
        )
    }

    /// Index of the server owning `key` (escaped form, as sent on the wire).
    pub fn server_for(&self, key: &[u8]) -> usize {
        if self.pools.len() == 1 {
            0
        } else {
            self.ring.server_for(&crate::protocol::percent_decode(key))
        }
    }

    /// Sends each command to the server paired with it: one pipelined exchange per server,
    /// servers in parallel. One result per command, in order.
    pub(crate) fn send(&self, sends: Vec<(usize, Command)>) -> Vec<CmdResult> {
        let mut groups: Vec<(Vec<usize>, Vec<Command>)> =
            vec![(Vec::new(), Vec::new()); self.pools.len()];
        let count = sends.len();
        for (i, (server, cmd)) in sends.into_iter().enumerate() {
            groups[server].0.push(i);
            groups[server].1.push(cmd);
        }
        let busy: Vec<usize> = (0..groups.len())
            .filter(|&s| !groups[s].1.is_empty())
            .collect();
        self.round_trips
            .fetch_add(busy.len() as u64, Ordering::Relaxed);
        self.commands.fetch_add(count as u64, Ordering::Relaxed);
        if tracing::enabled!(tracing::Level::TRACE) {
            for &s in &busy {
                let names: Vec<String> = groups[s].1.iter().map(describe).collect();
                tracing::trace!(server = %self.pools[s].addr, "batch: {}", names.join(" | "));
            }
        }
        let outputs: Vec<(usize, Vec<CmdResult>)> = if busy.len() <= 1 {
            busy.iter()
                .map(|&s| (s, self.exchange(s, &groups[s].1)))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = busy
                    .iter()
                    .map(|&s| {
                        let cmds = &groups[s].1;
                        (s, scope.spawn(move || self.exchange(s, cmds)))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|(s, h)| (s, h.join().expect("memcached batch thread panicked")))
                    .collect()
            })
        };
        let mut results: Vec<Option<CmdResult>> = vec![None; count];
        for (s, out) in outputs {
            for (i, r) in groups[s].0.iter().zip(out) {
                results[*i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::protocol("-", "command got no reply"))))
            .collect()
    }

    /// Number of servers in the pool.
    pub fn server_count(&self) -> usize {
        self.pools.len()
    }

    /// The address of server `index`.
    pub fn server_addr(&self, index: usize) -> &str {
        &self.pools[index].addr
    }

    /// The servers holding `key`'s copies (escaped form), its own first.
    pub fn servers_holding(&self, key: &[u8]) -> Vec<usize> {
        let n = self.replication.copies().min(self.pools.len());
        Servers::holders(self, key, n)
    }

    /// Writes the in-sync marker to server `index` (it holds its copy of every key).
    pub fn mark_in_sync(&self, index: usize) -> Result<(), StoreError> {
        crate::replicas::mark_in_sync(self, &self.replication, index)
    }

    /// The replication settings and each server's sync state.
    pub fn replication(&self) -> &Replication {
        &self.replication
    }

    /// The address of the server owning `key`, for error messages.
    pub fn server_addr_for(&self, key: &[u8]) -> &str {
        &self.pools[self.server_for(key)].addr
    }

    /// `stats [group]` of every server. Does not pass through twemproxy.
    pub fn stats(&self, group: Option<&str>) -> Vec<(String, Result<Stats, StoreError>)> {
        self.pools
            .iter()
            .map(|p| {
                (
                    p.addr.clone(),
                    p.with_conn(|c| c.stats(group)).and_then(|r| r),
                )
            })
            .collect()
    }

    /// `version` of every server.
    pub fn versions(&self) -> Vec<(String, Result<String, StoreError>)> {
        self.pools
            .iter()
            .map(|p| (p.addr.clone(), p.with_conn(|c| c.version()).and_then(|r| r)))
            .collect()
    }

    fn stat_sum(&self, group: Option<&str>, name: &str) -> Option<Vec<u64>> {
        self.stats(group)
            .into_iter()
            .map(|(_, r)| {
                r.ok()?
                    .into_iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, v)| v.parse().ok())
            })
            .collect()
    }
}

impl Store for Client {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        if self.replication.copies() > 1 {
            return crate::replicas::execute(self, &self.replication, batch);
        }
        let mut results: Vec<Option<CmdResult>> = vec![None; batch.len()];
        let mut sends = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        for (i, cmd) in batch.into_iter().enumerate() {
            if let Err(e) = validate_key(cmd.key()) {
                results[i] = Some(Err(e));
                continue;
            }
            slots.push(i);
            sends.push((self.server_for(cmd.key()), cmd));
        }
        for (i, r) in slots.into_iter().zip(self.send(sends)) {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::protocol("-", "command got no reply"))))
            .collect()
    }

    fn capacity(&self) -> Option<Capacity> {
        let used = self.stat_sum(None, "bytes")?;
        let limit = self.stat_sum(None, "limit_maxbytes")?;
        // Each byte is held by every copy: the pool holds 1/N of its memory in files.
        let copies = self.replication.copies().min(self.pools.len()) as u64;
        Some(Capacity {
            used_bytes: used.iter().sum::<u64>() / copies,
            limit_bytes: limit.iter().sum::<u64>() / copies,
        })
    }

    fn interruptions(&self) -> u64 {
        self.pools.iter().map(|p| p.interruptions()).sum()
    }

    fn replicas(&self) -> usize {
        self.replication.copies()
    }

    fn set_replicas(&self, copies: usize, keys: &crate::ReplicaKeys) -> Result<(), String> {
        if copies == 0 || copies > self.pools.len() {
            return Err(format!(
                "{copies} copies of each key need at least {copies} servers; {} given",
                self.pools.len()
            ));
        }
        if copies > 1 {
            self.replication.enable(copies, keys);
        }
        Ok(())
    }

    fn mark_all_in_sync(&self) -> Result<(), StoreError> {
        for s in 0..self.pools.len() {
            self.mark_in_sync(s)?;
        }
        Ok(())
    }

    fn get_anywhere(&self, key: &[u8]) -> Result<Option<Item>, StoreError> {
        if self.pools.len() == 1 {
            return self.get(key);
        }
        validate_key(key)?;
        let order = self
            .ring
            .servers_for(&crate::protocol::percent_decode(key), self.pools.len());
        let mut first_error = None;
        for s in order {
            match self.send(vec![(s, Command::Get(key.to_vec()))]).pop() {
                Some(Ok(Reply::Value(Some(item)))) => return Ok(Some(item)),
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                _ => {}
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    fn in_order(&self) -> bool {
        self.pools.len() == 1
    }

    fn list_keys(&self) -> Option<Result<Vec<Vec<u8>>, StoreError>> {
        let mut all = Vec::new();
        // With N copies of each key, the servers that answer list every key as long as
        // fewer than N are missing.
        let mut missing = 0;
        for p in &self.pools {
            match p.with_conn(|c| c.metadump()).and_then(|r| r) {
                Ok(keys) => all.extend(keys),
                Err(e) if e.is_unreachable() && missing + 1 < self.replication.copies() => {
                    missing += 1;
                }
                Err(e) => return Some(Err(e)),
            }
        }
        if self.replication.copies() > 1 {
            // Each key is listed once per copy.
            all.sort_unstable();
            all.dedup();
        }
        Some(Ok(all))
    }

    fn resync(
        &self,
        keys: &[Vec<u8>],
        repair: bool,
        pace: &mut dyn FnMut(&ResyncReport) -> ControlFlow<()>,
    ) -> ResyncReport {
        crate::replicas::resync(self, &self.replication, keys, repair, pace)
    }

    fn pool_id(&self) -> Option<String> {
        (self.pools.len() > 1).then(|| crate::ring::pool_id(&self.servers().collect::<Vec<_>>()))
    }

    fn servers_to_refill(&self) -> Vec<String> {
        let refill = crate::replicas::servers_to_refill(self, &self.replication);
        refill
            .into_iter()
            .map(|s| self.pools[s].addr.clone())
            .collect()
    }

    fn item_size_max(&self) -> Option<u64> {
        self.stat_sum(Some("settings"), "item_size_max")?
            .into_iter()
            .min()
    }
}

impl Servers for Client {
    fn send(&self, sends: Vec<(usize, Command)>) -> Vec<CmdResult> {
        Client::send(self, sends)
    }

    fn count(&self) -> usize {
        self.pools.len()
    }

    fn addr(&self, index: usize) -> String {
        self.pools[index].addr.clone()
    }

    fn interruptions(&self, index: usize) -> u64 {
        self.pools[index].interruptions()
    }

    fn holders(&self, key: &[u8], n: usize) -> Vec<usize> {
        if self.pools.len() == 1 {
            return vec![0];
        }
        self.ring
            .servers_for(&crate::protocol::percent_decode(key), n)
    }
}

/// `verb key` of a command, for trace logs.
fn describe(cmd: &Command) -> String {
    let verb = match cmd {
        Command::Get(_) => "get",
        Command::Gets(_) => "gets",
        Command::Store { op, .. } => op.verb(),
        Command::Cas { .. } => "cas",
        Command::Incr { .. } => "incr",
        Command::Decr { .. } => "decr",
        Command::Delete(_) => "delete",
        Command::Touch { .. } => "touch",
        Command::MetaSize(_) => "mg",
    };
    format!("{verb} {}", String::from_utf8_lossy(cmd.key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_nginx_escapes_only() {
        assert_eq!(crate::protocol::percent_decode(b"a%20b%25c"), b"a b%c");
        assert_eq!(crate::protocol::percent_decode(b"p%zz"), b"p%zz");
        assert_eq!(crate::protocol::percent_decode(b"p%2"), b"p%2");
    }

    #[test]
    fn validates_servers() {
        assert!(validate_server("127.0.0.1:11211").is_ok());
        assert!(validate_server("localhost").is_err());
        assert!(validate_server("h:0").is_err());
        assert!(validate_server(":11211").is_err());
        assert!(validate_server("unix:/run/memcached/memcached.sock").is_ok());
        assert!(validate_server("unix:memcached.sock").is_err());
    }
}
