//! ReserveStock under 32-way concurrency, through the handlers (no network):
//! * `hot_sku`: every reservation takes one unit of the same sku — optimistic-lock conflicts;
//! * `spread_skus`: each of the 32 takes a different sku — no conflicts.
//!
//! `cargo bench -p checkout-inventory --bench reserve`; throughput is reservations per second.
//! The conflict counters are printed after each group. The Postgres group runs against
//! `CHECKOUT_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and is
//! left out, with a note, when that server is unreachable.

use std::sync::atomic::Ordering;

use checkout_inventory::api::InventoryServiceApi;
use checkout_inventory::fixture::StockFixture;
use checkout_inventory::stock;
use checkout_kit::db::Backend;
use checkout_kit::idempotency::{Idempotency, IdempotencyConfig};
use checkout_kit::testing::TestDatabase;
use checkout_proto::inventory::inventory_service_server::InventoryService;
use checkout_proto::inventory::{ReservationLine, ReserveStockRequest};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The allocator the `checkout` binary runs on (malloc replaced process-wide, SQLite included).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONTENDERS: usize = 32;

fn fixture() -> StockFixture {
    let mut stock =
        vec![serde_json::json!({"sku": "HOT", "warehouse_id": "w", "on_hand": 1_000_000_000})];
    for i in 0..CONTENDERS {
        stock.push(serde_json::json!({"sku": format!("SPREAD-{i}"), "warehouse_id": "w", "on_hand": 1_000_000_000}));
    }
    let text = serde_json::json!({
        "warehouses": [{"warehouse_id": "w", "region": "r", "priority": 1}],
        "stock": stock,
    });
    StockFixture::parse(&text.to_string()).expect("bench fixture")
}

async fn round(api: &InventoryServiceApi, sku_of: impl Fn(usize) -> String) {
    let tasks: Vec<_> = (0..CONTENDERS)
        .map(|i| {
            let api = api.clone();
            let request = ReserveStockRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                checkout_id: uuid::Uuid::new_v4().to_string(),
                lines: vec![ReservationLine {
                    sku: sku_of(i),
                    quantity: 1,
                }],
                ttl: None,
            };
            tokio::spawn(async move { api.reserve_stock(tonic::Request::new(request)).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("reserved");
    }
}

fn report(name: &str, api: &InventoryServiceApi) {
    let stats = api.reserve_stats();
    let attempts = stats.attempts.swap(0, Ordering::Relaxed);
    let conflicts = stats.conflicts.swap(0, Ordering::Relaxed);
    let exhausted = stats.exhausted.swap(0, Ordering::Relaxed);
    eprintln!(
        "{name}: {attempts} attempts, {conflicts} conflict retries ({:.2} per reservation), \
         {exhausted} exhausted",
        conflicts as f64 / (attempts - conflicts).max(1) as f64
    );
}

fn bench_backend(c: &mut Criterion, backend: Backend, name: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let database = TestDatabase::on(backend, "reserve");
    let db = match runtime.block_on(database.migrated(&checkout_inventory::MIGRATIONS)) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("skipping the {name} benchmarks: {e}");
            return;
        }
    };
    runtime
        .block_on(stock::seed(&db, &fixture()))
        .expect("seed");
    let api = InventoryServiceApi::new(
        db.clone(),
        Idempotency::new(db.clone(), IdempotencyConfig::default()),
    );

    let mut group = c.benchmark_group(format!("reserve/{name}"));
    group.throughput(Throughput::Elements(CONTENDERS as u64));
    group.sample_size(20);
    report("warm-up", &api);
    group.bench_function("hot_sku", |b| {
        b.to_async(&runtime)
            .iter(|| round(&api, |_| "HOT".to_owned()));
    });
    report(&format!("reserve/{name}/hot_sku"), &api);
    group.bench_function("spread_skus", |b| {
        b.to_async(&runtime)
            .iter(|| round(&api, |i| format!("SPREAD-{i}")));
    });
    report(&format!("reserve/{name}/spread_skus"), &api);
    group.finish();
    runtime.block_on(db.close());
}

fn reserve(c: &mut Criterion) {
    bench_backend(c, Backend::Sqlite, "sqlite");
    bench_backend(c, Backend::Postgres, "postgres");
}

criterion_group!(benches, reserve);
criterion_main!(benches);
