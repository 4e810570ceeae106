//! The checkout saga end to end: the orchestrator drives the four real services over gRPC.

use std::time::Duration;

use checkout::role::Role;
use checkout_kit::client::OutboundChannel;
use checkout_kit::status::reason_of;
use checkout_proto::cart::cart_service_client::CartServiceClient;
use checkout_proto::cart::{AddItemRequest, CartState, CreateCartRequest, GetCartRequest};
use checkout_proto::checkout::checkout_service_client::CheckoutServiceClient;
use checkout_proto::checkout::*;
use checkout_proto::common::Address;
use checkout_proto::fulfillment::fulfillment_service_client::FulfillmentServiceClient;
use checkout_proto::fulfillment::{GetShipmentsRequest, ShipmentStatus};
use checkout_proto::inventory::GetStockRequest;
use checkout_proto::inventory::inventory_service_client::InventoryServiceClient;
use checkout_proto::payment::payment_service_client::PaymentServiceClient;
use checkout_proto::payment::{GetPaymentRequest, PaymentState, get_payment_request};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::{TestSystem, channel, spawn_system};

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn address(country: &str) -> Address {
    Address {
        recipient_name: "Grace Hopper".to_owned(),
        line1: "1 Compiler Way".to_owned(),
        line2: String::new(),
        city: "Arlington".to_owned(),
        region: "VA".to_owned(),
        postal_code: "22201".to_owned(),
        country_code: country.to_owned(),
        phone: String::new(),
    }
}

pub struct Clients {
    pub cart: CartServiceClient<OutboundChannel>,
    pub inventory: InventoryServiceClient<OutboundChannel>,
    pub payment: PaymentServiceClient<OutboundChannel>,
    pub fulfillment: FulfillmentServiceClient<OutboundChannel>,
    pub checkout: CheckoutServiceClient<OutboundChannel>,
}

impl Clients {
    pub async fn connect(endpoint: impl Fn(Role) -> String) -> Self {
        Self::connect_with(endpoint, |url| async move { channel(&url).await }).await
    }

    /// Clients on channels `dial` makes (another credential, TLS).
    pub async fn connect_with<F, Fut>(endpoint: impl Fn(Role) -> String, dial: F) -> Self
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = OutboundChannel>,
    {
        Self {
            cart: CartServiceClient::new(dial(endpoint(Role::Cart)).await),
            inventory: InventoryServiceClient::new(dial(endpoint(Role::Inventory)).await),
            payment: PaymentServiceClient::new(dial(endpoint(Role::Payment)).await),
            fulfillment: FulfillmentServiceClient::new(dial(endpoint(Role::Fulfillment)).await),
            checkout: CheckoutServiceClient::new(dial(endpoint(Role::Orchestrator)).await),
        }
    }

    pub async fn of(sys: &TestSystem) -> Self {
        Self::connect(|role| sys.endpoint(role)).await
    }

    /// A cart of `customer` holding `items`.
    pub async fn cart(&mut self, customer: &str, currency: &str, items: &[(&str, i64)]) -> String {
        let cart = self
            .cart
            .create_cart(CreateCartRequest {
                request_id: rid(),
                customer_id: customer.to_owned(),
                currency_code: currency.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .cart
            .unwrap();
        for (sku, quantity) in items {
            self.cart
                .add_item(AddItemRequest {
                    request_id: rid(),
                    cart_id: cart.cart_id.clone(),
                    customer_id: customer.to_owned(),
                    sku: (*sku).to_owned(),
                    quantity: *quantity,
                })
                .await
                .unwrap();
        }
        cart.cart_id
    }

    pub async fn start(
        &mut self,
        cart_id: &str,
        customer: &str,
        token: &str,
        country: &str,
        wait: Duration,
    ) -> Checkout {
        self.checkout
            .start_checkout(StartCheckoutRequest {
                request_id: rid(),
                cart_id: cart_id.to_owned(),
                customer_id: customer.to_owned(),
                payment_token: token.to_owned(),
                shipping_address: Some(address(country)),
                wait_for_outcome: Some(prost_types::Duration {
                    seconds: i64::try_from(wait.as_secs()).unwrap(),
                    nanos: 0,
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .checkout
            .unwrap()
    }

    pub async fn get(&mut self, checkout_id: &str, customer: &str) -> Checkout {
        self.checkout
            .get_checkout(GetCheckoutRequest {
                checkout_id: checkout_id.to_owned(),
                customer_id: customer.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .checkout
            .unwrap()
    }

    pub async fn settle(&mut self, checkout_id: &str, customer: &str) -> Checkout {
        for _ in 0..300 {
            let checkout = self.get(checkout_id, customer).await;
            if matches!(
                checkout.status(),
                CheckoutStatus::Completed
                    | CheckoutStatus::Compensated
                    | CheckoutStatus::NeedsAttention
            ) {
                return checkout;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("checkout {checkout_id} never settled");
    }

    pub async fn stock(&mut self, sku: &str) -> (i64, i64) {
        let stock = self
            .inventory
            .get_stock(GetStockRequest {
                sku: sku.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        (
            stock.levels.iter().map(|l| l.on_hand).sum(),
            stock.levels.iter().map(|l| l.reserved).sum(),
        )
    }

    pub async fn cart_state(&mut self, cart_id: &str, customer: &str) -> CartState {
        self.cart
            .get_cart(GetCartRequest {
                cart_id: cart_id.to_owned(),
                customer_id: customer.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .cart
            .unwrap()
            .state()
    }

    pub async fn payment_state(&mut self, checkout_id: &str) -> Option<PaymentState> {
        self.payment
            .get_payment(GetPaymentRequest {
                target: Some(get_payment_request::Target::CheckoutId(
                    checkout_id.to_owned(),
                )),
            })
            .await
            .ok()
            .map(|r| r.into_inner().payment.unwrap().state())
    }
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkout_completes_with_everything_reserved_paid_and_shippable() {
    let sys = spawn_system().await;
    let mut c = Clients::of(&sys).await;
    let before = c.stock("HOODIE-GRY-M").await;
    let cart = c
        .cart("alice", "USD", &[("HOODIE-GRY-M", 2), ("MUG-CERAMIC", 1)])
        .await;
    let checkout = c.start(&cart, "alice", "tok_visa", "US", WAIT).await;
    assert_eq!(
        checkout.status(),
        CheckoutStatus::Completed,
        "{checkout:#?}"
    );
    let order = checkout.order.clone().unwrap();
    assert_eq!(order.total.unwrap().amount_minor, 2 * 4999 + 1200);
    assert!(!order.reservation_id.is_empty() && !order.payment_id.is_empty());
    assert!(!order.shipment_ids.is_empty());
    assert!(
        checkout
            .steps
            .iter()
            .all(|s| s.status() == StepStatus::Succeeded)
    );
    assert!(checkout.timeline.iter().any(|e| e.kind == "completed"));

    assert_eq!(c.cart_state(&cart, "alice").await, CartState::Ordered);
    assert_eq!(
        c.payment_state(&checkout.checkout_id).await,
        Some(PaymentState::Captured)
    );
    assert_eq!(
        c.stock("HOODIE-GRY-M").await,
        (before.0 - 2, before.1),
        "stock left"
    );
    let shipments = c
        .fulfillment
        .get_shipments(GetShipmentsRequest {
            checkout_id: checkout.checkout_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .shipments;
    assert!(
        shipments
            .iter()
            .all(|s| s.status() == ShipmentStatus::Pending)
    );
    sys.system.stop().await.unwrap();
}

async fn compensated(
    items: &[(&str, i64)],
    token: &str,
    country: &str,
) -> (Checkout, Clients, String, TestSystem) {
    let sys = spawn_system().await;
    let mut c = Clients::of(&sys).await;
    let cart = c.cart("bob", "USD", items).await;
    let checkout = c.start(&cart, "bob", token, country, WAIT).await;
    assert_eq!(
        checkout.status(),
        CheckoutStatus::Compensated,
        "{checkout:#?}"
    );
    assert_eq!(
        c.cart_state(&cart, "bob").await,
        CartState::Active,
        "the cart is editable again"
    );
    (checkout, c, cart, sys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_card_leaves_no_trace() {
    let (checkout, mut c, _, sys) =
        compensated(&[("CAP-NVY", 1)], "tok_chargeDeclined", "US").await;
    assert_eq!(
        checkout.failure.as_ref().unwrap().reason,
        "PAYMENT_DECLINED"
    );
    assert_eq!(checkout.failure.as_ref().unwrap().step, "authorize_payment");
    assert_eq!(c.stock("CAP-NVY").await.1, 0, "stock released");
    assert_eq!(
        c.payment_state(&checkout.checkout_id).await,
        Some(PaymentState::Declined)
    );
    sys.system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_stock_compensates_the_cart_lock() {
    let (checkout, mut c, _, sys) = compensated(&[("LIMITED-PRINT", 3)], "tok_visa", "US").await;
    assert_eq!(checkout.failure.as_ref().unwrap().reason, "OUT_OF_STOCK");
    assert_eq!(
        c.payment_state(&checkout.checkout_id).await,
        None,
        "nothing was charged"
    );
    sys.system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unserved_country_voids_the_payment_and_releases_the_stock() {
    let (checkout, mut c, _, sys) = compensated(&[("SOCKS-3PK", 2)], "tok_visa", "AQ").await;
    assert_eq!(
        checkout.failure.as_ref().unwrap().reason,
        "ADDRESS_NOT_SERVICEABLE"
    );
    assert_eq!(
        c.payment_state(&checkout.checkout_id).await,
        Some(PaymentState::Voided)
    );
    assert_eq!(c.stock("SOCKS-3PK").await.1, 0);
    let compensations: Vec<&str> = checkout
        .steps
        .iter()
        .filter(|s| s.status() == StepStatus::Compensated)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        compensations,
        ["lock_cart", "reserve_inventory", "authorize_payment"]
    );
    sys.system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_is_idempotent_and_checkouts_are_private() {
    let sys = spawn_system().await;
    let mut c = Clients::of(&sys).await;
    let cart = c.cart("carol", "EUR", &[("MUG-CERAMIC-EU", 1)]).await;
    let request = StartCheckoutRequest {
        request_id: rid(),
        cart_id: cart.clone(),
        customer_id: "carol".to_owned(),
        payment_token: "tok_visa".to_owned(),
        shipping_address: Some(address("DE")),
        wait_for_outcome: Some(prost_types::Duration {
            seconds: 20,
            nanos: 0,
        }),
    };
    let first = c
        .checkout
        .start_checkout(request.clone())
        .await
        .unwrap()
        .into_inner()
        .checkout
        .unwrap();
    let again = c
        .checkout
        .start_checkout(request)
        .await
        .unwrap()
        .into_inner()
        .checkout
        .unwrap();
    assert_eq!(
        first.checkout_id, again.checkout_id,
        "one saga per request id"
    );
    assert_eq!(again.status(), CheckoutStatus::Completed);

    let stranger = c
        .checkout
        .get_checkout(GetCheckoutRequest {
            checkout_id: first.checkout_id.clone(),
            customer_id: "mallory".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::NotFound);

    let listed = c
        .checkout
        .list_checkouts(ListCheckoutsRequest {
            customer_id: "carol".to_owned(),
            status: CheckoutStatus::Completed.into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.checkouts.len(), 1);
    assert_eq!(listed.checkouts[0].checkout_id, first.checkout_id);

    let done = c
        .checkout
        .cancel_checkout(CancelCheckoutRequest {
            request_id: rid(),
            checkout_id: first.checkout_id.clone(),
            customer_id: "carol".to_owned(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&done).as_deref(), Some("PAST_PIVOT"));
    let not_parked = c
        .checkout
        .retry_checkout(RetryCheckoutRequest {
            request_id: rid(),
            checkout_id: first.checkout_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&not_parked).as_deref(), Some("NOT_PARKED"));
    sys.system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_before_the_pivot_compensates_and_watch_streams_to_the_end() {
    let sys = spawn_system().await;
    let mut c = Clients::of(&sys).await;
    let cart = c.cart("dave", "USD", &[("LAMP-DESK", 1)]).await;
    // The processor keeps timing out, so the saga sits retrying the authorization.
    let checkout = c
        .start(&cart, "dave", "tok_processorTimeout", "US", Duration::ZERO)
        .await;
    let mut watch = c
        .checkout
        .watch_checkout(WatchCheckoutRequest {
            checkout_id: checkout.checkout_id.clone(),
            customer_id: "dave".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = c
        .checkout
        .cancel_checkout(CancelCheckoutRequest {
            request_id: rid(),
            checkout_id: checkout.checkout_id.clone(),
            customer_id: "dave".to_owned(),
            reason: "changed my mind".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .checkout
        .unwrap();
    assert!(
        cancelled
            .timeline
            .iter()
            .any(|e| e.kind == "cancel_requested")
    );
    let settled = c.settle(&checkout.checkout_id, "dave").await;
    assert_eq!(settled.status(), CheckoutStatus::Compensated);
    assert_eq!(settled.failure.unwrap().reason, "CANCELLED");
    assert_eq!(c.stock("LAMP-DESK").await.1, 0);
    assert_eq!(c.cart_state(&cart, "dave").await, CartState::Active);

    let mut statuses = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the stream ends at the terminal state")
    {
        statuses.push(item.unwrap().status());
    }
    assert_eq!(statuses.last(), Some(&CheckoutStatus::Compensated));
    sys.system.stop().await.unwrap();
}
