//! Protocol vocabulary: votes, outcomes, the validated transaction request and
//! the limits that bound it.

use crate::txn_id::{TxnId, is_id_char};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A participant's answer to `Prepare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    /// The branch's work is durable and locked; the participant waits for the decision.
    Prepared,
    /// The participant refuses; the transaction must abort.
    Abort { reason: String },
    /// The branch changed nothing; it needs no phase-2 message.
    ReadOnly,
}

/// The one decision a transaction ends with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Commit,
    Abort { reason: String },
}

impl Outcome {
    pub fn abort(reason: impl Into<String>) -> Self {
        Outcome::Abort {
            reason: reason.into(),
        }
    }

    pub fn is_commit(&self) -> bool {
        matches!(self, Outcome::Commit)
    }

    /// The abort reason, or "" for a commit.
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Commit => "",
            Outcome::Abort { reason } => reason,
        }
    }
}

/// blake3 digest of a request's branches: what makes two `Execute` calls with
/// one transaction id "the same request" (corner case 7).
pub type RequestDigest = [u8; 32];

/// Bounds on what a client may ask for. Checked before anything is replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of one branch, in bytes.
    pub max_payload_bytes: usize,
    /// Most branches in one transaction.
    pub max_branches: usize,
    /// Largest accepted prepare timeout.
    pub max_timeout_ms: u32,
    /// Used when the request says 0.
    pub default_timeout_ms: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 4 * 1024 * 1024,
            max_branches: 64,
            max_timeout_ms: 600_000,
            default_timeout_ms: 5_000,
        }
    }
}

/// What was wrong with a request. Each variant names the offending field so the
/// message can go to the client unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("transaction has no branches")]
    NoBranches,
    #[error("transaction has {0} branches, more than the limit of {1}")]
    TooManyBranches(usize, usize),
    #[error("participant {0:?} is named by more than one branch")]
    DuplicateParticipant(String),
    #[error("invalid participant name {name:?}: {why}")]
    BadParticipantName { name: String, why: &'static str },
    #[error("payload for participant {participant:?} is {size} bytes, over the limit of {limit}")]
    PayloadTooLarge {
        participant: String,
        size: usize,
        limit: usize,
    },
    #[error("timeout_ms {0} is out of range (1..={1}, or 0 for the default)")]
    TimeoutOutOfRange(u32, u32),
}

/// A validated `Execute` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRequest {
    pub txn_id: TxnId,
    /// (participant name, payload), in the client's order.
    pub branches: Vec<(String, Vec<u8>)>,
    pub timeout_ms: u32,
}

impl TxnRequest {
    /// Checks a raw request against `limits` (the id was checked when it
    /// became a [`TxnId`]). A `timeout_ms` of 0 becomes the default.
    pub fn validate(
        txn_id: TxnId,
        branches: Vec<(String, Vec<u8>)>,
        timeout_ms: u32,
        limits: &Limits,
    ) -> Result<Self, ValidationError> {
        if branches.is_empty() {
            return Err(ValidationError::NoBranches);
        }
        if branches.len() > limits.max_branches {
            return Err(ValidationError::TooManyBranches(
                branches.len(),
                limits.max_branches,
            ));
        }
        let mut seen = BTreeSet::new();
        for (name, payload) in &branches {
            validate_participant_name(name)?;
            if !seen.insert(name.as_str()) {
                return Err(ValidationError::DuplicateParticipant(name.clone()));
            }
            if payload.len() > limits.max_payload_bytes {
                return Err(ValidationError::PayloadTooLarge {
                    participant: name.clone(),
                    size: payload.len(),
                    limit: limits.max_payload_bytes,
                });
            }
        }
        let timeout_ms = match timeout_ms {
            0 => limits.default_timeout_ms,
            t if t > limits.max_timeout_ms => {
                return Err(ValidationError::TimeoutOutOfRange(t, limits.max_timeout_ms));
            }
            t => t,
        };
        Ok(TxnRequest {
            txn_id,
            branches,
            timeout_ms,
        })
    }

    pub fn participants(&self) -> Vec<String> {
        self.branches.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Digest of the branches (names and payloads, in order). The timeout is
    /// left out on purpose: it is how long to try, not what to do.
    pub fn digest(&self) -> RequestDigest {
        let mut h = blake3::Hasher::new();
        h.update(&(self.branches.len() as u64).to_le_bytes());
        for (name, payload) in &self.branches {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(&(payload.len() as u64).to_le_bytes());
            h.update(payload);
        }
        *h.finalize().as_bytes()
    }
}

/// Participant names follow the same alphabet as ids, at most 64 bytes.
pub fn validate_participant_name(name: &str) -> Result<(), ValidationError> {
    let bad = |why| ValidationError::BadParticipantName {
        name: name.chars().take(64).collect(),
        why,
    };
    if name.is_empty() {
        return Err(bad("must not be empty"));
    }
    if name.len() > 64 {
        return Err(bad("longer than 64 bytes"));
    }
    if !name.chars().all(is_id_char) {
        return Err(bad("only A-Z a-z 0-9 . _ : - are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(branches: Vec<(&str, usize)>, timeout: u32) -> Result<TxnRequest, ValidationError> {
        TxnRequest::validate(
            TxnId::new("t1").unwrap(),
            branches
                .into_iter()
                .map(|(n, size)| (n.to_string(), vec![0u8; size]))
                .collect(),
            timeout,
            &Limits::default(),
        )
    }

    #[test]
    fn rejects_empty_branch_list() {
        assert_eq!(req(vec![], 0), Err(ValidationError::NoBranches));
    }

    #[test]
    fn rejects_participant_named_twice() {
        assert_eq!(
            req(vec![("a", 1), ("b", 1), ("a", 1)], 0),
            Err(ValidationError::DuplicateParticipant("a".into()))
        );
    }

    #[test]
    fn rejects_oversized_payload_naming_the_participant() {
        let err = req(vec![("a", 4 * 1024 * 1024 + 1)], 0).unwrap_err();
        assert!(err.to_string().contains("\"a\""), "{err}");
        assert!(matches!(err, ValidationError::PayloadTooLarge { .. }));
    }

    #[test]
    fn zero_timeout_means_default_and_huge_timeout_is_refused() {
        assert_eq!(req(vec![("a", 1)], 0).unwrap().timeout_ms, 5_000);
        assert_eq!(
            req(vec![("a", 1)], 600_001),
            Err(ValidationError::TimeoutOutOfRange(600_001, 600_000))
        );
    }

    #[test]
    fn digest_depends_on_payload_and_order_but_not_timeout() {
        let a = req(vec![("a", 1), ("b", 2)], 100).unwrap();
        let b = req(vec![("a", 1), ("b", 2)], 200).unwrap();
        let c = req(vec![("b", 2), ("a", 1)], 100).unwrap();
        let d = req(vec![("a", 1), ("b", 3)], 100).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_ne!(a.digest(), d.digest());
    }
}
