//! Fulfillment service: shipments per warehouse, cancellation and tracking.
//!
//! # Layout
//! * [`api`]: the gRPC handlers of `FulfillmentService` and the server that carries them.
//! * migrations: `migrations/sqlite/fulfillment` and `migrations/postgres/fulfillment`, embedded in
//!   [`MIGRATIONS`].

pub mod api;

use checkout_kit::db::Migrations;

/// This service's database migrations for both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../../migrations/sqlite/fulfillment"),
    postgres: sqlx::migrate!("../../migrations/postgres/fulfillment"),
};
