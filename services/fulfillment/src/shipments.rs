//! Shipment use cases: create one shipment per warehouse, cancel, advance, read.

use checkout_kit::db::timestamp;
use std::collections::BTreeMap;

use checkout_kit::db::{Tx, now_millis};
use checkout_proto::common::{Address, Allocation};
use checkout_proto::fulfillment::{Shipment, ShipmentEvent, ShipmentLine, ShipmentStatus};

use crate::address::ServedCountries;
use crate::error::FulfillmentError;
use crate::storage::{self, EventRow, LineRow, ShipmentRow};

const PENDING: &str = "pending";
const PACKED: &str = "packed";
const SHIPPED: &str = "shipped";
const DELIVERED: &str = "delivered";
const CANCELLED: &str = "cancelled";

/// The status name stored for a proto status.
pub fn status_name(status: ShipmentStatus) -> Option<&'static str> {
    match status {
        ShipmentStatus::Pending => Some(PENDING),
        ShipmentStatus::Packed => Some(PACKED),
        ShipmentStatus::Shipped => Some(SHIPPED),
        ShipmentStatus::Delivered => Some(DELIVERED),
        ShipmentStatus::Cancelled => Some(CANCELLED),
        ShipmentStatus::Unspecified => None,
    }
}

fn status_of(name: &str) -> ShipmentStatus {
    match name {
        PENDING => ShipmentStatus::Pending,
        PACKED => ShipmentStatus::Packed,
        SHIPPED => ShipmentStatus::Shipped,
        DELIVERED => ShipmentStatus::Delivered,
        CANCELLED => ShipmentStatus::Cancelled,
        _ => ShipmentStatus::Unspecified,
    }
}

/// The status that follows `status` in the tracking progression.
fn next_of(status: &str) -> Option<&'static str> {
    match status {
        PENDING => Some(PACKED),
        PACKED => Some(SHIPPED),
        SHIPPED => Some(DELIVERED),
        _ => None,
    }
}

async fn load(tx: &mut Tx, row: &ShipmentRow) -> Result<Shipment, FulfillmentError> {
    let lines = storage::lines(tx, &row.shipment_id).await?;
    let events = storage::events(tx, &row.shipment_id).await?;
    Ok(shipment(row, lines, events))
}

/// A shipment as stored: its row, its lines (by sku) and its history (oldest first).
fn shipment(row: &ShipmentRow, lines: Vec<LineRow>, events: Vec<EventRow>) -> Shipment {
    Shipment {
        shipment_id: row.shipment_id.clone(),
        checkout_id: row.checkout_id.clone(),
        warehouse_id: row.warehouse_id.clone(),
        status: status_of(&row.status).into(),
        lines: lines
            .into_iter()
            .map(|l| ShipmentLine {
                sku: l.sku,
                quantity: l.quantity,
            })
            .collect(),
        address: Some(Address {
            recipient_name: row.recipient_name.clone(),
            line1: row.line1.clone(),
            line2: row.line2.clone(),
            city: row.city.clone(),
            region: row.region.clone(),
            postal_code: row.postal_code.clone(),
            country_code: row.country_code.clone(),
            phone: row.phone.clone(),
        }),
        tracking_number: row.tracking_number.clone(),
        events: events
            .into_iter()
            .map(|e| ShipmentEvent {
                status: status_of(&e.status).into(),
                time: Some(timestamp(e.at)),
            })
            .collect(),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

async fn load_all(tx: &mut Tx, checkout_id: &str) -> Result<Vec<Shipment>, FulfillmentError> {
    let mut shipments = Vec::new();
    for row in storage::shipments_of(tx, checkout_id).await? {
        shipments.push(load(tx, &row).await?);
    }
    Ok(shipments)
}

/// Groups allocations by warehouse: one shipment each, its lines by sku.
fn by_warehouse(allocations: &[Allocation]) -> BTreeMap<String, BTreeMap<String, i64>> {
    let mut groups: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for a in allocations {
        *groups
            .entry(a.warehouse_id.clone())
            .or_default()
            .entry(a.sku.clone())
            .or_default() += a.quantity;
    }
    groups
}

/// Creates one shipment per warehouse of the allocations. Creating again for the same checkout
/// and allocations returns the same shipments; after a cancel it is refused.
pub async fn create(
    tx: &mut Tx,
    served: &ServedCountries,
    checkout_id: &str,
    allocations: &[Allocation],
    address: &Address,
) -> Result<Vec<Shipment>, FulfillmentError> {
    if !served.serves(&address.country_code) {
        return Err(FulfillmentError::NotServiceable(
            address.country_code.clone(),
        ));
    }
    let now = now_millis();
    // The checkout's record first: a CancelShipments of the same checkout queues on it.
    if !storage::claim_checkout(tx, checkout_id, now).await? {
        if storage::checkout_state(tx, checkout_id).await?.as_deref() != Some("created") {
            return Err(FulfillmentError::CheckoutCancelled(checkout_id.to_owned()));
        }
        let existing = load_all(tx, checkout_id).await?;
        let wanted = by_warehouse(allocations);
        let have: BTreeMap<String, BTreeMap<String, i64>> = existing
            .iter()
            .map(|s| {
                let lines = s
                    .lines
                    .iter()
                    .map(|l| (l.sku.clone(), l.quantity))
                    .collect();
                (s.warehouse_id.clone(), lines)
            })
            .collect();
        if have != wanted {
            return Err(FulfillmentError::ShipmentsExist(checkout_id.to_owned()));
        }
        return Ok(existing);
    }
    let planned = plan(checkout_id, allocations, address, now);
    storage::insert_shipments(tx, &planned.shipments).await?;
    Ok(planned.answer())
}

/// What the first create of a checkout writes: one shipment per warehouse of the allocations,
/// each with its lines, at `now`.
#[derive(Debug)]
pub struct Planned {
    /// The shipments with their lines, in byte order of warehouse and sku.
    pub shipments: Vec<(ShipmentRow, Vec<LineRow>)>,
    /// When they are created; each has one `pending` event at this time.
    pub now: i64,
}

impl Planned {
    /// The shipments as the create answers them. Answered from what is written, in the order
    /// the reads give (byte order of warehouse and sku, as the map iterates), instead of
    /// reading it all back.
    pub fn answer(&self) -> Vec<Shipment> {
        self.shipments
            .iter()
            .map(|(row, lines)| {
                let events = vec![EventRow {
                    status: PENDING.to_owned(),
                    at: self.now,
                }];
                shipment(row, lines.clone(), events)
            })
            .collect()
    }
}

/// The shipments a first create of the checkout writes, with fresh ids.
pub fn plan(checkout_id: &str, allocations: &[Allocation], address: &Address, now: i64) -> Planned {
    let shipments = by_warehouse(allocations)
        .into_iter()
        .map(|(warehouse_id, lines)| {
            let row = ShipmentRow {
                shipment_id: uuid::Uuid::now_v7().to_string(),
                checkout_id: checkout_id.to_owned(),
                warehouse_id,
                status: PENDING.to_owned(),
                tracking_number: String::new(),
                recipient_name: address.recipient_name.clone(),
                line1: address.line1.clone(),
                line2: address.line2.clone(),
                city: address.city.clone(),
                region: address.region.clone(),
                postal_code: address.postal_code.clone(),
                country_code: address.country_code.clone(),
                phone: address.phone.clone(),
                version: 1,
                created_at: now,
                updated_at: now,
            };
            let lines = lines
                .into_iter()
                .map(|(sku, quantity)| LineRow { sku, quantity })
                .collect();
            (row, lines)
        })
        .collect();
    Planned { shipments, now }
}

/// Cancels a checkout's shipments while none has shipped; before any create it records a
/// tombstone so a late create is refused.
pub async fn cancel(tx: &mut Tx, checkout_id: &str) -> Result<Vec<Shipment>, FulfillmentError> {
    let now = now_millis();
    storage::cancel_checkout(tx, checkout_id, now).await?;
    // Lock the shipments (first write), then decide on what they are now.
    storage::lock_checkout_shipments(tx, checkout_id).await?;
    let rows = storage::shipments_of(tx, checkout_id).await?;
    if let Some(gone) = rows
        .iter()
        .find(|r| r.status == SHIPPED || r.status == DELIVERED)
    {
        return Err(FulfillmentError::AlreadyShipped(gone.shipment_id.clone()));
    }
    for row in rows.iter().filter(|r| r.status != CANCELLED) {
        if storage::move_status(tx, &row.shipment_id, &row.status, CANCELLED, None, now).await? {
            storage::append_event(tx, &row.shipment_id, CANCELLED, now).await?;
        }
    }
    load_all(tx, checkout_id).await
}

/// A checkout's shipments.
pub async fn get(tx: &mut Tx, checkout_id: &str) -> Result<Vec<Shipment>, FulfillmentError> {
    let shipments = load_all(tx, checkout_id).await?;
    if shipments.is_empty() {
        return Err(FulfillmentError::CheckoutNotFound(checkout_id.to_owned()));
    }
    Ok(shipments)
}

/// Moves a shipment to the next status; asking for the status it already has is harmless.
pub async fn advance(
    tx: &mut Tx,
    shipment_id: &str,
    target: &'static str,
) -> Result<Shipment, FulfillmentError> {
    let now = now_millis();
    let row = storage::shipment(tx, shipment_id)
        .await?
        .ok_or_else(|| FulfillmentError::ShipmentNotFound(shipment_id.to_owned()))?;
    if row.status == target {
        return load(tx, &row).await;
    }
    if next_of(&row.status) != Some(target) {
        return Err(FulfillmentError::InvalidTransition {
            from: row.status,
            to: target.to_owned(),
        });
    }
    let tracking = (target == SHIPPED).then(|| {
        let id = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        format!("TRK{}", &id[..12])
    });
    // Guarded by the status read: a concurrent cancel that won makes this match nothing.
    if !storage::move_status(
        tx,
        shipment_id,
        &row.status,
        target,
        tracking.as_deref(),
        now,
    )
    .await?
    {
        let now_status = storage::shipment(tx, shipment_id)
            .await?
            .map(|r| r.status)
            .unwrap_or_default();
        return Err(FulfillmentError::InvalidTransition {
            from: now_status,
            to: target.to_owned(),
        });
    }
    storage::append_event(tx, shipment_id, target, now).await?;
    let row = storage::shipment(tx, shipment_id)
        .await?
        .ok_or_else(|| FulfillmentError::ShipmentNotFound(shipment_id.to_owned()))?;
    load(tx, &row).await
}
