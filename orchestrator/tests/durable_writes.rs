//! How many durable writes one saga costs, on the backend the test run picks. In a binary of its
//! own: the commit counter is process-wide.

use std::sync::Arc;
use std::time::Duration;

use checkout_kit::db;
use checkout_kit::idempotency::{Idempotency, IdempotencyConfig};
use checkout_kit::testing::TestDatabase;
use checkout_orchestrator::api::CheckoutApi;
use checkout_orchestrator::checkout_saga;
use checkout_orchestrator::runner::{Engine, EngineConfig, StepCall, StepExecutor};
use checkout_proto::checkout::checkout_service_server::CheckoutService;
use checkout_proto::checkout::*;
use checkout_proto::common::Address;
use serde_json::{Value, json};
use tonic::{Request, Status};

/// Every step succeeds at once.
struct NoOp;

#[tonic::async_trait]
impl StepExecutor for NoOp {
    async fn execute(&self, _call: StepCall<'_>) -> Result<Value, Status> {
        Ok(json!({}))
    }
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Starts a checkout and waits up to `wait` seconds for its outcome.
async fn start(api: &CheckoutApi, wait: i64) -> Checkout {
    let request = StartCheckoutRequest {
        request_id: rid(),
        cart_id: rid(),
        customer_id: "grace".to_owned(),
        payment_token: "tok_visa".to_owned(),
        shipping_address: Some(Address {
            recipient_name: "Grace".to_owned(),
            line1: "3 Main St".to_owned(),
            city: "Town".to_owned(),
            postal_code: "11111".to_owned(),
            country_code: "US".to_owned(),
            ..Address::default()
        }),
        wait_for_outcome: Some(prost_types::Duration {
            seconds: wait,
            nanos: 0,
        }),
    };
    api.start_checkout(Request::new(request))
        .await
        .unwrap()
        .into_inner()
        .checkout
        .unwrap()
}

#[tokio::test]
async fn a_saga_is_stored_with_its_first_write_ahead_then_once_per_step() {
    let database = TestDatabase::new("durable_writes");
    let db = database
        .migrated(&checkout_orchestrator::MIGRATIONS)
        .await
        .unwrap();
    let def = checkout_saga::definition(Duration::from_secs(60), Duration::from_secs(5));
    let steps = def.steps.len();
    let engine = Engine::new(db.clone(), def, Arc::new(NoOp), EngineConfig::default());
    let idempotency = Idempotency::new(db.clone(), IdempotencyConfig::default());
    let api = CheckoutApi::new(db.clone(), idempotency, engine);
    let before = db::commits_so_far();
    let done = start(&api, 10).await;
    assert_eq!(done.status(), CheckoutStatus::Completed);
    // The start stores the saga with the first step written ahead; each step's result then goes
    // with the next step's write-ahead, and the last one's with the end of the saga.
    let commits = db::commits_so_far() - before;
    assert_eq!(commits, steps as u64 + 1, "durable writes for one saga");
    let kinds: Vec<(&str, &str)> = done
        .timeline
        .iter()
        .map(|e| (e.kind.as_str(), e.step.as_str()))
        .take(4)
        .collect();
    assert_eq!(
        kinds,
        [
            ("accepted", ""),
            ("step_started", "lock_cart"),
            ("step_succeeded", "lock_cart"),
            ("step_started", "reserve_inventory"),
        ]
    );
    let sequences: Vec<i64> = done.timeline.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    let first = &done.steps[0];
    assert_eq!(first.attempts.len(), 1, "the first attempt was sent once");
    assert_eq!(first.attempts[0].outcome(), AttemptOutcome::Success);

    // Not waiting: the answer already shows the first step running its first attempt, as
    // stored.
    let started = start(&api, 0).await;
    assert_eq!(started.steps.len(), steps);
    assert_eq!(started.timeline.len(), 2);
    assert_eq!(started.steps[0].attempts.len(), 1);
    assert!(
        started.steps[1..]
            .iter()
            .all(|s| s.status() == StepStatus::Pending)
    );
    db.close().await;
}
