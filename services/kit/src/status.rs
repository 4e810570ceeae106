//! Building `tonic::Status` values with `google.rpc` details: an `ErrorInfo` with a stable
//! reason on every refusal, and a `BadRequest` naming the fields of an invalid request.
//!
//! Services map their own error enums to `Status` in one place each and use these builders to
//! do it, so every error a client sees has the same shape.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every error this system returns.
pub const ERROR_DOMAIN: &str = "checkout.saga";

/// A refusal under construction: code, stable reason, message, metadata and field violations.
/// Boxed, so `Result<_, Rejection>` stays one pointer wide on the happy path.
#[derive(Debug, Clone)]
pub struct Rejection(Box<RejectionParts>);

#[derive(Debug, Clone)]
struct RejectionParts {
    code: Code,
    reason: String,
    message: String,
    metadata: HashMap<String, String>,
    violations: Vec<FieldViolation>,
}

impl Rejection {
    /// A refusal with a status code, a stable machine-readable reason and a human message.
    pub fn new(code: Code, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self(Box::new(RejectionParts {
            code,
            reason: reason.into(),
            message: message.into(),
            metadata: HashMap::new(),
            violations: Vec::new(),
        }))
    }

    /// `INVALID_ARGUMENT` naming one field (a path such as `lines[2].quantity`).
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let field = field.into();
        let description = description.into();
        Self::new(
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            format!("invalid {field}: {description}"),
        )
        .violation(field, description)
    }

    /// `INVALID_ARGUMENT` naming several fields at once.
    pub fn invalid_fields(violations: Vec<FieldViolation>) -> Self {
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        let mut rejection = Self::new(
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            format!("invalid request: {}", fields.join(", ")),
        );
        rejection.0.violations = violations;
        rejection
    }

    /// Adds one field violation.
    pub fn violation(mut self, field: impl Into<String>, description: impl Into<String>) -> Self {
        self.0
            .violations
            .push(FieldViolation::new(field, description));
        self
    }

    /// Adds one `ErrorInfo` metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.metadata.insert(key.into(), value.into());
        self
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.0.code
    }

    /// The stable reason.
    pub fn reason(&self) -> &str {
        &self.0.reason
    }

    /// The finished status with its details.
    pub fn into_status(self) -> Status {
        let parts = *self.0;
        let mut details = ErrorDetails::with_error_info(parts.reason, ERROR_DOMAIN, parts.metadata);
        if !parts.violations.is_empty() {
            details.set_bad_request(parts.violations);
        }
        Status::with_error_details(parts.code, parts.message, details)
    }
}

impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Self {
        rejection.into_status()
    }
}

/// An internal failure: the client gets a generic `INTERNAL` with no SQL or stack text; the
/// whole cause chain goes to the log.
pub fn internal(error: &(dyn std::error::Error + 'static)) -> Status {
    tracing::error!(error = %error_chain(error), "internal error");
    Rejection::new(Code::Internal, "INTERNAL", "internal error").into_status()
}

/// A transient failure the caller should retry (`UNAVAILABLE`); the cause goes to the log.
pub fn unavailable(error: &(dyn std::error::Error + 'static)) -> Status {
    tracing::warn!(error = %error_chain(error), "transient failure");
    Rejection::new(
        Code::Unavailable,
        "TEMPORARILY_UNAVAILABLE",
        "temporarily unavailable, retry",
    )
    .into_status()
}

/// A database failure: transient ones (busy, lost connection, serialization) become
/// `UNAVAILABLE` so callers retry; anything else is `INTERNAL`.
pub fn database(error: &crate::db::DbError) -> Status {
    if error.is_transient() {
        unavailable(error)
    } else {
        internal(error)
    }
}

/// Formats an error with every `source()` below it, one per line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        out.push_str("\n  caused by: ");
        out.push_str(&cause.to_string());
        current = cause.source();
    }
    out
}

/// The `ErrorInfo.reason` of a status, when it carries one.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The field paths a status's `BadRequest` names.
pub fn fields_of(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_field_names_the_field_and_reason() {
        let status =
            Rejection::invalid_field("lines[0].quantity", "must be positive").into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&status).as_deref(), Some("INVALID_ARGUMENT"));
        assert_eq!(fields_of(&status), vec!["lines[0].quantity".to_owned()]);
    }

    #[test]
    fn business_refusal_carries_metadata() {
        let status = Rejection::new(Code::FailedPrecondition, "OUT_OF_STOCK", "not enough stock")
            .meta("skus", "A,B")
            .into_status();
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "OUT_OF_STOCK");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata.get("skus").map(String::as_str), Some("A,B"));
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let cause = std::io::Error::other("SELECT secret FROM t");
        let status = internal(&cause);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
    }
}
