//! Pooled connections kept between transactions instead of handed back to sqlx's pool.
//!
//! sqlx pings every connection it is given back (a round trip to the Postgres server; on SQLite
//! a hand-off to the connection's thread and back) to catch one a cancelled statement left out
//! of step. A transaction that ended with its own `COMMIT` or `ROLLBACK` answered, or a read
//! whose holder ended it after its statement was answered, has just shown that its connection
//! is in step, so the ping buys nothing there: such a connection goes in line here and a
//! later transaction takes it. One dropped unfinished (an error returned early, a cancelled
//! caller) is closed instead, as the ping would have found it suspect.
//!
//! The connections in line stay checked out of the pool, so a permit per connection in use or
//! in line keeps the total at the pool's size. A connection idle in line for longer
//! than [`IDLE`] goes back to the pool, which applies its own ping, idle timeout and lifetime.
//! Once the database is closing, every connection goes back to the pool, which waits for them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::DbError;

/// How long a connection waits in line before it goes back to the pool.
const IDLE: Duration = Duration::from_secs(60);

/// The connections of one pool between transactions, and the permits that bound them.
#[derive(Debug)]
pub struct Leases<DB: Database> {
    line: Arc<Mutex<Line<DB>>>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
}

impl<DB: Database> Clone for Leases<DB> {
    fn clone(&self) -> Self {
        Self {
            line: self.line.clone(),
            permits: self.permits.clone(),
            acquire_timeout: self.acquire_timeout,
        }
    }
}

/// The connections between transactions; none once closing.
#[derive(Debug)]
struct Line<DB: Database> {
    /// Oldest first: each transaction takes the connection idle longest (in measurements the
    /// most recent one, whose server process may still be finishing its last answer, made
    /// the saga engine on Postgres slower and less steady).
    idle: VecDeque<Idle<DB>>,
    closing: bool,
}

#[derive(Debug)]
struct Idle<DB: Database> {
    conn: PoolConnection<DB>,
    since: Instant,
}

/// A connection taken for one transaction or one read statement.
#[derive(Debug)]
pub struct Lease<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    home: Leases<DB>,
    _permit: OwnedSemaphorePermit,
    /// Set once the holder ended its use with an answered statement.
    in_step: bool,
}

impl<DB: Database> Leases<DB> {
    /// Leases over a pool of `size` connections.
    pub fn new(size: u32, acquire_timeout: Duration) -> Self {
        Self {
            line: Arc::new(Mutex::new(Line {
                idle: VecDeque::new(),
                closing: false,
            })),
            permits: Arc::new(Semaphore::new(usize::try_from(size).unwrap_or(1).max(1))),
            acquire_timeout,
        }
    }

    /// The connection idle longest, or a new one from the pool; waits at
    /// most the pool's acquire timeout for a permit.
    pub async fn take(&self, pool: &Pool<DB>) -> Result<Lease<DB>, DbError> {
        let permit =
            tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)?
                .map_err(|_| sqlx::Error::PoolClosed)?;
        let conn = match self.pop() {
            Some(conn) => conn,
            None => pool.acquire().await?,
        };
        Ok(Lease {
            conn: Some(conn),
            home: self.clone(),
            _permit: permit,
            in_step: false,
        })
    }

    /// The connection idle longest but less than [`IDLE`]; older ones go back to the pool (on
    /// dropping them).
    fn pop(&self) -> Option<PoolConnection<DB>> {
        let mut line = self.lock();
        let fresh = line.idle.partition_point(|i| i.since.elapsed() > IDLE);
        let stale: Vec<Idle<DB>> = line.idle.drain(..fresh).collect();
        let conn = line.idle.pop_front().map(|i| i.conn);
        drop(line);
        drop(stale);
        conn
    }

    /// Gives every idle connection back to the pool, and from now on each one whose lease
    /// ends: the pool's `close` waits for all of them.
    pub fn close(&self) {
        let mut line = self.lock();
        line.closing = true;
        let idle = std::mem::take(&mut line.idle);
        drop(line);
        drop(idle);
    }

    /// Connections in line now.
    pub fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Line<DB>> {
        self.line
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<DB: Database> Lease<DB> {
    /// Runs a statement of the lease's own (`BEGIN`, `COMMIT`, `ROLLBACK`).
    pub async fn run(&mut self, sql: &'static str) -> Result<(), DbError>
    where
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> <DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    {
        sqlx::query::<DB>(sql).execute(self.conn()).await?;
        Ok(())
    }

    /// Ends the lease after a statement was answered on it (`COMMIT`, `ROLLBACK`, or the one
    /// statement of a read): the connection is in step and goes back in line.
    pub fn in_step(&mut self) {
        self.in_step = true;
    }

    /// The connection.
    pub fn conn(&mut self) -> &mut DB::Connection {
        self.conn.as_mut().expect("held until dropped")
    }

    /// The connection, to read from.
    pub fn conn_ref(&self) -> &DB::Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl<DB: Database> Drop for Lease<DB> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !self.in_step {
            // Perhaps in a transaction, or with a statement half sent or half answered.
            conn.close_on_drop();
            return;
        }
        let mut line = self.home.lock();
        if line.closing {
            drop(line);
            drop(conn);
            return;
        }
        line.idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Backend, Db, PoolConfig, Tx};
    use crate::on_backend;
    use crate::testing::{self, RoundTrips, TestDatabase};

    async fn select_one(tx: &mut Tx) {
        on_backend!(tx, conn => {
            sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
        });
    }

    #[tokio::test]
    async fn a_postgres_transaction_costs_its_statements_and_no_ping_when_it_ends() {
        if testing::backend() != Backend::Postgres {
            return;
        }
        let database = TestDatabase::on(Backend::Postgres, "lease_round_trips");
        let round_trips = RoundTrips::count(&database).await;
        let db = Db::connect(round_trips.url(), &PoolConfig::default())
            .await
            .unwrap();
        let run = |db: Db| async move {
            let mut tx = db.begin().await.unwrap();
            select_one(&mut tx).await;
            tx.commit().await.unwrap();
            let mut tx = db.begin_read().await.unwrap();
            select_one(&mut tx).await;
            tx.rollback().await.unwrap();
            let mut tx = db.single_read().await.unwrap();
            select_one(&mut tx).await;
            tx.commit().await.unwrap();
            let mut tx = db.single_write().await.unwrap();
            select_one(&mut tx).await;
            tx.commit().await.unwrap();
        };
        // The first time prepares each statement (a round trip more).
        run(db.clone()).await;
        let before = round_trips.settled().await;
        for _ in 0..10 {
            run(db.clone()).await;
        }
        // Settled: anything sent after the last answer (a ping on release) is counted.
        let spent = round_trips.settled().await - before;
        assert_eq!(
            spent,
            10 * (3 + 3 + 1 + 1),
            "BEGIN, SELECT, COMMIT; BEGIN, SELECT, ROLLBACK; SELECT; SELECT: nothing else"
        );
        db.close().await;
    }

    /// The rows of `t` as the next transaction sees them.
    async fn rows(db: &Db) -> i64 {
        let mut tx = db.begin_read().await.unwrap();
        let n = on_backend!(&mut tx, conn => {
            sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *conn).await.unwrap()
        });
        tx.rollback().await.unwrap();
        n
    }

    #[tokio::test]
    async fn a_transaction_dropped_unfinished_takes_its_connection_with_it() {
        let database = TestDatabase::new("lease_dropped");
        let config = PoolConfig {
            max_connections: 1,
            ..PoolConfig::default()
        };
        let db = Db::connect(database.url(), &config).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        on_backend!(&mut tx, conn => {
            sqlx::query("CREATE TABLE t (x BIGINT PRIMARY KEY)").execute(&mut *conn).await.unwrap();
        });
        tx.commit().await.unwrap();

        // A write left uncommitted (on SQLite the writer connection is not leased, so a read
        // transaction left open stands for it there).
        let mut tx = match db.backend() {
            Backend::Postgres => db.begin().await.unwrap(),
            Backend::Sqlite => db.begin_read().await.unwrap(),
        };
        if db.backend() == Backend::Postgres {
            on_backend!(&mut tx, conn => {
                sqlx::query("INSERT INTO t (x) VALUES (1)").execute(&mut *conn).await.unwrap();
            });
        }
        select_one(&mut tx).await;
        drop(tx);
        // The only connection there is: had it been kept, the next transaction would run
        // inside the open one (Postgres: and see its row; SQLite: fail to begin).
        assert_eq!(rows(&db).await, 0);
        let mut tx = db.single_read().await.unwrap();
        // A single read dropped before it was ended goes the same way.
        select_one(&mut tx).await;
        drop(tx);
        assert_eq!(rows(&db).await, 0);
        match &db {
            Db::Sqlite(_, _, leases) => assert_eq!(leases.idle_count(), 1),
            Db::Postgres(_, leases) => assert_eq!(leases.idle_count(), 1),
        }
        db.close().await;
    }

    #[tokio::test]
    async fn no_more_connections_are_held_than_the_pool_has_and_a_taker_waits_for_one() {
        let database = TestDatabase::new("lease_bound");
        let config = PoolConfig {
            max_connections: 2,
            acquire_timeout: Duration::from_millis(300),
            ..PoolConfig::default()
        };
        let db = Db::connect(database.url(), &config).await.unwrap();
        let first = db.begin_read().await.unwrap();
        let second = db.single_read().await.unwrap();
        let refused = db.begin_read().await;
        assert!(
            matches!(
                refused,
                Err(crate::db::DbError::Query(sqlx::Error::PoolTimedOut))
            ),
            "{refused:?}"
        );
        let waiting = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin_read().await.unwrap();
                select_one(&mut tx).await;
                tx.rollback().await.unwrap();
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.rollback().await.unwrap();
        waiting.await.unwrap();
        second.commit().await.unwrap();
        let (size, idle) = match &db {
            Db::Sqlite(pool, _, leases) => (pool.size(), leases.idle_count()),
            Db::Postgres(pool, leases) => (pool.size(), leases.idle_count()),
        };
        assert!(size <= 2, "the pool opened {size}");
        assert_eq!(idle, 2, "both kept for the next transactions");
        db.close().await;
    }

    #[tokio::test]
    async fn closing_waits_for_the_transactions_in_flight_and_then_ends() {
        let database = TestDatabase::new("lease_close");
        let db = Db::connect(database.url(), &PoolConfig::default())
            .await
            .unwrap();
        // One connection kept from before, one in use while the database closes.
        db.single_read().await.unwrap().commit().await.unwrap();
        let mut tx = db.begin_read().await.unwrap();
        let closing = tokio::spawn({
            let db = db.clone();
            async move { db.close().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!closing.is_finished(), "a transaction is still in flight");
        select_one(&mut tx).await;
        tx.rollback().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .expect("the connection went back to the pool, which closed")
            .unwrap();
        assert!(db.begin_read().await.is_err(), "closed");
    }
}
