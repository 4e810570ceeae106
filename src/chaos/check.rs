//! The invariants of DESIGN §7, checked by reading each service's database after quiescence.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use checkout_inventory::fixture::StockFixture;
use checkout_kit::db::{Db, DbError, Tx};
use checkout_payment::processor::SimulatedProcessor;
use serde::Serialize;

/// The five databases of a deployment.
#[derive(Debug, Clone)]
pub struct Databases {
    /// Cart.
    pub cart: Db,
    /// Inventory.
    pub inventory: Db,
    /// Payment.
    pub payment: Db,
    /// The simulated processor's books (beside the payment database).
    pub processor: Db,
    /// Fulfillment.
    pub fulfillment: Db,
    /// Orchestrator.
    pub orchestrator: Db,
}

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Stable name.
    pub name: &'static str,
    /// What it guarantees.
    pub description: &'static str,
    /// True when it holds.
    pub holds: bool,
    /// The first violations found (at most 20).
    pub violations: Vec<String>,
    /// How many violations in all.
    pub violation_count: usize,
}

struct Findings {
    verdicts: Vec<Verdict>,
}

impl Findings {
    fn record(&mut self, name: &'static str, description: &'static str, violations: Vec<String>) {
        self.verdicts.push(Verdict {
            name,
            description,
            holds: violations.is_empty(),
            violation_count: violations.len(),
            violations: violations.into_iter().take(20).collect(),
        });
    }
}

async fn read<T>(
    db: &Db,
    f: impl AsyncFnOnce(&mut Tx) -> Result<T, DbError>,
) -> Result<T, DbError> {
    let mut tx = db.begin_read().await?;
    let result = f(&mut tx).await;
    tx.rollback().await?;
    result
}

/// Errors of reading the databases.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A database could not be read.
    #[error("cannot read a database: {0}")]
    Db(#[from] DbError),
    /// Reconciliation could not run.
    #[error("reconciliation failed: {0}")]
    Reconcile(String),
}

/// Checks every invariant.
pub async fn check(dbs: &Databases, initial: &StockFixture) -> Result<Vec<Verdict>, CheckError> {
    let sagas = read(&dbs.orchestrator, async |tx| {
        checkout_orchestrator::store::audit_sagas(tx).await
    })
    .await?;
    let payments = read(&dbs.payment, async |tx| {
        checkout_payment::storage::all_payments(tx).await
    })
    .await?;
    let records = read(&dbs.processor, async |tx| {
        checkout_payment::storage::all_processor_records(tx).await
    })
    .await?;
    let stock = read(&dbs.inventory, async |tx| {
        checkout_inventory::storage::audit_stock(tx).await
    })
    .await?;
    let reservations = read(&dbs.inventory, async |tx| {
        checkout_inventory::storage::audit_reservations(tx).await
    })
    .await?;
    let allocations = read(&dbs.inventory, async |tx| {
        checkout_inventory::storage::audit_allocations(tx).await
    })
    .await?;
    let shipments = read(&dbs.fulfillment, async |tx| {
        checkout_fulfillment::storage::audit_shipments(tx).await
    })
    .await?;
    let carts = read(&dbs.cart, async |tx| {
        checkout_cart::storage::audit_carts(tx).await
    })
    .await?;
    let reconciliation = checkout_payment::reconcile::reconcile(
        &dbs.payment,
        &SimulatedProcessor::new(dbs.processor.clone()),
    )
    .await
    .map_err(|e| CheckError::Reconcile(e.to_string()))?;

    let mut f = Findings {
        verdicts: Vec::new(),
    };
    let completed: BTreeSet<&str> = sagas
        .iter()
        .filter(|s| s.status == "completed")
        .map(|s| s.saga_id.as_str())
        .collect();

    f.record(
        "every_saga_terminal",
        "every checkout ended COMPLETED or COMPENSATED",
        sagas
            .iter()
            .filter(|s| s.status != "completed" && s.status != "compensated")
            .map(|s| {
                format!(
                    "checkout {} is {} ({})",
                    s.saga_id, s.status, s.failure_reason
                )
            })
            .collect(),
    );

    let mut captures: HashMap<&str, usize> = HashMap::new();
    for r in records
        .iter()
        .filter(|r| r.operation == "capture" && r.outcome == "approved")
    {
        *captures.entry(r.authorization_key.as_str()).or_default() += 1;
    }
    f.record(
        "no_double_capture",
        "no payment was captured twice",
        captures
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(key, n)| format!("authorization {key} captured {n} times"))
            .collect(),
    );

    let captured: BTreeSet<&str> = payments
        .iter()
        .filter(|p| p.captured_minor > 0)
        .map(|p| p.checkout_id.as_str())
        .collect();
    f.record(
        "captured_exactly_for_completed",
        "a payment is captured if and only if its checkout completed",
        captured
            .symmetric_difference(&completed)
            .map(|id| {
                if completed.contains(id) {
                    format!("checkout {id} completed without a capture")
                } else {
                    format!("checkout {id} captured without completing")
                }
            })
            .collect(),
    );

    f.record(
        "books_reconcile",
        "every ledger transaction balances and payments, ledger and processor agree",
        reconciliation
            .mismatches
            .iter()
            .map(|m| format!("{}: {} {}", m.kind().as_str_name(), m.checkout_id, m.detail))
            .collect(),
    );

    // Stock: initial − committed = final on hand; reserved = what live reservations hold.
    let states: HashMap<&str, &str> = reservations
        .iter()
        .map(|r| (r.reservation_id.as_str(), r.state.as_str()))
        .collect();
    let mut committed: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut live: BTreeMap<(String, String), i64> = BTreeMap::new();
    for a in &allocations {
        let key = (a.sku.clone(), a.warehouse_id.clone());
        match states.get(a.reservation_id.as_str()) {
            Some(&"committed") => *committed.entry(key).or_default() += a.quantity,
            Some(&"active") => *live.entry(key).or_default() += a.quantity,
            _ => {}
        }
    }
    let initial_on_hand: BTreeMap<(String, String), i64> = initial
        .stock
        .iter()
        .map(|s| ((s.sku.clone(), s.warehouse_id.clone()), s.on_hand))
        .collect();
    let mut conservation = Vec::new();
    let mut reserved = Vec::new();
    let mut negative = Vec::new();
    for row in &stock {
        let key = (row.sku.clone(), row.warehouse_id.clone());
        let start = initial_on_hand.get(&key).copied().unwrap_or(0);
        let gone = committed.get(&key).copied().unwrap_or(0);
        if start - gone != row.on_hand {
            conservation.push(format!(
                "{} in {}: started {start}, committed {gone}, on hand {}",
                row.sku, row.warehouse_id, row.on_hand
            ));
        }
        let holding = live.get(&key).copied().unwrap_or(0);
        if row.reserved != holding {
            reserved.push(format!(
                "{} in {}: reserved {}, live reservations hold {holding}",
                row.sku, row.warehouse_id, row.reserved
            ));
        }
        if row.on_hand < 0 || row.reserved < 0 || row.reserved > row.on_hand {
            negative.push(format!(
                "{} in {}: on hand {}, reserved {}",
                row.sku, row.warehouse_id, row.on_hand, row.reserved
            ));
        }
    }
    f.record(
        "stock_conserved",
        "initial − committed = final on hand, per sku and warehouse",
        conservation,
    );
    f.record(
        "reserved_matches_reservations",
        "reserved stock equals what live reservations hold",
        reserved,
    );
    f.record(
        "stock_never_negative",
        "no stock is negative or over-reserved",
        negative,
    );

    let shipped: BTreeSet<&str> = shipments
        .iter()
        .filter(|s| s.status != "cancelled")
        .map(|s| s.checkout_id.as_str())
        .collect();
    f.record(
        "shipments_exactly_for_completed",
        "live shipments exist if and only if their checkout completed",
        shipped
            .symmetric_difference(&completed)
            .map(|id| {
                if completed.contains(id) {
                    format!("checkout {id} completed without shipments")
                } else {
                    format!("checkout {id} has shipments but did not complete")
                }
            })
            .collect(),
    );

    let mut cart_problems = Vec::new();
    let by_cart: HashMap<&str, &checkout_cart::storage::CartRow> =
        carts.iter().map(|c| (c.cart_id.as_str(), c)).collect();
    for cart in &carts {
        if cart.state == "checking_out" {
            cart_problems.push(format!(
                "cart {} is still locked by {:?}",
                cart.cart_id, cart.checkout_id
            ));
        }
    }
    for saga in &sagas {
        let Some(cart) = by_cart.get(saga.cart_id.as_str()) else {
            continue;
        };
        let locked_by_saga = cart.checkout_id.as_deref() == Some(saga.saga_id.as_str());
        if saga.status == "completed" && !(cart.state == "ordered" && locked_by_saga) {
            cart_problems.push(format!(
                "checkout {} completed but cart {} is {}",
                saga.saga_id, cart.cart_id, cart.state
            ));
        }
        if saga.status == "compensated" && locked_by_saga {
            cart_problems.push(format!(
                "checkout {} compensated but still holds cart {}",
                saga.saga_id, cart.cart_id
            ));
        }
    }
    f.record(
        "carts_consistent",
        "completed checkouts ordered their cart; no other cart is left locked",
        cart_problems,
    );
    Ok(f.verdicts)
}
