//! The payment service's errors and their one mapping to gRPC status.

use checkout_kit::db::DbError;
use checkout_kit::status::{self, Rejection};
use tonic::{Code, Status};

/// Why a payment request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The request is malformed (field-level).
    #[error("invalid request")]
    Invalid(Rejection),
    /// The processor declined.
    #[error("payment declined: {0}")]
    Declined(String),
    /// No such payment.
    #[error("payment not found")]
    NotFound,
    /// The checkout's payment was voided before it was authorized.
    #[error("checkout {0} was voided; nothing is charged")]
    CheckoutVoided(String),
    /// The checkout already has a different payment.
    #[error("checkout {0} already has a different payment")]
    PaymentExists(String),
    /// The state machine forbids this action in this state.
    #[error("cannot {action} a payment that is {state}")]
    IllegalTransition {
        /// What was asked.
        action: &'static str,
        /// The payment's state.
        state: String,
    },
    /// The amount is larger than what it may take from.
    #[error("amount exceeds what is {0}")]
    AmountExceeds(&'static str),
    /// The processor did not answer; nothing is stored, a retry resumes safely.
    #[error("payment processor unavailable: {0}")]
    ProcessorUnavailable(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<PaymentError> for Status {
    fn from(error: PaymentError) -> Self {
        let message = error.to_string();
        let rejection = match error {
            PaymentError::Invalid(rejection) => rejection,
            PaymentError::Declined(code) => {
                Rejection::new(Code::FailedPrecondition, "PAYMENT_DECLINED", message)
                    .meta("decline_code", code)
            }
            PaymentError::NotFound => Rejection::new(Code::NotFound, "PAYMENT_NOT_FOUND", message),
            PaymentError::CheckoutVoided(id) => {
                Rejection::new(Code::FailedPrecondition, "CHECKOUT_VOIDED", message)
                    .meta("checkout_id", id)
            }
            PaymentError::PaymentExists(id) => {
                Rejection::new(Code::FailedPrecondition, "PAYMENT_EXISTS", message)
                    .meta("checkout_id", id)
            }
            PaymentError::IllegalTransition { action, state } => {
                Rejection::new(Code::FailedPrecondition, "ILLEGAL_TRANSITION", message)
                    .meta("action", action)
                    .meta("state", state)
            }
            PaymentError::AmountExceeds(what) => Rejection::new(
                Code::FailedPrecondition,
                if what == "authorized" {
                    "AMOUNT_EXCEEDS_AUTHORIZED"
                } else {
                    "AMOUNT_EXCEEDS_CAPTURED"
                },
                message,
            ),
            PaymentError::ProcessorUnavailable(_) => {
                Rejection::new(Code::Unavailable, "PROCESSOR_UNAVAILABLE", message)
            }
            PaymentError::Db(e) => return status::database(&e),
        };
        rejection.into_status()
    }
}

impl From<Rejection> for PaymentError {
    fn from(rejection: Rejection) -> Self {
        Self::Invalid(rejection)
    }
}
