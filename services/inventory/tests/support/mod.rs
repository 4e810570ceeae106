//! The inventory service over a fresh database seeded with a small fixture, and helpers to
//! call it, shared by the test binaries.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use checkout_inventory::api::InventoryServiceApi;
use checkout_inventory::fixture::StockFixture;
use checkout_inventory::stock;
use checkout_kit::db::Db;
use checkout_kit::idempotency::{Idempotency, IdempotencyConfig};
use checkout_kit::testing::TestDatabase;
use checkout_proto::inventory::inventory_service_server::InventoryService;
use checkout_proto::inventory::*;
use tonic::{Request, Status};

/// Two warehouses and three skus: one split across both, one plentiful, one scarce.
pub const FIXTURE: &str = r#"{
  "warehouses": [
    {"warehouse_id": "east", "region": "us-east", "priority": 1},
    {"warehouse_id": "west", "region": "us-west", "priority": 2}
  ],
  "stock": [
    {"sku": "SPLIT", "warehouse_id": "east", "on_hand": 40},
    {"sku": "SPLIT", "warehouse_id": "west", "on_hand": 25},
    {"sku": "PLENTY", "warehouse_id": "west", "on_hand": 100},
    {"sku": "SCARCE", "warehouse_id": "east", "on_hand": 1}
  ]
}"#;

/// The service, its database and the test database that is dropped with it.
pub struct Harness {
    pub api: InventoryServiceApi,
    pub db: Db,
    _database: TestDatabase,
}

/// A fresh database seeded with [`FIXTURE`], and the service over it.
pub async fn harness() -> Harness {
    let database = TestDatabase::new("inventory");
    let db = database
        .migrated(&checkout_inventory::MIGRATIONS)
        .await
        .unwrap();
    stock::seed(&db, &StockFixture::parse(FIXTURE).unwrap())
        .await
        .unwrap();
    let idempotency = Idempotency::new(db.clone(), IdempotencyConfig::default());
    Harness {
        api: InventoryServiceApi::new(db.clone(), idempotency),
        db,
        _database: database,
    }
}

/// A new request id.
pub fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A reservation line.
pub fn line(sku: &str, quantity: i64) -> ReservationLine {
    ReservationLine {
        sku: sku.to_owned(),
        quantity,
    }
}

impl Harness {
    /// A sku's stock levels.
    pub async fn stock(&self, sku: &str) -> GetStockResponse {
        self.api
            .get_stock(Request::new(GetStockRequest {
                sku: sku.to_owned(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    /// A sku's (on hand, reserved) in one warehouse.
    pub async fn level(&self, sku: &str, warehouse: &str) -> (i64, i64) {
        let stock = self.stock(sku).await;
        let level = stock
            .levels
            .iter()
            .find(|l| l.warehouse_id == warehouse)
            .unwrap();
        (level.on_hand, level.reserved)
    }

    /// Reserves lines for a checkout.
    pub async fn reserve(
        &self,
        checkout_id: &str,
        lines: Vec<ReservationLine>,
        ttl: Option<prost_types::Duration>,
    ) -> Result<Reservation, Status> {
        self.api
            .reserve_stock(Request::new(ReserveStockRequest {
                request_id: rid(),
                checkout_id: checkout_id.to_owned(),
                lines,
                ttl,
            }))
            .await
            .map(|r| r.into_inner().reservation.unwrap())
    }

    /// Commits a checkout's reservation.
    pub async fn commit(&self, checkout_id: &str) -> Result<Reservation, Status> {
        self.api
            .commit_reservation(Request::new(CommitReservationRequest {
                request_id: rid(),
                target: Some(commit_reservation_request::Target::CheckoutId(
                    checkout_id.to_owned(),
                )),
            }))
            .await
            .map(|r| r.into_inner().reservation.unwrap())
    }

    /// Releases a checkout's reservation.
    pub async fn release(&self, checkout_id: &str) -> Result<Reservation, Status> {
        self.api
            .release_reservation(Request::new(ReleaseReservationRequest {
                request_id: rid(),
                target: Some(release_reservation_request::Target::CheckoutId(
                    checkout_id.to_owned(),
                )),
                reason: "checkout compensated".to_owned(),
            }))
            .await
            .map(|r| r.into_inner().reservation.unwrap())
    }

    /// A checkout's reservation.
    pub async fn reservation(&self, checkout_id: &str) -> Reservation {
        self.api
            .get_reservation(Request::new(GetReservationRequest {
                target: Some(get_reservation_request::Target::CheckoutId(
                    checkout_id.to_owned(),
                )),
            }))
            .await
            .unwrap()
            .into_inner()
            .reservation
            .unwrap()
    }
}
