//! The `FulfillmentService` gRPC handlers: validate, then run the use case in one transaction
//! through the idempotency layer (mutations) or a read transaction (queries).

use std::collections::HashSet;

use checkout_kit::db::{Db, now_millis};
use checkout_kit::idempotency::{Idempotency, Key};
use checkout_kit::idempotent;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_kit::status;
use checkout_kit::validate::Violations;
use checkout_proto::fulfillment::fulfillment_service_server::{
    FulfillmentService, FulfillmentServiceServer,
};
use checkout_proto::fulfillment::*;
use tonic::{Request, Response, Status};

use crate::address::{self, ServedCountries};
use crate::{shipments, storage};

const CREATE_SHIPMENTS: &str = "/checkout.fulfillment.v1.FulfillmentService/CreateShipments";
const CANCEL_SHIPMENTS: &str = "/checkout.fulfillment.v1.FulfillmentService/CancelShipments";
const ADVANCE_SHIPMENT: &str = "/checkout.fulfillment.v1.FulfillmentService/AdvanceShipment";

/// Most allocations in one request.
pub const MAX_ALLOCATIONS: usize = 200;

/// Handlers of `FulfillmentService`.
#[derive(Debug, Clone)]
pub struct FulfillmentServiceApi {
    db: Db,
    idempotency: Idempotency,
    served: ServedCountries,
}

impl FulfillmentServiceApi {
    /// Handlers over an open, migrated database, its idempotency layer and the served
    /// countries.
    pub fn new(db: Db, idempotency: Idempotency, served: ServedCountries) -> Self {
        Self {
            db,
            idempotency,
            served,
        }
    }

    /// The database the handlers use.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The idempotency layer every mutating handler goes through.
    pub fn idempotency(&self) -> &Idempotency {
        &self.idempotency
    }
}

#[tonic::async_trait]
impl FulfillmentService for FulfillmentServiceApi {
    async fn create_shipments(
        &self,
        request: Request<CreateShipmentsRequest>,
    ) -> Result<Response<CreateShipmentsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("checkout_id", &req.checkout_id)
            .check(
                !req.allocations.is_empty() && req.allocations.len() <= MAX_ALLOCATIONS,
                "allocations",
                "between 1 and 200 allocations",
            );
        let mut seen = HashSet::new();
        for (i, a) in req.allocations.iter().enumerate() {
            v.sku(&format!("allocations[{i}].sku"), &a.sku)
                .id(&format!("allocations[{i}].warehouse_id"), &a.warehouse_id)
                .check(
                    (1..=10_000).contains(&a.quantity),
                    &format!("allocations[{i}].quantity"),
                    "must be between 1 and 10000",
                )
                .check(
                    seen.insert((a.sku.as_str(), a.warehouse_id.as_str())),
                    &format!("allocations[{i}]"),
                    "repeats an earlier sku and warehouse",
                );
        }
        address::check(&mut v, "address", req.address.as_ref());
        v.finish()?;
        let key = Key::new(CREATE_SHIPMENTS, &req)?;
        let address = req.address.clone().unwrap_or_default();
        // The common case, a first create of a served checkout, is one write (one round trip on
        // Postgres, one hand-off on SQLite); anything else (a repeat, a known checkout, a
        // refusal) goes the usual way.
        if self.served.serves(&address.country_code) {
            let now = now_millis();
            let planned = shipments::plan(&req.checkout_id, &req.allocations, &address, now);
            let response = CreateShipmentsResponse {
                shipments: planned.answer(),
            };
            if storage::create_in_one_statement(
                &self.idempotency,
                &key,
                &response,
                &req.checkout_id,
                &planned.shipments,
                now,
            )
            .await?
            {
                return Ok(Response::new(response));
            }
        }
        idempotent!(self.idempotency, key, |tx| {
            shipments::create(
                tx,
                &self.served,
                &req.checkout_id,
                &req.allocations,
                &address,
            )
            .await
            .map(|shipments| CreateShipmentsResponse { shipments })
            .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn cancel_shipments(
        &self,
        request: Request<CancelShipmentsRequest>,
    ) -> Result<Response<CancelShipmentsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("checkout_id", &req.checkout_id)
            .check(
                req.reason.chars().count() <= 500,
                "reason",
                "at most 500 characters",
            );
        v.finish()?;
        let key = Key::new(CANCEL_SHIPMENTS, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            shipments::cancel(tx, &req.checkout_id)
                .await
                .map(|shipments| CancelShipmentsResponse { shipments })
                .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn get_shipments(
        &self,
        request: Request<GetShipmentsRequest>,
    ) -> Result<Response<GetShipmentsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("checkout_id", &req.checkout_id);
        v.finish()?;
        let mut tx = self
            .db
            .begin_read()
            .await
            .map_err(|e| status::database(&e))?;
        let shipments = shipments::get(&mut tx, &req.checkout_id).await;
        tx.rollback().await.map_err(|e| status::database(&e))?;
        Ok(Response::new(GetShipmentsResponse {
            shipments: shipments?,
        }))
    }

    async fn advance_shipment(
        &self,
        request: Request<AdvanceShipmentRequest>,
    ) -> Result<Response<AdvanceShipmentResponse>, Status> {
        let req = request.into_inner();
        let target = match req.target_status() {
            status @ (ShipmentStatus::Packed
            | ShipmentStatus::Shipped
            | ShipmentStatus::Delivered) => shipments::status_name(status),
            _ => None,
        };
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("shipment_id", &req.shipment_id)
            .check(
                target.is_some(),
                "target_status",
                "must be PACKED, SHIPPED or DELIVERED",
            );
        v.finish()?;
        let target = target.ok_or_else(|| Status::invalid_argument("target_status"))?;
        let key = Key::new(ADVANCE_SHIPMENT, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            shipments::advance(tx, &req.shipment_id, target)
                .await
                .map(|shipment| AdvanceShipmentResponse {
                    shipment: Some(shipment),
                })
                .map_err(Status::from)
        })
        .map(Response::new)
    }
}

/// The fulfillment server: `FulfillmentService` plus health and reflection.
pub fn grpc_server(
    db: Db,
    idempotency: Idempotency,
    served: ServedCountries,
    limits: ServerLimits,
) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        FulfillmentServiceServer::new(FulfillmentServiceApi::new(db, idempotency, served)),
        limits
    );
    GrpcServer::new("fulfillment", limits).add_service(service)
}
