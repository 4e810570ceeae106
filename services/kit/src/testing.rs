//! Fresh databases for tests, on the backend the environment picks.
//!
//! `CHECKOUT_TEST_BACKEND` is `sqlite` (default) or `postgres`; with `postgres`, databases are
//! created on the server `CHECKOUT_TEST_POSTGRES_URL` names (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped afterwards. There is no silent
//! fallback: a Postgres run against an unreachable server fails.

use crate::db::{Backend, Db, DbError, Migrations, PoolConfig};

/// The environment variable choosing the test backend.
pub const BACKEND_ENV: &str = "CHECKOUT_TEST_BACKEND";
/// The environment variable naming the Postgres server for tests.
pub const POSTGRES_URL_ENV: &str = "CHECKOUT_TEST_POSTGRES_URL";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The backend this test run uses.
pub fn backend() -> Backend {
    match std::env::var(BACKEND_ENV).as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("{BACKEND_ENV}={other}: expected `sqlite` or `postgres`"),
    }
}

/// The Postgres server tests create their databases on.
pub fn postgres_server_url() -> String {
    std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// A database that exists for one test and is removed when dropped.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A new, empty database on the run's backend, named after `label`.
    pub fn new(label: &str) -> Self {
        Self::on(backend(), label)
    }

    /// A new, empty database on the given backend.
    pub fn on(backend: Backend, label: &str) -> Self {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                let url = format!("sqlite://{}/{label}.db", dir.path().display());
                Self {
                    url,
                    postgres: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let server = postgres_server_url();
                let name = format!("t_{label}_{}", &unique[..16]);
                let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
                Self {
                    url: format!("{base}/{name}"),
                    postgres: Some((server, name)),
                    _dir: None,
                }
            }
        }
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new database on the run's backend with an `idempotency_keys` table (the cart's
    /// migrations) and one scratch table made by `create`, for the kit's own tests.
    #[cfg(test)]
    pub(crate) async fn with_scratch_table(label: &str, create: &str) -> (Self, Db) {
        let database = Self::new(label);
        let db = database
            .migrated(&Migrations {
                sqlite: sqlx::migrate!("../../migrations/sqlite/cart"),
                postgres: sqlx::migrate!("../../migrations/postgres/cart"),
            })
            .await
            .expect("migrated");
        let mut tx = db.begin().await.unwrap();
        crate::on_backend!(&mut tx, conn => {
            sqlx::query(create).execute(&mut *conn).await.unwrap();
        });
        tx.commit().await.unwrap();
        (database, db)
    }

    /// Opens (creating) the database and applies the migrations.
    pub async fn migrated(&self, migrations: &Migrations) -> Result<Db, DbError> {
        let db = Db::connect(&self.url, &PoolConfig::default()).await?;
        db.migrate(migrations).await?;
        Ok(db)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside async context guarantees; a thread with its own runtime can block.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for dropping a test database");
            runtime.block_on(crate::db::drop_postgres_database(&server, &name))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop test database: {e}");
        }
    }
}

/// The generic plan a Postgres connection caches for `sql` after its first runs, made on the
/// tables as they are now (`plan_cache_mode = force_generic_plan`, then `EXPLAIN EXECUTE` with
/// the SQL literals `args`), one plan node a line. On a young table this is where a sequential
/// scan the planner would keep as the table grows shows up.
pub async fn generic_plan(db: &Db, sql: &str, args: &[&str]) -> Result<String, DbError> {
    let crate::db::Tx::Postgres(mut conn) = db.single_read().await? else {
        panic!("generic plans are a Postgres matter");
    };
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(&format!("PREPARE planned AS {sql}"))
        .execute(&mut *conn)
        .await?;
    let plan: Vec<String> =
        sqlx::query_scalar(&format!("EXPLAIN EXECUTE planned({})", args.join(", ")))
            .fetch_all(&mut *conn)
            .await?;
    // The session settings and the prepared statement leave with the connection.
    drop(conn);
    Ok(plan.join("\n"))
}

/// Every row of every table of `db` as text, tables and rows in a fixed order: two snapshots are
/// equal exactly when no stored state changed (tests of requests that must change nothing).
pub async fn snapshot(db: &Db) -> Result<String, DbError> {
    let mut tx = db.begin_read().await?;
    let mut out = String::new();
    match &mut tx {
        crate::db::Tx::Sqlite(inner) => {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY name",
            )
            .fetch_all(&mut *inner)
            .await?;
            for table in tables {
                let columns: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                        .bind(&table)
                        .fetch_all(&mut *inner)
                        .await?;
                let row = columns
                    .iter()
                    .map(|c| format!("quote(\"{c}\")"))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                let rows: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT {row} FROM \"{table}\" ORDER BY 1"))
                        .fetch_all(&mut *inner)
                        .await?;
                push_table(&mut out, &table, rows);
            }
        }
        crate::db::Tx::Postgres(inner) => {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
                 AND table_name <> '_sqlx_migrations' ORDER BY 1",
            )
            .fetch_all(&mut **inner)
            .await?;
            for table in tables {
                let rows: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT t::text FROM \"{table}\" t ORDER BY 1"))
                        .fetch_all(&mut **inner)
                        .await?;
                push_table(&mut out, &table, rows);
            }
        }
    }
    tx.rollback().await?;
    Ok(out)
}

fn push_table(out: &mut String, table: &str, rows: Vec<String>) {
    use std::fmt::Write;
    let _ = writeln!(out, "== {table} ({} rows)", rows.len());
    for row in rows {
        let _ = writeln!(out, "{table}: {row}");
    }
}

/// A TCP proxy in front of a test database's Postgres server that counts the client's round
/// trips: each `Sync` (which ends an extended-protocol exchange; sqlx's ping is a bare one) and
/// each simple `Query` makes the client wait for the server's answer.
#[derive(Debug)]
pub struct RoundTrips {
    url: String,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RoundTrips {
    /// Starts the proxy for `database` (a Postgres one) on an ephemeral port.
    pub async fn count(database: &TestDatabase) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        use tokio::net::{TcpListener, TcpStream};

        // postgres://user@host:port/name: the proxy stands in for host:port.
        let (scheme, rest) = database.url().split_once("://").expect("a URL");
        let (authority, name) = rest.split_once('/').expect("a database name");
        let (user, server) = authority.rsplit_once('@').expect("a user");
        let server = if server.contains(':') {
            server.to_owned()
        } else {
            format!("{server}:5432")
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("bound").port();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(&server).await else {
                    return;
                };
                let (from_client, mut to_client) = client.into_split();
                let (mut from_server, to_server) = upstream.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                tokio::spawn(count_messages(from_client, to_server, counter.clone()));
            }
        });
        // In the clear, so the proxy can read the messages.
        let url = format!("{scheme}://{user}@127.0.0.1:{port}/{name}?sslmode=disable");
        Self { url, count }
    }

    /// The URL that connects through the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Round trips so far, read after a pause that lets anything a client sent after its last
    /// answer (a ping on release) reach the proxy.
    pub async fn settled(&self) -> usize {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Forwards the client's bytes, counting its `Sync` and `Query` messages.
async fn count_messages(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    round_trips: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut pending: Vec<u8> = Vec::new();
    let mut started = false;
    let mut chunk = [0_u8; 8192];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        loop {
            // The startup message has no type byte; every later one has.
            let at = usize::from(started);
            if pending.len() < at + 4 {
                break;
            }
            let len = u32::from_be_bytes([
                pending[at],
                pending[at + 1],
                pending[at + 2],
                pending[at + 3],
            ]) as usize;
            if pending.len() < at + len {
                break;
            }
            if started && matches!(pending[0], b'S' | b'Q') {
                round_trips.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            pending.drain(..at + len);
            started = true;
        }
        // Counted before it is forwarded, so a count read after an answer includes it.
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

/// Every statement sqlx ran in this process since the first call, in order, as its statement
/// log records it (the first call installs the process-wide subscriber the log needs). On
/// SQLite an entry is one hand-off to a connection's thread, where the log is written, and may
/// hold several statements. Call it once before the statements to be seen; other tests of the
/// same binary log theirs too.
pub fn statement_log() -> Vec<String> {
    use std::sync::{Mutex, Once};
    use tracing_subscriber::layer::SubscriberExt;

    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static INSTALL: Once = Once::new();

    /// Keeps the text of each logged statement.
    struct Recorder;
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Text(String);
            impl tracing::field::Visit for Text {
                fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    self.0 += &format!("{value:?} ");
                }
            }
            let mut text = Text(String::new());
            event.record(&mut text);
            LOG.lock().unwrap().push(text.0);
        }
    }

    INSTALL.call_once(|| {
        let only_statements = tracing_subscriber::filter::Targets::new()
            .with_target("sqlx::query", tracing::Level::DEBUG);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::Layer::with_filter(Recorder, only_statements),
        );
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    LOG.lock().unwrap().clone()
}

/// Asserts that the logged statements are written as one hand-off: every entry of `logged`
/// holding `statements[0]` holds the others too, there is at least one, and one of them holds
/// `needle` exactly `times` times (the write under test, among its binary's other tests').
pub fn assert_one_hand_off(logged: &[String], statements: &[&str], needle: &str, times: usize) {
    let hand_offs: Vec<&String> = logged
        .iter()
        .filter(|s| s.contains(statements[0]))
        .collect();
    assert!(
        !hand_offs.is_empty(),
        "nothing logged holds {}",
        statements[0]
    );
    for hand_off in &hand_offs {
        for statement in statements {
            assert!(
                hand_off.contains(statement),
                "{statement} is not in the hand-off: {hand_off}"
            );
        }
    }
    assert!(
        hand_offs.iter().any(|s| s.matches(needle).count() == times),
        "no hand-off holds `{needle}` {times} times: {hand_offs:?}"
    );
}
