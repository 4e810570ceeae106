//! Cart service: a server-priced catalog, carts, and the checkout lock the saga takes.
//!
//! # Layout
//! * [`api`]: the gRPC handlers of `CartService` (validation, idempotency) and its server.
//! * [`carts`]: the cart use cases (edit, lock, unlock, complete), one transaction each.
//! * [`catalog`]: the catalog source (the shipped fixture or an operator's JSON file).
//! * [`storage`]: every SQL statement of the service.
//! * [`error`]: the service's errors and their one mapping to gRPC status.
//! * migrations: `migrations/sqlite/cart` and `migrations/postgres/cart`, embedded in
//!   [`MIGRATIONS`].

pub mod api;
pub mod carts;
pub mod catalog;
pub mod error;
pub mod storage;

use checkout_kit::db::Migrations;

/// This service's database migrations for both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../../migrations/sqlite/cart"),
    postgres: sqlx::migrate!("../../migrations/postgres/cart"),
};
