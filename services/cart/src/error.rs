//! The cart service's errors and their one mapping to gRPC status.

use checkout_kit::db::DbError;
use checkout_kit::status::{self, Rejection};
use tonic::{Code, Status};

/// Why a cart request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CartError {
    /// The request is malformed or names something that cannot be used (field-level).
    #[error("invalid request")]
    Invalid(Rejection),
    /// No such cart, or not the caller's.
    #[error("cart {0} not found")]
    CartNotFound(String),
    /// The cart has no line with this sku.
    #[error("cart has no line for {0}")]
    LineNotFound(String),
    /// Edits need an active cart.
    #[error("cart is {0}, not editable")]
    NotEditable(String),
    /// A lock needs an active cart.
    #[error("cart is {0}, cannot be locked")]
    NotActive(String),
    /// An empty cart cannot be checked out.
    #[error("cart is empty")]
    Empty,
    /// The checkout's customer does not own the cart.
    #[error("cart belongs to another customer")]
    CustomerMismatch,
    /// Another checkout holds the cart.
    #[error("cart is locked by another checkout")]
    LockedByAnother,
    /// This checkout was released (or released before it ever locked): it never locks again.
    #[error("checkout {0} was released")]
    CheckoutReleased(String),
    /// This checkout already concerns another cart.
    #[error("checkout {0} belongs to another cart")]
    CheckoutOfAnotherCart(String),
    /// Completing needs the cart locked by this checkout.
    #[error("checkout {0} holds no cart lock")]
    NotLocked(String),
    /// An ordered cart cannot be unlocked.
    #[error("cart is already ordered")]
    AlreadyOrdered,
    /// Some lines' products are no longer sold.
    #[error("products no longer sold: {}", .0.join(", "))]
    ProductsUnavailable(Vec<String>),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<CartError> for Status {
    fn from(error: CartError) -> Self {
        let refusal = |code, reason: &str, message: String| Rejection::new(code, reason, message);
        let message = error.to_string();
        let rejection = match error {
            CartError::Invalid(rejection) => rejection,
            CartError::CartNotFound(cart_id) => {
                refusal(Code::NotFound, "CART_NOT_FOUND", message).meta("cart_id", cart_id)
            }
            CartError::LineNotFound(sku) => {
                refusal(Code::NotFound, "LINE_NOT_FOUND", message).meta("sku", sku)
            }
            CartError::NotEditable(state) => {
                refusal(Code::FailedPrecondition, "CART_NOT_EDITABLE", message).meta("state", state)
            }
            CartError::NotActive(state) => {
                refusal(Code::FailedPrecondition, "CART_NOT_ACTIVE", message).meta("state", state)
            }
            CartError::Empty => refusal(Code::FailedPrecondition, "CART_EMPTY", message),
            CartError::CustomerMismatch => {
                refusal(Code::FailedPrecondition, "CART_CUSTOMER_MISMATCH", message)
            }
            CartError::LockedByAnother => refusal(
                Code::FailedPrecondition,
                "CART_LOCKED_BY_ANOTHER_CHECKOUT",
                message,
            ),
            CartError::CheckoutReleased(checkout_id) => {
                refusal(Code::FailedPrecondition, "CHECKOUT_RELEASED", message)
                    .meta("checkout_id", checkout_id)
            }
            CartError::CheckoutOfAnotherCart(checkout_id) => refusal(
                Code::FailedPrecondition,
                "CHECKOUT_OF_ANOTHER_CART",
                message,
            )
            .meta("checkout_id", checkout_id),
            CartError::NotLocked(checkout_id) => {
                refusal(Code::FailedPrecondition, "CART_NOT_LOCKED", message)
                    .meta("checkout_id", checkout_id)
            }
            CartError::AlreadyOrdered => {
                refusal(Code::FailedPrecondition, "CART_ALREADY_ORDERED", message)
            }
            CartError::ProductsUnavailable(skus) => {
                refusal(Code::FailedPrecondition, "PRODUCT_UNAVAILABLE", message)
                    .meta("skus", skus.join(","))
            }
            CartError::Db(e) => return status::database(&e),
        };
        rejection.into_status()
    }
}

impl From<Rejection> for CartError {
    fn from(rejection: Rejection) -> Self {
        Self::Invalid(rejection)
    }
}
