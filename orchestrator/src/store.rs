//! Every SQL statement of the orchestrator: sagas, their steps, attempts and timeline. Writes by
//! the replica driving a saga are fenced by its lease and the saga's version.

use checkout_kit::db::{DbError, Tx};
use checkout_kit::on_backend;

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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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

const SAGA_COLUMNS: &str = "saga_id, saga_type, cart_id, customer_id, status, direction, \
     step_index, input, outputs, failure_reason, failure_message, failure_step, \
     cancel_requested, pivot_started, deadline_at, next_attempt_at, lease_owner, \
     lease_expires_at, version, trace_context, created_at, updated_at";

/// Inserts a new saga and its steps.
pub async fn insert_saga(tx: &mut Tx, s: &SagaRow, steps: &[&str]) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO sagas ({SAGA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
    );
    on_backend!(tx, conn => {
        sqlx::query(&sql)
            .bind(&s.saga_id)
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
            .execute(&mut *conn)
            .await?;
    });
    for (i, name) in steps.iter().enumerate() {
        on_backend!(tx, conn => {
            sqlx::query(
                "INSERT INTO saga_steps (saga_id, step_index, name, status, forward_attempts, \
                   compensation_attempts, forward_retry_base, compensation_retry_base, \
                   may_have_applied) \
                 VALUES ($1, $2, $3, 'pending', 0, 0, 0, 0, FALSE)",
            )
            .bind(&s.saga_id)
            .bind(i64::try_from(i).unwrap_or(i64::MAX))
            .bind(*name)
            .execute(&mut *conn)
            .await?;
        });
    }
    Ok(())
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
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT step_index, name, status, forward_attempts, compensation_attempts, \
               forward_retry_base, compensation_retry_base, may_have_applied \
             FROM saga_steps WHERE saga_id = $1 ORDER BY step_index",
        )
        .bind(saga_id)
        .fetch_all(&mut *conn)
        .await?
    }))
}

/// A saga's attempts in order.
pub async fn attempts(tx: &mut Tx, saga_id: &str) -> Result<Vec<AttemptRow>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT step_index, direction, number, request_id, outcome, status_code, message, \
               started_at, ended_at FROM saga_attempts WHERE saga_id = $1 \
             ORDER BY started_at, step_index, direction, number",
        )
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
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT sequence, at, kind, step, message, status FROM saga_events \
             WHERE saga_id = $1 AND sequence > $2 ORDER BY sequence",
        )
        .bind(saga_id)
        .bind(after)
        .fetch_all(&mut *conn)
        .await?
    }))
}

/// Appends an event to a saga's timeline.
pub async fn append_event(
    tx: &mut Tx,
    saga_id: &str,
    kind: &str,
    step: &str,
    message: &str,
    status: &str,
    at: i64,
) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO saga_events (saga_id, sequence, at, kind, step, message, status) \
             VALUES ($1, (SELECT COALESCE(MAX(sequence), 0) + 1 FROM saga_events \
                          WHERE saga_id = $1), $2, $3, $4, $5, $6)",
        )
        .bind(saga_id)
        .bind(at)
        .bind(kind)
        .bind(step)
        .bind(message)
        .bind(status)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Writes the saga's mutable columns if `owner` still holds it at `version`; extends the lease,
/// or gives it back with `release`. `None` when fenced off (the lease was lost, or — for the
/// pivot's write-ahead — a cancel came first); otherwise whether a cancel was asked for.
pub async fn save_saga(
    tx: &mut Tx,
    s: &SagaRow,
    owner: &str,
    lease_expires_at: i64,
    require_no_cancel: bool,
    release: bool,
) -> Result<Option<bool>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_scalar(
            "UPDATE sagas SET status = $4, direction = $5, step_index = $6, outputs = $7, \
               failure_reason = $8, failure_message = $9, failure_step = $10, \
               pivot_started = $11, next_attempt_at = $12, \
               lease_owner = CASE WHEN $16 THEN NULL ELSE lease_owner END, \
               lease_expires_at = CASE WHEN $16 THEN 0 ELSE $13 END, \
               version = version + 1, updated_at = $14 \
             WHERE saga_id = $1 AND version = $2 AND lease_owner = $3 \
               AND (cancel_requested = FALSE OR $15 = FALSE) \
             RETURNING cancel_requested",
        )
        .bind(&s.saga_id)
        .bind(s.version)
        .bind(owner)
        .bind(&s.status)
        .bind(&s.direction)
        .bind(s.step_index)
        .bind(&s.outputs)
        .bind(&s.failure_reason)
        .bind(&s.failure_message)
        .bind(&s.failure_step)
        .bind(s.pivot_started)
        .bind(s.next_attempt_at)
        .bind(lease_expires_at)
        .bind(s.updated_at)
        .bind(require_no_cancel)
        .bind(release)
        .fetch_optional(&mut *conn)
        .await?
    }))
}

/// Writes a step's state.
pub async fn save_step(tx: &mut Tx, saga_id: &str, step: &StepRow) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE saga_steps SET status = $3, forward_attempts = $4, \
               compensation_attempts = $5, forward_retry_base = $6, \
               compensation_retry_base = $7, may_have_applied = $8 \
             WHERE saga_id = $1 AND step_index = $2",
        )
        .bind(saga_id)
        .bind(step.step_index)
        .bind(&step.status)
        .bind(step.forward_attempts)
        .bind(step.compensation_attempts)
        .bind(step.forward_retry_base)
        .bind(step.compensation_retry_base)
        .bind(step.may_have_applied)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Writes an attempt ahead of its command.
pub async fn insert_attempt(tx: &mut Tx, saga_id: &str, a: &AttemptRow) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO saga_attempts (saga_id, step_index, direction, number, request_id, \
               outcome, status_code, message, started_at, ended_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(saga_id)
        .bind(a.step_index)
        .bind(&a.direction)
        .bind(a.number)
        .bind(&a.request_id)
        .bind(&a.outcome)
        .bind(&a.status_code)
        .bind(&a.message)
        .bind(a.started_at)
        .bind(a.ended_at)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Records an attempt's result.
pub async fn finish_attempt(tx: &mut Tx, saga_id: &str, a: &AttemptRow) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE saga_attempts SET outcome = $5, status_code = $6, message = $7, ended_at = $8 \
             WHERE saga_id = $1 AND step_index = $2 AND direction = $3 AND number = $4",
        )
        .bind(saga_id)
        .bind(a.step_index)
        .bind(&a.direction)
        .bind(a.number)
        .bind(&a.outcome)
        .bind(&a.status_code)
        .bind(&a.message)
        .bind(a.ended_at)
        .execute(&mut *conn)
        .await?;
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

/// Sagas due to be driven whose lease is free or already `owner`'s (a restarted replica with a
/// stable id resumes its own sagas at once), oldest first.
pub async fn due(tx: &mut Tx, owner: &str, now: i64, limit: i64) -> Result<Vec<String>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_scalar(
            "SELECT saga_id FROM sagas \
             WHERE status IN ('running', 'compensating') AND next_attempt_at <= $1 \
               AND (lease_owner IS NULL OR lease_owner = $3 OR lease_expires_at <= $1) \
             ORDER BY next_attempt_at LIMIT $2",
        )
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
    let sql = format!(
        "SELECT {SAGA_COLUMNS} FROM sagas \
         WHERE ($1 IS NULL OR customer_id = $1) AND ($2 IS NULL OR status = $2) \
           AND (created_at < $3 OR (created_at = $3 AND saga_id < $4)) \
         ORDER BY created_at DESC, saga_id DESC LIMIT $5"
    );
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql)
            .bind(customer_id)
            .bind(status)
            .bind(before_at)
            .bind(&before_id)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
    }))
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

/// Every finished attempt's step, direction and duration in milliseconds (for benchmarks).
pub async fn audit_attempt_durations(tx: &mut Tx) -> Result<Vec<(i64, String, i64)>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT step_index, direction, ended_at - started_at FROM saga_attempts \
             WHERE ended_at IS NOT NULL",
        )
        .fetch_all(&mut *conn)
        .await?
    }))
}
