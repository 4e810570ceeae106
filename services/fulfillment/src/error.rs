//! The fulfillment service's errors and their one mapping to gRPC status.

use checkout_kit::db::DbError;
use checkout_kit::status::{self, Rejection};
use tonic::{Code, Status};

/// Why a fulfillment request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FulfillmentError {
    /// The request is malformed (field-level).
    #[error("invalid request")]
    Invalid(Rejection),
    /// The address's country is not served.
    #[error("we do not ship to {0}")]
    NotServiceable(String),
    /// The checkout's shipments were cancelled (or cancelled before any create).
    #[error("shipments of checkout {0} were cancelled")]
    CheckoutCancelled(String),
    /// The checkout already has shipments for other allocations.
    #[error("checkout {0} already has shipments for other allocations")]
    ShipmentsExist(String),
    /// A shipment already left, so the checkout's shipments can no longer be cancelled.
    #[error("shipment {0} already shipped; it cannot be cancelled")]
    AlreadyShipped(String),
    /// No such shipment.
    #[error("shipment {0} not found")]
    ShipmentNotFound(String),
    /// The checkout has no shipments.
    #[error("checkout {0} has no shipments")]
    CheckoutNotFound(String),
    /// Statuses move one step at a time, forward only.
    #[error("a shipment goes from {from} to the next status, not to {to}")]
    InvalidTransition {
        /// Current status.
        from: String,
        /// Requested status.
        to: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<FulfillmentError> for Status {
    fn from(error: FulfillmentError) -> Self {
        let message = error.to_string();
        let rejection = match error {
            FulfillmentError::Invalid(rejection) => rejection,
            FulfillmentError::NotServiceable(country) => {
                Rejection::new(Code::FailedPrecondition, "ADDRESS_NOT_SERVICEABLE", message)
                    .meta("country_code", country)
                    .violation("address.country_code", "not a country we ship to")
            }
            FulfillmentError::CheckoutCancelled(id) => {
                Rejection::new(Code::FailedPrecondition, "CHECKOUT_CANCELLED", message)
                    .meta("checkout_id", id)
            }
            FulfillmentError::ShipmentsExist(id) => {
                Rejection::new(Code::FailedPrecondition, "SHIPMENTS_EXIST", message)
                    .meta("checkout_id", id)
            }
            FulfillmentError::AlreadyShipped(id) => Rejection::new(
                Code::FailedPrecondition,
                "SHIPMENT_ALREADY_SHIPPED",
                message,
            )
            .meta("shipment_id", id),
            FulfillmentError::ShipmentNotFound(id) => {
                Rejection::new(Code::NotFound, "SHIPMENT_NOT_FOUND", message)
                    .meta("shipment_id", id)
            }
            FulfillmentError::CheckoutNotFound(id) => {
                Rejection::new(Code::NotFound, "SHIPMENTS_NOT_FOUND", message)
                    .meta("checkout_id", id)
            }
            FulfillmentError::InvalidTransition { from, to } => {
                Rejection::new(Code::FailedPrecondition, "INVALID_TRANSITION", message)
                    .meta("from", from)
                    .meta("to", to)
            }
            FulfillmentError::Db(e) => return status::database(&e),
        };
        rejection.into_status()
    }
}

impl From<Rejection> for FulfillmentError {
    fn from(rejection: Rejection) -> Self {
        Self::Invalid(rejection)
    }
}
