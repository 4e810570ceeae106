//! Database backends: SQLite (the embedded default) and PostgreSQL, picked by the URL scheme.
//!
//! Storage modules write each statement once and run it on either backend through
//! [`on_backend!`](crate::on_backend): the SQL is portable (`$1` placeholders, `ON CONFLICT`,
//! `RETURNING`, epoch-millisecond timestamps, integer money), and the macro compiles the same
//! body once per backend. Where the backends truly differ, a storage module matches on [`Tx`]
//! itself.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{PgConnection, Postgres, Sqlite};

mod last_write;
mod lease;
mod sqlite_opening;
mod sqlite_writer;
mod statements;

pub(crate) use last_write::LastWrite;
pub use last_write::{Value, shift_parameters};
pub use lease::{Lease, Leases};
pub use sqlite_opening::Opening;
pub use sqlite_writer::{WriteGate, WriteTx};
pub use statements::{Answer, Statements};

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file (`sqlite:` URLs).
    Sqlite,
    /// PostgreSQL server (`postgres:` or `postgresql:` URLs).
    Postgres,
}

impl Backend {
    /// Picks the backend from a database URL's scheme.
    pub fn from_url(url: &str) -> Result<Self, DbError> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            _ => Err(DbError::UnsupportedUrl {
                url: redact_url(url),
            }),
        }
    }
}

/// Errors of connecting to, migrating and querying a database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names no backend this system supports.
    #[error("unsupported database URL `{url}`: expected `sqlite:` or `postgres:`")]
    UnsupportedUrl {
        /// The URL with any password removed.
        url: String,
    },
    /// The database could not be created, opened or reached.
    #[error("cannot open database `{url}`")]
    Connect {
        /// The URL with any password removed.
        url: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("cannot migrate database `{url}`")]
    Migrate {
        /// The URL with any password removed.
        url: String,
        /// What the migrator said.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error(transparent)]
    Query(#[from] sqlx::Error),
}

impl DbError {
    /// True for failures worth retrying: lost connections, pool exhaustion, lock contention,
    /// serialization failures and deadlocks.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Query(e) => is_transient(e),
            Self::Connect { source, .. } => is_transient(source),
            Self::UnsupportedUrl { .. } | Self::Migrate { .. } => false,
        }
    }

    /// True when a unique or primary-key constraint refused the statement.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Query(e) if is_unique_violation(e))
    }
}

/// True when a unique or primary-key constraint refused the statement, on either backend.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// True for failures worth retrying, on either backend.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(d) => matches!(
            d.code().as_deref(),
            // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
            Some("5" | "6" | "261" | "262" | "517" | "773")
            // Postgres: serialization_failure, deadlock_detected, lock_not_available,
            // too_many_connections, admin shutdown / crash shutdown / cannot connect now.
            | Some("40001" | "40P01" | "55P03" | "53300" | "57P01" | "57P02" | "57P03")
        ),
        _ => false,
    }
}

/// Removes the password (from the user info and from a `password=` parameter) so a URL can be
/// printed.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{user}:***@{host}")
        }
        _ => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Pages an SQLite WAL grows to before a commit checkpoints it (SQLite's default is 1000).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// Pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most connections the pool opens (SQLite: readers; writers queue on the write lock).
    pub max_connections: u32,
    /// How long a caller waits for a free connection before the request fails as transient.
    pub acquire_timeout: Duration,
    /// How long SQLite waits on a locked database before answering SQLITE_BUSY.
    pub sqlite_busy_timeout: Duration,
}

/// The connections a pool opens by default on a machine with `cores` cores: twice the cores
/// plus two, at least 4 and at most 16. More connections than the cores can serve only make
/// transactions wait for each other's locks and for the CPU while holding them: on two cores,
/// 6 per server did 12–18 % more checkouts end to end than 16, on SQLite and on Postgres
/// (docs/PERFORMANCE.md). 16, the old fixed size, keeps five servers' pools inside a default
/// Postgres's 100 connections.
pub fn default_pool_size(cores: usize) -> u32 {
    let cores = u32::try_from(cores).unwrap_or(u32::MAX);
    cores.saturating_mul(2).saturating_add(2).clamp(4, 16)
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            max_connections: default_pool_size(cores),
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(10),
        }
    }
}

/// The per-backend migration sets of one service, embedded at build time with
/// `sqlx::migrate!("../../migrations/<backend>/<service>")`.
#[derive(Debug)]
pub struct Migrations {
    /// Migrations under `migrations/sqlite/<service>`.
    pub sqlite: Migrator,
    /// Migrations under `migrations/postgres/<service>`.
    pub postgres: Migrator,
}

/// The pool settings both backends share.
fn pool_options<DB: sqlx::Database>(config: &PoolConfig) -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(config.max_connections)
        // No ping round trip per checkout either: a connection is handed out by [`Leases`]
        // only after a statement of its last holder was answered on it, and one left
        // unfinished is closed (see `lease`). An SQLite connection does not go stale; a
        // Postgres one the server dropped while idle fails its first statement with an I/O
        // error, which callers retry as transient.
        .test_before_acquire(false)
        .acquire_timeout(config.acquire_timeout)
}

/// A connection pool on one of the two backends, with its connections kept between
/// transactions ([`Leases`]).
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite pool of readers (WAL, busy timeout, foreign keys on), the gate its writers queue
    /// at, and its readers between reads.
    Sqlite(SqlitePool, WriteGate, Leases<Sqlite>),
    /// PostgreSQL pool, and its connections between transactions.
    Postgres(PgPool, Leases<Postgres>),
}

impl Db {
    /// Opens the database the URL names, creating it when it does not exist yet.
    pub async fn connect(url: &str, config: &PoolConfig) -> Result<Self, DbError> {
        let connect_err = |source| DbError::Connect {
            url: redact_url(url),
            source,
        };
        match Backend::from_url(url)? {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(connect_err)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL, SQLite's own default: every commit is on disk before it is
                    // acknowledged, so a power loss loses no checkout (NORMAL in WAL mode only
                    // survives process crashes).
                    .synchronous(SqliteSynchronous::Full)
                    // Reads map the file instead of copying pages in: each commit by another
                    // connection of the pool empties a connection's page cache, and refilling
                    // it with read() calls cost more than any statement. Writes still go
                    // through the WAL, so durability is unchanged.
                    .pragma("mmap_size", "268435456")
                    // The savepoints of a shared commit nest until its COMMIT, and their undo
                    // journal grows with the batch: in memory it costs no temporary file and no
                    // write() per page (it is only ever read to roll a writer back).
                    .pragma("temp_store", "memory")
                    // A checkpoint copies the newest version of each page in the WAL to the
                    // database file. The journal rewrites the same saga pages at every step, so
                    // a longer WAL (about 40 MB instead of 4) copies each such page once for
                    // many commits; every commit still syncs the WAL first.
                    .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
                    .busy_timeout(config.sqlite_busy_timeout)
                    .foreign_keys(true);
                if let Some(parent) = std::path::Path::new(options.get_filename()).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|e| connect_err(sqlx::Error::Io(e)))?;
                }
                let pool = pool_options::<Sqlite>(config)
                    .connect_with(options)
                    .await
                    .map_err(connect_err)?;
                let leases = Leases::new(config.max_connections, config.acquire_timeout);
                Ok(Self::Sqlite(pool, WriteGate::default(), leases))
            }
            Backend::Postgres => {
                let options = PgConnectOptions::from_str(url).map_err(connect_err)?;
                if !Postgres::database_exists(url).await.map_err(connect_err)? {
                    match Postgres::create_database(url).await {
                        Ok(()) => {}
                        // Another process created it between the check and the create.
                        Err(e) if is_unique_violation(&e) => {}
                        Err(e) => return Err(connect_err(e)),
                    }
                }
                let pool = pool_options::<Postgres>(config)
                    .connect_with(options)
                    .await
                    .map_err(connect_err)?;
                let leases = Leases::new(config.max_connections, config.acquire_timeout);
                Ok(Self::Postgres(pool, leases))
            }
        }
    }

    /// Which backend this pool talks to.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(..) => Backend::Sqlite,
            Self::Postgres(..) => Backend::Postgres,
        }
    }

    /// Applies the pending migrations for this backend; already applied ones are skipped.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), DbError> {
        let result = match self {
            Self::Sqlite(pool, ..) => migrations.sqlite.run(pool).await,
            Self::Postgres(pool, _) => migrations.postgres.run(pool).await,
        };
        result.map_err(|source| DbError::Migrate {
            url: self.describe(),
            source,
        })
    }

    /// Starts a write transaction. On SQLite it queues at the [`WriteGate`] for the writer
    /// connection and then takes the write lock up front (`BEGIN IMMEDIATE`), so two writers
    /// never both read and then fail to upgrade their lock.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self {
            // The writer connection is not the pool's: a closed database refuses writes here,
            // as the pool refuses reads.
            Self::Sqlite(pool, ..) if pool.is_closed() => {
                return Err(sqlx::Error::PoolClosed.into());
            }
            Self::Sqlite(pool, gate, _) => {
                let options = pool.connect_options();
                Tx::Sqlite(SqliteTx::Write(gate.begin(options).await?))
            }
            Self::Postgres(pool, leases) => {
                let mut lease = leases.take(pool).await?;
                lease.run("BEGIN").await?;
                Tx::Postgres(PgTx::Transaction(lease))
            }
        })
    }

    /// Starts a read-only transaction (a consistent snapshot; on SQLite a deferred `BEGIN`).
    pub async fn begin_read(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Self::Sqlite(pool, _, leases) => Tx::Sqlite(SqliteTx::Read(
                leases.take(pool).await?,
                Opening::Pending("BEGIN"),
            )),
            Self::Postgres(pool, leases) => {
                let mut lease = leases.take(pool).await?;
                lease
                    .run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                Tx::Postgres(PgTx::Transaction(lease))
            }
        })
    }

    /// A pooled connection outside any transaction, for a read that is one statement. A
    /// statement is its own consistent snapshot on both backends, so it needs no `BEGIN` and
    /// no `ROLLBACK` (two round trips on Postgres, two hand-offs to the connection's thread on
    /// SQLite). Statements run one after another on it do not share a snapshot.
    pub async fn single_read(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Self::Sqlite(pool, _, leases) => Tx::Sqlite(SqliteTx::Single(leases.take(pool).await?)),
            Self::Postgres(pool, leases) => {
                let conn = leases.take(pool).await?;
                POSTGRES_SINGLE_READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Tx::Postgres(PgTx::Single(conn))
            }
        })
    }

    /// A write that Postgres runs as one statement committing by itself: a pooled connection
    /// outside any transaction, so no `BEGIN` and no `COMMIT` round trip (a statement is atomic
    /// on its own). SQLite writes take their turn at the [`WriteGate`] whatever their size, so
    /// there it is a write transaction as [`Db::begin`] gives, in which a caller whose SQLite
    /// form takes several statements keeps them atomic. End it with [`Tx::commit`].
    pub async fn single_write(&self) -> Result<Tx, DbError> {
        match self {
            Self::Sqlite(..) => self.begin().await,
            Self::Postgres(pool, leases) => {
                Ok(Tx::Postgres(PgTx::SingleWrite(leases.take(pool).await?)))
            }
        }
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool, gate, leases) => {
                gate.close().await;
                leases.close();
                pool.close().await;
            }
            Self::Postgres(pool, leases) => {
                leases.close();
                pool.close().await;
            }
        }
    }

    /// The file of an SQLite database (`None` on Postgres and for in-memory databases).
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match self {
            Self::Sqlite(pool, ..) => {
                let options = pool.connect_options();
                let file = options.get_filename();
                let in_memory = file.as_os_str().is_empty() || file.as_os_str() == ":memory:";
                (!in_memory).then(|| file.to_path_buf())
            }
            Self::Postgres(..) => None,
        }
    }

    /// A printable name of the database (file name or redacted connection target).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(pool, ..) => format!(
                "sqlite://{}",
                pool.connect_options().get_filename().display()
            ),
            Self::Postgres(pool, _) => {
                let o = pool.connect_options();
                format!(
                    "postgres://{}:{}/{}",
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or_default()
                )
            }
        }
    }
}

/// An open transaction on one of the two backends, or a connection for one read statement
/// ([`Db::single_read`]).
#[derive(Debug)]
pub enum Tx {
    /// SQLite transaction.
    Sqlite(SqliteTx),
    /// PostgreSQL transaction.
    Postgres(PgTx),
}

/// A Postgres transaction, or a connection for one statement; either way it derefs to the
/// connection to run statements on.
#[derive(Debug)]
pub enum PgTx {
    /// `BEGIN` on a pooled connection.
    Transaction(Lease<Postgres>),
    /// No transaction: one read statement ([`Db::single_read`]).
    Single(Lease<Postgres>),
    /// No transaction: one write statement that commits by itself ([`Db::single_write`]).
    SingleWrite(Lease<Postgres>),
}

impl std::ops::Deref for PgTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Self::Transaction(lease) | Self::Single(lease) | Self::SingleWrite(lease) => {
                lease.conn_ref()
            }
        }
    }
}

impl std::ops::DerefMut for PgTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Self::Transaction(lease) | Self::Single(lease) | Self::SingleWrite(lease) => {
                lease.conn()
            }
        }
    }
}

/// An SQLite transaction: a read on a pooled connection, or a write on the writer connection
/// (holding the turn at the gate). It runs statements as a connection does (`&mut *tx` is an
/// executor), opening the transaction with the first one.
#[derive(Debug)]
pub enum SqliteTx {
    /// Deferred `BEGIN` on a pooled connection.
    Read(Lease<Sqlite>, Opening),
    /// `BEGIN IMMEDIATE` on the writer connection.
    Write(WriteTx),
    /// No transaction: one read statement on a pooled connection ([`Db::single_read`]).
    Single(Lease<Sqlite>),
}

impl Tx {
    /// Makes the transaction's changes durable.
    pub async fn commit(mut self) -> Result<(), DbError> {
        // A write still held by `write_last` is one of the changes.
        self.run_last_write().await?;
        match self {
            // Read transactions commit nothing durable.
            Self::Sqlite(SqliteTx::Read(mut lease, opening)) => match opening {
                // Nothing was begun and nothing was read.
                Opening::Pending(_) => lease.in_step(),
                Opening::InDoubt => return Err(sqlite_opening::not_open().into()),
                Opening::Ran => {
                    lease.run("COMMIT").await?;
                    lease.in_step();
                }
            },
            // Counted by the write gate, where one COMMIT may be shared by several writers.
            Self::Sqlite(SqliteTx::Write(tx)) => tx.commit().await?,
            Self::Postgres(PgTx::Transaction(mut lease)) => {
                lease.run("COMMIT").await?;
                lease.in_step();
                count_commit();
            }
            // Nothing was begun; the read was answered, so the connection is kept.
            Self::Sqlite(SqliteTx::Single(mut lease)) => lease.in_step(),
            Self::Postgres(PgTx::Single(mut lease)) => lease.in_step(),
            // The statement committed when it was answered.
            Self::Postgres(PgTx::SingleWrite(mut lease)) => {
                lease.in_step();
                count_commit();
            }
        }
        Ok(())
    }

    /// Discards the transaction's changes (on Postgres a [`Db::single_write`]'s statement has
    /// committed once it was answered; this only hands the connection back).
    pub async fn rollback(self) -> Result<(), DbError> {
        match self {
            Self::Sqlite(SqliteTx::Read(mut lease, opening)) => match opening {
                Opening::Pending(_) => lease.in_step(),
                // Dropping the lease unfinished closes the connection, which rolls back.
                Opening::InDoubt => {}
                Opening::Ran => {
                    lease.run("ROLLBACK").await?;
                    lease.in_step();
                }
            },
            Self::Sqlite(SqliteTx::Write(tx)) => tx.rollback().await?,
            Self::Postgres(PgTx::Transaction(mut lease)) => {
                lease.run("ROLLBACK").await?;
                lease.in_step();
            }
            Self::Sqlite(SqliteTx::Single(mut lease)) => lease.in_step(),
            // A single write's statement, once answered, has committed: there is nothing left to
            // discard, and the connection is in step.
            Self::Postgres(PgTx::Single(mut lease) | PgTx::SingleWrite(mut lease)) => {
                lease.in_step();
            }
        }
        Ok(())
    }

    /// Which backend this transaction runs on.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(..) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }
}

/// Runs the same body on whichever backend a [`Tx`] holds, with `$conn` bound to the
/// backend's `&mut PgConnection` or `&mut SqliteTx`. Use `&mut *$conn` as the executor of each
/// statement.
///
/// ```ignore
/// let n: i64 = on_backend!(tx, conn => {
///     sqlx::query_scalar("SELECT count(*) FROM carts").fetch_one(&mut *conn).await?
/// });
/// ```
#[macro_export]
macro_rules! on_backend {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite(tx) => {
                let $conn: &mut $crate::db::SqliteTx = tx;
                $body
            }
            $crate::db::Tx::Postgres(tx) => {
                let $conn: &mut ::sqlx::PgConnection = &mut **tx;
                $body
            }
        }
    };
}

/// Drops a Postgres database (and its connections), connecting through `server_url`.
pub async fn drop_postgres_database(server_url: &str, name: &str) -> Result<(), DbError> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    let sql = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "")
    );
    sqlx::query(&sql).execute(&mut conn).await?;
    Ok(())
}

static WRITE_COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Durable commits this process made (for benchmarks: commits per operation). On SQLite one
/// commit may carry several writers' transactions (see [`WriteGate`]).
pub fn commits_so_far() -> u64 {
    WRITE_COMMITS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts one durable commit.
static POSTGRES_SINGLE_READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Single-statement reads ([`Db::single_read`]) this process made on Postgres, which counts each
/// as a committed transaction in `pg_stat_database.xact_commit` although it writes nothing (a
/// statement with no transaction id of its own has no commit record to flush).
pub fn postgres_single_reads_so_far() -> u64 {
    POSTGRES_SINGLE_READS.load(std::sync::atomic::Ordering::Relaxed)
}

fn count_commit() {
    WRITE_COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Transactions the Postgres server committed in this pool's database (`pg_stat_database`);
/// `None` on SQLite.
pub async fn server_commits(db: &Db) -> Result<Option<i64>, DbError> {
    match db {
        Db::Sqlite(..) => Ok(None),
        Db::Postgres(..) => {
            // Through a lease like every other statement: the pool's connections may all be
            // kept between transactions.
            let mut tx = db.single_read().await?;
            let commits = on_backend!(&mut tx, conn => sqlx::query_scalar(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            )
            .fetch_optional(&mut *conn)
            .await?);
            tx.commit().await?;
            Ok(commits)
        }
    }
}

/// The VALUES list of a multi-row statement: `rows` tuples of `cols` placeholders, numbered
/// (`$1`) on Postgres and anonymous (`?`) on SQLite, where sqlx resolves each numbered one by a
/// linear search and so makes large statements quadratic. Bind the values row by row.
pub fn values_list(backend: Backend, rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            match backend {
                Backend::Sqlite => out.push('?'),
                Backend::Postgres => {
                    out.push('$');
                    out.push_str(&(r * cols + c + 1).to_string());
                }
            }
        }
        out.push(')');
    }
    out
}

/// A stored epoch-millisecond time as a protobuf `Timestamp`.
pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds since the Unix epoch: the one timestamp representation in every table.
pub fn now_millis() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_holds_twice_the_cores_plus_two_between_4_and_16_connections() {
        assert_eq!(default_pool_size(0), 4);
        assert_eq!(default_pool_size(1), 4);
        assert_eq!(default_pool_size(2), 6);
        assert_eq!(default_pool_size(4), 10);
        assert_eq!(default_pool_size(7), 16);
        assert_eq!(default_pool_size(64), 16);
        assert_eq!(default_pool_size(usize::MAX), 16);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(
            PoolConfig::default().max_connections,
            default_pool_size(cores)
        );
    }

    #[test]
    fn backend_follows_the_scheme() {
        assert_eq!(
            Backend::from_url("sqlite://data/cart.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("sqlite::memory:").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("postgres://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert!(matches!(
            Backend::from_url("mysql://u@h/db"),
            Err(DbError::UnsupportedUrl { .. })
        ));
        assert!(Backend::from_url("nonsense").is_err());
    }

    #[tokio::test]
    async fn sqlite_connections_map_the_file_keep_the_wal_sync_every_commit_and_journal_savepoints_in_memory()
     {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/x.db", dir.path().display());
        let db = Db::connect(&url, &PoolConfig::default()).await.unwrap();
        // Both kinds of connection: a pooled reader and the writer.
        for mut tx in [db.begin_read().await.unwrap(), db.begin().await.unwrap()] {
            let (mmap, journal, synchronous, temp_store, checkpoint): (i64, String, i64, i64, i64) = on_backend!(&mut tx, conn => {
                let mmap = sqlx::query_scalar("PRAGMA mmap_size").fetch_one(&mut *conn).await.unwrap();
                let journal = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *conn).await.unwrap();
                let synchronous = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
                let temp_store = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&mut *conn).await.unwrap();
                let checkpoint = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&mut *conn).await.unwrap();
                (mmap, journal, synchronous, temp_store, checkpoint)
            });
            tx.rollback().await.unwrap();
            assert_eq!(mmap, 268_435_456);
            assert_eq!(journal, "wal");
            // FULL: the WAL is synced at every commit, so a power loss loses no commit.
            assert_eq!(synchronous, 2);
            // MEMORY: savepoint journals never go to temporary files.
            assert_eq!(temp_store, 2);
            // A hot page is copied to the database file once for many commits.
            assert_eq!(checkpoint, i64::from(WAL_AUTOCHECKPOINT_PAGES));
        }
        db.close().await;
    }

    /// The bundled SQLite is built with the options of `.cargo/config.toml`: no global
    /// allocation statistics and per-connection page caches, so that no two connections'
    /// threads meet at a process-wide mutex on every allocation and page fetch.
    #[tokio::test]
    async fn sqlite_is_built_without_allocation_statistics_or_a_shared_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/x.db", dir.path().display());
        let db = Db::connect(&url, &PoolConfig::default()).await.unwrap();
        let mut tx = db.single_read().await.unwrap();
        let options: Vec<String> = on_backend!(&mut tx, conn => {
            sqlx::query_scalar("PRAGMA compile_options").fetch_all(&mut *conn).await.unwrap()
        });
        tx.rollback().await.unwrap();
        db.close().await;
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        // The options that keep commits durable and the schema checked are still there.
        assert!(
            options.iter().any(|o| o == "DEFAULT_FOREIGN_KEYS"),
            "{options:?}"
        );
        assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
    }

    /// Polls `fut` until it is ready or has waited `waits` times, then drops it: a caller
    /// whose deadline fires at each await point in turn.
    async fn cancelled_after<F: std::future::Future>(fut: F, waits: usize) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut seen = 0;
        std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => {
                seen += 1;
                if seen >= waits {
                    std::task::Poll::Ready(None)
                } else {
                    std::task::Poll::Pending
                }
            }
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_cancelled_at_any_await_leaves_the_database_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/x.db", dir.path().display());
        let config = PoolConfig {
            max_connections: 4,
            // A leaked write transaction makes the next writer fail fast instead of hanging.
            sqlite_busy_timeout: Duration::from_millis(200),
            ..PoolConfig::default()
        };
        let db = Db::connect(&url, &config).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        on_backend!(&mut tx, conn => {
            sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut *conn).await.unwrap();
        });
        tx.commit().await.unwrap();
        for round in 0..200 {
            let waits = round % 10 + 1;
            // Cancelled while beginning, writing or committing.
            let write = async {
                let mut tx = db.begin().await?;
                on_backend!(&mut tx, conn => {
                    sqlx::query("INSERT INTO t (x) VALUES (1)").execute(&mut *conn).await?;
                });
                tx.commit().await
            };
            drop(cancelled_after(write, waits).await);
            let mut tx = db
                .begin()
                .await
                .unwrap_or_else(|e| panic!("round {round}: write lock left taken: {e}"));
            on_backend!(&mut tx, conn => {
                sqlx::query("INSERT INTO t (x) VALUES (2)").execute(&mut *conn).await.unwrap();
            });
            tx.commit().await.unwrap();
        }
        db.close().await;
    }

    async fn count(tx: &mut Tx) -> i64 {
        on_backend!(tx, conn => {
            sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *conn).await.unwrap()
        })
    }

    #[tokio::test]
    async fn a_write_dropped_unfinished_is_rolled_back_before_the_next_writer_starts() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/x.db", dir.path().display());
        let db = Db::connect(&url, &PoolConfig::default()).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        on_backend!(&mut tx, conn => {
            sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut *conn).await.unwrap();
        });
        tx.commit().await.unwrap();
        for _ in 0..3 {
            let mut tx = db.begin().await.unwrap();
            on_backend!(&mut tx, conn => {
                sqlx::query("INSERT INTO t (x) VALUES (1)").execute(&mut *conn).await.unwrap();
            });
            // Neither committed nor rolled back: a handler that returned early with `?`.
            drop(tx);
            let mut next = db.begin().await.unwrap();
            assert_eq!(count(&mut next).await, 0);
            next.rollback().await.unwrap();
        }
        // A failed statement leaves the transaction usable for the caller to roll back.
        let mut tx = db.begin().await.unwrap();
        let failed = on_backend!(&mut tx, conn => {
            sqlx::query("INSERT INTO nowhere VALUES (1)").execute(&mut *conn).await.is_err()
        });
        assert!(failed);
        tx.rollback().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        on_backend!(&mut tx, conn => {
            sqlx::query("INSERT INTO t (x) VALUES (2)").execute(&mut *conn).await.unwrap();
        });
        tx.commit().await.unwrap();
        let mut read = db.begin_read().await.unwrap();
        assert_eq!(count(&mut read).await, 1);
        read.rollback().await.unwrap();
        db.close().await;
    }

    #[tokio::test]
    async fn a_single_read_sees_each_statement_afresh_where_a_read_transaction_keeps_its_snapshot()
    {
        let database = crate::testing::TestDatabase::new("single_read");
        let db = Db::connect(database.url(), &PoolConfig::default())
            .await
            .unwrap();
        write(&db, "CREATE TABLE t (x INTEGER PRIMARY KEY)").await;
        let mut snapshot = db.begin_read().await.unwrap();
        let mut single = db.single_read().await.unwrap();
        assert_eq!(count(&mut snapshot).await, 0);
        assert_eq!(count(&mut single).await, 0);
        write(&db, "INSERT INTO t (x) VALUES (1)").await;
        assert_eq!(
            count(&mut snapshot).await,
            0,
            "a read transaction keeps its snapshot"
        );
        assert_eq!(
            count(&mut single).await,
            1,
            "nothing holds a single read's snapshot"
        );
        snapshot.rollback().await.unwrap();
        // Ending a single read gives the connection back; there is nothing to commit.
        single.commit().await.unwrap();
        let mut single = db.single_read().await.unwrap();
        assert_eq!(count(&mut single).await, 1);
        single.rollback().await.unwrap();
        db.close().await;
    }

    /// Runs one statement in a write transaction of its own.
    async fn write(db: &Db, sql: &str) {
        let mut tx = db.begin().await.unwrap();
        on_backend!(&mut tx, conn => {
            sqlx::query(sql).execute(&mut *conn).await.unwrap();
        });
        tx.commit().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_cancelled_anywhere_lose_no_acknowledged_row() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/x.db", dir.path().display());
        let config = PoolConfig {
            // A leaked write transaction makes a writer fail fast instead of hanging.
            sqlite_busy_timeout: Duration::from_millis(200),
            ..PoolConfig::default()
        };
        let db = Db::connect(&url, &config).await.unwrap();
        write(&db, "CREATE TABLE t (x INTEGER PRIMARY KEY)").await;
        let tasks: Vec<_> = (0..8_i64)
            .map(|task| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    for round in 0..60_i64 {
                        let x = task * 1000 + round;
                        let write = async {
                            let mut tx = db.begin().await?;
                            on_backend!(&mut tx, conn => {
                                sqlx::query("INSERT INTO t (x) VALUES ($1)").bind(x).execute(&mut *conn).await?;
                            });
                            tx.commit().await
                        };
                        // Every third write runs to the end; the others are cancelled at one of
                        // their first awaits, wherever that is.
                        let waits = if round % 3 == 0 {
                            usize::MAX
                        } else {
                            usize::try_from(round % 12).unwrap() + 1
                        };
                        if let Some(Ok(())) = cancelled_after(write, waits).await {
                            acknowledged.push(x);
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        let mut acknowledged = std::collections::BTreeSet::new();
        for t in tasks {
            acknowledged.extend(t.await.unwrap());
        }
        assert!(
            acknowledged.len() >= 8 * 20,
            "the uncancelled writes all commit"
        );
        // Nothing left locked or pending: a new write goes through, and every acknowledged row is
        // stored.
        write(&db, "INSERT INTO t (x) VALUES (-1)").await;
        let mut read = db.begin_read().await.unwrap();
        let rows: std::collections::BTreeSet<i64> = on_backend!(&mut read, conn => {
            sqlx::query_scalar("SELECT x FROM t").fetch_all(&mut *conn).await.unwrap()
        })
        .into_iter()
        .collect();
        read.rollback().await.unwrap();
        assert!(
            acknowledged.is_subset(&rows),
            "acknowledged rows missing: {:?}",
            acknowledged.difference(&rows).collect::<Vec<_>>()
        );
        db.close().await;
    }

    #[tokio::test]
    async fn a_closed_sqlite_database_refuses_writes_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/x.db", dir.path().display());
        let db = Db::connect(&url, &PoolConfig::default()).await.unwrap();
        db.begin().await.unwrap().commit().await.unwrap();
        db.close().await;
        assert!(db.begin().await.is_err());
        assert!(db.begin_read().await.is_err());
    }

    #[test]
    fn values_lists_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        assert_eq!(
            values_list(Backend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(values_list(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }

    #[test]
    fn passwords_never_print() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert!(!redact_url("postgres://u:p%40ss@h").contains("p%40ss"));
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=pw"),
            "postgres://h/db?user=u&password=***"
        );
    }
}
