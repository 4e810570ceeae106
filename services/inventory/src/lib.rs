//! Inventory service: multi-warehouse stock with optimistic-lock reservations.
//!
//! # Layout
//! * [`api`]: the gRPC handlers of `InventoryService` (validation, idempotency, conflict
//!   retries) and its server.
//! * [`reservations`]: reserve (compare-and-set on stock versions, all lines or none), commit,
//!   release, expire.
//! * [`stock`]: stock levels, restocks, and seeding from the fixture.
//! * [`reaper`]: the background release of reservations whose TTL elapsed.
//! * [`fixture`]: the warehouses and opening stock shipped in the repository.
//! * [`storage`]: every SQL statement of the service.
//! * [`error`]: the service's errors and their one mapping to gRPC status.
//! * migrations: `migrations/sqlite/inventory` and `migrations/postgres/inventory`, embedded in
//!   [`MIGRATIONS`].

pub mod api;
pub mod error;
pub mod fixture;
pub mod reaper;
pub mod reservations;
pub mod stock;
pub mod storage;

use checkout_kit::db::Migrations;

/// This service's database migrations for both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../../migrations/sqlite/inventory"),
    postgres: sqlx::migrate!("../../migrations/postgres/inventory"),
};
