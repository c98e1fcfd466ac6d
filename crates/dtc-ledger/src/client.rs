//! The client side of the sample ledger: transactions that move money and
//! reads of balances, as methods on the SDK's [`dtc_client::Client`].
//!
//! ```text
//! client.transfer((p1, a), (p2, b), n)  → a TxnBuilder with one branch per
//!                                         ledger: payload [(a, -n)] and [(b, +n)]
//!                                         (one branch [(a,-n),(b,+n)] when p1 == p2)
//! client.account_balance(p, a)          → registry lookup of p's endpoint
//!                                         (through the cluster), then Ledger.Balance
//!                                         at the participant itself
//! ```
//!
//! Arguments are checked while the builder is made; a bad one makes
//! `execute` fail with `INVALID_ARGUMENT` before anything is sent.

use crate::{AccountBalance, payload, validate_account};
use dtc_client::{Client, ClientError, TxnBuilder};
use dtc_proto::v1 as pb;
use pb::ledger_client::LedgerClient as LedgerStub;
use std::future::Future;
use std::time::Duration;
use tonic::transport::Channel;

/// Ledger transactions and reads on a [`Client`]. `use dtc_ledger::LedgerClient;`
/// then call them on the client.
pub trait LedgerClient {
    /// A transaction crediting `amount` to `to = (participant, account)`.
    /// Set an id or timeout on the returned builder, then `execute` it.
    fn deposit(&self, to: (&str, &str), amount: i64) -> TxnBuilder;

    /// A transaction moving `amount` from `from` to `to` (each
    /// `(participant, account)`); one branch per participant. It aborts if
    /// `from` lacks the available funds (its balance minus what other
    /// prepared transactions reserve on it).
    fn transfer(&self, from: (&str, &str), to: (&str, &str), amount: i64) -> TxnBuilder;

    /// The committed balance of `account` at ledger `participant`.
    fn balance(
        &self,
        participant: &str,
        account: &str,
    ) -> impl Future<Output = Result<i64, ClientError>> + Send;

    /// The committed balance of `account` at ledger `participant`, with what
    /// prepared transactions reserve on it and bring to it.
    fn account_balance(
        &self,
        participant: &str,
        account: &str,
    ) -> impl Future<Output = Result<AccountBalance, ClientError>> + Send;

    /// Every transaction ledger `participant` has decided (and, with
    /// `include_prepared`, the undecided ones), ordered by id.
    fn ledger_audit(
        &self,
        participant: &str,
        include_prepared: bool,
    ) -> impl Future<Output = Result<Vec<pb::AuditEntry>, ClientError>> + Send;
}

fn check_target(what: &str, (participant, account): (&str, &str)) -> Result<(), ClientError> {
    if participant.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "{what}: the participant must not be empty"
        )));
    }
    validate_account(account).map_err(|e| ClientError::InvalidArgument(format!("{what}: {e}")))
}

fn check_amount(amount: i64) -> Result<(), ClientError> {
    if amount <= 0 {
        return Err(ClientError::InvalidArgument(format!(
            "amount must be positive, not {amount}"
        )));
    }
    Ok(())
}

fn participant_error(participant: &str, s: tonic::Status) -> ClientError {
    ClientError::Participant {
        participant: participant.to_string(),
        code: s.code(),
        message: s.message().to_string(),
    }
}

async fn ledger(client: &Client, participant: &str) -> Result<LedgerStub<Channel>, ClientError> {
    Ok(LedgerStub::new(
        client.participant_channel(participant).await?,
    ))
}

fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

impl LedgerClient for Client {
    fn deposit(&self, to: (&str, &str), amount: i64) -> TxnBuilder {
        let builder = self.transaction();
        if let Err(e) = check_amount(amount).and(check_target("to", to)) {
            return builder.fail(e);
        }
        builder.branch(to.0, payload(&[(to.1, amount)]))
    }

    fn transfer(&self, from: (&str, &str), to: (&str, &str), amount: i64) -> TxnBuilder {
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
            builder.branch(from.0, payload(&[(from.1, -amount), (to.1, amount)]))
        } else {
            builder
                .branch(from.0, payload(&[(from.1, -amount)]))
                .branch(to.0, payload(&[(to.1, amount)]))
        }
    }

    async fn balance(&self, participant: &str, account: &str) -> Result<i64, ClientError> {
        Ok(self.account_balance(participant, account).await?.balance)
    }

    async fn account_balance(
        &self,
        participant: &str,
        account: &str,
    ) -> Result<AccountBalance, ClientError> {
        check_target("balance", (participant, account))?;
        let r = self
            .call_participant(participant, |channel, t| async move {
                let req = with_timeout(
                    pb::BalanceRequest {
                        account: account.to_string(),
                    },
                    t,
                );
                LedgerStub::new(channel).balance(req).await
            })
            .await?
            .into_inner();
        Ok(AccountBalance {
            balance: r.balance,
            reserved: r.reserved,
            available: r.available,
            incoming: r.incoming,
        })
    }

    async fn ledger_audit(
        &self,
        participant: &str,
        include_prepared: bool,
    ) -> Result<Vec<pb::AuditEntry>, ClientError> {
        let mut stub = ledger(self, participant).await?;
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
            let page = stub
                .audit(req)
                .await
                .map_err(|s| participant_error(participant, s))?
                .into_inner();
            out.extend(page.transactions);
            if page.next_after_txn_id.is_empty() {
                return Ok(out);
            }
            after = page.next_after_txn_id;
        }
    }
}
