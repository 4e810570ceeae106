//! Reconciliation: payments, ledger and processor records must tell the same story. Every
//! disagreement is reported by kind.

use std::collections::HashMap;

use checkout_kit::db::Db;
use checkout_proto::payment::{Mismatch, MismatchKind, ReconcileResponse};

use crate::error::PaymentError;
use crate::ledger;
use crate::processor::PaymentProcessor;
use crate::storage::{self, EntryRow, ProcessorRow};

fn mismatch(kind: MismatchKind, detail: String) -> Mismatch {
    Mismatch {
        kind: kind.into(),
        detail,
        ..Mismatch::default()
    }
}

fn approved_sum(records: &[&ProcessorRow], operation: &str) -> i64 {
    records
        .iter()
        .filter(|r| r.operation == operation && r.outcome == "approved")
        .map(|r| r.amount_minor)
        .sum()
}

/// Compares the three sets of books and lists every mismatch.
pub async fn reconcile(
    db: &Db,
    processor: &dyn PaymentProcessor,
) -> Result<ReconcileResponse, PaymentError> {
    let mut tx = db.begin_read().await?;
    let payments = storage::all_payments(&mut tx).await?;
    let entries = storage::all_entries(&mut tx).await?;
    tx.rollback().await?;
    let records = processor
        .records()
        .await
        .map_err(|e| PaymentError::ProcessorUnavailable(e.to_string()))?;
    let mut found = Vec::new();

    // Every ledger transaction balances.
    let mut transactions: HashMap<&str, Vec<&EntryRow>> = HashMap::new();
    for e in &entries {
        transactions.entry(&e.transaction_id).or_default().push(e);
    }
    for (transaction_id, legs) in &transactions {
        let net: i64 = legs
            .iter()
            .map(|e| {
                if e.direction == "debit" {
                    e.amount_minor
                } else {
                    -e.amount_minor
                }
            })
            .sum();
        if net != 0 {
            let first = legs[0];
            found.push(Mismatch {
                payment_id: first.payment_id.clone(),
                checkout_id: first.checkout_id.clone(),
                transaction_id: (*transaction_id).to_owned(),
                ..mismatch(
                    MismatchKind::UnbalancedTransaction,
                    format!("debits exceed credits by {net}"),
                )
            });
        }
    }

    // Every payment's captured and refunded amounts match its ledger and the processor.
    let mut sales: HashMap<&str, (i64, bool)> = HashMap::new();
    for e in entries.iter().filter(|e| e.account == ledger::SALES) {
        let slot = sales.entry(&e.payment_id).or_default();
        slot.0 += if e.direction == "credit" {
            e.amount_minor
        } else {
            -e.amount_minor
        };
        slot.1 |= e.description == "capture";
    }
    let mut by_authorization: HashMap<&str, Vec<&ProcessorRow>> = HashMap::new();
    for r in &records {
        by_authorization
            .entry(&r.authorization_key)
            .or_default()
            .push(r);
    }
    for p in &payments {
        let about = |kind, detail: String| Mismatch {
            payment_id: p.payment_id.clone(),
            checkout_id: p.checkout_id.clone(),
            processor_key: p.processor_key.clone(),
            ..mismatch(kind, detail)
        };
        let (net_sales, has_capture) = sales
            .get(p.payment_id.as_str())
            .copied()
            .unwrap_or_default();
        if p.captured_minor > 0 && !has_capture {
            found.push(about(
                MismatchKind::CapturedWithoutLedger,
                format!(
                    "captured {} with no capture in the ledger",
                    p.captured_minor
                ),
            ));
        } else if net_sales != p.captured_minor - p.refunded_minor {
            found.push(about(
                MismatchKind::AmountMismatch,
                format!(
                    "ledger sales {net_sales}, payment captured {} minus refunded {}",
                    p.captured_minor, p.refunded_minor
                ),
            ));
        }
        let books = by_authorization
            .get(p.processor_key.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (captured, refunded) = (
            approved_sum(books, "capture"),
            approved_sum(books, "refund"),
        );
        if !p.processor_key.is_empty()
            && (captured != p.captured_minor || refunded != p.refunded_minor)
        {
            found.push(about(
                MismatchKind::AmountMismatch,
                format!(
                    "processor captured {captured} refunded {refunded}, payment captured {} \
                     refunded {}",
                    p.captured_minor, p.refunded_minor
                ),
            ));
        }
    }

    // Every approved processor authorization belongs to a payment.
    let keys: std::collections::HashSet<&str> =
        payments.iter().map(|p| p.processor_key.as_str()).collect();
    for r in records
        .iter()
        .filter(|r| r.outcome == "approved" && r.operation != "void")
    {
        if !keys.contains(r.authorization_key.as_str()) {
            found.push(Mismatch {
                processor_key: r.processor_key.clone(),
                ..mismatch(
                    MismatchKind::ChargeWithoutPayment,
                    format!(
                        "processor {} of {} with no payment",
                        r.operation, r.amount_minor
                    ),
                )
            });
        }
    }

    Ok(ReconcileResponse {
        mismatches: found,
        payments_checked: i64::try_from(payments.len()).unwrap_or(i64::MAX),
        ledger_transactions_checked: i64::try_from(transactions.len()).unwrap_or(i64::MAX),
        processor_records_checked: i64::try_from(records.len()).unwrap_or(i64::MAX),
    })
}
