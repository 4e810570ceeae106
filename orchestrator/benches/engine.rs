//! The saga engine alone: the seven-step checkout saga with in-process no-op steps, started
//! through `CheckoutService.StartCheckout` (idempotency key, saga row, every step's write-ahead
//! record and result) and driven to completion, 32 sagas in flight — the shape of the peer run
//! in `../shared/bench/peers/` (Restate on the same seven steps).
//!
//! `cargo bench -p checkout-orchestrator --bench engine`. Criterion reports the time per 32
//! sagas (its "thrpt" line is sagas/s), driven like the peer's driver: 32 in flight at all times. The Postgres group uses `CHECKOUT_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) and is left out, with a note, when
//! that server is unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use checkout_kit::db::Backend;
use checkout_kit::idempotency::{Idempotency, IdempotencyConfig};
use checkout_kit::testing::TestDatabase;
use checkout_orchestrator::api::CheckoutApi;
use checkout_orchestrator::checkout_saga;
use checkout_orchestrator::runner::{Engine, EngineConfig, StepCall, StepExecutor};
use checkout_proto::checkout::checkout_service_server::CheckoutService;
use checkout_proto::checkout::{CheckoutStatus, StartCheckoutRequest};
use checkout_proto::common::Address;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use tonic::{Request, Status};

/// The allocator the `checkout` binary runs on (malloc replaced process-wide, SQLite included).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IN_FLIGHT: usize = 32;

/// Every step and compensation succeeds at once: only the engine's own work is measured.
struct NoOp;

#[tonic::async_trait]
impl StepExecutor for NoOp {
    async fn execute(&self, _call: StepCall<'_>) -> Result<Value, Status> {
        Ok(json!({}))
    }
}

fn request() -> StartCheckoutRequest {
    StartCheckoutRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        cart_id: uuid::Uuid::new_v4().to_string(),
        customer_id: "bench".to_owned(),
        payment_token: "tok_visa".to_owned(),
        shipping_address: Some(Address {
            recipient_name: "Bench".to_owned(),
            line1: "1 Main St".to_owned(),
            city: "Town".to_owned(),
            postal_code: "11111".to_owned(),
            country_code: "US".to_owned(),
            ..Address::default()
        }),
        wait_for_outcome: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
    }
}

async fn one_saga(api: &CheckoutApi) {
    let checkout = api
        .start_checkout(Request::new(request()))
        .await
        .expect("started")
        .into_inner()
        .checkout
        .expect("a checkout");
    assert_eq!(checkout.status(), CheckoutStatus::Completed);
}

fn bench_backend(c: &mut Criterion, backend: Backend, name: &str) {
    // The orchestrator as `checkout up` runs it: a single-threaded runtime on a core of its
    // own, its database connections' threads on the same core (see the binary's `islands`).
    if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.first().copied()) {
        core_affinity::set_for_current(core);
    }
    let runtime = checkout_kit::runtime::core_runtime().expect("runtime");
    let database = TestDatabase::on(backend, "engine_bench");
    let db = match runtime.block_on(database.migrated(&checkout_orchestrator::MIGRATIONS)) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("skipping the {name} engine benchmark: {e}");
            return;
        }
    };
    let api = runtime.block_on(async {
        let def = checkout_saga::definition(Duration::from_secs(120), Duration::from_secs(5));
        let engine = Engine::new(db.clone(), def, Arc::new(NoOp), EngineConfig::default());
        let idempotency = Idempotency::new(db.clone(), IdempotencyConfig::default());
        Arc::new(CheckoutApi::new(db.clone(), idempotency, engine))
    });

    let mut group = c.benchmark_group(format!("engine/{name}"));
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.sample_size(20);
    group.bench_function("seven_step_saga_x32", |b| {
        // A closed loop like the peer's driver: 32 workers each start the next saga as soon as
        // theirs is over, for `iters` rounds of 32 sagas; no barrier between rounds, so one slow
        // saga does not idle the other 31 slots.
        b.to_async(&runtime).iter_custom(|iters| {
            let api = api.clone();
            async move {
                let total = iters.saturating_mul(IN_FLIGHT as u64);
                let next = Arc::new(AtomicU64::new(0));
                let started = Instant::now();
                let workers: Vec<_> = (0..IN_FLIGHT)
                    .map(|_| {
                        let (api, next) = (api.clone(), next.clone());
                        tokio::spawn(async move {
                            while next.fetch_add(1, Ordering::Relaxed) < total {
                                one_saga(&api).await;
                            }
                        })
                    })
                    .collect();
                for worker in workers {
                    worker.await.expect("saga worker");
                }
                started.elapsed()
            }
        });
    });
    group.finish();
    runtime.block_on(db.close());
}

fn engine(c: &mut Criterion) {
    bench_backend(c, Backend::Sqlite, "sqlite");
    bench_backend(c, Backend::Postgres, "postgres");
}

criterion_group!(benches, engine);
criterion_main!(benches);
