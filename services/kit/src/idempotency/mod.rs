//! The idempotency layer behind every mutating RPC (DESIGN §5).
//!
//! A key is the RPC (its scope) plus the caller's `request_id`; the request's fingerprint is a
//! SHA-256 of its canonical encoding without the `request_id`. Two ways to use it:
//!
//! * Database-only effects: [`Idempotency::begin`] opens one write transaction; the handler
//!   makes its change in [`Pending::tx`]; [`Pending::finish`] writes the key, done, with the
//!   answer in the same transaction and commits — one statement of the layer's per request. If
//!   the key is remembered (a repeat, or a duplicate that committed first; the unique key makes
//!   a concurrent duplicate wait for the first), the handler's changes are rolled back and the
//!   stored answer is replayed. A business refusal rolls the handler's changes back and is
//!   stored in a transaction of its own; a transient failure replays the stored answer if the
//!   key has one. The effect happens exactly once. The [`idempotent!`] macro writes this for a
//!   handler.
//! * Effects outside the database (the payment processor): [`Idempotency::start`] claims the
//!   key in a transaction the caller commits with its intent, and hands out an [`Execution`]
//!   with recovery points and a stable
//!   [`external key`](Execution::external_key), so a crash between "recorded the intent" and
//!   "recorded the processor's answer" resumes at the last recovery point with the same key.
//!
//! Rules: a done key with the same fingerprint replays the stored answer byte for byte (business
//! errors included); a different fingerprint is `INVALID_ARGUMENT` IDEMPOTENCY_KEY_REUSED; a key
//! in progress under a live lock is `ABORTED` REQUEST_IN_PROGRESS; a stale lock is taken over;
//! transient failures are not stored. Keys expire after the retention window and
//! [`Idempotency::spawn_collector`] deletes them in bounded batches.

#[cfg(test)]
mod fuzz;
mod key;
mod requests;
mod store;

use std::marker::PhantomData;
use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};

use crate::db::{Answer, Db, DbError, Statements, Tx};
use crate::shutdown::Shutdown;
use crate::status::{self, Rejection};

pub use key::{IdempotentRequest, Key};
use store::{ClaimOutcome, Found, StoredAnswer};
pub use store::{PgQuery, SqliteQuery};

/// Reason of a request whose key was used before for a different request.
pub const KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
/// Reason of a request whose key is being executed by another caller right now.
pub const IN_PROGRESS: &str = "REQUEST_IN_PROGRESS";

/// Settings of the idempotency layer.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// How long a key is remembered after it was first claimed (default 24 h).
    pub retention: Duration,
    /// How long a claim of an external effect stays locked before another caller may take it
    /// over, assuming its holder crashed (default 30 s).
    pub lock_ttl: Duration,
    /// How often the collector looks for expired keys (default 60 s).
    pub collect_interval: Duration,
    /// How many keys the collector deletes per statement (default 500).
    pub collect_batch: u32,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 60 * 60),
            lock_ttl: Duration::from_secs(30),
            collect_interval: Duration::from_secs(60),
            collect_batch: 500,
        }
    }
}

/// The idempotency layer over one service's database.
#[derive(Debug, Clone)]
pub struct Idempotency {
    db: Db,
    config: IdempotencyConfig,
}

/// A request's key with the open write transaction its database-only effect runs in.
#[derive(Debug)]
pub struct Pending<T> {
    key: Key,
    tx: Tx,
    layer: Idempotency,
    _answer: PhantomData<fn() -> T>,
}

/// What starting an external effect found.
#[derive(Debug)]
// Lives for one match right after the claim; boxing the transaction would only add a heap trip.
#[allow(clippy::large_enum_variant)]
pub enum Started<T> {
    /// The key was done before: its stored answer.
    Replay(Result<T, Status>),
    /// The key is ours (new, or taken over from a crashed holder): run or resume the effect.
    /// The claim is in the open transaction, which the caller commits (or finishes with).
    Run(Execution<T>, Tx),
}

/// A committed claim of an effect outside the database, with its recovery point.
#[derive(Debug)]
pub struct Execution<T> {
    key: Key,
    lock_token: String,
    lock_ttl: Duration,
    recovery_point: String,
    recovery_data: Option<Vec<u8>>,
    resumed: bool,
    _answer: PhantomData<fn() -> T>,
}

/// The recovery point of a freshly claimed key.
pub const STARTED: &str = "started";

/// The statements of a database-only effect that [`Idempotency::in_one_statement`] runs on
/// SQLite: the key's insert, then `statements`, whose anonymous `?` parameters take the values
/// bound after the key's.
pub fn in_one_hand_off_sql(statements: &str) -> String {
    store::in_one_hand_off_sql(statements)
}

/// The statement of a database-only effect that [`Idempotency::in_one_statement`] runs. The
/// key's insert comes first, as a data-modifying CTE with the parameters `$1`–`$9`; `effect`
/// goes on from there with more CTEs (`name AS (…), …`) and the final statement, its
/// parameters numbered from `$10`. Build it once (in a `LazyLock`).
pub fn in_one_statement_sql(effect: &str) -> String {
    store::in_one_statement_sql(effect)
}

/// True when an answer with this code is final and is stored for replay; transient and
/// internal failures are not, so a retry runs again.
pub fn is_final(code: Code) -> bool {
    match code {
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unauthenticated => true,
        Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => false,
    }
}

impl Idempotency {
    /// The layer over a migrated database (its `idempotency_keys` table).
    pub fn new(db: Db, config: IdempotencyConfig) -> Self {
        Self { db, config }
    }

    /// The layer's settings.
    pub fn config(&self) -> &IdempotencyConfig {
        &self.config
    }

    /// Opens a write transaction and claims `key` in it under a new lock token, a new key at
    /// the recovery point `intent`.
    async fn claim(&self, key: &Key, intent: &str) -> Result<(Tx, String, ClaimOutcome), Status> {
        let mut tx = self.db.begin().await.map_err(db_status)?;
        let token = new_token();
        let outcome = store::claim(&mut tx, key, &token, &self.config, intent)
            .await
            .map_err(db_status)?;
        Ok((tx, token, outcome))
    }

    /// Opens the write transaction of a database-only effect. The key is not looked up first:
    /// a new request, the common case, pays no read; a repeat runs the handler in vain and
    /// replays the stored answer when [`Pending::finish`] finds the key.
    pub async fn begin<T: Message + Default>(&self, key: Key) -> Result<Pending<T>, Status> {
        let tx = self.db.begin().await.map_err(db_status)?;
        Ok(Pending {
            key,
            tx,
            layer: self.clone(),
            _answer: PhantomData,
        })
    }

    /// Runs a database-only effect whose rows and answer are known before anything is read,
    /// and stores its answer, in one go: on Postgres one statement outside any transaction (no
    /// `BEGIN`, no `COMMIT`, one round trip: `postgres` is the SQL of
    /// [`in_one_statement_sql`], its binder binding from `$10`); on SQLite one string of
    /// statements in a write transaction, the key's insert first (one hand-off to the writer's
    /// thread instead of one per statement: `sqlite` is the string of [`in_one_hand_off_sql`],
    /// its binder binding the effect's anonymous `?` parameters). True when it committed. False when
    /// it changed nothing because a unique key refused it (the key is remembered, or a row of
    /// the effect exists already): the caller then runs the request the usual way
    /// ([`idempotent!`]), which settles a repeat, a reused key or an existing row as it always
    /// does.
    pub async fn in_one_statement<'q, T: Message>(
        &self,
        key: &'q Key,
        answer: &T,
        postgres: (&'q str, impl FnOnce(PgQuery<'q>) -> PgQuery<'q>),
        sqlite: (&'q str, impl FnOnce(SqliteQuery<'q>) -> SqliteQuery<'q>),
    ) -> Result<bool, Status> {
        let answer = StoredAnswer::ok(answer);
        let mut tx = self.db.single_write().await.map_err(db_status)?;
        let committed = match &mut tx {
            Tx::Postgres(conn) => {
                let (sql, bind) = postgres;
                store::run_in_one_statement(conn, sql, key, &answer, &self.config, bind).await
            }
            Tx::Sqlite(conn) => {
                let (sql, bind) = sqlite;
                store::run_in_one_hand_off(conn, sql, key, &answer, &self.config, bind).await
            }
        }
        // Dropped unfinished, a SQLite write rolls back whatever part of its string ran.
        .map_err(db_status)?;
        if committed {
            tx.commit().await.map_err(db_status)?;
        } else {
            tx.rollback().await.map_err(db_status)?;
        }
        Ok(committed)
    }

    /// Claims a key for an effect outside the database. The claim's transaction is handed over
    /// open: the caller records its intent in it and commits, so the claim and the intent are
    /// one durable write. A new key is claimed at the recovery point `intent` ([`STARTED`], or
    /// the point the caller's write in the open transaction reaches), so a caller that knows it
    /// up front writes no [`Execution::checkpoint`] of its own; if the caller's write does not
    /// happen, it rolls the claim back with it, or [`finishes`](Execution::finish) the key.
    /// A taken-over key keeps its earlier holder's recovery point ([`Execution::resumed`]).
    pub async fn start<T: Message + Default>(
        &self,
        key: Key,
        intent: &str,
    ) -> Result<Started<T>, Status> {
        let (tx, token, outcome) = self.claim(&key, intent).await?;
        match outcome {
            ClaimOutcome::Claimed {
                recovery_point,
                recovery_data,
                resumed,
            } => Ok(Started::Run(
                Execution {
                    recovery_point,
                    recovery_data,
                    resumed,
                    ..self.execution(key, token, intent)
                },
                tx,
            )),
            ClaimOutcome::Found(found) => {
                tx.rollback().await.map_err(db_status)?;
                Ok(Started::Replay(settle(&key, found)?))
            }
        }
    }

    /// [`Idempotency::start`] with the handler's `first` statements sent with the claim
    /// ([`Tx::run_together`]: one hand-off on SQLite). A new key comes back claimed at `intent`
    /// with `first`'s answers, in the open transaction. For a key there already (a repeat, a
    /// duplicate, a takeover) `first` is rolled back and the claim is made again as
    /// [`Idempotency::start`] makes it, with no answers: the handler runs its statements
    /// itself, knowing what the claim found.
    pub async fn start_with<T: Message + Default>(
        &self,
        key: Key,
        intent: &str,
        first: Statements,
    ) -> Result<(Started<T>, Option<Vec<Answer>>), Status> {
        if first.is_empty() {
            return Ok((self.start(key, intent).await?, None));
        }
        let mut tx = self.db.begin().await.map_err(db_status)?;
        let token = new_token();
        let claimed =
            store::claim_new_with(&mut tx, &key, &token, &self.config, intent, first).await;
        match claimed {
            Ok(Some(answers)) => {
                let execution = self.execution(key, token, intent);
                return Ok((Started::Run(execution, tx), Some(answers)));
            }
            Ok(None) => tx.rollback().await.map_err(db_status)?,
            Err(e) => {
                tx.rollback().await.map_err(db_status)?;
                return Err(db_status(e));
            }
        }
        Ok((self.start(key, intent).await?, None))
    }

    /// The execution of a key newly claimed under `token` at the recovery point `intent`.
    fn execution<T>(&self, key: Key, token: String, intent: &str) -> Execution<T> {
        Execution {
            key,
            lock_token: token,
            lock_ttl: self.config.lock_ttl,
            recovery_point: intent.to_owned(),
            recovery_data: None,
            resumed: false,
            _answer: PhantomData,
        }
    }

    /// Stores a business refusal whose handler's changes were rolled back. If the key is
    /// remembered (a repeat, or a duplicate that committed first), its answer is what every
    /// caller of the key sees, this one included.
    async fn store_refusal<T: Message + Default>(
        &self,
        key: Key,
        answer: StoredAnswer,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let mut tx = self.db.begin().await.map_err(db_status)?;
        if store::record(&mut tx, &key, &answer, &self.config)
            .await
            .map_err(db_status)?
        {
            tx.commit().await.map_err(db_status)?;
            return result;
        }
        tx.rollback().await.map_err(db_status)?;
        self.remembered(&key).await
    }

    /// The answer of a key [`store::record`] found remembered: its stored answer, a refusal
    /// if it was used for a different request, or `ABORTED` while a holder has it locked.
    async fn remembered<T: Message + Default>(&self, key: &Key) -> Result<T, Status> {
        let (tx, _token, outcome) = self.claim(key, STARTED).await?;
        tx.rollback().await.map_err(db_status)?;
        match outcome {
            ClaimOutcome::Found(found) => settle(key, found)?,
            // Collected in between (it had expired): nothing is stored now, so a retry runs.
            ClaimOutcome::Claimed { .. } => Err(taken_over()),
        }
    }

    /// The stored answer of a key, if it has one, for a request whose attempt failed
    /// transiently: a repeat of a done request answers what was stored, not its own failure.
    async fn stored<T: Message + Default>(
        &self,
        key: &Key,
    ) -> Result<Option<Result<T, Status>>, Status> {
        // One statement: consistent without a transaction around it.
        let mut tx = self.db.single_read().await.map_err(db_status)?;
        let found = store::find(&mut tx, key).await.map_err(db_status)?;
        tx.rollback().await.map_err(db_status)?;
        found.map(|found| settle(key, found)).transpose()
    }

    /// Deletes up to one batch of expired keys; returns how many went.
    pub async fn collect_expired(&self) -> Result<u64, DbError> {
        let mut tx = self.db.begin().await?;
        let deleted = store::delete_expired(&mut tx, self.config.collect_batch).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// Runs the collector until shutdown: every interval, delete expired keys batch by batch.
    pub fn spawn_collector(&self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let layer = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.clone().requested() => return,
                    () = tokio::time::sleep(layer.config.collect_interval) => {}
                }
                loop {
                    match layer.collect_expired().await {
                        Ok(n) if n >= u64::from(layer.config.collect_batch) => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %status::error_chain(&e), "collecting expired idempotency keys failed");
                            break;
                        }
                    }
                }
            }
        })
    }
}

impl<T: Message + Default> Pending<T> {
    /// The transaction the effect runs in.
    pub fn tx(&mut self) -> &mut Tx {
        &mut self.tx
    }

    /// Stores a final answer with the effect and commits; a transient failure rolls everything
    /// back, so a retry runs again. If the key turns out to be remembered, the handler's changes
    /// are rolled back and the key's answer is returned instead.
    pub async fn finish(mut self, result: Result<T, Status>) -> Result<T, Status> {
        let answer = StoredAnswer::of(&result);
        if !is_final(answer.code) {
            self.tx.rollback().await.map_err(db_status)?;
            return match self.layer.stored(&self.key).await? {
                Some(stored) => stored,
                None => result,
            };
        }
        if answer.code != Code::Ok {
            // A refusal keeps none of the handler's changes, and is stored on its own.
            // Refusals are the rare path, so the common one pays no savepoint.
            self.tx.rollback().await.map_err(db_status)?;
            return self.layer.store_refusal(self.key, answer, result).await;
        }
        let recorded = store::record(&mut self.tx, &self.key, &answer, &self.layer.config)
            .await
            .map_err(db_status)?;
        if !recorded {
            self.tx.rollback().await.map_err(db_status)?;
            return self.layer.remembered(&self.key).await;
        }
        self.tx.commit().await.map_err(db_status)?;
        result
    }
}

impl<T: Message + Default> Execution<T> {
    /// Where a previous holder got to ([`STARTED`] for a new key).
    pub fn recovery_point(&self) -> &str {
        &self.recovery_point
    }

    /// True when the key was taken over from an earlier holder (crashed, or stopped by a
    /// transient failure), so the recovery point is where that holder got to.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// What the previous holder recorded with its recovery point.
    pub fn recovery_data(&self) -> Option<&[u8]> {
        self.recovery_data.as_deref()
    }

    /// A key for the external system that stays the same across retries, crashes and
    /// takeovers of this request.
    pub fn external_key(&self) -> String {
        self.key.external_key()
    }

    /// Records a recovery point in the caller's transaction, together with its business write,
    /// and extends the lock; refused with `ABORTED` if another caller took the key over.
    pub async fn checkpoint(
        &mut self,
        tx: &mut Tx,
        point: &str,
        data: Option<&[u8]>,
    ) -> Result<(), Status> {
        let fenced = store::advance(tx, &self.key, &self.lock_token, point, data, self.lock_ttl)
            .await
            .map_err(db_status)?;
        if !fenced {
            return Err(taken_over());
        }
        self.recovery_point = point.to_owned();
        self.recovery_data = data.map(<[u8]>::to_vec);
        Ok(())
    }

    /// Stores the final answer in the caller's transaction (with its business write) and
    /// commits it. A transient failure is not stored: the claim is unlocked so a retry resumes
    /// at once from the last recovery point.
    pub async fn finish(self, mut tx: Tx, result: Result<T, Status>) -> Result<T, Status> {
        let answer = StoredAnswer::of(&result);
        let fenced = if is_final(answer.code) {
            store::complete(&mut tx, &self.key, &self.lock_token, &answer).await
        } else {
            store::unlock(&mut tx, &self.key, &self.lock_token).await
        }
        .map_err(db_status)?;
        if !fenced {
            tx.rollback().await.map_err(db_status)?;
            return Err(taken_over());
        }
        tx.commit().await.map_err(db_status)?;
        result
    }
}

/// Runs a database-only effect once per key: runs `$body` with `$tx: &mut Tx` and stores its
/// `Result<T, Status>` with the key, or replays the key's stored answer if it has one.
///
/// ```ignore
/// let cart = idempotent!(self.idempotency, Key::new(SCOPE, &request)?, |tx| {
///     storage::add_item(tx, &request).await
/// })?;
/// ```
#[macro_export]
macro_rules! idempotent {
    ($layer:expr, $key:expr, |$tx:ident| $body:expr) => {{
        let mut pending = $layer.begin($key).await?;
        let result = {
            let $tx = pending.tx();
            $body
        };
        pending.finish(result).await
    }};
}

fn replays() -> &'static opentelemetry::metrics::Counter<u64> {
    static REPLAYS: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    REPLAYS.get_or_init(|| {
        let counter = crate::telemetry::meter()
            .u64_counter("idempotency.replays")
            .with_description("requests answered from a stored answer")
            .build();
        counter.add(0, &[]);
        counter
    })
}

fn settle<T: Message + Default>(key: &Key, found: Found) -> Result<Result<T, Status>, Status> {
    match found {
        Found::Done(answer) => {
            replays().add(1, &[opentelemetry::KeyValue::new("scope", key.scope())]);
            answer.replay()
        }
        Found::Reused => Err(Rejection::new(
            Code::InvalidArgument,
            KEY_REUSED,
            "request_id was already used for a different request",
        )
        .violation("request_id", "already used for a different request")
        .meta("scope", key.scope())
        .into_status()),
        Found::Locked => Err(Rejection::new(
            Code::Aborted,
            IN_PROGRESS,
            "a request with this request_id is still in progress; retry later",
        )
        .meta("scope", key.scope())
        .into_status()),
    }
}

fn taken_over() -> Status {
    Rejection::new(
        Code::Aborted,
        IN_PROGRESS,
        "the request was taken over by another attempt; retry",
    )
    .into_status()
}

fn new_token() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn db_status(e: DbError) -> Status {
    status::database(&e)
}

#[cfg(test)]
mod tests;
