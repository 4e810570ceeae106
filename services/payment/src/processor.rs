//! The payment processor: a trait a real adapter implements, and the simulated processor used
//! here, which keeps its own books and is idempotent on the caller's processor-side key.

use checkout_kit::db::{Db, DbError, Tx, now_millis};

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

/// Writes a record in its own transaction (the processor's books are not the payment
/// service's), or returns the one already stored for the key.
async fn book(db: &Db, row: ProcessorRow) -> Result<(ProcessorRow, bool), ProcessorError> {
    let mut tx = db.begin().await?;
    let fresh = storage::insert_processor_record(&mut tx, &row).await?;
    let stored = storage::processor_record(&mut tx, &row.processor_key, &row.operation)
        .await?
        .ok_or_else(|| ProcessorError::Unavailable("record vanished".to_owned()))?;
    tx.commit().await?;
    Ok((stored, fresh))
}

async fn authorization(tx: &mut Tx, key: &str) -> Result<Option<ProcessorRow>, ProcessorError> {
    Ok(storage::processor_record(tx, key, "authorize")
        .await?
        .filter(|r| r.outcome == "approved"))
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
        let mut tx = self.db.begin_read().await?;
        let existing = storage::processor_record(&mut tx, key, "authorize").await?;
        let voided = storage::processor_record(&mut tx, key, "void")
            .await?
            .is_some();
        tx.rollback().await?;
        if let Some(row) = existing {
            return answer(&row, "4242");
        }
        if voided {
            return Err(ProcessorError::Declined("authorization_voided".to_owned()));
        }
        let decline = match token {
            tokens::VISA | tokens::RESPONSE_LOST => None,
            tokens::DECLINED => Some("card_declined"),
            tokens::INSUFFICIENT_FUNDS => Some("insufficient_funds"),
            tokens::TIMEOUT => return Err(ProcessorError::Timeout),
            _ => Some("invalid_token"),
        };
        let (row, fresh) = book(
            &self.db,
            record(key, "authorize", key, amount_minor, currency, decline),
        )
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
        let mut tx = self.db.begin_read().await?;
        let existing = storage::processor_record(&mut tx, key, "capture").await?;
        let auth = authorization(&mut tx, authorization_key).await?;
        let voided = storage::processor_record(&mut tx, authorization_key, "void")
            .await?
            .is_some();
        tx.rollback().await?;
        if let Some(row) = existing {
            return answer(&row, "");
        }
        let decline = match &auth {
            None => Some("authorization_not_found"),
            Some(_) if voided => Some("authorization_voided"),
            Some(a) if amount_minor > a.amount_minor => Some("amount_exceeds_authorization"),
            Some(_) => None,
        };
        let currency = auth.map(|a| a.currency_code).unwrap_or_default();
        let row = record(
            key,
            "capture",
            authorization_key,
            amount_minor,
            &currency,
            decline,
        );
        let (row, _) = book(&self.db, row).await?;
        answer(&row, "")
    }

    async fn void(&self, authorization_key: &str) -> Result<(), ProcessorError> {
        let mut tx = self.db.begin_read().await?;
        let captured = storage::processor_records_of(&mut tx, authorization_key)
            .await?
            .into_iter()
            .any(|r| r.operation == "capture" && r.outcome == "approved");
        let auth = authorization(&mut tx, authorization_key).await?;
        tx.rollback().await?;
        if captured {
            return Err(ProcessorError::Declined("already_captured".to_owned()));
        }
        let (amount, currency) =
            auth.map_or((0, String::new()), |a| (a.amount_minor, a.currency_code));
        book(
            &self.db,
            record(
                authorization_key,
                "void",
                authorization_key,
                amount,
                &currency,
                None,
            ),
        )
        .await?;
        Ok(())
    }

    async fn refund(
        &self,
        key: &str,
        authorization_key: &str,
        amount_minor: i64,
    ) -> Result<Approval, ProcessorError> {
        let mut tx = self.db.begin_read().await?;
        let existing = storage::processor_record(&mut tx, key, "refund").await?;
        let books = storage::processor_records_of(&mut tx, authorization_key).await?;
        tx.rollback().await?;
        if let Some(row) = existing {
            return answer(&row, "");
        }
        let approved = |op: &str| -> i64 {
            books
                .iter()
                .filter(|r| r.operation == op && r.outcome == "approved")
                .map(|r| r.amount_minor)
                .sum()
        };
        let refundable = approved("capture") - approved("refund");
        let decline = (amount_minor > refundable).then_some("amount_exceeds_capture");
        let currency = books
            .first()
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
        let (row, _) = book(&self.db, row).await?;
        answer(&row, "")
    }

    async fn records(&self) -> Result<Vec<ProcessorRow>, ProcessorError> {
        let mut tx = self.db.begin_read().await?;
        let rows = storage::all_processor_records(&mut tx).await?;
        tx.rollback().await?;
        Ok(rows)
    }
}
