//! SQLite writes: one connection per database and process that every write transaction goes
//! through, in a fair async line, with one durable commit shared by the writers that queued
//! together.
//!
//! SQLite admits one writer at a time. Without the line, waiting writers nap in SQLite's busy
//! handler (up to 100 ms a nap) instead of starting the moment the lock frees, and throughput
//! collapses under concurrency. Since writes are serial anyway, they share one connection
//! instead of taking turns with the pool's: its page cache stays warm across transactions (a
//! connection's cache is thrown away whenever another connection has committed since its last
//! transaction), and no pool hand-out or release ping is paid per write. Writers in other
//! processes still meet the busy timeout.
//!
//! Group commit: with `synchronous = FULL` every COMMIT waits for the disk. A writer that
//! finishes while others wait in line does not commit alone: its changes stay in the open
//! SQLite transaction, the writers that were waiting run after it, each inside a savepoint (so
//! one that fails rolls back only its own changes), and one COMMIT, queued behind them, makes
//! all of them durable. No writer hears "committed" before that COMMIT is done, and a failed
//! COMMIT fails every writer of the batch. The writers still run one after another, each seeing
//! the changes of those before it, as they would after separate commits. (A constraint checked
//! only at COMMIT — a deferred one — would let one writer fail its whole batch; no schema of this
//! system defers a constraint.)
//!
//! Every way a write can end — commit, rollback, an error, or the caller's future dropped at
//! any await — leaves the connection with no unfinished writer's changes before the next
//! writer gets it: a [`WriteTx`] dropped unfinished rolls its own changes back on a spawned
//! task that keeps the turn until the rollback has run, and a turn given back while finished
//! writers' changes wait in the open transaction always has their COMMIT queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

/// The line of this process's SQLite writers and the connection they write through (opened on
/// the first write, and again after a failure left it unusable).
#[derive(Debug, Clone, Default)]
pub struct WriteGate {
    writer: Arc<Mutex<Writer>>,
    /// Writers waiting for their turn: a finishing writer leaves its commit to them.
    waiting: Arc<AtomicUsize>,
}

/// What the turn holds.
#[derive(Debug, Default)]
struct Writer {
    conn: Option<SqliteConnection>,
    /// Set while finished writers' changes wait in the open transaction for their COMMIT.
    batch: Option<Arc<Batch>>,
}

/// Finished writers waiting for one COMMIT.
#[derive(Debug)]
struct Batch {
    /// Whether the COMMIT is queued at the gate yet.
    flush_queued: AtomicBool,
    /// `None` until the COMMIT ended; then its outcome (the error as text, since every writer of
    /// the batch gets it). Dropped unsent when the connection was lost with the batch.
    outcome: watch::Sender<Option<Result<(), String>>>,
}

/// A turn at the gate: the writer connection, held exclusively.
type Turn = OwnedMutexGuard<Writer>;

/// How a write transaction began on the writer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// It began the SQLite transaction (`BEGIN IMMEDIATE`): nothing else is in it.
    Leader,
    /// It joined the transaction finished writers left open, inside a savepoint.
    Joiner,
}

impl WriteGate {
    /// Waits for the turn, then takes the write lock up front (`BEGIN IMMEDIATE`), so a writer
    /// of another process cannot make this one fail to upgrade a read lock later; or, when
    /// finished writers left the transaction open for a shared commit, joins it in a savepoint.
    pub(super) async fn begin(
        &self,
        options: Arc<SqliteConnectOptions>,
    ) -> Result<WriteTx, sqlx::Error> {
        let turn = self.turn().await;
        let gate = self.clone();
        // On its own task: a caller cancelled while BEGIN runs must not give the turn back with
        // a transaction open on the connection. If nobody awaits the result any more, the
        // WriteTx is dropped there and rolls back.
        tokio::spawn(async move {
            let mut tx = WriteTx {
                turn: Some(turn),
                role: Role::Leader,
                gate,
                last: None,
            };
            let writer = tx.turn.as_mut().expect("held until finished");
            if writer.conn.is_none() {
                // Every write statement of the service runs here: room for all of them.
                let options = (*options).clone().statement_cache_capacity(512);
                writer.conn = Some(options.connect().await?);
            }
            let role = if writer.batch.is_some() {
                Role::Joiner
            } else {
                Role::Leader
            };
            let sql = match role {
                Role::Leader => "BEGIN IMMEDIATE",
                Role::Joiner => "SAVEPOINT writer",
            };
            let conn = writer.conn.as_mut().expect("connected above");
            if let Err(e) = sqlx::query(sql).execute(&mut *conn).await {
                // Nothing began (busy past the timeout, or a broken connection): give the turn
                // back without the rollback a dropped WriteTx would run.
                let mut turn = tx.turn.take().expect("held until finished");
                if e.as_database_error().is_none() {
                    turn.discard_connection();
                }
                tx.gate.release(turn);
                return Err(e);
            }
            tx.role = role;
            Ok(tx)
        })
        .await
        .map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    /// Closes the writer connection, waiting for the write in progress to end and committing
    /// what finished writers left for a shared commit.
    pub(super) async fn close(&self) {
        let mut turn = self.writer.lock().await;
        if turn.batch.is_some() {
            commit_batch(&mut turn).await;
        }
        if let Some(conn) = turn.conn.take() {
            let _ = conn.close().await;
        }
    }

    /// Waits in line for the turn.
    async fn turn(&self) -> Turn {
        /// Leaves the line however the wait ends (the caller may be cancelled).
        struct InLine<'a>(&'a AtomicUsize);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _in_line = InLine(&self.waiting);
        self.writer.clone().lock_owned().await
    }

    /// Gives the turn back. If finished writers' changes wait in the open transaction, their
    /// COMMIT is queued first (once per batch), so it never waits for a writer that may not
    /// come.
    fn release(&self, turn: Turn) {
        if let Some(batch) = &turn.batch
            && !batch.flush_queued.swap(true, Ordering::SeqCst)
        {
            let gate = self.clone();
            let batch = batch.clone();
            tokio::spawn(async move {
                let mut turn = gate.turn().await;
                // Another COMMIT (a close) may have taken the batch already.
                if turn.batch.as_ref().is_some_and(|b| Arc::ptr_eq(b, &batch)) {
                    commit_batch(&mut turn).await;
                }
            });
        }
        drop(turn);
    }
}

impl Writer {
    /// Drops the connection (SQLite rolls back whatever is open on close), failing the batch
    /// whose changes go with it; the next write opens a new one.
    fn discard_connection(&mut self) {
        self.conn = None;
        self.batch = None;
    }
}

/// Commits the open transaction of a batch and tells its writers how it went.
async fn commit_batch(turn: &mut Writer) {
    let Some(batch) = turn.batch.take() else {
        return;
    };
    let Some(conn) = turn.conn.as_mut() else {
        return;
    };
    match sqlx::query("COMMIT").execute(&mut *conn).await {
        Ok(_) => {
            super::count_commit();
            batch.outcome.send_replace(Some(Ok(())));
        }
        Err(e) => {
            batch.outcome.send_replace(Some(Err(e.to_string())));
            // A database error may leave the transaction open; "no transaction is active"
            // from the rollback is fine too (SQLite rolled back on its own).
            let rolled_back = match e.as_database_error() {
                Some(_) => match sqlx::query("ROLLBACK").execute(&mut *conn).await {
                    Ok(_) => true,
                    Err(e) => e.as_database_error().is_some(),
                },
                None => false,
            };
            if !rolled_back {
                turn.discard_connection();
            }
        }
    }
}

/// An open SQLite write transaction: the turn at the gate, with `BEGIN IMMEDIATE` (or a
/// savepoint in a transaction left open for a shared commit) run on the writer connection.
#[derive(Debug)]
pub struct WriteTx {
    /// `None` once the transaction has ended.
    turn: Option<Turn>,
    role: Role,
    gate: WriteGate,
    /// The write held for the key's statement ([`Tx::write_last`](super::Tx::write_last)).
    last: Option<super::LastWrite>,
}

impl WriteTx {
    /// Commits: returns once the changes are durable. Commits alone when nobody waits in line;
    /// otherwise leaves the changes to the COMMIT shared with the writers waiting. If this
    /// future is dropped before its changes were handed to a COMMIT, they are rolled back.
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        // A joiner's savepoint is left open, not released: the batch's COMMIT ends every
        // savepoint in it, and the next joiner's savepoint nests inside (a rollback to
        // `writer` goes back to the innermost one only), so a RELEASE would cost a statement
        // and change nothing.
        let turn = self.turn.as_mut().expect("held until finished");
        if turn.batch.is_none() && self.gate.waiting.load(Ordering::SeqCst) == 0 {
            sqlx::query("COMMIT").execute(self.conn()).await?;
            super::count_commit();
            self.turn = None;
            return Ok(());
        }
        // From here to giving the turn back nothing awaits, so a cancelled caller cannot leave
        // its changes in the batch without the batch's COMMIT queued.
        let batch = turn.batch.get_or_insert_with(|| {
            Arc::new(Batch {
                flush_queued: AtomicBool::new(false),
                outcome: watch::Sender::new(None),
            })
        });
        let outcome = batch.outcome.subscribe();
        let turn = self.turn.take().expect("held until finished");
        self.gate.release(turn);
        durable(outcome).await
    }

    /// Rolls back this writer's changes. A writer that joined a batch returns only once the
    /// batch is durable (and fails if its COMMIT did): what it read there may be what it answers,
    /// and no answer may rest on changes that could still be lost.
    pub(super) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let turn = self.turn.take().expect("held until finished");
        let outcome = match (self.role, &turn.batch) {
            (Role::Joiner, Some(batch)) => Some(batch.outcome.subscribe()),
            _ => None,
        };
        end(self.gate.clone(), turn, self.role).await?;
        match outcome {
            Some(outcome) => durable(outcome).await,
            None => Ok(()),
        }
    }

    /// Holds a write for the key's statement.
    pub(super) fn hold_last(&mut self, write: super::LastWrite) {
        self.last = Some(write);
    }

    /// Takes the write held for the key's statement.
    pub(super) fn take_last(&mut self) -> Option<super::LastWrite> {
        self.last.take()
    }

    /// The writer connection, inside the transaction.
    pub(super) fn conn_ref(&self) -> &SqliteConnection {
        self.turn
            .as_ref()
            .and_then(|turn| turn.conn.as_ref())
            .expect("an open write transaction holds its connection")
    }

    /// The writer connection, inside the transaction, to run statements on.
    pub(super) fn conn(&mut self) -> &mut SqliteConnection {
        debug_assert!(
            self.last.is_none(),
            "a statement other than the key's after Tx::write_last"
        );
        self.turn
            .as_mut()
            .and_then(|turn| turn.conn.as_mut())
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
                let (gate, role) = (self.gate.clone(), self.role);
                runtime.spawn(async move {
                    let _ = end(gate, turn, role).await;
                });
            }
            // No runtime to roll back on: closing the connection rolls back.
            Err(_) => turn.discard_connection(),
        }
    }
}

/// Waits for a batch's COMMIT; its failure is this writer's.
async fn durable(
    mut outcome: watch::Receiver<Option<Result<(), String>>>,
) -> Result<(), sqlx::Error> {
    let result = match outcome.wait_for(Option::is_some).await {
        Ok(done) => done.clone().expect("waited for an outcome"),
        Err(_) => Err("the writer connection was lost before the commit".to_owned()),
    };
    result.map_err(|e| {
        sqlx::Error::Io(std::io::Error::other(format!(
            "the shared commit failed: {e}"
        )))
    })
}

/// Rolls back the changes of the writer holding the turn, then gives the turn back: a leader
/// rolls back the transaction (nothing else is in it), a joiner its savepoint. A connection
/// that cannot even roll back is dropped (SQLite rolls back on close) and replaced on the next
/// write.
async fn end(gate: WriteGate, mut turn: Turn, role: Role) -> Result<(), sqlx::Error> {
    let result = match turn.conn.as_mut() {
        None => Ok(()),
        Some(conn) => {
            let rolled_back = match role {
                Role::Leader => sqlx::query("ROLLBACK").execute(&mut *conn).await,
                Role::Joiner => match sqlx::query("ROLLBACK TO writer").execute(&mut *conn).await {
                    Ok(_) => sqlx::query("RELEASE writer").execute(&mut *conn).await,
                    Err(e) => Err(e),
                },
            };
            match rolled_back {
                Ok(_) => Ok(()),
                // "no transaction is active" or "no such savepoint": the commit went through
                // after all (for a joiner: into the batch, whose COMMIT is queued).
                Err(e) if e.as_database_error().is_some() => Ok(()),
                Err(e) => {
                    turn.discard_connection();
                    Err(e)
                }
            }
        }
    };
    gate.release(turn);
    result
}
