//! Request validation shared by every service: field-level checks collected into one
//! `INVALID_ARGUMENT` that names each offending field, before any database work.

use tonic_types::FieldViolation;

use crate::status::Rejection;

/// Longest free-text id (customer ids and the like) any request may carry.
pub const MAX_ID_LEN: usize = 128;

/// Field violations collected while checking one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field` unless `ok`.
    pub fn check(&mut self, ok: bool, field: &str, description: &str) -> &mut Self {
        if !ok {
            self.add(field, description);
        }
        self
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: &str, description: &str) -> &mut Self {
        self.0.push(FieldViolation::new(field, description));
        self
    }

    /// `value` must be a UUID.
    pub fn uuid(&mut self, field: &str, value: &str) -> &mut Self {
        if value.is_empty() {
            self.add(field, "required: a UUID")
        } else {
            self.check(
                uuid::Uuid::try_parse(value).is_ok(),
                field,
                "must be a UUID",
            )
        }
    }

    /// `value` must be a non-empty identifier of at most [`MAX_ID_LEN`] printable characters.
    pub fn id(&mut self, field: &str, value: &str) -> &mut Self {
        if value.is_empty() {
            self.add(field, "required")
        } else if value.chars().count() > MAX_ID_LEN {
            self.add(field, "longer than 128 characters")
        } else {
            self.check(
                value.chars().all(|c| !c.is_control() && !c.is_whitespace()),
                field,
                "must not contain spaces or control characters",
            )
        }
    }

    /// `value` must look like an ISO 4217 code: three upper-case ASCII letters.
    pub fn currency(&mut self, field: &str, value: &str) -> &mut Self {
        self.check(
            is_currency_code(value),
            field,
            "must be an ISO 4217 code such as USD",
        )
    }

    /// `value` must be a well-formed sku.
    pub fn sku(&mut self, field: &str, value: &str) -> &mut Self {
        self.check(
            is_sku(value),
            field,
            "required: upper-case letters, digits, '-', '_' or '.', at most 64",
        )
    }

    /// True when no violation was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was recorded, else the rejection naming every field.
    pub fn finish(self) -> Result<(), Rejection> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Rejection::invalid_fields(self.0))
        }
    }
}

/// Longest sku.
pub const MAX_SKU_LEN: usize = 64;

/// True for a well-formed sku: 1 to 64 of upper-case letters, digits, `-`, `_` and `.`.
pub fn is_sku(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_SKU_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Three upper-case ASCII letters.
pub fn is_currency_code(value: &str) -> bool {
    value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_violation_is_named() {
        let mut v = Violations::new();
        v.uuid("cart_id", "nope")
            .id("customer_id", "")
            .currency("currency_code", "usd")
            .check(true, "quantity", "fine");
        let status = v.finish().unwrap_err().into_status();
        assert_eq!(
            crate::status::fields_of(&status),
            vec!["cart_id", "customer_id", "currency_code"]
        );
    }

    #[test]
    fn good_values_pass() {
        let mut v = Violations::new();
        v.uuid("a", &uuid::Uuid::new_v4().to_string())
            .id("b", "customer-42")
            .currency("c", "EUR");
        assert!(v.finish().is_ok());
        let mut long = Violations::new();
        long.id("x", &"x".repeat(129)).id("y", "has space");
        assert_eq!(
            long.finish().unwrap_err().into_status().code(),
            tonic::Code::InvalidArgument
        );
    }
}
