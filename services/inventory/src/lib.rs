//! Inventory service: multi-warehouse stock with optimistic-lock reservations.
//!
//! # Layout
//! * [`api`]: the gRPC handlers of `InventoryService` and the server that carries them.
//! * migrations: `migrations/sqlite/inventory` and `migrations/postgres/inventory`, embedded in
//!   [`MIGRATIONS`].

pub mod api;

use checkout_kit::db::Migrations;

/// This service's database migrations for both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../../migrations/sqlite/inventory"),
    postgres: sqlx::migrate!("../../migrations/postgres/inventory"),
};
