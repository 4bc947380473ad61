//! Comparing every copy of a list of keys with its primary, and refilling those that differ
//! (`memfis check`, `memfis check --repair`).

use std::ops::ControlFlow;

use super::*;

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
    /// The caller's pace stopped the run before every key was compared.
    pub stopped: bool,
}

/// Keys resync leaves alone: they expire by themselves (liveness keys, empty lock lists,
/// the refill lease: stored with a TTL a copy cannot learn) or belong to one server (the
/// marker). `value` is what any copy holds.
pub(super) fn skipped_by_resync(key: &[u8], value: Option<&[u8]>, keys: &ReplicaKeys) -> bool {
    let text = String::from_utf8_lossy(key);
    key == keys.marker
        || keys.expiring.iter().any(|k| k == key)
        || text.contains("%alive.")
        || (text.contains("%L") && value == Some(b"[]"))
}

/// Of keys that none of their servers holds while none of those is in sync, those another
/// server of the pool holds (one round trip): servers added two at a time (or a second before
/// the first was refilled) can leave a key only on servers no longer its own. Each is a
/// failure, so no server is marked in sync without it; copying it from there could bring back
/// a key deleted since, left behind where keys moved away from.
fn held_elsewhere_only<P: Servers + ?Sized>(
    pool: &P,
    repl: &Replication,
    nowhere: Vec<(&Vec<u8>, usize, Vec<usize>)>,
) -> Vec<(Vec<u8>, StoreError)> {
    let mut reads = Vec::new();
    let mut asked = Vec::new();
    for (key, primary, copies) in nowhere {
        for s in (0..pool.count()).filter(|s| *s != primary && !copies.contains(s)) {
            if !repl.resting(s) {
                reads.push((s, Command::Get(key.clone())));
                asked.push((key, s));
            }
        }
    }
    let mut failed: Vec<(Vec<u8>, StoreError)> = Vec::new();
    for ((key, s), r) in asked.into_iter().zip(send(pool, repl, reads)) {
        if matches!(r, Ok(Reply::Value(Some(_)))) && !failed.iter().any(|(k, _)| k == key) {
            failed.push((
                key.clone(),
                StoreError::Server(format!(
                    "held only by {}, not one of its servers on this list (were servers added \
                     two at a time?): add them one at a time, each refilled before the next",
                    pool.addr(s)
                )),
            ));
        }
    }
    failed
}

/// Keys compared per round trip, and between two calls of the caller's pace.
pub const RESYNC_GROUP: usize = 128;

/// Compares each key's copies with its acting primary's, [`RESYNC_GROUP`] keys a round trip;
/// with `repair` sets those that differ to it (as a fix-up does: `cas`/`add`/`delete` on what
/// the copy held, so a mount's write at the same moment is not overwritten), and once every
/// copy agrees marks every reachable server in sync. `pace` hears the report so far after
/// each group (a background refill sleeps there to keep its rate) and may stop the run: no
/// server is marked in sync then.
pub fn resync<P: Servers + ?Sized>(
    pool: &P,
    repl: &Replication,
    keys: &[Vec<u8>],
    repair: bool,
    pace: &mut dyn FnMut(&ResyncReport) -> ControlFlow<()>,
) -> ResyncReport {
    let mut report = ResyncReport::default();
    if repl.copies() <= 1 {
        return report;
    }
    refresh_sync(pool, repl);
    let special = repl.keys().unwrap_or_default();
    let marker = special.marker.clone();
    // A server that restarts during the resync may have lost what was copied to it: only
    // servers whose connections held all along are marked in sync at the end.
    let started: Vec<u64> = (0..pool.count()).map(|s| pool.interruptions(s)).collect();
    for chunk in keys.chunks(RESYNC_GROUP) {
        if pace(&report).is_break() {
            report.stopped = true;
            break;
        }
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
        let mut nowhere = Vec::new();
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
            let mut dsts: Vec<_> = copies
                .iter()
                .map(|_| {
                    got.next()
                        .unwrap_or_else(no_reply)
                        .and_then(Reply::into_value)
                })
                .collect();
            let mut src = match src {
                Ok(v) => v,
                Err(e) => {
                    report.failed.push((key.clone(), e));
                    continue;
                }
            };
            let (mut primary, mut copies) = (primary, copies);
            // No copy of the key in sync (every server of the key came back empty, one after
            // another): no copy's value is better than another's.
            let only_fill = !confirmed[primary];
            if !confirmed[primary]
                && src.is_none()
                && let Some(at) = dsts.iter().position(|d| matches!(d, Ok(Some(_))))
            {
                // The primary's miss proves nothing, and a copy that holds the key holds a
                // write made since a return: it is the source, added where missing.
                let held = std::mem::replace(&mut dsts[at], Ok(None));
                src = held.ok().flatten();
                std::mem::swap(&mut primary, &mut copies[at]);
            }
            let held = src.as_ref().map(|i| i.value.as_slice()).or_else(|| {
                dsts.iter()
                    .find_map(|d| d.as_ref().ok().and_then(|v| v.as_ref()))
                    .map(|i| i.value.as_slice())
            });
            if skipped_by_resync(key, held, &special) {
                continue;
            }
            if only_fill && held.is_none() {
                // No server of the key holds it, none in sync: it may be elsewhere only.
                nowhere.push((key, primary, copies));
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
                tracing::debug!(
                    key = %String::from_utf8_lossy(key),
                    primary = pool.addr(primary),
                    differing = ?differing.iter().map(|&s| pool.addr(s)).collect::<Vec<_>>(),
                    "copies differ"
                );
                report.under_replicated += 1;
                report.copied += differing.len();
                fixes.push(FixUp {
                    key: key.clone(),
                    primary,
                    copies: differing,
                    exptime: 0,
                    only_fill,
                });
            }
        }
        report
            .failed
            .extend(held_elsewhere_only(pool, repl, nowhere));
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
    } else if report.failed.is_empty() && !report.stopped {
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
