//! Typed batches. Pushing a command onto a [`Batch`] returns a [`Handle`] typed by the reply
//! that command gets (a get's item, whether an `add` stored, what a `cas` did ...); once the
//! batch ran, each reply is taken by its handle from the [`Replies`], in any order, so a
//! reader never repeats the conditions under which its writer pushed. [`read`] is the one
//! place a store error becomes an [`FsError`] naming the command's key.
//!
//! A batch runs through the store's `execute` as it always did: one call, or, when it has a
//! [`Batch::fence`] and the store does not run a batch in order (a pool), two calls: the
//! commands before the fence, then the rest once every reply of the first is in.

use std::marker::PhantomData;

use memfis_memcache::command::Value;
use memfis_memcache::{CmdResult, Command, Item, Reply, Store, StoreOp};

use crate::store::replies::{EntrySlot, decode_entry};
use crate::{FsError, FsResult};

/// What a command's reply means to its caller.
pub(crate) trait Expect {
    type Out;
    /// The reply as this command's answer; `Err` gives back a reply it never gets.
    fn decode(reply: Reply) -> Result<Self::Out, Reply>;
    /// Whether `cmd` gets this kind of reply (checked in debug builds).
    fn fits(cmd: &Command) -> bool;
}

/// A `get` or `gets`: the item, `None` when there is no such key.
pub(crate) enum Got {}
/// A storage command (`add`, `set`, `append` ..., or a `cas` where only whether it stored
/// matters): `true` stored, `false` refused.
pub(crate) enum Stored {}
/// A `cas`: what it did.
pub(crate) enum Cas {}
/// An `incr` or `decr`: the new value, `None` when there is no such key.
pub(crate) enum Counted {}
/// A `delete`: `true` deleted, `false` there was no such key.
pub(crate) enum Deleted {}
/// A `touch`: `true` touched, `false` there was no such key.
pub(crate) enum Touched {}

impl Expect for Got {
    type Out = Option<Item>;
    fn decode(reply: Reply) -> Result<Option<Item>, Reply> {
        match reply {
            Reply::Value(v) => Ok(v),
            other => Err(other),
        }
    }
    fn fits(cmd: &Command) -> bool {
        matches!(cmd, Command::Get(_) | Command::Gets(_))
    }
}

impl Expect for Stored {
    type Out = bool;
    fn decode(reply: Reply) -> Result<bool, Reply> {
        Ok(reply == Reply::Stored)
    }
    fn fits(cmd: &Command) -> bool {
        matches!(cmd, Command::Store { .. } | Command::Cas { .. })
    }
}

impl Expect for Cas {
    type Out = CasOutcome;
    fn decode(reply: Reply) -> Result<CasOutcome, Reply> {
        match reply {
            Reply::Stored => Ok(CasOutcome::Stored),
            Reply::Exists => Ok(CasOutcome::Changed),
            Reply::NotFound => Ok(CasOutcome::Gone),
            other => Err(other),
        }
    }
    fn fits(cmd: &Command) -> bool {
        matches!(cmd, Command::Cas { .. })
    }
}

impl Expect for Counted {
    type Out = Option<u64>;
    fn decode(reply: Reply) -> Result<Option<u64>, Reply> {
        match reply {
            Reply::Number(n) => Ok(Some(n)),
            Reply::NotFound => Ok(None),
            other => Err(other),
        }
    }
    fn fits(cmd: &Command) -> bool {
        matches!(cmd, Command::Incr { .. } | Command::Decr { .. })
    }
}

impl Expect for Deleted {
    type Out = bool;
    fn decode(reply: Reply) -> Result<bool, Reply> {
        Ok(reply == Reply::Deleted)
    }
    fn fits(cmd: &Command) -> bool {
        matches!(cmd, Command::Delete(_))
    }
}

impl Expect for Touched {
    type Out = bool;
    fn decode(reply: Reply) -> Result<bool, Reply> {
        Ok(reply == Reply::Touched)
    }
    fn fits(cmd: &Command) -> bool {
        matches!(cmd, Command::Touch { .. })
    }
}

/// What a `cas` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CasOutcome {
    Stored,
    /// Another writer changed the item since it was read: read again and retry.
    Changed,
    /// The item is gone.
    Gone,
}

/// The one conversion of a command's result at `key` into what the caller expects: a store
/// error becomes the [`FsError`] its errno comes from, naming the key; a reply the command
/// never gets is a malformed answer at that key.
pub(crate) fn read<K: Expect>(key: &[u8], r: CmdResult) -> FsResult<K::Out> {
    match r {
        Ok(reply) => K::decode(reply)
            .map_err(|other| FsError::corrupt(key, format!("unexpected reply {other:?}"))),
        Err(e) => Err(FsError::store(key, e)),
    }
}

/// Single commands answered as in a batch: the reply typed, a store error naming the key
/// (through [`read`]). One `execute` of one command each, as `Store::run`.
pub(crate) trait StoreAt: Store {
    fn get_at(&self, key: &[u8]) -> FsResult<Option<Item>> {
        read::<Got>(key, self.run(Command::Get(key.to_vec())))
    }

    fn gets_at(&self, key: &[u8]) -> FsResult<Option<Item>> {
        read::<Got>(key, self.run(Command::Gets(key.to_vec())))
    }

    fn store_at(&self, op: StoreOp, key: &[u8], value: &[u8]) -> FsResult<bool> {
        read::<Stored>(key, self.run(Command::store(op, key, value)))
    }

    /// Runs `batch`, every command of which must succeed (whatever it answers): the first
    /// that failed is the error, naming its key.
    fn execute_all(&self, batch: Vec<Command>) -> FsResult<()> {
        let keys: Vec<Vec<u8>> = batch.iter().map(|c| c.key().to_vec()).collect();
        for (key, r) in keys.iter().zip(self.execute(batch)) {
            r.map_err(|e| FsError::store(key, e))?;
        }
        Ok(())
    }

    fn delete_at(&self, key: &[u8]) -> FsResult<bool> {
        read::<Deleted>(key, self.run(Command::Delete(key.to_vec())))
    }

    fn incr_at(&self, key: &[u8], delta: u64) -> FsResult<Option<u64>> {
        let incr = Command::Incr {
            key: key.to_vec(),
            delta,
        };
        read::<Counted>(key, self.run(incr))
    }

    /// A `cas`, or a `run` of any command built elsewhere, read as `K` at `key`.
    fn run_at<K: Expect>(&self, key: &[u8], cmd: Command) -> FsResult<K::Out> {
        debug_assert!(K::fits(&cmd) && cmd.key() == key);
        read::<K>(key, self.run(cmd))
    }
}

impl<S: Store + ?Sized> StoreAt for S {}

/// The place of one command's reply in its batch, typed by what the reply means. Taken by
/// value when read, so no reply is read twice.
#[must_use = "a command's reply is read by its handle"]
pub(crate) struct Handle<K> {
    index: u32,
    /// The command's key in [`Batch::keys`].
    key: (u32, u32),
    kind: PhantomData<fn() -> K>,
}

impl<K> std::fmt::Debug for Handle<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handle({})", self.index)
    }
}

/// Commands to send in one round trip (two across a fence on a pool).
#[derive(Default)]
pub(crate) struct Batch {
    cmds: Vec<Command>,
    /// Every command's key, one after another (one buffer for the batch, not one per
    /// command): a failed command's error names its key.
    keys: Vec<u8>,
    /// Where the commands that must see every earlier one applied begin.
    fence: Option<usize>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Pushes a command built elsewhere, typed by the reply it gets.
    pub fn push<K: Expect>(&mut self, cmd: Command) -> Handle<K> {
        debug_assert!(K::fits(&cmd), "{cmd:?} does not get this kind of reply");
        let start = self.keys.len() as u32;
        self.keys.extend_from_slice(cmd.key());
        let handle = Handle {
            index: self.cmds.len() as u32,
            key: (start, self.keys.len() as u32),
            kind: PhantomData,
        };
        self.cmds.push(cmd);
        handle
    }

    pub fn get(&mut self, key: impl IntoKey) -> Handle<Got> {
        self.push(Command::Get(key.into_key()))
    }

    pub fn gets(&mut self, key: impl IntoKey) -> Handle<Got> {
        self.push(Command::Gets(key.into_key()))
    }

    pub fn store(&mut self, op: StoreOp, key: &[u8], value: &[u8]) -> Handle<Stored> {
        self.push(Command::store(op, key, value))
    }

    /// A storage command whose value is shared with the caller (no copy).
    pub fn store_shared(&mut self, op: StoreOp, key: &[u8], value: Value) -> Handle<Stored> {
        self.push(Command::store_shared(op, key, value))
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Handle<Stored> {
        self.store(StoreOp::Add, key, value)
    }

    pub fn cas(&mut self, key: &[u8], value: &[u8], cas: u64) -> Handle<Cas> {
        self.push(Command::cas(key, value, cas))
    }

    /// A `cas` whose value is shared with the caller (no copy), read as stored or not.
    pub fn cas_write(&mut self, key: &[u8], value: Value, cas: u64) -> Handle<Stored> {
        self.push(Command::cas_shared(key, value, cas))
    }

    pub fn incr(&mut self, key: impl IntoKey, delta: u64) -> Handle<Counted> {
        self.push(Command::Incr {
            key: key.into_key(),
            delta,
        })
    }

    pub fn decr(&mut self, key: impl IntoKey, delta: u64) -> Handle<Counted> {
        self.push(Command::Decr {
            key: key.into_key(),
            delta,
        })
    }

    pub fn delete(&mut self, key: impl IntoKey) -> Handle<Deleted> {
        self.push(Command::Delete(key.into_key()))
    }

    pub fn touch(&mut self, key: impl IntoKey, exptime: u32) -> Handle<Touched> {
        self.push(Command::Touch {
            key: key.into_key(),
            exptime,
        })
    }

    /// Commands pushed from here on must see every command pushed before applied (a fence
    /// read after writes, a lock released after changes): one pipelined batch where the
    /// store runs a batch in order (one server), two round trips on a pool. At most once.
    pub fn fence(&mut self) {
        debug_assert!(self.fence.is_none(), "one fence per batch");
        self.fence = Some(self.cmds.len());
    }

    /// The commands, for a caller that sends them inside a batch of its own (the namespace
    /// lock's `add` goes first); their replies go to [`Self::answered`].
    pub fn commands(&self) -> &[Command] {
        &self.cmds
    }

    /// The replies to [`Self::commands`], sent by the caller.
    pub fn answered(self, results: Vec<CmdResult>) -> Replies {
        debug_assert_eq!(results.len(), self.cmds.len());
        Replies {
            results,
            keys: self.keys,
        }
    }

    /// Sends the batch: one `execute`, or two across the fence where the store does not run
    /// a batch in order.
    pub fn execute(self, store: &impl Store) -> Replies {
        let Batch {
            mut cmds,
            keys,
            fence,
        } = self;
        let results = match fence {
            Some(at) if !store.in_order() => {
                let then = cmds.split_off(at);
                let mut results = store.execute(cmds);
                results.extend(store.execute(then));
                results
            }
            _ => store.execute(cmds),
        };
        Replies { results, keys }
    }
}

impl Batch {
    /// Sends the batch in pieces of at most `max` commands, one `execute` each, in order
    /// (large read-only sweeps such as `memfis check`'s). No fence.
    pub fn execute_in_pieces(self, store: &impl Store, max: usize) -> Replies {
        debug_assert!(self.fence.is_none(), "a fence in a batch sent in pieces");
        let Batch { mut cmds, keys, .. } = self;
        let mut results = Vec::with_capacity(cmds.len());
        while !cmds.is_empty() {
            let rest = cmds.split_off(max.min(cmds.len()));
            results.extend(store.execute(cmds));
            cmds = rest;
        }
        Replies { results, keys }
    }
}

/// The replies of a batch that ran, taken by their handles.
pub(crate) struct Replies {
    results: Vec<CmdResult>,
    keys: Vec<u8>,
}

impl Replies {
    /// The reply to the command of `handle`, as that command's answer (see [`read`]).
    pub fn take<K: Expect>(&mut self, handle: Handle<K>) -> FsResult<K::Out> {
        let r = self.take_result(&handle);
        read::<K>(self.key(&handle), r)
    }

    /// The reply to a get of a key that must exist: missing is EIO naming it.
    pub fn required(&mut self, handle: Handle<Got>) -> FsResult<Item> {
        let key = handle.key;
        self.take(handle)?
            .ok_or_else(|| FsError::missing(&self.keys[key.0 as usize..key.1 as usize]))
    }

    /// The reply to a `gets` of the entry key of `name` (see [`crate::store::replies::EntrySlot`]).
    pub fn entry(&mut self, handle: Handle<Got>, name: &[u8]) -> FsResult<EntrySlot> {
        let key = handle.key;
        let item = self.take(handle)?;
        decode_entry(&self.keys[key.0 as usize..key.1 as usize], name, item)
    }

    /// The key of the command of `handle`.
    pub fn key<K>(&self, handle: &Handle<K>) -> &[u8] {
        &self.keys[handle.key.0 as usize..handle.key.1 as usize]
    }

    fn take_result<K>(&mut self, handle: &Handle<K>) -> CmdResult {
        // A reply is taken once (handles are not `Clone`): what stays in its place is never read.
        let slot = self
            .results
            .get_mut(handle.index as usize)
            .expect("one reply per command of the batch");
        std::mem::replace(slot, Ok(Reply::Touched))
    }
}

/// A key to put in a command: owned keys move in, borrowed ones are copied.
pub(crate) trait IntoKey {
    fn into_key(self) -> Vec<u8>;
}

impl IntoKey for Vec<u8> {
    fn into_key(self) -> Vec<u8> {
        self
    }
}

impl IntoKey for &Vec<u8> {
    fn into_key(self) -> Vec<u8> {
        self.clone()
    }
}

impl IntoKey for &[u8] {
    fn into_key(self) -> Vec<u8> {
        self.to_vec()
    }
}

impl<const N: usize> IntoKey for &[u8; N] {
    fn into_key(self) -> Vec<u8> {
        self.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use memfis_memcache::memory::MemoryStore;

    use super::*;

    #[test]
    fn replies_are_read_by_handle_in_any_order() {
        let store = MemoryStore::new(1 << 20, 1 << 24);
        let mut b = Batch::new();
        let added = b.add(b"k", b"1");
        let again = b.add(b"k", b"2");
        let counted = b.incr(b"k", 2);
        let missing = b.incr(b"none", 1);
        b.fence();
        let got = b.get(b"k");
        let gone = b.delete(b"none");
        let mut r = b.execute(&store);
        assert_eq!(r.take(got).unwrap().unwrap().value, b"3");
        assert_eq!(r.take(missing).unwrap(), None);
        assert!(r.take(added).unwrap());
        assert!(!r.take(again).unwrap());
        assert_eq!(r.take(counted).unwrap(), Some(3));
        assert!(!r.take(gone).unwrap());
    }

    #[test]
    fn an_error_names_the_key_of_its_command() {
        let mut b = Batch::new();
        let first = b.get(b"first");
        let second = b.add(b"second", b"x");
        let mut r = Replies {
            results: vec![
                Ok(Reply::Value(None)),
                Err(memfis_memcache::StoreError::Server("boom".into())),
            ],
            keys: b.keys,
        };
        assert_eq!(r.key(&first), b"first");
        let e = r.take(second).unwrap_err();
        assert!(e.to_string().contains("second"), "{e}");
        assert_eq!(r.take(first).unwrap(), None);
    }
}
