//! Property tests (fuzzing) of the idempotency key: the fingerprint sees every field but the
//! request id, request ids are normalised or refused, and no input makes key building panic.
//! CI runs them with more cases (`PROPTEST_CASES`).

use checkout_proto::cart::AddItemRequest;
use checkout_proto::checkout::StartCheckoutRequest;
use checkout_proto::common::Address;
use proptest::prelude::*;

use super::key::{Key, normalize_request_id};

const SCOPE: &str = "/checkout.cart.v1.CartService/AddItem";

/// Strings a hostile client might send: anything printable, control characters, very long runs.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "\\PC{0,200}",
        "[\\x00-\\x1f]{0,8}",
        (0usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

fn add_item() -> impl Strategy<Value = AddItemRequest> {
    (
        hostile_text(),
        hostile_text(),
        hostile_text(),
        hostile_text(),
        any::<i64>(),
    )
        .prop_map(
            |(request_id, cart_id, customer_id, sku, quantity)| AddItemRequest {
                request_id,
                cart_id,
                customer_id,
                sku,
                quantity,
            },
        )
}

proptest! {
    #[test]
    fn any_request_id_is_normalised_or_refused_naming_the_field(id in hostile_text()) {
        match normalize_request_id(&id) {
            Ok(canonical) => {
                let parsed = uuid::Uuid::try_parse(&id).expect("only UUIDs are accepted");
                prop_assert_eq!(canonical, parsed.hyphenated().to_string());
            }
            Err(status) => {
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                prop_assert_eq!(crate::status::fields_of(&status), vec!["request_id".to_owned()]);
            }
        }
    }

    #[test]
    fn the_fingerprint_ignores_the_request_id_and_its_spelling(
        request in add_item(),
        id in any::<u128>(),
    ) {
        let uuid = uuid::Uuid::from_u128(id);
        let lower = AddItemRequest { request_id: uuid.to_string(), ..request.clone() };
        let upper = AddItemRequest {
            request_id: uuid.to_string().to_uppercase(),
            ..request.clone()
        };
        let other = AddItemRequest { request_id: uuid::Uuid::from_u128(!id).to_string(), ..request };
        let (a, b, c) = (
            Key::new(SCOPE, &lower).unwrap(),
            Key::new(SCOPE, &upper).unwrap(),
            Key::new(SCOPE, &other).unwrap(),
        );
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.fingerprint(), c.fingerprint());
        prop_assert_ne!(a.request_id(), c.request_id());
    }

    #[test]
    fn the_fingerprint_sees_every_other_field(a in add_item(), b in add_item()) {
        let id = uuid::Uuid::new_v4().to_string();
        let a = AddItemRequest { request_id: id.clone(), ..a };
        let b = AddItemRequest { request_id: id, ..b };
        let same = Key::new(SCOPE, &a).unwrap().fingerprint()
            == Key::new(SCOPE, &b).unwrap().fingerprint();
        prop_assert_eq!(same, a == b);
        // The scope is part of it too: one request id cannot be replayed across RPCs.
        let elsewhere = Key::new("/checkout.cart.v1.CartService/UpdateItem", &a).unwrap();
        let here = Key::new(SCOPE, &a).unwrap();
        prop_assert_ne!(here.fingerprint(), elsewhere.fingerprint());
    }

    #[test]
    fn nested_messages_count_too(token in hostile_text(), line1 in hostile_text()) {
        let base = StartCheckoutRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            payment_token: token,
            shipping_address: Some(Address { line1, ..Address::default() }),
            ..StartCheckoutRequest::default()
        };
        let mut moved = base.clone();
        if let Some(address) = moved.shipping_address.as_mut() {
            address.line1.push('!');
        }
        let scope = "/checkout.checkout.v1.CheckoutService/StartCheckout";
        let (before, after) = (Key::new(scope, &base).unwrap(), Key::new(scope, &moved).unwrap());
        prop_assert_ne!(before.fingerprint(), after.fingerprint());
    }
}
