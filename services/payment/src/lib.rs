//! Payment service: payment state machine, simulated processor, double-entry ledger.
//!
//! # Layout
//! * [`api`]: the gRPC handlers of `PaymentService` and the server that carries them.
//! * migrations: `migrations/sqlite/payment` and `migrations/postgres/payment`, embedded in
//!   [`MIGRATIONS`].

pub mod api;

use checkout_kit::db::Migrations;

/// This service's database migrations for both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../../migrations/sqlite/payment"),
    postgres: sqlx::migrate!("../../migrations/postgres/payment"),
};
