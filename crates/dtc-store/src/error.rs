//! The store's error type.
//!
//! Inside openraft's traits every [`StoreError`] becomes an
//! `openraft::StorageError` (through the `StorageIOError` helpers, which name
//! what was being read or written); openraft treats that as fatal and stops
//! the node rather than run on damaged state. Through [`crate::StateReader`]
//! the coordinator sees the typed error itself.

use std::path::PathBuf;

/// Anything that can go wrong in the store. Corrupt or undecodable rows are
/// reported here (with the table and key), never by a panic.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed: I/O, a corrupt file, a lock held by another process.
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),

    /// A value could not be encoded (it should not happen for our own types).
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },

    /// A stored row does not decode: the file holds bytes this version does not understand.
    #[error("corrupt {what} at {table}[{key}]: {source}")]
    Decode {
        table: &'static str,
        what: &'static str,
        key: String,
        #[source]
        source: postcard::Error,
    },

    /// The rows decode but contradict each other (an index names a missing
    /// record, a snapshot's meta disagrees with its data).
    #[error("inconsistent store: {0}")]
    Inconsistent(String),

    /// The file was written by an incompatible version of dtc-store.
    #[error("{path} has storage format {found}, this build reads format {expected}")]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    /// File-system work outside redb (creating the data directory).
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The blocking task that ran a redb job panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}

// redb has one error type per operation; they all fold into `redb::Error`.
dtc_util::from_redb!(StoreError, StoreError::Redb);
