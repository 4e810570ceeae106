//! Payment service: payment state machine, simulated processor, double-entry ledger,
//! reconciliation.
//!
//! # Layout
//! * [`api`]: the gRPC handlers of `PaymentService` (validation) and its server.
//! * [`payments`]: authorize, capture, void, refund — each processor call between two recorded
//!   recovery points.
//! * [`state`]: the payment state machine.
//! * [`processor`]: the processor trait and the simulated processor with its test tokens.
//! * [`ledger`]: balanced double-entry postings for every money movement.
//! * [`reconcile`]: payments vs ledger vs processor, every mismatch by kind.
//! * [`storage`]: every SQL statement of the service.
//! * [`error`]: the service's errors and their one mapping to gRPC status.
//! * migrations: `migrations/sqlite/payment` and `migrations/postgres/payment`, embedded in
//!   [`MIGRATIONS`].

pub mod api;
pub mod error;
pub mod ledger;
pub mod payments;
pub mod processor;
pub mod reconcile;
pub mod state;
pub mod storage;

use checkout_kit::db::Migrations;

/// This service's database migrations for both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../../migrations/sqlite/payment"),
    postgres: sqlx::migrate!("../../migrations/postgres/payment"),
};
