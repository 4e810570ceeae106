//! Cost of the idempotency layer per request, on both backends:
//! * `new_key`: a new request_id — store the key with its answer, commit;
//! * `replay`: a repeated request_id — storing the answer finds the key remembered, the
//!   transaction is rolled back, and the stored answer is read and returned;
//! * `bare_write_transaction`: the floor, one write transaction with one small insert.
//!
//! `cargo bench -p checkout-kit --bench idempotency`. The Postgres group runs against
//! `CHECKOUT_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and is
//! left out, with a note, when that server is unreachable.

use checkout_kit::db::{Backend, Db, Migrations, Tx};
use checkout_kit::idempotency::{Idempotency, IdempotencyConfig, Key};
use checkout_kit::on_backend;
use checkout_kit::testing::TestDatabase;
use checkout_proto::cart::{AddItemRequest, Cart};
use criterion::{Criterion, criterion_group, criterion_main};

/// The allocator the `checkout` binary runs on (malloc replaced process-wide, SQLite included).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../../migrations/sqlite/cart"),
    postgres: sqlx::migrate!("../../migrations/postgres/cart"),
};

const SCOPE: &str = "/checkout.cart.v1.CartService/AddItem";

fn request(request_id: String) -> AddItemRequest {
    AddItemRequest {
        request_id,
        cart_id: "0192f0c4-7d1e-7c52-9a43-1f7b7a6d2e10".to_owned(),
        customer_id: "customer-42".to_owned(),
        sku: "SKU-TSHIRT-M".to_owned(),
        quantity: 2,
    }
}

async fn once(layer: &Idempotency, request: &AddItemRequest) -> Cart {
    let key = Key::new(SCOPE, request).expect("a valid key");
    layer
        .begin::<Cart>(key)
        .await
        .expect("begin")
        .finish(Ok(Cart {
            cart_id: request.cart_id.clone(),
            version: 1,
            ..Cart::default()
        }))
        .await
        .expect("stored or replayed")
}

async fn bare_write(db: &Db) {
    let mut tx: Tx = db.begin().await.expect("begin");
    on_backend!(&mut tx, conn => {
        sqlx::query("INSERT INTO bench_floor (id) VALUES ($1)")
            .bind(uuid::Uuid::new_v4().to_string())
            .execute(&mut *conn)
            .await
            .expect("insert");
    });
    tx.commit().await.expect("commit");
}

fn bench_backend(c: &mut Criterion, backend: Backend, name: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let database = TestDatabase::on(backend, "bench");
    let db = match runtime.block_on(database.migrated(&MIGRATIONS)) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("skipping the {name} benchmarks: {e}");
            return;
        }
    };
    runtime.block_on(async {
        let mut tx = db.begin().await.expect("begin");
        on_backend!(&mut tx, conn => {
            sqlx::query("CREATE TABLE bench_floor (id TEXT PRIMARY KEY)")
                .execute(&mut *conn)
                .await
                .expect("create");
        });
        tx.commit().await.expect("commit");
    });
    let layer = Idempotency::new(db.clone(), IdempotencyConfig::default());

    let mut group = c.benchmark_group(format!("idempotency/{name}"));
    group.bench_function("new_key", |b| {
        b.to_async(&runtime).iter(|| {
            let request = request(uuid::Uuid::new_v4().to_string());
            let layer = &layer;
            async move { once(layer, &request).await }
        });
    });
    let repeated = request(uuid::Uuid::new_v4().to_string());
    runtime.block_on(once(&layer, &repeated));
    group.bench_function("replay", |b| {
        b.to_async(&runtime).iter(|| once(&layer, &repeated));
    });
    group.bench_function("bare_write_transaction", |b| {
        b.to_async(&runtime).iter(|| bare_write(&db));
    });
    group.finish();
    runtime.block_on(db.close());
}

fn idempotency(c: &mut Criterion) {
    bench_backend(c, Backend::Sqlite, "sqlite");
    bench_backend(c, Backend::Postgres, "postgres");
}

criterion_group!(benches, idempotency);
criterion_main!(benches);
