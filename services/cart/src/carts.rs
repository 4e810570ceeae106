//! Cart use cases: each runs inside one transaction and returns the proto the RPC answers with.

use checkout_kit::db::timestamp;
use checkout_kit::db::{Tx, now_millis};
use checkout_kit::status::Rejection;
use checkout_proto::cart::{Cart, CartLine, CartSnapshot, CartState};
use checkout_proto::common::Money;

use crate::error::CartError;
use crate::storage::{self, CartRow, LineRow};

/// Per-cart limits.
#[derive(Debug, Clone)]
pub struct CartLimits {
    /// Most distinct lines in one cart.
    pub max_lines: usize,
    /// Most units on one line.
    pub max_quantity: i64,
}

impl Default for CartLimits {
    fn default() -> Self {
        Self {
            max_lines: 50,
            max_quantity: 100,
        }
    }
}

const ACTIVE: &str = "active";
const CHECKING_OUT: &str = "checking_out";
const ORDERED: &str = "ordered";

fn state_of(state: &str) -> CartState {
    match state {
        ACTIVE => CartState::Active,
        CHECKING_OUT => CartState::CheckingOut,
        ORDERED => CartState::Ordered,
        _ => CartState::Unspecified,
    }
}

fn money(amount_minor: i64, currency: &str) -> Money {
    Money {
        amount_minor,
        currency_code: currency.to_owned(),
    }
}

fn proto_lines(lines: &[LineRow], currency: &str) -> (Vec<CartLine>, i64) {
    let mut subtotal = 0_i64;
    let lines = lines
        .iter()
        .map(|l| {
            let total = l.quantity.saturating_mul(l.unit_price_minor);
            subtotal = subtotal.saturating_add(total);
            CartLine {
                sku: l.sku.clone(),
                name: l.name.clone(),
                quantity: l.quantity,
                unit_price: Some(money(l.unit_price_minor, currency)),
                line_total: Some(money(total, currency)),
            }
        })
        .collect();
    (lines, subtotal)
}

fn to_proto(cart: &CartRow, lines: &[LineRow]) -> Cart {
    let (lines, subtotal) = proto_lines(lines, &cart.currency_code);
    Cart {
        cart_id: cart.cart_id.clone(),
        customer_id: cart.customer_id.clone(),
        currency_code: cart.currency_code.clone(),
        state: state_of(&cart.state).into(),
        lines,
        subtotal: Some(money(subtotal, &cart.currency_code)),
        version: cart.version,
        checkout_id: cart.checkout_id.clone().unwrap_or_default(),
        create_time: Some(timestamp(cart.created_at)),
        update_time: Some(timestamp(cart.updated_at)),
    }
}

/// Reads a cart with its lines as the RPCs return it.
async fn load(tx: &mut Tx, cart: &CartRow) -> Result<Cart, CartError> {
    let lines = storage::lines(tx, &cart.cart_id).await?;
    Ok(to_proto(cart, &lines))
}

/// Creates an empty cart in a currency the catalog sells in.
pub async fn create(tx: &mut Tx, customer_id: &str, currency: &str) -> Result<Cart, CartError> {
    if !storage::currency_is_sold(tx, currency).await? {
        return Err(Rejection::invalid_field(
            "currency_code",
            format!("no product is sold in {currency}"),
        )
        .into());
    }
    let now = now_millis();
    let row = CartRow {
        cart_id: uuid::Uuid::now_v7().to_string(),
        customer_id: customer_id.to_owned(),
        currency_code: currency.to_owned(),
        state: ACTIVE.to_owned(),
        checkout_id: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    storage::insert_cart(tx, &row).await?;
    Ok(to_proto(&row, &[]))
}

/// A cart of `customer_id`; another customer's cart is not found.
pub async fn get(tx: &mut Tx, cart_id: &str, customer_id: &str) -> Result<Cart, CartError> {
    match storage::cart(tx, cart_id).await? {
        Some(cart) if cart.customer_id == customer_id => load(tx, &cart).await,
        _ => Err(CartError::CartNotFound(cart_id.to_owned())),
    }
}

/// Takes the cart for an edit: it must exist, be the customer's and be active.
async fn editable(tx: &mut Tx, cart_id: &str, customer_id: &str) -> Result<CartRow, CartError> {
    match storage::bump_cart(tx, cart_id, now_millis()).await? {
        Some(cart) if cart.customer_id == customer_id => {
            if cart.state == ACTIVE {
                Ok(cart)
            } else {
                Err(CartError::NotEditable(cart.state))
            }
        }
        _ => Err(CartError::CartNotFound(cart_id.to_owned())),
    }
}

/// How an edit sets a line's quantity.
#[derive(Debug, Clone, Copy)]
pub enum Quantity {
    /// Add to the line's current quantity (AddItem).
    Add(i64),
    /// Set the line's quantity; 0 removes it (UpdateItem).
    Set(i64),
}

/// Adds to or sets a line, priced from the catalog now.
pub async fn put_item(
    tx: &mut Tx,
    limits: &CartLimits,
    cart_id: &str,
    customer_id: &str,
    sku: &str,
    quantity: Quantity,
) -> Result<Cart, CartError> {
    let cart = editable(tx, cart_id, customer_id).await?;
    let lines = storage::lines(tx, cart_id).await?;
    let existing = lines.iter().find(|l| l.sku == sku).map(|l| l.quantity);
    let new_quantity = match quantity {
        Quantity::Add(n) => existing.unwrap_or(0).saturating_add(n),
        Quantity::Set(n) => n,
    };
    if new_quantity == 0 {
        if !storage::delete_line(tx, cart_id, sku).await? {
            return Err(CartError::LineNotFound(sku.to_owned()));
        }
        return load(tx, &cart).await;
    }

    let product = match storage::product(tx, sku).await? {
        Some(p) if p.active => p,
        Some(_) => return Err(Rejection::invalid_field("sku", "no longer sold").into()),
        None => return Err(Rejection::invalid_field("sku", "not in the catalog").into()),
    };
    if product.currency_code != cart.currency_code {
        return Err(Rejection::invalid_field(
            "sku",
            format!(
                "priced in {}; the cart is in {}",
                product.currency_code, cart.currency_code
            ),
        )
        .into());
    }
    if new_quantity > limits.max_quantity {
        return Err(Rejection::invalid_field(
            "quantity",
            format!("a line holds at most {} units", limits.max_quantity),
        )
        .into());
    }
    if existing.is_none() && lines.len() >= limits.max_lines {
        return Err(Rejection::invalid_field(
            "sku",
            format!("the cart already has the most lines, {}", limits.max_lines),
        )
        .into());
    }
    storage::put_line(tx, cart_id, sku, new_quantity, product.unit_price_minor).await?;
    load(tx, &cart).await
}

/// Removes a line.
pub async fn remove_item(
    tx: &mut Tx,
    cart_id: &str,
    customer_id: &str,
    sku: &str,
) -> Result<Cart, CartError> {
    let cart = editable(tx, cart_id, customer_id).await?;
    if !storage::delete_line(tx, cart_id, sku).await? {
        return Err(CartError::LineNotFound(sku.to_owned()));
    }
    load(tx, &cart).await
}

/// Locks an active cart for a checkout and returns its snapshot, priced from the catalog now.
pub async fn lock(
    tx: &mut Tx,
    cart_id: &str,
    checkout_id: &str,
    customer_id: &str,
) -> Result<CartSnapshot, CartError> {
    let now = now_millis();
    // The checkout's record first: an UnlockCart of the same checkout queues on it. What the
    // checks below refuse is rolled back with the refusal.
    let (record, cart, mut lines) = storage::claim_and_bump(tx, checkout_id, cart_id, now).await?;
    if record.state == "released" {
        return Err(CartError::CheckoutReleased(checkout_id.to_owned()));
    }
    if record.cart_id.as_deref() != Some(cart_id) {
        return Err(CartError::CheckoutOfAnotherCart(checkout_id.to_owned()));
    }
    let cart = cart.ok_or_else(|| CartError::CartNotFound(cart_id.to_owned()))?;
    if cart.customer_id != customer_id {
        return Err(CartError::CustomerMismatch);
    }
    match cart.state.as_str() {
        ACTIVE => {}
        CHECKING_OUT if cart.checkout_id.as_deref() == Some(checkout_id) => {
            return Ok(snapshot(&cart, checkout_id, &lines));
        }
        CHECKING_OUT => return Err(CartError::LockedByAnother),
        other => return Err(CartError::NotActive(other.to_owned())),
    }

    if lines.is_empty() {
        return Err(CartError::Empty);
    }
    let unavailable: Vec<String> = lines
        .iter()
        .filter(|l| !l.active)
        .map(|l| l.sku.clone())
        .collect();
    if !unavailable.is_empty() {
        return Err(CartError::ProductsUnavailable(unavailable));
    }
    for line in &mut lines {
        if line.unit_price_minor != line.catalog_price_minor {
            storage::put_line(
                tx,
                cart_id,
                &line.sku,
                line.quantity,
                line.catalog_price_minor,
            )
            .await?;
            line.unit_price_minor = line.catalog_price_minor;
        }
    }
    storage::set_state_last(tx, cart_id, CHECKING_OUT, Some(checkout_id)).await?;
    Ok(snapshot(&cart, checkout_id, &lines))
}

fn snapshot(cart: &CartRow, checkout_id: &str, lines: &[LineRow]) -> CartSnapshot {
    let (lines, subtotal) = proto_lines(lines, &cart.currency_code);
    CartSnapshot {
        cart_id: cart.cart_id.clone(),
        checkout_id: checkout_id.to_owned(),
        customer_id: cart.customer_id.clone(),
        lines,
        subtotal: Some(money(subtotal, &cart.currency_code)),
        currency_code: cart.currency_code.clone(),
        cart_version: cart.version,
    }
}

/// Releases a checkout's lock; records the release even when there was no lock, so a late
/// lock of that checkout is refused. Returns the cart (if the checkout had one) and whether a
/// lock was actually released.
pub async fn unlock(
    tx: &mut Tx,
    cart_id: Option<&str>,
    checkout_id: &str,
) -> Result<(Option<Cart>, bool), CartError> {
    let now = now_millis();
    let record = storage::release_checkout(tx, checkout_id, cart_id, now).await?;
    if let (Some(given), Some(recorded)) = (cart_id, record.cart_id.as_deref())
        && given != recorded
    {
        return Err(
            Rejection::invalid_field("cart_id", "not the cart this checkout locked").into(),
        );
    }
    if record.state == "completed" {
        return Err(CartError::AlreadyOrdered);
    }
    let Some(cart) = storage::cart_by_checkout(tx, checkout_id).await? else {
        return Ok((None, false));
    };
    let cart = storage::bump_cart(tx, &cart.cart_id, now)
        .await?
        .ok_or_else(|| CartError::CartNotFound(cart.cart_id.clone()))?;
    if cart.state == ORDERED {
        return Err(CartError::AlreadyOrdered);
    }
    storage::set_state(tx, &cart.cart_id, ACTIVE, None).await?;
    let cart = CartRow {
        state: ACTIVE.to_owned(),
        checkout_id: None,
        ..cart
    };
    Ok((Some(load(tx, &cart).await?), true))
}

/// Turns the cart locked by a checkout into an order.
pub async fn complete(
    tx: &mut Tx,
    cart_id: Option<&str>,
    checkout_id: &str,
) -> Result<Cart, CartError> {
    let now = now_millis();
    // The checkout's record first, as UnlockCart does: the two queue on it. One statement
    // finds, locks and orders the cart; a refusal below rolls both back.
    let not_locked = || CartError::NotLocked(checkout_id.to_owned());
    let (completed, cart, lines) = storage::complete_and_order(tx, checkout_id, now).await?;
    if !completed {
        return Err(not_locked());
    }
    let cart = cart.ok_or_else(not_locked)?;
    if cart_id.is_some_and(|given| given != cart.cart_id) {
        return Err(
            Rejection::invalid_field("cart_id", "not the cart this checkout locked").into(),
        );
    }
    Ok(to_proto(&cart, &lines))
}
