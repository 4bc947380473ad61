//! One batch over replicated keys: each command to its acting primary (reads) or to every copy
//! (writes and `gets`), the replies settled into one result per command, fix-ups for copies
//! that answered otherwise.

use super::*;

/// What one command of the caller's batch became.
pub(super) enum Plan {
    /// Answered by the acting primary only (`get`, `mg`); `at` is its index in the sends.
    Read {
        at: usize,
        primary: usize,
        holders: Vec<usize>,
    },
    /// Sent to every copy (`gets` and every write); `sent` lists (server, index in the
    /// round's sends) in holder order; `unsent` copies a `cas` had no token for.
    Fanned {
        primary: usize,
        holders: Vec<usize>,
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
                    holders,
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
                    holders,
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
                    holders,
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
            Plan::Read {
                at,
                primary,
                holders,
            } => {
                out.push(Some(replies[at].take().unwrap_or_else(no_reply)));
                let another_in_sync = || holders.iter().any(|&s| s != primary && repl.in_sync(s));
                if !confirmed[primary] && another_in_sync() {
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
                holders: holders_now,
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
                            only_fill: false,
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
pub(super) fn presence_result(got: Vec<CmdResult>) -> CmdResult {
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
pub(super) fn execute_once_more<P: Servers + ?Sized>(
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

/// A copy's command with another cas token.
pub(super) fn with_cas(cmd: &Command, token: u64) -> Command {
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

pub(super) fn exptime_of(cmd: &Command) -> u32 {
    match cmd {
        Command::Store { exptime, .. } | Command::Cas { exptime, .. } => *exptime,
        Command::Touch { exptime, .. } => *exptime,
        _ => 0,
    }
}

/// The caller's result of a command sent to every copy, and the copies to set to the
/// primary's value. A write is acknowledged only when every copy has it.
pub(super) fn settle(
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

pub(super) fn same_item(a: &Item, b: &Item) -> bool {
    a.value == b.value && a.flags == b.flags
}

/// Whether a copy's reply leaves it as the primary's left the primary.
pub(super) fn agrees(primary: &Reply, copy: &Reply) -> bool {
    match (primary, copy) {
        // Both end absent.
        (Reply::Deleted | Reply::NotFound, Reply::Deleted | Reply::NotFound) => true,
        (Reply::Number(a), Reply::Number(b)) => a == b,
        (a, b) => a == b,
    }
}
