//! Payment use cases. Each call to the processor sits between two recorded points (DESIGN §5):
//! the intent is committed with a recovery point before the call, and the processor's answer is
//! recorded with the state change and its ledger entries after it. A crash or a lost answer in
//! between resumes at the recovery point with the same processor-side key, so nothing is
//! charged twice.

use checkout_kit::db::timestamp;
use std::sync::Arc;

use checkout_kit::db::{Answer, Db, Statements, Tx, now_millis};
use checkout_kit::idempotency::{Execution, Idempotency, Key, STARTED, Started, is_final};
use checkout_proto::common::Money;
use checkout_proto::payment::{
    AuthorizePaymentResponse, CapturePaymentResponse, Payment, RefundPaymentResponse,
    VoidPaymentResponse,
};
use prost::Message;
use tonic::Status;

use crate::error::PaymentError;
use crate::ledger;
use crate::processor::{PaymentProcessor, ProcessorError};
use crate::state::State;
use crate::storage::{self, Change, PaymentRow};

/// How a payment is named in a request.
#[derive(Debug, Clone)]
pub enum Target {
    /// By payment id.
    Payment(String),
    /// By checkout.
    Checkout(String),
}

/// Recovery point: the intent is recorded, the processor may have been called. A request's
/// payment is found again by its target.
const REQUESTED: &str = "processor_requested";

fn state_of(row: &PaymentRow) -> State {
    State::parse(&row.state).unwrap_or(State::Failed)
}

/// The payment as the RPCs return it (never the token).
pub fn to_proto(row: &PaymentRow) -> Payment {
    let money = |amount_minor| {
        Some(Money {
            amount_minor,
            currency_code: row.currency_code.clone(),
        })
    };
    Payment {
        payment_id: row.payment_id.clone(),
        checkout_id: row.checkout_id.clone(),
        customer_id: row.customer_id.clone(),
        state: state_of(row).to_proto().into(),
        authorized_amount: money(row.authorized_minor),
        captured_amount: money(row.captured_minor),
        refunded_amount: money(row.refunded_minor),
        decline_code: row.decline_code.clone(),
        processor_reference: row.processor_reference.clone(),
        card_last4: row.card_last4.clone(),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

/// Counts a processor call by operation and result.
fn count_call<T>(operation: &'static str, outcome: &Result<T, ProcessorError>) {
    static CALLS: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    let calls = CALLS.get_or_init(|| {
        checkout_kit::telemetry::meter()
            .u64_counter("payment.processor.calls")
            .with_description("processor calls by operation and result")
            .build()
    });
    let result = match outcome {
        Ok(_) => "approved",
        Err(ProcessorError::Declined(_)) => "declined",
        Err(ProcessorError::Timeout) => "timeout",
        Err(ProcessorError::ResponseLost) => "response_lost",
        Err(ProcessorError::Unavailable(_)) => "unavailable",
    };
    calls.add(
        1,
        &[
            opentelemetry::KeyValue::new("operation", operation),
            opentelemetry::KeyValue::new("result", result),
        ],
    );
}

fn processor_failure(e: ProcessorError) -> PaymentError {
    match e {
        ProcessorError::Declined(code) => PaymentError::Declined(code),
        ProcessorError::Timeout | ProcessorError::ResponseLost | ProcessorError::Unavailable(_) => {
            PaymentError::ProcessorUnavailable(e.to_string())
        }
    }
}

fn illegal(action: &'static str, row: &PaymentRow) -> PaymentError {
    PaymentError::IllegalTransition {
        action,
        state: row.state.clone(),
    }
}

/// Finds a payment by id or checkout.
pub async fn find(tx: &mut Tx, target: &Target) -> Result<Option<PaymentRow>, PaymentError> {
    Ok(match target {
        Target::Payment(id) => storage::payment(tx, id).await?,
        Target::Checkout(id) => storage::payment_by_checkout(tx, id).await?,
    })
}

/// The statement reading a payment by id or checkout, to send with a claim.
fn read(target: &Target) -> Statements {
    match target {
        Target::Payment(id) => storage::read_payment(storage::By::Id, id),
        Target::Checkout(id) => storage::read_payment(storage::By::Checkout, id),
    }
}

/// The payment [`read`] found, when it went with the claim; else found now.
async fn found(
    tx: &mut Tx,
    target: &Target,
    answers: Option<Vec<Answer>>,
) -> Result<Option<PaymentRow>, PaymentError> {
    match answers {
        Some(answers) => Ok(answers[0].first()?),
        None => find(tx, target).await,
    }
}

/// Moves the payment from `from` to `to` and reads the hold then outstanding, which the
/// transition's ledger posting releases ([`storage::transition_reading_balance`]).
async fn releasing_hold(
    tx: &mut Tx,
    row: &PaymentRow,
    from: &str,
    to: &str,
    change: &Change,
    now: i64,
) -> Result<(Option<PaymentRow>, i64), PaymentError> {
    let account = ledger::HOLDS_OUTSTANDING;
    let moved =
        storage::transition_reading_balance(tx, &row.payment_id, from, to, change, now, account);
    Ok(moved.await?)
}

async fn reload(tx: &mut Tx, payment_id: &str) -> Result<PaymentRow, PaymentError> {
    storage::payment(tx, payment_id)
        .await?
        .ok_or(PaymentError::NotFound)
}

/// The payment as a transition left it; read again only when the transition did not apply (a
/// concurrent request moved the payment first).
async fn after(
    tx: &mut Tx,
    moved: Option<PaymentRow>,
    payment_id: &str,
) -> Result<PaymentRow, PaymentError> {
    match moved {
        Some(row) => Ok(row),
        None => reload(tx, payment_id).await,
    }
}

/// The use cases over one database, one idempotency layer and one processor.
#[derive(Debug, Clone)]
pub struct Payments {
    db: Db,
    idempotency: Idempotency,
    processor: Arc<dyn PaymentProcessor>,
}

/// Where a started request goes next.
enum Next<T> {
    /// Answered already (replayed, or decided without the processor).
    Done(Result<T, Status>),
    /// Call the processor for this payment.
    Call(Execution<T>, Box<PaymentRow>),
}

impl Payments {
    /// Use cases over a migrated database.
    pub fn new(db: Db, idempotency: Idempotency, processor: Arc<dyn PaymentProcessor>) -> Self {
        Self {
            db,
            idempotency,
            processor,
        }
    }

    /// The processor the payments are made through.
    pub fn processor(&self) -> &Arc<dyn PaymentProcessor> {
        &self.processor
    }

    async fn begin(&self) -> Result<Tx, Status> {
        self.db
            .begin()
            .await
            .map_err(|e| PaymentError::Db(e).into())
    }

    /// Claims the request and runs `decide` once, before any processor call: it either answers
    /// at once or returns the payment (of `target`) to call the processor for. `first` goes with
    /// a new key's claim ([`Idempotency::start_with`]) and `decide` gets its answers; a key
    /// seen before gives none, and `decide` runs those statements itself. The claim is made
    /// at the recovery point [`REQUESTED`], so when `decide` moves the payment the claim, the
    /// move and the recovery point are one write with no checkpoint of their own; when it
    /// answers, the answer is stored in the same transaction; when it fails transiently, the
    /// claim is rolled back with the rest. A resumed request skips straight to the call.
    async fn prepare<T, F>(
        &self,
        key: Key,
        target: &Target,
        first: Statements,
        decide: F,
    ) -> Result<Next<T>, Status>
    where
        T: Message + Default,
        F: for<'t> AsyncFnOnce(
            &'t mut Tx,
            Option<Vec<Answer>>,
        ) -> Result<Result<PaymentRow, T>, PaymentError>,
    {
        let (started, answers) = self
            .idempotency
            .start_with::<T>(key, REQUESTED, first)
            .await?;
        let (mut exec, mut tx) = match started {
            Started::Replay(answer) => return Ok(Next::Done(answer)),
            Started::Run(exec, tx) => (exec, tx),
        };
        if exec.resumed() && exec.recovery_point() != STARTED {
            // Holders before the claim carried the point recorded the payment id with it.
            let row = match exec.recovery_data() {
                Some(id) => reload(&mut tx, &String::from_utf8_lossy(id)).await?,
                None => find(&mut tx, target).await?.ok_or(PaymentError::NotFound)?,
            };
            // Commits the takeover of the claim.
            tx.commit()
                .await
                .map_err(|e| Status::from(PaymentError::Db(e)))?;
            return Ok(Next::Call(exec, Box::new(row)));
        }
        match decide(&mut tx, answers).await {
            Ok(Ok(row)) => {
                if exec.resumed() {
                    // Taken over from a holder that stopped before its intent.
                    exec.checkpoint(&mut tx, REQUESTED, None).await?;
                }
                tx.commit()
                    .await
                    .map_err(|e| Status::from(PaymentError::Db(e)))?;
                Ok(Next::Call(exec, Box::new(row)))
            }
            Ok(Err(answer)) => Ok(Next::Done(exec.finish(tx, Ok(answer)).await)),
            Err(e) => {
                let status = Status::from(e);
                if is_final(status.code()) {
                    return Ok(Next::Done(exec.finish(tx, Err(status)).await));
                }
                // The claim says REQUESTED: it must not outlive a move that did not happen.
                tx.rollback()
                    .await
                    .map_err(|e| Status::from(PaymentError::Db(e)))?;
                Err(status)
            }
        }
    }

    /// Records the processor's answer: `record` makes the state change and its ledger entries
    /// in the same transaction that stores the request's answer.
    async fn settle<T, F>(&self, exec: Execution<T>, record: F) -> Result<T, Status>
    where
        T: Message + Default,
        F: for<'t> AsyncFnOnce(&'t mut Tx) -> Result<T, PaymentError>,
    {
        let mut tx = self.begin().await?;
        let result = record(&mut tx).await.map_err(Status::from);
        exec.finish(tx, result).await
    }

    /// AuthorizePayment: records a pending payment, asks the processor, records its answer.
    pub async fn authorize(
        &self,
        key: Key,
        checkout_id: &str,
        customer_id: &str,
        amount: &Money,
        token: &str,
    ) -> Result<AuthorizePaymentResponse, Status> {
        let processor_key = key.external_key();
        let respond = |row: &PaymentRow| AuthorizePaymentResponse {
            payment: Some(to_proto(row)),
        };
        let now = now_millis();
        let row = PaymentRow {
            payment_id: uuid::Uuid::now_v7().to_string(),
            checkout_id: checkout_id.to_owned(),
            customer_id: customer_id.to_owned(),
            state: State::Pending.as_str().to_owned(),
            currency_code: amount.currency_code.clone(),
            authorized_minor: amount.amount_minor,
            captured_minor: 0,
            capture_request_minor: 0,
            refunded_minor: 0,
            refund_pending_minor: 0,
            decline_code: String::new(),
            processor_reference: String::new(),
            processor_key: processor_key.clone(),
            card_last4: String::new(),
            created_at: now,
            updated_at: now,
        };
        let next = self
            .prepare(
                key,
                &Target::Checkout(checkout_id.to_owned()),
                storage::insert_payment_statement(&row),
                async |tx: &mut Tx, answers: Option<Vec<Answer>>| {
                    let inserted = match answers {
                        Some(answers) => answers[0].rows_affected() == 1,
                        None => storage::insert_payment(tx, &row).await?,
                    };
                    if inserted {
                        return Ok(Ok(row));
                    }
                    let existing = storage::payment_by_checkout(tx, checkout_id)
                        .await?
                        .ok_or(PaymentError::NotFound)?;
                    match state_of(&existing) {
                        State::Tombstone => {
                            Err(PaymentError::CheckoutVoided(checkout_id.to_owned()))
                        }
                        _ if existing.authorized_minor == amount.amount_minor
                            && existing.currency_code == amount.currency_code
                            && existing.customer_id == customer_id =>
                        {
                            // Another request of the same checkout made it: answer with it.
                            Ok(Err(respond(&existing)))
                        }
                        _ => Err(PaymentError::PaymentExists(checkout_id.to_owned())),
                    }
                },
            )
            .await?;
        let (exec, row) = match next {
            Next::Done(answer) => return answer,
            Next::Call(exec, row) => (exec, *row),
        };
        let outcome = self
            .processor
            .authorize(
                &row.processor_key,
                token,
                row.authorized_minor,
                &row.currency_code,
            )
            .await;
        count_call("authorize", &outcome);
        self.settle(exec, async |tx: &mut Tx| {
            let now = now_millis();
            let pending = State::Pending.as_str();
            let moved = match outcome {
                Ok(approval) => {
                    let change = Change {
                        processor_reference: Some(approval.reference),
                        card_last4: Some(approval.card_last4),
                        ..Change::default()
                    };
                    let to = State::Authorized.as_str();
                    let moved =
                        storage::transition(tx, &row.payment_id, pending, to, &change, now).await?;
                    if moved.is_some() {
                        ledger::hold(tx, &row, row.authorized_minor).await?;
                    }
                    moved
                }
                Err(ProcessorError::Declined(code)) => {
                    let change = Change {
                        decline_code: Some(code),
                        ..Change::default()
                    };
                    let to = State::Declined.as_str();
                    storage::transition(tx, &row.payment_id, pending, to, &change, now).await?
                }
                Err(e) => return Err(processor_failure(e)),
            };
            let row = after(tx, moved, &row.payment_id).await?;
            match state_of(&row) {
                State::Authorized
                | State::Capturing
                | State::Captured
                | State::PartiallyRefunded
                | State::Refunded => Ok(respond(&row)),
                State::Declined => Err(PaymentError::Declined(row.decline_code.clone())),
                State::Voiding | State::Voided | State::Tombstone => {
                    Err(PaymentError::CheckoutVoided(row.checkout_id.clone()))
                }
                State::Pending | State::Failed => Err(illegal("authorize", &row)),
            }
        })
        .await
    }

    /// CapturePayment: full (`amount` unset) or partial, at most the authorized amount.
    pub async fn capture(
        &self,
        key: Key,
        target: &Target,
        amount: Option<&Money>,
    ) -> Result<CapturePaymentResponse, Status> {
        let respond = |row: &PaymentRow| CapturePaymentResponse {
            payment: Some(to_proto(row)),
        };
        let next = self
            .prepare(key, target, read(target), async |tx: &mut Tx, answers| {
                let row = found(tx, target, answers)
                    .await?
                    .ok_or(PaymentError::NotFound)?;
                if let Some(m) = amount
                    && m.currency_code != row.currency_code
                {
                    return Err(checkout_kit::status::Rejection::invalid_field(
                        "amount.currency_code",
                        format!("the payment is in {}", row.currency_code),
                    )
                    .into());
                }
                let wanted = amount.map_or(row.authorized_minor, |m| m.amount_minor);
                match state_of(&row) {
                    State::Authorized => {
                        if wanted > row.authorized_minor {
                            return Err(PaymentError::AmountExceeds("authorized"));
                        }
                        let change = Change {
                            capture_request: Some(wanted),
                            ..Change::default()
                        };
                        let moved = storage::transition(
                            tx,
                            &row.payment_id,
                            State::Authorized.as_str(),
                            State::Capturing.as_str(),
                            &change,
                            now_millis(),
                        )
                        .await?;
                        match moved {
                            Some(capturing) => Ok(Ok(capturing)),
                            None => Err(illegal("capture", &reload(tx, &row.payment_id).await?)),
                        }
                    }
                    // Another request started this capture and stopped; finish it.
                    State::Capturing if wanted == row.capture_request_minor => Ok(Ok(row)),
                    State::Captured | State::PartiallyRefunded | State::Refunded
                        if wanted == row.captured_minor =>
                    {
                        Ok(Err(respond(&row)))
                    }
                    _ => Err(illegal("capture", &row)),
                }
            })
            .await?;
        let (exec, row) = match next {
            Next::Done(answer) => return answer,
            Next::Call(exec, row) => (exec, *row),
        };
        let capture_key = format!("{}:capture", row.payment_id);
        let outcome = self
            .processor
            .capture(&capture_key, &row.processor_key, row.capture_request_minor)
            .await;
        count_call("capture", &outcome);
        self.settle(exec, async |tx: &mut Tx| {
            let now = now_millis();
            let capturing = State::Capturing.as_str();
            let moved = match outcome {
                Ok(_) => {
                    let change = Change {
                        captured_delta: row.capture_request_minor,
                        ..Change::default()
                    };
                    let to = State::Captured.as_str();
                    let (moved, outstanding) =
                        releasing_hold(tx, &row, capturing, to, &change, now).await?;
                    if moved.is_some() {
                        ledger::capture(tx, &row, row.capture_request_minor, outstanding).await?;
                    }
                    moved
                }
                Err(ProcessorError::Declined(code)) => {
                    let change = Change {
                        decline_code: Some(code.clone()),
                        ..Change::default()
                    };
                    let to = State::Failed.as_str();
                    let (moved, outstanding) =
                        releasing_hold(tx, &row, capturing, to, &change, now).await?;
                    if moved.is_some() {
                        ledger::release_hold(tx, &row, outstanding).await?;
                    }
                    return Err(PaymentError::Declined(code));
                }
                Err(e) => return Err(processor_failure(e)),
            };
            let row = after(tx, moved, &row.payment_id).await?;
            match state_of(&row) {
                State::Captured | State::PartiallyRefunded | State::Refunded => Ok(respond(&row)),
                _ => Err(illegal("capture", &row)),
            }
        })
        .await
    }

    /// VoidPayment: releases the authorization before capture. Before any authorization (by
    /// checkout) it records a tombstone, so a late authorization charges nothing.
    pub async fn void(&self, key: Key, target: &Target) -> Result<VoidPaymentResponse, Status> {
        let respond = |row: &PaymentRow| VoidPaymentResponse {
            payment: Some(to_proto(row)),
        };
        let next = self
            .prepare(key, target, read(target), async |tx: &mut Tx, answers| {
                let row = match found(tx, target, answers).await? {
                    Some(row) => row,
                    None => {
                        let Target::Checkout(checkout_id) = target else {
                            return Err(PaymentError::NotFound);
                        };
                        let now = now_millis();
                        let tombstone = PaymentRow {
                            payment_id: uuid::Uuid::now_v7().to_string(),
                            checkout_id: checkout_id.clone(),
                            customer_id: String::new(),
                            state: State::Tombstone.as_str().to_owned(),
                            currency_code: String::new(),
                            authorized_minor: 0,
                            captured_minor: 0,
                            capture_request_minor: 0,
                            refunded_minor: 0,
                            refund_pending_minor: 0,
                            decline_code: String::new(),
                            processor_reference: String::new(),
                            processor_key: String::new(),
                            card_last4: String::new(),
                            created_at: now,
                            updated_at: now,
                        };
                        if storage::insert_payment(tx, &tombstone).await? {
                            return Ok(Err(respond(&tombstone)));
                        }
                        // An authorization raced in: void that instead.
                        storage::payment_by_checkout(tx, checkout_id)
                            .await?
                            .ok_or(PaymentError::NotFound)?
                    }
                };
                let from = state_of(&row);
                match from {
                    State::Pending | State::Authorized => {
                        let moved = storage::transition(
                            tx,
                            &row.payment_id,
                            from.as_str(),
                            State::Voiding.as_str(),
                            &Change::default(),
                            now_millis(),
                        )
                        .await?;
                        match moved {
                            Some(voiding) => Ok(Ok(voiding)),
                            None => Err(illegal("void", &reload(tx, &row.payment_id).await?)),
                        }
                    }
                    State::Voiding => Ok(Ok(row)),
                    // Nothing is held: the compensation has nothing left to undo.
                    State::Voided | State::Declined | State::Failed | State::Tombstone => {
                        Ok(Err(respond(&row)))
                    }
                    State::Capturing
                    | State::Captured
                    | State::PartiallyRefunded
                    | State::Refunded => Err(illegal("void", &row)),
                }
            })
            .await?;
        let (exec, row) = match next {
            Next::Done(answer) => return answer,
            Next::Call(exec, row) => (exec, *row),
        };
        let outcome = self.processor.void(&row.processor_key).await;
        count_call("void", &outcome);
        self.settle(exec, async |tx: &mut Tx| {
            let moved = match outcome {
                Ok(()) => {
                    let voiding = State::Voiding.as_str();
                    let to = State::Voided.as_str();
                    let (moved, outstanding) =
                        releasing_hold(tx, &row, voiding, to, &Change::default(), now_millis())
                            .await?;
                    if moved.is_some() {
                        ledger::release_hold(tx, &row, outstanding).await?;
                    }
                    moved
                }
                Err(e) => return Err(processor_failure(e)),
            };
            let row = after(tx, moved, &row.payment_id).await?;
            match state_of(&row) {
                State::Voided => Ok(respond(&row)),
                _ => Err(illegal("void", &row)),
            }
        })
        .await
    }

    /// RefundPayment: part or all of what was captured, never more in total.
    pub async fn refund(
        &self,
        key: Key,
        target: &Target,
        amount: &Money,
    ) -> Result<RefundPaymentResponse, Status> {
        let refund_key = key.external_key();
        let respond = |row: &PaymentRow| RefundPaymentResponse {
            payment: Some(to_proto(row)),
        };
        let next = self
            .prepare(key, target, read(target), async |tx: &mut Tx, answers| {
                let row = found(tx, target, answers)
                    .await?
                    .ok_or(PaymentError::NotFound)?;
                if amount.currency_code != row.currency_code {
                    return Err(checkout_kit::status::Rejection::invalid_field(
                        "amount.currency_code",
                        format!("the payment is in {}", row.currency_code),
                    )
                    .into());
                }
                let from = state_of(&row);
                if !matches!(from, State::Captured | State::PartiallyRefunded) {
                    return Err(illegal("refund", &row));
                }
                // Reserve the amount first, so concurrent refunds can never exceed the capture.
                let change = Change {
                    refund_pending_delta: amount.amount_minor,
                    ..Change::default()
                };
                let reserved = storage::transition(
                    tx,
                    &row.payment_id,
                    from.as_str(),
                    from.as_str(),
                    &change,
                    now_millis(),
                )
                .await?;
                reserved
                    .map(Ok)
                    .ok_or(PaymentError::AmountExceeds("captured"))
            })
            .await?;
        let (exec, row) = match next {
            Next::Done(answer) => return answer,
            Next::Call(exec, row) => (exec, *row),
        };
        let outcome = self
            .processor
            .refund(&refund_key, &row.processor_key, amount.amount_minor)
            .await;
        count_call("refund", &outcome);
        self.settle(exec, async |tx: &mut Tx| {
            let row = reload(tx, &row.payment_id).await?;
            let from = state_of(&row);
            let approved = match outcome {
                Ok(_) => true,
                Err(ProcessorError::Declined(_)) => false,
                Err(e) => return Err(processor_failure(e)),
            };
            let refunded = row.refunded_minor + if approved { amount.amount_minor } else { 0 };
            let to = if refunded == row.captured_minor {
                State::Refunded
            } else if refunded > 0 {
                State::PartiallyRefunded
            } else {
                from
            };
            let change = Change {
                refund_pending_delta: -amount.amount_minor,
                refunded_delta: if approved { amount.amount_minor } else { 0 },
                ..Change::default()
            };
            let moved = storage::transition(
                tx,
                &row.payment_id,
                from.as_str(),
                to.as_str(),
                &change,
                now_millis(),
            )
            .await?;
            if moved.is_some() && approved {
                ledger::refund(tx, &row, amount.amount_minor).await?;
            }
            if !approved {
                return Err(PaymentError::Declined("refund_declined".to_owned()));
            }
            Ok(respond(&after(tx, moved, &row.payment_id).await?))
        })
        .await
    }
}
