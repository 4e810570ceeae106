//! The `PaymentService` gRPC handlers.

use checkout_kit::db::Db;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_proto::payment::payment_service_server::{PaymentService, PaymentServiceServer};

/// Handlers of `PaymentService` over this service's database.
#[derive(Debug, Clone)]
pub struct PaymentServiceApi {
    db: Db,
}

impl PaymentServiceApi {
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
impl PaymentService for PaymentServiceApi {}

/// The payment server: `PaymentService` plus health and reflection.
pub fn grpc_server(db: Db, limits: ServerLimits) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        PaymentServiceServer::new(PaymentServiceApi::new(db)),
        limits
    );
    GrpcServer::new("payment", limits).add_service(service)
}
