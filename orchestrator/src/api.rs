//! The `CheckoutService` gRPC handlers.

use std::pin::Pin;
use std::time::Duration;

use checkout_kit::auth::Caller;
use checkout_kit::db::{Db, Tx, now_millis};
use checkout_kit::idempotency::{Idempotency, Key};
use checkout_kit::idempotent;
use checkout_kit::paging;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_kit::status::{self, Rejection};
use checkout_kit::validate::{Violations, check_address};
use checkout_proto::checkout::checkout_service_server::{CheckoutService, CheckoutServiceServer};
use checkout_proto::checkout::*;
use futures::Stream;
use tonic::{Code, Request, Response, Status};

use crate::changes::Watch;
use crate::checkout_saga::{CheckoutInput, SAGA_TYPE};
use crate::runner::{Engine, WriteAhead};
use crate::saga::machine::{Direction, SagaStatus};
use crate::store::{self, AttemptRow, EventRow, NewEvent, SagaRow, SagaView};
use crate::view;

const START: &str = "/checkout.checkout.v1.CheckoutService/StartCheckout";
const CANCEL: &str = "/checkout.checkout.v1.CheckoutService/CancelCheckout";
const RETRY: &str = "/checkout.checkout.v1.CheckoutService/RetryCheckout";

/// Longest a StartCheckout may wait for the outcome.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often watchers look for changes made by other replicas.
const POLL: Duration = Duration::from_millis(200);
const LIST_PAGE_DEFAULT: usize = 50;
const LIST_PAGE_MAX: usize = 500;

/// Handlers of `CheckoutService`.
#[derive(Debug, Clone)]
pub struct CheckoutApi {
    db: Db,
    idempotency: Idempotency,
    engine: Engine,
}

fn db_status(e: checkout_kit::db::DbError) -> Status {
    status::database(&e)
}

fn not_found(checkout_id: &str) -> Status {
    Rejection::new(Code::NotFound, "CHECKOUT_NOT_FOUND", "checkout not found")
        .meta("checkout_id", checkout_id)
        .into_status()
}

impl CheckoutApi {
    /// Handlers over the orchestrator's database, its idempotency layer and saga engine.
    pub fn new(db: Db, idempotency: Idempotency, engine: Engine) -> Self {
        Self {
            db,
            idempotency,
            engine,
        }
    }

    /// The saga engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A stored saga's checkout, read in one statement; NOT_FOUND when there is none.
    async fn view_in(&self, tx: &mut Tx, checkout_id: &str) -> Result<Checkout, Status> {
        let found = store::saga_view(tx, checkout_id)
            .await
            .map_err(db_status)?
            .ok_or_else(|| not_found(checkout_id))?;
        Ok(self.render(&found))
    }

    fn render(&self, v: &SagaView) -> Checkout {
        view::checkout(
            self.engine.definition(),
            &v.saga,
            &v.steps,
            &v.attempts,
            &v.events,
        )
    }

    /// The checkout as it stands; NOT_FOUND for another customer's (ids cannot be probed).
    async fn current(
        &self,
        checkout_id: &str,
        customer_id: Option<&str>,
    ) -> Result<Checkout, Status> {
        // One statement: consistent without a transaction around it.
        let mut conn = self.db.single_read().await.map_err(db_status)?;
        let found = store::saga_view(&mut conn, checkout_id).await;
        conn.rollback().await.map_err(db_status)?;
        match found.map_err(db_status)? {
            Some(v) if customer_id.is_none_or(|c| c == v.saga.customer_id) => Ok(self.render(&v)),
            _ => Err(not_found(checkout_id)),
        }
    }

    /// Waits until the checkout is terminal or parked, or `wait` passes; then its state. Only
    /// the saga's status is read while waiting; the full view once, at the end.
    /// `watch` was taken before the saga could change; `known` is its status then, if known.
    async fn await_outcome(
        &self,
        checkout_id: &str,
        wait: Duration,
        mut watch: Watch,
        known: Option<String>,
    ) -> Result<Checkout, Status> {
        let settled = |status: &str| {
            matches!(
                SagaStatus::parse(status),
                Some(SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::NeedsAttention)
            )
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut notice = known;
        while tokio::time::Instant::now() < deadline {
            let status = match notice.take() {
                Some(status) => status,
                None => {
                    let mut conn = self.db.single_read().await.map_err(db_status)?;
                    let saga = store::saga(&mut conn, checkout_id)
                        .await
                        .map_err(db_status)?;
                    conn.rollback().await.map_err(db_status)?;
                    match saga {
                        Some(saga) => saga.status,
                        None => break,
                    }
                }
            };
            if settled(&status) {
                break;
            }
            // Woken by this replica's engine (which says the new status), or by the poll for
            // changes made elsewhere (then the saga is read again).
            let wake = deadline.min(tokio::time::Instant::now() + POLL);
            notice = tokio::time::timeout_at(wake, watch.changed())
                .await
                .ok()
                .flatten();
        }
        self.current(checkout_id, None).await
    }
}

fn wait_of(d: Option<&prost_types::Duration>) -> Result<Duration, Rejection> {
    match d {
        None => Ok(Duration::ZERO),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(Rejection::invalid_field(
            "wait_for_outcome",
            "must not be negative",
        )),
        Some(d) => Ok(Duration::new(
            u64::try_from(d.seconds).unwrap_or(0),
            u32::try_from(d.nanos).unwrap_or(0),
        )
        .min(MAX_WAIT)),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchCheckoutResponse, Status>> + Send>>;

/// A new checkout's saga as StartCheckout stores it, with the first step's write-ahead record
/// and the answer it gives.
struct NewCheckout {
    saga: SagaRow,
    first: Option<WriteAhead>,
    steps: Vec<store::StepRow>,
    attempts: Vec<AttemptRow>,
    events: Vec<NewEvent>,
    now: i64,
    answer: StartCheckoutResponse,
}

impl NewCheckout {
    /// The rows stored.
    fn stored(&self) -> store::NewSaga<'_> {
        store::NewSaga {
            saga: &self.saga,
            steps: &self.steps,
            attempts: &self.attempts,
            events: &self.events,
            at: self.now,
        }
    }
}

impl CheckoutApi {
    /// The saga a StartCheckout request stores, driven by this replica from the start.
    fn new_checkout(&self, req: &StartCheckoutRequest) -> Result<NewCheckout, Status> {
        let input = CheckoutInput {
            cart_id: req.cart_id.clone(),
            customer_id: req.customer_id.clone(),
            payment_token: req.payment_token.clone(),
            address: req
                .shipping_address
                .as_ref()
                .map(Into::into)
                .unwrap_or_default(),
        };
        let def = self.engine.definition();
        let lease_ttl = self.engine.config().lease_ttl;
        let now = now_millis();
        let mut saga = SagaRow {
            saga_id: uuid::Uuid::now_v7().to_string(),
            saga_type: SAGA_TYPE.to_owned(),
            cart_id: req.cart_id.clone(),
            customer_id: req.customer_id.clone(),
            status: SagaStatus::Running.as_str().to_owned(),
            direction: Direction::Forward.as_str().to_owned(),
            step_index: 0,
            input: serde_json::to_string(&input).map_err(|e| status::internal(&e))?,
            outputs: "{}".to_owned(),
            failure_reason: String::new(),
            failure_message: String::new(),
            failure_step: String::new(),
            cancel_requested: false,
            pivot_started: false,
            deadline_at: now
                .saturating_add(i64::try_from(def.deadline.as_millis()).unwrap_or(i64::MAX)),
            next_attempt_at: now,
            // Accepted here, so driven here at once; the sweeper takes it if this replica dies.
            lease_owner: Some(self.engine.config().replica_id.clone()),
            lease_expires_at: now
                .saturating_add(i64::try_from(lease_ttl.as_millis()).unwrap_or(i64::MAX)),
            version: 1,
            // The request's trace context: the saga's spans, even after a restart, join it.
            trace_context: checkout_kit::telemetry::current_traceparent(),
            created_at: now,
            updated_at: now,
        };
        // The first step's write-ahead goes with the saga: one durable write fewer.
        let first = self.engine.first_write_ahead(&mut saga);
        let steps = first.as_ref().map_or_else(Vec::new, |f| f.steps.clone());
        let mut events = vec![NewEvent {
            kind: "accepted",
            step: String::new(),
            message: "checkout accepted".to_owned(),
            status: saga.status.clone(),
        }];
        let mut attempts = Vec::new();
        if let Some(first) = &first {
            events.push(first.event.clone());
            attempts.push(first.attempt.clone());
        }
        let timeline: Vec<EventRow> = events
            .iter()
            .zip(1..)
            .map(|(e, sequence)| EventRow {
                sequence,
                at: now,
                kind: e.kind.to_owned(),
                step: e.step.clone(),
                message: e.message.clone(),
                status: e.status.clone(),
            })
            .collect();
        let answer = StartCheckoutResponse {
            checkout: Some(view::checkout(def, &saga, &steps, &attempts, &timeline)),
        };
        Ok(NewCheckout {
            saga,
            first,
            steps,
            attempts,
            events,
            now,
            answer,
        })
    }
}

#[tonic::async_trait]
impl CheckoutService for CheckoutApi {
    async fn start_checkout(
        &self,
        request: Request<StartCheckoutRequest>,
    ) -> Result<Response<StartCheckoutResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("cart_id", &req.cart_id)
            .id("customer_id", &req.customer_id)
            .check(
                !req.payment_token.is_empty() && req.payment_token.len() <= 256,
                "payment_token",
                "required, at most 256 characters",
            );
        check_address(&mut v, "shipping_address", req.shipping_address.as_ref());
        let wait = match wait_of(req.wait_for_outcome.as_ref()) {
            Ok(wait) => wait,
            Err(_) => {
                v.add("wait_for_outcome", "must not be negative");
                Duration::ZERO
            }
        };
        v.finish()?;
        let key = Key::new(START, &req)?;
        let fresh = self.new_checkout(&req)?;
        // The saga and the request's key in one go (on Postgres one statement with no BEGIN or
        // COMMIT, on SQLite one hand-off); when that changes nothing (the key is remembered)
        // the request goes the usual way, which settles a repeat as it always does.
        let alone =
            store::start_in_one_statement(&self.idempotency, &key, &fresh.answer, &fresh.stored())
                .await?;
        // The saga stored; for a repeated request the usual way rolls it back and answers the
        // stored checkout instead.
        let started = if alone {
            fresh.answer
        } else {
            idempotent!(self.idempotency, key, |tx| {
                store::insert_saga(tx, &fresh.stored())
                    .await
                    .map_err(db_status)?;
                Ok(fresh.answer)
            })?
        };
        let (created, written_ahead) = (fresh.saga, fresh.first);
        let checkout_id = started
            .checkout
            .as_ref()
            .map(|c| c.checkout_id.clone())
            .unwrap_or_default();
        // Watching before the driver starts, so no change goes unseen.
        let watch = self.engine.watch(&checkout_id);
        // Only a saga the answer names was stored by this call.
        let known = if created.saga_id == checkout_id {
            crate::metrics::metrics().started.add(1, &[]);
            let status = created.status.clone();
            self.engine.start_new(created, written_ahead.as_ref());
            Some(status)
        } else {
            // A retried request whose saga may still need a driver.
            self.engine.start(&checkout_id);
            None
        };
        let checkout = self.await_outcome(&checkout_id, wait, watch, known).await?;
        Ok(Response::new(StartCheckoutResponse {
            checkout: Some(checkout),
        }))
    }

    type WatchCheckoutStream = WatchStream;

    async fn get_checkout(
        &self,
        request: Request<GetCheckoutRequest>,
    ) -> Result<Response<GetCheckoutResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("checkout_id", &req.checkout_id)
            .id("customer_id", &req.customer_id);
        v.finish()?;
        let checkout = self
            .current(&req.checkout_id, Some(&req.customer_id))
            .await?;
        Ok(Response::new(GetCheckoutResponse {
            checkout: Some(checkout),
        }))
    }

    async fn watch_checkout(
        &self,
        request: Request<WatchCheckoutRequest>,
    ) -> Result<Response<Self::WatchCheckoutStream>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("checkout_id", &req.checkout_id)
            .id("customer_id", &req.customer_id);
        v.finish()?;
        // Ownership first: a stranger learns nothing, not even that the id exists.
        self.current(&req.checkout_id, Some(&req.customer_id))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let db = self.db.clone();
        let mut watch = self.engine.watch(&req.checkout_id);
        let checkout_id = req.checkout_id.clone();
        tokio::spawn(async move {
            let mut seen = 0_i64;
            loop {
                let batch = async {
                    let mut t = db.begin_read().await?;
                    let events = store::events_after(&mut t, &checkout_id, seen).await?;
                    let saga = store::saga(&mut t, &checkout_id).await?;
                    t.rollback().await?;
                    Ok::<_, checkout_kit::db::DbError>((events, saga))
                }
                .await;
                let (events, saga) = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.send(Err(db_status(e))).await;
                        return;
                    }
                };
                for e in &events {
                    seen = e.sequence;
                    let item = WatchCheckoutResponse {
                        event: Some(view::event(e)),
                        status: view::event_status(e).into(),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                let over = saga
                    .as_ref()
                    .and_then(|s| SagaStatus::parse(&s.status))
                    .is_some_and(SagaStatus::is_terminal);
                if over {
                    return;
                }
                let _ = tokio::time::timeout(POLL, watch.changed()).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_checkouts(
        &self,
        request: Request<ListCheckoutsRequest>,
    ) -> Result<Response<ListCheckoutsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        if !req.customer_id.is_empty() {
            v.id("customer_id", &req.customer_id);
        } else if !caller.is_privileged() {
            // A storefront sees one customer's checkouts at a time; listing across customers
            // is for operators holding the internal credential.
            v.add(
                "customer_id",
                "required with a storefront key: list one customer's checkouts",
            );
        }
        v.finish()?;
        let size = paging::page_size(req.page_size, LIST_PAGE_DEFAULT, LIST_PAGE_MAX)?;
        let status_filter = view::status_name(req.status());
        let filter = format!("{}|{}", req.customer_id, status_filter.unwrap_or(""));
        let cursor = paging::decode_token(&req.page_token, &filter)?.map(|c| {
            let (at, id) = c.split_once('|').unwrap_or(("0", ""));
            (at.parse::<i64>().unwrap_or(0), id.to_owned())
        });
        let customer = (!req.customer_id.is_empty()).then_some(req.customer_id.as_str());
        let mut tx = self.db.begin_read().await.map_err(db_status)?;
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let mut rows = store::list(&mut tx, customer, status_filter, cursor, limit)
            .await
            .map_err(db_status)?;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|s| paging::encode_token(&filter, &format!("{}|{}", s.created_at, s.saga_id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let mut checkouts = Vec::with_capacity(rows.len());
        for saga in &rows {
            checkouts.push(self.view_in(&mut tx, &saga.saga_id).await?);
        }
        tx.rollback().await.map_err(db_status)?;
        Ok(Response::new(ListCheckoutsResponse {
            checkouts,
            next_page_token,
        }))
    }

    async fn cancel_checkout(
        &self,
        request: Request<CancelCheckoutRequest>,
    ) -> Result<Response<CancelCheckoutResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("checkout_id", &req.checkout_id)
            .id("customer_id", &req.customer_id)
            .check(
                req.reason.chars().count() <= 500,
                "reason",
                "at most 500 characters",
            );
        v.finish()?;
        let key = Key::new(CANCEL, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            let now = now_millis();
            let saga = store::saga(tx, &req.checkout_id).await.map_err(db_status)?;
            let saga = match saga {
                Some(s) if s.customer_id == req.customer_id => s,
                _ => return Err(not_found(&req.checkout_id)),
            };
            match SagaStatus::parse(&saga.status) {
                Some(SagaStatus::Compensating | SagaStatus::Compensated) => {}
                Some(SagaStatus::Running) => {
                    if !store::request_cancel(tx, &saga.saga_id, now).await.map_err(db_status)? {
                        return Err(Rejection::new(
                            Code::FailedPrecondition,
                            "PAST_PIVOT",
                            "the payment is being captured; the checkout can no longer be cancelled",
                        )
                        .into_status());
                    }
                    let message = if req.reason.is_empty() { "cancel requested" } else { req.reason.as_str() };
                    store::append_event(tx, &saga.saga_id, "cancel_requested", "", message, &saga.status, now)
                        .await
                        .map_err(db_status)?;
                }
                _ => {
                    return Err(Rejection::new(
                        Code::FailedPrecondition,
                        "PAST_PIVOT",
                        format!("the checkout is {}; it can no longer be cancelled", saga.status),
                    )
                    .into_status());
                }
            }
            Ok(CancelCheckoutResponse {
                checkout: Some(self.view_in(tx, &req.checkout_id).await?),
            })
        })
        .map(|response| {
            self.engine.start(&req.checkout_id);
            self.engine.announce(&req.checkout_id);
            Response::new(response)
        })
    }

    async fn retry_checkout(
        &self,
        request: Request<RetryCheckoutRequest>,
    ) -> Result<Response<RetryCheckoutResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("checkout_id", &req.checkout_id)
            .check(
                req.reason.chars().count() <= 500,
                "reason",
                "at most 500 characters",
            );
        v.finish()?;
        let key = Key::new(RETRY, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            let now = now_millis();
            let saga = store::saga(tx, &req.checkout_id)
                .await
                .map_err(db_status)?
                .ok_or_else(|| not_found(&req.checkout_id))?;
            if saga.status != SagaStatus::NeedsAttention.as_str() {
                return Err(Rejection::new(
                    Code::FailedPrecondition,
                    "NOT_PARKED",
                    format!(
                        "the checkout is {}, not waiting for an operator",
                        saga.status
                    ),
                )
                .into_status());
            }
            let compensating = saga.direction == Direction::Compensation.as_str();
            let status = if compensating {
                SagaStatus::Compensating
            } else {
                SagaStatus::Running
            };
            // A fresh retry budget for the step that parked the saga.
            let mut steps = store::steps(tx, &saga.saga_id).await.map_err(db_status)?;
            if let Some(step) = steps.iter_mut().find(|s| s.name == saga.failure_step) {
                if compensating {
                    step.compensation_retry_base = step.compensation_attempts;
                } else {
                    step.forward_retry_base = step.forward_attempts;
                }
                store::save_steps(tx, &[(saga.saga_id.as_str(), &*step)])
                    .await
                    .map_err(db_status)?;
            }
            store::resume_parked(tx, &saga.saga_id, status.as_str(), now)
                .await
                .map_err(db_status)?;
            let message = if req.reason.is_empty() {
                "operator retry"
            } else {
                req.reason.as_str()
            };
            store::append_event(
                tx,
                &saga.saga_id,
                "retry_requested",
                &saga.failure_step,
                message,
                status.as_str(),
                now,
            )
            .await
            .map_err(db_status)?;
            Ok(RetryCheckoutResponse {
                checkout: Some(self.view_in(tx, &req.checkout_id).await?),
            })
        })
        .map(|response| {
            self.engine.start(&req.checkout_id);
            Response::new(response)
        })
    }
}

/// The orchestrator server: `CheckoutService` plus health and reflection.
pub fn grpc_server(
    db: Db,
    idempotency: Idempotency,
    engine: Engine,
    limits: ServerLimits,
) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        CheckoutServiceServer::new(CheckoutApi::new(db, idempotency, engine)),
        limits
    );
    GrpcServer::new("orchestrator", limits).add_service(service)
}
