//! The `PaymentService` gRPC handlers.

use checkout_kit::db::Db;
use checkout_kit::idempotency::Idempotency;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_proto::payment::payment_service_server::{PaymentService, PaymentServiceServer};

/// Handlers of `PaymentService` over this service's database.
#[derive(Debug, Clone)]
pub struct PaymentServiceApi {
    db: Db,
    idempotency: Idempotency,
}

impl PaymentServiceApi {
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
impl PaymentService for PaymentServiceApi {}

/// The payment server: `PaymentService` plus health and reflection.
pub fn grpc_server(db: Db, idempotency: Idempotency, limits: ServerLimits) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        PaymentServiceServer::new(PaymentServiceApi::new(db, idempotency)),
        limits
    );
    GrpcServer::new("payment", limits).add_service(service)
}
