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

use super::sqlite_opening::{Opening, not_open};

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
    /// The savepoint the last writer to join the batch left open: the next one releases it.
    open_savepoint: Option<Savepoint>,
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
    Joiner(Savepoint),
}

/// The savepoint of a writer that joined a batch. A joiner releases the savepoint the writer
/// before it left open and opens its own under the other name, so the two never share a name:
/// a joiner whose opening is in doubt can roll back to its own name, which fails if the
/// savepoint was never made, and never reaches back into an earlier writer's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Savepoint {
    A,
    B,
}

impl Savepoint {
    /// The savepoint of a writer joining after the one `left_open`, and its opening.
    fn joining(left_open: Option<Self>) -> (Self, &'static str) {
        match left_open {
            None => (Self::A, "SAVEPOINT writer_a"),
            Some(Self::A) => (Self::B, "RELEASE writer_a; SAVEPOINT writer_b"),
            Some(Self::B) => (Self::A, "RELEASE writer_b; SAVEPOINT writer_a"),
        }
    }

    /// Rolls back to the savepoint and ends it.
    fn rollback(self) -> &'static str {
        match self {
            Self::A => "ROLLBACK TO writer_a; RELEASE writer_a",
            Self::B => "ROLLBACK TO writer_b; RELEASE writer_b",
        }
    }

    fn release(self) -> &'static str {
        match self {
            Self::A => "RELEASE writer_a",
            Self::B => "RELEASE writer_b",
        }
    }
}

impl WriteGate {
    /// Waits for the turn. The transaction opens with its first statement
    /// ([`sqlite_opening`](super::sqlite_opening)): `BEGIN IMMEDIATE`, which takes the write lock
    /// up front, so a writer of another process cannot make this one fail to upgrade a read lock
    /// later; or, when finished writers left the transaction open for a shared commit, a
    /// savepoint inside it.
    pub(super) async fn begin(
        &self,
        options: Arc<SqliteConnectOptions>,
    ) -> Result<WriteTx, sqlx::Error> {
        let mut tx = WriteTx {
            turn: Some(self.turn().await),
            role: Role::Leader,
            opening: Opening::Pending("BEGIN IMMEDIATE"),
            gate: self.clone(),
            last: None,
        };
        let writer = tx.turn.as_mut().expect("held until finished");
        if writer.conn.is_none() {
            // Every write statement of the service runs here: room for all of them, each also
            // with an opening in front.
            let options = (*options).clone().statement_cache_capacity(1024);
            writer.conn = Some(options.connect().await?);
        }
        if writer.batch.is_some() {
            let (savepoint, opening) = Savepoint::joining(writer.open_savepoint);
            tx.role = Role::Joiner(savepoint);
            tx.opening = Opening::Pending(opening);
        }
        Ok(tx)
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
        self.open_savepoint = None;
    }
}

/// Commits the open transaction of a batch and tells its writers how it went.
async fn commit_batch(turn: &mut Writer) {
    let Some(batch) = turn.batch.take() else {
        return;
    };
    // The COMMIT, or the ROLLBACK after a failed one, ends every savepoint.
    turn.open_savepoint = None;
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
    /// `BEGIN IMMEDIATE` or the savepoint, sent with the first statement.
    opening: Opening,
    gate: WriteGate,
    /// The write held for the key's statement ([`Tx::write_last`](super::Tx::write_last)).
    last: Option<super::LastWrite>,
}

impl WriteTx {
    /// Commits: returns once the changes are durable. Commits alone when nobody waits in line;
    /// otherwise leaves the changes to the COMMIT shared with the writers waiting. If this
    /// future is dropped before its changes were handed to a COMMIT, they are rolled back.
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        match self.opening {
            // No statement ran: there is nothing to commit, and nothing was read.
            Opening::Pending(_) => {
                let turn = self.turn.take().expect("held until finished");
                self.gate.release(turn);
                return Ok(());
            }
            // Dropping rolls back whatever may have run.
            Opening::InDoubt => return Err(not_open()),
            Opening::Ran => {}
        }
        if self.gate.waiting.load(Ordering::SeqCst) == 0 {
            // Requests that are ready to run, or whose bytes have arrived, may be about to
            // queue here: they get one turn of the runtime to do so and share this COMMIT
            // (each COMMIT waits for the disk while every other writer waits for it).
            tokio::task::yield_now().await;
        }
        let turn = self.turn.as_mut().expect("held until finished");
        if turn.batch.is_none() && self.gate.waiting.load(Ordering::SeqCst) == 0 {
            sqlx::query("COMMIT").execute(self.conn()).await?;
            super::count_commit();
            self.turn = None;
            return Ok(());
        }
        // From here to giving the turn back nothing awaits, so a cancelled caller cannot leave
        // its changes in the batch without the batch's COMMIT queued.
        if let Role::Joiner(savepoint) = self.role {
            // Left open, not released: the batch's COMMIT ends it, and the next joiner's
            // opening releases it, so a RELEASE of its own would cost a hand-off.
            turn.open_savepoint = Some(savepoint);
        }
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

    /// Rolls back this writer's changes. A writer that joined a batch and read there returns
    /// only once the batch is durable (and fails if its COMMIT did): what it read may be what
    /// it answers, and no answer may rest on changes that could still be lost.
    pub(super) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let turn = self.turn.take().expect("held until finished");
        let outcome = match (self.role, self.opening, &turn.batch) {
            (Role::Joiner(_), Opening::Ran, Some(batch)) => Some(batch.outcome.subscribe()),
            _ => None,
        };
        end(self.gate.clone(), turn, self.role, self.opening).await?;
        match outcome {
            Some(outcome) => durable(outcome).await,
            None => Ok(()),
        }
    }

    /// The writer connection and the transaction's opening, to run statements with.
    pub(super) fn parts(&mut self) -> (&mut SqliteConnection, &mut Opening) {
        debug_assert!(
            self.last.is_none(),
            "a statement other than the key's after Tx::write_last"
        );
        let conn = self
            .turn
            .as_mut()
            .and_then(|turn| turn.conn.as_mut())
            .expect("an open write transaction holds its connection");
        (conn, &mut self.opening)
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
    fn conn(&mut self) -> &mut SqliteConnection {
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
        if !self.opening.sent() {
            self.gate.release(turn);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (gate, role, opening) = (self.gate.clone(), self.role, self.opening);
                runtime.spawn(async move {
                    let _ = end(gate, turn, role, opening).await;
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
async fn end(
    gate: WriteGate,
    mut turn: Turn,
    role: Role,
    opening: Opening,
) -> Result<(), sqlx::Error> {
    let writer: &mut Writer = &mut turn;
    let result = match writer.conn.as_mut() {
        None => Ok(()),
        Some(_) if !opening.sent() => Ok(()),
        Some(conn) => {
            let rolled_back = match role {
                Role::Leader => sqlx::query("ROLLBACK").execute(&mut *conn).await,
                Role::Joiner(savepoint) => {
                    let left_open = writer.open_savepoint.take();
                    match sqlx::query(savepoint.rollback()).execute(&mut *conn).await {
                        // "no such savepoint": the opening never made it (it was in doubt),
                        // so the savepoint the writer before left open may still be there.
                        // Releasing it keeps that writer's changes, in the batch's
                        // transaction, and leaves no savepoint open either way.
                        Err(e) if e.as_database_error().is_some() => match left_open {
                            Some(before) => sqlx::query(before.release()).execute(&mut *conn).await,
                            None => Err(e),
                        },
                        rolled_back => rolled_back,
                    }
                }
            };
            match rolled_back {
                Ok(_) => Ok(()),
                // "no transaction is active" or "no such savepoint": the commit went through
                // after all, or the opening never ran.
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::{Db, PoolConfig, SqliteTx, Tx};
    use super::Opening;
    use crate::on_backend;

    async fn sqlite_db(dir: &tempfile::TempDir) -> Db {
        let url = format!("sqlite://{}/x.db", dir.path().display());
        let db = Db::connect(&url, &PoolConfig::default()).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        exec(&mut tx, "CREATE TABLE t (x INTEGER PRIMARY KEY)").await;
        tx.commit().await.unwrap();
        db
    }

    async fn exec(tx: &mut Tx, sql: &str) {
        on_backend!(tx, conn => {
            sqlx::query(sql).execute(&mut *conn).await.unwrap();
        });
    }

    async fn insert(tx: &mut Tx, x: i64) {
        on_backend!(tx, conn => {
            sqlx::query("INSERT INTO t (x) VALUES ($1)").bind(x).execute(&mut *conn).await.unwrap();
        });
    }

    async fn rows(db: &Db) -> Vec<i64> {
        let mut read = db.begin_read().await.unwrap();
        let rows = on_backend!(&mut read, conn => {
            sqlx::query_scalar("SELECT x FROM t ORDER BY x").fetch_all(&mut *conn).await.unwrap()
        });
        read.rollback().await.unwrap();
        rows
    }

    /// Yields until `n` writers wait in line at the gate.
    async fn waiting(db: &Db, n: usize) {
        let Db::Sqlite(_, gate, _) = db else {
            unreachable!("a SQLite database")
        };
        while gate.waiting.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_writer_joining_a_batch_whose_opening_never_ran_rolls_back_no_earlier_writers_change()
    {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_db(&dir).await;
        for round in 0..3_i64 {
            let mut leader = db.begin().await.unwrap();
            insert(&mut leader, round * 10 + 1).await;
            // Two writers wait in line, so the leader's commit opens a batch they both join:
            // the second leaves its savepoint open, and the third's opening would release it.
            let second = tokio::spawn({
                let db = db.clone();
                async move {
                    let mut tx = db.begin().await.unwrap();
                    insert(&mut tx, round * 10 + 2).await;
                    tx.commit().await
                }
            });
            waiting(&db, 1).await;
            let third = tokio::spawn({
                let db = db.clone();
                async move {
                    let mut tx = db.begin().await.unwrap();
                    let Tx::Sqlite(SqliteTx::Write(write)) = &mut tx else {
                        unreachable!("a SQLite write")
                    };
                    assert!(
                        matches!(write.opening, Opening::Pending(o) if o.starts_with("RELEASE ")),
                        "{:?}",
                        write.opening
                    );
                    // As if its opening had been sent and failed before it ran.
                    write.opening = Opening::InDoubt;
                    tx.rollback().await
                }
            });
            waiting(&db, 2).await;
            let leader = tokio::spawn(leader.commit());
            leader.await.unwrap().unwrap();
            second.await.unwrap().unwrap();
            third.await.unwrap().unwrap();
        }
        assert_eq!(rows(&db).await, vec![1, 2, 11, 12, 21, 22]);
        db.close().await;
    }

    #[tokio::test]
    async fn a_write_and_a_read_open_with_their_first_statement_in_one_hand_off() {
        let log = crate::testing::statement_log;
        log();
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_db(&dir).await;
        // A table of this test's own: other tests of the binary log their statements too.
        let mut tx = db.begin().await.unwrap();
        exec(&mut tx, "CREATE TABLE opened (x INTEGER)").await;
        exec(&mut tx, "INSERT INTO opened (x) VALUES (7)").await;
        tx.commit().await.unwrap();
        let mut read = db.begin_read().await.unwrap();
        let x: i64 = on_backend!(&mut read, conn => {
            sqlx::query_scalar("SELECT x FROM opened").fetch_one(&mut *conn).await.unwrap()
        });
        read.commit().await.unwrap();
        assert_eq!(x, 7);
        let logged: Vec<String> = log()
            .into_iter()
            .filter(|s| s.contains(" opened"))
            .collect();
        let at = |needle: &str| logged.iter().filter(|s| s.contains(needle)).count();
        assert_eq!(at("BEGIN IMMEDIATE; CREATE TABLE opened"), 1, "{logged:?}");
        assert_eq!(at("INSERT INTO opened"), 1, "{logged:?}");
        assert_eq!(at("BEGIN; SELECT x FROM opened"), 1, "{logged:?}");
        assert_eq!(at("BEGIN"), 2, "{logged:?}");
        // Transactions that ran nothing commit and roll back, and the writer goes on.
        db.begin().await.unwrap().commit().await.unwrap();
        db.begin().await.unwrap().rollback().await.unwrap();
        db.begin_read().await.unwrap().commit().await.unwrap();
        db.begin_read().await.unwrap().rollback().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        insert(&mut tx, 8).await;
        tx.commit().await.unwrap();
        assert_eq!(rows(&db).await, vec![8]);
        db.close().await;
    }

    #[tokio::test]
    async fn a_writer_ready_to_run_when_the_turn_commits_shares_that_commit() {
        let log = crate::testing::statement_log;
        log();
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_db(&dir).await;
        let mut tx = db.begin().await.unwrap();
        exec(&mut tx, "CREATE TABLE ready (x INTEGER)").await;
        tx.commit().await.unwrap();
        let mut first = db.begin().await.unwrap();
        exec(&mut first, "INSERT INTO ready (x) VALUES (1)").await;
        // Spawned on this single-threaded runtime, it reaches the gate only once the first
        // writer's task lets it run.
        let second = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                exec(&mut tx, "INSERT INTO ready (x) VALUES (2)").await;
                tx.commit().await
            }
        });
        first.commit().await.unwrap();
        second.await.unwrap().unwrap();
        let second_insert: Vec<String> = log()
            .into_iter()
            .filter(|s| s.contains("INSERT INTO ready (x) VALUES (2)"))
            .collect();
        assert_eq!(second_insert.len(), 1, "{second_insert:?}");
        assert!(
            second_insert[0].contains("SAVEPOINT writer_a; INSERT INTO ready"),
            "the second writer joined the first one's transaction: {second_insert:?}"
        );
        db.close().await;
    }
}
