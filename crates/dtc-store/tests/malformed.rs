//! Malformed input on the Raft transport's and the stores' decoders: random
//! bytes, and valid encodings with bytes flipped, cut or appended, decode
//! (postcard) to a value or an error, never a panic, as every Raft message a
//! peer sends and every record read from a damaged file does.

use dtc_core::{Command, Outcome, TxnRecord};
use dtc_store::{Entry, NodeId, TypeConfig};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
use proptest::prelude::*;

/// Decodes `bytes` as every type that crosses the Raft transport or is read
/// back from `raft-log.redb` and `state.redb`.
fn decode_as_everything(bytes: &[u8]) {
    fn one<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
        let _ = postcard::from_bytes::<T>(bytes);
    }
    one::<Entry>(bytes);
    one::<Command>(bytes);
    one::<TxnRecord>(bytes);
    one::<AppendEntriesRequest<TypeConfig>>(bytes);
    one::<AppendEntriesResponse<NodeId>>(bytes);
    one::<VoteRequest<NodeId>>(bytes);
    one::<VoteResponse<NodeId>>(bytes);
    one::<InstallSnapshotRequest<TypeConfig>>(bytes);
    one::<InstallSnapshotResponse<NodeId>>(bytes);
}

fn log_id(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

/// Valid encodings of several kinds, to be mutated.
fn valid_encodings() -> Vec<Vec<u8>> {
    let begin = Command::Begin {
        txn_id: "order-42".parse().unwrap(),
        participants: vec!["bank-a".into(), "bank-b".into()],
        digest: [7; 32],
        timeout_ms: 5000,
        at_ms: 1_700_000_000_000,
    };
    let decide = Command::Decide {
        txn_id: "order-42".parse().unwrap(),
        outcome: Outcome::Abort {
            reason: "insufficient funds".into(),
        },
        phase2: vec!["bank-a".into()],
        at_ms: 1_700_000_000_100,
    };
    let entry = Entry {
        log_id: log_id(7),
        payload: EntryPayload::Normal(Command::Batch(vec![begin.clone(), decide])),
    };
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(6)),
        entries: vec![entry.clone()],
        leader_commit: Some(log_id(6)),
    };
    let vote = VoteRequest::<NodeId> {
        vote: Vote::new(4, 2),
        last_log_id: Some(log_id(9)),
    };
    vec![
        postcard::to_stdvec(&begin).unwrap(),
        postcard::to_stdvec(&entry).unwrap(),
        postcard::to_stdvec(&append).unwrap(),
        postcard::to_stdvec(&vote).unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_as_everything(&bytes);
    }

    #[test]
    fn mutated_valid_encodings_never_panic_a_decoder(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = valid_encodings().swap_remove(which);
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        bytes.extend(tail);
        decode_as_everything(&bytes);
    }
}

#[test]
fn a_cut_entry_is_an_error_not_a_shorter_entry() {
    let whole = &valid_encodings()[1];
    for len in 0..whole.len() {
        assert!(
            postcard::from_bytes::<Entry>(&whole[..len]).is_err(),
            "{len} of {} bytes decoded",
            whole.len()
        );
    }
}
