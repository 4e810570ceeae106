//! The five server roles.

use checkout_kit::db::Migrations;

/// One of the five servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// CartService: catalog, carts, checkout lock.
    Cart,
    /// InventoryService: stock and reservations.
    Inventory,
    /// PaymentService: payments, processor, ledger.
    Payment,
    /// FulfillmentService: shipments.
    Fulfillment,
    /// CheckoutService: the saga orchestrator.
    Orchestrator,
}

impl Role {
    /// Every role, services first, the orchestrator last (it dials the others).
    pub const ALL: [Role; 5] = [
        Role::Cart,
        Role::Inventory,
        Role::Payment,
        Role::Fulfillment,
        Role::Orchestrator,
    ];

    /// The role's name as used in flags, file names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Cart => "cart",
            Role::Inventory => "inventory",
            Role::Payment => "payment",
            Role::Fulfillment => "fulfillment",
            Role::Orchestrator => "orchestrator",
        }
    }

    /// The role's embedded migrations.
    pub fn migrations(self) -> &'static Migrations {
        match self {
            Role::Cart => &checkout_cart::MIGRATIONS,
            Role::Inventory => &checkout_inventory::MIGRATIONS,
            Role::Payment => &checkout_payment::MIGRATIONS,
            Role::Fulfillment => &checkout_fulfillment::MIGRATIONS,
            Role::Orchestrator => &checkout_orchestrator::MIGRATIONS,
        }
    }

    /// The loopback address the role listens on unless told otherwise.
    pub fn default_listen(self) -> &'static str {
        match self {
            Role::Orchestrator => "127.0.0.1:50050",
            Role::Cart => "127.0.0.1:50051",
            Role::Inventory => "127.0.0.1:50052",
            Role::Payment => "127.0.0.1:50053",
            Role::Fulfillment => "127.0.0.1:50054",
        }
    }

    /// The fully qualified gRPC service the role serves.
    pub fn grpc_service(self) -> &'static str {
        match self {
            Role::Cart => "checkout.cart.v1.CartService",
            Role::Inventory => "checkout.inventory.v1.InventoryService",
            Role::Payment => "checkout.payment.v1.PaymentService",
            Role::Fulfillment => "checkout.fulfillment.v1.FulfillmentService",
            Role::Orchestrator => "checkout.checkout.v1.CheckoutService",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
