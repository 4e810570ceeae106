//! Opening databases, binding listeners and running servers: the work behind `up`, `serve` and
//! `migrate`, and behind tests that start the real servers on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use checkout_cart::catalog::Catalog;
use checkout_fulfillment::address::ServedCountries;
use checkout_inventory::fixture::StockFixture;
use checkout_inventory::reaper::ReaperConfig;
use checkout_kit::auth::{AuthPolicy, Bearer, Credentials, Secret};
use checkout_kit::client::ClientOptions;
use checkout_kit::db::{Db, DbError, PoolConfig};
use checkout_kit::fault::{FaultConfig, FaultControl};
use checkout_kit::idempotency::{Idempotency, IdempotencyConfig};
use checkout_kit::server::{self, GrpcServer, ServerError, ServerLimits};
use checkout_kit::shutdown::{Shutdown, ShutdownTrigger};
use checkout_kit::tls::{ClientTls, ServerTls};
use checkout_orchestrator::checkout_saga::{self, CheckoutSteps};
use checkout_orchestrator::clients::{ServiceClients, ServiceEndpointError, ServiceEndpoints};
use checkout_orchestrator::runner::{Engine, EngineConfig};
use checkout_payment::processor::{SimulatedProcessor, open_books};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::islands::Islands;
use crate::role::Role;

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A server's database could not be opened or migrated.
    #[error("{role} database: {source}")]
    Database {
        /// Whose database.
        role: Role,
        /// The database failure.
        #[source]
        source: DbError,
    },
    /// A server could not bind, build or serve.
    #[error("{role} server: {source}")]
    Server {
        /// Which server.
        role: Role,
        /// The server failure.
        #[source]
        source: ServerError,
    },
    /// The orchestrator was given an unusable service endpoint.
    #[error("orchestrator")]
    Endpoint(#[from] ServiceEndpointError),
    /// A server task panicked or was cancelled.
    #[error("{role} server task ended abnormally: {source}")]
    Task {
        /// Which server.
        role: Role,
        /// The join failure.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A start-up setting or data source (catalog, stock fixture, served countries) could not
    /// be loaded or applied.
    #[error("{0}")]
    Config(String),
    /// A flag combination that cannot work.
    #[error("{0}")]
    Usage(String),
    /// The servers' runtimes could not be started.
    #[error("cannot start the servers' runtimes: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Limits, pool and idempotency settings for the servers of one process.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Request and connection limits.
    pub limits: ServerLimits,
    /// Database pool settings.
    pub pool: PoolConfig,
    /// Idempotency key retention and locking.
    pub idempotency: IdempotencyConfig,
    /// The cart service's catalog source, upserted at start.
    pub catalog: Catalog,
    /// The inventory service's warehouses and opening stock, seeded at start.
    pub stock: StockFixture,
    /// How the inventory service's reaper releases expired reservations.
    pub reaper: ReaperConfig,
    /// The countries fulfillment ships to.
    pub served_countries: ServedCountries,
    /// The orchestrator's saga settings.
    pub saga: SagaSettings,
    /// Fault injection: allowed or not, rules from the start, seed.
    pub faults: FaultConfig,
    /// Authentication and TLS.
    pub security: Security,
}

/// Authentication and TLS of a process's servers and of the orchestrator's clients. The default
/// (auth disabled, no TLS) is for code that builds `Settings` itself; the binary always decides
/// explicitly (see `config.rs`).
#[derive(Debug, Clone)]
pub struct Security {
    /// Which keys the servers accept, or development mode.
    pub auth: AuthPolicy,
    /// The internal key the orchestrator presents to the services it drives.
    pub internal_key: Option<Secret>,
    /// The servers' certificate and key; none serves plaintext.
    pub server_tls: Option<ServerTls>,
    /// The CA the orchestrator's clients trust for `https://` endpoints.
    pub client_tls: Option<ClientTls>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            auth: AuthPolicy::Disabled,
            internal_key: None,
            server_tls: None,
            client_tls: None,
        }
    }
}

impl Security {
    /// Servers accepting exactly these keys, the orchestrator presenting the internal one.
    pub fn with_credentials(credentials: &Credentials) -> Self {
        Self {
            auth: AuthPolicy::Enforced(credentials.keyring()),
            internal_key: Some(credentials.internal.clone()),
            ..Self::default()
        }
    }

    /// What the orchestrator's clients present and trust.
    fn client_options(&self) -> Result<ClientOptions, LaunchError> {
        let bearer = match (&self.auth, &self.internal_key) {
            (_, Some(key)) => Some(Bearer::new(key).map_err(|e| {
                LaunchError::Config(format!("the orchestrator's internal key: {e}"))
            })?),
            (AuthPolicy::Enforced(_), None) => {
                return Err(LaunchError::Usage(
                    "the orchestrator needs the internal key it presents to the services: set \
                     --internal-key-file (or --auth-disabled for development)"
                        .to_owned(),
                ));
            }
            (AuthPolicy::Disabled, None) => None,
        };
        Ok(ClientOptions {
            bearer,
            tls: self.client_tls.clone(),
            ..ClientOptions::default()
        })
    }
}

/// The orchestrator's saga settings.
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// How the engine runs (replica id, workers, lease, crash points).
    pub engine: EngineConfig,
    /// How long a checkout may take before the pivot.
    pub deadline: Duration,
    /// Deadline of one step attempt.
    pub step_timeout: Duration,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            deadline: Duration::from_secs(120),
            step_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens a role's database (creating it if missing) and applies its migrations.
pub async fn open_database(role: Role, url: &str, pool: &PoolConfig) -> Result<Db, LaunchError> {
    let database = |source| LaunchError::Database { role, source };
    let db = Db::connect(url, pool).await.map_err(database)?;
    db.migrate(role.migrations()).await.map_err(database)?;
    Ok(db)
}

/// Brings a role's data up to what the server expects at start: the cart catalog is upserted
/// from its source; warehouses and missing stock rows are seeded from the stock fixture.
pub async fn prepare(role: Role, db: &Db, settings: &Settings) -> Result<(), LaunchError> {
    let seed = |e: &dyn std::fmt::Display| LaunchError::Config(format!("{role} seed: {e}"));
    match role {
        Role::Cart => checkout_cart::api::seed_catalog(db, &settings.catalog)
            .await
            .map_err(|e| seed(&e)),
        Role::Inventory => checkout_inventory::stock::seed(db, &settings.stock)
            .await
            .map_err(|e| seed(&e)),
        Role::Payment | Role::Fulfillment | Role::Orchestrator => Ok(()),
    }
}

/// The background tasks a role runs beside its server until shutdown: every role collects its
/// expired idempotency keys; inventory also reaps expired reservations.
fn spawn_background(
    role: Role,
    db: &Db,
    settings: &Settings,
    engine: Option<&Engine>,
    shutdown: &Shutdown,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        Idempotency::new(db.clone(), settings.idempotency.clone())
            .spawn_collector(shutdown.clone()),
    ];
    if let Some(engine) = engine {
        tasks.push(engine.spawn_sweeper(shutdown.clone()));
    }
    if role == Role::Inventory {
        tasks.push(checkout_inventory::reaper::spawn(
            db.clone(),
            settings.reaper.clone(),
            shutdown.clone(),
        ));
    }
    tasks
}

/// Binds a role's listen address.
pub async fn bind(role: Role, addr: &str) -> Result<TcpListener, LaunchError> {
    server::bind(addr)
        .await
        .map_err(|source| LaunchError::Server { role, source })
}

/// A role's server, and the saga engine when the role is the orchestrator.
pub struct ServerParts {
    /// The gRPC server.
    pub server: GrpcServer,
    /// The orchestrator's saga engine (its sweeper runs beside the server).
    pub engine: Option<Engine>,
    /// Databases opened beside the role's own (the simulated processor's books), closed after
    /// the server stops.
    pub side_databases: Vec<Db>,
}

/// The server of a role over its database; the orchestrator also gets the service endpoints.
pub async fn build_server(
    role: Role,
    db: Db,
    settings: &Settings,
    endpoints: &ServiceEndpoints,
) -> Result<ServerParts, LaunchError> {
    let idempotency = Idempotency::new(db.clone(), settings.idempotency.clone());
    let limits = settings.limits.clone();
    let mut side_databases = Vec::new();
    let (server, engine) = match role {
        Role::Cart => (
            checkout_cart::api::grpc_server(db, idempotency, limits),
            None,
        ),
        Role::Inventory => (
            checkout_inventory::api::grpc_server(db, idempotency, limits),
            None,
        ),
        Role::Payment => {
            let books = open_books(&db, &settings.pool)
                .await
                .map_err(|source| LaunchError::Database { role, source })?;
            side_databases.push(books.clone());
            let processor = Arc::new(SimulatedProcessor::new(books));
            let server = checkout_payment::api::grpc_server(db, idempotency, processor, limits);
            (server, None)
        }
        Role::Fulfillment => {
            let served = settings.served_countries.clone();
            let server = checkout_fulfillment::api::grpc_server(db, idempotency, served, limits);
            (server, None)
        }
        Role::Orchestrator => {
            let options = settings.security.client_options()?;
            let clients = ServiceClients::connect_lazy(endpoints, &options)?;
            let def = checkout_saga::definition(settings.saga.deadline, settings.saga.step_timeout);
            let steps = Arc::new(CheckoutSteps::new(clients));
            let engine = Engine::new(db.clone(), def, steps, settings.saga.engine.clone());
            let server =
                checkout_orchestrator::api::grpc_server(db, idempotency, engine.clone(), limits);
            (server, Some(engine))
        }
    };
    let server = server
        .with_faults(FaultControl::new(settings.faults.clone()))
        .with_auth(settings.security.auth.clone())
        .with_tls(settings.security.server_tls.clone());
    Ok(ServerParts {
        server,
        engine,
        side_databases,
    })
}

/// A server running on a task.
#[derive(Debug)]
pub struct RunningServer {
    /// Which server.
    pub role: Role,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its database, closed after it stops.
    pub db: Db,
    side_databases: Vec<Db>,
    task: JoinHandle<Result<(), ServerError>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Starts serving on a bound listener until `shutdown` fires, with the role's background
    /// tasks beside it.
    pub fn spawn(
        role: Role,
        db: Db,
        listener: TcpListener,
        parts: ServerParts,
        settings: &Settings,
        shutdown: Shutdown,
    ) -> Result<Self, LaunchError> {
        let addr = listener
            .local_addr()
            .map_err(|source| LaunchError::Server {
                role,
                source: ServerError::Bind {
                    addr: "listener".to_owned(),
                    source,
                },
            })?;
        let background = spawn_background(role, &db, settings, parts.engine.as_ref(), &shutdown);
        let task = tokio::spawn(parts.server.serve(listener, shutdown));
        Ok(Self {
            role,
            addr,
            db,
            side_databases: parts.side_databases,
            task,
            background,
        })
    }

    /// Waits for the server to stop, then closes its database.
    pub async fn wait(self) -> Result<(), LaunchError> {
        let role = self.role;
        let result = match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(LaunchError::Server { role, source }),
            Err(source) => Err(LaunchError::Task { role, source }),
        };
        // Background tasks stop on the same shutdown signal; if the server failed on its own,
        // stop them here instead.
        for task in self.background {
            task.abort();
            let _ = task.await;
        }
        self.db.close().await;
        for db in self.side_databases {
            db.close().await;
        }
        result
    }
}

/// All five servers in one process, the orchestrator dialling the others over gRPC.
#[derive(Debug)]
pub struct System {
    servers: Vec<RunningServer>,
    trigger: ShutdownTrigger,
    tls: bool,
    /// Dropped after every server stopped.
    islands: Islands,
}

/// The core a server runs on, dealt round-robin in this order. On two cores that puts payment
/// (two databases: its own and the processor's books) with cart, and the orchestrator with
/// inventory and fulfillment — the best of five placements measured (docs/PERFORMANCE.md).
fn island_of(role: Role, islands: usize) -> usize {
    let order = [
        Role::Orchestrator,
        Role::Payment,
        Role::Inventory,
        Role::Cart,
        Role::Fulfillment,
    ];
    let rank = order.iter().position(|r| *r == role).unwrap_or(0);
    rank % islands.max(1)
}

impl System {
    /// Opens every database, binds every listener, then starts every server. Nothing serves
    /// unless everything could be opened and bound. Each server runs, with its databases, on a
    /// runtime of its own core ([`Islands`]).
    pub async fn start(
        database_url: impl Fn(Role) -> String,
        listen_addr: impl Fn(Role) -> String,
        settings: &Settings,
        outer: Shutdown,
    ) -> Result<Self, LaunchError> {
        let tls = settings.security.server_tls.is_some();
        let islands = Islands::per_core(Role::ALL.len()).map_err(LaunchError::Runtime)?;
        let mut prepared = Vec::new();
        for role in Role::ALL {
            let (url, addr, settings) = (database_url(role), listen_addr(role), settings.clone());
            // Opened on the server's own runtime: the connections' threads take its core.
            let opened = islands.spawn(island_of(role, islands.count()), async move {
                let db = open_database(role, &url, &settings.pool).await?;
                prepare(role, &db, &settings).await?;
                let listener = bind(role, &addr).await?;
                Ok::<_, LaunchError>((db, listener))
            });
            let (db, listener) = opened
                .await
                .map_err(|source| LaunchError::Task { role, source })??;
            prepared.push((role, db, listener));
        }
        let endpoint = |role: Role| -> Result<String, LaunchError> {
            let (_, _, listener) = prepared
                .iter()
                .find(|(r, _, _)| *r == role)
                .expect("every role is prepared");
            let addr = listener
                .local_addr()
                .map_err(|source| LaunchError::Server {
                    role,
                    source: ServerError::Bind {
                        addr: listen_addr(role),
                        source,
                    },
                })?;
            Ok(server::endpoint_of(addr, tls))
        };
        let endpoints = ServiceEndpoints {
            cart: endpoint(Role::Cart)?,
            inventory: endpoint(Role::Inventory)?,
            payment: endpoint(Role::Payment)?,
            fulfillment: endpoint(Role::Fulfillment)?,
        };

        // One trigger stops every server: on the outer signal, or when one of them fails.
        let (trigger, shutdown) = Shutdown::new();
        let mut servers = Vec::new();
        for (role, db, listener) in prepared {
            let (settings, endpoints, shutdown) =
                (settings.clone(), endpoints.clone(), shutdown.clone());
            let started = islands.spawn(island_of(role, islands.count()), async move {
                let server = build_server(role, db.clone(), &settings, &endpoints).await?;
                RunningServer::spawn(role, db, listener, server, &settings, shutdown)
            });
            servers.push(
                started
                    .await
                    .map_err(|source| LaunchError::Task { role, source })??,
            );
        }
        let relay = trigger.clone();
        tokio::spawn(async move {
            outer.requested().await;
            relay.fire();
        });
        Ok(Self {
            servers,
            trigger,
            tls,
            islands,
        })
    }

    /// The address a role listens on.
    pub fn addr(&self, role: Role) -> SocketAddr {
        self.servers
            .iter()
            .find(|s| s.role == role)
            .map(|s| s.addr)
            .expect("every role runs in a system")
    }

    /// The endpoint of a role (`https://` when serving TLS).
    pub fn endpoint(&self, role: Role) -> String {
        server::endpoint_of(self.addr(role), self.tls)
    }

    /// Waits until every server stopped; the first failure stops the others too.
    pub async fn wait(self) -> Result<(), LaunchError> {
        let Self {
            servers,
            trigger,
            islands,
            ..
        } = self;
        let mut first_error = None;
        let mut waits: futures::stream::FuturesUnordered<_> =
            servers.into_iter().map(RunningServer::wait).collect();
        while let Some(result) = futures::StreamExt::next(&mut waits).await {
            if let Err(e) = result {
                trigger.fire();
                first_error.get_or_insert(e);
            }
        }
        drop(islands);
        first_error.map_or(Ok(()), Err)
    }

    /// Stops every server gracefully and waits for them.
    pub async fn stop(self) -> Result<(), LaunchError> {
        self.trigger.fire();
        self.wait().await
    }
}

/// Applies migrations to each role's database and reports what it did.
pub async fn migrate(
    targets: &[(Role, String)],
    pool: &PoolConfig,
) -> Result<Vec<(Role, String)>, LaunchError> {
    let mut done = Vec::new();
    for (role, url) in targets {
        let db = open_database(*role, url, pool).await?;
        done.push((*role, db.describe()));
        if *role == Role::Payment {
            let books = open_books(&db, pool)
                .await
                .map_err(|source| LaunchError::Database {
                    role: *role,
                    source,
                })?;
            if books.sqlite_file().is_some() {
                done.push((*role, books.describe()));
            }
            books.close().await;
        }
        db.close().await;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cores_split_payment_and_cart_from_the_orchestrator_and_the_rest() {
        let on = |role| island_of(role, 2);
        assert_eq!(on(Role::Payment), on(Role::Cart));
        assert_eq!(on(Role::Orchestrator), on(Role::Inventory));
        assert_eq!(on(Role::Orchestrator), on(Role::Fulfillment));
        assert_ne!(on(Role::Orchestrator), on(Role::Payment));
        // One core: everything on it; five or more: a core each.
        assert!(Role::ALL.iter().all(|&r| island_of(r, 1) == 0));
        let mut own: Vec<usize> = Role::ALL.iter().map(|&r| island_of(r, 5)).collect();
        own.sort_unstable();
        assert_eq!(own, vec![0, 1, 2, 3, 4]);
    }
}
