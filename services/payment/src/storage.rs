//! Every SQL statement of the payment service (payments, ledger, the simulated processor's
//! books), portable across SQLite and Postgres. Each runs in the caller's transaction.

use checkout_kit::db::{DbError, Statements, Tx, Value, values_list};
use checkout_kit::on_backend;

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PaymentRow {
    /// Payment id.
    pub payment_id: String,
    /// Checkout.
    pub checkout_id: String,
    /// Paying customer.
    pub customer_id: String,
    /// State name (see [`crate::state::State`]).
    pub state: String,
    /// ISO 4217 currency.
    pub currency_code: String,
    /// Amount authorized (or asked for, while pending).
    pub authorized_minor: i64,
    /// Amount captured.
    pub captured_minor: i64,
    /// Amount a capture in flight asked for.
    pub capture_request_minor: i64,
    /// Amount refunded.
    pub refunded_minor: i64,
    /// Amount of refunds in flight.
    pub refund_pending_minor: i64,
    /// The processor's decline code.
    pub decline_code: String,
    /// The processor's reference of the authorization.
    pub processor_reference: String,
    /// The processor-side key of the authorization.
    pub processor_key: String,
    /// Last four card digits.
    pub card_last4: String,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub updated_at: i64,
}

/// A ledger entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EntryRow {
    /// Entry id (time-ordered).
    pub entry_id: String,
    /// Its transaction.
    pub transaction_id: String,
    /// Payment.
    pub payment_id: String,
    /// Checkout.
    pub checkout_id: String,
    /// Account name.
    pub account: String,
    /// `debit` or `credit`.
    pub direction: String,
    /// Positive amount.
    pub amount_minor: i64,
    /// ISO 4217 currency.
    pub currency_code: String,
    /// What moved.
    pub description: String,
    /// Epoch ms.
    pub created_at: i64,
}

/// One record of the simulated processor's books.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProcessorRow {
    /// The caller's processor-side key.
    pub processor_key: String,
    /// `authorize`, `capture`, `void` or `refund`.
    pub operation: String,
    /// `approved` or `declined`.
    pub outcome: String,
    /// The processor's reference.
    pub reference: String,
    /// The authorization the operation concerns (its own key for authorizations).
    pub authorization_key: String,
    /// Amount.
    pub amount_minor: i64,
    /// Currency.
    pub currency_code: String,
    /// Decline code, when declined.
    pub decline_code: String,
    /// Epoch ms.
    pub created_at: i64,
}

const PAYMENT_COLUMNS: &str = "payment_id, checkout_id, customer_id, state, currency_code, \
     authorized_minor, captured_minor, capture_request_minor, refunded_minor, \
     refund_pending_minor, decline_code, processor_reference, processor_key, card_last4, \
     created_at, updated_at";
const ENTRY_COLUMNS: &str = "entry_id, transaction_id, payment_id, checkout_id, account, \
     direction, amount_minor, currency_code, description, created_at";
const PROCESSOR_COLUMNS: &str = "processor_key, operation, outcome, reference, \
     authorization_key, amount_minor, currency_code, decline_code, created_at";

/// Inserts a payment unless its checkout has one; false when it has.
pub async fn insert_payment(tx: &mut Tx, p: &PaymentRow) -> Result<bool, DbError> {
    Ok(tx.run_together(insert_payment_statement(p)).await?[0].rows_affected() == 1)
}

/// The statement of [`insert_payment`], to send with others.
pub fn insert_payment_statement(p: &PaymentRow) -> Statements {
    Statements::new().then(
        format!(
            "INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (checkout_id) DO NOTHING"
        ),
        vec![
            p.payment_id.as_str().into(),
            p.checkout_id.as_str().into(),
            p.customer_id.as_str().into(),
            p.state.as_str().into(),
            p.currency_code.as_str().into(),
            p.authorized_minor.into(),
            p.captured_minor.into(),
            p.capture_request_minor.into(),
            p.refunded_minor.into(),
            p.refund_pending_minor.into(),
            p.decline_code.as_str().into(),
            p.processor_reference.as_str().into(),
            p.processor_key.as_str().into(),
            p.card_last4.as_str().into(),
            p.created_at.into(),
            p.updated_at.into(),
        ],
    )
}

/// The column a payment is found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// `payment_id`.
    Id,
    /// `checkout_id` (a checkout has at most one payment).
    Checkout,
}

/// The statement reading the payment `key` names, to send with others.
pub fn read_payment(by: By, key: &str) -> Statements {
    let column = match by {
        By::Id => "payment_id",
        By::Checkout => "checkout_id",
    };
    Statements::new().then(
        format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE {column} = $1"),
        vec![key.into()],
    )
}

/// A payment by id.
pub async fn payment(tx: &mut Tx, payment_id: &str) -> Result<Option<PaymentRow>, DbError> {
    tx.run_together(read_payment(By::Id, payment_id)).await?[0].first()
}

/// A checkout's payment.
pub async fn payment_by_checkout(
    tx: &mut Tx,
    checkout_id: &str,
) -> Result<Option<PaymentRow>, DbError> {
    tx.run_together(read_payment(By::Checkout, checkout_id))
        .await?[0]
        .first()
}

/// Every payment (for reconciliation).
pub async fn all_payments(tx: &mut Tx) -> Result<Vec<PaymentRow>, DbError> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments ORDER BY payment_id");
    Ok(on_backend!(tx, conn => sqlx::query_as(&sql).fetch_all(&mut *conn).await?))
}

/// Moves a payment from one state to another, with the other columns a transition sets; the
/// payment as it now stands, or `None` when it is no longer in `from` (a concurrent request
/// moved it first).
pub async fn transition(
    tx: &mut Tx,
    payment_id: &str,
    from: &str,
    to: &str,
    change: &Change,
    now: i64,
) -> Result<Option<PaymentRow>, DbError> {
    let statements = Statements::new().then(
        transition_sql(),
        transition_values(payment_id, from, to, change, now),
    );
    tx.run_together(statements).await?[0].first()
}

/// [`transition`] with the net balance of `account` for the payment ([`ACCOUNT_BALANCE`]) read
/// right after it, sent together ([`Tx::run_together`]: one hand-off on SQLite), for the ledger
/// posting that follows a transition.
pub async fn transition_reading_balance(
    tx: &mut Tx,
    payment_id: &str,
    from: &str,
    to: &str,
    change: &Change,
    now: i64,
    account: &str,
) -> Result<(Option<PaymentRow>, i64), DbError> {
    let statements = Statements::new()
        .then(
            transition_sql(),
            transition_values(payment_id, from, to, change, now),
        )
        .then(ACCOUNT_BALANCE, vec![payment_id.into(), account.into()]);
    let answers = tx.run_together(statements).await?;
    let (balance,): (Option<i64>,) = answers[1]
        .first()?
        .ok_or(DbError::Query(sqlx::Error::RowNotFound))?;
    Ok((answers[0].first()?, balance.unwrap_or(0)))
}

/// [`transition`]'s statement.
fn transition_sql() -> String {
    format!(
        "UPDATE payments SET state = $3, \
               captured_minor = captured_minor + $4, \
               capture_request_minor = COALESCE($5, capture_request_minor), \
               refunded_minor = refunded_minor + $6, \
               refund_pending_minor = refund_pending_minor + $7, \
               decline_code = COALESCE($8, decline_code), \
               processor_reference = COALESCE($9, processor_reference), \
               card_last4 = COALESCE($10, card_last4), \
               updated_at = $11 \
         WHERE payment_id = $1 AND state = $2 \
           AND refunded_minor + refund_pending_minor + $6 + $7 <= captured_minor + $4 \
         RETURNING {PAYMENT_COLUMNS}"
    )
}

/// [`transition_sql`]'s values.
fn transition_values(
    payment_id: &str,
    from: &str,
    to: &str,
    change: &Change,
    now: i64,
) -> Vec<Value> {
    vec![
        payment_id.into(),
        from.into(),
        to.into(),
        change.captured_delta.into(),
        change.capture_request.into(),
        change.refunded_delta.into(),
        change.refund_pending_delta.into(),
        change.decline_code.as_deref().into(),
        change.processor_reference.as_deref().into(),
        change.card_last4.as_deref().into(),
        now.into(),
    ]
}

/// What a transition changes besides the state.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Added to captured.
    pub captured_delta: i64,
    /// Sets the capture in flight.
    pub capture_request: Option<i64>,
    /// Added to refunded.
    pub refunded_delta: i64,
    /// Added to refunds in flight (negative to settle them).
    pub refund_pending_delta: i64,
    /// Sets the decline code.
    pub decline_code: Option<String>,
    /// Sets the processor reference.
    pub processor_reference: Option<String>,
    /// Sets the card's last four digits.
    pub card_last4: Option<String>,
}

/// Inserts the entries of one ledger transaction in one statement, as the last write of a
/// request whose key is stored next ([`Tx::write_last`]: on SQLite one hand-off with the
/// key's).
pub async fn insert_entries(tx: &mut Tx, entries: &[EntryRow]) -> Result<(), DbError> {
    if entries.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO ledger_entries ({ENTRY_COLUMNS}) VALUES {}",
        values_list(tx.backend(), entries.len(), 10)
    );
    let values = entries
        .iter()
        .flat_map(|e| {
            [
                e.entry_id.as_str().into(),
                e.transaction_id.as_str().into(),
                e.payment_id.as_str().into(),
                e.checkout_id.as_str().into(),
                e.account.as_str().into(),
                e.direction.as_str().into(),
                e.amount_minor.into(),
                e.currency_code.as_str().into(),
                e.description.as_str().into(),
                e.created_at.into(),
            ]
        })
        .collect();
    tx.write_last(sql, values).await
}

/// A payment's ledger entries after `after_entry`, oldest first.
pub async fn entries_of_payment(
    tx: &mut Tx,
    payment_id: &str,
    after_entry: &str,
    limit: i64,
) -> Result<Vec<EntryRow>, DbError> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE payment_id = $1 AND entry_id > $2 \
         ORDER BY entry_id LIMIT $3"
    );
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql)
            .bind(payment_id)
            .bind(after_entry)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
    }))
}

/// A checkout's ledger entries after `after_entry`, oldest first.
pub async fn entries_of_checkout(
    tx: &mut Tx,
    checkout_id: &str,
    after_entry: &str,
    limit: i64,
) -> Result<Vec<EntryRow>, DbError> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE checkout_id = $1 AND entry_id > $2 \
         ORDER BY entry_id LIMIT $3"
    );
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql)
            .bind(checkout_id)
            .bind(after_entry)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
    }))
}

/// Every ledger entry (for reconciliation).
pub async fn all_entries(tx: &mut Tx) -> Result<Vec<EntryRow>, DbError> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries ORDER BY entry_id");
    Ok(on_backend!(tx, conn => sqlx::query_as(&sql).fetch_all(&mut *conn).await?))
}

/// The net balance (credits minus debits) of one account (`$2`) for one payment (`$1`).
const ACCOUNT_BALANCE: &str = "SELECT CAST(SUM(CASE direction WHEN 'credit' THEN amount_minor \
     ELSE -amount_minor END) AS BIGINT) FROM ledger_entries WHERE payment_id = $1 AND account = $2";

/// The statement of [`processor_books`]: two index lookups joined, not one `OR`. A connection
/// caches a generic plan after a statement's first runs; for the `OR`, made while the table was
/// young, that plan could be a sequential scan, kept as the table grew (0.25 ms a lookup at
/// c=1 against 0.09 ms now).
pub(crate) fn processor_books_sql() -> String {
    format!(
        "SELECT {PROCESSOR_COLUMNS} FROM processor_records WHERE processor_key = $1 \
         UNION \
         SELECT {PROCESSOR_COLUMNS} FROM processor_records WHERE authorization_key = $2 \
         ORDER BY created_at, processor_key"
    )
}

/// The processor's records a call needs, in one statement: those under the call's own key and
/// those about its authorization.
pub async fn processor_books(
    tx: &mut Tx,
    processor_key: &str,
    authorization_key: &str,
) -> Result<Vec<ProcessorRow>, DbError> {
    let sql = processor_books_sql();
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql)
            .bind(processor_key)
            .bind(authorization_key)
            .fetch_all(&mut *conn)
            .await?
    }))
}

/// The processor's record of one operation under one key.
pub async fn processor_record(
    tx: &mut Tx,
    processor_key: &str,
    operation: &str,
) -> Result<Option<ProcessorRow>, DbError> {
    let sql = format!(
        "SELECT {PROCESSOR_COLUMNS} FROM processor_records \
         WHERE processor_key = $1 AND operation = $2"
    );
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql)
            .bind(processor_key)
            .bind(operation)
            .fetch_optional(&mut *conn)
            .await?
    }))
}

/// Every processor record (for reconciliation).
pub async fn all_processor_records(tx: &mut Tx) -> Result<Vec<ProcessorRow>, DbError> {
    let sql = format!(
        "SELECT {PROCESSOR_COLUMNS} FROM processor_records ORDER BY created_at, processor_key"
    );
    Ok(on_backend!(tx, conn => sqlx::query_as(&sql).fetch_all(&mut *conn).await?))
}

/// Writes a processor record unless one exists for the key and operation; false when one did.
pub async fn insert_processor_record(tx: &mut Tx, r: &ProcessorRow) -> Result<bool, DbError> {
    let sql = format!(
        "INSERT INTO processor_records ({PROCESSOR_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (processor_key, operation) DO NOTHING"
    );
    let n = on_backend!(tx, conn => {
        sqlx::query(&sql)
            .bind(&r.processor_key)
            .bind(&r.operation)
            .bind(&r.outcome)
            .bind(&r.reference)
            .bind(&r.authorization_key)
            .bind(r.amount_minor)
            .bind(&r.currency_code)
            .bind(&r.decline_code)
            .bind(r.created_at)
            .execute(&mut *conn)
            .await?
            .rows_affected()
    });
    Ok(n == 1)
}
