//! The `CartService` gRPC handlers.

use checkout_kit::db::Db;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_proto::cart::cart_service_server::{CartService, CartServiceServer};

/// Handlers of `CartService` over this service's database.
#[derive(Debug, Clone)]
pub struct CartServiceApi {
    db: Db,
}

impl CartServiceApi {
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
impl CartService for CartServiceApi {}

/// The cart server: `CartService` plus health and reflection.
pub fn grpc_server(db: Db, limits: ServerLimits) -> GrpcServer {
    let service =
        checkout_kit::limit_messages!(CartServiceServer::new(CartServiceApi::new(db)), limits);
    GrpcServer::new("cart", limits).add_service(service)
}
