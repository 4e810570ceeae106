//! The `InventoryService` gRPC handlers.

use checkout_kit::db::Db;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_proto::inventory::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};

/// Handlers of `InventoryService` over this service's database.
#[derive(Debug, Clone)]
pub struct InventoryServiceApi {
    db: Db,
}

impl InventoryServiceApi {
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
impl InventoryService for InventoryServiceApi {}

/// The inventory server: `InventoryService` plus health and reflection.
pub fn grpc_server(db: Db, limits: ServerLimits) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        InventoryServiceServer::new(InventoryServiceApi::new(db)),
        limits
    );
    GrpcServer::new("inventory", limits).add_service(service)
}
