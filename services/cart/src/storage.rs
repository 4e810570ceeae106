//! Every SQL statement of the cart service. Each function runs inside the caller's transaction;
//! the statements are portable and run on SQLite and Postgres alike.

use checkout_kit::db::{DbError, Statements, Tx};
use checkout_kit::on_backend;

use crate::catalog::CatalogEntry;

/// A catalog product as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProductRow {
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Longer description.
    pub description: String,
    /// Price of one unit in minor units.
    pub unit_price_minor: i64,
    /// ISO 4217 currency.
    pub currency_code: String,
    /// Whether it can be added to carts.
    pub active: bool,
}

/// A cart as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CartRow {
    /// Cart id.
    pub cart_id: String,
    /// Owner.
    pub customer_id: String,
    /// ISO 4217 currency.
    pub currency_code: String,
    /// `active`, `checking_out` or `ordered`.
    pub state: String,
    /// The checkout holding the lock, once locked.
    pub checkout_id: Option<String>,
    /// Bumped by every change.
    pub version: i64,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Epoch milliseconds.
    pub updated_at: i64,
}

/// A cart line with its product's name.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LineRow {
    /// Stock keeping unit.
    pub sku: String,
    /// Product name.
    pub name: String,
    /// Units.
    pub quantity: i64,
    /// Price of one unit when the line last changed (or when the cart was locked).
    pub unit_price_minor: i64,
    /// Whether the product is still sold.
    pub active: bool,
    /// The catalog's current price.
    pub catalog_price_minor: i64,
}

const CART_COLUMNS: &str =
    "cart_id, customer_id, currency_code, state, checkout_id, version, created_at, updated_at";

/// Inserts or updates the catalog's products.
pub async fn upsert_products(
    tx: &mut Tx,
    entries: &[CatalogEntry],
    now: i64,
) -> Result<(), DbError> {
    for entry in entries {
        on_backend!(tx, conn => {
            sqlx::query(
                "INSERT INTO products \
                   (sku, name, description, unit_price_minor, currency_code, active, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (sku) DO UPDATE SET name = excluded.name, \
                   description = excluded.description, \
                   unit_price_minor = excluded.unit_price_minor, \
                   currency_code = excluded.currency_code, active = excluded.active, \
                   updated_at = excluded.updated_at",
            )
            .bind(&entry.sku)
            .bind(&entry.name)
            .bind(&entry.description)
            .bind(entry.unit_price_minor)
            .bind(&entry.currency_code)
            .bind(entry.active)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        });
    }
    Ok(())
}

/// Active products after `after_sku`, by sku, optionally in one currency.
pub async fn list_products(
    tx: &mut Tx,
    currency: Option<&str>,
    after_sku: &str,
    limit: i64,
) -> Result<Vec<ProductRow>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT sku, name, description, unit_price_minor, currency_code, active \
             FROM products \
             WHERE active AND sku > $1 AND ($2 IS NULL OR currency_code = $2) \
             ORDER BY sku LIMIT $3",
        )
        .bind(after_sku)
        .bind(currency)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
    }))
}

/// One product, active or not.
pub async fn product(tx: &mut Tx, sku: &str) -> Result<Option<ProductRow>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(
            "SELECT sku, name, description, unit_price_minor, currency_code, active \
             FROM products WHERE sku = $1",
        )
        .bind(sku)
        .fetch_optional(&mut *conn)
        .await?
    }))
}

/// True when some active product is priced in `currency`.
pub async fn currency_is_sold(tx: &mut Tx, currency: &str) -> Result<bool, DbError> {
    let n: i64 = on_backend!(tx, conn => {
        sqlx::query_scalar(
            "SELECT count(*) FROM products WHERE active AND currency_code = $1",
        )
        .bind(currency)
        .fetch_one(&mut *conn)
        .await?
    });
    Ok(n > 0)
}

/// Stores a new cart.
pub async fn insert_cart(tx: &mut Tx, cart: &CartRow) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO carts (cart_id, customer_id, currency_code, state, checkout_id, \
               version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&cart.cart_id)
        .bind(&cart.customer_id)
        .bind(&cart.currency_code)
        .bind(&cart.state)
        .bind(&cart.checkout_id)
        .bind(cart.version)
        .bind(cart.created_at)
        .bind(cart.updated_at)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Reads a cart.
pub async fn cart(tx: &mut Tx, cart_id: &str) -> Result<Option<CartRow>, DbError> {
    let sql = format!("SELECT {CART_COLUMNS} FROM carts WHERE cart_id = $1");
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(cart_id).fetch_optional(&mut *conn).await?
    }))
}

/// Reads the cart a checkout locked (or ordered).
pub async fn cart_by_checkout(tx: &mut Tx, checkout_id: &str) -> Result<Option<CartRow>, DbError> {
    let sql = format!("SELECT {CART_COLUMNS} FROM carts WHERE checkout_id = $1");
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(checkout_id).fetch_optional(&mut *conn).await?
    }))
}

/// [`bump_cart`]'s statement: `$1` the cart, `$2` the time.
fn bump_sql() -> String {
    format!(
        "UPDATE carts SET version = version + 1, updated_at = $2 WHERE cart_id = $1 \
         RETURNING {CART_COLUMNS}"
    )
}

/// Bumps a cart's version as the first write of a change, which takes the cart's row lock on
/// Postgres (SQLite's `BEGIN IMMEDIATE` already serialises writers): a concurrent change of the
/// same cart waits here and then sees this one, so a lock and an edit can never both win.
pub async fn bump_cart(tx: &mut Tx, cart_id: &str, now: i64) -> Result<Option<CartRow>, DbError> {
    let sql = bump_sql();
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(cart_id).bind(now).fetch_optional(&mut *conn).await?
    }))
}

/// Moves a cart to a state ([`set_state`]).
const SET_STATE: &str = "UPDATE carts SET state = $2, checkout_id = $3 WHERE cart_id = $1";

/// Moves a cart to a state, with the checkout that holds it, as the last write of a request
/// whose key is stored next ([`Tx::write_last`]: on SQLite one hand-off with the key's).
pub async fn set_state_last(
    tx: &mut Tx,
    cart_id: &str,
    state: &str,
    checkout_id: Option<&str>,
) -> Result<(), DbError> {
    tx.write_last(
        SET_STATE.to_owned(),
        vec![cart_id.into(), state.into(), checkout_id.into()],
    )
    .await
}

/// Moves a cart to a state, with the checkout that holds it (none when active).
pub async fn set_state(
    tx: &mut Tx,
    cart_id: &str,
    state: &str,
    checkout_id: Option<&str>,
) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(SET_STATE)
            .bind(cart_id)
            .bind(state)
            .bind(checkout_id)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// A cart's lines in the order they were added, with their products' current state.
pub async fn lines(tx: &mut Tx, cart_id: &str) -> Result<Vec<LineRow>, DbError> {
    let sql = lines_sql("$1");
    Ok(on_backend!(tx, conn => {
        sqlx::query_as(&sql).bind(cart_id).fetch_all(&mut *conn).await?
    }))
}

/// The statement reading the lines of the cart `cart` names (a parameter or a subquery).
fn lines_sql(cart: &str) -> String {
    format!(
        "SELECT l.sku, p.name, l.quantity, l.unit_price_minor, p.active, \
                p.unit_price_minor AS catalog_price_minor \
         FROM cart_lines l JOIN products p ON p.sku = l.sku \
         WHERE l.cart_id = {cart} ORDER BY l.position"
    )
}

/// Sets a line's quantity and price, adding it at the end when new.
pub async fn put_line(
    tx: &mut Tx,
    cart_id: &str,
    sku: &str,
    quantity: i64,
    unit_price_minor: i64,
) -> Result<(), DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO cart_lines (cart_id, sku, quantity, unit_price_minor, position) \
             VALUES ($1, $2, $3, $4, \
               (SELECT COALESCE(MAX(position), 0) + 1 FROM cart_lines WHERE cart_id = $1)) \
             ON CONFLICT (cart_id, sku) DO UPDATE SET quantity = excluded.quantity, \
               unit_price_minor = excluded.unit_price_minor",
        )
        .bind(cart_id)
        .bind(sku)
        .bind(quantity)
        .bind(unit_price_minor)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Removes a line; false when there was none.
pub async fn delete_line(tx: &mut Tx, cart_id: &str, sku: &str) -> Result<bool, DbError> {
    let n = on_backend!(tx, conn => {
        sqlx::query("DELETE FROM cart_lines WHERE cart_id = $1 AND sku = $2")
            .bind(cart_id)
            .bind(sku)
            .execute(&mut *conn)
            .await?
            .rows_affected()
    });
    Ok(n == 1)
}

/// A checkout's record: which cart it concerns and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckoutRow {
    /// The cart, when known.
    pub cart_id: Option<String>,
    /// `locked`, `released` or `completed`.
    pub state: String,
}

/// A lock's first writes and the reads it decides on, sent together ([`Tx::run_together`]: one
/// hand-off on SQLite): the checkout's record claimed for `cart_id`, or as an earlier claim left
/// it (which the caller must honour: a released checkout never locks); the cart with its
/// version bumped ([`bump_cart`]), `None` when there is no such cart; and its lines.
pub async fn claim_and_bump(
    tx: &mut Tx,
    checkout_id: &str,
    cart_id: &str,
    now: i64,
) -> Result<(CheckoutRow, Option<CartRow>, Vec<LineRow>), DbError> {
    let answers = tx
        .run_together(
            Statements::new()
                // A conflict "updates" the record to itself, so the one statement returns it in
                // both cases (a read after it would cost Postgres a round trip).
                .then(
                    "INSERT INTO cart_checkouts (checkout_id, cart_id, state, updated_at) \
                     VALUES ($1, $2, 'locked', $3) \
                     ON CONFLICT (checkout_id) DO UPDATE SET state = cart_checkouts.state \
                     RETURNING cart_id, state",
                    vec![checkout_id.into(), cart_id.into(), now.into()],
                )
                .then(bump_sql(), vec![cart_id.into(), now.into()])
                .then(lines_sql("$1"), vec![cart_id.into()]),
        )
        .await?;
    let record = answers[0]
        .first()?
        .ok_or(DbError::Query(sqlx::Error::RowNotFound))?;
    Ok((record, answers[1].first()?, answers[2].rows()?))
}

/// Marks a checkout released (recording it if it never locked); a completed checkout stays
/// completed. Returns the record as it now stands.
pub async fn release_checkout(
    tx: &mut Tx,
    checkout_id: &str,
    cart_id: Option<&str>,
    now: i64,
) -> Result<CheckoutRow, DbError> {
    on_backend!(tx, conn => {
        sqlx::query(
            "INSERT INTO cart_checkouts (checkout_id, cart_id, state, updated_at) \
             VALUES ($1, $2, 'released', $3) \
             ON CONFLICT (checkout_id) DO UPDATE SET state = 'released', updated_at = $3 \
             WHERE cart_checkouts.state = 'locked'",
        )
        .bind(checkout_id)
        .bind(cart_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    });
    // The row was written just above in this transaction; its absence is a database fault.
    checkout(tx, checkout_id)
        .await?
        .ok_or(DbError::Query(sqlx::Error::RowNotFound))
}

/// Completing a checkout, sent together ([`Tx::run_together`]: one hand-off on SQLite): its
/// record marked completed, false when it is not locked (never, or released); the cart it
/// holds turned into an order with its version bumped (the row lock on Postgres, as
/// [`bump_cart`] takes it), `None` when it holds none; and that cart's lines.
pub async fn complete_and_order(
    tx: &mut Tx,
    checkout_id: &str,
    now: i64,
) -> Result<(bool, Option<CartRow>, Vec<LineRow>), DbError> {
    let answers = tx
        .run_together(
            Statements::new()
                .then(
                    "UPDATE cart_checkouts SET state = 'completed', updated_at = $2 \
                     WHERE checkout_id = $1 AND state IN ('locked', 'completed')",
                    vec![checkout_id.into(), now.into()],
                )
                .then(
                    format!(
                        "UPDATE carts SET version = version + 1, updated_at = $2, \
                         state = 'ordered' WHERE checkout_id = $1 RETURNING {CART_COLUMNS}"
                    ),
                    vec![checkout_id.into(), now.into()],
                )
                .then(
                    lines_sql("(SELECT cart_id FROM carts WHERE checkout_id = $1)"),
                    vec![checkout_id.into()],
                ),
        )
        .await?;
    Ok((
        answers[0].rows_affected() == 1,
        answers[1].first()?,
        answers[2].rows()?,
    ))
}

/// A checkout's record.
pub async fn checkout(tx: &mut Tx, checkout_id: &str) -> Result<Option<CheckoutRow>, DbError> {
    Ok(on_backend!(tx, conn => {
        sqlx::query_as("SELECT cart_id, state FROM cart_checkouts WHERE checkout_id = $1")
            .bind(checkout_id)
            .fetch_optional(&mut *conn)
            .await?
    }))
}

/// Every cart's state and checkout (for audits: the chaos runner's invariant checks).
pub async fn audit_carts(tx: &mut Tx) -> Result<Vec<CartRow>, DbError> {
    let sql = format!("SELECT {CART_COLUMNS} FROM carts ORDER BY cart_id");
    Ok(on_backend!(tx, conn => sqlx::query_as(&sql).fetch_all(&mut *conn).await?))
}
