//! Errors of the participant SDK.

/// What can go wrong when opening, starting or reading a participant.
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    /// The builder was given something unusable (a bad name, no endpoint to
    /// advertise, ...). The message says which setting.
    #[error("invalid participant configuration: {0}")]
    Config(String),

    /// The redb file could not be read or written.
    #[error("participant storage: {0}")]
    Storage(#[from] redb::Error),

    /// A record in the participant log does not decode: the file was written
    /// by an incompatible version, or is damaged.
    #[error("participant log record {key:?} does not decode: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: postcard::Error,
    },

    /// The file holds a participant log of another format version.
    #[error("participant log format {found} is not supported (this build reads {expected})")]
    Format { found: u32, expected: u32 },

    /// The application's [`crate::Resource::init`] failed at start.
    #[error("the resource's init failed: {0}")]
    Init(#[source] crate::ResourceError),

    /// The application's [`crate::Resource::recover`] failed at start.
    #[error("the resource failed to recover its prepared transactions: {0}")]
    Recover(#[from] crate::ResourceError),

    /// Creating the data directory, or binding/inspecting the listener.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A write or sync of the participant's file failed while serving; the
    /// participant refused every call from then on (see
    /// [`crate::RunningParticipant::storage_failed`]).
    #[error("participant storage failed: {0}; restart the participant")]
    Failed(String),

    /// No coordinator accepted the registration in time (see
    /// [`crate::ParticipantBuilder::require_registration`] and
    /// [`crate::RunningParticipant::wait_registered`]).
    #[error("not registered with the coordinators within {within:?}: {last_error}")]
    NotRegistered {
        within: std::time::Duration,
        /// The last attempt's error: each coordinator tried and its answer.
        last_error: String,
    },

    /// A [`crate::RunningParticipant::write`] failed and wrote nothing.
    #[error("write outside two-phase commit failed: {0}")]
    Write(String),

    /// A [`crate::RunningParticipant::read`] failed.
    #[error("read failed: {0}")]
    Read(String),

    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),

    /// A blocking storage task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}

// redb has one error type per operation; they all fold into `redb::Error`.
dtc_util::from_redb!(ParticipantError, ParticipantError::Storage);
