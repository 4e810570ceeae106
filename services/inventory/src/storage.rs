//! Every SQL statement of the inventory service, portable across SQLite and Postgres. Each runs
//! in the caller's transaction.

use checkout_kit::db::{Backend, DbError, Statements, Tx, Value, values_list};
use checkout_kit::on_backend;

/// A warehouse.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WarehouseRow {
    /// Warehouse id.
    pub warehouse_id: String,
    /// Region.
    pub region: String,
    /// Allocation order: lower first.
    pub priority: i64,
}

/// Stock of one sku in one warehouse, with the warehouse's priority.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StockRow {
    /// Stock keeping unit.
    pub sku: String,
    /// Warehouse.
    pub warehouse_id: String,
    /// Units present.
    pub on_hand: i64,
    /// Units held by active reservations.
    pub reserved: i64,
    /// Optimistic-lock version.
    pub version: i64,
    /// The warehouse's allocation order.
    pub priority: i64,
}

/// A reservation (or tombstone).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReservationRow {
    /// Reservation id.
    pub reservation_id: String,
    /// Checkout.
    pub checkout_id: String,
    /// `active`, `committed`, `released`, `expired` or `tombstone`.
    pub state: String,
    /// When an active reservation expires (epoch ms).
    pub expires_at: i64,
    /// Why it was released.
    pub release_reason: String,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub updated_at: i64,
}

/// A quantity of a sku, requested or allocated from a warehouse.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AllocationRow {
    /// Stock keeping unit.
    pub sku: String,
    /// Warehouse.
    pub warehouse_id: String,
    /// Units.
    pub quantity: i64,
}

/// A requested line.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LineRow {
    /// Stock keeping unit.
    pub sku: String,
    /// Units.
    pub quantity: i64,
}

const STOCK_COLUMNS: &str = "s.sku, s.warehouse_id, s.on_hand, s.reserved, s.version, w.priority";
const RESERVATION_COLUMNS: &str = "reservation_id, checkout_id, state, expires_at, \
     release_reason, created_at, updated_at";

/// Inserts or updates a warehouse.
pub async fn upsert_warehouse(
    tx: &mut Tx,
    warehouse_id: &str,
    region: &str,
    priority: i64,
) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO warehouses (warehouse_id, region, priority) VALUES ($1, $2, $3) \
             ON CONFLICT (warehouse_id) DO UPDATE SET region = excluded.region, \
               priority = excluded.priority",
        )
        .bind(warehouse_id)
        .bind(region)
        .bind(priority)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Creates a stock row unless one exists.
pub async fn insert_stock_if_absent(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
    on_hand: i64,
    now: i64,
) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO stock (sku, warehouse_id, on_hand, reserved, version, updated_at) \
             VALUES ($1, $2, $3, 0, 1, $4) ON CONFLICT (sku, warehouse_id) DO NOTHING",
        )
        .bind(sku)
        .bind(warehouse_id)
        .bind(on_hand)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Every warehouse by priority.
pub async fn warehouses(tx: &mut Tx) -> Result<Vec<WarehouseRow>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT warehouse_id, region, priority FROM warehouses \
             ORDER BY priority, warehouse_id",
        )
        .fetch_all(&mut *conn)
        .await?
    }))
}

/// True when the warehouse exists.
pub async fn warehouse_exists(tx: &mut Tx, warehouse_id: &str) -> Result<bool, DbError> {
    let n: i64 = on_backend!(tx, conn => {
        sqlx::query_scalar("SELECT count(*) FROM warehouses WHERE warehouse_id = $1")
            .bind(warehouse_id)
            .fetch_one(&mut *conn)
            .await?
    });
    Ok(n > 0)
}

/// [`stock_levels`]' statement: `$1` the sku.
fn stock_levels_sql() -> String {
    format!(
        "SELECT {STOCK_COLUMNS} FROM stock s JOIN warehouses w ON w.warehouse_id = s.warehouse_id \
         WHERE s.sku = $1 ORDER BY w.priority, s.warehouse_id"
    )
}

/// A sku's stock in every warehouse, in allocation order.
pub async fn stock_levels(tx: &mut Tx, sku: &str) -> Result<Vec<StockRow>, DbError> {
    let sql = stock_levels_sql();
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(sku).fetch_all(&mut *conn).await?
    }))
}

/// One stock row.
pub async fn stock_row(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
) -> Result<Option<StockRow>, DbError> {
    let sql = format!(
        "SELECT {STOCK_COLUMNS} FROM stock s JOIN warehouses w ON w.warehouse_id = s.warehouse_id \
         WHERE s.sku = $1 AND s.warehouse_id = $2"
    );
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(sku).bind(warehouse_id).fetch_optional(&mut *conn).await?
    }))
}

/// Sets on_hand unless that would fall below what is reserved; creates the row if missing.
/// False when refused.
pub async fn set_on_hand(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
    on_hand: i64,
    now: i64,
) -> Result<bool, DbError> {
    let n = on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO stock (sku, warehouse_id, on_hand, reserved, version, updated_at) \
             VALUES ($1, $2, $3, 0, 1, $4) \
             ON CONFLICT (sku, warehouse_id) DO UPDATE SET on_hand = excluded.on_hand, \
               version = stock.version + 1, updated_at = excluded.updated_at \
             WHERE stock.reserved <= excluded.on_hand",
        )
        .bind(sku)
        .bind(warehouse_id)
        .bind(on_hand)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(n == 1)
}

/// Changes on_hand by `delta` unless that would fall below what is reserved; a positive delta
/// creates a missing row. False when refused.
pub async fn adjust_on_hand(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
    delta: i64,
    now: i64,
) -> Result<bool, DbError> {
    if add_on_hand(tx, sku, warehouse_id, delta, now).await? {
        return Ok(true);
    }
    if delta <= 0 {
        return Ok(false);
    }
    let inserted = on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO stock (sku, warehouse_id, on_hand, reserved, version, updated_at) \
             VALUES ($1, $2, $3, 0, 1, $4) ON CONFLICT (sku, warehouse_id) DO NOTHING",
        )
        .bind(sku)
        .bind(warehouse_id)
        .bind(delta)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    // Zero means a concurrent writer created the row first: add to it instead.
    if inserted == 1 {
        Ok(true)
    } else {
        add_on_hand(tx, sku, warehouse_id, delta, now).await
    }
}

async fn add_on_hand(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
    delta: i64,
    now: i64,
) -> Result<bool, DbError> {
    let n = on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE stock SET on_hand = on_hand + $3, version = version + 1, updated_at = $4 \
             WHERE sku = $1 AND warehouse_id = $2 AND on_hand + $3 >= reserved",
        )
        .bind(sku)
        .bind(warehouse_id)
        .bind(delta)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(n == 1)
}

/// Reserves units by compare-and-set on the version read earlier; false when the row changed
/// since (a concurrent reservation won) or the units are no longer there.
pub async fn reserve_if_unchanged(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
    quantity: i64,
    version: i64,
    now: i64,
) -> Result<bool, DbError> {
    let n = on_backend!(tx, conn => {
        sqlx::query(
            "UPDATE stock SET reserved = reserved + $3, version = version + 1, updated_at = $5 \
             WHERE sku = $1 AND warehouse_id = $2 AND version = $4 \
               AND reserved + $3 <= on_hand",
        )
        .bind(sku)
        .bind(warehouse_id)
        .bind(quantity)
        .bind(version)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(n == 1)
}

/// Returns reserved units to availability, as a request's last write before its key
/// ([`Tx::write_last`]: on SQLite one hand-off with the key's).
pub async fn unreserve(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
    quantity: i64,
    now: i64,
) -> Result<(), DbError> {
    tx.write_last(
        "UPDATE stock SET reserved = reserved - $3, version = version + 1, updated_at = $4 \
         WHERE sku = $1 AND warehouse_id = $2"
            .to_owned(),
        vec![sku.into(), warehouse_id.into(), quantity.into(), now.into()],
    )
    .await
}

/// Reserved units leave the warehouse, as a request's last write before its key
/// ([`Tx::write_last`]).
pub async fn ship_out(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
    quantity: i64,
    now: i64,
) -> Result<(), DbError> {
    tx.write_last(
        "UPDATE stock SET on_hand = on_hand - $3, reserved = reserved - $3, \
           version = version + 1, updated_at = $4 \
         WHERE sku = $1 AND warehouse_id = $2"
            .to_owned(),
        vec![sku.into(), warehouse_id.into(), quantity.into(), now.into()],
    )
    .await
}

/// Inserts a reservation row for its checkout unless the checkout has one; false when it has.
pub async fn insert_reservation(tx: &mut Tx, row: &ReservationRow) -> Result<bool, DbError> {
    let answers = tx
        .run_together(Statements::new().then(INSERT_RESERVATION, reservation_values(row)))
        .await?;
    Ok(answers[0].rows_affected() == 1)
}

/// [`insert_reservation`] with the stock levels of each of `skus` ([`stock_levels`]) read after
/// it, sent together ([`Tx::run_together`]: one hand-off on SQLite); false (with the levels
/// read all the same) when the checkout has a reservation already.
pub async fn insert_reservation_reading_stock(
    tx: &mut Tx,
    row: &ReservationRow,
    skus: &[&str],
) -> Result<(bool, Vec<Vec<StockRow>>), DbError> {
    let statements = skus.iter().fold(
        Statements::new().then(INSERT_RESERVATION, reservation_values(row)),
        |statements, sku| statements.then(stock_levels_sql(), vec![(*sku).into()]),
    );
    let answers = tx.run_together(statements).await?;
    let levels = answers[1..]
        .iter()
        .map(|answer| answer.rows())
        .collect::<Result<_, _>>()?;
    Ok((answers[0].rows_affected() == 1, levels))
}

/// The statement of [`insert_reservation`].
const INSERT_RESERVATION: &str = "INSERT INTO reservations (reservation_id, checkout_id, state, \
     expires_at, release_reason, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (checkout_id) DO NOTHING";

/// A reservation's values for [`INSERT_RESERVATION`].
fn reservation_values(row: &ReservationRow) -> Vec<Value> {
    vec![
        row.reservation_id.as_str().into(),
        row.checkout_id.as_str().into(),
        row.state.as_str().into(),
        row.expires_at.into(),
        row.release_reason.as_str().into(),
        row.created_at.into(),
        row.updated_at.into(),
    ]
}

/// Records a reservation's requested lines (numbered from 1 in the order given) and where their
/// units come from, in one statement on Postgres and one hand-off to the writer connection's
/// thread on SQLite (a string of two multi-row inserts), whatever the number of lines.
pub async fn insert_lines_and_allocations(
    tx: &mut Tx,
    reservation_id: &str,
    lines: &[LineRow],
    allocations: &[&AllocationRow],
) -> Result<(), DbError> {
    if lines.is_empty() && allocations.is_empty() {
        return Ok(());
    }
    match tx {
        Tx::Postgres(conn) => {
            sqlx::query(
                "WITH line AS ( \
                   INSERT INTO reservation_lines (reservation_id, sku, quantity, position) \
                   SELECT $1, l.* FROM UNNEST($2::text[], $3::int8[], $4::int8[]) AS l \
                 ) \
                 INSERT INTO reservation_allocations (reservation_id, sku, warehouse_id, quantity) \
                 SELECT $1, a.* FROM UNNEST($5::text[], $6::text[], $7::int8[]) AS a",
            )
            .bind(reservation_id)
            .bind(lines.iter().map(|l| l.sku.as_str()).collect::<Vec<_>>())
            .bind(lines.iter().map(|l| l.quantity).collect::<Vec<_>>())
            .bind((1..=lines.len() as i64).collect::<Vec<_>>())
            .bind(
                allocations
                    .iter()
                    .map(|a| a.sku.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                allocations
                    .iter()
                    .map(|a| a.warehouse_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(allocations.iter().map(|a| a.quantity).collect::<Vec<_>>())
            .execute(&mut **conn)
            .await?;
        }
        Tx::Sqlite(conn) => {
            let mut sql = Vec::new();
            if !lines.is_empty() {
                sql.push(format!(
                    "INSERT INTO reservation_lines (reservation_id, sku, quantity, position) \
                     VALUES {}",
                    values_list(Backend::Sqlite, lines.len(), 4)
                ));
            }
            if !allocations.is_empty() {
                sql.push(format!(
                    "INSERT INTO reservation_allocations \
                       (reservation_id, sku, warehouse_id, quantity) VALUES {}",
                    values_list(Backend::Sqlite, allocations.len(), 4)
                ));
            }
            let sql = sql.join("; ");
            let mut q = sqlx::query(&sql);
            for (position, line) in (1_i64..).zip(lines) {
                q = q
                    .bind(reservation_id)
                    .bind(&line.sku)
                    .bind(line.quantity)
                    .bind(position);
            }
            for a in allocations {
                q = q
                    .bind(reservation_id)
                    .bind(&a.sku)
                    .bind(&a.warehouse_id)
                    .bind(a.quantity);
            }
            q.execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// A reservation by id.
pub async fn reservation(tx: &mut Tx, id: &str) -> Result<Option<ReservationRow>, DbError> {
    let sql = format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE reservation_id = $1");
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(id).fetch_optional(&mut *conn).await?
    }))
}

/// A checkout's reservation.
pub async fn reservation_by_checkout(
    tx: &mut Tx,
    checkout_id: &str,
) -> Result<Option<ReservationRow>, DbError> {
    let sql = format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE checkout_id = $1");
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(checkout_id).fetch_optional(&mut *conn).await?
    }))
}

/// A reservation's requested lines in request order.
pub async fn lines(tx: &mut Tx, reservation_id: &str) -> Result<Vec<LineRow>, DbError> {
    let sql = lines_sql("$1");
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(reservation_id).fetch_all(&mut *conn).await?
    }))
}

/// The statement reading the lines of the reservation `id` names (a parameter or a subquery).
fn lines_sql(id: &str) -> String {
    format!(
        "SELECT sku, quantity FROM reservation_lines WHERE reservation_id = {id} ORDER BY position"
    )
}

/// A reservation's allocations, in [`allocation_order`].
pub async fn allocations(tx: &mut Tx, reservation_id: &str) -> Result<Vec<AllocationRow>, DbError> {
    let sql = allocations_sql("$1");
    let ranked = on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(reservation_id).fetch_all(&mut *conn).await?
    });
    Ok(in_allocation_order(ranked))
}

/// The statement reading the allocations of the reservation `id` names (a parameter or a
/// subquery), with their warehouses' priorities ([`in_allocation_order`] sorts them).
fn allocations_sql(id: &str) -> String {
    format!(
        "SELECT a.sku, a.warehouse_id, a.quantity, w.priority FROM reservation_allocations a \
         JOIN warehouses w ON w.warehouse_id = a.warehouse_id WHERE a.reservation_id = {id}"
    )
}

/// Allocations as [`allocations_sql`] reads them, in [`allocation_order`].
fn in_allocation_order(ranked: Vec<(String, String, i64, i64)>) -> Vec<AllocationRow> {
    allocation_order(
        ranked
            .into_iter()
            .map(|(sku, warehouse_id, quantity, priority)| {
                (
                    AllocationRow {
                        sku,
                        warehouse_id,
                        quantity,
                    },
                    priority,
                )
            })
            .collect(),
    )
}

/// The order a reservation lists its allocations in: by sku, then by the warehouse's priority
/// and id. Sorted here, not by the database — Postgres orders text by the database's collation
/// — so a reservation built in memory lists them exactly as one read back.
pub fn allocation_order(mut ranked: Vec<(AllocationRow, i64)>) -> Vec<AllocationRow> {
    ranked.sort_by(|(a, a_priority), (b, b_priority)| {
        (&a.sku, a_priority, &a.warehouse_id).cmp(&(&b.sku, b_priority, &b.warehouse_id))
    });
    ranked.into_iter().map(|(a, _)| a).collect()
}

/// The column a statement names a reservation by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// `reservation_id`.
    Id,
    /// `checkout_id` (a checkout has at most one reservation).
    Checkout,
}

/// A reservation that has just left the active state, with what moving its units needs.
#[derive(Debug)]
pub struct Left {
    /// The reservation as it left.
    pub row: ReservationRow,
    /// Its allocations, in [`allocation_order`].
    pub allocations: Vec<AllocationRow>,
    /// Its requested lines, when asked for.
    pub lines: Vec<LineRow>,
}

/// Moves an active reservation to `to` and returns it as it left it, with its allocations and
/// (`with_lines`) its lines, all sent together ([`Tx::run_together`]: one hand-off on SQLite);
/// `None` when it is no longer active, or never was (someone else — a release, a commit,
/// another replica's reaper — got there first).
pub async fn leave_active(
    tx: &mut Tx,
    by: By,
    key: &str,
    to: &str,
    reason: &str,
    now: i64,
    with_lines: bool,
) -> Result<Option<Left>, DbError> {
    let (column, id) = match by {
        By::Id => ("reservation_id", "$1"),
        By::Checkout => (
            "checkout_id",
            "(SELECT reservation_id FROM reservations WHERE checkout_id = $1)",
        ),
    };
    let mut statements = Statements::new()
        .then(
            format!(
                "UPDATE reservations SET state = $2, release_reason = $3, updated_at = $4 \
                 WHERE {column} = $1 AND state = 'active' RETURNING {RESERVATION_COLUMNS}"
            ),
            vec![key.into(), to.into(), reason.into(), now.into()],
        )
        .then(allocations_sql(id), vec![key.into()]);
    if with_lines {
        statements = statements.then(lines_sql(id), vec![key.into()]);
    }
    let answers = tx.run_together(statements).await?;
    let Some(row) = answers[0].first()? else {
        return Ok(None);
    };
    Ok(Some(Left {
        row,
        allocations: in_allocation_order(answers[1].rows()?),
        lines: match answers.get(2) {
            Some(lines) => lines.rows()?,
            None => Vec::new(),
        },
    }))
}

/// Up to `limit` active reservations past their expiry, oldest first.
pub async fn due_reservations(tx: &mut Tx, now: i64, limit: i64) -> Result<Vec<String>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_scalar(
            "SELECT reservation_id FROM reservations \
             WHERE state = 'active' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
    }))
}

/// Every stock row (for audits).
pub async fn audit_stock(tx: &mut Tx) -> Result<Vec<StockRow>, DbError> {
    let sql = format!(
        "SELECT {STOCK_COLUMNS} FROM stock s JOIN warehouses w ON w.warehouse_id = s.warehouse_id \
         ORDER BY s.sku, s.warehouse_id"
    );
    Ok(on_backend!(tx, conn => sqlx::query_as(&sql).fetch_all(&mut *conn).await?))
}

/// Every reservation (for audits).
pub async fn audit_reservations(tx: &mut Tx) -> Result<Vec<ReservationRow>, DbError> {
    let sql = format!("SELECT {RESERVATION_COLUMNS} FROM reservations ORDER BY reservation_id");
    Ok(on_backend!(tx, conn => sqlx::query_as(&sql).fetch_all(&mut *conn).await?))
}

/// An allocation with its reservation (for audits).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditAllocation {
    /// Reservation.
    pub reservation_id: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Warehouse.
    pub warehouse_id: String,
    /// Units.
    pub quantity: i64,
}

/// Every allocation of every reservation (for audits).
pub async fn audit_allocations(tx: &mut Tx) -> Result<Vec<AuditAllocation>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT reservation_id, sku, warehouse_id, quantity FROM reservation_allocations \
             ORDER BY reservation_id, sku, warehouse_id",
        )
        .fetch_all(&mut *conn)
        .await?
    }))
}
