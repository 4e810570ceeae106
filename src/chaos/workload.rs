//! The chaos load: carts of scarce skus checked out with a mix of payment tokens and addresses.
//! Every call is retried through faults and kills with its own request id, as a storefront
//! would, so a lost answer never becomes a second effect.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use checkout_kit::auth::Bearer;
use checkout_kit::client::{self, ClientOptions, OutboundChannel};
use checkout_proto::cart::cart_service_client::CartServiceClient;
use checkout_proto::cart::{AddItemRequest, CreateCartRequest};
use checkout_proto::checkout::StartCheckoutRequest;
use checkout_proto::checkout::checkout_service_client::CheckoutServiceClient;
use checkout_proto::common::Address;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::{Code, Status};

use super::ChaosError;
use super::check::Databases;
use crate::role::Role;

/// The skus the load buys (their stock is scarce).
pub const SKUS: [&str; 6] = [
    "TSHIRT-BLK-M",
    "HOODIE-GRY-M",
    "MUG-CERAMIC",
    "CAP-NVY",
    "SOCKS-3PK",
    "BACKPACK-20L",
];

/// Payment tokens and their weights.
const TOKENS: [(&str, u32); 5] = [
    ("tok_visa", 70),
    ("tok_chargeDeclined", 10),
    ("tok_chargeDeclinedInsufficientFunds", 5),
    ("tok_processorTimeout", 5),
    ("tok_chargedResponseLost", 10),
];

/// How far the load got.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    started: Arc<AtomicUsize>,
    retries: Arc<AtomicUsize>,
}

impl Progress {
    /// Checkouts started so far.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// Redraws the progress bar on a terminal.
    pub fn draw(&self, total: usize) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let done = self.started().min(total);
        let width = 30;
        let filled = done * width / total.max(1);
        eprint!(
            "\r\x1b[2Kchaos: [{}{}] {done}/{total} checkouts started, {} client retries",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.retries.load(Ordering::Relaxed)
        );
    }
}

/// What the load did.
#[derive(Debug, Clone, Default)]
pub struct LoadOutcome {
    /// Checkouts started.
    pub started: usize,
    /// Calls retried after faults and kills.
    pub client_retries: usize,
    /// Checkouts the client gave up on (their calls kept failing).
    pub failures: usize,
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
            | Code::Cancelled
    )
}

/// Retries a call with the same request until it answers with something final.
async fn persist<T, F, Fut>(progress: &Progress, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut wait = Duration::from_millis(50);
    for _ in 0..200 {
        match call().await {
            Err(status) if retryable(&status) => {
                progress.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
    Err(Status::unavailable("gave up after 200 attempts"))
}

fn channel(endpoint: &str, storefront: &Bearer) -> Result<OutboundChannel, ChaosError> {
    let options = ClientOptions {
        connect_timeout: Some(Duration::from_millis(500)),
        request_timeout: Some(Duration::from_secs(5)),
        ..ClientOptions::with_bearer(storefront.clone())
    };
    client::connect_lazy(endpoint, &options).map_err(|e| ChaosError::Setup(e.to_string()))
}

async fn one_checkout(
    cart: &mut CartServiceClient<OutboundChannel>,
    checkout: &mut CheckoutServiceClient<OutboundChannel>,
    index: usize,
    seed: u64,
    progress: &Progress,
) -> Result<(), Status> {
    let mut rng = StdRng::seed_from_u64(
        seed.wrapping_add(index as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let customer = format!("chaos-customer-{index}");
    let create = CreateCartRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        customer_id: customer.clone(),
        currency_code: "USD".to_owned(),
    };
    let created = persist(progress, || {
        let mut c = cart.clone();
        let r = create.clone();
        async move { c.create_cart(r).await }
    })
    .await?
    .into_inner()
    .cart
    .unwrap_or_default();
    for _ in 0..rng.random_range(1..=2) {
        let add = AddItemRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            cart_id: created.cart_id.clone(),
            customer_id: customer.clone(),
            sku: SKUS[rng.random_range(0..SKUS.len())].to_owned(),
            quantity: rng.random_range(1..=2),
        };
        persist(progress, || {
            let mut c = cart.clone();
            let r = add.clone();
            async move { c.add_item(r).await }
        })
        .await?;
    }
    let total: u32 = TOKENS.iter().map(|t| t.1).sum();
    let mut pick = rng.random_range(0..total);
    let token = TOKENS
        .iter()
        .find(|(_, w)| {
            if pick < *w {
                true
            } else {
                pick -= w;
                false
            }
        })
        .map_or("tok_visa", |t| t.0);
    let country = match rng.random_range(0..20) {
        0 => "AQ",
        1 => "DE",
        _ => "US",
    };
    let start = StartCheckoutRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        cart_id: created.cart_id.clone(),
        customer_id: customer,
        payment_token: token.to_owned(),
        shipping_address: Some(Address {
            recipient_name: "Chaos Customer".to_owned(),
            line1: "1 Entropy Lane".to_owned(),
            city: "Springfield".to_owned(),
            postal_code: "12345".to_owned(),
            country_code: country.to_owned(),
            ..Address::default()
        }),
        wait_for_outcome: None,
    };
    persist(progress, || {
        let mut c = checkout.clone();
        let r = start.clone();
        async move { c.start_checkout(r).await }
    })
    .await?;
    Ok(())
}

/// Runs `total` checkouts with `concurrency` in flight.
pub async fn run(
    endpoints: BTreeMap<&'static str, String>,
    total: usize,
    concurrency: usize,
    seed: u64,
    storefront: Bearer,
    progress: Progress,
) -> LoadOutcome {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, failures, progress) = (next.clone(), failures.clone(), progress.clone());
        let (Ok(cart), Ok(checkout)) = (
            channel(&endpoints[Role::Cart.name()], &storefront),
            channel(&endpoints[Role::Orchestrator.name()], &storefront),
        ) else {
            continue;
        };
        workers.push(tokio::spawn(async move {
            let mut cart = CartServiceClient::new(cart);
            let mut checkout = CheckoutServiceClient::new(checkout);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    return;
                }
                if one_checkout(&mut cart, &mut checkout, index, seed, &progress)
                    .await
                    .is_err()
                {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                progress.started.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    LoadOutcome {
        started: progress.started().min(total),
        client_retries: progress.retries.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
    }
}

/// Sagas not yet COMPLETED or COMPENSATED.
pub async fn unsettled(dbs: &Databases) -> Result<usize, ChaosError> {
    let mut tx = dbs.orchestrator.begin_read().await?;
    let sagas = checkout_orchestrator::store::audit_sagas(&mut tx).await?;
    tx.rollback().await?;
    Ok(sagas
        .iter()
        .filter(|s| s.status != "completed" && s.status != "compensated")
        .count())
}
