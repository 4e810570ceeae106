//! Stock use cases: read, set and adjust stock levels; seed warehouses and opening stock.

use checkout_kit::db::{Db, Tx, now_millis};
use checkout_proto::inventory::{StockLevel, Warehouse};

use crate::error::InventoryError;
use crate::fixture::StockFixture;
use crate::storage::{self, StockRow};

fn level(row: &StockRow) -> StockLevel {
    StockLevel {
        sku: row.sku.clone(),
        warehouse_id: row.warehouse_id.clone(),
        on_hand: row.on_hand,
        reserved: row.reserved,
        available: row.on_hand - row.reserved,
        version: row.version,
    }
}

/// Every warehouse in allocation order.
pub async fn warehouses(tx: &mut Tx) -> Result<Vec<Warehouse>, InventoryError> {
    Ok(storage::warehouses(tx)
        .await?
        .into_iter()
        .map(|w| Warehouse {
            warehouse_id: w.warehouse_id,
            region: w.region,
            priority: i32::try_from(w.priority).unwrap_or(i32::MAX),
        })
        .collect())
}

/// A sku's stock per warehouse and in total.
pub async fn get(tx: &mut Tx, sku: &str) -> Result<(Vec<StockLevel>, i64), InventoryError> {
    let rows = storage::stock_levels(tx, sku).await?;
    if rows.is_empty() {
        return Err(InventoryError::SkuNotFound(sku.to_owned()));
    }
    let total = rows.iter().map(|r| r.on_hand - r.reserved).sum();
    Ok((rows.iter().map(level).collect(), total))
}

async fn current(tx: &mut Tx, sku: &str, warehouse_id: &str) -> Result<StockLevel, InventoryError> {
    storage::stock_row(tx, sku, warehouse_id)
        .await?
        .map(|row| level(&row))
        .ok_or_else(|| InventoryError::SkuNotFound(sku.to_owned()))
}

async fn refusal(tx: &mut Tx, sku: &str, warehouse_id: &str) -> InventoryError {
    match storage::stock_row(tx, sku, warehouse_id).await {
        Ok(Some(row)) => InventoryError::BelowReserved {
            sku: sku.to_owned(),
            warehouse_id: warehouse_id.to_owned(),
            reserved: row.reserved,
        },
        Ok(None) => InventoryError::SkuNotFound(sku.to_owned()),
        Err(e) => e.into(),
    }
}

async fn known_warehouse(tx: &mut Tx, warehouse_id: &str) -> Result<(), InventoryError> {
    if storage::warehouse_exists(tx, warehouse_id).await? {
        Ok(())
    } else {
        Err(InventoryError::WarehouseNotFound(warehouse_id.to_owned()))
    }
}

/// Sets on_hand (never below what is reserved).
pub async fn set(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
    on_hand: i64,
) -> Result<StockLevel, InventoryError> {
    known_warehouse(tx, warehouse_id).await?;
    if !storage::set_on_hand(tx, sku, warehouse_id, on_hand, now_millis()).await? {
        return Err(refusal(tx, sku, warehouse_id).await);
    }
    current(tx, sku, warehouse_id).await
}

/// Changes on_hand by a delta (never below what is reserved).
pub async fn adjust(
    tx: &mut Tx,
    sku: &str,
    warehouse_id: &str,
    delta: i64,
) -> Result<StockLevel, InventoryError> {
    known_warehouse(tx, warehouse_id).await?;
    if !storage::adjust_on_hand(tx, sku, warehouse_id, delta, now_millis()).await? {
        return Err(refusal(tx, sku, warehouse_id).await);
    }
    current(tx, sku, warehouse_id).await
}

/// Upserts the fixture's warehouses and creates its stock rows where none exist yet.
pub async fn seed(db: &Db, fixture: &StockFixture) -> Result<(), InventoryError> {
    let mut tx = db.begin().await?;
    for w in &fixture.warehouses {
        storage::upsert_warehouse(&mut tx, &w.warehouse_id, &w.region, i64::from(w.priority))
            .await?;
    }
    let now = now_millis();
    for s in &fixture.stock {
        storage::insert_stock_if_absent(&mut tx, &s.sku, &s.warehouse_id, s.on_hand, now).await?;
    }
    tx.commit().await?;
    Ok(())
}
