//! Typed helpers for `dtc-ledger` participants.

use crate::{Client, ClientError, TxnBuilder, with_timeout};
use dtc_proto::v1 as pb;
use prost::Message;
use std::time::{Duration, Instant};
use tonic::Code;

/// Encodes a `dtc.v1.LedgerPayload` from `(account, delta)` pairs.
pub fn ledger_payload(entries: &[(&str, i64)]) -> Vec<u8> {
    pb::LedgerPayload {
        entries: entries
            .iter()
            .map(|(account, delta)| pb::LedgerEntry {
                account: account.to_string(),
                delta: *delta,
            })
            .collect(),
    }
    .encode_to_vec()
}

/// An account at a ledger participant, as `Ledger.Balance` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountBalance {
    /// The committed balance.
    pub balance: i64,
    /// Net debits of prepared, undecided transactions (taken if they commit).
    pub reserved: i64,
    /// What a new debit may take: `balance - reserved`.
    pub available: i64,
    /// Net credits of prepared, undecided transactions (not spendable yet).
    pub incoming: i64,
}

fn check_target(what: &str, (participant, account): (&str, &str)) -> Result<(), ClientError> {
    if participant.is_empty() || account.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "{what}: participant and account must not be empty"
        )));
    }
    Ok(())
}

fn check_amount(amount: i64) -> Result<(), ClientError> {
    if amount <= 0 {
        return Err(ClientError::InvalidArgument(format!(
            "amount must be positive, not {amount}"
        )));
    }
    Ok(())
}

impl Client {
    /// A transaction crediting `amount` to `to = (participant, account)`.
    /// Set an id or timeout on the returned builder, then `execute` it.
    pub fn deposit(&self, to: (&str, &str), amount: i64) -> TxnBuilder {
        let builder = self.transaction();
        if let Err(e) = check_amount(amount).and(check_target("to", to)) {
            return builder.fail(e);
        }
        builder.branch(to.0, ledger_payload(&[(to.1, amount)]))
    }

    /// A transaction moving `amount` from `from` to `to` (each
    /// `(participant, account)`); one branch per participant. It aborts if
    /// `from` lacks the available funds (its balance minus what other
    /// prepared transactions reserve on it).
    pub fn transfer(&self, from: (&str, &str), to: (&str, &str), amount: i64) -> TxnBuilder {
        let builder = self.transaction();
        let checked = check_amount(amount)
            .and(check_target("from", from))
            .and(check_target("to", to))
            .and(if from == to {
                Err(ClientError::InvalidArgument(
                    "from and to are the same account".into(),
                ))
            } else {
                Ok(())
            });
        if let Err(e) = checked {
            return builder.fail(e);
        }
        if from.0 == to.0 {
            builder.branch(from.0, ledger_payload(&[(from.1, -amount), (to.1, amount)]))
        } else {
            builder
                .branch(from.0, ledger_payload(&[(from.1, -amount)]))
                .branch(to.0, ledger_payload(&[(to.1, amount)]))
        }
    }

    async fn ledger_client(
        &self,
        participant: &str,
    ) -> Result<pb::ledger_client::LedgerClient<tonic::transport::Channel>, ClientError> {
        let endpoint = self.participant_endpoint(participant).await?;
        Ok(pb::ledger_client::LedgerClient::new(
            self.channel(&endpoint)?,
        ))
    }

    /// The committed balance of `account` at ledger participant `participant`
    /// (read from the participant, found through the cluster's registry).
    pub async fn balance(&self, participant: &str, account: &str) -> Result<i64, ClientError> {
        Ok(self.account_balance(participant, account).await?.balance)
    }

    /// The committed balance of `account` at ledger participant
    /// `participant`, with what prepared transactions reserve on it.
    pub async fn account_balance(
        &self,
        participant: &str,
        account: &str,
    ) -> Result<AccountBalance, ClientError> {
        check_target("balance", (participant, account))?;
        let mut ledger = self.ledger_client(participant).await?;
        let until = Instant::now() + self.config().call_deadline;
        let mut backoff = dtc_util::backoff(self.config().min_backoff, self.config().max_backoff);
        loop {
            let req = with_timeout(
                pb::BalanceRequest {
                    account: account.to_string(),
                },
                Duration::from_secs(2),
            );
            match ledger.balance(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(AccountBalance {
                        balance: r.balance,
                        reserved: r.reserved,
                        available: r.available,
                        incoming: r.incoming,
                    });
                }
                Err(s) if s.code() == Code::InvalidArgument => {
                    return Err(ClientError::InvalidArgument(s.message().to_string()));
                }
                Err(s) => {
                    let delay = backoff.next().unwrap_or(self.config().max_backoff);
                    if crate::classify(&s) != crate::Retry::Ambiguous
                        || Instant::now() + delay >= until
                    {
                        return Err(ClientError::Participant {
                            participant: participant.to_string(),
                            code: s.code(),
                            message: s.message().to_string(),
                        });
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Every transaction ledger `participant` has decided (and, with
    /// `include_prepared`, the undecided ones), ordered by id.
    pub async fn ledger_audit(
        &self,
        participant: &str,
        include_prepared: bool,
    ) -> Result<Vec<pb::AuditEntry>, ClientError> {
        let mut ledger = self.ledger_client(participant).await?;
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let req = with_timeout(
                pb::AuditRequest {
                    after_txn_id: after.clone(),
                    limit: 1000,
                    include_prepared,
                },
                Duration::from_secs(10),
            );
            let page = ledger
                .audit(req)
                .await
                .map_err(|s| ClientError::Participant {
                    participant: participant.to_string(),
                    code: s.code(),
                    message: s.message().to_string(),
                })?
                .into_inner();
            out.extend(page.transactions);
            if page.next_after_txn_id.is_empty() {
                return Ok(out);
            }
            after = page.next_after_txn_id;
        }
    }
}
