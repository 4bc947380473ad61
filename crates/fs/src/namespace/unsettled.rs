//! Creates this mount could not finish on a store error: the heartbeat finishes them.
//!
//! A create writes its keys before it knows whether its directory survives an rmdir that
//! raced it (the fence, `Namespace::settle_create_fence`). When the fence cannot be settled, or
//! a create that must be taken back cannot be, the keys stay in the store with nothing
//! that names them in a live directory. No intent records a create (it takes no lock on its
//! fast path), so this mount keeps what it must finish until the store answers again.

use memfis_memcache::{Command, Store};

use crate::FsResult;
use crate::layout::dirlog::Op;
use crate::layout::record::Kind;
use crate::namespace::Namespace;
use crate::namespace::claim::CreateUndo;
use crate::namespace::nodes::{CreateFence, Settled, Undo};

/// A create left unfinished.
pub(crate) enum Unsettled {
    /// The fence of creates in `parent` (their records appended in log chunk `chunk`) was
    /// not settled: if the directory was removed meanwhile, each node is taken back with its
    /// undo (prepared for that case) and own keys.
    Settle {
        parent: u64,
        chunk: u64,
        nodes: Vec<CreateUndo>,
    },
    /// A create to take back whose undo failed.
    Undo { undo: Undo, own_keys: Vec<Command> },
}

impl<S: Store> Namespace<S> {
    /// Finishes the creates left unfinished (part of the heartbeat). Those that fail again
    /// stay for the next heartbeat (the first error is returned), unless the store is
    /// damaged there: then they are left for `memfis check --repair`, with a log line.
    pub(crate) fn settle_unsettled(&self) -> FsResult<()> {
        let mut first_error = Ok(());
        for u in self.maintenance.take_unsettled() {
            let done = match u {
                Unsettled::Settle {
                    parent,
                    chunk,
                    nodes,
                } => self.settle_again(parent, chunk, nodes),
                Unsettled::Undo { undo, own_keys } => {
                    self.undo_create_now(&undo, &own_keys).map_err(|e| {
                        let again = Unsettled::Undo { undo, own_keys };
                        Box::new((e, again))
                    })
                }
            };
            if let Err(failed) = done {
                let (e, again) = *failed;
                if e.is_damage() {
                    tracing::error!(
                        "a create left unfinished cannot be finished ({e}): left for \
                         `memfis check --repair`"
                    );
                    continue;
                }
                self.maintenance.leave_unsettled(again);
                if first_error.is_ok() {
                    first_error = Err(e);
                }
            }
        }
        first_error
    }

    /// Settles the fence of creates in `parent` again: the nodes are taken back if the
    /// directory went, and a file's empty data key follows a directory rename otherwise.
    fn settle_again(
        &self,
        parent: u64,
        chunk: u64,
        nodes: Vec<CreateUndo>,
    ) -> Result<(), Box<(crate::FsError, Unsettled)>> {
        let relog: Vec<_> = nodes
            .iter()
            .map(|(undo, _)| (Op::Add, undo.kind, undo.ino, undo.name.as_slice()))
            .collect();
        let settled =
            self.settle_create_fence(CreateFence::unknown(), parent, chunk, false, &relog);
        drop(relog);
        match settled {
            Ok(Settled::Done) => {
                for (undo, own_keys) in &nodes {
                    // A served file's empty data key (a private file has none yet).
                    let Some(key) = own_keys.first().filter(|_| undo.kind == Kind::File) else {
                        continue;
                    };
                    if self
                        .place_created_key_locked(parent, undo.ino, &undo.name, key.key())
                        .is_err()
                    {
                        // Deleted by the heartbeat once no name reaches it.
                        self.maintenance.leave_stale_keys([key.key().to_vec()]);
                    }
                }
                Ok(())
            }
            Ok(Settled::DirRemoved) => {
                // (An undo that fails queues itself.)
                for (undo, own_keys) in nodes {
                    self.undo_create(undo, own_keys);
                }
                Ok(())
            }
            Err(e) => Err(Box::new((
                e,
                Unsettled::Settle {
                    parent,
                    chunk,
                    nodes,
                },
            ))),
        }
    }
}
