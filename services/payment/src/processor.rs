//! The payment processor: a trait a real adapter implements, and the simulated processor used
//! here, which keeps its own books and is idempotent on the caller's processor-side key.

use checkout_kit::db::{Db, DbError, PoolConfig, Tx, now_millis};

use crate::storage::{self, ProcessorRow};

/// What the processor said yes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The processor's reference.
    pub reference: String,
    /// Last four card digits, for authorizations.
    pub card_last4: String,
}

/// How a processor call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// A final refusal, with the processor's decline code.
    #[error("declined: {0}")]
    Declined(String),
    /// No answer in time; the processor did nothing.
    #[error("the processor timed out")]
    Timeout,
    /// The processor acted but its answer was lost on the way back.
    #[error("the processor's answer was lost")]
    ResponseLost,
    /// The processor could not be reached or failed.
    #[error("the processor is unavailable: {0}")]
    Unavailable(String),
}

impl From<DbError> for ProcessorError {
    fn from(e: DbError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// A payment processor. Every call is idempotent on `key`: the same key gets the first answer.
#[tonic::async_trait]
pub trait PaymentProcessor: Send + Sync + std::fmt::Debug {
    /// Holds an amount on the card the token stands for.
    async fn authorize(
        &self,
        key: &str,
        token: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<Approval, ProcessorError>;
    /// Captures up to the authorized amount.
    async fn capture(
        &self,
        key: &str,
        authorization_key: &str,
        amount_minor: i64,
    ) -> Result<Approval, ProcessorError>;
    /// Releases an authorization; before one exists, refuses any later authorization with
    /// that key.
    async fn void(&self, authorization_key: &str) -> Result<(), ProcessorError>;
    /// Refunds part of what was captured.
    async fn refund(
        &self,
        key: &str,
        authorization_key: &str,
        amount_minor: i64,
    ) -> Result<Approval, ProcessorError>;
    /// Every record of the processor's books, for reconciliation.
    async fn records(&self) -> Result<Vec<ProcessorRow>, ProcessorError>;
}

/// Test tokens, named as Stripe's.
pub mod tokens {
    /// Approved.
    pub const VISA: &str = "tok_visa";
    /// Declined: card_declined.
    pub const DECLINED: &str = "tok_chargeDeclined";
    /// Declined: insufficient_funds.
    pub const INSUFFICIENT_FUNDS: &str = "tok_chargeDeclinedInsufficientFunds";
    /// Times out every time; nothing is charged.
    pub const TIMEOUT: &str = "tok_processorTimeout";
    /// Charged, but the first answer is lost; a retry with the same key gets the charge.
    pub const RESPONSE_LOST: &str = "tok_chargedResponseLost";
}

/// Opens the database the simulated processor keeps its books in, beside a payment database.
/// On SQLite that is a file of its own next to the payment file (`<name>-processor.db`): the
/// processor stands in for an external system, so its writes do not queue behind the payment
/// service's single writer. On Postgres, where writers do not queue, it is the payment
/// database's own `processor_records` table.
pub async fn open_books(payment: &Db, pool: &PoolConfig) -> Result<Db, DbError> {
    let Some(file) = payment.sqlite_file() else {
        return Ok(payment.clone());
    };
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let books = file.with_file_name(format!("{stem}-processor.db"));
    let db = Db::connect(&format!("sqlite://{}", books.display()), pool).await?;
    db.migrate(&crate::MIGRATIONS).await?;
    Ok(db)
}

/// The simulated processor, keeping its books in `processor_records`.
#[derive(Debug, Clone)]
pub struct SimulatedProcessor {
    db: Db,
}

impl SimulatedProcessor {
    /// A processor keeping its books in this database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn reference(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..20]
    )
}

fn record(
    key: &str,
    operation: &str,
    authorization_key: &str,
    amount_minor: i64,
    currency: &str,
    decline: Option<&str>,
) -> ProcessorRow {
    ProcessorRow {
        processor_key: key.to_owned(),
        operation: operation.to_owned(),
        outcome: if decline.is_some() {
            "declined"
        } else {
            "approved"
        }
        .to_owned(),
        reference: reference(match operation {
            "authorize" => "ch",
            "capture" => "cp",
            "refund" => "re",
            _ => "vd",
        }),
        authorization_key: authorization_key.to_owned(),
        amount_minor,
        currency_code: currency.to_owned(),
        decline_code: decline.unwrap_or_default().to_owned(),
        created_at: now_millis(),
    }
}

fn answer(row: &ProcessorRow, card_last4: &str) -> Result<Approval, ProcessorError> {
    if row.outcome == "declined" {
        Err(ProcessorError::Declined(row.decline_code.clone()))
    } else {
        Ok(Approval {
            reference: row.reference.clone(),
            card_last4: card_last4.to_owned(),
        })
    }
}

/// One call to the processor: its books read and its record written in one write transaction
/// of the processor's own database, so what it decides on cannot change before it records.
struct Call {
    tx: Tx,
    books: Books,
}

impl Call {
    /// Opens the transaction and reads what the call needs.
    async fn open(db: &Db, key: &str, authorization_key: &str) -> Result<Self, ProcessorError> {
        let mut tx = db.begin().await?;
        let rows = storage::processor_books(&mut tx, key, authorization_key).await?;
        Ok(Self {
            tx,
            books: Books {
                key: key.to_owned(),
                authorization_key: authorization_key.to_owned(),
                rows,
            },
        })
    }

    /// Ends the call without a record.
    async fn answer<T>(self, result: Result<T, ProcessorError>) -> Result<T, ProcessorError> {
        self.tx.rollback().await?;
        result
    }

    /// Writes the record, or returns the one a concurrent call with the same key stored
    /// first (Postgres writers do not queue); true when this call wrote it.
    async fn book(mut self, row: ProcessorRow) -> Result<(ProcessorRow, bool), ProcessorError> {
        let fresh = storage::insert_processor_record(&mut self.tx, &row).await?;
        let stored = if fresh {
            row
        } else {
            storage::processor_record(&mut self.tx, &row.processor_key, &row.operation)
                .await?
                .ok_or_else(|| ProcessorError::Unavailable("record vanished".to_owned()))?
        };
        self.tx.commit().await?;
        Ok((stored, fresh))
    }
}

/// What the books hold for one call: the records under its own key and about its
/// authorization, read in one statement.
struct Books {
    key: String,
    authorization_key: String,
    rows: Vec<ProcessorRow>,
}

impl Books {
    /// The call's own record of `operation`, if it ran before.
    fn own(&self, operation: &str) -> Option<&ProcessorRow> {
        self.rows
            .iter()
            .find(|r| r.processor_key == self.key && r.operation == operation)
    }

    /// The records about the authorization.
    fn of_authorization(&self) -> impl Iterator<Item = &ProcessorRow> {
        self.rows
            .iter()
            .filter(|r| r.authorization_key == self.authorization_key)
    }

    /// The approved authorization itself.
    fn authorization(&self) -> Option<&ProcessorRow> {
        self.of_authorization().find(|r| {
            r.processor_key == self.authorization_key
                && r.operation == "authorize"
                && r.outcome == "approved"
        })
    }

    /// True once the authorization was voided.
    fn voided(&self) -> bool {
        self.of_authorization()
            .any(|r| r.processor_key == self.authorization_key && r.operation == "void")
    }

    /// The sum of the approved records of `operation` about the authorization.
    fn approved(&self, operation: &str) -> i64 {
        self.of_authorization()
            .filter(|r| r.operation == operation && r.outcome == "approved")
            .map(|r| r.amount_minor)
            .sum()
    }
}

#[tonic::async_trait]
impl PaymentProcessor for SimulatedProcessor {
    async fn authorize(
        &self,
        key: &str,
        token: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<Approval, ProcessorError> {
        let call = Call::open(&self.db, key, key).await?;
        if let Some(row) = call.books.own("authorize") {
            let result = answer(row, "4242");
            return call.answer(result).await;
        }
        if call.books.voided() {
            let voided = ProcessorError::Declined("authorization_voided".to_owned());
            return call.answer(Err(voided)).await;
        }
        let decline = match token {
            tokens::VISA | tokens::RESPONSE_LOST => None,
            tokens::DECLINED => Some("card_declined"),
            tokens::INSUFFICIENT_FUNDS => Some("insufficient_funds"),
            tokens::TIMEOUT => return call.answer(Err(ProcessorError::Timeout)).await,
            _ => Some("invalid_token"),
        };
        let (row, fresh) = call
            .book(record(
                key,
                "authorize",
                key,
                amount_minor,
                currency,
                decline,
            ))
            .await?;
        if fresh && token == tokens::RESPONSE_LOST {
            return Err(ProcessorError::ResponseLost);
        }
        answer(&row, "4242")
    }

    async fn capture(
        &self,
        key: &str,
        authorization_key: &str,
        amount_minor: i64,
    ) -> Result<Approval, ProcessorError> {
        let call = Call::open(&self.db, key, authorization_key).await?;
        if let Some(row) = call.books.own("capture") {
            let result = answer(row, "");
            return call.answer(result).await;
        }
        let auth = call.books.authorization();
        let decline = match auth {
            None => Some("authorization_not_found"),
            Some(_) if call.books.voided() => Some("authorization_voided"),
            Some(a) if amount_minor > a.amount_minor => Some("amount_exceeds_authorization"),
            Some(_) => None,
        };
        let currency = auth.map(|a| a.currency_code.clone()).unwrap_or_default();
        let row = record(
            key,
            "capture",
            authorization_key,
            amount_minor,
            &currency,
            decline,
        );
        let (row, _) = call.book(row).await?;
        answer(&row, "")
    }

    async fn void(&self, authorization_key: &str) -> Result<(), ProcessorError> {
        let call = Call::open(&self.db, authorization_key, authorization_key).await?;
        if call.books.approved("capture") > 0 {
            let captured = ProcessorError::Declined("already_captured".to_owned());
            return call.answer(Err(captured)).await;
        }
        let (amount, currency) = call.books.authorization().map_or((0, String::new()), |a| {
            (a.amount_minor, a.currency_code.clone())
        });
        call.book(record(
            authorization_key,
            "void",
            authorization_key,
            amount,
            &currency,
            None,
        ))
        .await?;
        Ok(())
    }

    async fn refund(
        &self,
        key: &str,
        authorization_key: &str,
        amount_minor: i64,
    ) -> Result<Approval, ProcessorError> {
        let call = Call::open(&self.db, key, authorization_key).await?;
        if let Some(row) = call.books.own("refund") {
            let result = answer(row, "");
            return call.answer(result).await;
        }
        let refundable = call.books.approved("capture") - call.books.approved("refund");
        let decline = (amount_minor > refundable).then_some("amount_exceeds_capture");
        let currency = call
            .books
            .of_authorization()
            .next()
            .map(|r| r.currency_code.clone())
            .unwrap_or_default();
        let row = record(
            key,
            "refund",
            authorization_key,
            amount_minor,
            &currency,
            decline,
        );
        let (row, _) = call.book(row).await?;
        answer(&row, "")
    }

    async fn records(&self) -> Result<Vec<ProcessorRow>, ProcessorError> {
        let mut tx = self.db.begin_read().await?;
        let rows = storage::all_processor_records(&mut tx).await?;
        tx.rollback().await?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use checkout_kit::testing::TestDatabase;

    use super::*;

    fn declined<T: std::fmt::Debug>(result: Result<T, ProcessorError>) -> String {
        match result {
            Err(ProcessorError::Declined(code)) => code,
            other => panic!("expected a decline, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn on_postgres_the_books_are_read_by_index_on_a_young_table() {
        if checkout_kit::testing::backend() != checkout_kit::db::Backend::Postgres {
            return;
        }
        let database = TestDatabase::new("books_plan");
        let db = database.migrated(&crate::MIGRATIONS).await.unwrap();
        // Made on an empty table.
        let sql = storage::processor_books_sql();
        let plan = checkout_kit::testing::generic_plan(&db, &sql, &["'a'", "'b'"])
            .await
            .unwrap();
        assert!(!plan.contains("Seq Scan"), "{plan}");
        db.close().await;
    }

    /// Every decision reads the books: the call's own records (a repeat answers as the first
    /// time did) and its authorization's (what was authorized, captured, refunded, voided).
    #[tokio::test]
    async fn the_books_answer_repeats_and_bound_captures_refunds_and_voids() {
        let database = TestDatabase::new("processor_books");
        let db = database.migrated(&crate::MIGRATIONS).await.unwrap();
        let processor = SimulatedProcessor::new(db.clone());

        let auth = processor
            .authorize("auth-1", tokens::VISA, 500, "EUR")
            .await
            .unwrap();
        let again = processor
            .authorize("auth-1", tokens::VISA, 500, "EUR")
            .await
            .unwrap();
        assert_eq!(auth, again, "a repeated key gets the first answer");

        let over = processor.capture("cap-over", "auth-1", 501).await;
        assert_eq!(declined(over), "amount_exceeds_authorization");
        let missing = processor.capture("cap-none", "auth-none", 1).await;
        assert_eq!(declined(missing), "authorization_not_found");
        let capture = processor.capture("cap-1", "auth-1", 300).await.unwrap();
        let repeat = processor.capture("cap-1", "auth-1", 300).await.unwrap();
        assert_eq!(capture, repeat);

        let refund = processor.refund("ref-over", "auth-1", 301).await;
        assert_eq!(declined(refund), "amount_exceeds_capture");
        processor.refund("ref-1", "auth-1", 200).await.unwrap();
        let refund = processor.refund("ref-2", "auth-1", 101).await;
        assert_eq!(declined(refund), "amount_exceeds_capture");
        processor.refund("ref-3", "auth-1", 100).await.unwrap();

        let void = processor.void("auth-1").await;
        assert_eq!(declined(void), "already_captured");

        // A void before the authorization refuses the authorization when it comes.
        processor.void("auth-2").await.unwrap();
        let late = processor
            .authorize("auth-2", tokens::VISA, 500, "EUR")
            .await;
        assert_eq!(declined(late), "authorization_voided");
        processor
            .authorize("auth-3", tokens::VISA, 500, "EUR")
            .await
            .unwrap();
        processor.void("auth-3").await.unwrap();
        let after_void = processor.capture("cap-3", "auth-3", 100).await;
        assert_eq!(declined(after_void), "authorization_voided");

        let records = processor.records().await.unwrap();
        assert_eq!(records.len(), 12, "{records:#?}");
        db.close().await;
    }
}
