//! The SQL of the idempotency layer: the `idempotency_keys` table on both backends.

use std::sync::LazyLock;
use std::time::Duration;

use prost::Message;
use prost::bytes::Bytes;
use tonic::{Code, Status};

use super::{IdempotencyConfig, Key, STARTED};
use crate::db::{Answer, DbError, Statements, Tx, now_millis, shift_parameters};
use crate::on_backend;
use crate::status;

/// What a claim found.
pub(super) enum ClaimOutcome {
    /// The key is ours; resume from this recovery point.
    Claimed {
        recovery_point: String,
        recovery_data: Option<Vec<u8>>,
        /// Taken over from an earlier holder, whose recovery point it is; else new, at the
        /// claim's intent.
        resumed: bool,
    },
    /// The key was there already.
    Found(Found),
}

/// A key that was there already and is not ours.
pub(super) enum Found {
    /// Done, with the same fingerprint: its answer.
    Done(StoredAnswer),
    /// Used for a different request.
    Reused,
    /// In progress under a live lock.
    Locked,
}

/// An answer as stored: status code, message, and the encoded response or error details.
pub(super) struct StoredAnswer {
    pub(super) code: Code,
    message: String,
    body: Vec<u8>,
}

impl StoredAnswer {
    /// The storable form of a handler's result.
    pub(super) fn of<T: Message>(result: &Result<T, Status>) -> Self {
        match result {
            Ok(response) => Self::ok(response),
            Err(status) => Self {
                code: status.code(),
                message: status.message().to_owned(),
                body: status.details().to_vec(),
            },
        }
    }

    /// The storable form of a response.
    pub(super) fn ok<T: Message>(response: &T) -> Self {
        Self {
            code: Code::Ok,
            message: String::new(),
            body: response.encode_to_vec(),
        }
    }

    /// The stored answer as the handler first gave it.
    pub(super) fn replay<T: Message + Default>(self) -> Result<Result<T, Status>, Status> {
        if self.code == Code::Ok {
            return T::decode(self.body.as_slice())
                .map(Ok)
                .map_err(|e| status::internal(&e));
        }
        Ok(Err(Status::with_details(
            self.code,
            self.message,
            Bytes::from(self.body),
        )))
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    fingerprint: Vec<u8>,
    state: String,
    response_code: Option<i32>,
    response_message: Option<String>,
    response_body: Option<Vec<u8>>,
    recovery_point: String,
    recovery_data: Option<Vec<u8>>,
    lock_token: String,
    locked_until: i64,
    expires_at: i64,
}

impl KeyRow {
    /// Past retention the key is forgotten, whether or not the collector has run yet (unless a
    /// holder still has it locked).
    fn forgotten(&self, now: i64) -> bool {
        self.expires_at <= now && (self.state == "done" || self.locked_until <= now)
    }

    /// The stored answer of a done key.
    fn answer(self) -> StoredAnswer {
        StoredAnswer {
            code: Code::from_i32(self.response_code.unwrap_or(Code::Unknown as i32)),
            message: self.response_message.unwrap_or_default(),
            body: self.response_body.unwrap_or_default(),
        }
    }
}

/// The key's row, if there is one.
async fn read(tx: &mut Tx, key: &Key) -> Result<Option<KeyRow>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT fingerprint, state, response_code, response_message, response_body, \
                    recovery_point, recovery_data, lock_token, locked_until, expires_at \
             FROM idempotency_keys WHERE scope = $1 AND request_id = $2",
        )
        .bind(key.scope())
        .bind(key.request_id())
        .fetch_optional(&mut *conn)
        .await?
    }))
}

/// What a remembered key settles for a request that did not get to store an answer: its
/// answer if done, a refusal if it was used for a different request; `None` when the key is
/// unknown, forgotten or still in progress.
pub(super) async fn find(tx: &mut Tx, key: &Key) -> Result<Option<Found>, DbError> {
    let Some(row) = read(tx, key).await? else {
        return Ok(None);
    };
    Ok(if row.forgotten(now_millis()) {
        None
    } else if row.fingerprint.as_slice() != key.fingerprint().as_slice() {
        Some(Found::Reused)
    } else if row.state == "done" {
        Some(Found::Done(row.answer()))
    } else {
        None
    })
}

/// The insert of a key that is done, with its answer: `$1`–`$9`, bound by [`bind_done`].
const INSERT_DONE: &str = "INSERT INTO idempotency_keys AS k \
       (scope, request_id, fingerprint, state, response_code, response_message, \
        response_body, recovery_point, lock_token, locked_until, created_at, \
        completed_at, expires_at) \
     VALUES ($1, $2, $3, 'done', $4, $5, $6, $7, '', $8, $8, $8, $9)";

/// [`INSERT_DONE`] taking the place of a forgotten key (past retention, and unlocked if it was
/// in progress).
static RECORD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{INSERT_DONE} \
         ON CONFLICT (scope, request_id) DO UPDATE SET \
           fingerprint = excluded.fingerprint, state = 'done', \
           response_code = excluded.response_code, \
           response_message = excluded.response_message, \
           response_body = excluded.response_body, \
           recovery_point = excluded.recovery_point, recovery_data = NULL, \
           lock_token = '', locked_until = excluded.locked_until, \
           created_at = excluded.created_at, completed_at = excluded.completed_at, \
           expires_at = excluded.expires_at \
         WHERE k.expires_at <= $8 AND (k.state = 'done' OR k.locked_until <= $8)"
    )
});

/// Binds the nine parameters of [`INSERT_DONE`] on either backend.
fn bind_done<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    key: &'q Key,
    answer: &StoredAnswer,
    now: i64,
    config: &IdempotencyConfig,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    // The answer is bound by value: a caller's statement may outlive it.
    query
        .bind(key.scope())
        .bind(key.request_id())
        .bind(key.fingerprint().as_slice())
        .bind(answer.code as i32)
        .bind(answer.message.clone())
        .bind(answer.body.clone())
        .bind(STARTED)
        .bind(now)
        .bind(now.saturating_add(millis(config.retention)))
}

/// Stores a key that is done, with its answer, in the transaction of the effect: the one write
/// of a database-only request. Takes the place of a forgotten key; false if the key is
/// remembered (done before, or held by a concurrent request that committed first), in which
/// case nothing is written.
pub(super) async fn record(
    tx: &mut Tx,
    key: &Key,
    answer: &StoredAnswer,
    config: &IdempotencyConfig,
) -> Result<bool, DbError> {
    let now = now_millis();
    if let Some(last) = tx.take_last_write() {
        // The handler's held write and the key in one hand-off to SQLite's writer thread; the
        // key's returned row tells whether it was stored.
        let sql = format!(
            "{}; {} RETURNING 1",
            last.sql(),
            shift_parameters(&RECORD, last.len())
        );
        let Tx::Sqlite(conn) = tx else {
            unreachable!("only an SQLite write holds a write back")
        };
        let query = bind_done(last.bind(sqlx::query(&sql)), key, answer, now, config);
        return Ok(query.fetch_all(&mut *conn).await?.len() == 1);
    }
    let written = on_backend!(tx, conn => {
        bind_done(sqlx::query(RECORD.as_str()), key, answer, now, config)
            .execute(&mut *conn)
            .await?
            .rows_affected()
    });
    Ok(written == 1)
}

/// The statement of a whole effect on Postgres: [`INSERT_DONE`] as the first of its
/// data-modifying CTEs, `effect` the rest of the `WITH` list and the final statement.
pub(super) fn in_one_statement_sql(effect: &str) -> String {
    format!("WITH done_key AS ({INSERT_DONE}), {effect}")
}

/// Runs a statement of [`in_one_statement_sql`] on its own (it commits by itself): true if it
/// committed, false if a unique key refused it, which undoes all of it.
pub(super) async fn run_in_one_statement<'q>(
    conn: &mut sqlx::PgConnection,
    sql: &'q str,
    key: &'q Key,
    answer: &StoredAnswer,
    config: &IdempotencyConfig,
    bind: impl FnOnce(PgQuery<'q>) -> PgQuery<'q>,
) -> Result<bool, DbError> {
    let query = bind_done(sqlx::query(sql), key, answer, now_millis(), config);
    match bind(query).execute(conn).await {
        Ok(_) => Ok(true),
        Err(e) if crate::db::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A Postgres statement with its arguments, as [`run_in_one_statement`] binds them.
pub type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// SQLite statements with their arguments, as [`run_in_one_hand_off`] binds them.
pub type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// [`INSERT_DONE`] with anonymous parameters, so the statements after it in one SQLite string
/// take their `?` values from the twelfth on (sqlx counts only anonymous parameters there).
const INSERT_DONE_SQLITE: &str = "INSERT INTO idempotency_keys \
       (scope, request_id, fingerprint, state, response_code, response_message, \
        response_body, recovery_point, lock_token, locked_until, created_at, \
        completed_at, expires_at) \
     VALUES (?, ?, ?, 'done', ?, ?, ?, ?, '', ?, ?, ?, ?)";

/// The string of a whole effect on SQLite: [`INSERT_DONE_SQLITE`], then `statements`.
pub(super) fn in_one_hand_off_sql(statements: &str) -> String {
    format!("{INSERT_DONE_SQLITE}; {statements}")
}

/// Runs a string of [`in_one_hand_off_sql`] in the open write transaction, `bind` adding the
/// values of the effect's statements after the key's. True if all of it ran; false if a unique
/// key refused a statement (the caller rolls back what ran before it).
pub(super) async fn run_in_one_hand_off<'q>(
    conn: &mut crate::db::SqliteTx,
    sql: &'q str,
    key: &'q Key,
    answer: &StoredAnswer,
    config: &IdempotencyConfig,
    bind: impl FnOnce(SqliteQuery<'q>) -> SqliteQuery<'q>,
) -> Result<bool, DbError> {
    let now = now_millis();
    let query = sqlx::query(sql)
        .bind(key.scope())
        .bind(key.request_id())
        .bind(key.fingerprint().as_slice())
        .bind(answer.code as i32)
        .bind(answer.message.clone())
        .bind(answer.body.clone())
        .bind(STARTED)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(now.saturating_add(millis(config.retention)));
    match bind(query).execute(conn).await {
        Ok(_) => Ok(true),
        Err(e) if crate::db::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The insert of a new key for `token` at the recovery point `intent`, locked and kept from
/// `now`; it inserts nothing when the key is there already.
fn claim_new(
    key: &Key,
    token: &str,
    config: &IdempotencyConfig,
    intent: &str,
    now: i64,
) -> Statements {
    Statements::new().then(
        "INSERT INTO idempotency_keys \
           (scope, request_id, fingerprint, state, recovery_point, lock_token, locked_until, \
            created_at, expires_at) \
         VALUES ($1, $2, $3, 'in_progress', $4, $5, $6, $7, $8) \
         ON CONFLICT (scope, request_id) DO NOTHING",
        vec![
            key.scope().into(),
            key.request_id().into(),
            key.fingerprint().as_slice().into(),
            intent.into(),
            token.into(),
            now.saturating_add(millis(config.lock_ttl)).into(),
            now.into(),
            now.saturating_add(millis(config.retention)).into(),
        ],
    )
}

/// Inserts a new key for `token` at the recovery point `intent` with `first` after it, sent
/// together ([`Tx::run_together`]: one hand-off on SQLite): `first`'s answers when the key was
/// new, `None` when it was there already (`first` ran all the same: the caller rolls back).
pub(super) async fn claim_new_with(
    tx: &mut Tx,
    key: &Key,
    token: &str,
    config: &IdempotencyConfig,
    intent: &str,
    first: Statements,
) -> Result<Option<Vec<Answer>>, DbError> {
    let statements = claim_new(key, token, config, intent, now_millis()).and(first);
    let mut answers = tx.run_together(statements).await?;
    let claim = answers.remove(0);
    Ok((claim.rows_affected() == 1).then_some(answers))
}

/// Claims `key` for `token`: inserts it at the recovery point `intent`, takes over a stale or
/// expired row, or reports what is there.
pub(super) async fn claim(
    tx: &mut Tx,
    key: &Key,
    token: &str,
    config: &IdempotencyConfig,
    intent: &str,
) -> Result<ClaimOutcome, DbError> {
    let now = now_millis();
    let locked_until = now.saturating_add(millis(config.lock_ttl));
    let expires_at = now.saturating_add(millis(config.retention));
    let fingerprint = key.fingerprint().as_slice();

    let inserted = tx
        .run_together(claim_new(key, token, config, intent, now))
        .await?[0]
        .rows_affected();
    let fresh = || ClaimOutcome::Claimed {
        recovery_point: intent.to_owned(),
        recovery_data: None,
        resumed: false,
    };
    if inserted == 1 {
        return Ok(fresh());
    }

    // Collected between the insert and the read: the caller retries and inserts anew.
    let Some(row) = read(tx, key).await? else {
        return Ok(ClaimOutcome::Found(Found::Locked));
    };
    let done = row.state == "done";
    let unlocked = row.locked_until <= now;

    if row.forgotten(now) {
        // Past retention the key is forgotten, whether or not the collector has run yet.
        let reset = on_backend!(tx, conn => {
            sqlx::query(
                "UPDATE idempotency_keys SET fingerprint = $3, state = 'in_progress', \
                   response_code = NULL, response_message = NULL, response_body = NULL, \
                   recovery_point = $4, recovery_data = NULL, lock_token = $5, \
                   locked_until = $6, created_at = $7, completed_at = NULL, expires_at = $8 \
                 WHERE scope = $1 AND request_id = $2 AND lock_token = $9",
            )
            .bind(key.scope())
            .bind(key.request_id())
            .bind(fingerprint)
            .bind(intent)
            .bind(token)
            .bind(locked_until)
            .bind(now)
            .bind(expires_at)
            .bind(&row.lock_token)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        return Ok(if reset == 1 {
            fresh()
        } else {
            ClaimOutcome::Found(Found::Locked)
        });
    }
    if row.fingerprint.as_slice() != fingerprint {
        return Ok(ClaimOutcome::Found(Found::Reused));
    }
    if done {
        return Ok(ClaimOutcome::Found(Found::Done(row.answer())));
    }
    if !unlocked {
        return Ok(ClaimOutcome::Found(Found::Locked));
    }

    // A stale lock: its holder crashed or gave up. Take it over, fenced by the old token so two
    // callers cannot both take it.
    let taken = on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE idempotency_keys SET lock_token = $3, locked_until = $4 \
             WHERE scope = $1 AND request_id = $2 AND lock_token = $5 AND state = 'in_progress'",
        )
        .bind(key.scope())
        .bind(key.request_id())
        .bind(token)
        .bind(locked_until)
        .bind(&row.lock_token)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(if taken == 1 {
        ClaimOutcome::Claimed {
            recovery_point: row.recovery_point,
            recovery_data: row.recovery_data,
            resumed: true,
        }
    } else {
        ClaimOutcome::Found(Found::Locked)
    })
}

/// Stores the final answer of the key held by `token` ([`bind_complete`]).
const COMPLETE: &str = "UPDATE idempotency_keys SET state = 'done', response_code = $3, \
       response_message = $4, response_body = $5, completed_at = $6, locked_until = $6 \
     WHERE scope = $1 AND request_id = $2 AND lock_token = $7 AND state = 'in_progress'";

/// Binds the seven parameters of [`COMPLETE`] on either backend.
fn bind_complete<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    key: &'q Key,
    token: &'q str,
    answer: &'q StoredAnswer,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(key.scope())
        .bind(key.request_id())
        .bind(answer.code as i32)
        .bind(&answer.message)
        .bind(answer.body.as_slice())
        .bind(now_millis())
        .bind(token)
}

/// Stores the final answer of the key held by `token`; false if the key is no longer held.
pub(super) async fn complete(
    tx: &mut Tx,
    key: &Key,
    token: &str,
    answer: &StoredAnswer,
) -> Result<bool, DbError> {
    if let Some(last) = tx.take_last_write() {
        // As in `record`: the held write and the key in one hand-off.
        let sql = format!(
            "{}; {} RETURNING 1",
            last.sql(),
            shift_parameters(COMPLETE, last.len())
        );
        let Tx::Sqlite(conn) = tx else {
            unreachable!("only an SQLite write holds a write back")
        };
        let query = bind_complete(last.bind(sqlx::query(&sql)), key, token, answer);
        return Ok(query.fetch_all(&mut *conn).await?.len() == 1);
    }
    let updated = on_backend!(tx, conn => {
        bind_complete(sqlx::query(COMPLETE), key, token, answer)
            .execute(&mut *conn)
            .await?
            .rows_affected()
    });
    Ok(updated == 1)
}

/// Moves the key held by `token` to a new recovery point and extends its lock.
pub(super) async fn advance(
    tx: &mut Tx,
    key: &Key,
    token: &str,
    point: &str,
    data: Option<&[u8]>,
    lock_ttl: Duration,
) -> Result<bool, DbError> {
    let locked_until = now_millis().saturating_add(millis(lock_ttl));
    let updated = on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE idempotency_keys SET recovery_point = $3, recovery_data = $4, \
               locked_until = $5 \
             WHERE scope = $1 AND request_id = $2 AND lock_token = $6 AND state = 'in_progress'",
        )
        .bind(key.scope())
        .bind(key.request_id())
        .bind(point)
        .bind(data)
        .bind(locked_until)
        .bind(token)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(updated == 1)
}

/// Releases the lock of the key held by `token` at once, keeping its recovery point.
pub(super) async fn unlock(tx: &mut Tx, key: &Key, token: &str) -> Result<bool, DbError> {
    let now = now_millis();
    let updated = on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE idempotency_keys SET locked_until = $3 \
             WHERE scope = $1 AND request_id = $2 AND lock_token = $4 AND state = 'in_progress'",
        )
        .bind(key.scope())
        .bind(key.request_id())
        .bind(now)
        .bind(token)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(updated == 1)
}

/// Deletes up to `batch` keys past retention whose lock is free.
pub(super) async fn delete_expired(tx: &mut Tx, batch: u32) -> Result<u64, DbError> {
    let now = now_millis();
    let deleted = on_backend!(tx, conn => {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE (scope, request_id) IN ( \
               SELECT scope, request_id FROM idempotency_keys \
               WHERE expires_at <= $1 AND (state = 'done' OR locked_until <= $1) \
               LIMIT $2)",
        )
        .bind(now)
        .bind(i64::from(batch))
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(deleted)
}
