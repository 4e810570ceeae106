//! `checkout bench`: N checkouts at concurrency C through CheckoutService with all four services
//! doing their real work, on a system it starts itself (in-process, SQLite by default or fresh
//! databases on a Postgres server) or on a running deployment given by its addresses. Reports
//! checkouts/s, end-to-end latency percentiles (HDR histogram), per-step latency (from each
//! checkout's attempts), outcomes, durable commits per checkout (the databases' own counters)
//! and CPU per checkout (this process, and the whole machine).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use checkout_inventory::fixture::{StockEntry, StockFixture};
use checkout_kit::auth::{Credentials, Secret};
use checkout_kit::client::{self, ClientOptions, EndpointError, OutboundChannel};
use checkout_kit::db::{self, Db};
use checkout_kit::shutdown::{Shutdown, ShutdownTrigger};
use checkout_proto::cart::cart_service_client::CartServiceClient;
use checkout_proto::cart::{AddItemRequest, CreateCartRequest};
use checkout_proto::checkout::checkout_service_client::CheckoutServiceClient;
use checkout_proto::checkout::{Checkout, CheckoutStatus, StartCheckoutRequest, StepDirection};
use checkout_proto::common::Address;
use checkout_proto::inventory::SetStockRequest;
use checkout_proto::inventory::inventory_service_client::InventoryServiceClient;
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
    /// Fresh databases on this Postgres server instead of SQLite files (in-process runs).
    pub postgres_url: Option<String>,
    /// A running deployment to drive instead of starting one.
    pub remote: Option<Remote>,
    /// Finished sagas to store before the run (in-process runs), to measure at scale.
    pub preload_finished: u64,
    /// Draw progress on stderr.
    pub progress: bool,
}

/// A running deployment: where its services listen and the keys to call them with.
#[derive(Debug, Clone)]
pub struct Remote {
    /// CheckoutService endpoint (`http://host:port`).
    pub orchestrator: String,
    /// CartService endpoint (carts are built through it).
    pub cart: String,
    /// InventoryService endpoint (the benchmark's skus get ample stock through SetStock).
    pub inventory: String,
    /// The storefront key (StartCheckout, carts).
    pub storefront_key: Secret,
    /// The internal key (SetStock).
    pub internal_key: Secret,
    /// The deployment's databases, read for their commit counters (Postgres only).
    pub database_urls: Vec<String>,
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
    /// Postgres only: every transaction the servers' databases counted as committed
    /// (`pg_stat_database.xact_commit`), read-only single statements included, per checkout.
    pub postgres_xact_commits_per_checkout: Option<f64>,
    /// CPU time of this process per checkout, in milliseconds (in-process runs: all five
    /// servers and the client).
    pub cpu_ms_per_checkout: f64,
    /// CPU time of the whole machine per checkout (every process: servers, databases, client),
    /// in milliseconds.
    pub machine_cpu_ms_per_checkout: f64,
    /// Wall time of the measured phase.
    pub elapsed_s: f64,
    /// Finished sagas stored before the run.
    pub preloaded_sagas: u64,
    /// The orchestrator database's plans for the sweeper and listing queries (in-process runs).
    pub query_plans: BTreeMap<String, Vec<String>>,
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

/// CPU time (user + system, every process) the machine has spent so far, from `/proc/stat`.
fn machine_cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let busy: u64 = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    Duration::from_millis(busy * 10)
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn channel(endpoint: String, options: &ClientOptions) -> Result<OutboundChannel, BenchError> {
    Ok(client::connect(&endpoint, options).await?)
}

async fn make_cart(
    cart: &mut CartServiceClient<OutboundChannel>,
    run: &str,
    i: usize,
) -> Result<(String, String), BenchError> {
    let customer = format!("bench-{run}-{i}");
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

/// What the driven checkouts showed.
struct Driven {
    latencies: Histogram<u64>,
    outcomes: BTreeMap<String, usize>,
    /// Sum of attempt durations (ms) and count, per step (and direction).
    steps: BTreeMap<String, (f64, f64)>,
}

impl Driven {
    fn new() -> Result<Self, BenchError> {
        Ok(Self {
            latencies: Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .map_err(|e| BenchError::Other(e.to_string()))?,
            outcomes: BTreeMap::new(),
            steps: BTreeMap::new(),
        })
    }

    fn merge(&mut self, other: Driven) -> Result<(), BenchError> {
        self.latencies
            .add(&other.latencies)
            .map_err(|e| BenchError::Other(e.to_string()))?;
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, (sum, n)) in other.steps {
            let slot = self.steps.entry(k).or_default();
            slot.0 += sum;
            slot.1 += n;
        }
        Ok(())
    }

    /// Counts a finished checkout: its outcome and, from its view, each attempt's duration.
    fn record(&mut self, checkout: Option<&Checkout>) {
        let status = checkout.map_or(CheckoutStatus::Unspecified, Checkout::status);
        let name = status.as_str_name().trim_start_matches("CHECKOUT_STATUS_");
        *self.outcomes.entry(name.to_owned()).or_default() += 1;
        let millis = |t: &prost_types::Timestamp| t.seconds as f64 * 1e3 + f64::from(t.nanos) / 1e6;
        for step in checkout.map(|c| c.steps.as_slice()).unwrap_or_default() {
            for attempt in &step.attempts {
                let (Some(start), Some(end)) = (&attempt.start_time, &attempt.end_time) else {
                    continue;
                };
                let key = if attempt.direction() == StepDirection::Compensation {
                    format!("{} (compensation)", step.name)
                } else {
                    step.name.clone()
                };
                let slot = self.steps.entry(key).or_default();
                slot.0 += (millis(end) - millis(start)).max(0.0);
                slot.1 += 1.0;
            }
        }
    }
}

/// Runs `carts` through StartCheckout at `concurrency`.
async fn drive(
    checkout: &CheckoutServiceClient<OutboundChannel>,
    carts: Vec<(String, String)>,
    concurrency: usize,
    progress: bool,
) -> Result<Driven, BenchError> {
    let carts = Arc::new(std::sync::Mutex::new(carts));
    let done = Arc::new(AtomicUsize::new(0));
    let total = carts.lock().map(|c| c.len()).unwrap_or(0);
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (carts, done, mut client) = (carts.clone(), done.clone(), checkout.clone());
        workers.push(tokio::spawn(async move {
            let mut driven = Driven::new()?;
            loop {
                let next = carts.lock().ok().and_then(|mut c| c.pop());
                let Some((cart_id, customer)) = next else {
                    return Ok::<_, BenchError>(driven);
                };
                let sent = Instant::now();
                let result = client
                    .start_checkout(start_request(cart_id, customer))
                    .await?;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = driven.latencies.record(micros.max(1));
                driven.record(result.get_ref().checkout.as_ref());
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) && n % 50 == 0 {
                    eprint!("\r\x1b[2Kbench: {n}/{total}");
                }
            }
        }));
    }
    let mut all = Driven::new()?;
    for worker in workers {
        all.merge(
            worker
                .await
                .map_err(|e| BenchError::Other(e.to_string()))??,
        )?;
    }
    if progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    Ok(all)
}

async fn server_commits(dbs: &[Db]) -> Result<Option<i64>, BenchError> {
    if dbs.is_empty() {
        return Ok(None);
    }
    let mut total = 0;
    for db in dbs {
        match db::server_commits(db).await? {
            Some(n) => total += n,
            None => return Ok(None),
        }
    }
    Ok(Some(total))
}

/// The system under test: started here, or a running deployment.
struct Subject {
    checkout: CheckoutServiceClient<OutboundChannel>,
    cart: CartServiceClient<OutboundChannel>,
    /// Databases whose commit counters are read.
    dbs: Vec<Db>,
    /// The orchestrator's database, when this run started the system.
    orchestrator_db: Option<Db>,
    backend: String,
    /// Set when this run started the system: stops it and drops its Postgres databases.
    started: Option<(ShutdownTrigger, System, Vec<String>)>,
    _dir: Option<tempfile::TempDir>,
}

async fn connect_dbs(urls: &[String]) -> Result<Vec<Db>, BenchError> {
    let mut dbs = Vec::new();
    for url in urls {
        let config = db::PoolConfig {
            max_connections: 1,
            ..db::PoolConfig::default()
        };
        dbs.push(Db::connect(url, &config).await?);
    }
    Ok(dbs)
}

/// Starts all five servers in this process, on SQLite files or fresh Postgres databases.
async fn start_here(plan: &BenchPlan) -> Result<Subject, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Other(e.to_string()))?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let name = |role: Role| format!("bench_{}_{}", &run[..8], role.name());
    let url = |role: Role| match &plan.postgres_url {
        Some(server) => {
            let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
            format!("{base}/{}", name(role))
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
    let cart = CartServiceClient::new(channel(system.endpoint(Role::Cart), &options).await?);
    let checkout =
        CheckoutServiceClient::new(channel(system.endpoint(Role::Orchestrator), &options).await?);
    let urls: Vec<String> = Role::ALL.into_iter().map(url).collect();
    let dbs = connect_dbs(&urls).await?;
    let orchestrator_db = Db::connect(&url(Role::Orchestrator), &db::PoolConfig::default()).await?;
    if plan.preload_finished > 0 {
        let names: Vec<&str> = checkout_orchestrator::checkout_saga::definition(
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .steps
        .iter()
        .map(|s| s.name)
        .collect();
        let mut tx = orchestrator_db.begin().await?;
        let count = i64::try_from(plan.preload_finished).unwrap_or(i64::MAX);
        checkout_orchestrator::store::preload_finished(&mut tx, count, &names, db::now_millis())
            .await?;
        tx.commit().await?;
        let mut tx = orchestrator_db.begin().await?;
        checkout_orchestrator::store::analyze(&mut tx).await?;
        tx.commit().await?;
    }
    let dropped = match plan.postgres_url {
        Some(_) => Role::ALL.into_iter().map(name).collect(),
        None => Vec::new(),
    };
    Ok(Subject {
        checkout,
        cart,
        dbs,
        orchestrator_db: Some(orchestrator_db),
        backend: if plan.postgres_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
        .to_owned(),
        started: Some((trigger, system, dropped)),
        _dir: Some(dir),
    })
}

/// Connects to a running deployment and gives the benchmark's skus ample stock there.
async fn reach(remote: &Remote) -> Result<Subject, BenchError> {
    let bearer = |key: &Secret| {
        checkout_kit::auth::Bearer::new(key)
            .map_err(|e| BenchError::Other(format!("unusable key: {e}")))
    };
    let storefront = ClientOptions::with_bearer(bearer(&remote.storefront_key)?);
    let internal = ClientOptions::with_bearer(bearer(&remote.internal_key)?);
    let mut inventory =
        InventoryServiceClient::new(channel(remote.inventory.clone(), &internal).await?);
    for entry in ample_stock().stock {
        inventory
            .set_stock(SetStockRequest {
                request_id: rid(),
                sku: entry.sku,
                warehouse_id: entry.warehouse_id,
                on_hand: entry.on_hand,
            })
            .await?;
    }
    let dbs = connect_dbs(&remote.database_urls).await?;
    let backend = match dbs.first().map(Db::backend) {
        Some(db::Backend::Postgres) => "postgres (remote)",
        Some(db::Backend::Sqlite) => "sqlite (remote)",
        None => "remote",
    };
    Ok(Subject {
        checkout: CheckoutServiceClient::new(
            channel(remote.orchestrator.clone(), &storefront).await?,
        ),
        cart: CartServiceClient::new(channel(remote.cart.clone(), &storefront).await?),
        dbs,
        orchestrator_db: None,
        backend: backend.to_owned(),
        started: None,
        _dir: None,
    })
}

/// Runs the benchmark on a system it starts in this process, or on a running deployment.
pub async fn run(plan: &BenchPlan) -> Result<BenchReport, BenchError> {
    let mut subject = match &plan.remote {
        Some(remote) => reach(remote).await?,
        None => start_here(plan).await?,
    };
    let mut carts = Vec::with_capacity(plan.warmup + plan.checkouts);
    // Customers unique to this run, so a deployment's earlier runs do not mix in.
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    for i in 0..plan.warmup + plan.checkouts {
        carts.push(make_cart(&mut subject.cart, run, i).await?);
    }
    let measured = carts.split_off(plan.warmup);
    drive(&subject.checkout, carts, plan.concurrency, false).await?;

    // Postgres publishes its counters about once a second.
    let settle = Duration::from_millis(1200);
    tokio::time::sleep(settle).await;
    let commits_before = (
        server_commits(&subject.dbs).await?,
        db::commits_so_far(),
        db::postgres_single_reads_so_far(),
    );
    let cpu_before = (cpu_time(), machine_cpu_time());
    let started = Instant::now();
    let driven = drive(&subject.checkout, measured, plan.concurrency, plan.progress).await?;
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before.0);
    let machine_cpu = machine_cpu_time().saturating_sub(cpu_before.1);
    tokio::time::sleep(settle).await;
    let commits_after = (
        server_commits(&subject.dbs).await?,
        db::commits_so_far(),
        db::postgres_single_reads_so_far(),
    );

    let xact_commits = match (commits_before.0, commits_after.0) {
        (Some(before), Some(after)) => Some(u64::try_from(after - before).unwrap_or(0)),
        _ => None,
    };
    let (commits, source) = match xact_commits {
        // The servers run in this process, so the reads among the server's counted
        // transactions are known.
        Some(xact) if subject.started.is_some() => (
            xact.saturating_sub(commits_after.2 - commits_before.2),
            "pg_stat_database.xact_commit, less the single-statement reads the servers made \
             (Postgres counts each as a transaction; they write nothing)",
        ),
        Some(xact) => (
            xact,
            "pg_stat_database.xact_commit (single-statement reads included: Postgres counts \
             each as a transaction)",
        ),
        _ if subject.started.is_some() => (
            commits_after.1 - commits_before.1,
            "durable commits (SQLite COMMITs, one may carry several write transactions)",
        ),
        _ => (
            0,
            "not measured: give the deployment's Postgres URLs with --database-url",
        ),
    };
    let mut query_plans = BTreeMap::new();
    if let Some(orchestrator) = &subject.orchestrator_db {
        let mut tx = orchestrator.begin_read().await?;
        query_plans.extend(checkout_orchestrator::store::query_plans(&mut tx).await?);
        tx.rollback().await?;
        orchestrator.close().await;
    }
    for db in &subject.dbs {
        db.close().await;
    }
    if let Some((trigger, system, dropped)) = subject.started.take() {
        trigger.fire();
        let _ = tokio::time::timeout(Duration::from_secs(15), system.wait()).await;
        if let Some(server) = &plan.postgres_url {
            for name in dropped {
                let _ = db::drop_postgres_database(server, &name).await;
            }
        }
    }

    let n = plan.checkouts.max(1) as f64;
    let ms = |q: f64| driven.latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(BenchReport {
        backend: subject.backend,
        checkouts: plan.checkouts,
        concurrency: plan.concurrency,
        checkouts_per_second: n / elapsed.as_secs_f64().max(1e-9),
        latency: Latency {
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: driven.latencies.max() as f64 / 1000.0,
        },
        step_mean_ms: driven
            .steps
            .into_iter()
            .map(|(k, (sum, count))| (k, sum / count.max(1.0)))
            .collect(),
        outcomes: driven.outcomes,
        commits_per_checkout: commits as f64 / n,
        commits_source: source.to_owned(),
        postgres_xact_commits_per_checkout: xact_commits.map(|x| x as f64 / n),
        cpu_ms_per_checkout: cpu.as_secs_f64() * 1000.0 / n,
        machine_cpu_ms_per_checkout: machine_cpu.as_secs_f64() * 1000.0 / n,
        elapsed_s: elapsed.as_secs_f64(),
        preloaded_sagas: if plan.remote.is_some() {
            0
        } else {
            plan.preload_finished
        },
        query_plans,
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
            "durable commits per checkout: {:.1} ({})",
            self.commits_per_checkout, self.commits_source
        );
        if let Some(xact) = self.postgres_xact_commits_per_checkout {
            let _ = writeln!(out, "pg_stat_database.xact_commit per checkout: {xact:.1}");
        }
        let _ = writeln!(
            out,
            "CPU per checkout: {:.2} ms this process, {:.2} ms the whole machine (every process)",
            self.cpu_ms_per_checkout, self.machine_cpu_ms_per_checkout
        );
        let _ = writeln!(out, "mean step attempt latency:");
        for (step, ms) in &self.step_mean_ms {
            let _ = writeln!(out, "  {step:<32} {ms:.1} ms");
        }
        if !self.query_plans.is_empty() {
            let _ = writeln!(
                out,
                "query plans ({} finished sagas preloaded):",
                self.preloaded_sagas
            );
            for (query, lines) in &self.query_plans {
                let _ = writeln!(out, "  {query}:");
                for line in lines {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        out
    }
}
