//! `Debug` for the messages that carry payment tokens and addresses: the secret parts print as
//! `[redacted]`, so a stray `?request` in a log line, error or span leaks nothing.

use std::fmt;

use crate::checkout::StartCheckoutRequest;
use crate::common::Address;
use crate::payment::AuthorizePaymentRequest;

const REDACTED: &str = "[redacted]";

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The country alone identifies nobody and explains most refusals.
        f.debug_struct("Address")
            .field("country_code", &self.country_code)
            .field("rest", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for StartCheckoutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartCheckoutRequest")
            .field("request_id", &self.request_id)
            .field("cart_id", &self.cart_id)
            .field("customer_id", &self.customer_id)
            .field("payment_token", &REDACTED)
            .field("shipping_address", &self.shipping_address)
            .field("wait_for_outcome", &self.wait_for_outcome)
            .finish()
    }
}

impl fmt::Debug for AuthorizePaymentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizePaymentRequest")
            .field("request_id", &self.request_id)
            .field("checkout_id", &self.checkout_id)
            .field("amount", &self.amount)
            .field("payment_token", &REDACTED)
            .field("customer_id", &self.customer_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_addresses_never_print() {
        let address = Address {
            recipient_name: "Ada Lovelace".to_owned(),
            line1: "12 Secret Lane".to_owned(),
            city: "London".to_owned(),
            postal_code: "N1 9GU".to_owned(),
            country_code: "GB".to_owned(),
            phone: "+44 20 0000".to_owned(),
            ..Address::default()
        };
        let start = StartCheckoutRequest {
            payment_token: "tok_visa_4242".to_owned(),
            shipping_address: Some(address.clone()),
            ..StartCheckoutRequest::default()
        };
        let authorize = AuthorizePaymentRequest {
            payment_token: "tok_visa_4242".to_owned(),
            ..AuthorizePaymentRequest::default()
        };
        for printed in [
            format!("{start:?}"),
            format!("{authorize:?}"),
            format!("{address:#?}"),
        ] {
            for secret in [
                "tok_visa_4242",
                "Ada",
                "Secret Lane",
                "London",
                "N1 9GU",
                "+44",
            ] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
        }
        assert!(format!("{address:?}").contains("GB"));
    }
}
