//! Statements of one transaction that a handler sends together because none of them needs an
//! earlier one's answer to be written: on SQLite they go to the connection's thread as one
//! string (one hand-off, two thread switches, instead of one per statement), on Postgres they
//! run one round trip each, as they would one by one. Each statement's answer comes back on its
//! own, so the handler decides on them after, exactly as it would have between them; a
//! statement that only a refusal would have skipped runs anyway and is rolled back with the
//! refusal.

use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Either, FromRow};

use super::last_write::bind;
use super::{DbError, Tx, Value, shift_parameters};

/// Statements to run in order in one transaction, each with its values.
#[derive(Debug, Default)]
pub struct Statements {
    parts: Vec<(String, Vec<Value>)>,
}

impl Statements {
    /// No statement yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a statement whose `$n` parameters name `values` by position.
    pub fn then(mut self, sql: impl Into<String>, values: Vec<Value>) -> Self {
        self.parts.push((sql.into(), values));
        self
    }

    /// Adds `more`'s statements after these.
    pub fn and(mut self, more: Statements) -> Self {
        self.parts.extend(more.parts);
        self
    }

    /// Whether there is no statement.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The statements as one string, each one's parameters numbered after its predecessors'.
    fn joined(&self, before: usize) -> String {
        let mut bound = before;
        let mut sql = String::new();
        for (text, values) in &self.parts {
            if !sql.is_empty() {
                sql.push_str("; ");
            }
            if bound == 0 {
                sql.push_str(text);
            } else {
                sql.push_str(&shift_parameters(text, bound));
            }
            bound += values.len();
        }
        sql
    }

    /// Every statement's values, in order.
    fn values(&self) -> impl Iterator<Item = &Value> {
        self.parts.iter().flat_map(|(_, values)| values)
    }
}

/// One statement's answer: its rows and, for a write, the rows it changed.
pub struct Answer {
    rows_affected: u64,
    rows: Rows,
}

enum Rows {
    Sqlite(Vec<SqliteRow>),
    Postgres(Vec<PgRow>),
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = match &self.rows {
            Rows::Sqlite(rows) => rows.len(),
            Rows::Postgres(rows) => rows.len(),
        };
        f.debug_struct("Answer")
            .field("rows_affected", &self.rows_affected)
            .field("rows", &rows)
            .finish()
    }
}

impl Answer {
    /// Rows the statement inserted, updated or deleted (meaningless for a read on SQLite,
    /// which reports the last write's count).
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }

    /// The rows it returned, decoded.
    pub fn rows<T>(&self) -> Result<Vec<T>, DbError>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        Ok(match &self.rows {
            Rows::Sqlite(rows) => rows.iter().map(T::from_row).collect::<Result<_, _>>()?,
            Rows::Postgres(rows) => rows.iter().map(T::from_row).collect::<Result<_, _>>()?,
        })
    }

    /// Its first row, decoded, if it returned one.
    pub fn first<T>(&self) -> Result<Option<T>, DbError>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        Ok(match &self.rows {
            Rows::Sqlite(rows) => rows.first().map(T::from_row).transpose()?,
            Rows::Postgres(rows) => rows.first().map(T::from_row).transpose()?,
        })
    }
}

impl Tx {
    /// Runs `statements` in order and returns each one's answer; the first that fails stops
    /// the rest and fails the call (the transaction must then be rolled back). A write held by
    /// [`Tx::write_last`] runs first, in the same string on SQLite.
    pub async fn run_together(&mut self, statements: Statements) -> Result<Vec<Answer>, DbError> {
        if statements.is_empty() {
            // Nothing to send: a held write stays held for the key's statement.
            return Ok(Vec::new());
        }
        match self {
            Tx::Sqlite(_) => {
                let held = self.take_last_write();
                let Tx::Sqlite(conn) = self else {
                    unreachable!("matched above")
                };
                let before = held.as_ref().map_or(0, super::LastWrite::len);
                let mut sql = statements.joined(before);
                if let Some(held) = &held {
                    sql = format!("{}; {sql}", held.sql());
                }
                let mut query = sqlx::query(&sql);
                if let Some(held) = &held {
                    query = held.bind(query);
                }
                query = statements.values().fold(query, bind);
                let mut answers = Vec::with_capacity(statements.parts.len() + 1);
                let mut rows = Vec::new();
                let mut results = sqlx::Executor::fetch_many(&mut *conn, query);
                while let Some(result) = results.try_next().await? {
                    match result {
                        Either::Right(row) => rows.push(row),
                        Either::Left(done) => answers.push(Answer {
                            rows_affected: done.rows_affected(),
                            rows: Rows::Sqlite(std::mem::take(&mut rows)),
                        }),
                    }
                }
                drop(results);
                if held.is_some() && !answers.is_empty() {
                    answers.remove(0);
                }
                complete(answers, statements.parts.len())
            }
            Tx::Postgres(conn) => {
                let conn: &mut sqlx::PgConnection = conn;
                let mut answers = Vec::with_capacity(statements.parts.len());
                for (sql, values) in &statements.parts {
                    let query = values.iter().fold(sqlx::query(sql), bind);
                    let mut rows = Vec::new();
                    let mut rows_affected = 0;
                    let mut results = sqlx::Executor::fetch_many(&mut *conn, query);
                    while let Some(result) = results.try_next().await? {
                        match result {
                            Either::Right(row) => rows.push(row),
                            Either::Left(done) => rows_affected += done.rows_affected(),
                        }
                    }
                    answers.push(Answer {
                        rows_affected,
                        rows: Rows::Postgres(rows),
                    });
                }
                Ok(answers)
            }
        }
    }
}

/// The answers, if there is one for every statement.
fn complete(answers: Vec<Answer>, expected: usize) -> Result<Vec<Answer>, DbError> {
    if answers.len() == expected {
        Ok(answers)
    } else {
        Err(DbError::Query(sqlx::Error::Protocol(format!(
            "{expected} statements sent together, {} answered",
            answers.len()
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Backend, Db};
    use crate::on_backend;
    use crate::testing::{TestDatabase, assert_one_hand_off, statement_log};

    async fn setup() -> (TestDatabase, Db) {
        TestDatabase::with_scratch_table(
            "together",
            "CREATE TABLE together (id TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        )
        .await
    }

    async fn stored(db: &Db) -> Vec<(String, i64)> {
        let mut tx = db.single_read().await.unwrap();
        let rows = on_backend!(&mut tx, conn => {
            sqlx::query_as("SELECT id, n FROM together ORDER BY id")
                .fetch_all(&mut *conn)
                .await
                .unwrap()
        });
        tx.rollback().await.unwrap();
        rows
    }

    #[tokio::test]
    async fn statements_sent_together_answer_one_by_one_in_one_hand_off() {
        statement_log();
        let (_database, db) = setup().await;
        let before = statement_log().len();
        let mut tx = db.begin().await.unwrap();
        let answers = tx
            .run_together(
                Statements::new()
                    .then(
                        "INSERT INTO together (id, n) VALUES ($1, $2)",
                        vec!["a".into(), 5.into()],
                    )
                    .then(
                        "UPDATE together SET n = n + $2 WHERE id = $1 RETURNING id, n",
                        vec!["a".into(), 2.into()],
                    )
                    .then("UPDATE together SET n = 0 WHERE id = $1", vec!["zz".into()])
                    .then(
                        "SELECT id, n FROM together WHERE id = $1 OR id = $2 ORDER BY id",
                        vec!["a".into(), "zz".into()],
                    ),
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let logged = statement_log()[before..].to_vec();

        assert_eq!(answers.len(), 4);
        assert_eq!(answers[0].rows_affected(), 1);
        assert!(answers[0].rows::<(String, i64)>().unwrap().is_empty());
        assert_eq!(answers[1].rows_affected(), 1);
        assert_eq!(
            answers[1].first::<(String, i64)>().unwrap(),
            Some(("a".to_owned(), 7))
        );
        assert_eq!(answers[2].rows_affected(), 0);
        assert_eq!(
            answers[3].rows::<(String, i64)>().unwrap(),
            vec![("a".to_owned(), 7)]
        );
        assert_eq!(stored(&db).await, vec![("a".to_owned(), 7)]);
        if db.backend() == Backend::Sqlite {
            assert_one_hand_off(
                &logged,
                &[
                    "UPDATE together SET n = n + $4",
                    "BEGIN IMMEDIATE",
                    "INSERT INTO together",
                    "UPDATE together SET n = 0 WHERE id = $5",
                    "SELECT id, n FROM together WHERE id = $6 OR id = $7",
                ],
                "together",
                4,
            );
        }
    }

    #[tokio::test]
    async fn a_held_write_runs_first_and_a_failing_statement_stops_the_rest() {
        statement_log();
        let (_database, db) = setup().await;
        let before = statement_log().len();
        let mut tx = db.begin().await.unwrap();
        tx.write_last(
            "INSERT INTO together (id, n) VALUES ($1, $2)".to_owned(),
            vec!["held".into(), 1.into()],
        )
        .await
        .unwrap();
        let answers = tx
            .run_together(Statements::new().then("SELECT id, n FROM together", vec![]))
            .await
            .unwrap();
        assert_eq!(
            answers[0].rows::<(String, i64)>().unwrap(),
            vec![("held".to_owned(), 1)]
        );
        if db.backend() == Backend::Sqlite {
            let logged = statement_log()[before..].to_vec();
            assert_one_hand_off(
                &logged,
                &["INSERT INTO together", "SELECT id, n FROM together"],
                "together",
                2,
            );
        }
        // The second insert breaks the key: the third never runs, and the caller rolls back.
        let failed = tx
            .run_together(
                Statements::new()
                    .then(
                        "INSERT INTO together (id, n) VALUES ($1, 2)",
                        vec!["b".into()],
                    )
                    .then(
                        "INSERT INTO together (id, n) VALUES ($1, 3)",
                        vec!["b".into()],
                    )
                    .then(
                        "UPDATE together SET n = 100 WHERE id = $1",
                        vec!["held".into()],
                    ),
            )
            .await;
        assert!(failed.is_err_and(|e| e.is_unique_violation()));
        tx.rollback().await.unwrap();
        assert!(stored(&db).await.is_empty());
    }
}
