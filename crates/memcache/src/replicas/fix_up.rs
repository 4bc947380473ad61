//! Setting a copy to its primary's value: after a batch whose copies answered otherwise, and
//! for keys a server missed once it answers again.

use super::*;

/// Tries of a fix-up when other writers keep changing the copy under it.
pub(super) const FIX_UP_TRIES: usize = 3;

/// Missed keys set right in one batch's stead (see [`repair_missed`]).
pub(super) const MISSED_PER_BATCH: usize = 64;

/// Copies of one key to set to the acting primary's value.
pub(super) struct FixUp {
    pub(super) key: Vec<u8>,
    pub(super) primary: usize,
    pub(super) copies: Vec<usize>,
    pub(super) exptime: u32,
    /// Only fill copies that lack the key, never delete or overwrite one: a resync's source
    /// when no copy of the key is in sync (its value is no better than theirs). A fix-up after
    /// a batch trusts the primary even then, as a new tree before its markers must.
    pub(super) only_fill: bool,
}

/// Sets each copy to what its primary holds now: `get` the primary (with its in-sync marker:
/// a primary that restarted empty is never copied from) and `gets` the copy, then `cas` (or
/// `add`, or `delete`) the copy, so a write racing the fix-up is not overwritten with an older
/// value; then looks again, since the primary may have changed after it was read (another
/// writer that found the copies equal meanwhile would have acknowledged); tried again while
/// other writers change either.
pub(super) fn fix_up<P: Servers + ?Sized>(
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
            // A primary without its marker in a tree that has markers (some server is in
            // sync): it came back empty, like this copy perhaps, and its value is no better
            // than the copy's. (A new tree before its markers trusts the key's own server.)
            let unproven = !confirmed[f.primary] && (0..pool.count()).any(|h| repl.in_sync(h));
            let cmd = match (src, dst) {
                (None, None) => continue,
                (Some(a), Some(b)) if same_item(&a, &b) => continue,
                // Deleting or overwriting could lose the only copy of a write.
                (_, Some(_)) if f.only_fill || unproven => {
                    results[i] = Err(StoreError::Server(format!(
                        "no copy of {} is in sync ({} and {} hold different values): not copied",
                        String::from_utf8_lossy(&f.key),
                        pool.addr(f.primary),
                        pool.addr(s)
                    )));
                    continue;
                }
                (None, Some(_)) => Command::Delete(f.key.clone()),
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

/// Sets right copies this client knows missed a write, on servers that answer again (some
/// each batch), before nginx or another mount reads them as the first copy; a server that
/// missed too many to remember loses its marker instead (every client then takes it for out
/// of sync until `memfis check --repair`).
pub(super) fn repair_missed<P: Servers + ?Sized>(pool: &P, repl: &Replication) {
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
            only_fill: false,
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
