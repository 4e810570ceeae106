//! Crash recovery with the orchestrator as a separate process: killed at every step boundary
//! and restarted, every saga finishes with exactly one effect per step; on Postgres, one of two
//! replicas is killed under load and the other finishes every saga.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use checkout::role::Role;
use checkout_kit::db::{Backend, Db, PoolConfig};
use checkout_kit::testing::{self, TestDatabase};
use checkout_proto::checkout::checkout_service_client::CheckoutServiceClient;
use checkout_proto::checkout::{CheckoutStatus, ListCheckoutsRequest, StartCheckoutRequest};
use checkout_proto::fulfillment::GetShipmentsRequest;
use checkout_proto::inventory::{GetReservationRequest, ReservationState, get_reservation_request};
use checkout_proto::payment::PaymentState;

use crate::checkout::Clients;
use crate::helpers::{TestSystem, channel, spawn_system};

const STEPS: [&str; 7] = [
    "lock_cart",
    "reserve_inventory",
    "authorize_payment",
    "create_shipments",
    "capture_payment",
    "commit_reservation",
    "complete_cart",
];

/// An orchestrator process of this binary, with its address.
struct Orchestrator {
    child: Child,
    endpoint: String,
}

impl Orchestrator {
    fn spawn(sys: &TestSystem, db_url: &str, replica: &str, crash_points: &str) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_checkout"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CHECKOUT_") {
                command.env_remove(key);
            }
        }
        crate::helpers::with_test_keys(&mut command)
            .args(["serve", "orchestrator", "--listen", "127.0.0.1:0"])
            .args(["--database-url", db_url])
            .args(["--cart-endpoint", &sys.endpoint(Role::Cart)])
            .args(["--inventory-endpoint", &sys.endpoint(Role::Inventory)])
            .args(["--payment-endpoint", &sys.endpoint(Role::Payment)])
            .args(["--fulfillment-endpoint", &sys.endpoint(Role::Fulfillment)])
            .args(["--replica-id", replica])
            .args(["--sweep-interval-ms", "50", "--lease-ttl-ms", "1500"])
            .args(["--crash-points", crash_points])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("the orchestrator starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .split_whitespace()
            .last()
            .expect("the serving line")
            .to_owned();
        Self {
            child,
            endpoint: format!("http://{addr}"),
        }
    }

    async fn exited(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn processor_counts(sys: &TestSystem) -> (i64, i64) {
    let payment = Db::connect(sys.database_url(Role::Payment), &PoolConfig::default())
        .await
        .unwrap();
    let db = checkout_payment::processor::open_books(&payment, &PoolConfig::default())
        .await
        .unwrap();
    let sql =
        "SELECT count(*) FROM processor_records WHERE operation = $1 AND outcome = 'approved'";
    let count = |op: &'static str| {
        let db = db.clone();
        async move {
            match &db {
                Db::Sqlite(pool, ..) => sqlx::query_scalar::<_, i64>(sql)
                    .bind(op)
                    .fetch_one(pool)
                    .await
                    .unwrap(),
                Db::Postgres(pool, _) => sqlx::query_scalar::<_, i64>(sql)
                    .bind(op)
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            }
        }
    };
    let counts = (count("authorize").await, count("capture").await);
    db.close().await;
    payment.close().await;
    counts
}

/// Killed at one boundary of one step, restarted: the saga completes, and the services hold
/// exactly one reservation, one authorization, one capture and one shipment set.
async fn crash_and_recover(point: &str, step: &str) {
    let sys = spawn_system().await;
    let database = TestDatabase::new("orchestrator");
    let mut c = Clients::of(&sys).await;
    let cart = c
        .cart("erin", "USD", &[("TSHIRT-BLK-M", 1), ("BACKPACK-20L", 1)])
        .await;

    let mut doomed = Orchestrator::spawn(
        &sys,
        database.url(),
        "replica-a",
        &format!("{point}:{step}"),
    );
    c.checkout = CheckoutServiceClient::new(channel(&doomed.endpoint).await);
    // The crash may come before StartCheckout's answer leaves: then the answer is lost and the
    // checkout is found again through the restarted orchestrator.
    let answered = c
        .checkout
        .start_checkout(StartCheckoutRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            cart_id: cart.clone(),
            customer_id: "erin".to_owned(),
            payment_token: "tok_visa".to_owned(),
            shipping_address: Some(crate::checkout::address("US")),
            wait_for_outcome: None,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().checkout);
    assert!(
        doomed.exited(Duration::from_secs(15)).await,
        "{point}:{step} was never reached"
    );

    let survivor = Orchestrator::spawn(&sys, database.url(), "replica-a", "");
    c.checkout = CheckoutServiceClient::new(channel(&survivor.endpoint).await);
    let listed = c
        .checkout
        .list_checkouts(ListCheckoutsRequest {
            customer_id: "erin".to_owned(),
            ..ListCheckoutsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .checkouts;
    assert_eq!(listed.len(), 1, "{point}:{step}: one checkout was accepted");
    let accepted = listed.into_iter().next().unwrap();
    if let Some(answer) = answered {
        assert_eq!(answer.checkout_id, accepted.checkout_id);
    }
    let done = c.settle(&accepted.checkout_id, "erin").await;
    assert_eq!(
        done.status(),
        CheckoutStatus::Completed,
        "{point}:{step}: {done:#?}"
    );

    let reservation = c
        .inventory
        .get_reservation(GetReservationRequest {
            target: Some(get_reservation_request::Target::CheckoutId(
                accepted.checkout_id.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(
        reservation.state(),
        ReservationState::Committed,
        "{point}:{step}"
    );
    assert_eq!(
        c.stock("TSHIRT-BLK-M").await.1,
        0,
        "{point}:{step}: nothing left reserved"
    );
    assert_eq!(
        c.payment_state(&accepted.checkout_id).await,
        Some(PaymentState::Captured)
    );
    assert_eq!(
        processor_counts(&sys).await,
        (1, 1),
        "{point}:{step}: charged once"
    );
    let shipments = c
        .fulfillment
        .get_shipments(GetShipmentsRequest {
            checkout_id: accepted.checkout_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .shipments;
    let warehouses: std::collections::HashSet<_> = reservation
        .allocations
        .iter()
        .map(|a| a.warehouse_id.clone())
        .collect();
    assert_eq!(
        shipments.len(),
        warehouses.len(),
        "{point}:{step}: one shipment set"
    );
    drop(survivor);
    sys.system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_every_step_boundary_the_saga_still_completes_once() {
    for step in STEPS {
        for point in ["after_write_ahead", "after_send", "after_record"] {
            crash_and_recover(point, step).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_a_replica_killed_under_load_leaves_nothing_unfinished() {
    if testing::backend() != Backend::Postgres {
        // Several replicas share one database only on Postgres.
        return;
    }
    let sys = spawn_system().await;
    let database = TestDatabase::new("orchestrator");
    let mut a = Orchestrator::spawn(&sys, database.url(), "replica-a", "");
    let b = Orchestrator::spawn(&sys, database.url(), "replica-b", "");
    let mut c = Clients::of(&sys).await;
    let via_a = CheckoutServiceClient::new(channel(&a.endpoint).await);
    let via_b = CheckoutServiceClient::new(channel(&b.endpoint).await);

    let mut started = Vec::new();
    for i in 0..30 {
        let customer = format!("load-{i}");
        let cart = c.cart(&customer, "USD", &[("SOCKS-3PK", 1)]).await;
        // A third of the load goes to b; after a dies, all of it.
        c.checkout = if i % 3 == 0 || i > 20 {
            via_b.clone()
        } else {
            via_a.clone()
        };
        let checkout = c
            .start(&cart, &customer, "tok_visa", "US", Duration::ZERO)
            .await;
        started.push((checkout.checkout_id, customer));
        if i == 20 {
            a.kill();
        }
    }
    a.kill();
    c.checkout = via_b;
    for (checkout_id, customer) in &started {
        let done = c.settle(checkout_id, customer).await;
        assert_eq!(done.status(), CheckoutStatus::Completed, "{done:#?}");
    }
    assert_eq!(
        processor_counts(&sys).await,
        (30, 30),
        "every checkout charged exactly once"
    );
    assert_eq!(
        c.stock("SOCKS-3PK").await.1,
        0,
        "every reservation committed"
    );
    sys.system.stop().await.unwrap();
}
