//! The checkout saga (DESIGN §4) on the generic engine: its definition, and the step executor
//! that sends each action and compensation to the service that owns it.

use std::time::Duration;

use checkout_kit::retry::RetryPolicy;
use checkout_proto::cart::{CompleteCartRequest, LockCartRequest, UnlockCartRequest};
use checkout_proto::common::{Address, Allocation, Money};
use checkout_proto::fulfillment::{CancelShipmentsRequest, CreateShipmentsRequest};
use checkout_proto::inventory::{
    CommitReservationRequest, ReleaseReservationRequest, ReservationLine, ReserveStockRequest,
    commit_reservation_request, release_reservation_request,
};
use checkout_proto::payment::{
    AuthorizePaymentRequest, CapturePaymentRequest, VoidPaymentRequest, capture_payment_request,
    void_payment_request,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::Status;

use crate::clients::ServiceClients;
use crate::runner::{StepCall, StepExecutor};
use crate::saga::definition::{SagaDef, StepDef, StepKind};
use crate::saga::machine::Direction;

/// The saga type name.
pub const SAGA_TYPE: &str = "checkout";

/// How long a reservation lives: well past the saga's deadline, so the commit after the pivot
/// never finds it expired.
pub const RESERVATION_TTL: Duration = Duration::from_secs(60 * 60);

/// The checkout saga's definition.
pub fn definition(deadline: Duration, step_timeout: Duration) -> SagaDef {
    let step = |name, kind, compensation| StepDef {
        name,
        kind,
        compensation,
        timeout: step_timeout,
    };
    SagaDef {
        name: SAGA_TYPE,
        steps: vec![
            step("lock_cart", StepKind::Compensatable, Some("unlock_cart")),
            step(
                "reserve_inventory",
                StepKind::Compensatable,
                Some("release_reservation"),
            ),
            step(
                "authorize_payment",
                StepKind::Compensatable,
                Some("void_payment"),
            ),
            step(
                "create_shipments",
                StepKind::Compensatable,
                Some("cancel_shipments"),
            ),
            step("capture_payment", StepKind::Pivot, None),
            step("commit_reservation", StepKind::Retriable, None),
            step("complete_cart", StepKind::Retriable, None),
        ],
        forward_retry: RetryPolicy {
            initial_interval: Duration::from_millis(100),
            multiplier: 2.0,
            max_interval: Duration::from_secs(2),
            max_attempts: Some(6),
        },
        persistent_retry: RetryPolicy {
            initial_interval: Duration::from_millis(200),
            multiplier: 2.0,
            max_interval: Duration::from_secs(5),
            max_attempts: Some(30),
        },
        deadline,
    }
}

/// A shipping address as the saga stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressInput {
    /// Recipient.
    pub recipient_name: String,
    /// Line 1.
    pub line1: String,
    /// Line 2.
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
}

impl From<&Address> for AddressInput {
    fn from(a: &Address) -> Self {
        Self {
            recipient_name: a.recipient_name.clone(),
            line1: a.line1.clone(),
            line2: a.line2.clone(),
            city: a.city.clone(),
            region: a.region.clone(),
            postal_code: a.postal_code.clone(),
            country_code: a.country_code.clone(),
            phone: a.phone.clone(),
        }
    }
}

impl From<&AddressInput> for Address {
    fn from(a: &AddressInput) -> Self {
        Self {
            recipient_name: a.recipient_name.clone(),
            line1: a.line1.clone(),
            line2: a.line2.clone(),
            city: a.city.clone(),
            region: a.region.clone(),
            postal_code: a.postal_code.clone(),
            country_code: a.country_code.clone(),
            phone: a.phone.clone(),
        }
    }
}

/// What a checkout saga starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutInput {
    /// The cart.
    pub cart_id: String,
    /// The customer.
    pub customer_id: String,
    /// The processor's payment token (kept for retries of the authorization; never logged).
    pub payment_token: String,
    /// Where to ship.
    pub address: AddressInput,
}

fn field<'a>(outputs: &'a serde_json::Map<String, Value>, step: &str, name: &str) -> &'a Value {
    outputs
        .get(step)
        .and_then(|o| o.get(name))
        .unwrap_or(&Value::Null)
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn allocations(outputs: &serde_json::Map<String, Value>) -> Vec<Allocation> {
    field(outputs, "reserve_inventory", "allocations")
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| Allocation {
                    sku: text(&a["sku"]),
                    warehouse_id: text(&a["warehouse_id"]),
                    quantity: a["quantity"].as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the checkout saga's steps against the four services.
#[derive(Debug, Clone)]
pub struct CheckoutSteps {
    clients: ServiceClients,
}

impl CheckoutSteps {
    /// Steps over the given clients.
    pub fn new(clients: ServiceClients) -> Self {
        Self { clients }
    }
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

#[tonic::async_trait]
impl StepExecutor for CheckoutSteps {
    async fn execute(&self, call: StepCall<'_>) -> Result<Value, Status> {
        let input: CheckoutInput = serde_json::from_value(call.input.clone())
            .map_err(|e| Status::internal(format!("saga input unreadable: {e}")))?;
        let checkout_id = call.saga_id.to_owned();
        let request_id = call.request_id.to_owned();
        let out = call.outputs;
        let t = call.timeout;
        let mut clients = self.clients.clone();
        match (call.step, call.direction) {
            ("lock_cart", Direction::Forward) => {
                let snapshot = clients
                    .cart
                    .lock_cart(request(
                        LockCartRequest {
                            request_id,
                            cart_id: input.cart_id,
                            checkout_id,
                            customer_id: input.customer_id,
                        },
                        t,
                    ))
                    .await?
                    .into_inner()
                    .snapshot
                    .unwrap_or_default();
                let subtotal = snapshot.subtotal.unwrap_or_default();
                Ok(json!({
                    "subtotal_minor": subtotal.amount_minor,
                    "currency_code": snapshot.currency_code,
                    "lines": snapshot.lines.iter().map(|l| json!({"sku": l.sku, "quantity": l.quantity})).collect::<Vec<_>>(),
                }))
            }
            ("lock_cart", Direction::Compensation) => {
                clients
                    .cart
                    .unlock_cart(request(
                        UnlockCartRequest {
                            request_id,
                            cart_id: input.cart_id,
                            checkout_id,
                        },
                        t,
                    ))
                    .await?;
                Ok(json!({}))
            }
            ("reserve_inventory", Direction::Forward) => {
                let lines = field(out, "lock_cart", "lines")
                    .as_array()
                    .map(|lines| {
                        lines
                            .iter()
                            .map(|l| ReservationLine {
                                sku: text(&l["sku"]),
                                quantity: l["quantity"].as_i64().unwrap_or(0),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let reservation = clients
                    .inventory
                    .reserve_stock(request(
                        ReserveStockRequest {
                            request_id,
                            checkout_id,
                            lines,
                            ttl: Some(prost_types::Duration {
                                seconds: i64::try_from(RESERVATION_TTL.as_secs()).unwrap_or(3600),
                                nanos: 0,
                            }),
                        },
                        t,
                    ))
                    .await?
                    .into_inner()
                    .reservation
                    .unwrap_or_default();
                Ok(json!({
                    "reservation_id": reservation.reservation_id,
                    "allocations": reservation.allocations.iter().map(|a| json!({
                        "sku": a.sku, "warehouse_id": a.warehouse_id, "quantity": a.quantity,
                    })).collect::<Vec<_>>(),
                }))
            }
            ("reserve_inventory", Direction::Compensation) => {
                clients
                    .inventory
                    .release_reservation(request(
                        ReleaseReservationRequest {
                            request_id,
                            target: Some(release_reservation_request::Target::CheckoutId(
                                checkout_id,
                            )),
                            reason: "checkout compensated".to_owned(),
                        },
                        t,
                    ))
                    .await?;
                Ok(json!({}))
            }
            ("authorize_payment", Direction::Forward) => {
                let payment = clients
                    .payment
                    .authorize_payment(request(
                        AuthorizePaymentRequest {
                            request_id,
                            checkout_id,
                            amount: Some(Money {
                                amount_minor: field(out, "lock_cart", "subtotal_minor")
                                    .as_i64()
                                    .unwrap_or(0),
                                currency_code: text(field(out, "lock_cart", "currency_code")),
                            }),
                            payment_token: input.payment_token,
                            customer_id: input.customer_id,
                        },
                        t,
                    ))
                    .await?
                    .into_inner()
                    .payment
                    .unwrap_or_default();
                Ok(json!({"payment_id": payment.payment_id}))
            }
            ("authorize_payment", Direction::Compensation) => {
                clients
                    .payment
                    .void_payment(request(
                        VoidPaymentRequest {
                            request_id,
                            target: Some(void_payment_request::Target::CheckoutId(checkout_id)),
                        },
                        t,
                    ))
                    .await?;
                Ok(json!({}))
            }
            ("create_shipments", Direction::Forward) => {
                let shipments = clients
                    .fulfillment
                    .create_shipments(request(
                        CreateShipmentsRequest {
                            request_id,
                            checkout_id,
                            allocations: allocations(out),
                            address: Some(Address::from(&input.address)),
                        },
                        t,
                    ))
                    .await?
                    .into_inner()
                    .shipments;
                let ids: Vec<String> = shipments.into_iter().map(|s| s.shipment_id).collect();
                Ok(json!({"shipment_ids": ids}))
            }
            ("create_shipments", Direction::Compensation) => {
                clients
                    .fulfillment
                    .cancel_shipments(request(
                        CancelShipmentsRequest {
                            request_id,
                            checkout_id,
                            reason: "checkout compensated".to_owned(),
                        },
                        t,
                    ))
                    .await?;
                Ok(json!({}))
            }
            ("capture_payment", Direction::Forward) => {
                let payment = clients
                    .payment
                    .capture_payment(request(
                        CapturePaymentRequest {
                            request_id,
                            target: Some(capture_payment_request::Target::CheckoutId(checkout_id)),
                            amount: None,
                        },
                        t,
                    ))
                    .await?
                    .into_inner()
                    .payment
                    .unwrap_or_default();
                let captured = payment.captured_amount.unwrap_or_default().amount_minor;
                Ok(json!({"captured_minor": captured}))
            }
            ("commit_reservation", Direction::Forward) => {
                clients
                    .inventory
                    .commit_reservation(request(
                        CommitReservationRequest {
                            request_id,
                            target: Some(commit_reservation_request::Target::CheckoutId(
                                checkout_id,
                            )),
                        },
                        t,
                    ))
                    .await?;
                Ok(json!({}))
            }
            ("complete_cart", Direction::Forward) => {
                clients
                    .cart
                    .complete_cart(request(
                        CompleteCartRequest {
                            request_id,
                            cart_id: input.cart_id,
                            checkout_id,
                        },
                        t,
                    ))
                    .await?;
                Ok(json!({}))
            }
            (step, direction) => Err(Status::internal(format!(
                "the checkout saga has no {} for step {step}",
                direction.as_str()
            ))),
        }
    }
}
