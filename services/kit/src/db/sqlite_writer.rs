//! SQLite writes: one connection per database and process that every write transaction goes
//! through, in a fair async line.
//!
//! SQLite admits one writer at a time. Without the line, waiting writers nap in SQLite's busy
//! handler (up to 100 ms a nap) instead of starting the moment the lock frees, and throughput
//! collapses under concurrency. Since writes are serial anyway, they share one connection
//! instead of taking turns with the pool's: its page cache stays warm across transactions (a
//! connection's cache is thrown away whenever another connection has committed since its last
//! transaction), and no pool hand-out or release ping is paid per write. Writers in other
//! processes still meet the busy timeout.
//!
//! Every way a write can end — commit, rollback, an error, or the caller's future dropped at
//! any await — leaves the connection outside any transaction before the next writer gets it:
//! a [`WriteTx`] dropped unfinished rolls back on a spawned task that keeps the turn until the
//! rollback has run.

use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The line of this process's SQLite writers and the connection they write through (opened on
/// the first write, and again after a failure left it unusable).
#[derive(Debug, Clone, Default)]
pub struct WriteGate(Arc<Mutex<Option<SqliteConnection>>>);

/// A turn at the gate: the writer connection, held exclusively.
type Turn = OwnedMutexGuard<Option<SqliteConnection>>;

impl WriteGate {
    /// Waits for the turn, then takes the write lock up front (`BEGIN IMMEDIATE`), so a writer
    /// of another process cannot make this one fail to upgrade a read lock later.
    pub(super) async fn begin(
        &self,
        options: Arc<SqliteConnectOptions>,
    ) -> Result<WriteTx, sqlx::Error> {
        let turn = self.0.clone().lock_owned().await;
        // On its own task: a caller cancelled while BEGIN runs must not give the turn back with
        // a transaction open on the connection. If nobody awaits the result any more, the
        // WriteTx is dropped there and rolls back.
        tokio::spawn(async move {
            let mut tx = WriteTx { turn: Some(turn) };
            let slot: &mut Option<SqliteConnection> =
                tx.turn.as_mut().expect("held until finished");
            if slot.is_none() {
                // Every write statement of the service runs here: room for all of them.
                let options = (*options).clone().statement_cache_capacity(512);
                *slot = Some(options.connect().await?);
            }
            let conn = slot.as_mut().expect("connected above");
            if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
                // Nothing began (busy past the timeout, or a broken connection): give the turn
                // back without the rollback a dropped WriteTx would run.
                let mut turn = tx.turn.take().expect("held until finished");
                if e.as_database_error().is_none() {
                    *turn = None;
                }
                return Err(e);
            }
            Ok(tx)
        })
        .await
        .map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    /// Closes the writer connection, waiting for the write in progress to end.
    pub(super) async fn close(&self) {
        if let Some(conn) = self.0.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

/// An open SQLite write transaction: the turn at the gate, with `BEGIN IMMEDIATE` run on the
/// writer connection.
#[derive(Debug)]
pub struct WriteTx {
    /// `None` once the transaction has ended.
    turn: Option<Turn>,
}

impl WriteTx {
    /// Commits. If this future is dropped before the commit was acknowledged, the transaction
    /// is rolled back if it is still open.
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        sqlx::query("COMMIT").execute(self.conn()).await?;
        self.turn = None;
        Ok(())
    }

    /// Rolls back.
    pub(super) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let turn = self.turn.take().expect("held until finished");
        end(turn).await
    }

    /// The writer connection, inside the transaction.
    pub(super) fn conn_ref(&self) -> &SqliteConnection {
        self.turn
            .as_ref()
            .and_then(|turn| turn.as_ref())
            .expect("an open write transaction holds its connection")
    }

    /// The writer connection, inside the transaction, to run statements on.
    pub(super) fn conn(&mut self) -> &mut SqliteConnection {
        self.turn
            .as_mut()
            .and_then(|turn| turn.as_mut())
            .expect("an open write transaction holds its connection")
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(mut turn) = self.turn.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = end(turn).await;
                });
            }
            // No runtime to roll back on: closing the connection rolls back.
            Err(_) => *turn = None,
        }
    }
}

/// Rolls the writer's transaction back, then gives the turn back. A connection that cannot
/// even roll back is dropped (SQLite rolls back on close) and replaced on the next write.
async fn end(mut turn: Turn) -> Result<(), sqlx::Error> {
    let Some(conn) = turn.as_mut() else {
        return Ok(());
    };
    match sqlx::query("ROLLBACK").execute(&mut *conn).await {
        Ok(_) => Ok(()),
        // "no transaction is active": a commit went through after all.
        Err(e) if e.as_database_error().is_some() => Ok(()),
        Err(e) => {
            *turn = None;
            Err(e)
        }
    }
}
