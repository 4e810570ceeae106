//! The `InventoryService` gRPC handlers.

use checkout_kit::db::Db;
use checkout_kit::idempotency::Idempotency;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_proto::inventory::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};

/// Handlers of `InventoryService` over this service's database.
#[derive(Debug, Clone)]
pub struct InventoryServiceApi {
    db: Db,
    idempotency: Idempotency,
}

impl InventoryServiceApi {
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
impl InventoryService for InventoryServiceApi {}

/// The inventory server: `InventoryService` plus health and reflection.
pub fn grpc_server(db: Db, idempotency: Idempotency, limits: ServerLimits) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        InventoryServiceServer::new(InventoryServiceApi::new(db, idempotency)),
        limits
    );
    GrpcServer::new("inventory", limits).add_service(service)
}
