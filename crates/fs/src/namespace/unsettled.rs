//! Creates this mount could not finish on a store error: the heartbeat finishes them.
//!
//! A create writes its keys before it knows whether its directory survives an rmdir that
//! raced it (the fence, `MemFs::settle_create_fence`). When the fence cannot be settled, or
//! a create that must be taken back cannot be, the keys stay in the store with nothing
//! that names them in a live directory. No intent records a create (it takes no lock on its
//! fast path), so this mount keeps what it must finish until the store answers again.

use memfis_memcache::{Command, Store};

use crate::FsResult;
use crate::fs::MemFs;
use crate::namespace::nodes::{CreateFence, Settled, Undo};
use crate::sync::lock;

/// A create left unfinished.
pub(crate) enum Unsettled {
    /// The fence of creates in `parent` (their records appended in log chunk `chunk`) was
    /// not settled: if the directory was removed meanwhile, each node is taken back with its
    /// undo (prepared for that case) and own keys.
    Settle {
        parent: u64,
        chunk: u64,
        nodes: Vec<(Undo, Vec<Command>)>,
    },
    /// A create to take back whose undo failed.
    Undo { undo: Undo, own_keys: Vec<Command> },
}

/// This mount's unfinished creates.
#[derive(Default)]
pub(crate) struct UnsettledCreates(std::sync::Mutex<Vec<Unsettled>>);

impl UnsettledCreates {
    pub(crate) fn push(&self, u: Unsettled) {
        lock(&self.0).push(u);
    }

    fn take(&self) -> Vec<Unsettled> {
        std::mem::take(&mut *lock(&self.0))
    }
}

impl<S: Store> MemFs<S> {
    /// Finishes the creates left unfinished (part of the heartbeat). Those that fail again
    /// stay for the next heartbeat, and the first error is returned.
    pub(crate) fn settle_unsettled(&self) -> FsResult<()> {
        let mut first_error = Ok(());
        for u in self.unsettled.take() {
            let done = match &u {
                Unsettled::Settle {
                    parent,
                    chunk,
                    nodes,
                } => {
                    let relog: Vec<_> = nodes
                        .iter()
                        .map(|(undo, _)| {
                            (
                                crate::layout::dirlog::Op::Add,
                                undo.kind,
                                undo.ino,
                                undo.name.as_slice(),
                            )
                        })
                        .collect();
                    self.settle_create_fence(CreateFence::unknown(), *parent, *chunk, false, &relog)
                }
                Unsettled::Undo { .. } => Ok(Settled::DirRemoved),
            };
            match (done, u) {
                (Ok(Settled::Done), _) => {}
                // (An undo that fails again queues itself.)
                (Ok(Settled::DirRemoved), Unsettled::Settle { nodes, .. }) => {
                    for (undo, own_keys) in nodes {
                        self.undo_create(undo, own_keys);
                    }
                }
                (Ok(Settled::DirRemoved), Unsettled::Undo { undo, own_keys }) => {
                    self.undo_create(undo, own_keys)
                }
                (Err(e), u) => {
                    self.unsettled.push(u);
                    if first_error.is_ok() {
                        first_error = Err(e);
                    }
                }
            }
        }
        first_error?;
        // An undo that failed above queued itself again.
        match lock(&self.unsettled.0).is_empty() {
            true => Ok(()),
            false => Err(crate::FsError::Contended),
        }
    }
}
