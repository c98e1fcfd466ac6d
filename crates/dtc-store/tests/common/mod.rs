//! Helpers shared by the integration tests: entry builders, a deterministic
//! command sequence, and a comparable view of a store's contents.
#![allow(dead_code)]

use dtc_core::{Command, MemStore, Outcome, TxnId, TxnRecord};
use dtc_store::{Entry, LogId, StateReader};
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use std::collections::BTreeSet;

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn entry(term: u64, index: u64, payload: EntryPayload<dtc_store::TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

pub fn normal(term: u64, index: u64, cmd: Command) -> Entry {
    entry(term, index, EntryPayload::Normal(cmd))
}

/// splitmix64: a fixed pseudo-random function of `x`, so the command at any
/// log index can be recomputed by a test that did not write it.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const PARTS: [&str; 3] = ["alpha", "beta", "gamma"];

/// The payload of the deterministic log at `index` (1-based): a membership
/// entry first, an occasional blank, otherwise a command on one of 60 txn ids
/// (so ids are begun, decided twice, completed, expired and reused).
pub fn payload_for(index: u64) -> EntryPayload<dtc_store::TypeConfig> {
    if index == 1 {
        return EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2, 3])], ()));
    }
    if index.is_multiple_of(37) {
        return EntryPayload::Blank;
    }
    EntryPayload::Normal(command_for(index))
}

pub fn command_for(index: u64) -> Command {
    let h = mix(index);
    let txn_id: TxnId = format!("t{:03}", (h >> 8) % 60).parse().unwrap();
    let at_ms = index * 10;
    let pick = |bits: u64| -> Vec<String> {
        PARTS
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, p)| p.to_string())
            .collect()
    };
    match h % 16 {
        0 => Command::Register {
            name: PARTS[((h >> 20) % 3) as usize].into(),
            endpoint: format!("http://10.0.0.{}:7000", (h >> 24) % 250),
        },
        1 if h & (1 << 62) != 0 => Command::ExpireAtMost {
            now_ms: at_ms,
            retention_ms: 300,
            limit: ((h >> 50) % 4) as u32,
        },
        1 => Command::Expire {
            now_ms: at_ms,
            retention_ms: 300,
        },
        2..=6 => Command::Begin {
            txn_id,
            participants: pick((h >> 32) | 1),
            digest: [(h >> 40) as u8; 32],
            timeout_ms: 1000,
            at_ms,
        },
        7..=10 => Command::Decide {
            txn_id,
            outcome: if (h >> 33).is_multiple_of(3) {
                Outcome::abort("no")
            } else {
                Outcome::Commit
            },
            phase2: pick(h >> 34),
            at_ms,
        },
        _ => Command::Complete { txn_id, at_ms },
    }
}

/// The entries of the deterministic log in `range`, all in term 1.
pub fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(1, i, payload_for(i))).collect()
}

/// MemStore after applying the deterministic log up to `applied` (inclusive).
pub fn replay(applied: u64) -> MemStore {
    let mut m = MemStore::default();
    for i in 1..=applied {
        if let EntryPayload::Normal(cmd) = payload_for(i) {
            m.apply(&cmd);
        }
    }
    m
}

/// Everything a state machine holds, in a comparable form.
#[derive(Debug, PartialEq, Eq)]
pub struct Contents {
    pub txns: Vec<TxnRecord>,
    pub pending: Vec<TxnId>,
    pub completed: Vec<(u64, TxnId)>,
    pub participants: Vec<(String, String)>,
}

pub fn contents(r: &StateReader) -> Contents {
    Contents {
        txns: r.list_txns(false, None, usize::MAX).unwrap(),
        pending: r.pending().unwrap().into_iter().map(|t| t.txn_id).collect(),
        completed: r.completed().unwrap(),
        participants: r.participants().unwrap(),
    }
}

pub fn mem_contents(m: &MemStore) -> Contents {
    Contents {
        txns: m.txns.values().cloned().collect(),
        pending: m.pending.iter().cloned().collect(),
        completed: m.completed.iter().cloned().collect(),
        participants: m
            .participants
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The pending index and the records agree: every pending id has a
/// non-completed record and every non-completed record is pending.
pub fn assert_pending_index_consistent(r: &StateReader) {
    let pending: BTreeSet<TxnId> = r
        .pending()
        .expect("every pending id has a record")
        .into_iter()
        .map(|t| {
            assert!(
                t.is_pending(),
                "completed record {} is in the pending index",
                t.txn_id
            );
            t.txn_id
        })
        .collect();
    for t in r.list_txns(false, None, usize::MAX).unwrap() {
        if t.is_pending() {
            assert!(
                pending.contains(&t.txn_id),
                "{} is pending but not indexed",
                t.txn_id
            );
        }
    }
    assert_eq!(r.pending_count().unwrap(), pending.len() as u64);
}
