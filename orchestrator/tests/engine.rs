//! The engine with a scripted executor (no network): parking, operator retries, deadlines and
//! stable request ids, on the backend the test run picks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkout_kit::idempotency::{Idempotency, IdempotencyConfig};
use checkout_kit::retry::RetryPolicy;
use checkout_kit::testing::TestDatabase;
use checkout_orchestrator::api::CheckoutApi;
use checkout_orchestrator::checkout_saga;
use checkout_orchestrator::runner::{Engine, EngineConfig, StepCall, StepExecutor};
use checkout_orchestrator::saga::machine::Direction;
use checkout_proto::checkout::checkout_service_server::CheckoutService;
use checkout_proto::checkout::*;
use checkout_proto::common::Address;
use serde_json::{Value, json};
use tonic::{Request, Status};

/// Succeeds everywhere except where told to fail, and logs every command.
#[derive(Default)]
struct Script {
    /// (step, direction) → the failure to answer while `broken` is set.
    failures: HashMap<(&'static str, Direction), Status>,
    broken: AtomicBool,
    log: Mutex<Vec<(String, Direction, String)>>,
}

/// The script as the engine's executor.
struct Scripted(Arc<Script>);

#[tonic::async_trait]
impl StepExecutor for Scripted {
    async fn execute(&self, call: StepCall<'_>) -> Result<Value, Status> {
        let script = &self.0;
        script.log.lock().unwrap().push((
            call.step.to_owned(),
            call.direction,
            call.request_id.to_owned(),
        ));
        if script.broken.load(Ordering::SeqCst)
            && let Some((_, status)) = script
                .failures
                .iter()
                .find(|((step, direction), _)| *step == call.step && *direction == call.direction)
        {
            return Err(Status::new(status.code(), status.message()));
        }
        Ok(json!({}))
    }
}

struct Harness {
    api: CheckoutApi,
    script: Arc<Script>,
    _database: TestDatabase,
}

async fn harness(script: Script, deadline: Duration) -> Harness {
    let database = TestDatabase::new("orchestrator");
    let db = database
        .migrated(&checkout_orchestrator::MIGRATIONS)
        .await
        .unwrap();
    let script = Arc::new(script);
    let mut def = checkout_saga::definition(deadline, Duration::from_secs(1));
    let quick = |max| RetryPolicy {
        initial_interval: Duration::from_millis(1),
        multiplier: 1.0,
        max_interval: Duration::from_millis(1),
        max_attempts: Some(max),
    };
    def.forward_retry = quick(2);
    def.persistent_retry = quick(3);
    let engine = Engine::new(
        db.clone(),
        def,
        Arc::new(Scripted(script.clone())),
        EngineConfig::default(),
    );
    let idempotency = Idempotency::new(db.clone(), IdempotencyConfig::default());
    Harness {
        api: CheckoutApi::new(db, idempotency, engine),
        script,
        _database: database,
    }
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Frank's checkout of `cart_id`.
fn start_request(
    request_id: &str,
    cart_id: &str,
    wait_for_outcome: Option<prost_types::Duration>,
) -> StartCheckoutRequest {
    StartCheckoutRequest {
        request_id: request_id.to_owned(),
        cart_id: cart_id.to_owned(),
        customer_id: "frank".to_owned(),
        payment_token: "tok_visa".to_owned(),
        shipping_address: Some(Address {
            recipient_name: "Frank".to_owned(),
            line1: "2 Main St".to_owned(),
            city: "Town".to_owned(),
            postal_code: "11111".to_owned(),
            country_code: "US".to_owned(),
            ..Address::default()
        }),
        wait_for_outcome,
    }
}

impl Harness {
    async fn start(&self) -> Checkout {
        let wait = prost_types::Duration {
            seconds: 10,
            nanos: 0,
        };
        self.api
            .start_checkout(Request::new(start_request(&rid(), &rid(), Some(wait))))
            .await
            .unwrap()
            .into_inner()
            .checkout
            .unwrap()
    }

    async fn retry(&self, checkout_id: &str) -> Checkout {
        self.api
            .retry_checkout(Request::new(RetryCheckoutRequest {
                request_id: rid(),
                checkout_id: checkout_id.to_owned(),
                reason: "fixed".to_owned(),
            }))
            .await
            .unwrap();
        for _ in 0..200 {
            let checkout = self
                .api
                .get_checkout(Request::new(GetCheckoutRequest {
                    checkout_id: checkout_id.to_owned(),
                    customer_id: "frank".to_owned(),
                }))
                .await
                .unwrap()
                .into_inner()
                .checkout
                .unwrap();
            if matches!(
                checkout.status(),
                CheckoutStatus::Completed | CheckoutStatus::Compensated
            ) {
                return checkout;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let checkout = self
            .api
            .get_checkout(Request::new(GetCheckoutRequest {
                checkout_id: checkout_id.to_owned(),
                customer_id: "frank".to_owned(),
            }))
            .await
            .unwrap()
            .into_inner()
            .checkout
            .unwrap();
        panic!(
            "the retried checkout never settled: {:?} {:?}",
            checkout.status(),
            checkout
                .timeline
                .iter()
                .map(|e| (&e.kind, &e.step))
                .collect::<Vec<_>>()
        );
    }

    fn commands(&self) -> Vec<(String, Direction, String)> {
        self.script.log.lock().unwrap().clone()
    }
}

fn failing(step: &'static str, direction: Direction, status: Status) -> Script {
    let mut script = Script::default();
    script.failures.insert((step, direction), status);
    script.broken.store(true, Ordering::SeqCst);
    script
}

#[tokio::test]
async fn a_failing_step_after_the_pivot_parks_and_an_operator_retry_finishes_it() {
    let h = harness(
        failing(
            "complete_cart",
            Direction::Forward,
            Status::unavailable("cart down"),
        ),
        Duration::from_secs(60),
    )
    .await;
    let parked = h.start().await;
    assert_eq!(
        parked.status(),
        CheckoutStatus::NeedsAttention,
        "{parked:#?}"
    );
    let failure = parked.failure.clone().unwrap();
    assert_eq!(failure.reason, "STEP_RETRIES_EXHAUSTED");
    assert_eq!(failure.step, "complete_cart");
    assert!(
        h.commands().iter().all(|c| c.1 == Direction::Forward),
        "no compensation after the pivot"
    );

    h.script.broken.store(false, Ordering::SeqCst);
    let done = h.retry(&parked.checkout_id).await;
    assert_eq!(done.status(), CheckoutStatus::Completed);
    assert!(done.timeline.iter().any(|e| e.kind == "retry_requested"));

    // Every attempt of one step and direction carried the same request id.
    let mut ids: HashMap<(String, Direction), Vec<String>> = HashMap::new();
    for (step, direction, request_id) in h.commands() {
        ids.entry((step, direction)).or_default().push(request_id);
    }
    let complete = &ids[&("complete_cart".to_owned(), Direction::Forward)];
    assert_eq!(
        complete.len(),
        4,
        "three attempts, then one after the retry"
    );
    assert!(complete.iter().all(|id| id == &complete[0]));
}

#[tokio::test]
async fn a_failing_compensation_parks_and_resumes_compensating() {
    let mut script = failing(
        "create_shipments",
        Direction::Forward,
        Status::failed_precondition("address not serviceable"),
    );
    script.failures.insert(
        ("authorize_payment", Direction::Compensation),
        Status::unavailable("payment down"),
    );
    let h = harness(script, Duration::from_secs(60)).await;
    let parked = h.start().await;
    assert_eq!(
        parked.status(),
        CheckoutStatus::NeedsAttention,
        "{parked:#?}"
    );
    assert_eq!(
        parked.failure.unwrap().reason,
        "COMPENSATION_RETRIES_EXHAUSTED"
    );

    h.script.broken.store(false, Ordering::SeqCst);
    let done = h.retry(&parked.checkout_id).await;
    assert_eq!(done.status(), CheckoutStatus::Compensated);
    let compensations: Vec<String> = h
        .commands()
        .into_iter()
        .filter(|c| c.1 == Direction::Compensation)
        .map(|c| c.0)
        .collect();
    assert_eq!(
        compensations,
        [
            "authorize_payment",
            "authorize_payment",
            "authorize_payment",
            "authorize_payment",
            "reserve_inventory",
            "lock_cart"
        ]
    );
}

#[tokio::test]
async fn a_saga_past_its_deadline_before_the_pivot_compensates() {
    let h = harness(Script::default(), Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let checkout = h.start().await;
    assert_eq!(
        checkout.status(),
        CheckoutStatus::Compensated,
        "{checkout:#?}"
    );
    assert_eq!(checkout.failure.unwrap().reason, "DEADLINE_EXCEEDED");
    assert!(h.commands().iter().all(|c| c.0 != "capture_payment"));
}

#[tokio::test]
async fn a_new_checkout_and_its_key_are_one_write_and_a_repeat_replays_it() {
    use checkout_kit::db::{Backend, Db, PoolConfig};
    use checkout_kit::status::reason_of;
    use checkout_kit::testing::{self, RoundTrips, statement_log};

    let postgres = testing::backend() == Backend::Postgres;
    let database = TestDatabase::new("start_one_statement");
    let db = database
        .migrated(&checkout_orchestrator::MIGRATIONS)
        .await
        .unwrap();
    // On Postgres the idempotency layer (where a new checkout is written) talks through a
    // counting proxy; the engine that drives the sagas does not. On SQLite the statement log
    // shows the hand-offs to the writer's thread.
    let proxy = match postgres {
        true => Some(RoundTrips::count(&database).await),
        false => {
            statement_log();
            None
        }
    };
    let via = match &proxy {
        Some(proxy) => Db::connect(proxy.url(), &PoolConfig::default())
            .await
            .unwrap(),
        None => db.clone(),
    };
    let def = checkout_saga::definition(Duration::from_secs(60), Duration::from_secs(1));
    let engine = Engine::new(
        db.clone(),
        def,
        Arc::new(Scripted(Arc::new(Script::default()))),
        EngineConfig::default(),
    );
    let api = CheckoutApi::new(
        db.clone(),
        Idempotency::new(via.clone(), IdempotencyConfig::default()),
        engine,
    );
    let request = |request_id: &str, cart_id: &str| start_request(request_id, cart_id, None);
    let mut round_trips = Vec::new();
    let mut started = Vec::new();
    for _ in 0..2 {
        let (request_id, cart_id) = (rid(), rid());
        let before = match &proxy {
            Some(proxy) => proxy.settled().await,
            None => statement_log().len(),
        };
        let answer = api
            .start_checkout(Request::new(request(&request_id, &cart_id)))
            .await
            .unwrap()
            .into_inner()
            .checkout
            .unwrap();
        match &proxy {
            Some(proxy) => round_trips.push(proxy.settled().await - before),
            None => {
                let logged = statement_log()[before..].to_vec();
                assert!(
                    logged
                        .iter()
                        .any(|s| s.contains("INSERT INTO idempotency_keys ")
                            && s.contains("INSERT INTO sagas ")
                            && s.contains("INSERT INTO saga_steps ")),
                    "the saga and the key in one hand-off: {logged:?}"
                );
            }
        }
        started.push((request_id, cart_id, answer));
    }
    if postgres {
        // The first prepares the statement on its connection: a round trip more.
        assert_eq!(round_trips[1], 1, "the saga and the key in one statement");
    }

    let (request_id, cart_id, first) = &started[0];
    let again = api
        .start_checkout(Request::new(request(request_id, cart_id)))
        .await
        .unwrap()
        .into_inner()
        .checkout
        .unwrap();
    assert_eq!(
        again.checkout_id, first.checkout_id,
        "a repeat answers the same checkout"
    );
    let reused = api
        .start_checkout(Request::new(request(request_id, &rid())))
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(&reused).as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    let mut read = db.single_read().await.unwrap();
    let sagas: i64 = checkout_kit::on_backend!(&mut read, conn => {
        sqlx::query_scalar("SELECT COUNT(*) FROM sagas")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
    });
    read.rollback().await.unwrap();
    assert_eq!(sagas, 2, "one saga per new request, none for the repeats");
    via.close().await;
    db.close().await;
}
