//! `checkout chaos`: the five servers as separate processes on fresh databases, many concurrent
//! checkouts with mixed payment tokens and scarce stock, fault rules switched on and off and
//! processes SIGKILLed and restarted on a seeded schedule; then quiescence and every invariant
//! of DESIGN §7 checked against the databases.
//!
//! # Layout
//! * [`cluster`]: the processes, on fixed ports so restarts come back where clients look.
//! * [`workload`]: the checkouts, retried through faults and kills by request id.
//! * [`check`]: the invariants.
//! * [`report`]: what the run prints (text or JSON).

pub mod check;
pub mod cluster;
pub mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use checkout_inventory::fixture::StockFixture;
use checkout_kit::auth::{Bearer, Credentials, Secret};
use checkout_kit::client::{self, ClientOptions};
use checkout_kit::db::{Db, PoolConfig};
use checkout_proto::fault::fault_service_client::FaultServiceClient;
use checkout_proto::fault::{
    ClearFaultRulesRequest, FaultKind, FaultRule, ListFaultRulesRequest, SetFaultRulesRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use self::check::Databases;
use self::cluster::{Cluster, ClusterSpec};
use self::report::Report;
use crate::config::sqlite_url;
use crate::role::Role;

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// Checkouts to run.
    pub checkouts: usize,
    /// Checkouts in flight at once.
    pub concurrency: usize,
    /// Seed of the whole schedule.
    pub seed: u64,
    /// Processes to SIGKILL (and restart) during the run.
    pub kills: usize,
    /// Where the SQLite files and the stock fixture go (a temporary directory when unset).
    pub data_dir: Option<PathBuf>,
    /// A Postgres server to make the fresh databases on, instead of SQLite.
    pub postgres_url: Option<String>,
    /// How long to wait for every saga to settle after the load.
    pub quiescence_timeout: Duration,
    /// Draw progress on stderr.
    pub progress: bool,
}

/// Why a chaos run could not run (violations are not errors: they are in the report).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Setting up files failed.
    #[error("chaos setup: {0}")]
    Setup(String),
    /// A process did not start.
    #[error(transparent)]
    Spawn(#[from] cluster::SpawnError),
    /// The invariants could not be read.
    #[error(transparent)]
    Check(#[from] check::CheckError),
    /// A database could not be opened.
    #[error(transparent)]
    Db(#[from] checkout_kit::db::DbError),
}

/// The scarce stock of a run: a few skus, a handful of units in two warehouses.
pub fn scarce_stock(seed: u64) -> StockFixture {
    let mut rng = StdRng::seed_from_u64(seed);
    let shipped = StockFixture::shipped();
    let mut fixture = StockFixture {
        warehouses: shipped.warehouses.clone(),
        stock: Vec::new(),
    };
    for sku in workload::SKUS {
        for warehouse in ["wh-east", "wh-west"] {
            fixture.stock.push(checkout_inventory::fixture::StockEntry {
                sku: sku.to_owned(),
                warehouse_id: warehouse.to_owned(),
                on_hand: rng.random_range(3..12),
            });
        }
    }
    fixture
}

/// Writes the internal key where only this user can read it.
fn write_key(path: &Path, key: &Secret) -> Result<(), ChaosError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(path)
        .and_then(|mut file| file.write_all(key.expose().as_bytes()))
        .map_err(|e| ChaosError::Setup(format!("cannot write {}: {e}", path.display())))
}

fn write_stock(path: &Path, fixture: &StockFixture) -> Result<(), ChaosError> {
    let value = serde_json::json!({
        "warehouses": fixture.warehouses.iter().map(|w| serde_json::json!({
            "warehouse_id": w.warehouse_id, "region": w.region, "priority": w.priority,
        })).collect::<Vec<_>>(),
        "stock": fixture.stock.iter().map(|s| serde_json::json!({
            "sku": s.sku, "warehouse_id": s.warehouse_id, "on_hand": s.on_hand,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(path, value.to_string()).map_err(|e| ChaosError::Setup(e.to_string()))
}

fn database_urls(dir: &Path, postgres: Option<&str>, seed: u64) -> BTreeMap<&'static str, String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    Role::ALL
        .iter()
        .map(|role| {
            let url = match postgres {
                Some(server) => {
                    let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
                    format!("{base}/chaos_{seed}_{}_{}", &run[..8], role.name())
                }
                None => sqlite_url(dir, *role),
            };
            (role.name(), url)
        })
        .collect()
}

/// Opens the five databases of a run.
pub async fn open(urls: &BTreeMap<&'static str, String>) -> Result<Databases, ChaosError> {
    let pool = PoolConfig {
        max_connections: 2,
        ..PoolConfig::default()
    };
    let open = |role: Role| {
        let url = urls[role.name()].clone();
        let pool = pool.clone();
        async move { crate::launch::open_database(role, &url, &pool).await }
    };
    let db =
        |r: Result<Db, crate::launch::LaunchError>| r.map_err(|e| ChaosError::Setup(e.to_string()));
    let payment = db(open(Role::Payment).await)?;
    let processor = checkout_payment::processor::open_books(&payment, &pool)
        .await
        .map_err(|e| ChaosError::Setup(e.to_string()))?;
    Ok(Databases {
        cart: db(open(Role::Cart).await)?,
        inventory: db(open(Role::Inventory).await)?,
        payment,
        processor,
        fulfillment: db(open(Role::Fulfillment).await)?,
        orchestrator: db(open(Role::Orchestrator).await)?,
    })
}

/// Checks the databases left by an earlier run in `dir` (SQLite files and `stock.json`).
pub async fn check_only(dir: &Path) -> Result<Report, ChaosError> {
    let text = std::fs::read_to_string(dir.join("stock.json"))
        .map_err(|e| ChaosError::Setup(format!("{}: {e}", dir.join("stock.json").display())))?;
    let initial = StockFixture::parse(&text).map_err(|e| ChaosError::Setup(e.to_string()))?;
    let urls = database_urls(dir, None, 0);
    let dbs = open(&urls).await?;
    let mut report = Report {
        invariants: check::check(&dbs, &initial).await?,
        ..Report::default()
    };
    report.collect_outcomes(&dbs).await?;
    Ok(report)
}

const FAULT_TARGETS: [Role; 5] = [
    Role::Cart,
    Role::Inventory,
    Role::Payment,
    Role::Fulfillment,
    Role::Orchestrator,
];

fn random_rules(rng: &mut StdRng, role: Role) -> Vec<FaultRule> {
    let any = "/checkout.*".to_owned();
    let mut rules = vec![
        FaultRule {
            rpc_pattern: any.clone(),
            probability: rng.random_range(0.02..0.12),
            kind: FaultKind::ErrorBefore.into(),
            error_code: tonic::Code::Unavailable as i32,
            ..FaultRule::default()
        },
        FaultRule {
            rpc_pattern: any.clone(),
            probability: rng.random_range(0.02..0.08),
            kind: if rng.random_bool(0.5) {
                FaultKind::DropResponseUnavailable
            } else {
                FaultKind::DropResponseDeadlineExceeded
            }
            .into(),
            ..FaultRule::default()
        },
        FaultRule {
            rpc_pattern: any.clone(),
            probability: 0.1,
            kind: FaultKind::Delay.into(),
            delay: Some(prost_types::Duration {
                seconds: 0,
                nanos: rng.random_range(10..80) * 1_000_000,
            }),
            ..FaultRule::default()
        },
    ];
    if role != Role::Orchestrator && rng.random_bool(0.3) {
        rules.push(FaultRule {
            rpc_pattern: any,
            probability: 0.02,
            kind: FaultKind::CrashAfter.into(),
            max_hits: 1,
            ..FaultRule::default()
        });
    }
    rules
}

/// Reads a server's fault hits into the tally, then replaces (or clears) its rules.
async fn switch_faults(
    endpoint: String,
    rules: Vec<FaultRule>,
    seed: u64,
    internal: &Bearer,
    report: &Arc<Mutex<Report>>,
) {
    let options = ClientOptions {
        connect_timeout: Some(Duration::from_millis(500)),
        request_timeout: Some(Duration::from_secs(2)),
        ..ClientOptions::with_bearer(internal.clone())
    };
    let Ok(channel) = client::connect(&endpoint, &options).await else {
        return;
    };
    let mut faults = FaultServiceClient::new(channel);
    if let Ok(listed) = faults.list_fault_rules(ListFaultRulesRequest {}).await {
        let mut report = report.lock().await;
        for rule in listed.into_inner().rules {
            let kind = rule
                .kind()
                .as_str_name()
                .trim_start_matches("FAULT_KIND_")
                .to_lowercase();
            *report.faults_injected.entry(kind).or_default() +=
                u64::try_from(rule.hits).unwrap_or(0);
        }
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let _ = if rules.is_empty() {
        faults
            .clear_fault_rules(ClearFaultRulesRequest { request_id })
            .await
            .map(|_| ())
    } else {
        faults
            .set_fault_rules(SetFaultRulesRequest {
                request_id,
                rules,
                seed,
            })
            .await
            .map(|_| ())
    };
}

/// Runs the plan and checks the invariants.
pub async fn run(plan: &ChaosPlan) -> Result<Report, ChaosError> {
    let temp = match &plan.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(|e| ChaosError::Setup(e.to_string()))?),
    };
    let dir = plan
        .data_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_owned()))
        .unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(|e| ChaosError::Setup(e.to_string()))?;
    let initial = scarce_stock(plan.seed);
    let stock_file = dir.join("stock.json");
    write_stock(&stock_file, &initial)?;
    let urls = database_urls(&dir, plan.postgres_url.as_deref(), plan.seed);
    let started = Instant::now();
    // Every process runs as deployed: keys required, the orchestrator presenting its own.
    let credentials = Credentials::generate();
    let internal_key_file = dir.join("internal.key");
    write_key(&internal_key_file, &credentials.internal)?;
    let internal = credentials.internal_bearer();

    let cluster = Arc::new(Mutex::new(
        Cluster::start(ClusterSpec {
            databases: urls.clone(),
            stock_file,
            seed: plan.seed,
            credentials: credentials.clone(),
            internal_key_file,
        })
        .await?,
    ));
    let endpoints: BTreeMap<&'static str, String> = {
        let c = cluster.lock().await;
        Role::ALL
            .iter()
            .map(|r| (r.name(), c.endpoint(*r)))
            .collect()
    };
    let report = Arc::new(Mutex::new(Report {
        seed: plan.seed,
        checkouts_requested: plan.checkouts,
        concurrency: plan.concurrency,
        backend: if plan.postgres_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
        .to_owned(),
        ..Report::default()
    }));

    // The schedule: kills at seeded points of progress; faults switched every tenth.
    let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x5EED);
    let mut kill_points: Vec<usize> = (0..plan.kills)
        .map(|_| rng.random_range(plan.checkouts / 20..=plan.checkouts * 9 / 10))
        .collect();
    kill_points.sort_unstable();
    let progress = workload::Progress::default();
    let load = tokio::spawn(workload::run(
        endpoints.clone(),
        plan.checkouts,
        plan.concurrency,
        plan.seed,
        credentials.storefront_bearer(),
        progress.clone(),
    ));

    let mut next_fault_at = 0;
    let mut kills = kill_points.into_iter().peekable();
    while !load.is_finished() {
        let done = progress.started();
        if done >= next_fault_at {
            next_fault_at += (plan.checkouts / 10).max(1);
            for role in FAULT_TARGETS {
                let rules = if rng.random_bool(0.6) {
                    random_rules(&mut rng, role)
                } else {
                    Vec::new()
                };
                let seed = rng.random();
                switch_faults(
                    endpoints[role.name()].clone(),
                    rules,
                    seed,
                    &internal,
                    &report,
                )
                .await;
            }
        }
        while kills.peek().is_some_and(|at| *at <= done) {
            kills.next();
            let role = Role::ALL[rng.random_range(0..Role::ALL.len())];
            let mut c = cluster.lock().await;
            c.kill(role);
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
            c.restart(role).await?;
        }
        cluster.lock().await.revive().await?;
        if plan.progress {
            progress.draw(plan.checkouts);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome = load.await.map_err(|e| ChaosError::Setup(e.to_string()))?;
    for role in FAULT_TARGETS {
        switch_faults(
            endpoints[role.name()].clone(),
            Vec::new(),
            0,
            &internal,
            &report,
        )
        .await;
    }

    // Quiescence: every saga settles (the orchestrator keeps driving them).
    let dbs = open(&urls).await?;
    let deadline = Instant::now() + plan.quiescence_timeout;
    loop {
        cluster.lock().await.revive().await?;
        let unsettled = workload::unsettled(&dbs).await?;
        if plan.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!("\r\x1b[2Kchaos: waiting for {unsettled} checkout(s) to settle");
        }
        if unsettled == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if plan.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    {
        let mut c = cluster.lock().await;
        let mut r = report.lock().await;
        r.kills = c.kills.clone();
        r.restarts = c.restarts;
        c.stop();
    }
    let mut report = Arc::try_unwrap(report)
        .map_err(|_| ChaosError::Setup("report still shared".to_owned()))?
        .into_inner();
    report.checkouts_started = outcome.started;
    report.client_retries = outcome.client_retries;
    report.client_failures = outcome.failures;
    report.invariants = check::check(&dbs, &initial).await?;
    report.collect_outcomes(&dbs).await?;
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    for db in [
        &dbs.cart,
        &dbs.inventory,
        &dbs.payment,
        &dbs.processor,
        &dbs.fulfillment,
        &dbs.orchestrator,
    ] {
        db.close().await;
    }
    if let Some(server) = &plan.postgres_url {
        drop_postgres(server, &urls).await;
    }
    Ok(report)
}

async fn drop_postgres(server: &str, urls: &BTreeMap<&'static str, String>) {
    for url in urls.values() {
        if let Some((_, name)) = url.rsplit_once('/') {
            let _ = checkout_kit::db::drop_postgres_database(server, name).await;
        }
    }
}
