//! A SQLite transaction opens with its first statement: `BEGIN`, `BEGIN IMMEDIATE` or a
//! writer's savepoint goes to the connection's thread in one string with the statement, instead
//! of in a hand-off of its own. sqlx runs every SQLite connection on a thread of its own and
//! hands it each string over a channel (two thread switches); on the writer connection that
//! cost is paid while every other writer waits in line, once per write transaction.
//!
//! The opening's own result comes back first, so the transaction knows it is open as soon as
//! that result is in. A string whose answer stopped before it (an error, or a caller that gave
//! up waiting) leaves the opening in doubt: the transaction then runs no further statement, and
//! its rollback is written to be right whether the opening ran or not.

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sqlx::sqlite::{SqliteQueryResult, SqliteRow, SqliteStatement, SqliteTypeInfo};
use sqlx::{Describe, Either, Execute, Executor, Sqlite, SqliteConnection};

use super::SqliteTx;

/// How far the statement that opens a SQLite transaction has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Not sent yet: it goes in front of the transaction's first statement.
    Pending(&'static str),
    /// Sent, but its result never came back: it may or may not have run.
    InDoubt,
    /// It ran: the transaction is open.
    Ran,
}

impl Opening {
    /// Whether a statement of the transaction may have run.
    pub(super) fn sent(self) -> bool {
        !matches!(self, Self::Pending(_))
    }
}

/// The error of a statement sent after the opening failed.
pub(super) fn not_open() -> sqlx::Error {
    sqlx::Error::Protocol(
        "the transaction did not open (its opening statement failed or was cut off); \
         it can only be rolled back"
            .to_owned(),
    )
}

impl SqliteTx {
    /// The connection to run statements on, and the transaction's opening while it has not run.
    fn parts(&mut self) -> (&mut SqliteConnection, Option<&mut Opening>) {
        let (conn, opening) = match self {
            Self::Single(lease) => return (lease.conn(), None),
            Self::Read(lease, opening) => (lease.conn(), opening),
            Self::Write(tx) => tx.parts(),
        };
        match opening {
            Opening::Ran => (conn, None),
            _ => (conn, Some(opening)),
        }
    }
}

/// Runs `query` with the opening in front of it, returning the query's own results.
async fn opened<'q, E>(
    conn: &mut SqliteConnection,
    opening: &mut Opening,
    mut query: E,
) -> Result<Vec<Either<SqliteQueryResult, SqliteRow>>, sqlx::Error>
where
    E: 'q + Execute<'q, Sqlite>,
{
    let Opening::Pending(first) = *opening else {
        return Err(not_open());
    };
    let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
    // As sqlx decides for the statement alone: a string without arguments is not cached.
    let persistent = query.persistent() && arguments.is_some();
    let sql = format!("{first}; {}", query.sql());
    let folded = match arguments {
        Some(arguments) => sqlx::query_with(&sql, arguments),
        None => sqlx::query(&sql),
    }
    .persistent(persistent);
    *opening = Opening::InDoubt;
    let mut answers = conn.fetch_many(folded);
    // One result per statement of the opening, each a done statement without rows.
    let mut opening_results = first.split(';').count();
    let mut results = Vec::new();
    while let Some(answer) = answers.try_next().await? {
        if opening_results > 0 && answer.is_left() {
            opening_results -= 1;
            if opening_results == 0 {
                *opening = Opening::Ran;
            }
            continue;
        }
        results.push(answer);
    }
    Ok(results)
}

impl<'c> Executor<'c> for &'c mut SqliteTx {
    type Database = Sqlite;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<SqliteQueryResult, SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        match self.parts() {
            (conn, None) => conn.fetch_many(query),
            (conn, Some(opening)) => stream::once(opened(conn, opening, query))
                .flat_map(|answer| {
                    stream::iter(match answer {
                        Ok(results) => results.into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(e)],
                    })
                })
                .boxed(),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        match self.parts() {
            (conn, None) => conn.fetch_optional(query),
            (conn, Some(opening)) => Box::pin(async move {
                let results = opened(conn, opening, query).await?;
                Ok(results.into_iter().find_map(Either::right))
            }),
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [SqliteTypeInfo],
    ) -> BoxFuture<'e, Result<SqliteStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.parts().0.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Sqlite>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.parts().0.describe(sql)
    }
}
