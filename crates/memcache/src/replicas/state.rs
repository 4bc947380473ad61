//! What a client knows of the pool: how many copies, the tree's special keys, each server's
//! sync state (its marker last read, a rest after a failure), the cas tokens of each copy, and
//! the keys a server missed.

use super::*;

/// How long a server that could not be reached is left alone before it is tried again.
pub(super) const REST_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// How often the marker of a server out of sync is read again (a resync elsewhere may have
/// finished).
pub(super) const RECHECK_OUT_OF_SYNC: Duration = Duration::from_secs(1);

/// Tokens remembered from `gets` for the `cas` that follows; dropped all at once past this.
pub(super) const TOKENS_KEPT: usize = 1 << 16;

/// Keys remembered as missed by a server (a write that did not reach it); past this the
/// server's marker is deleted instead, so that every client takes it for out of sync.
pub(super) const MISSED_KEPT: usize = 10_000;

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
    /// Keys stored with an expiry, which a resync leaves alone (it cannot learn the expiry
    /// and would make a copy that never expires): the refill lease.
    pub expiring: Vec<Vec<u8>>,
}

/// The replication settings of a client and what it knows of each server.
pub struct Replication {
    pub(super) copies: AtomicUsize,
    /// [`REST_AFTER_FAILURE`] and [`RECHECK_OUT_OF_SYNC`], or zero in tests whose servers
    /// fail and return between two steps of a scheduler, not seconds apart.
    pub(super) pauses: Mutex<(Duration, Duration)>,
    /// The tree's special keys. `None`: every server counts as in sync.
    pub(super) keys: Mutex<Option<ReplicaKeys>>,
    pub(super) servers: Vec<ServerState>,
    /// (key, the token a `gets` answered with) -> who issued it and each copy's token for
    /// the same value.
    pub(super) tokens: Mutex<HashMap<(Vec<u8>, u64), Tokens>>,
    /// Writes this client made that did not reach a server (down, stalled, cut off): that
    /// server's copy of the key is older. It never answers for the key, and is set right
    /// once it answers again.
    pub(super) missed: Mutex<Missed>,
}

/// A key one server missed: (server, key).
pub(super) type MissedKey = (usize, Vec<u8>);

#[derive(Default)]
pub(super) struct Missed {
    /// (server, key) -> the generation of the last miss, so that a repair that began before
    /// a newer miss of the same key does not forget it.
    pub(super) keys: std::collections::BTreeMap<MissedKey, u64>,
    pub(super) generation: u64,
    /// Servers that missed more than can be remembered: their marker goes.
    pub(super) untracked: std::collections::BTreeSet<usize>,
}

/// The tokens one `gets` collected: memcached's cas tokens are per server.
pub(super) struct Tokens {
    /// The server whose token the caller got (the acting primary then).
    pub(super) issuer: usize,
    /// (copy's server, its token), for copies that held the same value.
    pub(super) copies: Vec<(usize, u64)>,
}

pub(super) struct ServerState {
    pub(super) in_sync: AtomicBool,
    /// Last seen answering without its marker (restarted empty, or new to the pool): a
    /// refill would copy to it. False while it does not answer.
    pub(super) answered_empty: AtomicBool,
    /// The server's interruption count when its marker was last read; `u64::MAX` never.
    pub(super) checked_at: AtomicU64,
    pub(super) last_check: Mutex<Option<Instant>>,
    pub(super) resting_until: Mutex<Option<Instant>>,
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
                    answered_empty: AtomicBool::new(false),
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

    /// The tree's special keys, when replication is on.
    pub(super) fn keys(&self) -> Option<ReplicaKeys> {
        lock(&self.keys).clone()
    }

    /// The marker key, when replication is on.
    pub fn marker(&self) -> Option<Vec<u8>> {
        lock(&self.keys).as_ref().map(|k| k.marker.clone())
    }

    /// Whether `key` is a key of presence (see [`ReplicaKeys::presence`]).
    pub(super) fn is_presence(&self, key: &[u8]) -> bool {
        lock(&self.keys)
            .as_ref()
            .is_some_and(|k| !k.presence.is_empty() && key.starts_with(&k.presence))
    }

    /// Servers left alone now because they failed a moment ago (down, stalled, cut off).
    pub fn resting_servers(&self) -> usize {
        (0..self.servers.len()).filter(|&s| self.resting(s)).count()
    }

    /// Whether server `index` was last seen holding its copy of every key.
    pub fn in_sync(&self, index: usize) -> bool {
        self.servers[index].in_sync.load(Ordering::SeqCst)
    }

    pub(crate) fn note_in_sync(&self, index: usize) {
        self.servers[index].in_sync.store(true, Ordering::SeqCst);
        self.servers[index]
            .answered_empty
            .store(false, Ordering::SeqCst);
    }

    /// Servers last seen answering without their marker (back empty, or new to the pool),
    /// not resting: what a refill copies to, as last seen (no round trip; see
    /// [`servers_to_refill`]).
    pub fn answering_empty(&self) -> Vec<usize> {
        if self.copies() <= 1 {
            return Vec::new();
        }
        (0..self.servers.len())
            .filter(|&s| {
                let st = &self.servers[s];
                !st.in_sync.load(Ordering::SeqCst)
                    && st.answered_empty.load(Ordering::SeqCst)
                    && !self.resting(s)
            })
            .collect()
    }

    pub fn note_unreachable(&self, index: usize) {
        if self.copies() > 1 {
            let rest = lock(&self.pauses).0;
            *lock(&self.servers[index].resting_until) = Some(Instant::now() + rest);
            // What it holds when it answers again is unknown until its marker is read.
            self.servers[index].in_sync.store(false, Ordering::SeqCst);
            self.servers[index]
                .answered_empty
                .store(false, Ordering::SeqCst);
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
    pub(super) fn acting_primary(&self, holders: &[usize], key: &[u8]) -> usize {
        let missed = lock(&self.missed);
        // (The usual case, nothing missed, costs no copy of the key.)
        let stale =
            |s: usize| !missed.keys.is_empty() && missed.keys.contains_key(&(s, key.to_vec()));
        let usable = |s: &usize| self.in_sync(*s) && !self.resting(*s);
        holders
            .iter()
            .copied()
            .find(|s| usable(s) && !stale(*s))
            .or_else(|| holders.iter().copied().find(usable))
            .or_else(|| holders.iter().copied().find(|&s| !self.resting(s)))
            .unwrap_or(holders[0])
    }

    /// A write of `key` did not reach server `index`. (Not for keys that expire: setting
    /// them right later would make a copy that never expires; they expire by themselves.)
    pub(super) fn note_missed(&self, index: usize, key: &[u8]) {
        if lock(&self.keys)
            .as_ref()
            .is_some_and(|k| k.expiring.iter().any(|e| e == key))
        {
            return;
        }
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

    pub(super) fn remember_tokens(&self, key: &[u8], cas: u64, tokens: Tokens) {
        let mut all = lock(&self.tokens);
        if all.len() >= TOKENS_KEPT {
            all.clear();
        }
        all.insert((key.to_vec(), cas), tokens);
    }

    pub(super) fn take_tokens(&self, key: &[u8], cas: u64) -> Option<Tokens> {
        lock(&self.tokens).remove(&(key.to_vec(), cas))
    }

    /// Server `index` answered without its marker: it restarted empty since it was last
    /// read.
    pub(super) fn note_out_of_sync(&self, index: usize, addr: &str) {
        self.servers[index].in_sync.store(false, Ordering::SeqCst);
        // Said once: when it was in sync, or did not answer, before.
        if !self.servers[index]
            .answered_empty
            .swap(true, Ordering::SeqCst)
        {
            tracing::warn!(
                server = addr,
                "this server lost its copies (restarted empty?): reads go to the other copies until a mount's refill or `memfis check --repair` refills it"
            );
        }
    }
}

/// Reads the marker of every server whose connections broke since it was last read, and of
/// servers out of sync once a second: one round trip, only when one is due.
pub(super) fn refresh_sync<P: Servers + ?Sized>(pool: &P, repl: &Replication) {
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
    read_markers(pool, repl, &due);
}

/// The servers that answer without their marker (back empty, or new to the pool),
/// each server's marker read now: a mount whose own keys live on other servers would not
/// hear of one back empty otherwise.
pub fn servers_to_refill<P: Servers + ?Sized>(pool: &P, repl: &Replication) -> Vec<usize> {
    if repl.copies() <= 1 {
        return Vec::new();
    }
    let all: Vec<usize> = (0..repl.servers.len())
        .filter(|&s| !repl.resting(s))
        .collect();
    read_markers(pool, repl, &all);
    repl.answering_empty()
}

/// Reads the marker of each server of `due` in one round trip and notes what it says.
fn read_markers<P: Servers + ?Sized>(pool: &P, repl: &Replication, due: &[usize]) {
    let Some(marker) = repl.marker() else { return };
    let now = Instant::now();
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
                let was_empty = st.answered_empty.swap(v.is_none(), Ordering::SeqCst);
                let was = st.in_sync.swap(v.is_some(), Ordering::SeqCst);
                let first = st.checked_at.swap(seen, Ordering::SeqCst) == u64::MAX;
                if first {
                    // What a client finds at its start is no news.
                } else if v.is_none() && !was_empty {
                    // (Once: in sync before, or unreachable in between.)
                    tracing::warn!(
                        server = pool.addr(s),
                        "this server lost its copies (restarted empty?): reads go to the other copies until a mount's refill or `memfis check --repair` refills it"
                    );
                } else if !was && v.is_some() {
                    tracing::info!(server = pool.addr(s), "server in sync again");
                }
            }
            _ => {
                st.in_sync.store(false, Ordering::SeqCst);
                st.answered_empty.store(false, Ordering::SeqCst);
            }
        }
    }
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
