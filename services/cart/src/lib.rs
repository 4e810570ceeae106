//! Cart service: a server-priced catalog, carts, and the checkout lock the saga takes.
//!
//! # Layout
//! * [`api`]: the gRPC handlers of `CartService` and the server that carries them.
//! * migrations: `migrations/sqlite/cart` and `migrations/postgres/cart`, embedded in
//!   [`MIGRATIONS`].

pub mod api;

use checkout_kit::db::Migrations;

/// This service's database migrations for both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../../migrations/sqlite/cart"),
    postgres: sqlx::migrate!("../../migrations/postgres/cart"),
};
