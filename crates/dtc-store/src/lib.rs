//! # dtc-store: the durable half of a dtc node
//!
//! This crate stores everything a dtc coordinator must not forget: the Raft
//! log that replicates decisions, and the state machine those decisions build
//! (the record of every transaction, the pending index a new leader resumes
//! from, and the participant registry). It implements openraft's storage-v2
//! traits on two [redb] files and offers a read-only [`StateReader`] for the
//! coordinator's queries.
//!
//! ## How data flows
//! ```text
//!  Raft::client_write(Command)   (leader; followers get AppendEntries)
//!        │
//!        ▼ append(entries): one durable commit per batch, then LogFlushed
//!  ┌────────────────────────────────────────┐
//!  │ LogStore           <dir>/raft-log.redb │ ◄── truncate (conflicts)
//!  │   logs : index -> postcard(Entry)      │ ◄── purge (after a snapshot)
//!  │   meta : vote, committed, last_purged  │
//!  └────────────────────────────────────────┘
//!        │ committed entries
//!        ▼ apply(batch): one commit per batch (synced only every 200 ms /
//!        │   512 entries): dtc_core::apply() per entry (a Command::Batch
//!        │   entry applies its commands in order), last_applied +
//!        │   membership in the same commit
//!  ┌────────────────────────────────────────┐
//!  │ StateMachineStore     <dir>/state.redb │
//!  │   txns         : id -> TxnRecord       │
//!  │   pending      : id -> ()              │
//!  │   completed    : (ms, id) -> ()        │
//!  │   participants : name -> endpoint      │
//!  │   meta         : applied, membership   │
//!  │   snapshot     : current snapshot's    │
//!  │                  meta and file name    │
//!  └────────────────────────────────────────┘
//!        │ build: one read transaction streamed row by row to a file
//!        ▼ install: a received file streamed back into the tables
//!  <dir>/snapshots/<name>.snap   (SnapshotFile, openraft's SnapshotData)
//!        │ redb read transactions (never block the writer)
//!        ▼
//!  StateReader: get_txn, list_txns, pending, participants, last_applied
//! ```
//!
//! ## Durability
//! - [`LogStore`]: `save_vote` and `append` commit with `Durability::Immediate`
//!   (fsync) before they return, and `append` calls the `LogFlushed` callback
//!   only after that commit. `purge` writes the new `last_purged_log_id` and
//!   deletes the entries in one transaction, so a crash can never leave a hole
//!   or lose the purge point. `save_committed` is a hint (see below) and does
//!   not fsync on its own.
//! - [`StateMachineStore`]: each `apply` batch is one transaction that also
//!   records `last_applied`, committed with `Durability::None` except every
//!   200 ms or 512 entries. An entry is applied only after it is committed,
//!   i.e. synced in a majority of logs, so after a crash the state machine
//!   sits at some earlier batch and openraft re-applies the committed entries
//!   after it from the log. The *durable mark*
//!   ([`StateReader::durable_applied`]) says how far the synced state goes;
//!   the log is never purged past it ([`LogStore::purge_covered_by`] forces a
//!   sync when needed), and snapshot builds and installs are synced.
//! - Snapshot files are synced and renamed into place before the synced
//!   commit that names one as current; files no commit names are removed at
//!   open. A snapshot is never held in memory whole, whatever the history.
//! - A redb commit is checksummed; a commit torn by a crash is rolled back
//!   when the file is next opened.
//!
//! ## Threading
//! Every redb write commit (an fsync) runs on `tokio::task::spawn_blocking`,
//! never on a tokio worker. Reads are short redb read transactions served
//! from redb's cache and run inline. Log and state machine live in separate
//! files because one redb database admits a single writer at a time: applying
//! a batch must not wait for a log append, or the reverse.
//!
//! ## Disk space
//! A redb file never shrinks (except at its tail), but pages freed by deleted
//! rows are reused by later commits. The log is purged after each snapshot and
//! completed transactions are dropped by `Command::Expire`, so both files stay
//! bounded by their peak live size rather than growing with history.
//!
//! [redb]: https://docs.rs/redb

mod durable;
mod error;
pub mod files;
mod log_store;
mod reader;
pub mod runtime;
mod snapshot_file;
mod state_machine;
mod tables;
#[cfg(feature = "test-support")]
pub mod test_support;

use std::path::Path;

pub use error::StoreError;
pub use log_store::LogStore;
pub use reader::StateReader;
pub use snapshot_file::SnapshotFile;
pub use state_machine::StateMachineStore;

openraft::declare_raft_types!(
    /// The openraft type configuration of a dtc cluster.
    pub TypeConfig:
        D = dtc_core::Command,
        R = dtc_core::CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = crate::runtime::DtcRuntime,
);

/// A node's id in the cluster.
pub type NodeId = u64;
/// A Raft log id (term, leader node, index).
pub type LogId = openraft::LogId<NodeId>;
/// A log entry of this cluster.
pub type Entry = openraft::Entry<TypeConfig>;
/// The membership the state machine last applied, with the log id it came from.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// openraft's storage error for this cluster.
pub type StorageError = openraft::StorageError<NodeId>;

/// File name of the Raft log inside a node's data directory.
pub const LOG_FILE: &str = "raft-log.redb";
/// File name of the state machine inside a node's data directory.
pub const STATE_FILE: &str = "state.redb";
/// Directory of the snapshot files inside a node's data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Opens (creating if missing) `<dir>/raft-log.redb` and `<dir>/state.redb`.
///
/// This blocks (it may fsync while creating tables); call it at start-up
/// before the Raft node runs, or from `spawn_blocking`. The files are locked
/// for this process: a second `open` of the same directory fails until every
/// clone of the returned stores (and their readers) is dropped.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // Side by side: after a crash redb walks each file before it opens, and
    // that walk grows with the history the files hold.
    let (log, sm) = std::thread::scope(|s| {
        let log = s.spawn(|| LogStore::open(&dir.join(LOG_FILE)));
        let sm = StateMachineStore::open(&dir.join(STATE_FILE));
        let log = log
            .join()
            .unwrap_or_else(|_| Err(StoreError::Task("opening the log store panicked".into())));
        (log, sm)
    });
    Ok((log?, sm?))
}

// The coordinator shares these across tasks and threads.
const _: () = {
    const fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<LogStore>();
    shareable::<StateMachineStore>();
    shareable::<StateReader>();
};

/// Runs a blocking redb job off the tokio workers and waits for it.
///
/// If the awaiting future is dropped the job still runs to completion: a
/// commit is never abandoned half-way, it either lands or it does not.
async fn run_blocking<T, F>(job: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match dtc_util::blocking::spawn(job).await {
        Ok(result) => result,
        Err(join) => Err(StoreError::Task(join.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtc_core::{Command, Outcome};
    use openraft::{CommittedLeaderId, EntryPayload, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    #[test]
    fn entry_with_a_command_round_trips_through_postcard() {
        let entries = vec![
            Entry {
                log_id: log_id(3, 1, 42),
                payload: EntryPayload::Normal(Command::Begin {
                    txn_id: "order-1".parse().unwrap(),
                    participants: vec!["stock".into(), "payment".into()],
                    digest: [9; 32],
                    timeout_ms: 5_000,
                    at_ms: 1_700_000_000_000,
                }),
            },
            Entry {
                log_id: log_id(3, 1, 43),
                payload: EntryPayload::Normal(Command::Decide {
                    txn_id: "order-1".parse().unwrap(),
                    outcome: Outcome::abort("stock said no"),
                    phase2: vec!["payment".into()],
                    at_ms: 1_700_000_000_100,
                }),
            },
            Entry {
                log_id: log_id(4, 2, 44),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(4, 2, 45),
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([1, 2, 3])],
                    BTreeMap::from([(
                        1,
                        openraft::BasicNode {
                            addr: "127.0.0.1:7001".into(),
                        },
                    )]),
                )),
            },
        ];
        for entry in entries {
            let bytes = postcard::to_allocvec(&entry).unwrap();
            let back: Entry = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back.log_id, entry.log_id);
            assert_eq!(back.payload, entry.payload);
        }
    }

    #[test]
    fn truncated_entry_bytes_are_an_error_not_a_panic() {
        let entry = Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Normal(Command::Register {
                name: "a".into(),
                endpoint: "http://a".into(),
            }),
        };
        let bytes = postcard::to_allocvec(&entry).unwrap();
        assert!(postcard::from_bytes::<Entry>(&bytes[..bytes.len() - 3]).is_err());
    }
}
