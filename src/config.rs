//! Command-line configuration. Every flag has a `CHECKOUT_*` environment variable; a flag given
//! on the command line wins over the environment, which wins over the default shown in `--help`.

use std::path::PathBuf;
use std::time::Duration;

use checkout_kit::db::PoolConfig;
use checkout_kit::fault::{FaultConfig, Rule};
use checkout_kit::idempotency::IdempotencyConfig;
use checkout_kit::server::ServerLimits;
use clap::{Args, Parser, Subcommand};

use checkout_cart::catalog::Catalog;
use checkout_fulfillment::address::ServedCountries;
use checkout_inventory::fixture::StockFixture;
use checkout_inventory::reaper::ReaperConfig;

use checkout_orchestrator::runner::{CrashPoints, EngineConfig};

use crate::launch::{LaunchError, SagaSettings, Settings};
use crate::role::Role;
use crate::security::SecurityArgs;

/// Checkout saga orchestrator: cart, inventory, payment and fulfillment services coordinated by
/// a durable saga, in one binary.
#[derive(Debug, Parser)]
#[command(name = "checkout", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text (for people) or JSON (one object per line). Traces and metrics go to
    /// OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    #[arg(
        long,
        global = true,
        env = "CHECKOUT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormatArg,
}

/// The log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// The telemetry service name of this process: `checkout-<role>` for one server,
    /// `checkout` otherwise.
    pub fn service_name(&self) -> String {
        match &self.command {
            Command::Serve(args) => format!("checkout-{}", args.role.name()),
            _ => "checkout".to_owned(),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run all five servers in one process on the embedded SQLite default (files under
    /// --data-dir) and print every endpoint.
    Up(UpArgs),
    /// Run one server in this process (production, crash tests).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(MigrateArgs),
    /// Compare payments, ledger and processor records; exit non-zero on any mismatch.
    Reconcile(ReconcileArgs),
    /// Start everything on a temporary SQLite directory, run three checkouts (completed,
    /// declined, out of stock) and print their timelines.
    Demo,
    /// Print a fresh API key and the SHA-256 hash servers are configured with.
    Keygen,
    /// Run the five servers as processes, inject faults and kills while checkouts run, then
    /// check every invariant; exit non-zero on any violation.
    Chaos(ChaosArgs),
    /// Measure checkouts per second, latency percentiles, durable commits and CPU per checkout
    /// on a system started in this process.
    Bench(BenchArgs),
}

/// Flags of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measured checkouts.
    #[arg(long, default_value_t = 2000)]
    pub checkouts: usize,
    /// Checkouts run first and not measured.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Checkouts in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Fresh databases on this Postgres server instead of SQLite files.
    #[arg(
        long,
        env = "CHECKOUT_BENCH_POSTGRES_URL",
        conflicts_with = "orchestrator"
    )]
    pub postgres_url: Option<String>,
    /// Drive a running deployment: its CheckoutService endpoint (then --cart and --inventory
    /// are needed too, and the keys).
    #[arg(long, requires_all = ["cart", "inventory"])]
    pub orchestrator: Option<String>,
    /// The running deployment's CartService endpoint.
    #[arg(long, requires = "orchestrator")]
    pub cart: Option<String>,
    /// The running deployment's InventoryService endpoint.
    #[arg(long, requires = "orchestrator")]
    pub inventory: Option<String>,
    /// The storefront key of the running deployment.
    #[arg(long, env = "CHECKOUT_STOREFRONT_KEY", hide_env_values = true)]
    pub storefront_key: Option<String>,
    /// The internal key of the running deployment (to give the benchmark's skus stock).
    #[arg(long, env = "CHECKOUT_INTERNAL_KEY", hide_env_values = true)]
    pub internal_key: Option<String>,
    /// A database of the running deployment, read for its commit counter (Postgres);
    /// repeat for each.
    #[arg(long = "database-url", requires = "orchestrator")]
    pub database_urls: Vec<String>,
    /// Finished sagas to store before the run (not with --orchestrator), to measure at scale.
    #[arg(long, default_value_t = 0, conflicts_with = "orchestrator")]
    pub preload_finished: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Checkouts to run.
    #[arg(long, default_value_t = 300)]
    pub checkouts: usize,
    /// Checkouts in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seed of the schedule (faults, kills, workload) [default: random, printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Processes to SIGKILL and restart during the run.
    #[arg(long, default_value_t = 6)]
    pub kills: usize,
    /// Make the fresh databases on this Postgres server instead of SQLite files.
    #[arg(long, env = "CHECKOUT_CHAOS_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// Keep the SQLite files and the stock fixture here [default: a temporary directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Only check the invariants of the databases an earlier run left in --data-dir.
    #[arg(long, requires = "data_dir")]
    pub check_only: bool,
    /// Seconds to wait for every checkout to settle after the load.
    #[arg(long, default_value_t = 180)]
    pub quiescence_timeout_secs: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The payment service's database URL [default: sqlite://data/payment.db].
    #[arg(long, env = "CHECKOUT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Pool settings.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Flags of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where each server's database lives.
    #[command(flatten)]
    pub databases: DatabaseArgs,
    /// Where each server listens.
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Limits shared by every server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// API keys and TLS.
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which server to run.
    #[arg(value_enum)]
    pub role: Role,
    /// Listen address [default: the role's port on 127.0.0.1: orchestrator 50050, cart 50051,
    /// inventory 50052, payment 50053, fulfillment 50054].
    #[arg(long, env = "CHECKOUT_LISTEN")]
    pub listen: Option<String>,
    /// Database URL, `sqlite://PATH` or `postgres://USER@HOST:PORT/DB` [default:
    /// sqlite://data/<role>.db].
    #[arg(long, env = "CHECKOUT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the orchestrator finds the four services.
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    /// Limits of this server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// API keys and TLS.
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Flags of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Which servers' databases to migrate [default: all five].
    #[arg(value_enum)]
    pub roles: Vec<Role>,
    /// One database URL; only with exactly one role named.
    #[arg(long, env = "CHECKOUT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Each server's database, as for `up`.
    #[command(flatten)]
    pub databases: DatabaseArgs,
    /// Connection pool settings.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Database URLs of the five servers.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Directory of the SQLite files used when a server's URL is not given.
    #[arg(long, env = "CHECKOUT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Cart database URL [default: sqlite://<data-dir>/cart.db].
    #[arg(long, env = "CHECKOUT_CART_DATABASE_URL")]
    pub cart_database_url: Option<String>,
    /// Inventory database URL [default: sqlite://<data-dir>/inventory.db].
    #[arg(long, env = "CHECKOUT_INVENTORY_DATABASE_URL")]
    pub inventory_database_url: Option<String>,
    /// Payment database URL [default: sqlite://<data-dir>/payment.db].
    #[arg(long, env = "CHECKOUT_PAYMENT_DATABASE_URL")]
    pub payment_database_url: Option<String>,
    /// Fulfillment database URL [default: sqlite://<data-dir>/fulfillment.db].
    #[arg(long, env = "CHECKOUT_FULFILLMENT_DATABASE_URL")]
    pub fulfillment_database_url: Option<String>,
    /// Orchestrator database URL [default: sqlite://<data-dir>/orchestrator.db].
    #[arg(long, env = "CHECKOUT_ORCHESTRATOR_DATABASE_URL")]
    pub orchestrator_database_url: Option<String>,
}

impl DatabaseArgs {
    /// The database URL of one role.
    pub fn url(&self, role: Role) -> String {
        let given = match role {
            Role::Cart => &self.cart_database_url,
            Role::Inventory => &self.inventory_database_url,
            Role::Payment => &self.payment_database_url,
            Role::Fulfillment => &self.fulfillment_database_url,
            Role::Orchestrator => &self.orchestrator_database_url,
        };
        given
            .clone()
            .unwrap_or_else(|| sqlite_url(&self.data_dir, role))
    }
}

/// The embedded default: `sqlite://<dir>/<role>.db`.
pub fn sqlite_url(dir: &std::path::Path, role: Role) -> String {
    format!(
        "sqlite://{}",
        dir.join(format!("{}.db", role.name())).display()
    )
}

/// Listen addresses of the five servers under `up`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Orchestrator (CheckoutService) listen address.
    #[arg(
        long,
        env = "CHECKOUT_ORCHESTRATOR_LISTEN",
        default_value = "127.0.0.1:50050"
    )]
    pub orchestrator_listen: String,
    /// Cart listen address.
    #[arg(long, env = "CHECKOUT_CART_LISTEN", default_value = "127.0.0.1:50051")]
    pub cart_listen: String,
    /// Inventory listen address.
    #[arg(
        long,
        env = "CHECKOUT_INVENTORY_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub inventory_listen: String,
    /// Payment listen address.
    #[arg(
        long,
        env = "CHECKOUT_PAYMENT_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    pub payment_listen: String,
    /// Fulfillment listen address.
    #[arg(
        long,
        env = "CHECKOUT_FULFILLMENT_LISTEN",
        default_value = "127.0.0.1:50054"
    )]
    pub fulfillment_listen: String,
}

impl ListenArgs {
    /// The listen address of one role.
    pub fn addr(&self, role: Role) -> &str {
        match role {
            Role::Cart => &self.cart_listen,
            Role::Inventory => &self.inventory_listen,
            Role::Payment => &self.payment_listen,
            Role::Fulfillment => &self.fulfillment_listen,
            Role::Orchestrator => &self.orchestrator_listen,
        }
    }
}

/// Where the orchestrator dials the four services.
#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    /// CartService endpoint.
    #[arg(
        long,
        env = "CHECKOUT_CART_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub cart_endpoint: String,
    /// InventoryService endpoint.
    #[arg(
        long,
        env = "CHECKOUT_INVENTORY_ENDPOINT",
        default_value = "http://127.0.0.1:50052"
    )]
    pub inventory_endpoint: String,
    /// PaymentService endpoint.
    #[arg(
        long,
        env = "CHECKOUT_PAYMENT_ENDPOINT",
        default_value = "http://127.0.0.1:50053"
    )]
    pub payment_endpoint: String,
    /// FulfillmentService endpoint.
    #[arg(
        long,
        env = "CHECKOUT_FULFILLMENT_ENDPOINT",
        default_value = "http://127.0.0.1:50054"
    )]
    pub fulfillment_endpoint: String,
}

/// Limits and pool settings shared by the servers of a process.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Deadline of one request when the client sets no shorter one, in milliseconds.
    #[arg(long, env = "CHECKOUT_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Largest request or response message, in bytes.
    #[arg(long, env = "CHECKOUT_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Requests served at once on one connection.
    #[arg(
        long,
        env = "CHECKOUT_CONCURRENCY_PER_CONNECTION",
        default_value_t = 256
    )]
    pub concurrency_per_connection: usize,
    /// HTTP/2 streams one connection may open at once.
    #[arg(long, env = "CHECKOUT_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,
    /// After SIGTERM or Ctrl-C, how long in-flight requests get to finish, in milliseconds.
    #[arg(long, env = "CHECKOUT_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Most database connections per server (default: twice this machine's cores plus two,
    /// between 4 and 16).
    #[arg(long, env = "CHECKOUT_DB_MAX_CONNECTIONS", default_value_t = PoolConfig::default().max_connections)]
    pub db_max_connections: u32,
    /// How long an idempotency key (a request_id) is remembered, in seconds.
    #[arg(long, env = "CHECKOUT_IDEMPOTENCY_RETENTION_SECS", default_value_t = 24 * 60 * 60)]
    pub idempotency_retention_secs: u64,
    /// How often expired idempotency keys are collected, in seconds.
    #[arg(
        long,
        env = "CHECKOUT_IDEMPOTENCY_COLLECT_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub idempotency_collect_interval_secs: u64,
    /// Most expired idempotency keys deleted per statement.
    #[arg(
        long,
        env = "CHECKOUT_IDEMPOTENCY_COLLECT_BATCH",
        default_value_t = 500
    )]
    pub idempotency_collect_batch: u32,
    /// The cart catalog: a JSON list of products, upserted at start [default: the fixture
    /// shipped in services/cart/fixtures/catalog.json].
    #[arg(long, env = "CHECKOUT_CATALOG_FILE")]
    pub catalog_file: Option<PathBuf>,
    /// The inventory's warehouses and opening stock (JSON); stock rows are only created where
    /// none exist [default: services/inventory/fixtures/stock.json].
    #[arg(long, env = "CHECKOUT_STOCK_FILE")]
    pub stock_file: Option<PathBuf>,
    /// How often the inventory releases reservations whose TTL elapsed, in milliseconds.
    #[arg(long, env = "CHECKOUT_REAPER_INTERVAL_MS", default_value_t = 1_000)]
    pub reaper_interval_ms: u64,
    /// Countries fulfillment ships to, as ISO 3166-1 alpha-2 codes separated by commas;
    /// Antarctica (AQ) is never served [default: US,CA,MX,GB,IE,DE,FR,NL,BE,AT,ES,PT,IT,SE,DK,
    /// FI,PL,CZ,JP,AU,NZ].
    #[arg(long, env = "CHECKOUT_SERVED_COUNTRIES")]
    pub served_countries: Option<String>,
    /// This orchestrator replica's name in saga leases; give each replica its own, and keep it
    /// across restarts so a restarted replica resumes its sagas at once [default: random].
    #[arg(long, env = "CHECKOUT_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Sagas one orchestrator drives at once.
    #[arg(long, env = "CHECKOUT_SAGA_WORKERS", default_value_t = 64)]
    pub saga_workers: usize,
    /// How long a saga lease lasts without renewal; another replica takes over after it, in
    /// milliseconds.
    #[arg(long, env = "CHECKOUT_LEASE_TTL_MS", default_value_t = 15_000)]
    pub lease_ttl_ms: u64,
    /// How often the orchestrator looks for due and orphaned sagas, in milliseconds.
    #[arg(long, env = "CHECKOUT_SWEEP_INTERVAL_MS", default_value_t = 500)]
    pub sweep_interval_ms: u64,
    /// How long a checkout may take before the payment capture; past it, it compensates, in
    /// milliseconds.
    #[arg(long, env = "CHECKOUT_SAGA_DEADLINE_MS", default_value_t = 120_000)]
    pub saga_deadline_ms: u64,
    /// Deadline of one step's command, in milliseconds.
    #[arg(long, env = "CHECKOUT_STEP_TIMEOUT_MS", default_value_t = 5_000)]
    pub step_timeout_ms: u64,
    /// Test only: named points where the orchestrator aborts (after_write_ahead:<step>,
    /// after_send:<step>, after_record:<step>), comma-separated.
    #[arg(long, env = "CHECKOUT_CRASH_POINTS", default_value = "")]
    pub crash_points: String,
    /// Allow fault injection: FaultService accepts rules (it refuses otherwise).
    #[arg(long, env = "CHECKOUT_ALLOW_FAULT_INJECTION")]
    pub allow_fault_injection: bool,
    /// Fault rules active from the start, as JSON: `[{"rpc_pattern": "/pkg.Service/*",
    /// "probability": 0.1, "kind": "error_before"}]`; kinds: error_before (with error_code),
    /// delay (with delay_ms), drop_response_unavailable, drop_response_deadline_exceeded,
    /// crash_before, crash_after. Needs --allow-fault-injection.
    #[arg(long, env = "CHECKOUT_FAULT_RULES")]
    pub fault_rules: Option<String>,
    /// Seed of the fault rules' randomness.
    #[arg(long, env = "CHECKOUT_FAULT_SEED", default_value_t = 0)]
    pub fault_seed: u64,
}

impl ServerArgs {
    /// The server limits these flags describe.
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_message_bytes: self.max_message_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            concurrency_per_connection: self.concurrency_per_connection,
            max_concurrent_streams: self.max_concurrent_streams,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        }
    }

    /// Everything a launched server needs from these flags; fails on an unusable catalog file.
    pub fn settings(&self) -> Result<Settings, LaunchError> {
        let catalog = match &self.catalog_file {
            Some(path) => {
                Catalog::from_file(path).map_err(|e| LaunchError::Config(e.to_string()))?
            }
            None => Catalog::fixture(),
        };
        let stock = match &self.stock_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| LaunchError::Config(format!("cannot read {}: {e}", path.display())))
                .and_then(|text| {
                    StockFixture::parse(&text).map_err(|e| LaunchError::Config(e.to_string()))
                })?,
            None => StockFixture::shipped(),
        };
        Ok(Settings {
            limits: self.limits(),
            pool: self.pool(),
            idempotency: IdempotencyConfig {
                retention: Duration::from_secs(self.idempotency_retention_secs),
                collect_interval: Duration::from_secs(self.idempotency_collect_interval_secs),
                collect_batch: self.idempotency_collect_batch,
                ..IdempotencyConfig::default()
            },
            catalog,
            stock,
            reaper: ReaperConfig {
                interval: Duration::from_millis(self.reaper_interval_ms),
                ..ReaperConfig::default()
            },
            saga: SagaSettings {
                engine: EngineConfig {
                    replica_id: self
                        .replica_id
                        .clone()
                        .unwrap_or_else(|| EngineConfig::default().replica_id),
                    workers: self.saga_workers.max(1),
                    lease_ttl: Duration::from_millis(self.lease_ttl_ms),
                    sweep_interval: Duration::from_millis(self.sweep_interval_ms.max(10)),
                    crash_points: CrashPoints::parse(&self.crash_points),
                },
                deadline: Duration::from_millis(self.saga_deadline_ms),
                step_timeout: Duration::from_millis(self.step_timeout_ms),
            },
            faults: self.faults()?,
            // `up` and `serve` resolve their security flags on top of this.
            security: crate::launch::Security::default(),
            served_countries: match &self.served_countries {
                Some(list) => {
                    ServedCountries::parse(list).map_err(|e| LaunchError::Config(e.to_string()))?
                }
                None => ServedCountries::default_set(),
            },
        })
    }

    /// Fault injection as these flags describe it.
    pub fn faults(&self) -> Result<FaultConfig, LaunchError> {
        let rules: Vec<Rule> = match &self.fault_rules {
            None => Vec::new(),
            Some(_) if !self.allow_fault_injection => {
                return Err(LaunchError::Config(
                    "--fault-rules needs --allow-fault-injection".to_owned(),
                ));
            }
            Some(json) => serde_json::from_str(json)
                .map_err(|e| LaunchError::Config(format!("--fault-rules: {e}")))?,
        };
        for (i, rule) in rules.iter().enumerate() {
            rule.validate(&format!("--fault-rules[{i}]"))
                .map_err(|e| LaunchError::Config(e.to_string()))?;
        }
        Ok(FaultConfig {
            allowed: self.allow_fault_injection,
            rules,
            seed: self.fault_seed,
        })
    }

    /// The pool settings these flags describe.
    pub fn pool(&self) -> PoolConfig {
        PoolConfig {
            max_connections: self.db_max_connections,
            ..PoolConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_role_defaults_to_its_own_sqlite_file() {
        let cli = Cli::try_parse_from(["checkout", "up", "--data-dir", "/tmp/x"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("expected up");
        };
        assert_eq!(up.databases.url(Role::Cart), "sqlite:///tmp/x/cart.db");
        assert_eq!(
            up.databases.url(Role::Orchestrator),
            "sqlite:///tmp/x/orchestrator.db"
        );
        assert_eq!(up.listen.addr(Role::Payment), "127.0.0.1:50053");
    }
}
