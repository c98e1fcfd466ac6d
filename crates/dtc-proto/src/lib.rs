//! # dtc-proto: the wire contract
//!
//! Generated from `proto/dtc/v1/*.proto` by `build.rs` (tonic + prost with a
//! vendored protoc), plus conversions between wire enums and `dtc-core` types.
//!
//! ```text
//! proto/dtc/v1/*.proto ──build.rs──► OUT_DIR/dtc.v1.rs ──include!──► dtc_proto::v1
//! ```

/// Generated messages, clients and servers of package `dtc.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dtc.v1");
}

/// Encoded `FileDescriptorSet` of every dtc proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dtc_descriptor");

use dtc_core::{Outcome, Vote};

impl From<&Outcome> for v1::Outcome {
    fn from(o: &Outcome) -> Self {
        match o {
            Outcome::Commit => v1::Outcome::Committed,
            Outcome::Abort { .. } => v1::Outcome::Aborted,
        }
    }
}

/// Decodes a `PrepareResponse` into a core vote. An unspecified vote is a
/// protocol violation by the participant; it counts as an abort (the safe side).
pub fn vote_from_wire(resp: &v1::PrepareResponse) -> Vote {
    match v1::Vote::try_from(resp.vote) {
        Ok(v1::Vote::Prepared) => Vote::Prepared,
        Ok(v1::Vote::ReadOnly) => Vote::ReadOnly,
        Ok(v1::Vote::Abort) => Vote::Abort {
            reason: resp.reason.clone(),
        },
        _ => Vote::Abort {
            reason: format!("participant sent an invalid vote ({})", resp.vote),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_vote_counts_as_abort() {
        let v = vote_from_wire(&v1::PrepareResponse {
            vote: 42,
            reason: String::new(),
        });
        assert!(matches!(v, Vote::Abort { .. }));
    }
}
