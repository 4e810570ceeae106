//! `checkout bench`: N checkouts at concurrency C through CheckoutService with all four services
//! doing their real work, on a system it starts itself (in-process, SQLite by default or fresh
//! databases on a Postgres server). Reports checkouts/s, end-to-end latency percentiles (HDR
//! histogram), per-step latency, outcomes, durable commits and CPU per checkout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use checkout_inventory::fixture::{StockEntry, StockFixture};
use checkout_kit::auth::Credentials;
use checkout_kit::client::{self, ClientOptions, EndpointError, OutboundChannel};
use checkout_kit::db::{self, Db};
use checkout_kit::shutdown::Shutdown;
use checkout_proto::cart::cart_service_client::CartServiceClient;
use checkout_proto::cart::{AddItemRequest, CreateCartRequest};
use checkout_proto::checkout::checkout_service_client::CheckoutServiceClient;
use checkout_proto::checkout::{CheckoutStatus, StartCheckoutRequest};
use checkout_proto::common::Address;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::sqlite_url;
use crate::launch::{LaunchError, Security, Settings, System};
use crate::role::Role;

/// The skus the benchmark buys (ample stock).
const SKUS: [&str; 4] = ["TSHIRT-BLK-M", "MUG-CERAMIC", "SOCKS-3PK", "CAP-NVY"];

/// What a benchmark run does.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Measured checkouts.
    pub checkouts: usize,
    /// Checkouts before measuring (not counted).
    pub warmup: usize,
    /// Checkouts in flight at once.
    pub concurrency: usize,
    /// Fresh databases on this Postgres server instead of SQLite files.
    pub postgres_url: Option<String>,
    /// Draw progress on stderr.
    pub progress: bool,
}

/// Why a run could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The system did not start.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A call failed.
    #[error("{0}")]
    Call(#[from] tonic::Status),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] EndpointError),
    /// Reading the databases failed.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// What a run measured.
#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Measured checkouts.
    pub checkouts: usize,
    /// Concurrency.
    pub concurrency: usize,
    /// Throughput.
    pub checkouts_per_second: f64,
    /// End-to-end latency of StartCheckout waiting for the outcome.
    pub latency: Latency,
    /// Mean attempt latency per step, in milliseconds.
    pub step_mean_ms: BTreeMap<String, f64>,
    /// Checkouts by outcome.
    pub outcomes: BTreeMap<String, usize>,
    /// Durable commits per checkout, all five databases together.
    pub commits_per_checkout: f64,
    /// Where the commit count comes from.
    pub commits_source: String,
    /// CPU time of this process (all five servers) per checkout, in milliseconds.
    pub cpu_ms_per_checkout: f64,
    /// Wall time of the measured phase.
    pub elapsed_s: f64,
}

fn ample_stock() -> StockFixture {
    let shipped = StockFixture::shipped();
    StockFixture {
        warehouses: shipped.warehouses,
        stock: SKUS
            .iter()
            .map(|sku| StockEntry {
                sku: (*sku).to_owned(),
                warehouse_id: "wh-east".to_owned(),
                on_hand: 1_000_000_000,
            })
            .collect(),
    }
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the state field here.
    let total = ticks(11) + ticks(12);
    Duration::from_millis(total * 10)
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn channel(endpoint: String, options: &ClientOptions) -> Result<OutboundChannel, BenchError> {
    Ok(client::connect(&endpoint, options).await?)
}

async fn make_cart(
    cart: &mut CartServiceClient<OutboundChannel>,
    i: usize,
) -> Result<(String, String), BenchError> {
    let customer = format!("bench-{i}");
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
    cart.add_item(AddItemRequest {
        request_id: rid(),
        cart_id: created.cart_id.clone(),
        customer_id: customer.clone(),
        sku: SKUS[i % SKUS.len()].to_owned(),
        quantity: 1,
    })
    .await?;
    Ok((created.cart_id, customer))
}

fn start_request(cart_id: String, customer: String) -> StartCheckoutRequest {
    StartCheckoutRequest {
        request_id: rid(),
        cart_id,
        customer_id: customer,
        payment_token: "tok_visa".to_owned(),
        shipping_address: Some(Address {
            recipient_name: "Bench Customer".to_owned(),
            line1: "1 Fast Lane".to_owned(),
            city: "Springfield".to_owned(),
            postal_code: "12345".to_owned(),
            country_code: "US".to_owned(),
            ..Address::default()
        }),
        wait_for_outcome: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    }
}

/// Runs `carts` through StartCheckout at `concurrency`; returns latencies and outcomes.
async fn drive(
    checkout: &CheckoutServiceClient<OutboundChannel>,
    carts: Vec<(String, String)>,
    concurrency: usize,
    progress: bool,
) -> Result<(Histogram<u64>, BTreeMap<String, usize>), BenchError> {
    let carts = Arc::new(std::sync::Mutex::new(carts));
    let done = Arc::new(AtomicUsize::new(0));
    let total = carts.lock().map(|c| c.len()).unwrap_or(0);
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (carts, done, mut client) = (carts.clone(), done.clone(), checkout.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .map_err(|e| BenchError::Other(e.to_string()))?;
            let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
            loop {
                let next = carts.lock().ok().and_then(|mut c| c.pop());
                let Some((cart_id, customer)) = next else {
                    return Ok::<_, BenchError>((latencies, outcomes));
                };
                let sent = Instant::now();
                let result = client
                    .start_checkout(start_request(cart_id, customer))
                    .await?;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = latencies.record(micros.max(1));
                let status = result
                    .into_inner()
                    .checkout
                    .map_or(CheckoutStatus::Unspecified, |c| c.status());
                *outcomes
                    .entry(
                        status
                            .as_str_name()
                            .trim_start_matches("CHECKOUT_STATUS_")
                            .to_owned(),
                    )
                    .or_default() += 1;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) && n % 50 == 0 {
                    eprint!("\r\x1b[2Kbench: {n}/{total}");
                }
            }
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for worker in workers {
        let (latencies, counts) = worker
            .await
            .map_err(|e| BenchError::Other(e.to_string()))??;
        all.add(&latencies)
            .map_err(|e| BenchError::Other(e.to_string()))?;
        for (k, v) in counts {
            *outcomes.entry(k).or_default() += v;
        }
    }
    if progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    Ok((all, outcomes))
}

async fn server_commits(dbs: &[Db]) -> Result<Option<i64>, BenchError> {
    let mut total = 0;
    for db in dbs {
        match db::server_commits(db).await? {
            Some(n) => total += n,
            None => return Ok(None),
        }
    }
    Ok(Some(total))
}

/// Runs the benchmark on a system it starts in this process.
pub async fn run(plan: &BenchPlan) -> Result<BenchReport, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Other(e.to_string()))?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let url = |role: Role| match &plan.postgres_url {
        Some(server) => {
            let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
            format!("{base}/bench_{}_{}", &run[..8], role.name())
        }
        None => sqlite_url(dir.path(), role),
    };
    // Measured as deployed: every call authenticated, the orchestrator presenting its key.
    let credentials = Credentials::generate();
    let settings = Settings {
        stock: ample_stock(),
        security: Security::with_credentials(&credentials),
        ..Settings::default()
    };
    let options = ClientOptions::with_bearer(credentials.storefront_bearer());
    let (trigger, shutdown) = Shutdown::new();
    let system = System::start(url, |_| "127.0.0.1:0".to_owned(), &settings, shutdown).await?;
    let mut cart = CartServiceClient::new(channel(system.endpoint(Role::Cart), &options).await?);
    let checkout =
        CheckoutServiceClient::new(channel(system.endpoint(Role::Orchestrator), &options).await?);

    let mut carts = Vec::with_capacity(plan.warmup + plan.checkouts);
    for i in 0..plan.warmup + plan.checkouts {
        carts.push(make_cart(&mut cart, i).await?);
    }
    let measured = carts.split_off(plan.warmup);
    drive(&checkout, carts, plan.concurrency, false).await?;

    let dbs: Vec<Db> = {
        let mut dbs = Vec::new();
        for role in Role::ALL {
            dbs.push(
                Db::connect(
                    &url(role),
                    &db::PoolConfig {
                        max_connections: 1,
                        ..db::PoolConfig::default()
                    },
                )
                .await?,
            );
        }
        dbs
    };
    // Postgres publishes its counters about once a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let commits_before = (server_commits(&dbs).await?, db::commits_so_far());
    let cpu_before = cpu_time();
    let started = Instant::now();
    let (latencies, outcomes) = drive(&checkout, measured, plan.concurrency, plan.progress).await?;
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let commits_after = (server_commits(&dbs).await?, db::commits_so_far());

    let (commits, source) = match (commits_before.0, commits_after.0) {
        (Some(before), Some(after)) => (
            u64::try_from(after - before).unwrap_or(0),
            "pg_stat_database.xact_commit",
        ),
        _ => (
            commits_after.1 - commits_before.1,
            "write transactions committed (SQLite)",
        ),
    };
    let mut steps: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let orchestrator = &dbs[4];
    let mut tx = orchestrator.begin_read().await?;
    let durations = checkout_orchestrator::store::audit_attempt_durations(&mut tx).await?;
    tx.rollback().await?;
    let def = checkout_orchestrator::checkout_saga::definition(
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    for (step, direction, ms) in durations {
        let name = def
            .steps
            .get(usize::try_from(step).unwrap_or(0))
            .map_or("?", |s| s.name);
        let key = if direction == "forward" {
            name.to_owned()
        } else {
            format!("{name} (compensation)")
        };
        let slot = steps.entry(key).or_default();
        slot.0 += ms as f64;
        slot.1 += 1.0;
    }
    for db in &dbs {
        db.close().await;
    }
    trigger.fire();
    let _ = tokio::time::timeout(Duration::from_secs(15), system.wait()).await;
    if let Some(server) = &plan.postgres_url {
        for role in Role::ALL {
            let _ =
                db::drop_postgres_database(server, &format!("bench_{}_{}", &run[..8], role.name()))
                    .await;
        }
    }

    let n = plan.checkouts.max(1) as f64;
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(BenchReport {
        backend: if plan.postgres_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
        .to_owned(),
        checkouts: plan.checkouts,
        concurrency: plan.concurrency,
        checkouts_per_second: n / elapsed.as_secs_f64().max(1e-9),
        latency: Latency {
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: latencies.max() as f64 / 1000.0,
        },
        step_mean_ms: steps
            .into_iter()
            .map(|(k, (sum, count))| (k, sum / count.max(1.0)))
            .collect(),
        outcomes,
        commits_per_checkout: commits as f64 / n,
        commits_source: source.to_owned(),
        cpu_ms_per_checkout: cpu.as_secs_f64() * 1000.0 / n,
        elapsed_s: elapsed.as_secs_f64(),
    })
}

impl BenchReport {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bench: {} checkouts at concurrency {} on {}: {:.1} checkouts/s over {:.1} s",
            self.checkouts,
            self.concurrency,
            self.backend,
            self.checkouts_per_second,
            self.elapsed_s
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "latency (StartCheckout to outcome): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
        );
        let _ = writeln!(out, "outcomes: {:?}", self.outcomes);
        let _ = writeln!(
            out,
            "durable commits per checkout: {:.1} ({}); CPU per checkout (this process): {:.2} ms",
            self.commits_per_checkout, self.commits_source, self.cpu_ms_per_checkout
        );
        let _ = writeln!(out, "mean step attempt latency:");
        for (step, ms) in &self.step_mean_ms {
            let _ = writeln!(out, "  {step:<32} {ms:.1} ms");
        }
        out
    }
}
