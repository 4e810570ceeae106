//! The `FulfillmentService` gRPC handlers.

use checkout_kit::db::Db;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_proto::fulfillment::fulfillment_service_server::{
    FulfillmentService, FulfillmentServiceServer,
};

/// Handlers of `FulfillmentService` over this service's database.
#[derive(Debug, Clone)]
pub struct FulfillmentServiceApi {
    db: Db,
}

impl FulfillmentServiceApi {
    /// Handlers over an open, migrated database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database the handlers use.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

#[tonic::async_trait]
impl FulfillmentService for FulfillmentServiceApi {}

/// The fulfillment server: `FulfillmentService` plus health and reflection.
pub fn grpc_server(db: Db, limits: ServerLimits) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        FulfillmentServiceServer::new(FulfillmentServiceApi::new(db)),
        limits
    );
    GrpcServer::new("fulfillment", limits).add_service(service)
}
