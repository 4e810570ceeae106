//! The checkout saga orchestrator: `CheckoutService` and the gRPC clients of the four services
//! it coordinates.
//!
//! # Layout
//! * [`api`]: the `CheckoutService` handlers and the server that carries them.
//! * [`clients`]: the gRPC clients of cart, inventory, payment and fulfillment. The orchestrator
//!   talks to the services only through these, also when all five run in one process.
//! * [`runner`]: the saga engine (drivers, sweeper); [`saga`]: its pure state machine;
//!   [`journal`]: the group commit its drivers write through; [`changes`]: per-saga change
//!   notices for callers waiting on a checkout; [`store`]: every SQL statement.
//! * migrations: `migrations/sqlite/orchestrator` and `migrations/postgres/orchestrator`,
//!   embedded in [`MIGRATIONS`].

pub mod api;
pub mod changes;
pub mod checkout_saga;
pub mod clients;
pub mod journal;
pub mod metrics;
pub mod runner;
pub mod saga;
pub mod store;
pub mod view;

use checkout_kit::db::Migrations;

/// The orchestrator's database migrations for both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../migrations/sqlite/orchestrator"),
    postgres: sqlx::migrate!("../migrations/postgres/orchestrator"),
};
