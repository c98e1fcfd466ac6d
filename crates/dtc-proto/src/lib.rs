//! # dtc-proto: the wire contract
//!
//! Generated from `proto/dtc/v1/*.proto` by `build.rs` (tonic + prost with a
//! vendored protoc), plus conversions between wire enums and `dtc-core` types,
//! the header names and size limit every node and client shares
//! ([`wire`]), mutual TLS for every link ([`tls`]), and the seam through
//! which servers accept and channels connect ([`net`]: TCP, or the
//! simulation's network).
//!
//! ```text
//! proto/dtc/v1/*.proto ──build.rs──► OUT_DIR/dtc.v1.rs ──include!──► dtc_proto::v1
//! ```

pub mod net;
pub mod tls;

/// Generated messages, clients and servers of package `dtc.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dtc.v1");
}

/// Wire conventions outside the `.proto` files: the metadata headers dtc
/// nodes and clients exchange, and the message-size limit they agree on.
/// Defined once here so that a sender and a receiver cannot disagree.
pub mod wire {
    /// On an UNAVAILABLE answer, the leader this node knows of, as
    /// `ID=ADDR` (ADDR is the member address clients dial). Clients send
    /// their next attempt there.
    pub const LEADER_HINT_HEADER: &str = "dtc-leader-hint";

    /// How many times a request has been forwarded between coordinators
    /// (a decimal number); a node stops forwarding past its limit.
    pub const HOPS_HEADER: &str = "dtc-hops";

    /// Largest message a dtc client decodes (64 MiB): replies carry at most
    /// a transaction's worth of payloads or a page of listed transactions,
    /// far below it, so a larger one means a misbehaving peer.
    pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
}

/// Encoded `FileDescriptorSet` of every dtc proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dtc_descriptor");

/// gRPC server reflection in both protocol versions: `v1`, and `v1alpha`,
/// which many clients still speak only (Python's `grpcio-reflection`, older
/// grpcurl, grpcui and Evans). Every dtc server adds both, listing exactly
/// the services it serves.
pub mod reflection {
    use tonic_reflection::server::{Builder, Error, v1, v1alpha};

    /// What a server lists: the full names of the services it serves, and
    /// the encoded descriptor sets that define any of them beyond dtc's own
    /// protos and `grpc.health.v1`.
    #[derive(Debug, Clone, Default)]
    pub struct Listed {
        pub services: Vec<String>,
        pub descriptor_sets: Vec<&'static [u8]>,
    }

    /// The name `grpc.health.v1` registers under.
    pub const HEALTH: &str = "grpc.health.v1.Health";

    fn builder(listed: &Listed) -> Builder<'static> {
        let mut b = Builder::configure()
            .register_encoded_file_descriptor_set(super::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for set in &listed.descriptor_sets {
            b = b.register_encoded_file_descriptor_set(set);
        }
        // Without names, tonic lists every service of every registered file:
        // a coordinator would claim to serve the participant API.
        for name in &listed.services {
            b = b.with_service_name(name.clone());
        }
        b
    }

    /// The `grpc.reflection.v1` service.
    pub fn v1(
        listed: &Listed,
    ) -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
        builder(listed).build_v1()
    }

    /// The `grpc.reflection.v1alpha` service.
    pub fn v1alpha(
        listed: &Listed,
    ) -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error> {
        builder(listed).build_v1alpha()
    }
}

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
