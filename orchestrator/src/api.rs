//! The `CheckoutService` gRPC handlers.

use checkout_kit::db::Db;
use checkout_kit::idempotency::Idempotency;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_proto::checkout::checkout_service_server::{CheckoutService, CheckoutServiceServer};

use crate::clients::ServiceClients;

/// Handlers of `CheckoutService` over the orchestrator's database and service clients.
#[derive(Debug, Clone)]
pub struct CheckoutApi {
    db: Db,
    idempotency: Idempotency,
    clients: ServiceClients,
}

impl CheckoutApi {
    /// Handlers over an open, migrated database and the clients of the four services.
    pub fn new(db: Db, idempotency: Idempotency, clients: ServiceClients) -> Self {
        Self {
            db,
            idempotency,
            clients,
        }
    }

    /// The orchestrator's database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The idempotency layer every mutating handler goes through.
    pub fn idempotency(&self) -> &Idempotency {
        &self.idempotency
    }

    /// The clients of the four services.
    pub fn clients(&self) -> &ServiceClients {
        &self.clients
    }
}

#[tonic::async_trait]
impl CheckoutService for CheckoutApi {}

/// The orchestrator server: `CheckoutService` plus health and reflection.
pub fn grpc_server(
    db: Db,
    idempotency: Idempotency,
    clients: ServiceClients,
    limits: ServerLimits,
) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        CheckoutServiceServer::new(CheckoutApi::new(db, idempotency, clients)),
        limits
    );
    GrpcServer::new("orchestrator", limits).add_service(service)
}
