//! Request validation shared by every service: field-level checks collected into one
//! `INVALID_ARGUMENT` that names each offending field, before any database work.

use checkout_proto::common::Address;
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

/// Which of a oneof's two UUID fields a request set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneOf {
    /// The first field (the resource's own id).
    First(String),
    /// The second field (the checkout id).
    Second(String),
}

/// Checks a oneof of two UUID fields (`reservation_id` or `checkout_id`, say): the set one must
/// be a UUID, and one must be set.
pub fn one_of_ids(
    v: &mut Violations,
    first: (&str, Option<&String>),
    second: (&str, Option<&String>),
) -> Option<OneOf> {
    match (first.1, second.1) {
        (Some(id), _) => {
            v.uuid(first.0, id);
            Some(OneOf::First(id.clone()))
        }
        (None, Some(id)) => {
            v.uuid(second.0, id);
            Some(OneOf::Second(id.clone()))
        }
        (None, None) => {
            v.add("target", &format!("required: {} or {}", first.0, second.0));
            None
        }
    }
}

/// Splits a request's two-id oneof (`$module::Target::{$First, CheckoutId}`) and checks it with
/// [`one_of_ids`]: `oneof_ids!(&mut v, req.target, void_payment_request, PaymentId, "payment_id")`.
#[macro_export]
macro_rules! oneof_ids {
    ($v:expr, $target:expr, $module:ident, $first:ident, $first_name:literal) => {{
        use $module::Target as T;
        $crate::validate::one_of_ids(
            $v,
            (
                $first_name,
                match &$target {
                    Some(T::$first(id)) => Some(id),
                    _ => None,
                },
            ),
            (
                "checkout_id",
                match &$target {
                    Some(T::CheckoutId(id)) => Some(id),
                    _ => None,
                },
            ),
        )
    }};
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

fn text(v: &mut Violations, field: &str, value: &str, required: bool, max: usize) {
    if required && value.trim().is_empty() {
        v.add(field, "required");
    } else if value.chars().count() > max {
        v.add(field, &format!("at most {max} characters"));
    } else if value.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
}

/// Checks every field of an address, naming each bad one under `prefix`.
pub fn check_address(v: &mut Violations, prefix: &str, address: Option<&Address>) {
    let Some(a) = address else {
        v.add(prefix, "required");
        return;
    };
    let f = |name: &str| format!("{prefix}.{name}");
    text(v, &f("recipient_name"), &a.recipient_name, true, 200);
    text(v, &f("line1"), &a.line1, true, 200);
    text(v, &f("line2"), &a.line2, false, 200);
    text(v, &f("city"), &a.city, true, 100);
    text(v, &f("region"), &a.region, false, 100);
    text(v, &f("postal_code"), &a.postal_code, true, 20);
    v.check(
        a.postal_code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-'),
        &f("postal_code"),
        "letters, digits, spaces and '-' only",
    );
    v.check(
        a.country_code.len() == 2 && a.country_code.bytes().all(|b| b.is_ascii_uppercase()),
        &f("country_code"),
        "an ISO 3166-1 alpha-2 code such as DE",
    );
    v.check(
        a.phone.len() <= 32
            && a.phone
                .chars()
                .all(|c| c.is_ascii_digit() || " +-()".contains(c)),
        &f("phone"),
        "at most 32 digits, spaces, '+', '-', '(' or ')'",
    );
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
