//! The transaction id: one type, one rule, checked once where an id enters
//! the system (the client SDK, the coordinator's and the participant's gRPC
//! services).
//!
//! A [`TxnId`] is 1 to [`TxnId::MAX_LEN`] bytes of `A-Z a-z 0-9 . _ : -`:
//! safe in logs, file names and URLs, unambiguous to compare, and wide
//! enough for a UUID (what the client SDK generates) or an application's own
//! key such as `order-42:retry_1`.
//!
//! It serializes as the bare string (`#[serde(transparent)]`): stored
//! records and Raft entries written before the type existed decode
//! unchanged, and so do the ones written now. Decoding does not re-check
//! the rule: everything stored was checked when it entered.

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// A valid transaction id (see the [module docs](self) for the rule).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxnId(String);

/// Why a string is not a [`TxnId`]; the message names the id (its first 64
/// characters) and what is wrong, and can go to a client unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid txn_id {id:?}: {why}")]
pub struct InvalidTxnId {
    /// The offending id, cut to its first 64 characters.
    pub id: String,
    pub why: String,
}

impl TxnId {
    /// Longest id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Checks `id` against the rule.
    pub fn new(id: impl Into<String>) -> Result<TxnId, InvalidTxnId> {
        let id = id.into();
        let bad = |why: String| InvalidTxnId {
            id: id.chars().take(64).collect(),
            why,
        };
        if id.is_empty() {
            return Err(bad("must not be empty".into()));
        }
        if id.len() > Self::MAX_LEN {
            return Err(bad(format!(
                "{} bytes, longer than the limit of {}",
                id.len(),
                Self::MAX_LEN
            )));
        }
        if let Some(c) = id.chars().find(|c| !is_id_char(*c)) {
            return Err(bad(format!(
                "character {c:?} is not allowed (use A-Z a-z 0-9 . _ : -)"
            )));
        }
        Ok(TxnId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The alphabet of transaction ids and participant names.
pub(crate) fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TxnId {
    type Err = InvalidTxnId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TxnId::new(s)
    }
}

impl TryFrom<String> for TxnId {
    type Error = InvalidTxnId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TxnId::new(s)
    }
}

impl TryFrom<&str> for TxnId {
    type Error = InvalidTxnId;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        TxnId::new(s)
    }
}

/// Maps and sets keyed by `TxnId` can be looked up with a `&str`.
impl Borrow<str> for TxnId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TxnId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<TxnId> for String {
    fn from(id: TxnId) -> String {
        id.0
    }
}

impl PartialEq<str> for TxnId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TxnId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_nonempty_short_and_plain() {
        assert!(TxnId::new("").is_err());
        assert!(TxnId::new("x".repeat(129)).is_err());
        assert!(TxnId::new("x".repeat(128)).is_ok());
        assert!(TxnId::new("order-42:retry_1.x").is_ok());
        let err = TxnId::new("a b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid txn_id \"a b\": character ' ' is not allowed (use A-Z a-z 0-9 . _ : -)"
        );
    }

    #[test]
    fn a_uuid_is_a_valid_id() {
        assert!(TxnId::new("67e55044-10b1-426f-9247-bb680e5fe0c8").is_ok());
    }

    #[test]
    fn the_encoding_is_the_bare_string() {
        let id = TxnId::new("order-1").unwrap();
        assert_eq!(
            postcard::to_stdvec(&id).unwrap(),
            postcard::to_stdvec("order-1").unwrap()
        );
        let back: TxnId = postcard::from_bytes(&postcard::to_stdvec("order-1").unwrap()).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn a_map_keyed_by_id_is_looked_up_by_str() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(TxnId::new("t").unwrap(), 1);
        assert_eq!(m.get("t"), Some(&1));
        assert_eq!("t".parse::<TxnId>().unwrap().as_str(), "t");
    }
}
