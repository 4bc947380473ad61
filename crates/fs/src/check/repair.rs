//! `memfis check --repair`: fixes what the check finds, logging every change.
//!
//! Repair runs as a mount of its own (a [`MemFs`]): opening it completes operations that gone
//! mounts left in the namespace lock, and every fix is made holding that lock, with the same
//! records and the same idempotent log appends a mount uses, so mounts may work meanwhile.
//! Each pass checks the store (under the lock), fixes every problem found, and the next pass
//! checks again; a fix can bring another to light (a name restored whose data key is missing).
//!
//! What each problem becomes:
//! - a name whose entry, log and record disagree: the entry wins when it points at a live
//!   record, else a logged inode whose record lists the name, else the name goes; the entry,
//!   the log (by appending records) and the records' names are then made to agree;
//! - a directory log that cannot be read (chunk or sequence missing or malformed): missing
//!   chunks are re-added empty, a malformed one emptied, the sequence set past the last chunk
//!   left, then every name the log or the entry keys know is settled as above;
//! - a file's data key holding another size than its record: the record takes the size of
//!   the bytes stored (what nginx serves); a missing data key is copied from another name of
//!   the file, made empty for an empty file, and otherwise the file is removed (its bytes are
//!   lost; the log line says so, to copy it in again);
//! - a missing directory record, mtime key or counter is made again; the inode counter is
//!   raised above every inode;
//! - keys no name reaches (left by crashes) are deleted; an entry key its directory does not
//!   list is settled as a name (it may be a name whose log record was lost).

use std::collections::BTreeSet;

use memfis_memcache::{Store, StoreOp};
use tracing::{info, warn};

use crate::check::{CheckOptions, Fault, Problem, Report, check_as, check_with};
use crate::layout::dirlog::{self, LogBase, Op};
use crate::layout::keys::{KeyLayout, ROOT_INO, unescape};
use crate::layout::names::join;
use crate::layout::record::{Inode, Kind, Link, Time};
use crate::namespace::Namespace;
use crate::store::batch::StoreAt;
use crate::store::replies::parse_number;
use crate::{FsError, FsResult};

/// Passes of check-then-fix before giving up on what is left.
const PASSES: usize = 4;
/// Log chunks probed past the last one found when a directory's sequence is lost.
const CHUNK_PROBE: u64 = 8;

/// One change repair made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repaired {
    pub path: String,
    pub key: String,
    pub action: String,
}

/// What repair did, and the check that followed it.
#[derive(Debug, serde::Serialize)]
pub struct RepairReport {
    pub repaired: Vec<Repaired>,
    pub after: Report,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Repairs the store `names` works on, with the checks `options` asks for (`--verify`):
/// [`crate::MemFs::repair_with`].
pub(crate) fn repair<S: Store>(
    names: &Namespace<S>,
    options: CheckOptions,
) -> FsResult<RepairReport> {
    let mut repaired = Vec::new();
    for pass in 1..=PASSES {
        let report = names.with_ns_lock(crate::store::batch::Batch::new(), |guard, _| {
            // Operations of gone mounts completed when this mount opened the store, or
            // when it took the lock: each is a change repair made.
            note_rolled_forward(names, &mut repaired);
            let owner = guard.owner.as_str();
            let report = check_as(
                names.tree.store.inner(),
                &names.tree.keys,
                Some(owner),
                options,
            )?;
            let mut fixer = Fixer {
                names,
                done: &mut repaired,
                others_alive: None,
            };
            // Directories first (settling a name reads its directory's record and log),
            // then names, then entry keys no listing has (names whose log record was
            // lost); other keys no name reaches last, and only once nothing else needed
            // fixing in this pass: a fix can make the tree reach them again.
            let mut problems = report.problems.clone();
            problems.sort_by_key(|p| repair_order(&names.tree.keys, &p.fault));
            let mut seen = BTreeSet::new();
            let fixed_before = fixer.done.len();
            let mut garbage_phase = false;
            for p in &problems {
                if !garbage_phase && repair_order(&names.tree.keys, &p.fault) == GARBAGE {
                    if fixer.done.len() > fixed_before {
                        break; // the next pass checks again first
                    }
                    garbage_phase = true;
                }
                if !seen.insert(p.fault.clone()) {
                    continue; // one fault, several symptoms
                }
                if let Err(e) = fixer.fix(p) {
                    warn!(path = %p.path, key = %p.key, error = %e, "could not repair");
                }
            }
            Ok(report)
        })?;
        let fixable = report
            .problems
            .iter()
            .filter(|p| p.fault != Fault::Manual)
            .count();
        info!(
            pass,
            problems = report.problems.len(),
            fixable,
            "repair pass"
        );
        if fixable == 0 {
            break;
        }
    }
    // Logs that grew long with names long gone are written again with the live names.
    for (dir, path, dropped) in names.compact_all()? {
        let r = Repaired {
            path: if path.is_empty() {
                "/".into()
            } else {
                text(&path)
            },
            key: text(&names.tree.keys.dir_base(dir)),
            action: format!("compacted the directory log: {dropped} records dropped"),
        };
        info!(path = %r.path, "repaired: {}", r.action);
        repaired.push(r);
    }
    note_rolled_forward(names, &mut repaired);
    let after = check_with(names.tree.store.inner(), &names.tree.keys, options)?;
    Ok(RepairReport { repaired, after })
}

/// Each operation of a gone mount this mount completed since the last call, as a change.
fn note_rolled_forward<S: Store>(names: &Namespace<S>, repaired: &mut Vec<Repaired>) {
    let done = names.take_rolled_forward();
    for (owner, intent) in done {
        let r = Repaired {
            path: "/".into(),
            key: text(&names.tree.keys.ns_lock()),
            action: format!("completed the unfinished operation of gone mount {owner}: {intent}"),
        };
        info!(path = %r.path, key = %r.key, "repaired: {}", r.action);
        repaired.push(r);
    }
}

/// The place of garbage (keys no name reaches that are not entries) in the repair order.
const GARBAGE: u8 = 4;

fn repair_order(keys: &KeyLayout, fault: &Fault) -> u8 {
    match fault {
        Fault::DirRecord { .. } => 0,
        Fault::DirLog { .. } => 1,
        Fault::Unreached { key } => {
            let rest = key.strip_prefix(keys.prefix().as_bytes()).unwrap_or(key);
            match rest {
                [b'%', b'e' | b'h', ..] => 3,
                _ => GARBAGE,
            }
        }
        _ => 2,
    }
}

struct Fixer<'a, S: Store> {
    names: &'a Namespace<S>,
    done: &'a mut Vec<Repaired>,
    /// Whether a mount other than this one is alive (read once per pass, when a chunk of a
    /// live file is to be freed).
    others_alive: Option<bool>,
}

impl<S: Store> Fixer<'_, S> {
    fn note(&mut self, path: &[u8], key: &[u8], action: impl Into<String>) {
        let r = Repaired {
            path: if path.is_empty() {
                "/".into()
            } else {
                text(path)
            },
            key: text(key),
            action: action.into(),
        };
        info!(path = %r.path, key = %r.key, "repaired: {}", r.action);
        self.done.push(r);
    }

    fn fix(&mut self, p: &Problem) -> FsResult<()> {
        match &p.fault {
            Fault::Manual | Fault::UnfinishedOp => Ok(()),
            Fault::Name { dir, name } => self.settle_name(*dir, name),
            Fault::DirRecord { dir, parent, name } => self.dir_record(*dir, *parent, name),
            Fault::DirMtime { dir } => {
                let key = self.names.tree.keys.dir_mtime(*dir);
                self.add(&key, Time::now().to_text().as_bytes())?;
                let path = self.names.dir_path(*dir).unwrap_or_default();
                self.note(&path, &key, "made the missing directory mtime key (now)");
                Ok(())
            }
            Fault::DirLog { dir } => self.rebuild_log(*dir),
            Fault::Data { dir, name, ino } => self.data(*dir, name, *ino),
            Fault::InodeCounter { max_ino } => self.inode_counter(*max_ino),
            Fault::DirGeneration => {
                let key = self.names.tree.keys.dir_generation();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(1);
                self.add(&key, now.to_string().as_bytes())?;
                self.note(
                    b"",
                    &key,
                    format!("made the directory-rename counter ({now})"),
                );
                Ok(())
            }
            Fault::Unreached { key } => self.unreached(key),
        }
    }

    fn add(&self, key: &[u8], value: &[u8]) -> FsResult<bool> {
        self.names.tree.store.store_at(StoreOp::Add, key, value)
    }

    fn delete(&self, key: &[u8]) -> FsResult<bool> {
        self.names.tree.store.delete_at(key)
    }

    fn get(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        Ok(self.names.tree.store.get_at(key)?.map(|i| i.value))
    }

    /// A data key's bytes; a value flagged gzip that does not decompress counts as none (its
    /// bytes are lost; it is overwritten or, with its name, goes).
    fn bytes(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        match self.names.tree.store.get(key) {
            Ok(item) => Ok(item.map(|i| i.value)),
            Err(e) if crate::layout::data_codec::is_undecodable(&e) => Ok(None),
            Err(e) => Err(FsError::store(key, e)),
        }
    }

    /// Makes entry, log and records agree on what `name` in `dir` is.
    fn settle_name(&mut self, dir: u64, name: &[u8]) -> FsResult<()> {
        let fs = self.names;
        let path = join(&fs.dir_path(dir)?, name);
        let link = Link::new(dir, name);
        let ekey = fs.tree.keys.entry(dir, name);
        // A hashed key holding another name's entry: this name cannot be there (its entry
        // is the other name's, left alone), so it goes from the log and the records.
        let mut collides = false;
        let entry = match fs.read_entry(dir, name) {
            Ok(slot) => {
                collides = slot.taken_by.is_some();
                slot.ino
            }
            Err(FsError::Corrupt { .. }) => {
                self.delete(&ekey)?;
                self.note(&path, &ekey, "deleted a malformed entry");
                None
            }
            Err(e) => return Err(e),
        };
        let listed = fs.list_dir(dir)?.get(name).copied();
        let truth = self.name_truth(&link, &path, entry, collides, listed)?;
        self.set_entry_and_log(&link, &path, entry, listed, truth)?;
        // Inodes that claim the name without having it let go of it.
        let truth_ino = truth.map(|(i, _)| i);
        for other in [entry, listed.map(|(i, _)| i)].into_iter().flatten() {
            if Some(other) == truth_ino {
                continue;
            }
            if let Some(rec) = fs.read_inode_opt(other)?.map(|(rec, _)| rec)
                && rec.links.contains(&link)
            {
                fs.drop_link(other, &link, 0)?;
                let what = "dropped the name from an inode record";
                self.note(&path, &fs.tree.keys.inode(other), what);
            }
        }
        if !matches!(truth, Some((_, Kind::File))) {
            let key = fs.tree.keys.data(&path);
            if key.len() <= memfis_memcache::MAX_KEY_LEN && self.get(&key)?.is_some() {
                self.delete(&key)?;
                self.note(&path, &key, "deleted a data key no file has");
            }
        }
        Ok(())
    }

    /// Which inode, if any, a name is: its entry's inode when that record has the name
    /// (or can take it: not a directory with a name elsewhere), else the listed inode when
    /// its record has the name and no other name's entry holds the key.
    fn name_truth(
        &mut self,
        link: &Link,
        path: &[u8],
        entry: Option<u64>,
        collides: bool,
        listed: Option<(u64, Kind)>,
    ) -> FsResult<Option<(u64, Kind)>> {
        let fs = self.names;
        let record = |ino: u64| fs.read_inode_opt(ino).map(|r| r.map(|(rec, _)| rec));
        if let Some(e) = entry
            && let Some(rec) = record(e)?
        {
            if rec.links.contains(link) {
                return Ok(Some((e, rec.kind)));
            }
            if rec.kind != Kind::Dir || rec.links.is_empty() {
                fs.update_record(e, |r| {
                    if !r.links.contains(link) {
                        r.links.push(link.clone());
                    }
                    Ok(())
                })?;
                let what = "added the name to its inode record";
                self.note(path, &fs.tree.keys.inode(e), what);
                return Ok(Some((e, rec.kind)));
            }
        }
        if !collides
            && let Some((x, _)) = listed
            && let Some(rec) = record(x)?
            && rec.links.contains(link)
        {
            return Ok(Some((x, rec.kind)));
        }
        Ok(None)
    }

    /// Points a name's entry key and its directory's log at `truth`.
    fn set_entry_and_log(
        &mut self,
        link: &Link,
        path: &[u8],
        entry: Option<u64>,
        listed: Option<(u64, Kind)>,
        truth: Option<(u64, Kind)>,
    ) -> FsResult<()> {
        let fs = self.names;
        let (dir, name) = (link.parent, &link.name[..]);
        let truth_ino = truth.map(|(i, _)| i);
        if entry != truth_ino {
            fs.entry_swap(dir, name, entry, truth_ino)?;
            let what = match truth_ino {
                Some(i) => format!("entry set to inode {i} (was {entry:?})"),
                None => format!("entry removed (it named inode {entry:?}, which lacks this name)"),
            };
            self.note(path, &fs.tree.keys.entry(dir, name), what);
        }
        if listed != truth {
            let mut changes = Vec::new();
            if let Some((x, kind)) = listed {
                changes.push((Op::Remove, kind, x, name));
            }
            if let Some((t, kind)) = truth {
                changes.push((Op::Add, kind, t, name));
            }
            fs.log_dir_changes(dir, &changes)?;
            let what = match truth {
                Some((t, kind)) => format!("directory log now lists inode {t} ({kind:?})"),
                None => "directory log no longer lists the name".to_string(),
            };
            self.note(path, &fs.tree.keys.dir_seq(dir), what);
        }
        Ok(())
    }

    fn dir_record(&mut self, dir: u64, parent: u64, name: &[u8]) -> FsResult<()> {
        let key = self.names.tree.keys.inode(dir);
        let links = if dir == ROOT_INO {
            Vec::new()
        } else {
            vec![Link::new(parent, name)]
        };
        let rec = Inode::new(Kind::Dir, 0o755, 0, 0, links);
        let fresh = self.add(&key, &rec.encode())?;
        if !fresh {
            // There but unreadable: replaced.
            self.names
                .tree
                .store
                .store_at(StoreOp::Set, &key, &rec.encode())?;
        }
        let path = self.names.dir_path(dir).unwrap_or_default();
        self.note(
            &path,
            &key,
            "made a new directory record (mode 0755, owner root)",
        );
        Ok(())
    }

    /// Makes a directory's log readable again, then settles every name it or the entry keys
    /// know.
    fn rebuild_log(&mut self, dir: u64) -> FsResult<()> {
        let fs = self.names;
        let path = fs.dir_path(dir)?;
        let seq_key = fs.tree.keys.dir_seq(dir);
        let base_key = fs.tree.keys.dir_base(dir);
        let base = LogBase::decode(&base_key, self.get(&base_key)?.as_deref());
        let seq = match self.get(&seq_key)?.as_deref().map(parse_number) {
            Some(Some(n)) => n,
            // Missing or fenced (an rmdir whose intent was lost; the name is still there).
            _ => {
                let last = self.last_chunk(dir, base.as_ref().map_or(0, |b| b.chunk))?;
                let per_chunk = fs.tree.keys.log_chunk_records();
                let seq = last * per_chunk + per_chunk - 1;
                fs.tree
                    .store
                    .store_at(StoreOp::Set, &seq_key, seq.to_string().as_bytes())?;
                self.note(&path, &seq_key, format!("set the log sequence to {seq}"));
                seq
            }
        };
        let base = match base {
            Ok(base) => base,
            Err(_) => {
                // Replays start at the sequence's chunk; the names before it are found from
                // their entry keys below.
                let base = LogBase {
                    chunk: seq / fs.tree.keys.log_chunk_records(),
                    snapshot: None,
                };
                fs.tree
                    .store
                    .store_at(StoreOp::Set, &base_key, base.encode().as_bytes())?;
                self.note(&path, &base_key, "replaced a malformed log base");
                base
            }
        };
        let mut names = BTreeSet::new();
        for key in fs
            .tree
            .keys
            .dir_log_keys(dir, base, seq + fs.tree.keys.log_chunk_records())
        {
            match self.get(&key)? {
                None => {
                    self.add(&key, b"")?;
                    self.note(&path, &key, "re-added a missing log piece (empty)");
                }
                Some(chunk) => {
                    let mut state = dirlog::Replay::default();
                    match dirlog::replay(&key, &chunk, &mut state) {
                        Ok(()) => names.extend(state.listing().into_keys()),
                        Err(_) => {
                            fs.tree.store.store_at(StoreOp::Set, &key, b"")?;
                            self.note(&path, &key, "emptied a malformed log piece");
                        }
                    }
                }
            }
        }
        match self.entry_names(dir)? {
            Some(found) => names.extend(found),
            None => warn!(
                path = %text(&path),
                "the store cannot list its keys: names missing from the log cannot be found"
            ),
        }
        for name in names {
            self.settle_name(dir, &name)?;
        }
        Ok(())
    }

    /// The highest log chunk of `dir` still stored from `base` (`base` when none is).
    fn last_chunk(&self, dir: u64, base: u64) -> FsResult<u64> {
        let (mut last, mut c, mut misses) = (base, base, 0);
        while misses < CHUNK_PROBE {
            if self.get(&self.names.tree.keys.dir_log(dir, c))?.is_some() {
                last = c;
                misses = 0;
            } else {
                misses += 1;
            }
            c += 1;
        }
        Ok(last)
    }

    /// The names of `dir` that have an entry key, found by listing the store's keys; `None`
    /// when the store cannot list them.
    fn entry_names(&self, dir: u64) -> FsResult<Option<Vec<Vec<u8>>>> {
        let Some(listed) = self.names.tree.store.list_keys() else {
            return Ok(None);
        };
        let all = listed.map_err(|e| FsError::store(b"(key listing)", e))?;
        let plain = self.names.tree.keys.entry(dir, b"");
        let hashed_start = format!("{}%h{dir}/", self.names.tree.keys.prefix()).into_bytes();
        let mut names = Vec::new();
        for key in all {
            if let Some(rest) = key.strip_prefix(plain.as_slice()) {
                names.push(unescape(rest));
            } else if key.starts_with(&hashed_start)
                && let Some(name) = self.hashed_entry_name(dir, &key)?
            {
                names.push(name);
            }
        }
        Ok(Some(names))
    }

    /// The name behind a hashed entry key, which its value carries (`<ino>/<name>`); `None`
    /// when the value holds no name or one that does not hash to this key (no name reaches it).
    fn hashed_entry_name(&self, dir: u64, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        let Some(value) = self.get(key)? else {
            return Ok(None);
        };
        let Some(slash) = value.iter().position(|&b| b == b'/') else {
            return Ok(None);
        };
        let name = value[slash + 1..].to_vec();
        Ok((self.names.tree.keys.entry(dir, &name) == key).then_some(name))
    }

    fn data(&mut self, dir: u64, name: &[u8], ino: u64) -> FsResult<()> {
        let fs = self.names;
        let path = join(&fs.dir_path(dir)?, name);
        let Some((rec, _)) = fs.read_inode_opt(ino)? else {
            return Ok(()); // the name's own problem
        };
        let key = fs.tree.keys.file_bytes(ino, rec.mode, &path);
        // Where each name keeps the bytes (names sharing the private key once).
        let mut names: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for p in rec.links.iter().filter_map(|l| fs.link_path(l).ok()) {
            let k = fs.tree.keys.file_bytes(ino, rec.mode, &p);
            if !names.iter().any(|(known, _)| *known == k) {
                names.push((k, p));
            }
        }
        if self.bytes(&key)?.is_some() {
            return self.align_names(ino, &rec, &path, &names);
        }
        for other in rec.links.iter().filter(|l| **l != Link::new(dir, name)) {
            let Ok(other_path) = fs.link_path(other) else {
                continue;
            };
            let other_key = fs.tree.keys.file_bytes(ino, rec.mode, &other_path);
            if let Some(bytes) = self.bytes(&other_key)?
                && bytes.len() as u64 == rec.size
            {
                fs.tree.store.store_at(StoreOp::Set, &key, &bytes)?;
                let what = format!("data key copied from {}", text(&other_path));
                self.note(&path, &key, what);
                return Ok(());
            }
        }
        if rec.size == 0 {
            // (set: an undecodable value may be there)
            fs.tree.store.store_at(StoreOp::Set, &key, b"")?;
            self.note(&path, &key, "made the missing data key of an empty file");
            return Ok(());
        }
        self.remove_lost_file(dir, name, &path, ino, &rec, &key)
    }

    /// A file whose data key holds bytes: another name holding what the record says wins;
    /// else the first name's bytes (in the record's order) become the file's, at every name,
    /// with their size.
    fn align_names(
        &mut self,
        ino: u64,
        rec: &Inode,
        path: &[u8],
        names: &[(Vec<u8>, Vec<u8>)],
    ) -> FsResult<()> {
        let fs = self.names;
        let mut canonical = None;
        for (k, p) in names {
            if let Some(bytes) = self.bytes(k)? {
                if bytes.len() as u64 == rec.size {
                    canonical = Some((bytes, p.clone()));
                    break;
                }
                canonical.get_or_insert((bytes, p.clone()));
            }
        }
        let Some((bytes, from)) = canonical else {
            return Ok(());
        };
        let size = bytes.len() as u64;
        for (k, p) in names {
            if self.bytes(k)?.as_deref() != Some(bytes.as_slice()) {
                fs.tree.store.store_at(StoreOp::Set, k, &bytes)?;
                self.note(
                    p,
                    k,
                    format!("data key set to the bytes at {}", text(&from)),
                );
            }
        }
        if size != rec.size {
            fs.update_record(ino, |r| {
                r.size = size;
                Ok(())
            })?;
            let what = format!(
                "record size {} set to the {size} bytes stored (what nginx serves)",
                rec.size
            );
            self.note(path, &fs.tree.keys.inode(ino), what);
        }
        Ok(())
    }

    /// A file whose bytes are gone at every name: the name goes, so nginx falls back
    /// instead of serving nothing.
    fn remove_lost_file(
        &mut self,
        dir: u64,
        name: &[u8],
        path: &[u8],
        ino: u64,
        rec: &Inode,
        key: &[u8],
    ) -> FsResult<()> {
        let fs = self.names;
        let link = Link::new(dir, name);
        fs.entry_swap(dir, name, Some(ino), None)?;
        fs.log_dir_changes(dir, &[(Op::Remove, Kind::File, ino, name)])?;
        fs.drop_link(ino, &link, 0)?;
        // A value that does not decode may still be there: nginx would serve it. (A private
        // key other names share stays theirs.)
        let shared = *key == fs.tree.keys.private_data(ino) && rec.links.len() > 1;
        if !shared && self.delete(key)? {
            self.note(
                path,
                key,
                "deleted the data key (its value does not decode)",
            );
        }
        warn!(path = %text(path), "removed a file whose bytes were lost; copy it in again");
        self.note(
            path,
            key,
            format!(
                "removed the file: its {} bytes were lost (data key missing); copy it in again",
                rec.size
            ),
        );
        Ok(())
    }

    fn inode_counter(&mut self, max_ino: u64) -> FsResult<()> {
        let key = self.names.tree.keys.next_ino();
        let margin = 1024;
        match self.get(&key)?.as_deref().and_then(parse_number) {
            Some(n) if n >= max_ino => return Ok(()),
            Some(n) => {
                self.names.tree.store.incr_at(&key, max_ino - n + margin)?;
            }
            None => {
                self.names.tree.store.store_at(
                    StoreOp::Set,
                    &key,
                    (max_ino + margin).to_string().as_bytes(),
                )?;
            }
        }
        let what = format!("inode counter raised above inode {max_ino}");
        self.note(b"", &key, what);
        Ok(())
    }

    /// A key no name reaches: an entry key is settled as a name, anything else deleted.
    fn unreached(&mut self, key: &[u8]) -> FsResult<()> {
        let prefix = self.names.tree.keys.prefix().as_bytes();
        let Some(rest) = key.strip_prefix(prefix) else {
            return Ok(());
        };
        let kind = rest.get(1).copied();
        if rest.first() == Some(&b'%') && matches!(kind, Some(b'e' | b'h')) {
            let (dir, name) = self.entry_of(rest)?;
            if let (Some(dir), Some(name)) = (dir, name)
                && self.names.read_inode_opt(dir)?.is_some()
                && self.names.dir_seq_value(dir)?.is_some()
            {
                return self.settle_name(dir, &name);
            }
        }
        if rest.starts_with(b"%k") && self.chunk_may_be_written(rest)? {
            return Ok(()); // a mount came up since the check: its write may need it
        }
        let path = if rest.first() == Some(&b'/') {
            unescape(rest)
        } else {
            Vec::new()
        };
        if self.delete(key)? {
            self.note(&path, key, "deleted a key no name reaches");
        }
        Ok(())
    }

    /// Whether the chunk `rest` (`%k<ino>.<gen>.<n>`) may belong to a write in progress: its
    /// file still has a record and a mount other than this one is alive.
    fn chunk_may_be_written(&mut self, rest: &[u8]) -> FsResult<bool> {
        let ino = rest[2..]
            .split(|&b| b == b'.')
            .next()
            .and_then(parse_number);
        let Some(ino) = ino else { return Ok(false) };
        if self.names.read_inode_opt(ino)?.is_none() {
            return Ok(false);
        }
        if let Some(alive) = self.others_alive {
            return Ok(alive);
        }
        let Some(listed) = self.names.tree.store.list_keys() else {
            return Ok(true);
        };
        let all = listed.map_err(|e| FsError::store(b"(key listing)", e))?;
        let alive_prefix = self.names.tree.keys.alive("");
        let mut alive = false;
        for key in all {
            if let Some(id) = key.strip_prefix(alive_prefix.as_slice())
                && id != self.names.tree.mount_id.as_bytes()
                && self.get(&key)?.is_some()
            {
                alive = true;
                break;
            }
        }
        self.others_alive = Some(alive);
        Ok(alive)
    }

    /// The directory and name of an entry key (`%e<dir>/<escaped name>` or `%h<dir>/<hash>`).
    fn entry_of(&self, rest: &[u8]) -> FsResult<(Option<u64>, Option<Vec<u8>>)> {
        let body = &rest[2..];
        let Some(slash) = body.iter().position(|&b| b == b'/') else {
            return Ok((None, None));
        };
        let Some(dir) = parse_number(&body[..slash]) else {
            return Ok((None, None));
        };
        if rest[1] == b'e' {
            return Ok((Some(dir), Some(unescape(&body[slash + 1..]))));
        }
        let mut key = self.names.tree.keys.prefix().as_bytes().to_vec();
        key.extend_from_slice(rest);
        Ok((Some(dir), self.hashed_entry_name(dir, &key)?))
    }
}
