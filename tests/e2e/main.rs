//! End-to-end tests: real servers on ephemeral ports with fresh databases, on the backend that
//! `CHECKOUT_TEST_BACKEND` picks (SQLite by default, `postgres` for the Postgres leg).

mod cart;
mod chaos;
mod checkout;
mod cli;
mod faults;
mod fuzz;
mod helpers;
mod hostile;
mod idempotency;
mod inventory;
mod migrations;
mod recovery;
mod security;
mod servers;
mod telemetry;
