//! Every SQL statement of the orchestrator: sagas, their steps, attempts and timeline. Writes by
//! the replica driving a saga are fenced by its lease and the saga's version.

use std::collections::HashMap;
use std::sync::LazyLock;

use checkout_kit::db::{Backend, DbError, Tx, shift_parameters, values_list};
use checkout_kit::idempotency::{
    Idempotency, Key, PgQuery, in_one_hand_off_sql, in_one_statement_sql,
};
use checkout_kit::on_backend;
use sqlx::Row;

/// A saga row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SagaRow {
    /// Saga id (the checkout id).
    pub saga_id: String,
    /// Saga type.
    pub saga_type: String,
    /// Cart.
    pub cart_id: String,
    /// Customer.
    pub customer_id: String,
    /// Status name.
    pub status: String,
    /// `forward` or `compensation`.
    pub direction: String,
    /// Current step (forward) or highest step left to compensate.
    pub step_index: i64,
    /// The saga's input (JSON).
    pub input: String,
    /// Step outputs by step name (JSON object).
    pub outputs: String,
    /// Failure reason code.
    pub failure_reason: String,
    /// Failure message.
    pub failure_message: String,
    /// Step that failed.
    pub failure_step: String,
    /// Cancel asked for.
    pub cancel_requested: bool,
    /// The pivot's first attempt was written: no cancel after this.
    pub pivot_started: bool,
    /// Epoch ms after which the saga compensates if still before the pivot.
    pub deadline_at: i64,
    /// Epoch ms when the saga is due to be driven.
    pub next_attempt_at: i64,
    /// Replica holding the lease.
    pub lease_owner: Option<String>,
    /// Epoch ms when the lease lapses.
    pub lease_expires_at: i64,
    /// Fencing version.
    pub version: i64,
    /// W3C trace context of the request that started the saga.
    pub trace_context: String,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub updated_at: i64,
}

/// A step row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct StepRow {
    /// Position.
    pub step_index: i64,
    /// Step name.
    pub name: String,
    /// Status name.
    pub status: String,
    /// Forward attempts counted.
    pub forward_attempts: i64,
    /// Compensation attempts counted.
    pub compensation_attempts: i64,
    /// Forward attempts made before the last operator retry.
    pub forward_retry_base: i64,
    /// Compensation attempts made before the last operator retry.
    pub compensation_retry_base: i64,
    /// The step's effect may exist.
    pub may_have_applied: bool,
}

/// An attempt row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct AttemptRow {
    /// Step position.
    pub step_index: i64,
    /// `forward` or `compensation`.
    pub direction: String,
    /// 1 for the first.
    pub number: i64,
    /// The command's request id.
    pub request_id: String,
    /// `in_flight` or an outcome name.
    pub outcome: String,
    /// gRPC code name.
    pub status_code: String,
    /// Status message.
    pub message: String,
    /// Epoch ms.
    pub started_at: i64,
    /// Epoch ms.
    pub ended_at: Option<i64>,
}

/// A timeline event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct EventRow {
    /// Position from 1.
    pub sequence: i64,
    /// Epoch ms.
    pub at: i64,
    /// What happened.
    pub kind: String,
    /// The step concerned.
    pub step: String,
    /// Details.
    pub message: String,
    /// The saga's status after the event.
    pub status: String,
}

/// Columns of [`StepRow`], [`AttemptRow`] and [`EventRow`] in field order (the checkout view
/// reads each row as a JSON array of them), and the order each list is read in.
const STEP_COLUMNS: &str = "step_index, name, status, forward_attempts, compensation_attempts, \
     forward_retry_base, compensation_retry_base, may_have_applied";
const STEP_ORDER: &str = "step_index";
const ATTEMPT_COLUMNS: &str = "step_index, direction, number, request_id, outcome, status_code, \
     message, started_at, ended_at";
const ATTEMPT_ORDER: &str = "started_at, step_index, direction, number";
const EVENT_COLUMNS: &str = "sequence, at, kind, step, message, status";
const EVENT_ORDER: &str = "sequence";

const SAGA_COLUMNS: &str = "saga_id, saga_type, cart_id, customer_id, status, direction, \
     step_index, input, outputs, failure_reason, failure_message, failure_step, \
     cancel_requested, pivot_started, deadline_at, next_attempt_at, lease_owner, \
     lease_expires_at, version, trace_context, created_at, updated_at";

/// A new saga with what is stored together with it.
#[derive(Debug, Clone, Copy)]
pub struct NewSaga<'a> {
    /// The saga row.
    pub saga: &'a SagaRow,
    /// Its steps.
    pub steps: &'a [StepRow],
    /// The first step's write-ahead attempt, if any.
    pub attempts: &'a [AttemptRow],
    /// The opening events of its timeline (numbered from 1).
    pub events: &'a [NewEvent],
    /// When the events happened.
    pub at: i64,
}

/// Inserts a new saga with its steps, the first step's write-ahead attempt (if any) and the
/// opening events of its timeline (numbered from 1). On Postgres that is one statement. On
/// SQLite it is one insert per table, sent to the writer connection's thread as one string
/// ([`new_saga_sqlite_sql`]).
pub async fn insert_saga(tx: &mut Tx, new: &NewSaga<'_>) -> Result<(), DbError> {
    let conn = match tx {
        Tx::Postgres(conn) => {
            return insert_saga_in_one_statement(conn, new).await;
        }
        Tx::Sqlite(conn) => conn,
    };
    let sql = new_saga_sqlite_sql(new);
    bind_new_saga_sqlite(sqlx::query(&sql), new)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A new saga's inserts on SQLite, one per table, as one string: sqlx runs a string's
/// statements in order, each statement's anonymous `?` taking the next values bound
/// ([`bind_new_saga_sqlite`]), so the four cost one hand-off to the writer's thread instead of
/// four.
fn new_saga_sqlite_sql(new: &NewSaga<'_>) -> String {
    let mut sql = format!(
        "INSERT INTO sagas ({SAGA_COLUMNS}) VALUES {}",
        values_list(Backend::Sqlite, 1, 22)
    );
    for (table, columns, count, width) in [
        ("saga_steps", STEP_INSERT_COLUMNS, new.steps.len(), 9),
        (
            "saga_attempts",
            ATTEMPT_INSERT_COLUMNS,
            new.attempts.len(),
            10,
        ),
        ("saga_events", EVENT_INSERT_COLUMNS, new.events.len(), 7),
    ] {
        if count > 0 {
            sql += &format!(
                "; INSERT INTO {table} ({columns}) VALUES {}",
                values_list(Backend::Sqlite, count, width)
            );
        }
    }
    sql
}

/// Binds the values of [`new_saga_sqlite_sql`]'s statements.
fn bind_new_saga_sqlite<'q>(
    q: Query<'q, sqlx::Sqlite>,
    new: &'q NewSaga<'_>,
) -> Query<'q, sqlx::Sqlite> {
    let mut q = bind_saga(q, new.saga);
    for r in new.steps {
        q = bind_step(q, &new.saga.saga_id, r);
    }
    for a in new.attempts {
        q = bind_attempt(q, &new.saga.saga_id, a);
    }
    for (sequence, e) in (1..).zip(new.events) {
        q = bind_event(q, &new.saga.saga_id, sequence, new.at, e);
    }
    q
}

/// The columns a step is written with, in the order [`bind_step`] binds them.
const STEP_INSERT_COLUMNS: &str = "saga_id, step_index, name, status, forward_attempts, \
     compensation_attempts, forward_retry_base, compensation_retry_base, may_have_applied";
/// The columns an attempt is written with, in the order [`bind_attempt`] binds them.
const ATTEMPT_INSERT_COLUMNS: &str = "saga_id, step_index, direction, number, request_id, \
     outcome, status_code, message, started_at, ended_at";
/// The columns an event is written with, in the order [`bind_event`] binds them.
const EVENT_INSERT_COLUMNS: &str = "saga_id, sequence, at, kind, step, message, status";

/// A statement with its values bound so far, on either backend.
type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>;

/// Binds a step row, after its saga id, in [`STEP_INSERT_COLUMNS`] order.
fn bind_step<'q, DB: sqlx::Database>(
    q: Query<'q, DB>,
    saga_id: &'q str,
    r: &'q StepRow,
) -> Query<'q, DB>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(saga_id)
        .bind(r.step_index)
        .bind(r.name.as_str())
        .bind(r.status.as_str())
        .bind(r.forward_attempts)
        .bind(r.compensation_attempts)
        .bind(r.forward_retry_base)
        .bind(r.compensation_retry_base)
        .bind(r.may_have_applied)
}

/// Binds an attempt row, after its saga id, in [`ATTEMPT_INSERT_COLUMNS`] order.
fn bind_attempt<'q, DB: sqlx::Database>(
    q: Query<'q, DB>,
    saga_id: &'q str,
    a: &'q AttemptRow,
) -> Query<'q, DB>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(saga_id)
        .bind(a.step_index)
        .bind(a.direction.as_str())
        .bind(a.number)
        .bind(a.request_id.as_str())
        .bind(a.outcome.as_str())
        .bind(a.status_code.as_str())
        .bind(a.message.as_str())
        .bind(a.started_at)
        .bind(a.ended_at)
}

/// Binds an event, after its saga id and its number (in an append: its place among the saga's
/// events in the statement), in [`EVENT_INSERT_COLUMNS`] order.
fn bind_event<'q, DB: sqlx::Database>(
    q: Query<'q, DB>,
    saga_id: &'q str,
    sequence: i64,
    at: i64,
    e: &'q NewEvent,
) -> Query<'q, DB>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(saga_id)
        .bind(sequence)
        .bind(at)
        .bind(e.kind)
        .bind(e.step.as_str())
        .bind(e.message.as_str())
        .bind(e.status.as_str())
}

/// Binds a saga row's columns in [`SAGA_COLUMNS`] order (`$1` to `$22` on Postgres).
fn bind_saga<'q, DB: sqlx::Database>(q: Query<'q, DB>, s: &'q SagaRow) -> Query<'q, DB>
where
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(&s.saga_id)
        .bind(&s.saga_type)
        .bind(&s.cart_id)
        .bind(&s.customer_id)
        .bind(&s.status)
        .bind(&s.direction)
        .bind(s.step_index)
        .bind(&s.input)
        .bind(&s.outputs)
        .bind(&s.failure_reason)
        .bind(&s.failure_message)
        .bind(&s.failure_step)
        .bind(s.cancel_requested)
        .bind(s.pivot_started)
        .bind(s.deadline_at)
        .bind(s.next_attempt_at)
        .bind(&s.lease_owner)
        .bind(s.lease_expires_at)
        .bind(s.version)
        .bind(&s.trace_context)
        .bind(s.created_at)
        .bind(s.updated_at)
}

/// A new saga on Postgres: the saga insert and, as data-modifying CTEs joined to its result,
/// the steps, attempts and events inserts, each table's rows as one array per column. The `WITH`
/// list without its `WITH`, and the final statement, its parameters numbered from `$1`.
static NEW_SAGA_POSTGRES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "s AS ( \
           INSERT INTO sagas ({SAGA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) \
           RETURNING saga_id \
         ), steps AS ( \
           INSERT INTO saga_steps (saga_id, step_index, name, status, forward_attempts, \
             compensation_attempts, forward_retry_base, compensation_retry_base, \
             may_have_applied) \
           SELECT s.saga_id, x.* FROM s, UNNEST($23::int8[], $24::text[], $25::text[], \
             $26::int8[], $27::int8[], $28::int8[], $29::int8[], $30::bool[]) AS x \
         ), attempts AS ( \
           INSERT INTO saga_attempts (saga_id, step_index, direction, number, request_id, \
             outcome, status_code, message, started_at, ended_at) \
           SELECT s.saga_id, y.* FROM s, UNNEST($31::int8[], $32::text[], $33::int8[], \
             $34::text[], $35::text[], $36::text[], $37::text[], $38::int8[], $39::int8[]) AS y \
         ) \
         INSERT INTO saga_events (saga_id, sequence, at, kind, step, message, status) \
         SELECT s.saga_id, z.sequence, $40::int8, z.kind, z.step, z.message, z.status \
         FROM s, UNNEST($41::text[], $42::text[], $43::text[], $44::text[]) \
           WITH ORDINALITY AS z(kind, step, message, status, sequence)"
    )
});

/// [`NEW_SAGA_POSTGRES`] as a statement of its own.
static INSERT_SAGA_POSTGRES: LazyLock<String> =
    LazyLock::new(|| format!("WITH {}", NEW_SAGA_POSTGRES.as_str()));

/// [`NEW_SAGA_POSTGRES`] after the request's idempotency key, which takes `$1`–`$9`.
static START_POSTGRES: LazyLock<String> =
    LazyLock::new(|| in_one_statement_sql(&shift_parameters(&NEW_SAGA_POSTGRES, 9)));

/// Binds a new saga's values to [`NEW_SAGA_POSTGRES`] (after whatever `q` has bound).
fn bind_new_saga<'q>(q: PgQuery<'q>, new: &NewSaga<'q>) -> PgQuery<'q> {
    bind_saga(q, new.saga)
        .bind(column(new.steps, |r| r.step_index))
        .bind(column(new.steps, |r| r.name.as_str()))
        .bind(column(new.steps, |r| r.status.as_str()))
        .bind(column(new.steps, |r| r.forward_attempts))
        .bind(column(new.steps, |r| r.compensation_attempts))
        .bind(column(new.steps, |r| r.forward_retry_base))
        .bind(column(new.steps, |r| r.compensation_retry_base))
        .bind(column(new.steps, |r| r.may_have_applied))
        .bind(column(new.attempts, |a| a.step_index))
        .bind(column(new.attempts, |a| a.direction.as_str()))
        .bind(column(new.attempts, |a| a.number))
        .bind(column(new.attempts, |a| a.request_id.as_str()))
        .bind(column(new.attempts, |a| a.outcome.as_str()))
        .bind(column(new.attempts, |a| a.status_code.as_str()))
        .bind(column(new.attempts, |a| a.message.as_str()))
        .bind(column(new.attempts, |a| a.started_at))
        .bind(column(new.attempts, |a| a.ended_at))
        .bind(new.at)
        .bind(column(new.events, |e| e.kind))
        .bind(column(new.events, |e| e.step.as_str()))
        .bind(column(new.events, |e| e.message.as_str()))
        .bind(column(new.events, |e| e.status.as_str()))
}

async fn insert_saga_in_one_statement(
    conn: &mut checkout_kit::db::PgTx,
    new: &NewSaga<'_>,
) -> Result<(), DbError> {
    bind_new_saga(sqlx::query(INSERT_SAGA_POSTGRES.as_str()), new)
        .execute(&mut **conn)
        .await?;
    Ok(())
}

/// Stores a new saga as [`insert_saga`] does, together with the StartCheckout request's key
/// and answer, in one go ([`Idempotency::in_one_statement`]): one Postgres statement outside
/// any transaction, or one string of SQLite statements. False when nothing was written, since
/// the key is known already; the request then goes the usual way.
pub async fn start_in_one_statement(
    idempotency: &Idempotency,
    key: &Key,
    answer: &checkout_proto::checkout::StartCheckoutResponse,
    new: &NewSaga<'_>,
) -> Result<bool, tonic::Status> {
    let sqlite = in_one_hand_off_sql(&new_saga_sqlite_sql(new));
    idempotency
        .in_one_statement(
            key,
            answer,
            (START_POSTGRES.as_str(), |q| bind_new_saga(q, new)),
            (sqlite.as_str(), |q| bind_new_saga_sqlite(q, new)),
        )
        .await
}

/// A saga.
pub async fn saga(tx: &mut Tx, saga_id: &str) -> Result<Option<SagaRow>, DbError> {
    let sql = format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE saga_id = $1");
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(saga_id).fetch_optional(&mut *conn).await?
    }))
}

/// A saga's steps in order.
pub async fn steps(tx: &mut Tx, saga_id: &str) -> Result<Vec<StepRow>, DbError> {
    let sql =
        format!("SELECT {STEP_COLUMNS} FROM saga_steps WHERE saga_id = $1 ORDER BY {STEP_ORDER}");
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql)
        .bind(saga_id)
        .fetch_all(&mut *conn)
        .await?
    }))
}

/// A saga's attempts in order.
pub async fn attempts(tx: &mut Tx, saga_id: &str) -> Result<Vec<AttemptRow>, DbError> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM saga_attempts WHERE saga_id = $1 ORDER BY {ATTEMPT_ORDER}"
    );
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql)
        .bind(saga_id)
        .fetch_all(&mut *conn)
        .await?
    }))
}

/// A saga's events after `after`, in order.
pub async fn events_after(
    tx: &mut Tx,
    saga_id: &str,
    after: i64,
) -> Result<Vec<EventRow>, DbError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM saga_events WHERE saga_id = $1 AND sequence > $2 \
         ORDER BY {EVENT_ORDER}"
    );
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql)
        .bind(saga_id)
        .bind(after)
        .fetch_all(&mut *conn)
        .await?
    }))
}

/// A saga with everything its checkout view shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaView {
    /// The saga.
    pub saga: SagaRow,
    /// Its steps in order.
    pub steps: Vec<StepRow>,
    /// Its attempts in order.
    pub attempts: Vec<AttemptRow>,
    /// Its timeline in order.
    pub events: Vec<EventRow>,
}

/// The saga row with its steps, attempts and events as JSON arrays of rows, in the orders of
/// [`steps`], [`attempts`] and [`events_after`].
#[derive(sqlx::FromRow)]
struct SagaViewRow {
    #[sqlx(flatten)]
    saga: SagaRow,
    steps: String,
    attempts: String,
    events: String,
}

/// One statement for the whole view, so a read needs no transaction to be consistent (see
/// `Db::single_read`). Built once per backend: it is read on every checkout's answer.
fn view_sql(backend: Backend) -> &'static str {
    static SQLITE: LazyLock<String> = LazyLock::new(|| build_view_sql(Backend::Sqlite));
    static POSTGRES: LazyLock<String> = LazyLock::new(|| build_view_sql(Backend::Postgres));
    match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    }
}

/// The backends name their JSON functions differently. Each row is a JSON array of its
/// columns, which serde reads into the row's fields in order; SQLite stores booleans as 0/1, so
/// there they are turned into JSON's own.
fn build_view_sql(backend: Backend) -> String {
    let (group, array) = match backend {
        Backend::Sqlite => ("json_group_array", "json_array"),
        Backend::Postgres => ("json_agg", "json_build_array"),
    };
    let agg = |columns: &str, table: &str, order: &str| {
        let list = format!("{group}({array}({columns}) ORDER BY {order})");
        // Postgres aggregates no rows to NULL, SQLite to `[]`.
        let list = match backend {
            Backend::Sqlite => list,
            Backend::Postgres => format!("COALESCE({list}, '[]')::text"),
        };
        format!("(SELECT {list} FROM {table} WHERE {table}.saga_id = sagas.saga_id)")
    };
    let step_columns = match backend {
        Backend::Sqlite => STEP_COLUMNS.replace(
            "may_have_applied",
            "json(CASE WHEN may_have_applied THEN 'true' ELSE 'false' END)",
        ),
        Backend::Postgres => STEP_COLUMNS.to_owned(),
    };
    format!(
        "SELECT {SAGA_COLUMNS}, {steps} AS steps, {attempts} AS attempts, {events} AS events \
         FROM sagas WHERE saga_id = $1",
        steps = agg(&step_columns, "saga_steps", STEP_ORDER),
        attempts = agg(ATTEMPT_COLUMNS, "saga_attempts", ATTEMPT_ORDER),
        events = agg(EVENT_COLUMNS, "saga_events", EVENT_ORDER),
    )
}

fn json_rows<T: serde::de::DeserializeOwned>(json: &str) -> Result<Vec<T>, DbError> {
    serde_json::from_str(json).map_err(|e| DbError::Query(sqlx::Error::Decode(Box::new(e))))
}

/// A saga and everything its checkout view shows, in one statement.
pub async fn saga_view(tx: &mut Tx, saga_id: &str) -> Result<Option<SagaView>, DbError> {
    let sql = view_sql(tx.backend());
    let row: Option<SagaViewRow> = on_backend!(tx, conn => {
        sqlx::query_as(sql).bind(saga_id).fetch_optional(&mut *conn).await?
    });
    row.map(|row| {
        Ok(SagaView {
            steps: json_rows(&row.steps)?,
            attempts: json_rows(&row.attempts)?,
            events: json_rows(&row.events)?,
            saga: row.saga,
        })
    })
    .transpose()
}

/// A timeline event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// What happened.
    pub kind: &'static str,
    /// The step concerned.
    pub step: String,
    /// Details.
    pub message: String,
    /// The saga's status after the event.
    pub status: String,
}

/// A fenced write of a saga's mutable columns.
#[derive(Debug, Clone, Copy)]
pub struct SagaSave<'a> {
    /// The new columns; `version` is the one the writer holds.
    pub saga: &'a SagaRow,
    /// The replica that must hold the lease.
    pub owner: &'a str,
    /// The lease's new end.
    pub lease_expires_at: i64,
    /// Refuse the write if a cancel was asked for (the pivot's write-ahead).
    pub require_no_cancel: bool,
    /// Give the lease back.
    pub release: bool,
}

/// One saga's share of a journal batch: its fenced write and what is stored with it.
#[derive(Debug, Clone)]
pub struct BatchWrite<'a> {
    /// The fenced write of the saga row.
    pub save: SagaSave<'a>,
    /// Steps whose state changed.
    pub steps: &'a [StepRow],
    /// Attempts started or finished.
    pub attempts: Vec<&'a AttemptRow>,
    /// Timeline events, in order.
    pub events: &'a [NewEvent],
}

/// Stores a journal batch: each saga's fenced write and, only for the sagas it wrote, their
/// steps, attempts and events (stamped `at`). Returns the sagas written, with whether a cancel
/// was asked for by now; those missing were fenced off. Atomic: run it in a write transaction,
/// or on Postgres in a [`Db::single_write`](checkout_kit::db::Db::single_write), where it is
/// one statement.
pub async fn save_batch(
    tx: &mut Tx,
    batch: &[BatchWrite<'_>],
    at: i64,
) -> Result<HashMap<String, bool>, DbError> {
    if let Tx::Postgres(conn) = tx {
        return save_batch_in_one_statement(conn, batch, at).await;
    }
    if let Some(written) = save_whole_batch_in_one_hand_off(tx, batch, at).await? {
        return Ok(written);
    }
    // A saga was fenced off: its rows must not be stored.
    let saves: Vec<SagaSave<'_>> = batch.iter().map(|w| w.save).collect();
    let written: HashMap<String, bool> = save_sagas(tx, &saves).await?.into_iter().collect();
    // A fenced-off write stores nothing else either.
    let kept: Vec<&BatchWrite<'_>> = batch
        .iter()
        .filter(|w| written.contains_key(&w.save.saga.saga_id))
        .collect();
    let rows = BatchRows::of(kept.into_iter());
    let mut sql = String::new();
    rows.push_statements(&mut sql);
    if sql.is_empty() {
        return Ok(written);
    }
    // Postgres returned above, with its one statement.
    if let Tx::Sqlite(conn) = tx {
        rows.bind(sqlx::query(&sql), at).execute(&mut *conn).await?;
    }
    Ok(written)
}

/// The steps, attempts and events of a journal batch's sagas, written on SQLite as one string of
/// statements (sqlx runs a string's statements in order, each `?` taking the next value bound):
/// one hand-off to the writer connection's thread instead of one per table.
struct BatchRows<'a> {
    steps: Vec<(&'a str, &'a StepRow)>,
    attempts: Vec<(&'a str, &'a AttemptRow)>,
    events: Vec<(&'a str, &'a NewEvent)>,
}

impl<'a> BatchRows<'a> {
    /// The rows of these sagas' writes.
    fn of<'w: 'a>(writes: impl Iterator<Item = &'a BatchWrite<'w>> + Clone) -> Self {
        Self {
            steps: writes
                .clone()
                .flat_map(|w| w.steps.iter().map(|s| (saga_id(w), s)))
                .collect(),
            attempts: writes
                .clone()
                .flat_map(|w| w.attempts.iter().map(|a| (saga_id(w), *a)))
                .collect(),
            events: writes
                .flat_map(|w| w.events.iter().map(|e| (saga_id(w), e)))
                .collect(),
        }
    }

    /// Adds the statements (none for a table without rows) to `sql`.
    fn push_statements(&self, sql: &mut String) {
        for run in runs(Backend::Sqlite, &self.steps) {
            push_statement(sql, &save_steps_sql(Backend::Sqlite, run.len()));
        }
        for run in runs(Backend::Sqlite, &self.attempts) {
            push_statement(sql, &record_attempts_sql(Backend::Sqlite, run.len()));
        }
        for run in runs(Backend::Sqlite, &self.events) {
            push_statement(sql, &append_events_sql(Backend::Sqlite, run.len()));
        }
    }

    /// Binds the values of [`BatchRows::push_statements`]'s statements, events stamped `at`.
    fn bind<'q>(&'q self, mut q: Query<'q, sqlx::Sqlite>, at: i64) -> Query<'q, sqlx::Sqlite> {
        for (saga_id, step) in &self.steps {
            q = bind_step(q, saga_id, step);
        }
        for (saga_id, a) in &self.attempts {
            q = bind_attempt(q, saga_id, a);
        }
        for run in runs(Backend::Sqlite, &self.events) {
            for ((saga_id, e), n) in run.iter().zip(event_ordinals(run)) {
                q = bind_event(q, saga_id, n, at, e);
            }
        }
        q
    }
}

/// The journal batch on SQLite as one string of statements, one hand-off to the writer
/// connection's thread: every saga's steps, attempts and events, then the fenced saga updates,
/// all behind a savepoint. `None` when a saga was fenced off, or a statement failed: the
/// savepoint is rolled back, and the caller writes the sagas first and the rows of those
/// written only. A fenced-off write is the rare case (a lease lost, a cancel before the pivot),
/// so the common one pays no second hand-off for learning which sagas were written.
async fn save_whole_batch_in_one_hand_off(
    tx: &mut Tx,
    batch: &[BatchWrite<'_>],
    at: i64,
) -> Result<Option<HashMap<String, bool>>, DbError> {
    let Tx::Sqlite(conn) = tx else {
        return Ok(None);
    };
    let rows = BatchRows::of(batch.iter());
    let saves: Vec<SagaSave<'_>> = batch.iter().map(|w| w.save).collect();
    // The savepoint is not released when all went well: the transaction's COMMIT ends it.
    let mut sql = String::from("SAVEPOINT journal");
    rows.push_statements(&mut sql);
    // As in `save_saga_run`, the writes that keep the indexed columns first; the second update
    // finds only the others, since a saga the first one wrote is past its version now.
    for run in runs(Backend::Sqlite, &saves) {
        for columns in [SagaColumns::KeepingIndexed, SagaColumns::All] {
            push_statement(
                &mut sql,
                &update_sagas_sql(Backend::Sqlite, run.len(), columns),
            );
        }
    }
    let mut q = rows.bind(sqlx::query(&sql), at);
    for run in runs(Backend::Sqlite, &saves) {
        for _ in 0..2 {
            for w in run {
                q = bind_save(q, w);
            }
        }
    }
    let written = match q.fetch_all(&mut *conn).await {
        Ok(returned) => returned
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<HashMap<String, bool>, sqlx::Error>>()?,
        // A fenced-off saga's rows may break a constraint the written ones do not: the slow
        // path answers for it.
        Err(e) if e.as_database_error().is_some() => HashMap::new(),
        Err(e) => return Err(e.into()),
    };
    if written.len() == batch.len() {
        return Ok(Some(written));
    }
    sqlx::query("ROLLBACK TO journal; RELEASE journal")
        .execute(&mut *conn)
        .await?;
    Ok(None)
}

/// Adds a statement to a string of statements run by one call.
fn push_statement(sql: &mut String, statement: &str) {
    if !sql.is_empty() {
        sql.push_str("; ");
    }
    sql.push_str(statement);
}

fn saga_id<'a>(w: &BatchWrite<'a>) -> &'a str {
    w.save.saga.saga_id.as_str()
}

/// The journal batch on Postgres: one statement whose data-modifying parts share the fenced
/// saga update's result, each table's rows passed as one array per column, so any batch is the
/// same prepared statement and one round trip, and needs no `BEGIN` or `COMMIT`. Its timeline
/// numbers come from the statement's snapshot, taken before the saga update waits for a row
/// another transaction holds; when that transaction appended events too (a cancel), the
/// numbers collide, the primary key refuses the whole statement, and the journal's retry reads
/// the timeline afresh.
///
/// The saga and step updates match their rows in a form Postgres cannot hash or merge-join
/// (`= ANY` of a one-element array, `IS NOT DISTINCT FROM`), so their only plan is a nested
/// loop over the primary key. With plain equalities the planner hash-joined a sequential scan
/// of `sagas` while the table was young and unanalysed, and the connection's cached plan kept
/// that scan as the table grew: at c=1 a batch averaged 0.63 ms over a run's first thousand
/// and 1.17 ms over its seventh.
const SAVE_BATCH_POSTGRES: &str = "\
    WITH w AS ( \
      SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
        $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bool[], $12::int8[], \
        $13::int8[], $14::int8[], $15::bool[], $16::bool[]) \
        AS w(saga_id, version, owner, status, direction, step_index, outputs, failure_reason, \
          failure_message, failure_step, pivot_started, next_attempt_at, lease_expires_at, \
          updated_at, require_no_cancel, release) \
    ), s AS ( \
      UPDATE sagas SET status = w.status, direction = w.direction, step_index = w.step_index, \
        outputs = w.outputs, failure_reason = w.failure_reason, \
        failure_message = w.failure_message, failure_step = w.failure_step, \
        pivot_started = w.pivot_started, next_attempt_at = w.next_attempt_at, \
        lease_owner = CASE WHEN w.release THEN NULL ELSE sagas.lease_owner END, \
        lease_expires_at = CASE WHEN w.release THEN 0 ELSE w.lease_expires_at END, \
        version = sagas.version + 1, updated_at = w.updated_at \
      FROM w \
      WHERE sagas.saga_id = ANY(ARRAY[w.saga_id]) \
        AND sagas.version IS NOT DISTINCT FROM w.version \
        AND sagas.lease_owner IS NOT DISTINCT FROM w.owner \
        AND (sagas.cancel_requested = FALSE OR w.require_no_cancel = FALSE) \
      RETURNING sagas.saga_id, sagas.cancel_requested \
    ), steps AS ( \
      UPDATE saga_steps SET status = x.status, forward_attempts = x.forward_attempts, \
        compensation_attempts = x.compensation_attempts, \
        forward_retry_base = x.forward_retry_base, \
        compensation_retry_base = x.compensation_retry_base, \
        may_have_applied = x.may_have_applied \
      FROM UNNEST($17::text[], $18::int8[], $19::text[], $20::int8[], $21::int8[], \
        $22::int8[], $23::int8[], $24::bool[]) \
        AS x(saga_id, step_index, status, forward_attempts, compensation_attempts, \
          forward_retry_base, compensation_retry_base, may_have_applied) \
      WHERE saga_steps.saga_id = ANY(ARRAY[x.saga_id]) \
        AND saga_steps.step_index IS NOT DISTINCT FROM x.step_index \
        AND x.saga_id IN (SELECT saga_id FROM s) \
    ), attempts AS ( \
      INSERT INTO saga_attempts (saga_id, step_index, direction, number, request_id, \
        outcome, status_code, message, started_at, ended_at) \
      SELECT * FROM UNNEST($25::text[], $26::int8[], $27::text[], $28::int8[], $29::text[], \
        $30::text[], $31::text[], $32::text[], $33::int8[], $34::int8[]) \
        AS y(saga_id, step_index, direction, number, request_id, outcome, status_code, \
          message, started_at, ended_at) \
      WHERE y.saga_id IN (SELECT saga_id FROM s) \
      ON CONFLICT (saga_id, step_index, direction, number) DO UPDATE SET \
        outcome = excluded.outcome, status_code = excluded.status_code, \
        message = excluded.message, ended_at = excluded.ended_at \
    ), events AS ( \
      INSERT INTO saga_events (saga_id, sequence, at, kind, step, message, status) \
      SELECT z.saga_id, \
        COALESCE((SELECT MAX(e.sequence) FROM saga_events e WHERE e.saga_id = z.saga_id), 0) \
          + z.ordinal, \
        $35::int8, z.kind, z.step, z.message, z.status \
      FROM UNNEST($36::text[], $37::int8[], $38::text[], $39::text[], $40::text[], \
        $41::text[]) AS z(saga_id, ordinal, kind, step, message, status) \
      WHERE z.saga_id IN (SELECT saga_id FROM s) \
    ) \
    SELECT saga_id, cancel_requested FROM s";

async fn save_batch_in_one_statement(
    conn: &mut checkout_kit::db::PgTx,
    batch: &[BatchWrite<'_>],
    at: i64,
) -> Result<HashMap<String, bool>, DbError> {
    let saves: Vec<&SagaSave<'_>> = batch.iter().map(|w| &w.save).collect();
    let steps: Vec<(&str, &StepRow)> = batch
        .iter()
        .flat_map(|w| w.steps.iter().map(move |s| (saga_id(w), s)))
        .collect();
    let attempts: Vec<(&str, &AttemptRow)> = batch
        .iter()
        .flat_map(|w| w.attempts.iter().map(move |a| (saga_id(w), *a)))
        .collect();
    // The nth event of a saga goes n after the saga's last.
    let events: Vec<(&str, i64, &NewEvent)> = batch
        .iter()
        .flat_map(|w| (1..).zip(w.events).map(move |(n, e)| (saga_id(w), n, e)))
        .collect();
    let rows = sqlx::query_as::<_, (String, bool)>(SAVE_BATCH_POSTGRES)
        .bind(column(&saves, |w| w.saga.saga_id.as_str()))
        .bind(column(&saves, |w| w.saga.version))
        .bind(column(&saves, |w| w.owner))
        .bind(column(&saves, |w| w.saga.status.as_str()))
        .bind(column(&saves, |w| w.saga.direction.as_str()))
        .bind(column(&saves, |w| w.saga.step_index))
        .bind(column(&saves, |w| w.saga.outputs.as_str()))
        .bind(column(&saves, |w| w.saga.failure_reason.as_str()))
        .bind(column(&saves, |w| w.saga.failure_message.as_str()))
        .bind(column(&saves, |w| w.saga.failure_step.as_str()))
        .bind(column(&saves, |w| w.saga.pivot_started))
        .bind(column(&saves, |w| w.saga.next_attempt_at))
        .bind(column(&saves, |w| w.lease_expires_at))
        .bind(column(&saves, |w| w.saga.updated_at))
        .bind(column(&saves, |w| w.require_no_cancel))
        .bind(column(&saves, |w| w.release))
        .bind(column(&steps, |(id, _)| *id))
        .bind(column(&steps, |(_, s)| s.step_index))
        .bind(column(&steps, |(_, s)| s.status.as_str()))
        .bind(column(&steps, |(_, s)| s.forward_attempts))
        .bind(column(&steps, |(_, s)| s.compensation_attempts))
        .bind(column(&steps, |(_, s)| s.forward_retry_base))
        .bind(column(&steps, |(_, s)| s.compensation_retry_base))
        .bind(column(&steps, |(_, s)| s.may_have_applied))
        .bind(column(&attempts, |(id, _)| *id))
        .bind(column(&attempts, |(_, a)| a.step_index))
        .bind(column(&attempts, |(_, a)| a.direction.as_str()))
        .bind(column(&attempts, |(_, a)| a.number))
        .bind(column(&attempts, |(_, a)| a.request_id.as_str()))
        .bind(column(&attempts, |(_, a)| a.outcome.as_str()))
        .bind(column(&attempts, |(_, a)| a.status_code.as_str()))
        .bind(column(&attempts, |(_, a)| a.message.as_str()))
        .bind(column(&attempts, |(_, a)| a.started_at))
        .bind(column(&attempts, |(_, a)| a.ended_at))
        .bind(at)
        .bind(column(&events, |(id, ..)| *id))
        .bind(column(&events, |(_, n, _)| *n))
        .bind(column(&events, |(.., e)| e.kind))
        .bind(column(&events, |(.., e)| e.step.as_str()))
        .bind(column(&events, |(.., e)| e.message.as_str()))
        .bind(column(&events, |(.., e)| e.status.as_str()))
        .fetch_all(&mut **conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// One column of `rows`, as the array a Postgres `UNNEST` takes.
fn column<'a, T, U>(rows: &'a [T], value: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(value).collect()
}

/// Splits rows into the runs the multi-row statements take, at most 64 rows each. SQLite's
/// writes all go through one writer connection whose statement cache has room for a shape of
/// every size, so a batch is one statement per table (and a journal batch sends its steps',
/// attempts' and events' statements as one string: each string is a hand-off to the
/// connection's thread). Postgres runs them on pooled connections, each with its own cache and
/// server-side prepared statements, so there the runs are 64, 32, …, 1 rows: few shapes (its
/// journal batches do not come here: they are one statement of arrays, [`save_batch`]).
fn runs<T>(backend: Backend, mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = match backend {
            Backend::Sqlite => rows.len().min(64),
            Backend::Postgres => 1 << rows.len().min(64).ilog2(),
        };
        let (run, rest) = rows.split_at(size);
        rows = rest;
        Some(run)
    })
}

/// Writes many sagas' mutable columns in one statement, each only if its writer still holds it
/// at its version (and, for the pivot's write-ahead, no cancel came first); extends each lease,
/// or gives it back. Returns the sagas written, with whether a cancel was asked for by now;
/// those missing were fenced off.
pub async fn save_sagas(
    tx: &mut Tx,
    saves: &[SagaSave<'_>],
) -> Result<Vec<(String, bool)>, DbError> {
    let mut written = Vec::with_capacity(saves.len());
    for run in runs(tx.backend(), saves) {
        written.extend(save_saga_run(tx, run).await?);
    }
    Ok(written)
}

async fn save_saga_run(
    tx: &mut Tx,
    saves: &[SagaSave<'_>],
) -> Result<Vec<(String, bool)>, DbError> {
    // Most writes keep the saga's status and next attempt: the statement that leaves those two
    // columns out of its SET goes first. SQLite rewrites the entries of every index on a column
    // a statement sets, changed or not, and three of the sagas' indexes hold the status (one
    // the next attempt too). Postgres compares the values and adds no index entry for an
    // unchanged one, so there the second statement would be a round trip for nothing.
    if tx.backend() == Backend::Postgres {
        return update_saga_run(tx, saves, SagaColumns::All).await;
    }
    let mut written = update_saga_run(tx, saves, SagaColumns::KeepingIndexed).await?;
    if written.len() < saves.len() {
        // Those whose status or next attempt changes, and those fenced off (which stay so).
        let rest: Vec<SagaSave<'_>> = saves
            .iter()
            .filter(|w| !written.iter().any(|(id, _)| *id == w.saga.saga_id))
            .copied()
            .collect();
        written.extend(update_saga_run(tx, &rest, SagaColumns::All).await?);
    }
    Ok(written)
}

/// Which of a saga's mutable columns a fenced update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SagaColumns {
    /// All of them.
    All,
    /// All but the indexed `status` and `next_attempt_at`, for sagas where both keep their
    /// values (the others are left alone, as if fenced off).
    KeepingIndexed,
}

/// The fenced update of `rows` sagas' `columns`, their values bound by [`bind_save`].
fn update_sagas_sql(backend: Backend, rows: usize, columns: SagaColumns) -> String {
    let (indexed, unchanged) = match columns {
        SagaColumns::All => ("status = v.column4, next_attempt_at = v.column12, ", ""),
        SagaColumns::KeepingIndexed => (
            "",
            "AND sagas.status = v.column4 AND sagas.next_attempt_at = v.column12 ",
        ),
    };
    // VALUES columns are named column1, column2, … on both backends.
    format!(
        "UPDATE sagas SET {indexed}direction = v.column5, step_index = v.column6, \
           outputs = v.column7, failure_reason = v.column8, failure_message = v.column9, \
           failure_step = v.column10, pivot_started = v.column11, \
           lease_owner = CASE WHEN v.column16 THEN NULL ELSE sagas.lease_owner END, \
           lease_expires_at = CASE WHEN v.column16 THEN 0 ELSE v.column13 END, \
           version = sagas.version + 1, updated_at = v.column14 \
         FROM (VALUES {}) AS v \
         WHERE sagas.saga_id = v.column1 AND sagas.version = v.column2 \
           AND sagas.lease_owner = v.column3 \
           AND (sagas.cancel_requested = FALSE OR v.column15 = FALSE) {unchanged}\
         RETURNING sagas.saga_id, sagas.cancel_requested",
        values_list(backend, rows, 16)
    )
}

/// Binds a fenced saga write's sixteen values in [`update_sagas_sql`] order.
fn bind_save<'q, DB: sqlx::Database>(q: Query<'q, DB>, w: &SagaSave<'q>) -> Query<'q, DB>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let s = w.saga;
    q.bind(&s.saga_id)
        .bind(s.version)
        .bind(w.owner)
        .bind(&s.status)
        .bind(&s.direction)
        .bind(s.step_index)
        .bind(&s.outputs)
        .bind(&s.failure_reason)
        .bind(&s.failure_message)
        .bind(&s.failure_step)
        .bind(s.pivot_started)
        .bind(s.next_attempt_at)
        .bind(w.lease_expires_at)
        .bind(s.updated_at)
        .bind(w.require_no_cancel)
        .bind(w.release)
}

async fn update_saga_run(
    tx: &mut Tx,
    saves: &[SagaSave<'_>],
    columns: SagaColumns,
) -> Result<Vec<(String, bool)>, DbError> {
    let sql = update_sagas_sql(tx.backend(), saves.len(), columns);
    Ok(on_backend!(tx, conn => {
        let mut q = sqlx::query(&sql);
        for w in saves {
            q = bind_save(q, w);
        }
        q.fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?
    }))
}

/// Writes steps' state, of one saga or many, in one statement.
pub async fn save_steps(tx: &mut Tx, steps: &[(&str, &StepRow)]) -> Result<(), DbError> {
    for run in runs(tx.backend(), steps) {
        save_step_run(tx, run).await?;
    }
    Ok(())
}

/// The update of `rows` steps' state, their values bound by [`bind_step`].
fn save_steps_sql(backend: Backend, rows: usize) -> String {
    // The name (column 3) is not changed.
    format!(
        "UPDATE saga_steps SET status = v.column4, forward_attempts = v.column5, \
           compensation_attempts = v.column6, forward_retry_base = v.column7, \
           compensation_retry_base = v.column8, may_have_applied = v.column9 \
         FROM (VALUES {}) AS v \
         WHERE saga_steps.saga_id = v.column1 AND saga_steps.step_index = v.column2",
        values_list(backend, rows, 9)
    )
}

async fn save_step_run(tx: &mut Tx, steps: &[(&str, &StepRow)]) -> Result<(), DbError> {
    let sql = save_steps_sql(tx.backend(), steps.len());
    on_backend!(tx, conn => {
        let mut q = sqlx::query(&sql);
        for (saga_id, step) in steps {
            q = bind_step(q, saga_id, step);
        }
        q.execute(&mut *conn).await?;
    });
    Ok(())
}

/// Stores attempts, of one saga or many, in one statement: a new one written ahead of its
/// command, or a known one's result.
pub async fn record_attempts(tx: &mut Tx, attempts: &[(&str, &AttemptRow)]) -> Result<(), DbError> {
    for run in runs(tx.backend(), attempts) {
        record_attempt_run(tx, run).await?;
    }
    Ok(())
}

/// The upsert of `rows` attempts, their values bound by [`bind_attempt`].
fn record_attempts_sql(backend: Backend, rows: usize) -> String {
    format!(
        "INSERT INTO saga_attempts ({ATTEMPT_INSERT_COLUMNS}) \
         VALUES {} \
         ON CONFLICT (saga_id, step_index, direction, number) DO UPDATE SET \
           outcome = excluded.outcome, status_code = excluded.status_code, \
           message = excluded.message, ended_at = excluded.ended_at",
        values_list(backend, rows, 10)
    )
}

async fn record_attempt_run(tx: &mut Tx, attempts: &[(&str, &AttemptRow)]) -> Result<(), DbError> {
    let sql = record_attempts_sql(tx.backend(), attempts.len());
    on_backend!(tx, conn => {
        let mut q = sqlx::query(&sql);
        for (saga_id, a) in attempts {
            q = bind_attempt(q, saga_id, a);
        }
        q.execute(&mut *conn).await?;
    });
    Ok(())
}

/// Appends one event to a saga's timeline.
pub async fn append_event(
    tx: &mut Tx,
    saga_id: &str,
    kind: &'static str,
    step: &str,
    message: &str,
    status: &str,
    at: i64,
) -> Result<(), DbError> {
    let event = NewEvent {
        kind,
        step: step.to_owned(),
        message: message.to_owned(),
        status: status.to_owned(),
    };
    append_events(tx, &[(saga_id, &event)], at).await
}

/// Appends events to sagas' timelines in one statement, each saga's in the order given, after
/// what its timeline holds.
pub async fn append_events(
    tx: &mut Tx,
    events: &[(&str, &NewEvent)],
    at: i64,
) -> Result<(), DbError> {
    for run in runs(tx.backend(), events) {
        append_event_run(tx, run, at).await?;
    }
    Ok(())
}

/// The append of `rows` events, their values bound by [`bind_event`] with the numbers of
/// [`event_ordinals`].
fn append_events_sql(backend: Backend, rows: usize) -> String {
    // The nth event of a saga in this statement goes n after the saga's last; the subquery reads
    // the timeline as it was before the statement on both backends.
    format!(
        "INSERT INTO saga_events ({EVENT_INSERT_COLUMNS}) \
         SELECT v.column1, \
           COALESCE((SELECT MAX(e.sequence) FROM saga_events e WHERE e.saga_id = v.column1), 0) \
             + v.column2, \
           v.column3, v.column4, v.column5, v.column6, v.column7 \
         FROM (VALUES {}) AS v",
        values_list(backend, rows, 7)
    )
}

/// Each event's place among its saga's events in one append statement (1, 2, …).
fn event_ordinals<'a>(events: &'a [(&str, &NewEvent)]) -> impl Iterator<Item = i64> + 'a {
    let mut seen: HashMap<&str, i64> = HashMap::new();
    events.iter().map(move |(saga_id, _)| {
        let n = seen.entry(saga_id).or_default();
        *n += 1;
        *n
    })
}

async fn append_event_run(
    tx: &mut Tx,
    events: &[(&str, &NewEvent)],
    at: i64,
) -> Result<(), DbError> {
    let sql = append_events_sql(tx.backend(), events.len());
    on_backend!(tx, conn => {
        let mut q = sqlx::query(&sql);
        for ((saga_id, e), n) in events.iter().zip(event_ordinals(events)) {
            q = bind_event(q, saga_id, n, at, e);
        }
        q.execute(&mut *conn).await?;
    });
    Ok(())
}

/// Marks attempts left in flight by a crashed driver as ambiguous; returns their steps.
pub async fn interrupt_in_flight(
    tx: &mut Tx,
    saga_id: &str,
    now: i64,
) -> Result<Vec<i64>, DbError> {
    let steps: Vec<i64> = on_backend!(tx, conn => {
        sqlx::query_scalar(
            "SELECT step_index FROM saga_attempts WHERE saga_id = $1 AND outcome = 'in_flight'",
        )
        .bind(saga_id)
        .fetch_all(&mut *conn)
        .await?
    });
    if !steps.is_empty() {
        on_backend!(tx, conn => {
            sqlx::query(
                "UPDATE saga_attempts SET outcome = 'ambiguous', status_code = 'INTERRUPTED', \
                   message = 'the orchestrator stopped before the answer was recorded', \
                   ended_at = $2 \
                 WHERE saga_id = $1 AND outcome = 'in_flight'",
            )
            .bind(saga_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        });
    }
    Ok(steps)
}

/// Takes the lease of a saga that is unowned, owned by `owner`, or whose lease lapsed.
pub async fn claim(
    tx: &mut Tx,
    saga_id: &str,
    owner: &str,
    lease_expires_at: i64,
    now: i64,
) -> Result<bool, DbError> {
    let n = on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE sagas SET lease_owner = $2, lease_expires_at = $3, version = version + 1 \
             WHERE saga_id = $1 AND status IN ('running', 'compensating') \
               AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at <= $4)",
        )
        .bind(saga_id)
        .bind(owner)
        .bind(lease_expires_at)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(n == 1)
}

/// Gives the lease back.
pub async fn release(tx: &mut Tx, saga_id: &str, owner: &str) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE sagas SET lease_owner = NULL, lease_expires_at = 0 \
             WHERE saga_id = $1 AND lease_owner = $2",
        )
        .bind(saga_id)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// The sweeper's query: walks the partial index `sagas_due` (unfinished sagas only), so its cost
/// does not grow with the finished sagas stored. SQLite is told the index: without statistics it
/// would rather look up `sagas_by_status` and sort.
fn due_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "SELECT saga_id FROM sagas INDEXED BY sagas_due \
             WHERE status IN ('running', 'compensating') AND next_attempt_at <= $1 \
               AND (lease_owner IS NULL OR lease_owner = $3 OR lease_expires_at <= $1) \
             ORDER BY next_attempt_at LIMIT $2"
        }
        Backend::Postgres => {
            "SELECT saga_id FROM sagas \
             WHERE status IN ('running', 'compensating') AND next_attempt_at <= $1 \
               AND (lease_owner IS NULL OR lease_owner = $3 OR lease_expires_at <= $1) \
             ORDER BY next_attempt_at LIMIT $2"
        }
    }
}

/// Sagas due to be driven whose lease is free or already `owner`'s (a restarted replica with a
/// stable id resumes its own sagas at once), oldest first.
pub async fn due(tx: &mut Tx, owner: &str, now: i64, limit: i64) -> Result<Vec<String>, DbError> {
    let tx_backend = tx.backend();
    Ok(on_backend!(tx, conn => {
        sqlx::query_scalar(due_sql(tx_backend))
            .bind(now)
            .bind(limit)
            .bind(owner)
            .fetch_all(&mut *conn)
            .await?
    }))
}

/// Asks a running saga to cancel unless its pivot started; false when refused.
pub async fn request_cancel(tx: &mut Tx, saga_id: &str, now: i64) -> Result<bool, DbError> {
    let n = on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE sagas SET cancel_requested = TRUE, next_attempt_at = $2, updated_at = $2 \
             WHERE saga_id = $1 AND status = 'running' AND pivot_started = FALSE",
        )
        .bind(saga_id)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(n == 1)
}

/// Puts a parked saga back to work: its status again, its current step's retry budget anew.
pub async fn resume_parked(
    tx: &mut Tx,
    saga_id: &str,
    status: &str,
    now: i64,
) -> Result<bool, DbError> {
    let n = on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE sagas SET status = $2, failure_reason = '', failure_message = '', \
               failure_step = '', lease_owner = NULL, lease_expires_at = 0, \
               next_attempt_at = $3, version = version + 1, updated_at = $3 \
             WHERE saga_id = $1 AND status = 'needs_attention'",
        )
        .bind(saga_id)
        .bind(status)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(n == 1)
}

/// A listing query: the filters given (customer, status) and the cursor as numbered
/// parameters in that order, walking one index newest first (`sagas_by_customer`,
/// `sagas_by_status` or `sagas_by_created`), so a page costs the same however many sagas are
/// stored.
fn list_sql(customer: bool, status: bool) -> String {
    let mut conditions = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    if customer {
        conditions.push(format!("customer_id = ${}", next()));
    }
    if status {
        conditions.push(format!("status = ${}", next()));
    }
    let (at, id, limit) = (next(), next(), next());
    conditions.push(format!("(created_at, saga_id) < (${at}, ${id})"));
    format!(
        "SELECT {SAGA_COLUMNS} FROM sagas WHERE {} \
         ORDER BY created_at DESC, saga_id DESC LIMIT ${limit}",
        conditions.join(" AND ")
    )
}

/// Sagas newest first, optionally of one customer and in one status, after a cursor.
pub async fn list(
    tx: &mut Tx,
    customer_id: Option<&str>,
    status: Option<&str>,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<SagaRow>, DbError> {
    // Without a cursor every row is "before" i64::MAX, whatever its id.
    let (before_at, before_id) = before.unwrap_or((i64::MAX, String::new()));
    let sql = list_sql(customer_id.is_some(), status.is_some());
    Ok(on_backend!(tx, conn => {
        let mut q = sqlx::query_as(&sql);
        if let Some(customer_id) = customer_id {
            q = q.bind(customer_id);
        }
        if let Some(status) = status {
            q = q.bind(status);
        }
        q.bind(before_at)
            .bind(&before_id)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
    }))
}

/// A value bound to a statement whose plan is asked for.
#[derive(Debug, Clone, Copy)]
enum Arg<'a> {
    Int(i64),
    Text(&'a str),
}

/// The plan of one statement with its arguments, one line per plan node.
async fn explain(tx: &mut Tx, sql: &str, args: &[Arg<'_>]) -> Result<Vec<String>, DbError> {
    Ok(match tx {
        Tx::Sqlite(tx) => {
            let sql = format!("EXPLAIN QUERY PLAN {sql}");
            let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&sql);
            for arg in args {
                q = match *arg {
                    Arg::Int(v) => q.bind(v),
                    Arg::Text(v) => q.bind(v),
                };
            }
            q.fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(_, _, _, detail)| detail)
                .collect()
        }
        Tx::Postgres(tx) => {
            let sql = format!("EXPLAIN {sql}");
            let mut q = sqlx::query_scalar(&sql);
            for arg in args {
                q = match *arg {
                    Arg::Int(v) => q.bind(v),
                    Arg::Text(v) => q.bind(v),
                };
            }
            q.fetch_all(&mut **tx).await?
        }
    })
}

/// The plans the database picks for the sweeper's query and every listing query, by name:
/// `EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on Postgres.
pub async fn query_plans(tx: &mut Tx) -> Result<Vec<(String, Vec<String>)>, DbError> {
    let due = due_sql(tx.backend());
    let due_args = [Arg::Int(0), Arg::Int(10), Arg::Text("replica")];
    let mut plans = vec![(
        "sweeper: due sagas".to_owned(),
        explain(tx, due, &due_args).await?,
    )];
    for (name, customer, status) in [
        ("list: all", false, false),
        ("list: one customer", true, false),
        ("list: one status", false, true),
        ("list: one customer, one status", true, true),
    ] {
        let mut args = Vec::new();
        if customer {
            args.push(Arg::Text("customer"));
        }
        if status {
            args.push(Arg::Text("completed"));
        }
        args.extend([Arg::Int(i64::MAX), Arg::Text(""), Arg::Int(50)]);
        let sql = list_sql(customer, status);
        plans.push((name.to_owned(), explain(tx, &sql, &args).await?));
    }
    Ok(plans)
}

/// Refreshes the planner's statistics (Postgres; its autovacuum does the same on its own
/// schedule), so plans reflect the rows stored.
pub async fn analyze(tx: &mut Tx) -> Result<(), DbError> {
    if let Tx::Postgres(tx) = tx {
        sqlx::query("ANALYZE sagas").execute(&mut **tx).await?;
    }
    Ok(())
}

/// Stores `count` finished (completed) sagas with their steps and two timeline events each, for
/// scaling measurements: ids `preloaded-<n>`, spread over 1000 customers, created before `now`.
pub async fn preload_finished(
    tx: &mut Tx,
    count: i64,
    steps: &[&str],
    now: i64,
) -> Result<(), DbError> {
    let sagas = format!(
        "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < $1) \
         INSERT INTO sagas ({SAGA_COLUMNS}) \
         SELECT 'preloaded-' || i, 'checkout', 'preloaded-cart-' || i, \
           'preloaded-customer-' || (i % 1000), 'completed', 'forward', $3, '{{}}', '{{}}', \
           '', '', '', FALSE, TRUE, $2 - i, $2 - i, NULL, 0, $3 + 2, '', $2 - i, $2 - i \
         FROM seq"
    );
    let step_count = i64::try_from(steps.len()).unwrap_or(0);
    on_backend!(tx, conn => {
        sqlx::query(&sagas)
            .bind(count)
            .bind(now)
            .bind(step_count)
            .execute(&mut *conn)
            .await?;
    });
    for (i, name) in steps.iter().enumerate() {
        on_backend!(tx, conn => {
            sqlx::query(
                "INSERT INTO saga_steps (saga_id, step_index, name, status, forward_attempts, \
                   compensation_attempts, forward_retry_base, compensation_retry_base, \
                   may_have_applied) \
                 SELECT saga_id, $1, $2, 'succeeded', 1, 0, 0, 0, TRUE FROM sagas \
                 WHERE saga_id LIKE 'preloaded-%'",
            )
            .bind(i64::try_from(i).unwrap_or(0))
            .bind(*name)
            .execute(&mut *conn)
            .await?;
        });
    }
    for (sequence, kind) in [(1_i64, "accepted"), (2, "completed")] {
        on_backend!(tx, conn => {
            sqlx::query(
                "INSERT INTO saga_events (saga_id, sequence, at, kind, step, message, status) \
                 SELECT saga_id, $1, created_at, $2, '', '', 'completed' FROM sagas \
                 WHERE saga_id LIKE 'preloaded-%'",
            )
            .bind(sequence)
            .bind(kind)
            .execute(&mut *conn)
            .await?;
        });
    }
    Ok(())
}

/// Every saga (for audits).
pub async fn audit_sagas(tx: &mut Tx) -> Result<Vec<SagaRow>, DbError> {
    let sql = format!("SELECT {SAGA_COLUMNS} FROM sagas ORDER BY saga_id");
    Ok(on_backend!(tx, conn => sqlx::query_as(&sql).fetch_all(&mut *conn).await?))
}

/// Attempts by direction and outcome, across all sagas (for reports).
pub async fn audit_attempt_counts(tx: &mut Tx) -> Result<Vec<(String, String, i64)>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT direction, outcome, count(*) FROM saga_attempts \
             GROUP BY direction, outcome ORDER BY direction, outcome",
        )
        .fetch_all(&mut *conn)
        .await?
    }))
}

#[cfg(test)]
mod tests {
    use checkout_kit::db::{Db, PoolConfig};
    use checkout_kit::testing::{TestDatabase, snapshot};

    use super::*;

    const STEPS: [&str; 3] = ["lock_cart", "reserve_inventory", "authorize_payment"];

    /// Two finished sagas; the first also gets attempts in both directions (one still in
    /// flight), a step that may have applied and events whose text JSON must escape.
    async fn sagas_with_every_kind_of_row(db: &Db) {
        let mut tx = db.begin().await.unwrap();
        preload_finished(&mut tx, 2, &STEPS, 1_000_000)
            .await
            .unwrap();
        // Started in an order of their own, with a tie: the view must order as `attempts` does.
        let attempt =
            |step_index, direction: &str, number, started_at, ended_at: Option<i64>| AttemptRow {
                step_index,
                direction: direction.to_owned(),
                number,
                request_id: format!("req-{step_index}-{direction}-{number}"),
                outcome: if ended_at.is_some() {
                    "transient"
                } else {
                    "in_flight"
                }
                .to_owned(),
                status_code: "UNAVAILABLE".to_owned(),
                message: "a \"quoted\" back\\slash, it's\nnew line, ✓ ünïcode, \u{1}".to_owned(),
                started_at,
                ended_at,
            };
        let attempts = [
            attempt(1, "forward", 1, 20, Some(i64::MAX)),
            attempt(1, "forward", 2, 30, None),
            attempt(0, "compensation", 1, 30, Some(-5)),
            attempt(0, "forward", 1, 10, Some(12)),
        ];
        let rows: Vec<(&str, &AttemptRow)> = attempts.iter().map(|a| ("preloaded-1", a)).collect();
        record_attempts(&mut tx, &rows).await.unwrap();
        let step = StepRow {
            step_index: 1,
            name: STEPS[1].to_owned(),
            status: "compensating".to_owned(),
            forward_attempts: 2,
            compensation_attempts: 0,
            forward_retry_base: 1,
            compensation_retry_base: 0,
            may_have_applied: false,
        };
        save_steps(&mut tx, &[("preloaded-1", &step)])
            .await
            .unwrap();
        let event = NewEvent {
            kind: "step_failed",
            step: STEPS[1].to_owned(),
            message: "{\"not\": \"json\"} ]['".to_owned(),
            status: "compensating".to_owned(),
        };
        append_events(&mut tx, &[("preloaded-1", &event)], 7)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn on_postgres_the_journal_batch_plan_finds_sagas_and_steps_by_key_on_a_young_table() {
        if checkout_kit::testing::backend() != Backend::Postgres {
            return;
        }
        let database = TestDatabase::new("batch_plan");
        let db = database.migrated(&crate::MIGRATIONS).await.unwrap();
        // Made while the tables are empty: the case where the planner takes a sequential scan
        // for the cheapest.
        let args: Vec<&str> = (1..=41)
            .map(|n| if n == 35 { "0" } else { "'{}'" })
            .collect();
        let plan = checkout_kit::testing::generic_plan(&db, SAVE_BATCH_POSTGRES, &args)
            .await
            .unwrap();
        for table in ["sagas", "saga_steps"] {
            assert!(
                plan.contains(&format!("Index Scan using {table}_pkey on {table}")),
                "{table}:\n{plan}"
            );
        }
        assert!(!plan.contains("Seq Scan"), "{plan}");
        db.close().await;
    }

    #[tokio::test]
    async fn the_view_statement_reads_what_the_separate_reads_do() {
        let database = TestDatabase::new("saga_view");
        let db = database.migrated(&crate::MIGRATIONS).await.unwrap();
        sagas_with_every_kind_of_row(&db).await;
        for saga_id in ["preloaded-1", "preloaded-2"] {
            let mut tx = db.begin_read().await.unwrap();
            let separate = SagaView {
                saga: saga(&mut tx, saga_id).await.unwrap().unwrap(),
                steps: steps(&mut tx, saga_id).await.unwrap(),
                attempts: attempts(&mut tx, saga_id).await.unwrap(),
                events: events_after(&mut tx, saga_id, 0).await.unwrap(),
            };
            tx.rollback().await.unwrap();
            let mut single = db.single_read().await.unwrap();
            let view = saga_view(&mut single, saga_id).await.unwrap().unwrap();
            single.rollback().await.unwrap();
            assert_eq!(view, separate, "{saga_id}");
            let (attempts, events) = if saga_id == "preloaded-1" {
                (4, 3)
            } else {
                (0, 2)
            };
            assert_eq!(
                (view.steps.len(), view.attempts.len(), view.events.len()),
                (3, attempts, events)
            );
        }
        let mut single = db.single_read().await.unwrap();
        assert_eq!(saga_view(&mut single, "no-such-saga").await.unwrap(), None);
        single.rollback().await.unwrap();
        db.close().await;
    }

    #[tokio::test]
    async fn sqlite_stores_steps_attempts_and_events_by_key_and_the_change_loses_no_row() {
        let dir = tempfile::tempdir().unwrap();
        // The schema as it was before the change: the first three migrations, from the tree.
        let before = dir.path().join("migrations");
        std::fs::create_dir(&before).unwrap();
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations/sqlite/orchestrator");
        for entry in std::fs::read_dir(&source).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.as_str() < "0004" {
                std::fs::copy(&path, before.join(&name)).unwrap();
            }
        }
        let url = format!("sqlite://{}/orchestrator.db", dir.path().display());
        let db = Db::connect(&url, &PoolConfig::default()).await.unwrap();
        let Db::Sqlite(pool, ..) = &db else {
            unreachable!("an sqlite URL")
        };
        let old = sqlx::migrate::Migrator::new(before.as_path())
            .await
            .unwrap();
        assert_eq!(old.iter().count(), 3);
        old.run(pool).await.unwrap();
        sagas_with_every_kind_of_row(&db).await;
        let stored = snapshot(&db).await.unwrap();

        db.migrate(&crate::MIGRATIONS).await.unwrap();
        assert_eq!(snapshot(&db).await.unwrap(), stored, "every row kept");
        let by_key: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, wr FROM pragma_table_list \
             WHERE name IN ('saga_steps', 'saga_attempts', 'saga_events') ORDER BY name",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(
            by_key,
            [("saga_attempts", 1), ("saga_events", 1), ("saga_steps", 1)]
                .map(|(t, wr)| (t.to_owned(), wr))
        );
        // The tables still take writes and keep their foreign keys.
        let event = NewEvent {
            kind: "step_started",
            step: STEPS[0].to_owned(),
            message: String::new(),
            status: "running".to_owned(),
        };
        for (saga_id, accepted) in [("preloaded-2", true), ("no-such-saga", false)] {
            let mut tx = db.begin().await.unwrap();
            let result = append_events(&mut tx, &[(saga_id, &event)], 8).await;
            assert_eq!(result.is_ok(), accepted, "{saga_id}: {result:?}");
            tx.commit().await.unwrap();
        }
        db.close().await;
    }

    #[test]
    fn parameters_shift_by_number_and_nothing_else_moves() {
        assert_eq!(
            shift_parameters("VALUES ($1, $10, '$x', $2::int8[]) $", 9),
            "VALUES ($10, $19, '$x', $11::int8[]) $"
        );
        // The key's nine come first, so the saga's own start at $10.
        let (_, saga) = START_POSTGRES
            .split_once(" s AS (")
            .expect("the saga after the key");
        assert!(saga.contains("VALUES ($10, $11,") && saga.contains("$53::text[]"));
        assert!(!saga.contains("$1,") && !saga.contains("$9,"));
    }

    #[test]
    fn runs_cover_every_row_in_order_one_per_64_on_sqlite_in_powers_of_two_on_postgres() {
        for n in 0..300_usize {
            let rows: Vec<usize> = (0..n).collect();
            for backend in [Backend::Sqlite, Backend::Postgres] {
                let sizes: Vec<usize> = runs(backend, &rows).map(<[usize]>::len).collect();
                let joined: Vec<usize> = runs(backend, &rows).flatten().copied().collect();
                assert_eq!(joined, rows);
                match backend {
                    Backend::Sqlite => assert_eq!(sizes.len(), n.div_ceil(64), "{n}: {sizes:?}"),
                    Backend::Postgres => assert!(
                        sizes.iter().all(|s| s.is_power_of_two() && *s <= 64),
                        "{n}: {sizes:?}"
                    ),
                }
            }
        }
    }
}
