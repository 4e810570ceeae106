//! Reservation use cases: reserve (optimistic, all lines or none), commit, release, expire.

use checkout_kit::db::timestamp;
use std::collections::HashMap;

use checkout_kit::db::{Tx, now_millis};
use checkout_proto::common::Allocation;
use checkout_proto::inventory::{Reservation, ReservationLine, ReservationState};

use crate::error::InventoryError;
use crate::storage::{self, AllocationRow, By, Left, LineRow, ReservationRow, StockRow};

const ACTIVE: &str = "active";
const COMMITTED: &str = "committed";
const RELEASED: &str = "released";
const EXPIRED: &str = "expired";
const TOMBSTONE: &str = "tombstone";

/// How a reservation is named in a request.
#[derive(Debug, Clone)]
pub enum Target {
    /// By reservation id.
    Reservation(String),
    /// By checkout.
    Checkout(String),
}

fn state_of(state: &str) -> ReservationState {
    match state {
        ACTIVE => ReservationState::Active,
        COMMITTED => ReservationState::Committed,
        RELEASED => ReservationState::Released,
        EXPIRED => ReservationState::Expired,
        TOMBSTONE => ReservationState::Tombstone,
        _ => ReservationState::Unspecified,
    }
}

/// The reservation as the RPCs return it.
pub async fn load(tx: &mut Tx, row: &ReservationRow) -> Result<Reservation, InventoryError> {
    let allocations = storage::allocations(tx, &row.reservation_id).await?;
    let lines = storage::lines(tx, &row.reservation_id).await?;
    Ok(reservation(row, lines, allocations))
}

/// A reservation from its row, its lines (in request order) and its allocations (in
/// [`storage::allocation_order`]).
fn reservation(
    row: &ReservationRow,
    lines: Vec<LineRow>,
    allocations: Vec<AllocationRow>,
) -> Reservation {
    Reservation {
        reservation_id: row.reservation_id.clone(),
        checkout_id: row.checkout_id.clone(),
        state: state_of(&row.state).into(),
        lines: lines
            .into_iter()
            .map(|l| ReservationLine {
                sku: l.sku,
                quantity: l.quantity,
            })
            .collect(),
        allocations: allocations
            .into_iter()
            .map(|a| Allocation {
                sku: a.sku,
                warehouse_id: a.warehouse_id,
                quantity: a.quantity,
            })
            .collect(),
        expire_time: (row.state == ACTIVE).then(|| timestamp(row.expires_at)),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        release_reason: row.release_reason.clone(),
    }
}

/// Splits each line across warehouses by priority. Returns the allocations, or the skus that
/// lack stock.
pub fn allocate(
    lines: &[LineRow],
    stock: &HashMap<String, Vec<StockRow>>,
) -> Result<Vec<(AllocationRow, i64)>, Vec<String>> {
    let mut allocations = Vec::new();
    let mut short = Vec::new();
    for line in lines {
        let mut remaining = line.quantity;
        for row in stock.get(&line.sku).into_iter().flatten() {
            if remaining == 0 {
                break;
            }
            let take = remaining.min(row.on_hand - row.reserved);
            if take > 0 {
                allocations.push((
                    AllocationRow {
                        sku: line.sku.clone(),
                        warehouse_id: row.warehouse_id.clone(),
                        quantity: take,
                    },
                    row.version,
                ));
                remaining -= take;
            }
        }
        if remaining > 0 {
            short.push(line.sku.clone());
        }
    }
    if short.is_empty() {
        Ok(allocations)
    } else {
        Err(short)
    }
}

/// Compare-and-set rounds one line gets inside its transaction before the whole attempt is
/// given up as a conflict.
const LINE_ROUNDS: u32 = 4;

/// One attempt at reserving every line for a checkout. Each allocation is a compare-and-set on
/// the stock row's version read earlier. When a line's first one loses (on Postgres the winner
/// has committed by then: our update waited for it), the line reads its stock again and tries
/// once more, in the same transaction, up to [`LINE_ROUNDS`] times: nothing of the line was
/// taken yet, and a statement under READ COMMITTED sees the winner's row. `Conflict` means a
/// line still lost, lost after taking part of its quantity from another warehouse, or would
/// now split differently from the allocations written: the caller rolls the whole transaction
/// back and tries again.
pub async fn reserve(
    tx: &mut Tx,
    checkout_id: &str,
    lines: &[LineRow],
    ttl_millis: i64,
) -> Result<Reservation, InventoryError> {
    let now = now_millis();
    let row = ReservationRow {
        reservation_id: uuid::Uuid::now_v7().to_string(),
        checkout_id: checkout_id.to_owned(),
        state: ACTIVE.to_owned(),
        expires_at: now.saturating_add(ttl_millis),
        release_reason: String::new(),
        created_at: now,
        updated_at: now,
    };
    // The checkout's row first: a ReleaseReservation by checkout queues on it. The stock is
    // read with it, whether or not the row is new.
    let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    let (inserted, levels) = storage::insert_reservation_reading_stock(tx, &row, &skus).await?;
    if !inserted {
        let existing = storage::reservation_by_checkout(tx, checkout_id)
            .await?
            .ok_or(InventoryError::Conflict)?;
        if existing.state == TOMBSTONE {
            return Err(InventoryError::CheckoutReleased(checkout_id.to_owned()));
        }
        if storage::lines(tx, &existing.reservation_id).await? != lines {
            return Err(InventoryError::ReservationExists(checkout_id.to_owned()));
        }
        return load(tx, &existing).await;
    }

    let mut stock: HashMap<String, Vec<StockRow>> = lines
        .iter()
        .map(|line| line.sku.clone())
        .zip(levels)
        .collect();
    // Every short sku is named before anything is taken.
    let planned = allocate(lines, &stock).map_err(InventoryError::OutOfStock)?;
    // Written before any stock row is taken: on Postgres a row taken stays locked to every
    // other reservation of its sku until this transaction commits, so taking the rows last
    // leaves only the key and the COMMIT inside that window.
    let written: Vec<&AllocationRow> = planned.iter().map(|(a, _)| a).collect();
    storage::insert_lines_and_allocations(tx, &row.reservation_id, lines, &written).await?;
    for line in lines {
        let plan: Vec<(AllocationRow, i64)> = planned
            .iter()
            .filter(|(a, _)| a.sku == line.sku)
            .cloned()
            .collect();
        let mut mine = plan.clone();
        let mut round = 1;
        loop {
            match take(tx, &mine, now).await? {
                Taken::All => break,
                Taken::None if round < LINE_ROUNDS => {
                    round += 1;
                    stock.insert(
                        line.sku.clone(),
                        storage::stock_levels(tx, &line.sku).await?,
                    );
                    mine = allocate(std::slice::from_ref(line), &stock)
                        .map_err(|_| InventoryError::Conflict)?;
                    // The allocations written hold only while the line takes the same units
                    // from the same warehouses; any other split starts the attempt over.
                    if !same_units(&mine, &plan) {
                        return Err(InventoryError::Conflict);
                    }
                }
                Taken::None | Taken::Part => return Err(InventoryError::Conflict),
            }
        }
    }
    // Answered from what was written, not read back.
    let ranked: Vec<(AllocationRow, i64)> = planned
        .into_iter()
        .map(|(allocation, _)| {
            let priority = stock
                .get(&allocation.sku)
                .into_iter()
                .flatten()
                .find(|s| s.warehouse_id == allocation.warehouse_id)
                .map_or(i64::MAX, |s| s.priority);
            (allocation, priority)
        })
        .collect();
    Ok(reservation(
        &row,
        lines.to_vec(),
        storage::allocation_order(ranked),
    ))
}

/// How far one line's compare-and-sets got.
enum Taken {
    /// Every allocation.
    All,
    /// The first lost: nothing of the line was taken.
    None,
    /// A later one lost after earlier ones were taken.
    Part,
}

/// True when two plans of a line take the same units from the same warehouses (the versions
/// they expect may differ).
fn same_units(a: &[(AllocationRow, i64)], b: &[(AllocationRow, i64)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((x, _), (y, _))| x == y)
}

/// Takes a line's allocations, each by compare-and-set on the version read, in order, up to
/// the first that loses.
async fn take(
    tx: &mut Tx,
    allocations: &[(AllocationRow, i64)],
    now: i64,
) -> Result<Taken, InventoryError> {
    for (i, (allocation, version)) in allocations.iter().enumerate() {
        let won = storage::reserve_if_unchanged(
            tx,
            &allocation.sku,
            &allocation.warehouse_id,
            allocation.quantity,
            *version,
            now,
        )
        .await?;
        if !won {
            return Ok(if i == 0 { Taken::None } else { Taken::Part });
        }
    }
    Ok(Taken::All)
}

async fn find(tx: &mut Tx, target: &Target) -> Result<Option<ReservationRow>, InventoryError> {
    Ok(match target {
        Target::Reservation(id) => storage::reservation(tx, id).await?,
        Target::Checkout(id) => storage::reservation_by_checkout(tx, id).await?,
    })
}

/// A reservation by id or checkout.
pub async fn get(tx: &mut Tx, target: &Target) -> Result<Reservation, InventoryError> {
    let row = find(tx, target)
        .await?
        .ok_or(InventoryError::ReservationNotFound)?;
    load(tx, &row).await
}

/// Moves the named reservation out of the active state in one statement, reading its
/// allocations and lines with it; `None` when it is not active (or does not exist).
async fn leave_active(
    tx: &mut Tx,
    target: &Target,
    to: &str,
    reason: &str,
    now: i64,
) -> Result<Option<Left>, InventoryError> {
    let (by, key) = match target {
        Target::Reservation(id) => (By::Id, id),
        Target::Checkout(id) => (By::Checkout, id),
    };
    Ok(storage::leave_active(tx, by, key, to, reason, now, true).await?)
}

/// The reserved stock leaves on_hand. Committing again is harmless; committing a reservation
/// that no longer holds stock is refused.
pub async fn commit(tx: &mut Tx, target: &Target) -> Result<Reservation, InventoryError> {
    let now = now_millis();
    if let Some(committed) = leave_active(tx, target, COMMITTED, "", now).await? {
        return move_stock(tx, committed, StockMove::ShipOut, now).await;
    }
    // Not active: committed before (a repeat), released, or never made; what it is decides.
    let row = find(tx, target)
        .await?
        .ok_or(InventoryError::ReservationNotFound)?;
    match row.state.as_str() {
        COMMITTED => load(tx, &row).await,
        other => Err(InventoryError::NotHeld(other.to_owned())),
    }
}

/// The reserved stock returns. Releasing again is harmless; releasing a committed reservation
/// is refused; releasing by checkout before any reserve records a tombstone.
pub async fn release(
    tx: &mut Tx,
    target: &Target,
    reason: &str,
) -> Result<Reservation, InventoryError> {
    let now = now_millis();
    if let Target::Checkout(checkout_id) = target {
        let tombstone = ReservationRow {
            reservation_id: uuid::Uuid::now_v7().to_string(),
            checkout_id: checkout_id.clone(),
            state: TOMBSTONE.to_owned(),
            expires_at: now,
            release_reason: reason.to_owned(),
            created_at: now,
            updated_at: now,
        };
        if storage::insert_reservation(tx, &tombstone).await? {
            return load(tx, &tombstone).await;
        }
    }
    if let Some(released) = leave_active(tx, target, RELEASED, reason, now).await? {
        return move_stock(tx, released, StockMove::Return, now).await;
    }
    let row = find(tx, target)
        .await?
        .ok_or(InventoryError::ReservationNotFound)?;
    match row.state.as_str() {
        COMMITTED => Err(InventoryError::Committed),
        _ => load(tx, &row).await,
    }
}

/// Releases an expired reservation's stock (the reaper's step); false when it left the active
/// state meanwhile (committed, released, or expired by another replica's reaper).
pub async fn expire(tx: &mut Tx, reservation_id: &str) -> Result<bool, InventoryError> {
    let now = now_millis();
    // Nobody waits for an answer: no lines to read.
    let left = storage::leave_active(
        tx,
        By::Id,
        reservation_id,
        EXPIRED,
        "ttl elapsed",
        now,
        false,
    );
    match left.await? {
        Some(expired) => {
            move_units(tx, &expired.allocations, StockMove::Return, now).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Where a reservation's units go when it leaves the active state.
#[derive(Debug, Clone, Copy)]
enum StockMove {
    /// Out of the warehouse (a commit).
    ShipOut,
    /// Back to the available units (a release or an expiry).
    Return,
}

/// Moves the units of a reservation that has just left the active state, and answers it as
/// it left it with the allocations moved. Everything was read (with the state change) before
/// the first stock row is written: on Postgres a written row stays locked to every other
/// reservation of its sku until the transaction commits.
async fn move_stock(
    tx: &mut Tx,
    left: Left,
    to: StockMove,
    now: i64,
) -> Result<Reservation, InventoryError> {
    move_units(tx, &left.allocations, to, now).await?;
    Ok(reservation(&left.row, left.lines, left.allocations))
}

/// Writes each allocation's units to its stock row: the request's last writes, so nothing but
/// its key may follow.
async fn move_units(
    tx: &mut Tx,
    allocations: &[AllocationRow],
    to: StockMove,
    now: i64,
) -> Result<(), InventoryError> {
    for a in allocations {
        match to {
            StockMove::ShipOut => {
                storage::ship_out(tx, &a.sku, &a.warehouse_id, a.quantity, now).await?;
            }
            StockMove::Return => {
                storage::unreserve(tx, &a.sku, &a.warehouse_id, a.quantity, now).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(sku: &str, rows: &[(&str, i64, i64)]) -> (String, Vec<StockRow>) {
        let rows = rows
            .iter()
            .enumerate()
            .map(|(i, (wh, on_hand, reserved))| StockRow {
                sku: sku.to_owned(),
                warehouse_id: (*wh).to_owned(),
                on_hand: *on_hand,
                reserved: *reserved,
                version: 1,
                priority: i64::try_from(i).unwrap(),
            })
            .collect();
        (sku.to_owned(), rows)
    }

    fn line(sku: &str, quantity: i64) -> LineRow {
        LineRow {
            sku: sku.to_owned(),
            quantity,
        }
    }

    #[test]
    fn lines_fill_warehouses_in_priority_order() {
        let stock: HashMap<_, _> = [stock("A", &[("first", 5, 3), ("second", 10, 0)])].into();
        let got = allocate(&[line("A", 6)], &stock).unwrap();
        let split: Vec<(&str, i64)> = got
            .iter()
            .map(|(a, _)| (a.warehouse_id.as_str(), a.quantity))
            .collect();
        assert_eq!(split, vec![("first", 2), ("second", 4)]);
    }

    #[test]
    fn every_short_sku_is_named() {
        let stock: HashMap<_, _> = [stock("A", &[("w", 1, 0)]), stock("B", &[("w", 5, 0)])].into();
        let short = allocate(&[line("A", 2), line("B", 5), line("C", 1)], &stock).unwrap_err();
        assert_eq!(short, vec!["A".to_owned(), "C".to_owned()]);
    }

    async fn stock_of(db: &checkout_kit::db::Db, sku: &str) -> (i64, i64) {
        let mut tx = db.begin_read().await.unwrap();
        let rows = storage::stock_levels(&mut tx, sku).await.unwrap();
        tx.rollback().await.unwrap();
        rows.iter()
            .fold((0, 0), |(h, r), s| (h + s.on_hand, r + s.reserved))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reservation_that_loses_the_compare_and_set_reads_again_in_its_transaction() {
        use crate::fixture::{StockEntry, StockFixture, WarehouseEntry};
        let database = checkout_kit::testing::TestDatabase::new("reserve_in_tx_retry");
        let db = database.migrated(&crate::MIGRATIONS).await.unwrap();
        let fixture = StockFixture {
            warehouses: vec![WarehouseEntry {
                warehouse_id: "w".to_owned(),
                region: "r".to_owned(),
                priority: 1,
            }],
            stock: vec![StockEntry {
                sku: "HOT".to_owned(),
                warehouse_id: "w".to_owned(),
                on_hand: 10,
            }],
        };
        crate::stock::seed(&db, &fixture).await.unwrap();

        // The first reservation has taken its unit and not committed yet.
        let mut first = db.begin().await.unwrap();
        reserve(&mut first, "c1", &[line("HOT", 1)], 60_000)
            .await
            .unwrap();
        // The second reads the stock row's version as it was, and (Postgres) its
        // compare-and-set waits for the first; on SQLite it waits for the write turn instead.
        let second = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                let got = reserve(&mut tx, "c2", &[line("HOT", 2)], 60_000).await;
                match got {
                    Ok(r) => {
                        tx.commit().await.unwrap();
                        Ok(r)
                    }
                    Err(e) => {
                        tx.rollback().await.unwrap();
                        Err(e)
                    }
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        first.commit().await.unwrap();
        let second = second.await.unwrap();
        assert!(
            second.is_ok(),
            "no conflict for the caller to retry: {second:?}"
        );
        assert_eq!(stock_of(&db, "HOT").await, (10, 3));
        db.close().await;
    }
}
