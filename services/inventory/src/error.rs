//! The inventory service's errors and their one mapping to gRPC status.

use checkout_kit::db::DbError;
use checkout_kit::status::{self, Rejection};
use tonic::{Code, Status};

/// Why an inventory request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The request is malformed (field-level).
    #[error("invalid request")]
    Invalid(Rejection),
    /// No stock row exists for this sku.
    #[error("no stock of {0}")]
    SkuNotFound(String),
    /// No such warehouse.
    #[error("no warehouse {0}")]
    WarehouseNotFound(String),
    /// On hand would drop below what is reserved, or below zero.
    #[error("{sku} in {warehouse_id} would fall below the {reserved} units reserved")]
    BelowReserved {
        /// Stock keeping unit.
        sku: String,
        /// Warehouse.
        warehouse_id: String,
        /// Units reserved.
        reserved: i64,
    },
    /// Not enough available stock for these skus.
    #[error("not enough stock of {}", .0.join(", "))]
    OutOfStock(Vec<String>),
    /// The checkout's reservation was released before it was made.
    #[error("checkout {0} was released; it reserves nothing")]
    CheckoutReleased(String),
    /// The checkout already holds a different reservation.
    #[error("checkout {0} already holds a reservation of other lines")]
    ReservationExists(String),
    /// No such reservation.
    #[error("reservation not found")]
    ReservationNotFound,
    /// The reservation no longer holds stock (released, expired or a tombstone).
    #[error("reservation is {0}; its stock was returned")]
    NotHeld(String),
    /// The reservation's stock already left.
    #[error("reservation is committed; its stock already left")]
    Committed,
    /// Concurrent reservations kept changing the same stock rows past the retry bound.
    #[error("stock changed concurrently; retry")]
    Conflict,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<InventoryError> for Status {
    fn from(error: InventoryError) -> Self {
        let message = error.to_string();
        let rejection = match error {
            InventoryError::Invalid(rejection) => rejection,
            InventoryError::SkuNotFound(sku) => {
                Rejection::new(Code::NotFound, "SKU_NOT_FOUND", message).meta("sku", sku)
            }
            InventoryError::WarehouseNotFound(id) => {
                Rejection::new(Code::NotFound, "WAREHOUSE_NOT_FOUND", message)
                    .meta("warehouse_id", id)
            }
            InventoryError::BelowReserved { sku, .. } => {
                Rejection::new(Code::FailedPrecondition, "STOCK_BELOW_RESERVED", message)
                    .meta("sku", sku)
            }
            InventoryError::OutOfStock(skus) => {
                Rejection::new(Code::FailedPrecondition, "OUT_OF_STOCK", message)
                    .meta("skus", skus.join(","))
            }
            InventoryError::CheckoutReleased(checkout_id) => {
                Rejection::new(Code::FailedPrecondition, "CHECKOUT_RELEASED", message)
                    .meta("checkout_id", checkout_id)
            }
            InventoryError::ReservationExists(checkout_id) => {
                Rejection::new(Code::FailedPrecondition, "RESERVATION_EXISTS", message)
                    .meta("checkout_id", checkout_id)
            }
            InventoryError::ReservationNotFound => {
                Rejection::new(Code::NotFound, "RESERVATION_NOT_FOUND", message)
            }
            InventoryError::NotHeld(state) => {
                Rejection::new(Code::FailedPrecondition, "RESERVATION_RELEASED", message)
                    .meta("state", state)
            }
            InventoryError::Committed => {
                Rejection::new(Code::FailedPrecondition, "RESERVATION_COMMITTED", message)
            }
            InventoryError::Conflict => Rejection::new(Code::Aborted, "STOCK_CONFLICT", message),
            InventoryError::Db(e) => return status::database(&e),
        };
        rejection.into_status()
    }
}

impl From<Rejection> for InventoryError {
    fn from(rejection: Rejection) -> Self {
        Self::Invalid(rejection)
    }
}
