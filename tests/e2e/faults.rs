//! Fault injection on the real servers: refused unless allowed; errors, lost responses and
//! crashes as configured; and checkouts that still settle correctly under injected faults.

use std::time::Duration;

use checkout::role::Role;
use checkout_kit::client::OutboundChannel;
use checkout_kit::fault::FaultConfig;
use checkout_kit::status::{fields_of, reason_of};
use checkout_proto::cart::{AddItemRequest, GetCartRequest};
use checkout_proto::checkout::CheckoutStatus;
use checkout_proto::fault::fault_service_client::FaultServiceClient;
use checkout_proto::fault::*;
use checkout_proto::payment::PaymentState;
use tonic::Code;

use crate::checkout::Clients;
use crate::helpers::{channel, spawn_system, spawn_system_with, test_settings};

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn rule(pattern: &str, probability: f64, kind: FaultKind) -> FaultRule {
    FaultRule {
        rpc_pattern: pattern.to_owned(),
        probability,
        kind: kind.into(),
        error_code: Code::Unavailable as i32,
        ..FaultRule::default()
    }
}

async fn faults_of(endpoint: &str) -> FaultServiceClient<OutboundChannel> {
    FaultServiceClient::new(channel(endpoint).await)
}

async fn set(client: &mut FaultServiceClient<OutboundChannel>, rules: Vec<FaultRule>) {
    client
        .set_fault_rules(SetFaultRulesRequest {
            request_id: rid(),
            rules,
            seed: 42,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn fault_service_refuses_unless_allowed() {
    let sys = spawn_system().await;
    for role in Role::ALL {
        let mut faults = faults_of(&sys.endpoint(role)).await;
        let refused = faults
            .list_fault_rules(ListFaultRulesRequest {})
            .await
            .unwrap_err();
        assert_eq!(
            reason_of(&refused).as_deref(),
            Some("FAULT_INJECTION_DISABLED"),
            "{role}"
        );
    }
    sys.system.stop().await.unwrap();
}

async fn allowed_system() -> crate::helpers::TestSystem {
    let mut settings = test_settings();
    settings.faults = FaultConfig {
        allowed: true,
        ..FaultConfig::default()
    };
    spawn_system_with(settings).await
}

#[tokio::test]
async fn injected_errors_and_lost_responses_behave_as_configured() {
    let sys = allowed_system().await;
    let mut c = Clients::of(&sys).await;
    let mut faults = faults_of(&sys.endpoint(Role::Cart)).await;
    let cart = c.cart("gina", "USD", &[]).await;
    let add = AddItemRequest {
        request_id: rid(),
        cart_id: cart.clone(),
        customer_id: "gina".to_owned(),
        sku: "CAP-NVY".to_owned(),
        quantity: 1,
    };

    set(
        &mut faults,
        vec![rule(
            "/checkout.cart.v1.CartService/AddItem",
            1.0,
            FaultKind::ErrorBefore,
        )],
    )
    .await;
    let failed = c.cart.add_item(add.clone()).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable);
    let listed = faults
        .list_fault_rules(ListFaultRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.rules[0].hits, 1);
    assert_eq!(listed.seed, 42);

    // The effect commits, the answer is lost; the retry gets the stored answer, no second line.
    set(
        &mut faults,
        vec![rule(
            "/checkout.cart.v1.CartService/AddItem",
            1.0,
            FaultKind::DropResponseDeadlineExceeded,
        )],
    )
    .await;
    let lost = c.cart.add_item(add.clone()).await.unwrap_err();
    assert_eq!(lost.code(), Code::DeadlineExceeded);
    let cleared = faults
        .clear_fault_rules(ClearFaultRulesRequest { request_id: rid() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.cleared, 1);
    let retried = c
        .cart
        .add_item(add)
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(retried.lines[0].quantity, 1);
    let now = c
        .cart
        .get_cart(GetCartRequest {
            cart_id: cart,
            customer_id: "gina".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(now.lines[0].quantity, 1, "applied once");

    // Health stays reachable whatever the rules say.
    set(&mut faults, vec![rule("*", 1.0, FaultKind::ErrorBefore)]).await;
    assert!(
        faults
            .list_fault_rules(ListFaultRulesRequest {})
            .await
            .is_ok()
    );
    let bad = faults
        .set_fault_rules(SetFaultRulesRequest {
            request_id: rid(),
            rules: vec![rule("*", 2.0, FaultKind::Delay)],
            seed: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(fields_of(&bad), vec!["rules[0].probability"]);
    sys.system.stop().await.unwrap();
}

const SERVICES: [Role; 4] = [
    Role::Cart,
    Role::Inventory,
    Role::Payment,
    Role::Fulfillment,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkouts_settle_correctly_under_injected_faults() {
    let sys = allowed_system().await;
    let mut c = Clients::of(&sys).await;
    let mut carts = Vec::new();
    for i in 0..8 {
        let customer = format!("faulty-{i}");
        let cart = c.cart(&customer, "USD", &[("SOCKS-3PK", 1)]).await;
        carts.push((cart, customer));
    }
    // Every command the saga sends may now fail before, lose its answer after, or be late.
    for role in SERVICES {
        let mut faults = faults_of(&sys.endpoint(role)).await;
        set(
            &mut faults,
            vec![
                rule("/checkout.*", 0.2, FaultKind::ErrorBefore),
                rule("/checkout.*", 0.2, FaultKind::DropResponseUnavailable),
                FaultRule {
                    delay: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 30_000_000,
                    }),
                    ..rule("/checkout.*", 0.2, FaultKind::Delay)
                },
            ],
        )
        .await;
    }
    let mut started = Vec::new();
    for (i, (cart, customer)) in carts.iter().enumerate() {
        let token = if i % 4 == 3 {
            "tok_chargeDeclined"
        } else {
            "tok_visa"
        };
        let checkout = c.start(cart, customer, token, "US", Duration::ZERO).await;
        started.push((checkout.checkout_id, customer.clone(), token));
    }
    let mut settled = Vec::new();
    for (checkout_id, customer, token) in &started {
        settled.push((c.settle(checkout_id, customer).await, *token));
    }
    let mut injected = 0;
    for role in SERVICES {
        let mut faults = faults_of(&sys.endpoint(role)).await;
        let rules = faults
            .list_fault_rules(ListFaultRulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .rules;
        injected += rules.iter().map(|r| r.hits).sum::<i64>();
        faults
            .clear_fault_rules(ClearFaultRulesRequest { request_id: rid() })
            .await
            .unwrap();
    }
    assert!(injected > 0, "faults were injected");
    for (done, token) in settled {
        let payment = c.payment_state(&done.checkout_id).await;
        match done.status() {
            CheckoutStatus::Completed => {
                assert_eq!(token, "tok_visa");
                assert_eq!(payment, Some(PaymentState::Captured));
            }
            CheckoutStatus::Compensated => {
                assert_ne!(payment, Some(PaymentState::Captured), "{done:#?}");
            }
            other => panic!("{} ended {other:?}: {done:#?}", done.checkout_id),
        }
    }
    assert_eq!(c.stock("SOCKS-3PK").await.1, 0, "nothing left reserved");
    sys.system.stop().await.unwrap();
}
