//! The `CartService` gRPC handlers.

use checkout_kit::db::Db;
use checkout_kit::idempotency::Idempotency;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_proto::cart::cart_service_server::{CartService, CartServiceServer};

/// Handlers of `CartService` over this service's database.
#[derive(Debug, Clone)]
pub struct CartServiceApi {
    db: Db,
    idempotency: Idempotency,
}

impl CartServiceApi {
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
impl CartService for CartServiceApi {}

/// The cart server: `CartService` plus health and reflection.
pub fn grpc_server(db: Db, idempotency: Idempotency, limits: ServerLimits) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        CartServiceServer::new(CartServiceApi::new(db, idempotency)),
        limits
    );
    GrpcServer::new("cart", limits).add_service(service)
}
