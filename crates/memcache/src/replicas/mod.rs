//! Replicas (`--replicas N`): every key on N servers, the key's own on the ring and the next
//! distinct ones clockwise, where nginx's retries look. The *acting primary* (the first copy
//! that is in sync and reachable) answers reads and decides conditional commands; writes go to
//! every copy in the same round trip, and a copy that answered otherwise is set to the
//! primary's value in a second one. The protocol: docs/store-layout.md, "Replicas".
//!
//! - here: [`Servers`] (the pool as replication sees it) and sending to it, every server's part
//!   led by a read of its in-sync marker
//! - `state`: what a client knows of the pool ([`Replication`]): copies, markers, rests, cas
//!   tokens of each copy, keys a server missed
//! - `fan_out`: one batch over the copies ([`execute`])
//! - `fix_up`: setting a copy to its primary's value
//! - `resync`: comparing and refilling every copy of a list of keys ([`resync`])

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::protocol::validate_key;
use crate::{CmdResult, Command, Item, Reply, StoreError, StoreOp};

mod fan_out;
mod fix_up;
mod resync;
mod state;

pub use fan_out::execute;
use fan_out::*;
use fix_up::*;
pub use resync::{RESYNC_GROUP, ResyncReport, resync};
use state::*;
pub use state::{ReplicaKeys, Replication, mark_in_sync, servers_to_refill};

/// The servers of a pool as replication sees them: the client's connections, or servers in
/// memory for tests ([`crate::memory_pool`]).
pub trait Servers {
    /// Sends each command to the server paired with it (one exchange per server, servers in
    /// parallel); one result per command, in order.
    fn send(&self, sends: Vec<(usize, Command)>) -> Vec<CmdResult>;
    fn count(&self) -> usize;
    /// The server's address, for messages.
    fn addr(&self, index: usize) -> String;
    /// Connections to the server that broke or could not be made so far.
    fn interruptions(&self, index: usize) -> u64;
    /// The first `n` distinct servers clockwise from `key`'s point (escaped form), its own
    /// first.
    fn holders(&self, key: &[u8], n: usize) -> Vec<usize>;
}

/// Sends through `pool`, failing at once what would go to a server that failed a moment ago
/// (dialling a dead server on every batch would cost each batch a connect timeout), and
/// noting the servers that could not be reached.
fn send<P: Servers + ?Sized>(
    pool: &P,
    repl: &Replication,
    sends: Vec<(usize, Command)>,
) -> Vec<CmdResult> {
    let mut out: Vec<Option<CmdResult>> = vec![None; sends.len()];
    let mut going = Vec::with_capacity(sends.len());
    let mut slots = Vec::with_capacity(sends.len());
    for (i, (server, cmd)) in sends.into_iter().enumerate() {
        if repl.resting(server) {
            out[i] = Some(Err(StoreError::Io {
                server: pool.addr(server),
                message: "unreachable a moment ago (tried again in a second)".into(),
            }));
        } else {
            slots.push((i, server));
            going.push((server, cmd));
        }
    }
    if !going.is_empty() {
        for ((i, server), r) in slots.into_iter().zip(pool.send(going)) {
            if matches!(&r, Err(e) if e.is_unreachable()) {
                repl.note_unreachable(server);
            }
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(no_reply))
        .collect()
}

/// [`send`], each server's part led by a read of its in-sync marker in the same exchange
/// (on the same connection, so a server restarted since its marker was last read, whose
/// connection the pool re-dialled, shows it here): which servers were seen in sync. A server
/// without its marker is out of sync from now on.
fn send_checked<P: Servers + ?Sized>(
    pool: &P,
    repl: &Replication,
    sends: Vec<(usize, Command)>,
) -> (Vec<CmdResult>, Vec<bool>) {
    let mut confirmed = vec![false; pool.count()];
    let Some(marker) = repl.marker() else {
        return (send(pool, repl, sends), vec![true; pool.count()]);
    };
    let mut servers: Vec<usize> = sends.iter().map(|(s, _)| *s).collect();
    servers.sort_unstable();
    servers.dedup();
    let mut all: Vec<(usize, Command)> = servers
        .iter()
        .map(|&s| (s, Command::Get(marker.clone())))
        .collect();
    all.extend(sends);
    let mut replies = send(pool, repl, all);
    let rest = replies.split_off(servers.len());
    for (&s, r) in servers.iter().zip(replies) {
        match r {
            Ok(Reply::Value(Some(_))) => confirmed[s] = true,
            Ok(Reply::Value(None)) => repl.note_out_of_sync(s, &pool.addr(s)),
            Ok(_) | Err(_) => {}
        }
    }
    (rest, confirmed)
}

/// The servers holding `key`'s copies, its own first.
fn holders<P: Servers + ?Sized>(pool: &P, repl: &Replication, key: &[u8]) -> Vec<usize> {
    pool.holders(key, repl.copies().min(pool.count()))
}

fn no_reply<T>() -> Result<T, StoreError> {
    Err(StoreError::protocol("-", "command got no reply"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
