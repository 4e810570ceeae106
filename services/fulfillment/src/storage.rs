//! Every SQL statement of the fulfillment service, portable across SQLite and Postgres. Each
//! runs in the caller's transaction, except the first create written with its key in one go,
//! which is a transaction of its own.

use std::sync::LazyLock;

use checkout_kit::db::{Backend, DbError, Tx, values_list};
use checkout_kit::idempotency::{Idempotency, Key, in_one_hand_off_sql, in_one_statement_sql};
use checkout_kit::on_backend;
use checkout_proto::fulfillment::CreateShipmentsResponse;

/// A shipment with its address.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ShipmentRow {
    /// Shipment id.
    pub shipment_id: String,
    /// Checkout.
    pub checkout_id: String,
    /// Warehouse it leaves from.
    pub warehouse_id: String,
    /// `pending`, `packed`, `shipped`, `delivered` or `cancelled`.
    pub status: String,
    /// Carrier tracking number, once shipped.
    pub tracking_number: String,
    /// Recipient.
    pub recipient_name: String,
    /// Address line 1.
    pub line1: String,
    /// Address line 2.
    pub line2: String,
    /// City.
    pub city: String,
    /// Region.
    pub region: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country_code: String,
    /// Phone.
    pub phone: String,
    /// Bumped by every change.
    pub version: i64,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub updated_at: i64,
}

/// A line of a shipment.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LineRow {
    /// Stock keeping unit.
    pub sku: String,
    /// Units.
    pub quantity: i64,
}

/// A status change.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EventRow {
    /// The status entered.
    pub status: String,
    /// Epoch ms.
    pub at: i64,
}

const SHIPMENT_COLUMNS: &str = "shipment_id, checkout_id, warehouse_id, status, \
     tracking_number, recipient_name, line1, line2, city, region, postal_code, country_code, \
     phone, version, created_at, updated_at";

/// Records a checkout's shipments as created; false when the checkout already has a record
/// (created before, cancelled, or tombstoned), which the caller then reads.
pub async fn claim_checkout(tx: &mut Tx, checkout_id: &str, now: i64) -> Result<bool, DbError> {
    let n = on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO fulfillment_checkouts (checkout_id, state, updated_at) \
             VALUES ($1, 'created', $2) ON CONFLICT (checkout_id) DO NOTHING",
        )
        .bind(checkout_id)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(n == 1)
}

/// On Postgres, the first create of a checkout as one statement with its idempotency key
/// (`Idempotency::in_one_statement`): the checkout's record, its shipments, their lines and
/// each one's `pending` event. Plain inserts: if the checkout has a record already, a unique
/// key refuses the statement and none of it is written.
static CREATE_IN_ONE_STATEMENT: LazyLock<String> = LazyLock::new(|| {
    in_one_statement_sql(&format!(
        "checkout AS ( \
           INSERT INTO fulfillment_checkouts (checkout_id, state, updated_at) \
           VALUES ($10, 'created', $11) \
         ), shipment AS ( \
           INSERT INTO shipments ({SHIPMENT_COLUMNS}) \
           SELECT * FROM UNNEST($12::text[], $13::text[], $14::text[], $15::text[], \
             $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], \
             $22::text[], $23::text[], $24::text[], $25::int8[], $26::int8[], $27::int8[]) \
         ), line AS ( \
           INSERT INTO shipment_lines (shipment_id, sku, quantity) \
           SELECT * FROM UNNEST($28::text[], $29::text[], $30::int8[]) \
         ) \
         INSERT INTO shipment_events (shipment_id, sequence, status, at) \
         SELECT e.shipment_id, 1, e.status, $11 FROM UNNEST($12::text[], $15::text[]) \
           AS e(shipment_id, status)"
    ))
});

/// Writes the first create of a checkout and its answer with the request's key in one go (one
/// statement on Postgres, one string of statements on SQLite); false when nothing was written
/// (the checkout or the key is known already), and the request goes the usual way.
pub async fn create_in_one_statement(
    idempotency: &Idempotency,
    key: &Key,
    answer: &CreateShipmentsResponse,
    checkout_id: &str,
    shipments: &[(ShipmentRow, Vec<LineRow>)],
    now: i64,
) -> Result<bool, tonic::Status> {
    let rows: Vec<&ShipmentRow> = shipments.iter().map(|(row, _)| row).collect();
    let lines: Vec<(&str, &LineRow)> = shipments
        .iter()
        .flat_map(|(row, lines)| lines.iter().map(|l| (row.shipment_id.as_str(), l)))
        .collect();
    // A plain insert of the checkout's record: a known checkout refuses the whole string.
    let sqlite = in_one_hand_off_sql(&format!(
        "INSERT INTO fulfillment_checkouts (checkout_id, state, updated_at) \
         VALUES (?, 'created', ?); {}",
        shipments_sqlite_sql(shipments.len(), lines.len())
    ));
    let postgres = CREATE_IN_ONE_STATEMENT.as_str();
    idempotency
        .in_one_statement(
            key,
            answer,
            (postgres, |query| {
                query
                    .bind(checkout_id)
                    .bind(now)
                    .bind(column(&rows, |r| r.shipment_id.as_str()))
                    .bind(column(&rows, |r| r.checkout_id.as_str()))
                    .bind(column(&rows, |r| r.warehouse_id.as_str()))
                    .bind(column(&rows, |r| r.status.as_str()))
                    .bind(column(&rows, |r| r.tracking_number.as_str()))
                    .bind(column(&rows, |r| r.recipient_name.as_str()))
                    .bind(column(&rows, |r| r.line1.as_str()))
                    .bind(column(&rows, |r| r.line2.as_str()))
                    .bind(column(&rows, |r| r.city.as_str()))
                    .bind(column(&rows, |r| r.region.as_str()))
                    .bind(column(&rows, |r| r.postal_code.as_str()))
                    .bind(column(&rows, |r| r.country_code.as_str()))
                    .bind(column(&rows, |r| r.phone.as_str()))
                    .bind(column(&rows, |r| r.version))
                    .bind(column(&rows, |r| r.created_at))
                    .bind(column(&rows, |r| r.updated_at))
                    .bind(column(&lines, |(id, _)| *id))
                    .bind(column(&lines, |(_, l)| l.sku.as_str()))
                    .bind(column(&lines, |(_, l)| l.quantity))
            }),
            (sqlite.as_str(), |query| {
                bind_shipments_sqlite(query.bind(checkout_id).bind(now), shipments, &lines)
            }),
        )
        .await
}

/// One column of rows, as an array parameter.
fn column<'a, R, T>(rows: &'a [R], f: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// Marks a checkout cancelled (a tombstone if nothing was created); returns its state after.
pub async fn cancel_checkout(tx: &mut Tx, checkout_id: &str, now: i64) -> Result<String, DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO fulfillment_checkouts (checkout_id, state, updated_at) \
             VALUES ($1, 'tombstone', $2) \
             ON CONFLICT (checkout_id) DO UPDATE SET state = 'cancelled', updated_at = $2 \
             WHERE fulfillment_checkouts.state = 'created'",
        )
        .bind(checkout_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    });
    checkout_state(tx, checkout_id)
        .await?
        .ok_or(DbError::Query(sqlx::Error::RowNotFound))
}

/// A checkout's record state.
pub async fn checkout_state(tx: &mut Tx, checkout_id: &str) -> Result<Option<String>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_scalar("SELECT state FROM fulfillment_checkouts WHERE checkout_id = $1")
            .bind(checkout_id)
            .fetch_optional(&mut *conn)
            .await?
    }))
}

/// Stores a checkout's new shipments, each with its lines and its first event (`status` of the
/// shipment, at its creation time). On SQLite the three tables' rows are one string sent to the
/// writer connection's thread: one hand-off whatever the number of shipments and lines.
pub async fn insert_shipments(
    tx: &mut Tx,
    shipments: &[(ShipmentRow, Vec<LineRow>)],
) -> Result<(), DbError> {
    let lines: Vec<(&str, &LineRow)> = shipments
        .iter()
        .flat_map(|(row, lines)| lines.iter().map(|l| (row.shipment_id.as_str(), l)))
        .collect();
    let conn = match tx {
        Tx::Sqlite(conn) => conn,
        Tx::Postgres(_) => {
            for (row, _) in shipments {
                insert_shipment(tx, row).await?;
            }
            for (shipment_id, line) in &lines {
                insert_line(tx, shipment_id, line).await?;
            }
            for (row, _) in shipments {
                append_event(tx, &row.shipment_id, &row.status, row.created_at).await?;
            }
            return Ok(());
        }
    };
    if shipments.is_empty() {
        return Ok(());
    }
    let sql = shipments_sqlite_sql(shipments.len(), lines.len());
    bind_shipments_sqlite(sqlx::query(&sql), shipments, &lines)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The SQLite inserts of `shipments` new shipments with `lines` lines, as one string (at least
/// one shipment): the values bound by [`bind_shipments_sqlite`].
fn shipments_sqlite_sql(shipments: usize, lines: usize) -> String {
    let mut sql = format!(
        "INSERT INTO shipments ({SHIPMENT_COLUMNS}) VALUES {}",
        values_list(Backend::Sqlite, shipments, 16)
    );
    if lines > 0 {
        sql += &format!(
            "; INSERT INTO shipment_lines (shipment_id, sku, quantity) VALUES {}",
            values_list(Backend::Sqlite, lines, 3)
        );
    }
    // A new shipment has no history: its first event is number 1.
    sql += &format!(
        "; INSERT INTO shipment_events (shipment_id, sequence, status, at) VALUES {}",
        values_list(Backend::Sqlite, shipments, 3).replace("(?, ", "(?, 1, ")
    );
    sql
}

/// Binds the values of [`shipments_sqlite_sql`]'s statements.
fn bind_shipments_sqlite<'q>(
    mut q: Query<'q, sqlx::Sqlite>,
    shipments: &'q [(ShipmentRow, Vec<LineRow>)],
    lines: &[(&'q str, &'q LineRow)],
) -> Query<'q, sqlx::Sqlite> {
    for (s, _) in shipments {
        q = bind_shipment(q, s);
    }
    for (shipment_id, line) in lines {
        q = q.bind(*shipment_id).bind(&line.sku).bind(line.quantity);
    }
    for (s, _) in shipments {
        q = q.bind(&s.shipment_id).bind(&s.status).bind(s.created_at);
    }
    q
}

/// A statement with its values bound so far, on either backend.
type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>;

/// Binds a shipment's columns in [`SHIPMENT_COLUMNS`] order.
fn bind_shipment<'q, DB: sqlx::Database>(q: Query<'q, DB>, s: &'q ShipmentRow) -> Query<'q, DB>
where
    &'q String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(&s.shipment_id)
        .bind(&s.checkout_id)
        .bind(&s.warehouse_id)
        .bind(&s.status)
        .bind(&s.tracking_number)
        .bind(&s.recipient_name)
        .bind(&s.line1)
        .bind(&s.line2)
        .bind(&s.city)
        .bind(&s.region)
        .bind(&s.postal_code)
        .bind(&s.country_code)
        .bind(&s.phone)
        .bind(s.version)
        .bind(s.created_at)
        .bind(s.updated_at)
}

/// Stores a new shipment.
async fn insert_shipment(tx: &mut Tx, s: &ShipmentRow) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO shipments ({SHIPMENT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    );
    on_backend!(tx, conn => {
        bind_shipment(sqlx::query(&sql), s)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// Stores a shipment line.
async fn insert_line(tx: &mut Tx, shipment_id: &str, line: &LineRow) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query("INSERT INTO shipment_lines (shipment_id, sku, quantity) VALUES ($1, $2, $3)")
            .bind(shipment_id)
            .bind(&line.sku)
            .bind(line.quantity)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// Appends a status change to a shipment's history.
pub async fn append_event(
    tx: &mut Tx,
    shipment_id: &str,
    status: &str,
    at: i64,
) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO shipment_events (shipment_id, sequence, status, at) \
             VALUES ($1, (SELECT COALESCE(MAX(sequence), 0) + 1 FROM shipment_events \
                          WHERE shipment_id = $1), $2, $3)",
        )
        .bind(shipment_id)
        .bind(status)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// A checkout's shipments by warehouse, in byte order of the warehouse id.
pub async fn shipments_of(tx: &mut Tx, checkout_id: &str) -> Result<Vec<ShipmentRow>, DbError> {
    let sql = format!("SELECT {SHIPMENT_COLUMNS} FROM shipments WHERE checkout_id = $1");
    let mut rows: Vec<ShipmentRow> = on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(checkout_id).fetch_all(&mut *conn).await?
    });
    // Sorted here, not by the database: Postgres orders text by the database's collation, and
    // a create answers in byte order without reading its shipments back.
    rows.sort_by(|a, b| a.warehouse_id.cmp(&b.warehouse_id));
    Ok(rows)
}

/// One shipment.
pub async fn shipment(tx: &mut Tx, shipment_id: &str) -> Result<Option<ShipmentRow>, DbError> {
    let sql = format!("SELECT {SHIPMENT_COLUMNS} FROM shipments WHERE shipment_id = $1");
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(shipment_id).fetch_optional(&mut *conn).await?
    }))
}

/// Bumps the version of every shipment of a checkout: the first write of a cancel, which takes
/// their row locks on Postgres so a concurrent advance waits and then sees the cancel.
pub async fn lock_checkout_shipments(tx: &mut Tx, checkout_id: &str) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query("UPDATE shipments SET version = version + 1 WHERE checkout_id = $1")
        .bind(checkout_id)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Moves a shipment from one status to the next; false when it is no longer in `from`.
pub async fn move_status(
    tx: &mut Tx,
    shipment_id: &str,
    from: &str,
    to: &str,
    tracking_number: Option<&str>,
    now: i64,
) -> Result<bool, DbError> {
    let n = on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE shipments SET status = $3, \
               tracking_number = COALESCE($4, tracking_number), \
               version = version + 1, updated_at = $5 \
             WHERE shipment_id = $1 AND status = $2",
        )
        .bind(shipment_id)
        .bind(from)
        .bind(to)
        .bind(tracking_number)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(n == 1)
}

/// A shipment's lines, in byte order of the sku (see [`shipments_of`]).
pub async fn lines(tx: &mut Tx, shipment_id: &str) -> Result<Vec<LineRow>, DbError> {
    let mut lines: Vec<LineRow> = on_backend!(tx, conn => {
        sqlx::query_as("SELECT sku, quantity FROM shipment_lines WHERE shipment_id = $1")
            .bind(shipment_id)
            .fetch_all(&mut *conn)
            .await?
    });
    lines.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(lines)
}

/// A shipment's history, oldest first.
pub async fn events(tx: &mut Tx, shipment_id: &str) -> Result<Vec<EventRow>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT status, at FROM shipment_events WHERE shipment_id = $1 ORDER BY sequence",
        )
        .bind(shipment_id)
        .fetch_all(&mut *conn)
        .await?
    }))
}

/// Every shipment (for audits).
pub async fn audit_shipments(tx: &mut Tx) -> Result<Vec<ShipmentRow>, DbError> {
    let sql =
        format!("SELECT {SHIPMENT_COLUMNS} FROM shipments ORDER BY checkout_id, warehouse_id");
    Ok(on_backend!(tx, conn => sqlx::query_as(&sql).fetch_all(&mut *conn).await?))
}
