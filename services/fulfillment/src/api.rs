//! The `FulfillmentService` gRPC handlers.

use checkout_kit::db::Db;
use checkout_kit::idempotency::Idempotency;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_proto::fulfillment::fulfillment_service_server::{
    FulfillmentService, FulfillmentServiceServer,
};

/// Handlers of `FulfillmentService` over this service's database.
#[derive(Debug, Clone)]
pub struct FulfillmentServiceApi {
    db: Db,
    idempotency: Idempotency,
}

impl FulfillmentServiceApi {
    /// Handlers over an open, migrated database and its idempotency layer.
    pub fn new(db: Db, idempotency: Idempotency) -> Self {
        Self { db, idempotency }
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
impl FulfillmentService for FulfillmentServiceApi {}

/// The fulfillment server: `FulfillmentService` plus health and reflection.
pub fn grpc_server(db: Db, idempotency: Idempotency, limits: ServerLimits) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        FulfillmentServiceServer::new(FulfillmentServiceApi::new(db, idempotency)),
        limits
    );
    GrpcServer::new("fulfillment", limits).add_service(service)
}
