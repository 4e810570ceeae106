//! How a stored saga reads as a `Checkout`.

use checkout_kit::db::timestamp;
use checkout_proto::checkout::{
    AttemptOutcome, Checkout, CheckoutEvent, CheckoutStatus, Failure, OrderSummary, Step,
    StepAttempt, StepDirection, StepStatus as ProtoStepStatus,
};
use checkout_proto::common::{Allocation, Money};
use serde_json::Value;

use crate::saga::definition::SagaDef;
use crate::saga::machine::{SagaStatus, StepStatus};
use crate::store::{AttemptRow, EventRow, SagaRow, StepRow};

/// The client-facing status of a stored saga status.
pub fn status(saga: &SagaRow) -> CheckoutStatus {
    match SagaStatus::parse(&saga.status) {
        Some(SagaStatus::Running) => CheckoutStatus::Running,
        Some(SagaStatus::Compensating) => CheckoutStatus::Compensating,
        Some(SagaStatus::Completed) => CheckoutStatus::Completed,
        Some(SagaStatus::Compensated) => CheckoutStatus::Compensated,
        Some(SagaStatus::NeedsAttention) => CheckoutStatus::NeedsAttention,
        None => CheckoutStatus::Unspecified,
    }
}

/// A stored status name for a client-facing filter.
pub fn status_name(status: CheckoutStatus) -> Option<&'static str> {
    match status {
        CheckoutStatus::Unspecified => None,
        CheckoutStatus::Pending | CheckoutStatus::Running => Some("running"),
        CheckoutStatus::Compensating => Some("compensating"),
        CheckoutStatus::Completed => Some("completed"),
        CheckoutStatus::Compensated => Some("compensated"),
        CheckoutStatus::NeedsAttention => Some("needs_attention"),
    }
}

fn outcome(name: &str) -> AttemptOutcome {
    match name {
        "in_flight" => AttemptOutcome::InFlight,
        "success" => AttemptOutcome::Success,
        "business_failure" => AttemptOutcome::BusinessFailure,
        "transient" => AttemptOutcome::Transient,
        "ambiguous" => AttemptOutcome::Ambiguous,
        _ => AttemptOutcome::Unspecified,
    }
}

fn step_status(row: &StepRow, last: Option<&AttemptRow>, saga_over: bool) -> ProtoStepStatus {
    match StepStatus::parse(&row.status) {
        Some(StepStatus::Pending) if saga_over => ProtoStepStatus::Skipped,
        Some(StepStatus::Pending) => ProtoStepStatus::Pending,
        Some(StepStatus::Running) if last.is_some_and(|a| a.outcome == "ambiguous") => {
            ProtoStepStatus::Ambiguous
        }
        Some(StepStatus::Running) => ProtoStepStatus::Running,
        Some(StepStatus::Succeeded) => ProtoStepStatus::Succeeded,
        Some(StepStatus::Failed) => ProtoStepStatus::Failed,
        Some(StepStatus::Compensating) => ProtoStepStatus::Compensating,
        Some(StepStatus::Compensated) => ProtoStepStatus::Compensated,
        None => ProtoStepStatus::Unspecified,
    }
}

/// A timeline event as streamed and listed.
pub fn event(e: &EventRow) -> CheckoutEvent {
    CheckoutEvent {
        sequence: e.sequence,
        time: Some(timestamp(e.at)),
        kind: e.kind.clone(),
        step: e.step.clone(),
        message: e.message.clone(),
    }
}

/// The status an event left the checkout in.
pub fn event_status(e: &EventRow) -> CheckoutStatus {
    match SagaStatus::parse(&e.status) {
        Some(SagaStatus::Running) => CheckoutStatus::Running,
        Some(SagaStatus::Compensating) => CheckoutStatus::Compensating,
        Some(SagaStatus::Completed) => CheckoutStatus::Completed,
        Some(SagaStatus::Compensated) => CheckoutStatus::Compensated,
        Some(SagaStatus::NeedsAttention) => CheckoutStatus::NeedsAttention,
        None => CheckoutStatus::Unspecified,
    }
}

fn order(outputs: &serde_json::Map<String, Value>) -> OrderSummary {
    let get = |step: &str, field: &str| outputs.get(step).and_then(|o| o.get(field)).cloned();
    let text = |v: Option<Value>| {
        v.and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    OrderSummary {
        total: get("lock_cart", "subtotal_minor").map(|amount| Money {
            amount_minor: amount.as_i64().unwrap_or(0),
            currency_code: text(get("lock_cart", "currency_code")),
        }),
        reservation_id: text(get("reserve_inventory", "reservation_id")),
        payment_id: text(get("authorize_payment", "payment_id")),
        shipment_ids: get("create_shipments", "shipment_ids")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        allocations: get("reserve_inventory", "allocations")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|a| Allocation {
                sku: a["sku"].as_str().unwrap_or_default().to_owned(),
                warehouse_id: a["warehouse_id"].as_str().unwrap_or_default().to_owned(),
                quantity: a["quantity"].as_i64().unwrap_or(0),
            })
            .collect(),
    }
}

/// The checkout as GetCheckout returns it.
pub fn checkout(
    def: &SagaDef,
    saga: &SagaRow,
    steps: &[StepRow],
    attempts: &[AttemptRow],
    events: &[EventRow],
) -> Checkout {
    let state = SagaStatus::parse(&saga.status);
    let over = state.is_some_and(SagaStatus::is_terminal);
    let outputs: serde_json::Map<String, Value> =
        serde_json::from_str(&saga.outputs).unwrap_or_default();
    let current_step = match state {
        Some(SagaStatus::Running | SagaStatus::Compensating | SagaStatus::NeedsAttention) => def
            .steps
            .get(usize::try_from(saga.step_index).unwrap_or(0))
            .map(|s| s.name.to_owned())
            .unwrap_or_default(),
        _ => String::new(),
    };
    Checkout {
        checkout_id: saga.saga_id.clone(),
        cart_id: saga.cart_id.clone(),
        customer_id: saga.customer_id.clone(),
        status: status(saga).into(),
        current_step,
        steps: steps
            .iter()
            .map(|row| {
                let mine: Vec<&AttemptRow> = attempts
                    .iter()
                    .filter(|a| a.step_index == row.step_index)
                    .collect();
                Step {
                    name: row.name.clone(),
                    index: i32::try_from(row.step_index).unwrap_or(0),
                    status: step_status(row, mine.last().copied(), over).into(),
                    attempts: mine
                        .iter()
                        .map(|a| StepAttempt {
                            number: i32::try_from(a.number).unwrap_or(0),
                            direction: if a.direction == "forward" {
                                StepDirection::Forward
                            } else {
                                StepDirection::Compensation
                            }
                            .into(),
                            outcome: outcome(&a.outcome).into(),
                            status_code: a.status_code.clone(),
                            message: a.message.clone(),
                            start_time: Some(timestamp(a.started_at)),
                            end_time: a.ended_at.map(timestamp),
                        })
                        .collect(),
                }
            })
            .collect(),
        timeline: events.iter().map(event).collect(),
        order: Some(order(&outputs)),
        failure: (!saga.failure_reason.is_empty()).then(|| Failure {
            reason: saga.failure_reason.clone(),
            message: saga.failure_message.clone(),
            step: saga.failure_step.clone(),
        }),
        create_time: Some(timestamp(saga.created_at)),
        update_time: Some(timestamp(saga.updated_at)),
        deadline: Some(timestamp(saga.deadline_at)),
    }
}
