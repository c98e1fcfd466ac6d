//! Errors of the client SDK.

use tonic::{Code, Status};

/// Why a client call did not produce an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The request is malformed (checked locally, or INVALID_ARGUMENT).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The cluster refuses it for good: the txn id was used with a different
    /// request, or a branch names an unregistered participant.
    #[error("refused: {0}")]
    FailedPrecondition(String),
    /// The transaction (or other object) is unknown.
    #[error("not found: {0}")]
    NotFound(String),
    /// The leader stayed overloaded until the deadline. Nothing was started.
    #[error("the coordinators are overloaded (retried until the deadline): {0}")]
    Overloaded(String),
    /// No answer before the deadline. For a transaction the outcome is
    /// unknown: it may have committed or aborted; ask again with its id.
    #[error("{}no answer from the coordinators before the deadline: {message}",
        .txn_id.as_ref().map(|t| format!("outcome of transaction {t} unknown: ")).unwrap_or_default())]
    Unavailable {
        txn_id: Option<String>,
        message: String,
    },
    /// No coordinator accepted a connection (each address with why), for
    /// `ClientConfig::unreachable_after`. The request was sent nowhere: a
    /// transaction did not run.
    #[error("no coordinator reachable ({}); nothing was sent", .0.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreachable(Vec<(String, String)>),
    /// No participant of that name is registered.
    #[error("participant {0:?} is not registered with the coordinators")]
    UnknownParticipant(String),
    /// A call to a participant's own service (e.g. `Ledger.Balance`) failed.
    #[error("participant {participant}: {code:?}: {message}")]
    Participant {
        participant: String,
        code: Code,
        message: String,
    },
    /// Bad client configuration (addresses).
    #[error("client configuration: {0}")]
    Config(String),
    /// Any other status.
    #[error("{code:?}: {message}")]
    Status { code: Code, message: String },
}

impl ClientError {
    /// Maps a final status; `txn_id` names the transaction whose outcome an
    /// ambiguous failure leaves unknown.
    pub fn from_status(s: Status, txn_id: Option<String>) -> Self {
        let message = s.message().to_string();
        match s.code() {
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::FailedPrecondition => ClientError::FailedPrecondition(message),
            Code::NotFound => ClientError::NotFound(message),
            Code::ResourceExhausted => ClientError::Overloaded(message),
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal => ClientError::Unavailable {
                txn_id,
                message: format!("{:?}: {message}", s.code()),
            },
            code => ClientError::Status { code, message },
        }
    }

    /// True when a transaction may or may not have run (retry with its id).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable {
                txn_id: Some(_),
                ..
            }
        )
    }

    /// The transaction whose outcome is unknown, if any.
    pub fn txn_id(&self) -> Option<&str> {
        match self {
            ClientError::Unavailable { txn_id, .. } => txn_id.as_deref(),
            _ => None,
        }
    }

    /// True for errors in the request itself (nothing was attempted, or the
    /// cluster refused it as malformed).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ClientError::InvalidArgument(_) | ClientError::Config(_)
        )
    }
}
