//! The `PaymentService` gRPC handlers: validate, then run the use case. Mutations that call the
//! processor go through the idempotency layer's recovery points ([`crate::payments`]).

use std::sync::Arc;

use checkout_kit::db::Db;
use checkout_kit::idempotency::{Idempotency, Key};
use checkout_kit::oneof_ids;
use checkout_kit::paging;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_kit::status;
use checkout_kit::validate::{OneOf, Violations};
use checkout_proto::common::Money;
use checkout_proto::payment::payment_service_server::{PaymentService, PaymentServiceServer};
use checkout_proto::payment::*;
use tonic::{Request, Response, Status};

use crate::payments::{self, Payments, Target};
use crate::processor::PaymentProcessor;
use crate::reconcile;
use crate::storage::{self, EntryRow};

const AUTHORIZE: &str = "/checkout.payment.v1.PaymentService/AuthorizePayment";
const CAPTURE: &str = "/checkout.payment.v1.PaymentService/CapturePayment";
const VOID: &str = "/checkout.payment.v1.PaymentService/VoidPayment";
const REFUND: &str = "/checkout.payment.v1.PaymentService/RefundPayment";

/// Largest amount one payment may carry, in minor units.
pub const MAX_AMOUNT: i64 = 100_000_000_000;
const LEDGER_PAGE_DEFAULT: usize = 100;
const LEDGER_PAGE_MAX: usize = 1000;

/// Handlers of `PaymentService`.
#[derive(Debug, Clone)]
pub struct PaymentServiceApi {
    db: Db,
    payments: Payments,
}

impl PaymentServiceApi {
    /// Handlers over an open, migrated database, its idempotency layer and a processor.
    pub fn new(db: Db, idempotency: Idempotency, processor: Arc<dyn PaymentProcessor>) -> Self {
        Self {
            payments: Payments::new(db.clone(), idempotency, processor),
            db,
        }
    }

    /// The database the handlers use.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

fn money(v: &mut Violations, field: &str, money: Option<&Money>, required: bool) {
    match money {
        None if required => {
            v.add(field, "required");
        }
        None => {}
        Some(m) => {
            v.check(
                (1..=MAX_AMOUNT).contains(&m.amount_minor),
                &format!("{field}.amount_minor"),
                "must be positive and at most 100000000000",
            )
            .currency(&format!("{field}.currency_code"), &m.currency_code);
        }
    }
}

fn target(found: Option<OneOf>) -> Option<Target> {
    found.map(|t| match t {
        OneOf::First(id) => Target::Payment(id),
        OneOf::Second(id) => Target::Checkout(id),
    })
}

/// Runs an operation that calls the processor to its end even if the caller disconnects.
/// tonic drops a handler's future when its client goes away; dropped between the committed
/// intent and the recorded answer, the request would stay claimed until its lock lapses and
/// every retry meanwhile would answer REQUEST_IN_PROGRESS.
async fn to_completion<T: Send + 'static>(
    operation: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(operation)
        .await
        .map_err(|e| status::internal(&e))?
}

fn entry(e: EntryRow) -> LedgerEntry {
    LedgerEntry {
        entry_id: e.entry_id,
        transaction_id: e.transaction_id,
        payment_id: e.payment_id,
        checkout_id: e.checkout_id,
        account: e.account,
        direction: if e.direction == "debit" {
            EntryDirection::Debit
        } else {
            EntryDirection::Credit
        }
        .into(),
        amount: Some(Money {
            amount_minor: e.amount_minor,
            currency_code: e.currency_code,
        }),
        description: e.description,
        create_time: Some(checkout_kit::db::timestamp(e.created_at)),
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentServiceApi {
    async fn authorize_payment(
        &self,
        request: Request<AuthorizePaymentRequest>,
    ) -> Result<Response<AuthorizePaymentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("checkout_id", &req.checkout_id)
            .id("customer_id", &req.customer_id)
            .check(
                !req.payment_token.is_empty() && req.payment_token.len() <= 256,
                "payment_token",
                "required, at most 256 characters",
            );
        money(&mut v, "amount", req.amount.as_ref(), true);
        v.finish()?;
        let key = Key::new(AUTHORIZE, &req)?;
        let amount = req.amount.clone().unwrap_or_default();
        let payments = self.payments.clone();
        to_completion(async move {
            payments
                .authorize(
                    key,
                    &req.checkout_id,
                    &req.customer_id,
                    &amount,
                    &req.payment_token,
                )
                .await
        })
        .await
        .map(Response::new)
    }

    async fn capture_payment(
        &self,
        request: Request<CapturePaymentRequest>,
    ) -> Result<Response<CapturePaymentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id);
        let target = target(oneof_ids!(
            &mut v,
            req.target,
            capture_payment_request,
            PaymentId,
            "payment_id"
        ));
        money(&mut v, "amount", req.amount.as_ref(), false);
        v.finish()?;
        let target = target.ok_or_else(|| Status::invalid_argument("target"))?;
        let key = Key::new(CAPTURE, &req)?;
        let payments = self.payments.clone();
        to_completion(async move { payments.capture(key, &target, req.amount.as_ref()).await })
            .await
            .map(Response::new)
    }

    async fn void_payment(
        &self,
        request: Request<VoidPaymentRequest>,
    ) -> Result<Response<VoidPaymentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id);
        let target = target(oneof_ids!(
            &mut v,
            req.target,
            void_payment_request,
            PaymentId,
            "payment_id"
        ));
        v.finish()?;
        let target = target.ok_or_else(|| Status::invalid_argument("target"))?;
        let key = Key::new(VOID, &req)?;
        let payments = self.payments.clone();
        to_completion(async move { payments.void(key, &target).await })
            .await
            .map(Response::new)
    }

    async fn refund_payment(
        &self,
        request: Request<RefundPaymentRequest>,
    ) -> Result<Response<RefundPaymentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id).check(
            req.reason.chars().count() <= 500,
            "reason",
            "at most 500 characters",
        );
        let target = target(oneof_ids!(
            &mut v,
            req.target,
            refund_payment_request,
            PaymentId,
            "payment_id"
        ));
        money(&mut v, "amount", req.amount.as_ref(), true);
        v.finish()?;
        let target = target.ok_or_else(|| Status::invalid_argument("target"))?;
        let key = Key::new(REFUND, &req)?;
        let amount = req.amount.clone().unwrap_or_default();
        let payments = self.payments.clone();
        to_completion(async move { payments.refund(key, &target, &amount).await })
            .await
            .map(Response::new)
    }

    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<GetPaymentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let target = target(oneof_ids!(
            &mut v,
            req.target,
            get_payment_request,
            PaymentId,
            "payment_id"
        ));
        v.finish()?;
        let target = target.ok_or_else(|| Status::invalid_argument("target"))?;
        let mut tx = self
            .db
            .begin_read()
            .await
            .map_err(|e| status::database(&e))?;
        let row = payments::find(&mut tx, &target).await;
        tx.rollback().await.map_err(|e| status::database(&e))?;
        let row = row?.ok_or(crate::error::PaymentError::NotFound)?;
        Ok(Response::new(GetPaymentResponse {
            payment: Some(payments::to_proto(&row)),
        }))
    }

    async fn list_ledger_entries(
        &self,
        request: Request<ListLedgerEntriesRequest>,
    ) -> Result<Response<ListLedgerEntriesResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let target = target(oneof_ids!(
            &mut v,
            req.target,
            list_ledger_entries_request,
            PaymentId,
            "payment_id"
        ));
        v.finish()?;
        let target = target.ok_or_else(|| Status::invalid_argument("target"))?;
        let size = paging::page_size(req.page_size, LEDGER_PAGE_DEFAULT, LEDGER_PAGE_MAX)?;
        let filter = match &target {
            Target::Payment(id) => format!("payment:{id}"),
            Target::Checkout(id) => format!("checkout:{id}"),
        };
        let after = paging::decode_token(&req.page_token, &filter)?.unwrap_or_default();
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let mut tx = self
            .db
            .begin_read()
            .await
            .map_err(|e| status::database(&e))?;
        let rows = match &target {
            Target::Payment(id) => storage::entries_of_payment(&mut tx, id, &after, limit).await,
            Target::Checkout(id) => storage::entries_of_checkout(&mut tx, id, &after, limit).await,
        };
        tx.rollback().await.map_err(|e| status::database(&e))?;
        let mut rows = rows.map_err(|e| status::database(&e))?;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|e| paging::encode_token(&filter, &e.entry_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListLedgerEntriesResponse {
            entries: rows.into_iter().map(entry).collect(),
            next_page_token,
        }))
    }

    async fn reconcile(
        &self,
        _request: Request<ReconcileRequest>,
    ) -> Result<Response<ReconcileResponse>, Status> {
        reconcile::reconcile(&self.db, self.payments.processor().as_ref())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}

/// The payment server: `PaymentService` plus health and reflection.
pub fn grpc_server(
    db: Db,
    idempotency: Idempotency,
    processor: Arc<dyn PaymentProcessor>,
    limits: ServerLimits,
) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        PaymentServiceServer::new(PaymentServiceApi::new(db, idempotency, processor)),
        limits
    );
    GrpcServer::new("payment", limits).add_service(service)
}
