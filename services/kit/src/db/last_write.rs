//! A transaction's last write held back on SQLite until the idempotency key's statement, so
//! the two go to the writer connection's thread as one string: one hand-off instead of two.
//! Each hand-off costs the writer two thread switches while it holds the only write turn of
//! its database, so a statement less per request shortens every writer's wait in line.

use sqlx::Database;

use super::{DbError, SqliteTx, Tx};

/// A value bound to a held write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer, or NULL.
    Int(Option<i64>),
    /// A text, or NULL.
    Text(Option<String>),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_owned()))
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Self::Bytes(v.to_vec())
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        Self::Text(v.map(str::to_owned))
    }
}

/// Binds one value to a statement's next parameter.
pub(super) fn bind<'q, DB: Database>(query: Query<'q, DB>, value: &Value) -> Query<'q, DB>
where
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    match value {
        Value::Int(v) => query.bind(*v),
        Value::Text(v) => query.bind(v.clone()),
        Value::Bytes(v) => query.bind(v.clone()),
    }
}

/// A statement with its values, held by [`Tx::write_last`].
#[derive(Debug)]
pub(crate) struct LastWrite {
    sql: String,
    values: Vec<Value>,
}

/// A statement with its values bound so far, on either backend.
type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>;

impl LastWrite {
    /// The statement, to go first in a string of statements.
    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    /// How many values it binds: a statement after it in the same string numbers its own
    /// parameters from this plus one ([`shift_parameters`]).
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// Binds its values, in order.
    pub(crate) fn bind<'q, DB: Database>(&self, mut q: Query<'q, DB>) -> Query<'q, DB>
    where
        Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        for value in &self.values {
            q = bind(q, value);
        }
        q
    }

    async fn run(self, tx: &mut Tx) -> Result<(), DbError> {
        crate::on_backend!(tx, conn => {
            self.bind(sqlx::query(&self.sql)).execute(&mut *conn).await?;
        });
        Ok(())
    }
}

impl Tx {
    /// Runs a write whose outcome the caller does not need (`values` bound to its parameters
    /// in order) as the last statement of a transaction whose idempotency key is stored next.
    /// On SQLite it is held and goes to the writer's thread with the key's statement, in one
    /// hand-off; on Postgres, where statements cannot share a round trip, it runs at once.
    /// Nothing but the key's statement may follow it: a commit runs a write still held first,
    /// and a rollback drops it.
    pub async fn write_last(&mut self, sql: String, values: Vec<Value>) -> Result<(), DbError> {
        let write = LastWrite { sql, values };
        if !matches!(self, Tx::Sqlite(SqliteTx::Write(_))) {
            return write.run(self).await;
        }
        // A write held before runs now: the two keep their order.
        self.run_last_write().await?;
        if let Tx::Sqlite(SqliteTx::Write(tx)) = self {
            tx.hold_last(write);
        }
        Ok(())
    }

    /// The write [`Tx::write_last`] holds, for the key's statement to carry.
    pub(crate) fn take_last_write(&mut self) -> Option<LastWrite> {
        match self {
            Tx::Sqlite(SqliteTx::Write(tx)) => tx.take_last(),
            _ => None,
        }
    }

    /// Runs the write [`Tx::write_last`] holds, if any, before the transaction ends.
    pub(super) async fn run_last_write(&mut self) -> Result<(), DbError> {
        match self.take_last_write() {
            Some(write) => write.run(self).await,
            None => Ok(()),
        }
    }
}

/// Moves every `$n` parameter of `sql` up by `by`, for a statement that follows statements with
/// `by` values of their own in one string (a numbered parameter names its value by position
/// among all the values bound).
pub fn shift_parameters(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}
