//! Malformed input on every gRPC message: random bytes, and valid messages
//! with bytes flipped, cut or appended, decode to a value or an error, never
//! a panic, and what decodes converts to the core's types without a panic.
//! (prost refuses bad wire types, lengths past the buffer and invalid UTF-8
//! in strings; unknown enum numbers decode and are mapped by the
//! conversions, which count them as abort votes.)

use dtc_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;

/// Decodes `bytes` as every message type of `dtc.v1`, and converts what a
/// node converts; returns how many decoded (the point is that none panics).
fn decode_as_every_message(bytes: &[u8]) -> usize {
    macro_rules! each {
        ($($t:ty),* $(,)?) => {{
            let mut ok = 0;
            $( ok += usize::from(<$t>::decode(bytes).is_ok()); )*
            ok
        }};
    }
    let ok = each!(
        pb::Branch,
        pb::ExecuteRequest,
        pb::ExecuteResponse,
        pb::TransactionInfo,
        pb::GetTransactionRequest,
        pb::GetTransactionResponse,
        pb::ListTransactionsRequest,
        pb::ListTransactionsResponse,
        pb::ClusterStatusRequest,
        pb::Member,
        pb::ParticipantEndpoint,
        pb::ClusterStatusResponse,
        pb::RegisterParticipantRequest,
        pb::RegisterParticipantResponse,
        pb::LedgerPayload,
        pb::LedgerEntry,
        pb::BalanceRequest,
        pb::BalanceResponse,
        pb::AuditRequest,
        pb::AuditEntry,
        pb::AuditResponse,
        pb::PrepareRequest,
        pb::PrepareResponse,
        pb::CommitRequest,
        pb::CommitResponse,
        pb::AbortRequest,
        pb::AbortResponse,
        pb::QueryOutcomeRequest,
        pb::QueryOutcomeResponse,
        pb::RaftMessage,
    );
    if let Ok(resp) = pb::PrepareResponse::decode(bytes) {
        let _ = dtc_proto::vote_from_wire(&resp);
    }
    ok
}

/// Valid messages of several kinds, to be mutated.
fn valid_messages() -> Vec<Vec<u8>> {
    vec![
        pb::ExecuteRequest {
            txn_id: "order-42".into(),
            branches: vec![
                pb::Branch {
                    participant: "bank-a".into(),
                    payload: vec![1, 2, 3],
                },
                pb::Branch {
                    participant: "bank-b".into(),
                    payload: vec![],
                },
            ],
            timeout_ms: 5000,
            ..Default::default()
        }
        .encode_to_vec(),
        pb::PrepareRequest {
            txn_id: "t-1".into(),
            participant: "bank-a".into(),
            payload: vec![9; 40],
            remaining_ms: 1200,
        }
        .encode_to_vec(),
        pb::PrepareResponse {
            vote: pb::Vote::Abort as i32,
            reason: "insufficient funds".into(),
        }
        .encode_to_vec(),
        pb::LedgerPayload {
            entries: vec![pb::LedgerEntry {
                account: "alice".into(),
                delta: -5,
            }],
        }
        .encode_to_vec(),
        pb::RaftMessage {
            data: vec![0, 1, 2, 3, 4, 5],
            ..Default::default()
        }
        .encode_to_vec(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_as_every_message(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic_a_decoder(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = valid_messages().swap_remove(which);
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        bytes.extend(tail);
        decode_as_every_message(&bytes);
    }
}
