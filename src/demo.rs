//! `checkout demo`: the whole system in one process on a temporary SQLite directory, three
//! checkouts — one that completes, one with a declined card, one out of stock — and each
//! checkout's timeline, so a person sees what happened and why.

use std::fmt::Write as _;
use std::time::Duration;

use checkout_kit::auth::Credentials;
use checkout_kit::client::{self, ClientOptions, EndpointError, OutboundChannel};
use checkout_kit::shutdown::Shutdown;
use checkout_proto::cart::cart_service_client::CartServiceClient;
use checkout_proto::cart::{AddItemRequest, CreateCartRequest};
use checkout_proto::checkout::checkout_service_client::CheckoutServiceClient;
use checkout_proto::checkout::{Checkout, StartCheckoutRequest};
use checkout_proto::common::Address;

use crate::config::sqlite_url;
use crate::launch::{LaunchError, Security, Settings, System};
use crate::role::Role;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The system did not start.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A call failed.
    #[error("{0}")]
    Call(#[from] tonic::Status),
    /// A connection failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] EndpointError),
    /// The temporary directory could not be made.
    #[error("cannot create a temporary directory: {0}")]
    Io(#[from] std::io::Error),
}

struct Scenario {
    title: &'static str,
    items: &'static [(&'static str, i64)],
    token: &'static str,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        title: "a checkout that completes",
        items: &[("TSHIRT-BLK-M", 2), ("MUG-CERAMIC", 1)],
        token: "tok_visa",
    },
    Scenario {
        title: "a declined card (compensated)",
        items: &[("HOODIE-GRY-M", 1)],
        token: "tok_chargeDeclined",
    },
    Scenario {
        title: "out of stock (compensated)",
        items: &[("LIMITED-PRINT", 3)],
        token: "tok_visa",
    },
];

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn channel(endpoint: String, options: &ClientOptions) -> Result<OutboundChannel, DemoError> {
    Ok(client::connect(&endpoint, options).await?)
}

fn money(m: Option<&checkout_proto::common::Money>) -> String {
    m.map(|m| {
        format!(
            "{}.{:02} {}",
            m.amount_minor / 100,
            m.amount_minor % 100,
            m.currency_code
        )
    })
    .unwrap_or_default()
}

/// Renders a checkout's outcome and timeline for people.
pub fn render(checkout: &Checkout) -> String {
    let mut out = String::new();
    let start = checkout
        .timeline
        .first()
        .and_then(|e| e.time)
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    let _ = writeln!(
        out,
        "  checkout {}  status {}",
        checkout.checkout_id,
        checkout
            .status()
            .as_str_name()
            .trim_start_matches("CHECKOUT_STATUS_")
    );
    for e in &checkout.timeline {
        let at = e
            .time
            .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
            - start;
        let _ = writeln!(
            out,
            "  {at:>6} ms  {:<26} {:<20} {}",
            e.kind, e.step, e.message
        );
    }
    if let Some(order) = &checkout.order
        && checkout.failure.is_none()
    {
        let _ = writeln!(
            out,
            "  order: total {}, reservation {}, payment {}, {} shipment(s)",
            money(order.total.as_ref()),
            order.reservation_id,
            order.payment_id,
            order.shipment_ids.len()
        );
    }
    if let Some(failure) = &checkout.failure {
        let _ = writeln!(
            out,
            "  why: {} at {}: {}",
            failure.reason, failure.step, failure.message
        );
    }
    out
}

/// Runs the demo and returns what it printed.
pub async fn run() -> Result<String, DemoError> {
    let dir = tempfile::tempdir()?;
    let credentials = Credentials::generate();
    let settings = Settings {
        security: Security::with_credentials(&credentials),
        ..Settings::default()
    };
    let options = ClientOptions::with_bearer(credentials.storefront_bearer());
    let (trigger, shutdown) = Shutdown::new();
    let system = System::start(
        |role| sqlite_url(dir.path(), role),
        |_| "127.0.0.1:0".to_owned(),
        &settings,
        shutdown,
    )
    .await?;
    let mut cart = CartServiceClient::new(channel(system.endpoint(Role::Cart), &options).await?);
    let mut checkout =
        CheckoutServiceClient::new(channel(system.endpoint(Role::Orchestrator), &options).await?);
    let mut out = format!(
        "checkout demo: five servers on a temporary SQLite directory ({})\n",
        dir.path().display()
    );
    for (n, scenario) in SCENARIOS.iter().enumerate() {
        let customer = format!("demo-customer-{}", n + 1);
        let created = cart
            .create_cart(CreateCartRequest {
                request_id: rid(),
                customer_id: customer.clone(),
                currency_code: "USD".to_owned(),
            })
            .await?
            .into_inner()
            .cart
            .unwrap_or_default();
        for (sku, quantity) in scenario.items {
            cart.add_item(AddItemRequest {
                request_id: rid(),
                cart_id: created.cart_id.clone(),
                customer_id: customer.clone(),
                sku: (*sku).to_owned(),
                quantity: *quantity,
            })
            .await?;
        }
        let result = checkout
            .start_checkout(StartCheckoutRequest {
                request_id: rid(),
                cart_id: created.cart_id.clone(),
                customer_id: customer.clone(),
                payment_token: scenario.token.to_owned(),
                shipping_address: Some(Address {
                    recipient_name: "Demo Customer".to_owned(),
                    line1: "1 Example Street".to_owned(),
                    city: "Springfield".to_owned(),
                    postal_code: "12345".to_owned(),
                    country_code: "US".to_owned(),
                    ..Address::default()
                }),
                wait_for_outcome: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
            })
            .await?
            .into_inner()
            .checkout
            .unwrap_or_default();
        let items: Vec<String> = scenario
            .items
            .iter()
            .map(|(s, q)| format!("{q} x {s}"))
            .collect();
        let _ = writeln!(
            out,
            "\n{}. {}: {} paid with {}",
            n + 1,
            scenario.title,
            items.join(", "),
            scenario.token
        );
        out.push_str(&render(&result));
    }
    trigger.fire();
    let _ = tokio::time::timeout(Duration::from_secs(15), system.wait()).await;
    Ok(out)
}
