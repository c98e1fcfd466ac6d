//! The leader's proposer: packs every command queued while earlier log
//! entries are being written into one entry ([`Command::Batch`]).
//!
//! openraft 0.9 turns each `client_write` into its own log entry and waits
//! for the leader's fsync of one append before it starts the next (and
//! before it replicates it). Proposing command by command therefore costs one
//! serialized fsync plus a follower round trip per command. Here every
//! caller's command goes into one queue; a single task takes whatever is
//! queued when a write slot is free and submits it as one entry, so the
//! number of entries (and fsyncs, and Raft core iterations) grows with the
//! write rate divided by the batch size, not with the number of commands.
//!
//! Nothing waits on a timer to fill a batch: a batch is whatever arrived
//! while the previous ones were in flight, so a lone command at low load
//! goes out at once. At most [`WRITES_IN_FLIGHT`] entries are in flight, so
//! the leader's next fsync overlaps the replication of the previous entry
//! while the Raft core never holds more than a few queued appends (each one
//! delays heartbeats by an fsync; a thousand single-command appends once
//! delayed them past a follower's election timeout).
//!
//! Apply returns one result per command ([`CommandResult::Batch`]); each
//! caller gets its own. A batch is one log entry, so it is committed, applied
//! and (in `dtc-store`) made durable whole or not at all.

use dtc_core::{Command, CommandResult};
use dtc_store::{NodeId, TypeConfig};
use openraft::error::{ClientWriteError, Fatal};
use openraft::{BasicNode, Raft};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::error;

/// Log entries submitted to Raft and not yet applied, at most.
pub const WRITES_IN_FLIGHT: usize = 4;

/// Most estimated bytes of commands in one entry: a quarter of what one
/// AppendEntries message carries (`dtc-store`'s 256 KiB), so replication
/// never has to send one entry alone in an oversized message, and one entry's
/// apply stays short.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Most commands in one entry (bounds the apply transaction and the time the
/// state-machine worker spends on one entry).
pub const MAX_BATCH_COMMANDS: usize = 2048;

/// Why a proposal has no result: in every case this node cannot decide now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// Raft refused the write: this node is not the leader (openraft's
    /// forward-to-leader error, with the leader it knows of), or a
    /// membership change is in the way.
    #[error(transparent)]
    Refused(#[from] ClientWriteError<NodeId, BasicNode>),
    /// Raft has stopped for good (a storage error, or shutdown).
    #[error(transparent)]
    Fatal(#[from] Fatal<NodeId>),
    /// Raft dropped the write without an answer (shutting down).
    #[error("Raft dropped the write (shutting down)")]
    Dropped,
    /// The proposer task is gone (the node is stopping).
    #[error("the proposer has stopped")]
    Stopped,
    /// Apply returned a result that does not fit the batch (a bug).
    #[error("a batch of {count} commands applied as {result}")]
    WrongResults { count: usize, result: String },
}

type Reply = oneshot::Sender<Result<CommandResult, ProposeError>>;

/// Handle to the proposer task. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<(Command, Reply)>,
}

impl Proposer {
    /// Starts the proposer task for `raft`. It runs until every handle is
    /// dropped; on a follower each batch fails with the forward-to-leader
    /// error, which callers treat as "not leader".
    pub fn spawn(raft: Raft<TypeConfig>) -> Proposer {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Proposer { queue }
    }

    /// Proposes one command and returns what applying it produced. Any error
    /// means this node cannot decide now (not leader, or Raft stopped).
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ProposeError> {
        self.submit(cmd).await
    }

    /// Queues `cmd` now and returns the future of its result: commands
    /// queued by one task are submitted to Raft in the order queued, so a
    /// later command of that task lands after this one in the log.
    pub fn submit(
        &self,
        cmd: Command,
    ) -> impl std::future::Future<Output = Result<CommandResult, ProposeError>> + Send + 'static
    {
        let (tx, rx) = oneshot::channel();
        let queued = self.queue.send((cmd, tx)).is_ok();
        async move {
            if !queued {
                return Err(ProposeError::Stopped);
            }
            rx.await.unwrap_or(Err(ProposeError::Dropped))
        }
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::UnboundedReceiver<(Command, Reply)>) {
    let slots = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot before draining: whatever arrives meanwhile joins
        // this batch instead of becoming entries of its own.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.0.size_hint();
        let mut batch = vec![first];
        while bytes < MAX_BATCH_BYTES && batch.len() < MAX_BATCH_COMMANDS {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.0.size_hint();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (cmds, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
        let count = cmds.len();
        let entry = if count == 1 {
            let mut cmds = cmds;
            cmds.swap_remove(0)
        } else {
            Command::Batch(cmds)
        };
        // Submitted here, in queue order; only the wait for the result is
        // moved to its own task.
        let submitted = raft.client_write_ff(entry).await;
        tokio::spawn(async move {
            let _slot = slot;
            let result = match submitted {
                Err(fatal) => Err(ProposeError::Fatal(fatal)),
                Ok(rx) => match rx.await {
                    Err(_) => Err(ProposeError::Dropped),
                    Ok(Err(e)) => Err(ProposeError::Refused(e)),
                    Ok(Ok(resp)) => Ok(resp.data),
                },
            };
            deliver(result, replies, count);
        });
    }
}

/// Hands each caller its own result (or the batch's error).
fn deliver(result: Result<CommandResult, ProposeError>, replies: Vec<Reply>, count: usize) {
    match result {
        Ok(CommandResult::Batch(results)) if count > 1 && results.len() == count => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        Ok(single) if count == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Ok(single));
            }
        }
        Ok(other) => {
            // Cannot happen: apply returns one result per command.
            let why = ProposeError::WrongResults {
                count,
                result: format!("{other:?}"),
            };
            error!(%why, "proposer: apply returned the wrong number of results");
            for reply in replies {
                let _ = reply.send(Err(why.clone()));
            }
        }
        Err(why) => {
            for reply in replies {
                let _ = reply.send(Err(why.clone()));
            }
        }
    }
}
