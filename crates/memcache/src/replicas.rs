//! Replicas (`--replicas N`): every key on N servers, the key's own on the ring and the next
//! distinct ones clockwise, where nginx's retries look. The *acting primary* (the first copy
//! that is in sync and reachable) answers reads and decides conditional commands; writes go to
//! every copy in the same round trip, and a copy that answered otherwise is set to the
//! primary's value in a second one. The protocol: docs/store-layout.md, "Replicas".

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::protocol::validate_key;
use crate::{CmdResult, Command, Item, Reply, StoreError, StoreOp};

/// How long a server that could not be reached is left alone before it is tried again.
const REST_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// How often the marker of a server out of sync is read again (a resync elsewhere may have
/// finished).
const RECHECK_OUT_OF_SYNC: Duration = Duration::from_secs(1);

/// Tries of a fix-up when other writers keep changing the copy under it.
const FIX_UP_TRIES: usize = 3;

/// Tokens remembered from `gets` for the `cas` that follows; dropped all at once past this.
const TOKENS_KEPT: usize = 1 << 16;

/// Keys remembered as missed by a server (a write that did not reach it); past this the
/// server's marker is deleted instead, so that every client takes it for out of sync.
const MISSED_KEPT: usize = 10_000;

/// Missed keys set right in one batch's stead (see [`repair_missed`]).
const MISSED_PER_BATCH: usize = 64;

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
            Ok(_) => repl.note_out_of_sync(s, &pool.addr(s)),
            Err(_) => {}
        }
    }
    (rest, confirmed)
}

/// The servers holding `key`'s copies, its own first.
fn holders<P: Servers + ?Sized>(pool: &P, repl: &Replication, key: &[u8]) -> Vec<usize> {
    pool.holders(key, repl.copies().min(pool.count()))
}

/// Writes the in-sync marker to server `index`: it holds its copy of every key.
pub fn mark_in_sync<P: Servers + ?Sized>(
    pool: &P,
    repl: &Replication,
    index: usize,
) -> Result<(), StoreError> {
    let Some(marker) = repl.marker() else {
        return Ok(());
    };
    let cmd = Command::store(StoreOp::Set, &marker, b"1");
    match send(pool, repl, vec![(index, cmd)]).pop() {
        Some(Ok(Reply::Stored)) => {
            repl.note_in_sync(index);
            Ok(())
        }
        Some(Err(e)) => Err(e),
        other => Err(StoreError::protocol(
            &pool.addr(index),
            &format!("marker not stored: {other:?}"),
        )),
    }
}

/// The keys a replicated tree treats apart.
#[derive(Debug, Clone, Default)]
pub struct ReplicaKeys {
    /// The in-sync marker, written to each server directly once it holds its copy of every
    /// key.
    pub marker: Vec<u8>,
    /// What the keys of presence start with (a mount's liveness key): written to every copy
    /// that answers, and present if any copy holds it. A mount cut off from one copy of its
    /// liveness key stays alive for every other mount (one that cannot read a copy takes it
    /// for alive), and is taken for gone only once no copy holds it.
    pub presence: Vec<u8>,
}

/// The replication settings of a client and what it knows of each server.
pub struct Replication {
    copies: AtomicUsize,
    /// [`REST_AFTER_FAILURE`] and [`RECHECK_OUT_OF_SYNC`], or zero in tests whose servers
    /// fail and return between two steps of a scheduler, not seconds apart.
    pauses: Mutex<(Duration, Duration)>,
    /// The tree's special keys. `None`: every server counts as in sync.
    keys: Mutex<Option<ReplicaKeys>>,
    servers: Vec<ServerState>,
    /// (key, the token a `gets` answered with) -> who issued it and each copy's token for
    /// the same value.
    tokens: Mutex<HashMap<(Vec<u8>, u64), Tokens>>,
    /// Writes this client made that did not reach a server (down, stalled, cut off): that
    /// server's copy of the key is older. It never answers for the key, and is set right
    /// once it answers again.
    missed: Mutex<Missed>,
}

/// A key one server missed: (server, key).
type MissedKey = (usize, Vec<u8>);

#[derive(Default)]
struct Missed {
    /// (server, key) -> the generation of the last miss, so that a repair that began before
    /// a newer miss of the same key does not forget it.
    keys: std::collections::BTreeMap<MissedKey, u64>,
    generation: u64,
    /// Servers that missed more than can be remembered: their marker goes.
    untracked: std::collections::BTreeSet<usize>,
}

/// The tokens one `gets` collected: memcached's cas tokens are per server.
struct Tokens {
    /// The server whose token the caller got (the acting primary then).
    issuer: usize,
    /// (copy's server, its token), for copies that held the same value.
    copies: Vec<(usize, u64)>,
}

struct ServerState {
    in_sync: AtomicBool,
    /// The server's interruption count when its marker was last read; `u64::MAX` never.
    checked_at: AtomicU64,
    last_check: Mutex<Option<Instant>>,
    resting_until: Mutex<Option<Instant>>,
}

impl Replication {
    pub fn new(servers: usize) -> Replication {
        Replication {
            copies: AtomicUsize::new(1),
            pauses: Mutex::new((REST_AFTER_FAILURE, RECHECK_OUT_OF_SYNC)),
            keys: Mutex::new(None),
            servers: (0..servers)
                .map(|_| ServerState {
                    in_sync: AtomicBool::new(false), // until its marker is read
                    checked_at: AtomicU64::new(u64::MAX),
                    last_check: Mutex::new(None),
                    resting_until: Mutex::new(None),
                })
                .collect(),
            tokens: Mutex::new(HashMap::new()),
            missed: Mutex::new(Missed::default()),
        }
    }

    /// Copies kept of each key (1: no replication).
    pub fn copies(&self) -> usize {
        self.copies.load(Ordering::SeqCst)
    }

    /// Keeps `copies` copies of every key from now on, servers proving they are in sync by
    /// the marker of `keys` (a key under the tree's prefix that nginx cannot reach).
    pub fn enable(&self, copies: usize, keys: &ReplicaKeys) {
        *lock(&self.keys) = Some(keys.clone());
        for s in &self.servers {
            s.checked_at.store(u64::MAX, Ordering::SeqCst);
        }
        self.copies
            .store(copies.clamp(1, self.servers.len().max(1)), Ordering::SeqCst);
    }

    /// How long a failed server is left alone, and how often an out-of-sync server's marker
    /// is read again (defaults: 1 s each).
    pub fn set_pauses(&self, rest: Duration, recheck: Duration) {
        *lock(&self.pauses) = (rest, recheck);
    }

    /// The marker key, when replication is on.
    pub fn marker(&self) -> Option<Vec<u8>> {
        lock(&self.keys).as_ref().map(|k| k.marker.clone())
    }

    /// Whether `key` is a key of presence (see [`ReplicaKeys::presence`]).
    fn is_presence(&self, key: &[u8]) -> bool {
        lock(&self.keys)
            .as_ref()
            .is_some_and(|k| !k.presence.is_empty() && key.starts_with(&k.presence))
    }

    /// Whether server `index` was last seen holding its copy of every key.
    pub fn in_sync(&self, index: usize) -> bool {
        self.servers[index].in_sync.load(Ordering::SeqCst)
    }

    pub(crate) fn note_in_sync(&self, index: usize) {
        self.servers[index].in_sync.store(true, Ordering::SeqCst);
    }

    pub fn note_unreachable(&self, index: usize) {
        if self.copies() > 1 {
            let rest = lock(&self.pauses).0;
            *lock(&self.servers[index].resting_until) = Some(Instant::now() + rest);
            // What it holds when it answers again is unknown until its marker is read.
            self.servers[index].in_sync.store(false, Ordering::SeqCst);
        }
    }

    /// True while server `index` failed a moment ago and is left alone.
    pub fn resting(&self, index: usize) -> bool {
        if self.copies() <= 1 {
            return false;
        }
        let mut until = lock(&self.servers[index].resting_until);
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// The copy that answers for `key`, held by `holders`: the first in sync, not resting
    /// and not known to have missed a write of the key; else the first in sync and not
    /// resting (an older value, of a write that was never acknowledged, beats none); else the
    /// first not resting; else the key's own server.
    fn acting_primary(&self, holders: &[usize], key: &[u8]) -> usize {
        let missed = lock(&self.missed);
        let stale = |s: usize| missed.keys.contains_key(&(s, key.to_vec()));
        let usable = |s: &usize| self.in_sync(*s) && !self.resting(*s);
        holders
            .iter()
            .copied()
            .find(|s| usable(s) && !stale(*s))
            .or_else(|| holders.iter().copied().find(usable))
            .or_else(|| holders.iter().copied().find(|&s| !self.resting(s)))
            .unwrap_or(holders[0])
    }

    /// A write of `key` did not reach server `index`.
    fn note_missed(&self, index: usize, key: &[u8]) {
        let mut missed = lock(&self.missed);
        if missed.untracked.contains(&index) {
            return;
        }
        if missed.keys.keys().filter(|(s, _)| *s == index).count() >= MISSED_KEPT {
            missed.untracked.insert(index);
            missed.keys.retain(|(s, _), _| *s != index);
            return;
        }
        missed.generation += 1;
        let generation = missed.generation;
        missed.keys.insert((index, key.to_vec()), generation);
    }

    fn remember_tokens(&self, key: &[u8], cas: u64, tokens: Tokens) {
        let mut all = lock(&self.tokens);
        if all.len() >= TOKENS_KEPT {
            all.clear();
        }
        all.insert((key.to_vec(), cas), tokens);
    }

    fn take_tokens(&self, key: &[u8], cas: u64) -> Option<Tokens> {
        lock(&self.tokens).remove(&(key.to_vec(), cas))
    }

    /// Server `index` answered without its marker: it restarted empty since it was last
    /// read.
    fn note_out_of_sync(&self, index: usize, addr: &str) {
        if self.servers[index].in_sync.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                server = addr,
                "this server lost its copies (restarted empty?): reads go to the other copies until `memfis check --repair` refills it"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the marker of every server whose connections broke since it was last read, and of
/// servers out of sync once a second: one round trip, only when one is due.
fn refresh_sync<P: Servers + ?Sized>(pool: &P, repl: &Replication) {
    let Some(marker) = repl.marker() else { return };
    let recheck = lock(&repl.pauses).1;
    let now = Instant::now();
    let due: Vec<usize> = (0..repl.servers.len())
        .filter(|&s| {
            let st = &repl.servers[s];
            if repl.resting(s) {
                return false;
            }
            let interrupted = st.checked_at.load(Ordering::SeqCst) != pool.interruptions(s);
            let stale = !st.in_sync.load(Ordering::SeqCst)
                && lock(&st.last_check).is_none_or(|t| now.duration_since(t) >= recheck);
            interrupted || stale
        })
        .collect();
    if due.is_empty() {
        return;
    }
    let before: Vec<u64> = due.iter().map(|&s| pool.interruptions(s)).collect();
    let replies = send(
        pool,
        repl,
        due.iter()
            .map(|&s| (s, Command::Get(marker.clone())))
            .collect(),
    );
    for ((&s, reply), seen) in due.iter().zip(replies).zip(before) {
        let st = &repl.servers[s];
        *lock(&st.last_check) = Some(now);
        match reply {
            Ok(Reply::Value(v)) => {
                let was = st.in_sync.swap(v.is_some(), Ordering::SeqCst);
                let first = st.checked_at.swap(seen, Ordering::SeqCst) == u64::MAX;
                if first {
                    // What a client finds at its start is no news.
                } else if was && v.is_none() {
                    tracing::warn!(
                        server = pool.addr(s),
                        "this server lost its copies (restarted empty?): reads go to the other copies until `memfis check --repair` refills it"
                    );
                } else if !was && v.is_some() {
                    tracing::info!(server = pool.addr(s), "server in sync again");
                }
            }
            _ => st.in_sync.store(false, Ordering::SeqCst),
        }
    }
}

/// Sets right copies this client knows missed a write, on servers that answer again (some
/// each batch), before nginx or another mount reads them as the first copy; a server that
/// missed too many to remember loses its marker instead (every client then takes it for out
/// of sync until `memfis check --repair`).
fn repair_missed<P: Servers + ?Sized>(pool: &P, repl: &Replication) {
    let (due, untracked): (Vec<(MissedKey, u64)>, Vec<usize>) = {
        let missed = lock(&repl.missed);
        if missed.keys.is_empty() && missed.untracked.is_empty() {
            return;
        }
        (
            missed
                .keys
                .iter()
                .filter(|((s, _), _)| !repl.resting(*s))
                .map(|(k, g)| (k.clone(), *g))
                .collect(),
            missed
                .untracked
                .iter()
                .copied()
                .filter(|&s| !repl.resting(s))
                .collect(),
        )
    };
    if let Some(marker) = repl.marker() {
        let deletes = untracked
            .iter()
            .map(|&s| (s, Command::Delete(marker.clone())))
            .collect();
        for (&s, r) in untracked.iter().zip(send(pool, repl, deletes)) {
            if r.is_ok() {
                lock(&repl.missed).untracked.remove(&s);
                repl.note_out_of_sync(s, &pool.addr(s));
            }
        }
    }
    let mut fixes = Vec::new();
    let mut entries = Vec::new();
    for ((s, key), generation) in due {
        if fixes.len() == MISSED_PER_BATCH {
            break;
        }
        let primary = repl.acting_primary(&holders(pool, repl, &key), &key);
        if primary == s {
            continue; // no other copy answers: nothing to copy from
        }
        fixes.push(FixUp {
            key: key.clone(),
            primary,
            copies: vec![s],
            exptime: 0,
        });
        entries.push(((s, key), generation));
    }
    if fixes.is_empty() {
        return;
    }
    for ((entry, generation), r) in entries.into_iter().zip(fix_up(pool, repl, fixes)) {
        let mut missed = lock(&repl.missed);
        if r.is_ok() && missed.keys.get(&entry) == Some(&generation) {
            missed.keys.remove(&entry);
        }
    }
}

/// What one command of the caller's batch became.
enum Plan {
    /// Answered by the acting primary only (`get`, `mg`); `at` is its index in the sends.
    Read { at: usize, primary: usize },
    /// Sent to every copy (`gets` and every write); `sent` lists (server, index in the
    /// round's sends) in holder order; `unsent` copies a `cas` had no token for.
    Fanned {
        primary: usize,
        sent: Vec<(usize, usize)>,
        unsent: Vec<usize>,
    },
    /// A key of presence: sent to every copy; see [`presence_result`].
    Presence { sent: Vec<usize> },
    /// Refused before sending (bad key).
    Done(CmdResult),
}

/// Runs a batch over replicated keys: see the module doc.
pub fn execute<P: Servers + ?Sized>(
    pool: &P,
    repl: &Replication,
    batch: Vec<Command>,
) -> Vec<CmdResult> {
    refresh_sync(pool, repl);
    repair_missed(pool, repl);
    let mut sends: Vec<(usize, Command)> = Vec::new();
    let mut plans = Vec::with_capacity(batch.len());
    for cmd in &batch {
        if let Err(e) = validate_key(cmd.key()) {
            plans.push(Plan::Done(Err(e)));
            continue;
        }
        let holders = holders(pool, repl, cmd.key());
        let primary = repl.acting_primary(&holders, cmd.key());
        if repl.is_presence(cmd.key()) {
            let mut sent = Vec::new();
            for &s in &holders {
                sent.push(sends.len());
                sends.push((s, cmd.clone()));
            }
            plans.push(Plan::Presence { sent });
            continue;
        }
        match cmd {
            Command::Get(_) | Command::MetaSize(_) => {
                plans.push(Plan::Read {
                    at: sends.len(),
                    primary,
                });
                sends.push((primary, cmd.clone()));
            }
            Command::Cas { cas, .. } => {
                let tokens = repl.take_tokens(cmd.key(), *cas);
                if tokens.as_ref().is_some_and(|t| t.issuer != primary) {
                    // The token is another server's (the acting primary changed since the
                    // `gets`): this server never issued it, so it is stale here.
                    plans.push(Plan::Done(Ok(Reply::Exists)));
                    continue;
                }
                let mut sent = Vec::new();
                let mut unsent = Vec::new();
                for &s in &holders {
                    let token = if s == primary {
                        Some(*cas)
                    } else {
                        tokens
                            .as_ref()
                            .and_then(|t| t.copies.iter().find(|c| c.0 == s))
                            .map(|c| c.1)
                    };
                    match token {
                        Some(t) => {
                            sent.push((s, sends.len()));
                            sends.push((s, with_cas(cmd, t)));
                        }
                        None => unsent.push(s),
                    }
                }
                plans.push(Plan::Fanned {
                    primary,
                    sent,
                    unsent,
                });
            }
            _ => {
                let mut sent = Vec::new();
                for &s in &holders {
                    sent.push((s, sends.len()));
                    sends.push((s, cmd.clone()));
                }
                plans.push(Plan::Fanned {
                    primary,
                    sent,
                    unsent: Vec::new(),
                });
            }
        }
    }
    let (replies, confirmed) = send_checked(pool, repl, sends);
    let mut replies: Vec<Option<CmdResult>> = replies.into_iter().map(Some).collect();
    let mut out: Vec<Option<CmdResult>> = Vec::with_capacity(batch.len());
    let mut retries: Vec<usize> = Vec::new();
    let mut fix_ups: Vec<(usize, FixUp)> = Vec::new();
    for (i, (cmd, plan)) in batch.iter().zip(plans).enumerate() {
        match plan {
            Plan::Done(r) => out.push(Some(r)),
            Plan::Read { at, primary } => {
                out.push(Some(replies[at].take().unwrap_or_else(no_reply)));
                let another_in_sync = holders(pool, repl, cmd.key())
                    .into_iter()
                    .any(|s| s != primary && repl.in_sync(s));
                if !confirmed[primary] && another_in_sync {
                    retries.push(i); // it restarted empty: its miss proves nothing
                    continue;
                }
            }
            Plan::Presence { sent } => {
                let got = sent
                    .into_iter()
                    .map(|at| replies[at].take().unwrap_or_else(no_reply))
                    .collect();
                out.push(Some(presence_result(got)));
                continue; // never retried: every copy was asked
            }
            Plan::Fanned {
                primary,
                sent,
                unsent,
            } => {
                // The primary planned answers if its marker was read in the same exchange;
                // else the first copy whose marker was (the primary restarted empty).
                let primary = if confirmed[primary] {
                    primary
                } else {
                    sent.iter()
                        .map(|(s, _)| *s)
                        .find(|&s| confirmed[s])
                        .unwrap_or(primary)
                };
                let holders_now = holders(pool, repl, cmd.key());
                if !confirmed[primary] && holders_now.iter().any(|&h| repl.in_sync(h)) {
                    // No copy asked answered in sync while one is: not an answer (the caller
                    // tries again; a fix-up of the others would copy from an emptied server).
                    for (_, at) in sent {
                        replies[at].take();
                    }
                    out.push(Some(Err(StoreError::Server(format!(
                        "{} answered without its in-sync marker",
                        pool.addr(primary)
                    )))));
                    continue;
                }
                let mut answer = None;
                let mut copies = Vec::new();
                for (s, at) in sent {
                    let r = replies[at].take().unwrap_or_else(no_reply);
                    if s == primary {
                        answer = Some(r);
                    } else {
                        copies.push((s, r));
                    }
                }
                let answer = answer.unwrap_or_else(no_reply);
                let (result, fix) = settle(repl, cmd, primary, answer, copies, unsent);
                if !fix.is_empty() {
                    fix_ups.push((
                        i,
                        FixUp {
                            key: cmd.key().to_vec(),
                            primary,
                            copies: fix,
                            exptime: exptime_of(cmd),
                        },
                    ));
                }
                out.push(Some(result));
            }
        }
        if let Some(Some(Err(e))) = out.last()
            && e.is_unreachable()
            && matches!(
                cmd,
                Command::Get(_) | Command::MetaSize(_) | Command::Gets(_)
            )
        {
            retries.push(i);
        }
    }
    // Reads whose acting primary could not be reached: once more, on the next copy.
    if !retries.is_empty() {
        let again: Vec<Command> = retries.iter().map(|&i| batch[i].clone()).collect();
        for (i, r) in retries.iter().zip(execute_once_more(pool, repl, again)) {
            out[*i] = Some(r);
        }
    }
    if !fix_ups.is_empty() {
        let (idx, fixes): (Vec<usize>, Vec<FixUp>) = fix_ups.into_iter().unzip();
        let copies: Vec<(Vec<u8>, Vec<usize>)> = fixes
            .iter()
            .map(|f| (f.key.clone(), f.copies.clone()))
            .collect();
        for ((i, (key, servers)), r) in idx.into_iter().zip(copies).zip(fix_up(pool, repl, fixes)) {
            if let Err(e) = r {
                // Those copies keep what they held: never the answer for the key until set
                // right.
                for s in servers {
                    repl.note_missed(s, &key);
                }
                if matches!(out[i], Some(Ok(_))) {
                    out[i] = Some(Err(e));
                }
            }
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(no_reply))
        .collect()
}

/// The result of a command on a key of presence, from every copy's: a read finds it if any
/// copy holds it, and is an error if none does and one could not be read (it may be there);
/// a write counts if any copy took it.
fn presence_result(got: Vec<CmdResult>) -> CmdResult {
    let mut first_error = None;
    let mut answer = None;
    for r in got {
        match r {
            Ok(Reply::Value(Some(item))) => return Ok(Reply::Value(Some(item))),
            Ok(r @ (Reply::Stored | Reply::Deleted | Reply::Touched)) => answer = Some(r),
            Ok(r) => {
                answer.get_or_insert(r);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (answer, first_error) {
        (Some(r @ (Reply::Stored | Reply::Deleted | Reply::Touched)), _) => Ok(r),
        (_, Some(e)) => Err(e),
        (Some(r), None) => Ok(r),
        (None, None) => no_reply(),
    }
}

/// The second try of reads whose acting primary failed: the failure marked it resting, so
/// the next copy answers now. Not retried again.
fn execute_once_more<P: Servers + ?Sized>(
    pool: &P,
    repl: &Replication,
    batch: Vec<Command>,
) -> Vec<CmdResult> {
    let mut sends = Vec::new();
    for cmd in &batch {
        let primary = repl.acting_primary(&holders(pool, repl, cmd.key()), cmd.key());
        // Tokens of a `gets` answered by another copy: that copy's own, so a `cas` taken from
        // this reply goes where its token is valid (the others get a fix-up).
        sends.push((primary, cmd.clone()));
    }
    let servers: Vec<usize> = sends.iter().map(|(s, _)| *s).collect();
    let (replies, confirmed) = send_checked(pool, repl, sends);
    replies
        .into_iter()
        .zip(servers)
        .zip(&batch)
        .map(|((r, s), cmd)| {
            let another_in_sync = holders(pool, repl, cmd.key())
                .into_iter()
                .any(|h| h != s && repl.in_sync(h));
            match r {
                Ok(_) if !confirmed[s] && another_in_sync => Err(StoreError::Server(format!(
                    "no copy answered in sync ({} has no in-sync marker)",
                    pool.addr(s)
                ))),
                Ok(Reply::Value(Some(item))) => {
                    // A `gets` answered by this copy: its token is this server's.
                    if let (Command::Gets(key), Some(cas)) = (cmd, item.cas) {
                        repl.remember_tokens(
                            key,
                            cas,
                            Tokens {
                                issuer: s,
                                copies: Vec::new(),
                            },
                        );
                    }
                    Ok(Reply::Value(Some(item)))
                }
                r => r,
            }
        })
        .collect()
}

fn no_reply<T>() -> Result<T, StoreError> {
    Err(StoreError::protocol("-", "command got no reply"))
}

/// A copy's command with another cas token.
fn with_cas(cmd: &Command, token: u64) -> Command {
    match cmd {
        Command::Cas {
            key,
            value,
            flags,
            exptime,
            ..
        } => Command::Cas {
            key: key.clone(),
            value: value.clone(),
            flags: *flags,
            cas: token,
            exptime: *exptime,
        },
        other => other.clone(),
    }
}

fn exptime_of(cmd: &Command) -> u32 {
    match cmd {
        Command::Store { exptime, .. } | Command::Cas { exptime, .. } => *exptime,
        Command::Touch { exptime, .. } => *exptime,
        _ => 0,
    }
}

/// The caller's result of a command sent to every copy, and the copies to set to the
/// primary's value. A write is acknowledged only when every copy has it.
fn settle(
    repl: &Replication,
    cmd: &Command,
    primary: usize,
    answer: CmdResult,
    copies: Vec<(usize, CmdResult)>,
    unsent: Vec<usize>,
) -> (CmdResult, Vec<usize>) {
    if let Command::Gets(key) = cmd {
        // Remember each copy's token for the same value, for the `cas` that follows.
        if let Ok(Reply::Value(Some(item))) = &answer
            && let Some(p) = item.cas
        {
            let copies = copies
                .iter()
                .filter_map(|(s, r)| match r {
                    Ok(Reply::Value(Some(copy))) if same_item(item, copy) => Some((*s, copy.cas?)),
                    _ => None,
                })
                .collect();
            repl.remember_tokens(
                key,
                p,
                Tokens {
                    issuer: primary,
                    copies,
                },
            );
        }
        return (answer, Vec::new());
    }
    let key = cmd.key();
    let primary_reply = match &answer {
        Ok(r) => r,
        Err(e) => {
            if e.is_unreachable() && copies.iter().any(|(_, r)| r.is_ok()) {
                // The copies may hold the write: the primary's copy is the older one now.
                repl.note_missed(primary, key);
            }
            return (answer, Vec::new());
        }
    };
    let mut fix = Vec::new();
    let mut failure = None;
    for (s, r) in copies {
        match r {
            Err(e) if e.is_unreachable() => {
                repl.note_missed(s, key);
                failure = Some(e);
            }
            Err(_) => fix.push(s),
            Ok(copy) if !agrees(primary_reply, &copy) => fix.push(s),
            Ok(_) => {}
        }
    }
    if matches!(primary_reply, Reply::Stored) {
        // A `cas` that changed the primary: copies with no token follow it.
        fix.extend(unsent);
    }
    match failure {
        Some(e) => (Err(e), fix),
        None => (answer, fix),
    }
}

fn same_item(a: &Item, b: &Item) -> bool {
    a.value == b.value && a.flags == b.flags
}

/// Whether a copy's reply leaves it as the primary's left the primary.
fn agrees(primary: &Reply, copy: &Reply) -> bool {
    match (primary, copy) {
        // Both end absent.
        (Reply::Deleted | Reply::NotFound, Reply::Deleted | Reply::NotFound) => true,
        (Reply::Number(a), Reply::Number(b)) => a == b,
        (a, b) => a == b,
    }
}

/// Copies of one key to set to the acting primary's value.
struct FixUp {
    key: Vec<u8>,
    primary: usize,
    copies: Vec<usize>,
    exptime: u32,
}

/// Sets each copy to what its primary holds now: `get` the primary (with its in-sync marker:
/// a primary that restarted empty is never copied from) and `gets` the copy, then `cas` (or
/// `add`, or `delete`) the copy, so a write racing the fix-up is not overwritten with an older
/// value; then looks again, since the primary may have changed after it was read (another
/// writer that found the copies equal meanwhile would have acknowledged); tried again while
/// other writers change either.
fn fix_up<P: Servers + ?Sized>(
    pool: &P,
    repl: &Replication,
    fixes: Vec<FixUp>,
) -> Vec<Result<(), StoreError>> {
    let mut pending: Vec<(usize, usize)> = fixes
        .iter()
        .enumerate()
        .flat_map(|(i, f)| f.copies.iter().map(move |&s| (i, s)))
        .collect();
    let mut results: Vec<Result<(), StoreError>> = fixes.iter().map(|_| Ok(())).collect();
    // A round reads and writes; the round after a write reads again to see it held; the
    // last round only reads.
    for round in 0..FIX_UP_TRIES * 2 {
        let last = round + 1 == FIX_UP_TRIES * 2;
        if pending.is_empty() {
            break;
        }
        let mut reads = Vec::new();
        for &(i, s) in &pending {
            reads.push((fixes[i].primary, Command::Get(fixes[i].key.clone())));
            reads.push((s, Command::Gets(fixes[i].key.clone())));
        }
        let (got, confirmed) = send_checked(pool, repl, reads);
        let mut got = got.into_iter();
        let mut writes = Vec::new();
        let mut writing = Vec::new();
        let mut still_differs = Vec::new();
        for (i, s) in pending.drain(..) {
            let (src, dst) = (
                got.next().unwrap_or_else(no_reply),
                got.next().unwrap_or_else(no_reply),
            );
            let (src, dst) = match (
                src.and_then(Reply::into_value),
                dst.and_then(Reply::into_value),
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    results[i] = Err(e);
                    continue;
                }
            };
            let f = &fixes[i];
            // A primary seen without its marker while another copy has one restarted empty
            // (when none has it, as before a new tree's markers are written, the key's own
            // server answers: see `acting_primary`).
            let another_in_sync = holders(pool, repl, &f.key)
                .into_iter()
                .any(|h| h != f.primary && repl.in_sync(h));
            if !confirmed[f.primary] && another_in_sync {
                results[i] = Err(StoreError::Server(format!(
                    "{} restarted empty: {} not copied from it",
                    pool.addr(f.primary),
                    String::from_utf8_lossy(&f.key)
                )));
                continue;
            }
            let cmd = match (src, dst) {
                (None, None) => continue,
                (None, Some(_)) => Command::Delete(f.key.clone()),
                (Some(a), Some(b)) if same_item(&a, &b) => continue,
                (Some(a), Some(b)) => Command::Cas {
                    key: f.key.clone(),
                    value: a.value.into(),
                    flags: a.flags,
                    cas: b.cas.unwrap_or(0),
                    exptime: f.exptime,
                },
                (Some(a), None) => Command::Store {
                    op: StoreOp::Add,
                    key: f.key.clone(),
                    value: a.value.into(),
                    flags: a.flags,
                    exptime: f.exptime,
                },
            };
            if last {
                still_differs.push((i, s)); // reported below
                continue;
            }
            writing.push((i, s));
            writes.push((s, cmd));
        }
        pending.extend(still_differs);
        for ((i, s), r) in writing.into_iter().zip(send(pool, repl, writes)) {
            match r {
                // Written, or changed meanwhile: look again.
                Ok(_) => pending.push((i, s)),
                Err(e) => results[i] = Err(e),
            }
        }
    }
    for (i, s) in pending {
        results[i] = Err(StoreError::Server(format!(
            "the copy of {} on {} keeps changing: not made equal to {}'s",
            String::from_utf8_lossy(&fixes[i].key),
            pool.addr(s),
            pool.addr(fixes[i].primary),
        )));
    }
    results
}

/// What [`resync`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResyncReport {
    /// Keys compared.
    pub keys: usize,
    /// Keys with a copy missing or holding other bytes than the acting primary's.
    pub under_replicated: usize,
    /// Copies set to the primary's value (with `repair`).
    pub copied: usize,
    /// Copies that could not be compared or set: (key, error).
    pub failed: Vec<(Vec<u8>, StoreError)>,
}

/// Keys resync leaves alone: they expire by themselves (liveness keys, empty lock lists,
/// stored with a TTL a copy cannot learn) or belong to one server (the marker). `value` is
/// what any copy holds.
fn skipped_by_resync(key: &[u8], value: Option<&[u8]>, marker: &[u8]) -> bool {
    let text = String::from_utf8_lossy(key);
    key == marker || text.contains("%alive.") || (text.contains("%L") && value == Some(b"[]"))
}

/// Compares each key's copies with its acting primary's, 128 keys a round trip; with
/// `repair` sets those that differ to it (as a fix-up does: `cas`/`add`/`delete` on what the
/// copy held, so a mount's write at the same moment is not overwritten), and once every copy
/// agrees marks every reachable server in sync.
pub fn resync<P: Servers + ?Sized>(
    pool: &P,
    repl: &Replication,
    keys: &[Vec<u8>],
    repair: bool,
) -> ResyncReport {
    let mut report = ResyncReport::default();
    if repl.copies() <= 1 {
        return report;
    }
    refresh_sync(pool, repl);
    let marker = repl.marker().unwrap_or_default();
    // A server that restarts during the resync may have lost what was copied to it: only
    // servers whose connections held all along are marked in sync at the end.
    let started: Vec<u64> = (0..pool.count()).map(|s| pool.interruptions(s)).collect();
    for chunk in keys.chunks(128) {
        let mut reads = Vec::new();
        let mut asked = Vec::new();
        for key in chunk {
            let holders = holders(pool, repl, key);
            let primary = repl.acting_primary(&holders, key);
            reads.push((primary, Command::Get(key.clone())));
            let copies: Vec<usize> = holders.into_iter().filter(|&s| s != primary).collect();
            for &s in &copies {
                reads.push((s, Command::Get(key.clone())));
            }
            asked.push((key, primary, copies));
        }
        let (got, confirmed) = send_checked(pool, repl, reads);
        let mut got = got.into_iter();
        let mut fixes = Vec::new();
        for (key, primary, copies) in asked {
            report.keys += 1;
            if !confirmed[primary] && copies.iter().any(|&s| repl.in_sync(s)) {
                // Restarted empty since it was taken for the primary: its misses prove
                // nothing, and copying from it would delete the other copies.
                for _ in 0..=copies.len() {
                    got.next();
                }
                report.failed.push((
                    key.clone(),
                    StoreError::Server(format!(
                        "{} answered without its in-sync marker",
                        pool.addr(primary)
                    )),
                ));
                continue;
            }
            let src = got
                .next()
                .unwrap_or_else(no_reply)
                .and_then(Reply::into_value);
            let dsts: Vec<_> = copies
                .iter()
                .map(|_| {
                    got.next()
                        .unwrap_or_else(no_reply)
                        .and_then(Reply::into_value)
                })
                .collect();
            let src = match src {
                Ok(v) => v,
                Err(e) => {
                    report.failed.push((key.clone(), e));
                    continue;
                }
            };
            let held = src.as_ref().map(|i| i.value.as_slice()).or_else(|| {
                dsts.iter()
                    .find_map(|d| d.as_ref().ok().and_then(|v| v.as_ref()))
                    .map(|i| i.value.as_slice())
            });
            if skipped_by_resync(key, held, &marker) {
                continue;
            }
            let mut differing = Vec::new();
            for (s, dst) in copies.iter().zip(dsts) {
                match (dst, &src) {
                    (Err(e), _) => report.failed.push((key.clone(), e)),
                    (Ok(None), None) => {}
                    (Ok(Some(b)), Some(a)) if same_item(a, &b) => {}
                    (Ok(_), _) => differing.push(*s),
                }
            }
            if !differing.is_empty() {
                report.under_replicated += 1;
                report.copied += differing.len();
                fixes.push(FixUp {
                    key: key.clone(),
                    primary,
                    copies: differing,
                    exptime: 0,
                });
            }
        }
        if repair && !fixes.is_empty() {
            let keys: Vec<Vec<u8>> = fixes.iter().map(|f| f.key.clone()).collect();
            let counts: Vec<usize> = fixes.iter().map(|f| f.copies.len()).collect();
            for ((key, n), r) in keys.into_iter().zip(counts).zip(fix_up(pool, repl, fixes)) {
                if let Err(e) = r {
                    report.copied -= n;
                    report.failed.push((key, e));
                }
            }
        }
    }
    if !repair {
        report.copied = 0;
    } else if report.failed.is_empty() {
        for (s, &before) in started.iter().enumerate() {
            if repl.in_sync(s) {
                continue;
            }
            let result = if pool.interruptions(s) != before {
                Err(StoreError::Server(format!(
                    "{}'s connections broke during the resync (restarted?): run it again",
                    pool.addr(s)
                )))
            } else {
                mark_in_sync(pool, repl, s).and_then(|()| {
                    // Re-dialled to write the marker: it may have restarted after the last
                    // copy; take the marker back.
                    if pool.interruptions(s) == before {
                        return Ok(());
                    }
                    repl.note_out_of_sync(s, &pool.addr(s));
                    let _ = send(pool, repl, vec![(s, Command::Delete(marker.clone()))]);
                    Err(StoreError::Server(format!(
                        "{} restarted during the resync: run it again",
                        pool.addr(s)
                    )))
                })
            };
            if let Err(e) = result {
                report.failed.push((marker.clone(), e));
            }
        }
    }
    report
}
