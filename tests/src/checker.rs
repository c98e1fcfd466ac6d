//! Reading the final state of a [`Testbed`] run for the checker
//! ([`dtc_harness::checker`], re-exported here), and the after-heal
//! liveness probe.

pub use dtc_harness::checker::*;

use crate::bank::{Bank, OpResult};
use crate::testbed::Testbed;
use std::collections::BTreeMap;
use std::time::Duration;

/// Reads balances, audits and the cluster's record of every transaction in
/// the history.
pub async fn collect(tb: &Testbed, bank: &Bank) -> Result<FinalState, String> {
    let mut fin = FinalState::default();
    for l in &tb.ledgers {
        let audit = l
            .audit(true)
            .await
            .map_err(|s| format!("audit of {}: {s:?}", l.name))?;
        let by_id: BTreeMap<String, AtParticipant> = audit
            .into_iter()
            .map(|e| (e.txn_id.clone(), at_participant(e)))
            .collect();
        fin.audits.insert(l.name.clone(), by_id);
    }
    for a in &bank.accounts {
        let l = tb.ledger(&a.ledger);
        let b = l
            .balance(&a.account)
            .await
            .map_err(|s| format!("balance of {}/{}: {s:?}", a.ledger, a.account))?;
        fin.balances
            .insert((a.ledger.clone(), a.account.clone()), b);
    }
    let ids: Vec<String> = bank.history.ops().into_iter().map(|o| o.id).collect();
    for chunk in ids.chunks(16) {
        let answers = futures::future::join_all(
            chunk
                .iter()
                .map(|id| async { (id.clone(), at_cluster(tb.client.get_transaction(id).await)) }),
        )
        .await;
        fin.cluster.extend(answers);
    }
    Ok(fin)
}

/// After healing: one transfer from the richest account must commit (the
/// system is live again). Recorded in the history like any operation.
pub async fn liveness_probe(tb: &Testbed, bank: &Bank, fin: &FinalState) -> Result<(), String> {
    let ((ledger, from), _) = fin
        .balances
        .iter()
        .max_by_key(|(_, (b, _))| *b)
        .ok_or("no accounts")?;
    let to = bank
        .accounts
        .iter()
        .find(|a| a.ledger != *ledger || a.account != *from)
        .ok_or("a single account")?;
    let from = dtc_harness::history::Account {
        ledger: ledger.clone(),
        account: from.clone(),
    };
    let result = bank
        .transfer(
            &tb.client,
            "after-heal-probe",
            (&from, to, 1),
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
        .await;
    match result {
        OpResult::Committed => Ok(()),
        other => Err(format!("after-heal-probe: {other:?}")),
    }
}
