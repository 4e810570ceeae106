//! The double-entry ledger: every money movement is one transaction of entries whose debits
//! equal its credits, written in the same database transaction as the payment's state change,
//! as that transaction's last write before the request's key ([`storage::insert_entries`]).
//!
//! Accounts (the merchant's view):
//! * `card_holds` / `holds_outstanding`: an authorization hold and its release (memo pair);
//! * `processor_receivable` / `sales`: captured money owed to us by the processor, and refunds
//!   taking it back.

use checkout_kit::db::{DbError, Tx, now_millis};

use crate::storage::{self, EntryRow, PaymentRow};

/// Debited by a hold, credited by its release.
pub const CARD_HOLDS: &str = "card_holds";
/// Credited by a hold, debited by its release; its balance is the hold still outstanding.
pub const HOLDS_OUTSTANDING: &str = "holds_outstanding";
/// Debited by a capture, credited by a refund.
pub const PROCESSOR_RECEIVABLE: &str = "processor_receivable";
/// Credited by a capture, debited by a refund; its balance is captured minus refunded.
pub const SALES: &str = "sales";

/// One leg of a ledger transaction: (account debited, account credited, amount).
type Leg = (&'static str, &'static str, i64);

async fn post(
    tx: &mut Tx,
    payment: &PaymentRow,
    description: &str,
    legs: &[Leg],
) -> Result<(), DbError> {
    let transaction_id = uuid::Uuid::now_v7().to_string();
    let now = now_millis();
    let mut entries = Vec::with_capacity(legs.len() * 2);
    for &(debit, credit, amount) in legs.iter().filter(|leg| leg.2 > 0) {
        for (account, direction) in [(debit, "debit"), (credit, "credit")] {
            entries.push(EntryRow {
                entry_id: uuid::Uuid::now_v7().to_string(),
                transaction_id: transaction_id.clone(),
                payment_id: payment.payment_id.clone(),
                checkout_id: payment.checkout_id.clone(),
                account: account.to_owned(),
                direction: direction.to_owned(),
                amount_minor: amount,
                currency_code: payment.currency_code.clone(),
                description: description.to_owned(),
                created_at: now,
            });
        }
    }
    storage::insert_entries(tx, &entries).await
}

/// An authorization hold.
pub async fn hold(tx: &mut Tx, payment: &PaymentRow, amount: i64) -> Result<(), DbError> {
    post(
        tx,
        payment,
        "authorization hold",
        &[(CARD_HOLDS, HOLDS_OUTSTANDING, amount)],
    )
    .await
}

/// The release of whatever hold is outstanding (a void); `outstanding` is the balance of
/// [`HOLDS_OUTSTANDING`] read in this transaction.
pub async fn release_hold(
    tx: &mut Tx,
    payment: &PaymentRow,
    outstanding: i64,
) -> Result<(), DbError> {
    post(
        tx,
        payment,
        "authorization hold released",
        &[(HOLDS_OUTSTANDING, CARD_HOLDS, outstanding)],
    )
    .await
}

/// A capture: the whole hold is released (what is not captured returns to the card) and the
/// captured amount becomes receivable from the processor; `outstanding` is the balance of
/// [`HOLDS_OUTSTANDING`] read in this transaction.
pub async fn capture(
    tx: &mut Tx,
    payment: &PaymentRow,
    amount: i64,
    outstanding: i64,
) -> Result<(), DbError> {
    post(
        tx,
        payment,
        "capture",
        &[
            (HOLDS_OUTSTANDING, CARD_HOLDS, outstanding),
            (PROCESSOR_RECEIVABLE, SALES, amount),
        ],
    )
    .await
}

/// A refund.
pub async fn refund(tx: &mut Tx, payment: &PaymentRow, amount: i64) -> Result<(), DbError> {
    post(
        tx,
        payment,
        "refund",
        &[(SALES, PROCESSOR_RECEIVABLE, amount)],
    )
    .await
}
