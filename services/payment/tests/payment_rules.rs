//! Every payment rule, through the handlers, on the backend the test run picks.

use std::sync::Arc;
use std::time::Duration;

use checkout_kit::db::{Db, PoolConfig};
use checkout_kit::idempotency::{Idempotency, IdempotencyConfig};
use checkout_kit::on_backend;
use checkout_kit::status::reason_of;
use checkout_kit::testing::{TestDatabase, statement_log};
use checkout_payment::api::PaymentServiceApi;
use checkout_payment::processor::{
    Approval, PaymentProcessor, ProcessorError, SimulatedProcessor, open_books, tokens,
};
use checkout_payment::storage::ProcessorRow;
use checkout_proto::common::Money;
use checkout_proto::payment::payment_service_server::PaymentService;
use checkout_proto::payment::*;
use tonic::{Code, Request, Status};

struct Harness {
    api: PaymentServiceApi,
    db: Db,
    /// The processor's books: their own file beside the payment database on SQLite, the
    /// payment database itself on Postgres.
    books: Db,
    processor: Arc<SimulatedProcessor>,
    _database: TestDatabase,
}

async fn harness_with(config: IdempotencyConfig, hang: bool) -> Harness {
    let database = TestDatabase::new("payment");
    let db = database
        .migrated(&checkout_payment::MIGRATIONS)
        .await
        .unwrap();
    let books = open_books(&db, &PoolConfig::default()).await.unwrap();
    let processor = Arc::new(SimulatedProcessor::new(books.clone()));
    let used: Arc<dyn PaymentProcessor> = if hang {
        Arc::new(HangAfterCall(processor.clone()))
    } else {
        processor.clone()
    };
    let idempotency = Idempotency::new(db.clone(), config);
    Harness {
        api: PaymentServiceApi::new(db.clone(), idempotency, used),
        db,
        books,
        processor,
        _database: database,
    }
}

async fn harness() -> Harness {
    harness_with(IdempotencyConfig::default(), false).await
}

/// A processor whose authorizations and captures take effect and then never answer: the
/// service "crashes" between the processor call and recording its answer.
#[derive(Debug)]
struct HangAfterCall(Arc<SimulatedProcessor>);

#[tonic::async_trait]
impl PaymentProcessor for HangAfterCall {
    async fn authorize(
        &self,
        key: &str,
        token: &str,
        amount: i64,
        currency: &str,
    ) -> Result<Approval, ProcessorError> {
        let _ = self.0.authorize(key, token, amount, currency).await;
        std::future::pending().await
    }
    async fn capture(
        &self,
        key: &str,
        auth: &str,
        amount: i64,
    ) -> Result<Approval, ProcessorError> {
        let _ = self.0.capture(key, auth, amount).await;
        std::future::pending().await
    }
    async fn void(&self, auth: &str) -> Result<(), ProcessorError> {
        self.0.void(auth).await
    }
    async fn refund(&self, key: &str, auth: &str, amount: i64) -> Result<Approval, ProcessorError> {
        self.0.refund(key, auth, amount).await
    }
    async fn records(&self) -> Result<Vec<ProcessorRow>, ProcessorError> {
        self.0.records().await
    }
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn usd(amount_minor: i64) -> Money {
    Money {
        amount_minor,
        currency_code: "USD".to_owned(),
    }
}

fn assert_refused(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status).as_deref(), Some(reason), "{status:?}");
}

fn by_checkout(checkout: &str) -> Option<capture_payment_request::Target> {
    Some(capture_payment_request::Target::CheckoutId(
        checkout.to_owned(),
    ))
}

fn authorize_request(checkout: &str, amount: i64, token: &str) -> AuthorizePaymentRequest {
    AuthorizePaymentRequest {
        request_id: rid(),
        checkout_id: checkout.to_owned(),
        amount: Some(usd(amount)),
        payment_token: token.to_owned(),
        customer_id: "alice".to_owned(),
    }
}

impl Harness {
    async fn send_authorize(&self, req: &AuthorizePaymentRequest) -> Result<Payment, Status> {
        self.api
            .authorize_payment(Request::new(req.clone()))
            .await
            .map(|r| r.into_inner().payment.unwrap())
    }

    async fn authorize(&self, checkout: &str, amount: i64, token: &str) -> Result<Payment, Status> {
        self.send_authorize(&authorize_request(checkout, amount, token))
            .await
    }

    async fn capture(&self, checkout: &str, amount: Option<i64>) -> Result<Payment, Status> {
        self.api
            .capture_payment(Request::new(CapturePaymentRequest {
                request_id: rid(),
                target: by_checkout(checkout),
                amount: amount.map(usd),
            }))
            .await
            .map(|r| r.into_inner().payment.unwrap())
    }

    async fn void(&self, checkout: &str) -> Result<Payment, Status> {
        self.api
            .void_payment(Request::new(VoidPaymentRequest {
                request_id: rid(),
                target: Some(void_payment_request::Target::CheckoutId(
                    checkout.to_owned(),
                )),
            }))
            .await
            .map(|r| r.into_inner().payment.unwrap())
    }

    async fn refund(&self, checkout: &str, amount: i64) -> Result<Payment, Status> {
        self.api
            .refund_payment(Request::new(RefundPaymentRequest {
                request_id: rid(),
                target: Some(refund_payment_request::Target::CheckoutId(
                    checkout.to_owned(),
                )),
                amount: Some(usd(amount)),
                reason: "returned".to_owned(),
            }))
            .await
            .map(|r| r.into_inner().payment.unwrap())
    }

    async fn get(&self, checkout: &str) -> Payment {
        self.api
            .get_payment(Request::new(GetPaymentRequest {
                target: Some(get_payment_request::Target::CheckoutId(checkout.to_owned())),
            }))
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap()
    }

    async fn ledger(&self, checkout: &str) -> Vec<LedgerEntry> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .api
                .list_ledger_entries(Request::new(ListLedgerEntriesRequest {
                    target: Some(list_ledger_entries_request::Target::CheckoutId(
                        checkout.to_owned(),
                    )),
                    page_size: 3,
                    page_token: token,
                }))
                .await
                .unwrap()
                .into_inner();
            all.extend(page.entries);
            if page.next_page_token.is_empty() {
                return all;
            }
            token = page.next_page_token;
        }
    }

    async fn balance(&self, checkout: &str, account: &str) -> i64 {
        self.ledger(checkout)
            .await
            .iter()
            .filter(|e| e.account == account)
            .map(|e| {
                let amount = e.amount.as_ref().unwrap().amount_minor;
                if e.direction() == EntryDirection::Credit {
                    amount
                } else {
                    -amount
                }
            })
            .sum()
    }

    async fn processor_records(&self) -> Vec<ProcessorRow> {
        self.processor.records().await.unwrap()
    }

    async fn reconcile(&self) -> ReconcileResponse {
        self.api
            .reconcile(Request::new(ReconcileRequest {}))
            .await
            .unwrap()
            .into_inner()
    }

    async fn exec(&self, db: &Db, sql: &str) -> bool {
        let mut tx = db.begin().await.unwrap();
        let ok = on_backend!(&mut tx, conn => {
            sqlx::query(sql).execute(&mut *conn).await.is_ok()
        });
        if ok {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        ok
    }
}

#[tokio::test]
async fn an_authorization_holds_the_amount_in_a_balanced_ledger() {
    let h = harness().await;
    let checkout = rid();
    let payment = h.authorize(&checkout, 2500, tokens::VISA).await.unwrap();
    assert_eq!(payment.state(), PaymentState::Authorized);
    assert_eq!(payment.authorized_amount.unwrap().amount_minor, 2500);
    assert_eq!(payment.card_last4, "4242");
    assert!(payment.processor_reference.starts_with("ch_"));
    assert_eq!(h.balance(&checkout, "holds_outstanding").await, 2500);
    assert_eq!(h.get(&checkout).await.payment_id, payment.payment_id);
    assert!(h.reconcile().await.mismatches.is_empty());
}

#[tokio::test]
async fn the_processor_keeps_its_books_apart_from_the_payment_service() {
    let h = harness().await;
    h.authorize(&rid(), 2500, tokens::VISA).await.unwrap();
    let count = |db: Db| async move {
        let mut tx = db.begin_read().await.unwrap();
        let n: i64 = on_backend!(&mut tx, conn => {
            sqlx::query_scalar("SELECT count(*) FROM processor_records")
                .fetch_one(&mut *conn)
                .await
                .unwrap()
        });
        tx.rollback().await.unwrap();
        n
    };
    assert_eq!(count(h.books.clone()).await, 1);
    match h.db.sqlite_file() {
        // A second SQLite writer beside the payment file, as an external processor would be.
        Some(payment) => {
            let books = h.books.sqlite_file().unwrap();
            assert_eq!(books.parent(), payment.parent());
            assert_ne!(books, payment);
            assert_eq!(count(h.db.clone()).await, 0);
        }
        // Postgres writers do not queue: the payment database's own table.
        None => assert_eq!(h.books.describe(), h.db.describe()),
    }
}

#[tokio::test]
async fn each_decline_token_is_refused_with_its_code() {
    let h = harness().await;
    for (token, code) in [
        (tokens::DECLINED, "card_declined"),
        (tokens::INSUFFICIENT_FUNDS, "insufficient_funds"),
        ("tok_madeUp", "invalid_token"),
    ] {
        let checkout = rid();
        let refused = h.authorize(&checkout, 1000, token).await.unwrap_err();
        assert_refused(&refused, Code::FailedPrecondition, "PAYMENT_DECLINED");
        let info = tonic_types::StatusExt::get_details_error_info(&refused).unwrap();
        assert_eq!(info.metadata["decline_code"], code);
        let payment = h.get(&checkout).await;
        assert_eq!(payment.state(), PaymentState::Declined);
        assert_eq!(payment.decline_code, code);
        assert!(
            h.ledger(&checkout).await.is_empty(),
            "a decline moves no money"
        );
    }
}

#[tokio::test]
async fn a_processor_timeout_is_retryable_and_charges_nothing() {
    let h = harness().await;
    let checkout = rid();
    let request = authorize_request(&checkout, 1000, tokens::TIMEOUT);
    for _ in 0..2 {
        let timeout = h.send_authorize(&request).await.unwrap_err();
        assert_refused(&timeout, Code::Unavailable, "PROCESSOR_UNAVAILABLE");
    }
    assert!(h.processor_records().await.is_empty(), "nothing charged");
    assert_eq!(h.get(&checkout).await.state(), PaymentState::Pending);
    // The saga gives up and voids; a late retry of the authorization then charges nothing.
    assert_eq!(
        h.void(&checkout).await.unwrap().state(),
        PaymentState::Voided
    );
    let late = h.send_authorize(&request).await.unwrap_err();
    assert_refused(&late, Code::FailedPrecondition, "CHECKOUT_VOIDED");
    assert!(
        h.processor_records()
            .await
            .iter()
            .all(|r| r.operation != "authorize")
    );
    assert!(h.reconcile().await.mismatches.is_empty());
}

#[tokio::test]
async fn a_lost_answer_is_recovered_on_retry_without_a_second_charge() {
    let h = harness().await;
    let checkout = rid();
    let request = authorize_request(&checkout, 1800, tokens::RESPONSE_LOST);
    let lost = h.send_authorize(&request).await.unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable);
    let retried = h.send_authorize(&request).await.unwrap();
    assert_eq!(retried.state(), PaymentState::Authorized);
    let charges: Vec<_> = h
        .processor_records()
        .await
        .into_iter()
        .filter(|r| r.operation == "authorize")
        .collect();
    assert_eq!(charges.len(), 1, "charged once");
    assert_eq!(
        h.balance(&checkout, "holds_outstanding").await,
        1800,
        "held once"
    );
    // The stored answer replays from now on.
    assert_eq!(h.send_authorize(&request).await.unwrap(), retried);
}

/// A service whose processor calls take effect and never answer, with short claim locks, and
/// the same service "restarted" over its database with a processor that answers.
async fn crashing_and_restarted() -> (Harness, PaymentServiceApi) {
    let config = IdempotencyConfig {
        lock_ttl: Duration::from_millis(200),
        ..IdempotencyConfig::default()
    };
    let crashing = harness_with(config.clone(), true).await;
    let idempotency = Idempotency::new(crashing.db.clone(), config);
    let restarted =
        PaymentServiceApi::new(crashing.db.clone(), idempotency, crashing.processor.clone());
    (crashing, restarted)
}

#[tokio::test]
async fn a_crash_between_the_processor_call_and_its_record_resumes_with_the_same_key() {
    let (crashing, restarted) = crashing_and_restarted().await;
    let checkout = rid();
    let request = authorize_request(&checkout, 4200, tokens::VISA);
    // The call reaches the processor, then the service dies before recording the answer.
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        crashing.send_authorize(&request),
    )
    .await;
    assert!(attempt.is_err(), "the crashed attempt never answered");
    assert_eq!(crashing.processor_records().await.len(), 1);
    assert_eq!(crashing.get(&checkout).await.state(), PaymentState::Pending);

    // A restarted service over the same database takes the stale claim over.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let payment = restarted
        .authorize_payment(Request::new(request))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(payment.state(), PaymentState::Authorized);
    assert_eq!(
        crashing.processor_records().await.len(),
        1,
        "no second charge"
    );
}

#[tokio::test]
async fn a_capture_by_checkout_that_crashed_after_the_processor_call_resumes_with_the_same_key() {
    let (crashing, restarted) = crashing_and_restarted().await;
    let checkout = rid();
    restarted
        .authorize_payment(Request::new(authorize_request(
            &checkout,
            2500,
            tokens::VISA,
        )))
        .await
        .unwrap();
    let request = CapturePaymentRequest {
        request_id: rid(),
        target: by_checkout(&checkout),
        amount: None,
    };
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        crashing.api.capture_payment(Request::new(request.clone())),
    )
    .await;
    assert!(attempt.is_err(), "the crashed attempt never answered");
    assert_ne!(
        crashing.get(&checkout).await.state(),
        PaymentState::Captured
    );

    // The claim recorded where the request got to; the restarted service finds the payment by
    // the request's checkout and captures with the same processor key.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let payment = restarted
        .capture_payment(Request::new(request))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(payment.state(), PaymentState::Captured);
    let captures: Vec<ProcessorRow> = crashing
        .processor_records()
        .await
        .into_iter()
        .filter(|r| r.operation == "capture")
        .collect();
    assert_eq!(captures.len(), 1, "captured once");
    assert_eq!(crashing.balance(&checkout, "sales").await, 2500);
}

#[tokio::test]
async fn a_processor_call_records_its_recovery_point_with_the_claim_not_after_it() {
    statement_log();
    let h = harness().await;
    let checkout = rid();
    let before = statement_log().len();
    h.authorize(&checkout, 1500, tokens::VISA).await.unwrap();
    h.capture(&checkout, None).await.unwrap();
    h.refund(&checkout, 500).await.unwrap();
    let logged = statement_log()[before..].to_vec();
    assert!(
        logged
            .iter()
            .any(|s| s.contains("INSERT INTO idempotency_keys")),
        "{logged:?}"
    );
    // No request of this binary moves a key to a recovery point after its claim (only one
    // taken over from a holder that stopped before its intent would).
    assert!(
        !logged
            .iter()
            .any(|s| s.contains("UPDATE idempotency_keys SET recovery_point")),
        "{logged:?}"
    );
    if h.db.backend() == checkout_kit::db::Backend::Sqlite {
        // The ledger's entries are a settled call's last write: they go with the key's answer.
        let settled = logged
            .iter()
            .filter(|s| {
                s.contains("INSERT INTO ledger_entries ")
                    && s.contains("UPDATE idempotency_keys SET state = 'done'")
            })
            .count();
        assert!(settled >= 3, "hold, capture and refund: {logged:?}");
        // A new key's claim went with the authorization's insert and with the capture's and
        // refund's read of the payment.
        assert!(
            logged
                .iter()
                .any(|s| s.contains("DO NOTHING; INSERT INTO payments (")),
            "the claim with the authorization's insert: {logged:?}"
        );
        let claimed_with_the_read = logged
            .iter()
            .filter(|s| {
                s.contains("INSERT INTO idempotency_keys")
                    && s.contains("FROM payments WHERE checkout_id = $9")
            })
            .count();
        assert!(claimed_with_the_read >= 2, "capture and refund: {logged:?}");
        // The capture's transition and the hold it releases were read in one hand-off.
        checkout_kit::testing::assert_one_hand_off(
            &logged,
            &["SUM(CASE direction", "UPDATE payments SET state = $3"],
            "account = $13",
            1,
        );
    }
}

#[tokio::test]
async fn captures_are_full_or_partial_and_never_exceed_the_authorization() {
    let h = harness().await;
    let full = rid();
    h.authorize(&full, 3000, tokens::VISA).await.unwrap();
    let captured = h.capture(&full, None).await.unwrap();
    assert_eq!(captured.state(), PaymentState::Captured);
    assert_eq!(captured.captured_amount.unwrap().amount_minor, 3000);
    assert_eq!(h.balance(&full, "sales").await, 3000);
    assert_eq!(h.balance(&full, "holds_outstanding").await, 0);
    assert_eq!(
        h.capture(&full, None).await.unwrap().state(),
        PaymentState::Captured
    );

    let partial = rid();
    h.authorize(&partial, 3000, tokens::VISA).await.unwrap();
    let over = h.capture(&partial, Some(3001)).await.unwrap_err();
    assert_refused(&over, Code::FailedPrecondition, "AMOUNT_EXCEEDS_AUTHORIZED");
    let part = h.capture(&partial, Some(1200)).await.unwrap();
    assert_eq!(part.captured_amount.unwrap().amount_minor, 1200);
    assert_eq!(h.balance(&partial, "sales").await, 1200);
    assert_eq!(
        h.balance(&partial, "holds_outstanding").await,
        0,
        "the rest is released"
    );

    let declined = rid();
    let _ = h.authorize(&declined, 500, tokens::DECLINED).await;
    assert_refused(
        &h.capture(&declined, None).await.unwrap_err(),
        Code::FailedPrecondition,
        "ILLEGAL_TRANSITION",
    );
    assert!(h.reconcile().await.mismatches.is_empty());
}

#[tokio::test]
async fn void_and_capture_exclude_each_other() {
    let h = harness().await;
    let voided = rid();
    h.authorize(&voided, 900, tokens::VISA).await.unwrap();
    assert_eq!(h.void(&voided).await.unwrap().state(), PaymentState::Voided);
    assert_eq!(
        h.void(&voided).await.unwrap().state(),
        PaymentState::Voided,
        "again: harmless"
    );
    assert_eq!(h.balance(&voided, "holds_outstanding").await, 0);
    assert_refused(
        &h.capture(&voided, None).await.unwrap_err(),
        Code::FailedPrecondition,
        "ILLEGAL_TRANSITION",
    );

    let captured = rid();
    h.authorize(&captured, 900, tokens::VISA).await.unwrap();
    h.capture(&captured, None).await.unwrap();
    assert_refused(
        &h.void(&captured).await.unwrap_err(),
        Code::FailedPrecondition,
        "ILLEGAL_TRANSITION",
    );
    assert!(h.reconcile().await.mismatches.is_empty());
}

#[tokio::test]
async fn a_void_before_the_authorization_leaves_a_tombstone() {
    let h = harness().await;
    let checkout = rid();
    assert_eq!(
        h.void(&checkout).await.unwrap().state(),
        PaymentState::Tombstone
    );
    let late = h.authorize(&checkout, 700, tokens::VISA).await.unwrap_err();
    assert_refused(&late, Code::FailedPrecondition, "CHECKOUT_VOIDED");
    assert!(
        h.processor_records().await.is_empty(),
        "the late authorization charged nothing"
    );
}

#[tokio::test]
async fn refunds_never_exceed_the_capture() {
    let h = harness().await;
    let checkout = rid();
    h.authorize(&checkout, 5000, tokens::VISA).await.unwrap();
    assert_refused(
        &h.refund(&checkout, 100).await.unwrap_err(),
        Code::FailedPrecondition,
        "ILLEGAL_TRANSITION",
    );
    h.capture(&checkout, Some(4000)).await.unwrap();
    let part = h.refund(&checkout, 1500).await.unwrap();
    assert_eq!(part.state(), PaymentState::PartiallyRefunded);
    let over = h.refund(&checkout, 2600).await.unwrap_err();
    assert_refused(&over, Code::FailedPrecondition, "AMOUNT_EXCEEDS_CAPTURED");
    let rest = h.refund(&checkout, 2500).await.unwrap();
    assert_eq!(rest.state(), PaymentState::Refunded);
    assert_eq!(rest.refunded_amount.unwrap().amount_minor, 4000);
    assert_eq!(h.balance(&checkout, "sales").await, 0);
    assert!(h.reconcile().await.mismatches.is_empty());
}

#[tokio::test]
async fn every_ledger_transaction_balances_and_the_ledger_is_append_only() {
    let h = harness().await;
    let checkout = rid();
    h.authorize(&checkout, 6000, tokens::VISA).await.unwrap();
    h.capture(&checkout, Some(5000)).await.unwrap();
    h.refund(&checkout, 1000).await.unwrap();
    let entries = h.ledger(&checkout).await;
    assert!(entries.len() >= 6);
    let mut by_tx: std::collections::HashMap<String, i64> = Default::default();
    for e in &entries {
        let amount = e.amount.as_ref().unwrap().amount_minor;
        *by_tx.entry(e.transaction_id.clone()).or_default() +=
            if e.direction() == EntryDirection::Debit {
                amount
            } else {
                -amount
            };
    }
    assert_eq!(by_tx.len(), 3, "hold, capture, refund");
    assert!(by_tx.values().all(|net| *net == 0), "{by_tx:?}");
    assert!(
        !h.exec(&h.db, "UPDATE ledger_entries SET amount_minor = 1")
            .await,
        "no updates"
    );
    assert!(
        !h.exec(&h.db, "DELETE FROM ledger_entries").await,
        "no deletes"
    );
    assert_eq!(h.ledger(&checkout).await, entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_racing_a_void_has_exactly_one_winner() {
    let h = harness().await;
    for _ in 0..10 {
        let checkout = rid();
        h.authorize(&checkout, 1000, tokens::VISA).await.unwrap();
        let (a, b) = (h.api.clone(), h.api.clone());
        let (c1, c2) = (checkout.clone(), checkout.clone());
        let capture = tokio::spawn(async move {
            a.capture_payment(Request::new(CapturePaymentRequest {
                request_id: rid(),
                target: by_checkout(&c1),
                amount: None,
            }))
            .await
        });
        let void = tokio::spawn(async move {
            b.void_payment(Request::new(VoidPaymentRequest {
                request_id: rid(),
                target: Some(void_payment_request::Target::CheckoutId(c2)),
            }))
            .await
        });
        let (capture, void) = (capture.await.unwrap(), void.await.unwrap());
        assert!(capture.is_ok() != void.is_ok(), "{capture:?} / {void:?}");
        let state = h.get(&checkout).await.state();
        if capture.is_ok() {
            assert_eq!(state, PaymentState::Captured);
        } else {
            assert_eq!(state, PaymentState::Voided);
        }
    }
    assert!(h.reconcile().await.mismatches.is_empty());
}

async fn corrupted(corruption: &str) -> Vec<MismatchKind> {
    corrupted_in(false, corruption).await
}

/// Corrupts the payment database, or the processor's books.
async fn corrupted_in(books: bool, corruption: &str) -> Vec<MismatchKind> {
    let h = harness().await;
    let checkout = rid();
    h.authorize(&checkout, 2000, tokens::VISA).await.unwrap();
    h.capture(&checkout, None).await.unwrap();
    let other = rid();
    h.authorize(&other, 700, tokens::VISA).await.unwrap();
    assert!(
        h.reconcile().await.mismatches.is_empty(),
        "clean before the corruption"
    );
    let sql = corruption
        .replace("{checkout}", &checkout)
        .replace("{other}", &other);
    let db = if books { &h.books } else { &h.db };
    assert!(h.exec(db, &sql).await, "{sql}");
    h.reconcile()
        .await
        .mismatches
        .iter()
        .map(|m| m.kind())
        .collect()
}

#[tokio::test]
async fn reconciliation_reports_each_kind_of_mismatch() {
    let captured_without_ledger = corrupted(
        "UPDATE payments SET state = 'captured', captured_minor = 700 WHERE checkout_id = '{other}'",
    )
    .await;
    assert!(captured_without_ledger.contains(&MismatchKind::CapturedWithoutLedger));

    let charge_without_payment = corrupted_in(
        true,
        "INSERT INTO processor_records (processor_key, operation, outcome, reference, \
           authorization_key, amount_minor, currency_code, decline_code, created_at) \
         VALUES ('ghost', 'authorize', 'approved', 'ch_ghost', 'ghost', 999, 'USD', '', 0)",
    )
    .await;
    assert_eq!(
        charge_without_payment,
        vec![MismatchKind::ChargeWithoutPayment]
    );

    let unbalanced = corrupted(
        "INSERT INTO ledger_entries (entry_id, transaction_id, payment_id, checkout_id, account, \
           direction, amount_minor, currency_code, description, created_at) \
         VALUES ('zz', 'tx-lonely', 'p', '{checkout}', 'sales', 'credit', 5, 'USD', 'x', 0)",
    )
    .await;
    assert!(unbalanced.contains(&MismatchKind::UnbalancedTransaction));

    let amount =
        corrupted("UPDATE payments SET captured_minor = 1500 WHERE checkout_id = '{checkout}'")
            .await;
    assert!(amount.iter().all(|k| *k == MismatchKind::AmountMismatch) && !amount.is_empty());
}
