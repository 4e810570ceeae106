//! Fulfillment service: shipments per warehouse, cancellation and tracking.
//!
//! # Layout
//! * [`api`]: the gRPC handlers of `FulfillmentService` (validation, idempotency) and its
//!   server.
//! * [`shipments`]: create (one shipment per warehouse), cancel, advance, read.
//! * [`address`]: address checks and the served countries (never Antarctica).
//! * [`storage`]: every SQL statement of the service.
//! * [`error`]: the service's errors and their one mapping to gRPC status.
//! * migrations: `migrations/sqlite/fulfillment` and `migrations/postgres/fulfillment`,
//!   embedded in [`MIGRATIONS`].

pub mod address;
pub mod api;
pub mod error;
pub mod shipments;
pub mod storage;

use checkout_kit::db::Migrations;

/// This service's database migrations for both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../../migrations/sqlite/fulfillment"),
    postgres: sqlx::migrate!("../../migrations/postgres/fulfillment"),
};
